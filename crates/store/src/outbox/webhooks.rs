//! Webhook endpoints and the deliveries of events to them, as the outbox stores them.

use super::OutboxRecord;
use crate::Result;
use crate::rows::{StoreRow, corrupt};
use serde::Serialize;
use shoal_core::Millis;

/// A webhook endpoint to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndpoint {
    pub id: String,
    /// The tenant whose key created it; `None`: the platform's (admin).
    pub owner: Option<String>,
    /// Only this tenant's events; `None`: every tenant's.
    pub tenant: Option<String>,
    pub url: String,
    /// Only these types; `None`: every type.
    pub events: Option<Vec<String>>,
    pub secret: String,
    /// Refuse private addresses when delivering.
    pub guarded: bool,
    pub created_at: Millis,
}

/// A webhook endpoint as stored (with its secret: never show it after creation).
pub type EndpointRecord = NewEndpoint;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    /// The state's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(corrupt(format!("delivery state {other}"))),
        })
    }
}

/// One event's delivery to one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub seq: i64,
    pub event_id: String,
    pub destination: String,
    /// The event's topic.
    pub topic: String,
    pub state: DeliveryState,
    /// Attempts begun (a lease counts one).
    pub attempts: u32,
    /// When it is next due (pending only); while leased, when the lease lapses.
    pub next_attempt_at: Option<Millis>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// A delivery leased for one attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedDelivery {
    pub event: OutboxRecord,
    pub endpoint: EndpointRecord,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub lease_id: String,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The destination took it (a 2xx).
    Delivered { status: u16 },
    /// It did not: retry at `retry_at`, or give up (`None`).
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: Option<Millis>,
    },
}

/// `,a,b,`: the stored form of an event filter, so one `LIKE '%,type,%'` matches a type.
pub(super) fn events_col(events: &Option<Vec<String>>) -> Option<String> {
    events.as_ref().map(|e| format!(",{},", e.join(",")))
}

pub(super) fn endpoint_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<EndpointRecord> {
    Ok(EndpointRecord {
        id: row.string("id")?,
        owner: row.opt_string("owner")?,
        tenant: row.opt_string("tenant")?,
        url: row.string("url")?,
        events: row.opt_string("events")?.map(|e| {
            e.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        }),
        secret: row.string("secret")?,
        guarded: row.boolean("guarded")?,
        created_at: row.int("created_at")?,
    })
}

pub(crate) fn delivery_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        seq: row.int("seq")?,
        event_id: row.string("event_id")?,
        destination: row.string("destination")?,
        topic: row.string("topic")?,
        state: DeliveryState::parse(row.text("state")?)?,
        attempts: row.int("attempts")?.clamp(0, u32::MAX as i64) as u32,
        next_attempt_at: row.opt_int("next_attempt_at")?,
        last_status: row
            .opt_int("last_status")?
            .map(|s| s.clamp(0, u16::MAX as i64) as u16),
        last_error: row.opt_string("last_error")?,
        last_attempt_at: row.opt_int("last_attempt_at")?,
        created_at: row.int("created_at")?,
        delivered_at: row.opt_int("delivered_at")?,
    })
}

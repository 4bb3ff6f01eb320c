//! Webhook endpoints and the deliveries of events to them, as the outbox stores them.

use super::OutboxRecord;
use crate::Result;
use crate::rows::{StoreRow, corrupt};
use serde::Serialize;
use shoal_core::Millis;

/// A webhook endpoint to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndpoint {
    /// The endpoint's id.
    pub id: String,
    /// The tenant whose key created it; `None`: the platform's (admin).
    pub owner: Option<String>,
    /// Only this tenant's events; `None`: every tenant's.
    pub tenant: Option<String>,
    /// Where deliveries are posted.
    pub url: String,
    /// Only these types; `None`: every type.
    pub events: Option<Vec<String>>,
    /// The signing secret of deliveries.
    pub secret: String,
    /// Refuse private addresses when delivering.
    pub guarded: bool,
    /// When it was created.
    pub created_at: Millis,
}

/// A webhook endpoint as stored (with its secret: never show it after creation).
pub type EndpointRecord = NewEndpoint;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; tried again when due.
    Pending,
    /// The destination took it.
    Delivered,
    /// Given up.
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
    /// Order of the deliveries; the cursor of their list.
    pub seq: i64,
    /// The event delivered.
    pub event_id: String,
    /// The endpoint it goes to.
    pub destination: String,
    /// The event's topic.
    pub topic: String,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts begun (a lease counts one).
    pub attempts: u32,
    /// When it is next due (pending only); while leased, when the lease lapses.
    pub next_attempt_at: Option<Millis>,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the last attempt began.
    pub last_attempt_at: Option<Millis>,
    /// When the delivery was made (with its event).
    pub created_at: Millis,
    /// When the destination took it.
    pub delivered_at: Option<Millis>,
}

/// A delivery leased for one attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedDelivery {
    /// The event to deliver.
    pub event: OutboxRecord,
    /// Where to deliver it.
    pub endpoint: EndpointRecord,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The lease the attempt reports under.
    pub lease_id: String,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The destination took it (a 2xx).
    Delivered {
        /// The status it answered.
        status: u16,
    },
    /// It did not: retry at `retry_at`, or give up (`None`).
    Failed {
        /// The HTTP status, if the destination answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// When to try again; `None`: give up.
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

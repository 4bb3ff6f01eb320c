//! What the outbox carries: events (a terminal job's, a quota signal's, any topic's) and the rows
//! they are read back as.

use crate::rows::{StoreRow, json_col};
use crate::usage::{UsageCursor, UsageEventRecord};
use crate::{JobRecord, Result};
use serde::Serialize;
use shoal_core::{JobState, Millis};
use shoal_protocol::webhooks::EVENT_TYPES;

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Stable: the `webhook-id` of every delivery of it, the dedupe key of an append.
    pub id: String,
    /// What happened: `job.succeeded`, `quota.warning`, ... (audit and usage topics may join).
    pub topic: String,
    /// The tenant it concerns; `None`: the platform's.
    pub tenant: Option<String>,
    /// The topic's data. For `job.*` topics: the job record at that moment (without its spec).
    pub payload: serde_json::Value,
    /// When it happened.
    pub created_at: Millis,
}

impl OutboxEvent {
    /// An event with a new time-ordered id (`evt_...`).
    pub fn new(
        topic: impl Into<String>,
        tenant: Option<String>,
        payload: serde_json::Value,
        now: Millis,
    ) -> Self {
        OutboxEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            topic: topic.into(),
            tenant,
            payload,
            created_at: now,
        }
    }

    /// The event of a job that reached a terminal state; `None` for any other state.
    pub fn job(job: &JobRecord, now: Millis) -> Option<Self> {
        let topic = match job.state {
            JobState::Succeeded => "job.succeeded",
            JobState::Failed => "job.failed",
            JobState::Dead => "job.dead",
            JobState::Cancelled => "job.cancelled",
            JobState::Queued | JobState::Running => return None,
        };
        // The spec can be large and is not part of the job's view; a lease id is the agent's.
        let snapshot = JobRecord {
            spec: shoal_protocol::JsonText::null(),
            lease_id: None,
            ..job.clone()
        };
        let payload = serde_json::to_value(snapshot).ok()?;
        Some(Self::new(topic, Some(job.tenant.clone()), payload, now))
    }

    /// Whether the event goes to webhook endpoints (other topics are for cursor readers).
    pub fn is_webhook(&self) -> bool {
        EVENT_TYPES.contains(&self.topic.as_str())
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxRecord {
    /// Order of the outbox; the cursor of readers.
    pub seq: i64,
    /// The event's stable id.
    pub id: String,
    /// What happened.
    pub topic: String,
    /// The tenant it concerns; `None`: the platform's.
    pub tenant: Option<String>,
    /// The topic's data.
    pub payload: serde_json::Value,
    /// When it happened.
    pub created_at: Millis,
}

/// A quota threshold an admission crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QuotaSignal {
    /// 80% of the monthly quota.
    Warning,
    /// 100%: further admissions are refused.
    Exceeded,
}

impl QuotaSignal {
    /// The outbox topic of the signal.
    pub fn topic(self) -> &'static str {
        match self {
            QuotaSignal::Warning => "quota.warning",
            QuotaSignal::Exceeded => "quota.exceeded",
        }
    }

    /// The signals that `jobs` admitted of `quota` have reached: 80% and 100%.
    pub fn reached(jobs: u64, quota: u64) -> impl Iterator<Item = QuotaSignal> {
        let warn = jobs.saturating_mul(5) >= quota.saturating_mul(4);
        let exceeded = jobs >= quota;
        [
            warn.then_some(QuotaSignal::Warning),
            exceeded.then_some(QuotaSignal::Exceeded),
        ]
        .into_iter()
        .flatten()
    }

    /// The kind of the operators' event (`GET /v1/events`) recorded with it.
    pub fn operator_kind(self) -> &'static str {
        match self {
            QuotaSignal::Warning => "quota_warning",
            QuotaSignal::Exceeded => "quota_exceeded",
        }
    }

    /// The event: the tenant's count against its quota in the period.
    pub fn event(
        self,
        tenant: &str,
        jobs: u64,
        quota: u64,
        period_start: Millis,
        now: Millis,
    ) -> OutboxEvent {
        let period = shoal_metering::month_of(period_start);
        let payload = serde_json::json!({
            "tenant": tenant,
            "jobs": jobs,
            "quota": quota,
            "period_start": rfc3339(period.0),
            "period_end": rfc3339(period.1),
        });
        OutboxEvent::new(self.topic(), Some(tenant.to_string()), payload, now)
    }
}

fn rfc3339(t: Millis) -> String {
    use chrono::{SecondsFormat, TimeZone, Utc};
    Utc.timestamp_millis_opt(t)
        .single()
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(crate) fn event_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<OutboxRecord> {
    Ok(OutboxRecord {
        seq: row.int("seq")?,
        id: row.string("id")?,
        topic: row.string("topic")?,
        tenant: row.opt_string("tenant")?,
        payload: json_col(row, "payload")?.unwrap_or_default(),
        created_at: row.int("created_at")?,
    })
}

/// An outbox row of a cursor read (with its `txid`) and the cursor just past it.
pub(crate) fn cursor_record_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<UsageEventRecord> {
    let event = event_from_row(row)?;
    Ok(UsageEventRecord {
        cursor: UsageCursor {
            txid: row.int("txid")?,
            seq: event.seq,
        },
        event,
    })
}

//! The transactional outbox: what leaves Shoal is first a row in the `outbox` table, written in
//! the transaction of the state change it reports, so a crash at any instant either keeps both or
//! neither. Webhook event types are fanned out in that same transaction to one delivery row per
//! matching endpoint (an endpoint created later never sees older events, and nothing sits between
//! the two writes for a crash to lose). Delivery rows are leased like jobs; backoff is data in
//! the row (`next_attempt_at`), so it survives restarts.
//!
//! The SQL here is shared by both stores: `$N` placeholders mean the same on SQLite and Postgres,
//! and [`for_backend!`] instantiates the functions once per database, with Postgres adding
//! `FOR UPDATE SKIP LOCKED` to the lease and a committed-transactions guard to cursor reads.

use crate::rows::{StoreRow, corrupt, json_col};
use crate::{JobRecord, Result};
use serde::Serialize;
use shoal_core::{JobState, Millis};
use shoal_protocol::webhooks::EVENT_TYPES;

/// The outbox's part of the store. Events that report a state change are written by the
/// store's own methods in that change's transaction (a job's end, a quota signal); to add a new
/// kind (audit records, usage events), write it in its change's transaction with the backend's
/// `append` (`outbox::sqlite::append`, `outbox::postgres::append`), or with [`Outbox::append_events`]
/// when it reports no other write.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Appends events that report no state change of their own, in one transaction, fanning
    /// webhook types out to the matching endpoints. An event whose id is already stored is
    /// skipped (so a deterministic id makes the append idempotent). Returns how many were new.
    async fn append_events(&self, events: &[OutboxEvent]) -> Result<usize>;
    /// Events after `after_seq` whose topic starts with `topic_prefix` (`""`: all), in `seq`
    /// order, at most `limit`. The order is stable and a row never appears behind a cursor
    /// already handed out (on Postgres only rows of finished transactions are read).
    async fn outbox_after(
        &self,
        topic_prefix: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<OutboxRecord>>;
    /// Creates a webhook endpoint unless its owner already has `max_per_owner`; `false` then.
    async fn create_endpoint(
        &self,
        e: &NewEndpoint,
        max_per_owner: u32,
        actor: &shoal_core::audit::Actor,
    ) -> Result<bool>;
    async fn endpoint(&self, id: &str) -> Result<Option<EndpointRecord>>;
    /// Endpoints created by `owner`'s key, or every endpoint (`None`), oldest first.
    async fn endpoints(&self, owner: Option<&str>) -> Result<Vec<EndpointRecord>>;
    /// Deletes an endpoint and its deliveries; `false` when there was none.
    async fn delete_endpoint(
        &self,
        id: &str,
        now: Millis,
        actor: &shoal_core::audit::Actor,
    ) -> Result<bool>;
    /// Deliveries to one destination, newest first, below `before_seq` when given.
    async fn deliveries(
        &self,
        destination: &str,
        limit: u32,
        before_seq: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Leases up to `limit` due deliveries for `lease_ms`, counting the attempt; deliveries whose
    /// `max_attempts` were all used (the last lease lapsed) become failed instead. On Postgres
    /// replicas leasing at once skip each other's rows.
    async fn lease_deliveries(
        &self,
        owner: &str,
        limit: u32,
        lease_ms: Millis,
        max_attempts: u32,
        now: Millis,
    ) -> Result<Vec<LeasedDelivery>>;
    /// Records how a leased attempt went; `false` when the lease is no longer the delivery's
    /// (it lapsed and was leased again, or the endpoint was deleted).
    async fn finish_delivery(
        &self,
        d: &LeasedDelivery,
        outcome: &AttemptOutcome,
        now: Millis,
    ) -> Result<bool>;
    /// When the next pending delivery falls due, if any is pending.
    async fn next_delivery_due(&self) -> Result<Option<Millis>>;
}

/// Implements [`Outbox`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_outbox {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::outbox::Outbox for $store {
            async fn append_events(&self, events: &[crate::OutboxEvent]) -> crate::Result<usize> {
                let mut tx = self.$begin().await?;
                let mut n = 0;
                for ev in events {
                    n += usize::from(crate::outbox::$backend::append(&mut tx, ev).await?);
                }
                tx.commit().await?;
                Ok(n)
            }

            async fn outbox_after(
                &self,
                topic_prefix: &str,
                after_seq: i64,
                limit: u32,
            ) -> crate::Result<Vec<crate::OutboxRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::after(&mut c, topic_prefix, after_seq, limit).await
            }

            async fn create_endpoint(
                &self,
                e: &crate::NewEndpoint,
                max_per_owner: u32,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let created =
                    crate::outbox::$backend::create_endpoint(&mut tx, e, max_per_owner).await?;
                if created {
                    let a = crate::audit::endpoint_create(actor, e);
                    crate::audit::$backend::record(&mut tx, &a, e.tenant.as_deref()).await?;
                }
                tx.commit().await?;
                Ok(created)
            }

            async fn endpoint(&self, id: &str) -> crate::Result<Option<crate::EndpointRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::endpoint(&mut c, id).await
            }

            async fn endpoints(
                &self,
                owner: Option<&str>,
            ) -> crate::Result<Vec<crate::EndpointRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::endpoints(&mut c, owner).await
            }

            async fn delete_endpoint(
                &self,
                id: &str,
                now: shoal_core::Millis,
                actor: &shoal_core::audit::Actor,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let deleted = crate::outbox::$backend::delete_endpoint(&mut tx, id).await?;
                if deleted {
                    let a = crate::audit::entry(
                        actor,
                        "webhook.delete",
                        format!("webhook/{id}"),
                        serde_json::json!({}),
                        now,
                    );
                    crate::audit::$backend::record(&mut tx, &a, None).await?;
                }
                tx.commit().await?;
                Ok(deleted)
            }

            async fn deliveries(
                &self,
                destination: &str,
                limit: u32,
                before_seq: Option<i64>,
            ) -> crate::Result<Vec<crate::DeliveryRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::deliveries(&mut c, destination, limit, before_seq).await
            }

            async fn lease_deliveries(
                &self,
                owner: &str,
                limit: u32,
                lease_ms: shoal_core::Millis,
                max_attempts: u32,
                now: shoal_core::Millis,
            ) -> crate::Result<Vec<crate::LeasedDelivery>> {
                let mut tx = self.$begin().await?;
                let leased = crate::outbox::$backend::lease(
                    &mut tx,
                    owner,
                    limit,
                    lease_ms,
                    max_attempts,
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok(leased)
            }

            async fn finish_delivery(
                &self,
                d: &crate::LeasedDelivery,
                outcome: &crate::AttemptOutcome,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::finish(&mut c, d, outcome, now).await
            }

            async fn next_delivery_due(&self) -> crate::Result<Option<shoal_core::Millis>> {
                let mut c = self.pool.acquire().await?;
                crate::outbox::$backend::next_due(&mut c).await
            }
        }
    };
}
pub(crate) use impl_outbox;

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Stable: the `webhook-id` of every delivery of it, the dedupe key of an append.
    pub id: String,
    /// What happened: `job.succeeded`, `quota.warning`, ... (audit and usage topics may join).
    pub topic: String,
    pub tenant: Option<String>,
    /// The topic's data. For `job.*` topics: the job record at that moment (without its spec).
    pub payload: serde_json::Value,
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
            spec: serde_json::Value::Null,
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
    pub id: String,
    pub topic: String,
    pub tenant: Option<String>,
    pub payload: serde_json::Value,
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
fn events_col(events: &Option<Vec<String>>) -> Option<String> {
    events.as_ref().map(|e| format!(",{},", e.join(",")))
}

fn endpoint_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<EndpointRecord> {
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

const ENDPOINT_COLS: &str = "id, owner, tenant, url, events, secret, guarded, created_at";
const EVENT_COLS: &str = "seq, id, topic, tenant, payload, created_at";

/// The outbox's SQL for one backend: `$db` the database, `$skip_locked` what a lease appends to
/// its row selection, `$visible` what a cursor read appends to its condition, `$owner_turn` a
/// statement (bound to the owner) that makes endpoint creations of one owner take turns, if the
/// backend's transactions do not already.
macro_rules! for_backend {
    ($db:ty, $skip_locked:expr, $visible:expr, $owner_turn:expr) => {
        use super::*;
        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        /// Appends one event in the caller's transaction and fans a webhook type out to the
        /// endpoints that want it; `false` when an event with its id was already stored.
        pub(crate) async fn append(conn: &mut Conn, ev: &OutboxEvent) -> Result<bool> {
            let r = sqlx::query(
                "INSERT INTO outbox (id, topic, tenant, payload, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&ev.id)
            .bind(&ev.topic)
            .bind(&ev.tenant)
            .bind(ev.payload.to_string())
            .bind(ev.created_at)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Ok(false);
            }
            if ev.is_webhook() {
                sqlx::query(
                    "INSERT INTO outbox_deliveries (event_id, destination, state, attempts, next_attempt_at, created_at) \
                     SELECT $1, id, 'pending', 0, $2, $2 FROM webhook_endpoints \
                     WHERE (tenant IS NULL OR tenant = $3) AND (events IS NULL OR events LIKE $4)",
                )
                .bind(&ev.id)
                .bind(ev.created_at)
                .bind(&ev.tenant)
                .bind(format!("%,{},%", ev.topic))
                .execute(&mut *conn)
                .await?;
            }
            Ok(true)
        }

        /// The event of `job` if it is terminal, in the caller's transaction.
        pub(crate) async fn job_event(conn: &mut Conn, job: &JobRecord, now: Millis) -> Result<()> {
            if let Some(ev) = OutboxEvent::job(job, now) {
                append(conn, &ev).await?;
            }
            Ok(())
        }

        /// Marks `signal` sent for the period; `true` only the first time in it.
        async fn mark(
            conn: &mut Conn,
            tenant: &str,
            signal: QuotaSignal,
            period_start: Millis,
            now: Millis,
        ) -> Result<bool> {
            let q = match signal {
                QuotaSignal::Warning => {
                    "UPDATE tenants SET quota_warned_at = $1 WHERE id = $2 \
                     AND (quota_warned_at IS NULL OR quota_warned_at < $3)"
                }
                QuotaSignal::Exceeded => {
                    "UPDATE tenants SET quota_exceeded_at = $1 WHERE id = $2 \
                     AND (quota_exceeded_at IS NULL OR quota_exceeded_at < $3)"
                }
            };
            let r = sqlx::query(q)
                .bind(now)
                .bind(tenant)
                .bind(period_start)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected() == 1)
        }

        /// Sends each quota signal that `jobs` admitted of `quota` reach and that was not sent
        /// this period, in the admission's transaction: the outbox event and the operators'
        /// event. Returns the signals sent.
        pub(crate) async fn quota_signals(
            conn: &mut Conn,
            tenant: &str,
            jobs: u64,
            quota: u64,
            period_start: Millis,
            now: Millis,
        ) -> Result<Vec<QuotaSignal>> {
            let mut sent = Vec::new();
            for signal in QuotaSignal::reached(jobs, quota) {
                if !mark(conn, tenant, signal, period_start, now).await? {
                    continue;
                }
                let ev = signal.event(tenant, jobs, quota, period_start, now);
                sqlx::query("INSERT INTO events (tenant, at, kind, detail) VALUES ($1, $2, $3, $4)")
                    .bind(tenant)
                    .bind(now)
                    .bind(signal.operator_kind())
                    .bind(ev.payload.to_string())
                    .execute(&mut *conn)
                    .await?;
                append(conn, &ev).await?;
                sent.push(signal);
            }
            Ok(sent)
        }

        pub(crate) async fn after(
            conn: &mut Conn,
            topic_prefix: &str,
            after_seq: i64,
            limit: u32,
        ) -> Result<Vec<OutboxRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ", EVENT_COLS, " FROM outbox WHERE seq > $1 AND topic LIKE $2", $visible,
                " ORDER BY seq LIMIT $3"
            ))
            .bind(after_seq)
            .bind(format!("{}%", topic_prefix.replace(['%', '_'], "")))
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(event_from_row).collect()
        }

        pub(crate) async fn create_endpoint(
            conn: &mut Conn,
            e: &NewEndpoint,
            max_per_owner: u32,
        ) -> Result<bool> {
            let turn: Option<&'static str> = $owner_turn;
            if let Some(turn) = turn {
                sqlx::query(turn).bind(&e.owner).execute(&mut *conn).await?;
            }
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_endpoints WHERE owner IS NOT DISTINCT FROM $1",
            )
            .bind(&e.owner)
            .fetch_one(&mut *conn)
            .await?;
            if n >= max_per_owner as i64 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, owner, tenant, url, events, secret, guarded, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&e.id)
            .bind(&e.owner)
            .bind(&e.tenant)
            .bind(&e.url)
            .bind(events_col(&e.events))
            .bind(&e.secret)
            .bind(e.guarded)
            .bind(e.created_at)
            .execute(&mut *conn)
            .await?;
            Ok(true)
        }

        pub(crate) async fn endpoint(conn: &mut Conn, id: &str) -> Result<Option<EndpointRecord>> {
            let row = sqlx::query(sql!(
                "SELECT ", ENDPOINT_COLS, " FROM webhook_endpoints WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(endpoint_from_row).transpose()
        }

        pub(crate) async fn endpoints(
            conn: &mut Conn,
            owner: Option<&str>,
        ) -> Result<Vec<EndpointRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ", ENDPOINT_COLS, " FROM webhook_endpoints \
                 WHERE CAST($1 AS TEXT) IS NULL OR owner = $1 ORDER BY created_at, id"
            ))
            .bind(owner)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(endpoint_from_row).collect()
        }

        pub(crate) async fn delete_endpoint(conn: &mut Conn, id: &str) -> Result<bool> {
            sqlx::query("DELETE FROM outbox_deliveries WHERE destination = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            let r = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected() == 1)
        }

        pub(crate) async fn deliveries(
            conn: &mut Conn,
            destination: &str,
            limit: u32,
            before_seq: Option<i64>,
        ) -> Result<Vec<DeliveryRecord>> {
            let rows = sqlx::query(
                "SELECT d.seq, d.event_id, d.destination, o.topic, d.state, d.attempts, d.next_attempt_at, \
                 d.last_status, d.last_error, d.last_attempt_at, d.created_at, d.delivered_at \
                 FROM outbox_deliveries d JOIN outbox o ON o.id = d.event_id \
                 WHERE d.destination = $1 AND (CAST($2 AS BIGINT) IS NULL OR d.seq < $2) \
                 ORDER BY d.seq DESC LIMIT $3",
            )
            .bind(destination)
            .bind(before_seq)
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(delivery_from_row).collect()
        }

        pub(crate) async fn lease(
            conn: &mut Conn,
            owner: &str,
            limit: u32,
            lease_ms: Millis,
            max_attempts: u32,
            now: Millis,
        ) -> Result<Vec<LeasedDelivery>> {
            // A delivery whose last allowed attempt was leased and never reported is spent. (Rows
            // another replica holds are skipped, as in the lease below, so two passes never wait
            // on each other.)
            sqlx::query(sql!(
                "UPDATE outbox_deliveries SET state = 'failed', next_attempt_at = NULL, lease_id = NULL, \
                 lease_owner = NULL, lease_expires_at = NULL, \
                 last_error = 'the last attempt did not report back before its lease lapsed' \
                 WHERE seq IN (SELECT seq FROM outbox_deliveries WHERE state = 'pending' \
                 AND next_attempt_at <= $1 AND attempts >= $2",
                $skip_locked,
                ")"
            ))
            .bind(now)
            .bind(max_attempts as i64)
            .execute(&mut *conn)
            .await?;
            let lease_id = uuid::Uuid::now_v7().to_string();
            let expires = now.saturating_add(lease_ms);
            let r = sqlx::query(sql!(
                "UPDATE outbox_deliveries SET attempts = attempts + 1, lease_id = $1, lease_owner = $2, \
                 lease_expires_at = $3, next_attempt_at = $3, last_attempt_at = $4 \
                 WHERE seq IN (SELECT seq FROM outbox_deliveries WHERE state = 'pending' \
                 AND next_attempt_at <= $4 AND attempts < $5 ORDER BY next_attempt_at LIMIT $6",
                $skip_locked,
                ")"
            ))
            .bind(&lease_id)
            .bind(owner)
            .bind(expires)
            .bind(now)
            .bind(max_attempts as i64)
            .bind(limit as i64)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Ok(Vec::new());
            }
            let rows = sqlx::query(
                "SELECT d.attempts, o.seq, o.id AS event_id, o.topic, o.tenant AS event_tenant, o.payload, \
                 o.created_at AS event_created_at, e.id, e.owner, e.tenant, e.url, e.events, e.secret, \
                 e.guarded, e.created_at \
                 FROM outbox_deliveries d JOIN outbox o ON o.id = d.event_id \
                 JOIN webhook_endpoints e ON e.id = d.destination \
                 WHERE d.lease_id = $1 AND d.state = 'pending' ORDER BY d.next_attempt_at, d.seq",
            )
            .bind(&lease_id)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(LeasedDelivery {
                        event: OutboxRecord {
                            seq: row.int("seq")?,
                            id: row.string("event_id")?,
                            topic: row.string("topic")?,
                            tenant: row.opt_string("event_tenant")?,
                            payload: json_col(row, "payload")?.unwrap_or_default(),
                            created_at: row.int("event_created_at")?,
                        },
                        endpoint: endpoint_from_row(row)?,
                        attempt: row.int("attempts")?.clamp(0, u32::MAX as i64) as u32,
                        lease_id: lease_id.clone(),
                    })
                })
                .collect()
        }

        pub(crate) async fn finish(
            conn: &mut Conn,
            d: &LeasedDelivery,
            outcome: &AttemptOutcome,
            now: Millis,
        ) -> Result<bool> {
            let (state, status, error, next) = match outcome {
                AttemptOutcome::Delivered { status } => {
                    (DeliveryState::Delivered, Some(*status), None, None)
                }
                AttemptOutcome::Failed {
                    status,
                    error,
                    retry_at,
                } => (
                    if retry_at.is_some() {
                        DeliveryState::Pending
                    } else {
                        DeliveryState::Failed
                    },
                    *status,
                    Some(error.as_str()),
                    *retry_at,
                ),
            };
            let r = sqlx::query(
                "UPDATE outbox_deliveries SET state = $1, last_status = $2, last_error = $3, next_attempt_at = $4, \
                 delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE NULL END, \
                 lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE event_id = $6 AND destination = $7 AND lease_id = $8 AND state = 'pending'",
            )
            .bind(state.as_str())
            .bind(status.map(i64::from))
            .bind(error)
            .bind(next)
            .bind(now)
            .bind(&d.event.id)
            .bind(&d.endpoint.id)
            .bind(&d.lease_id)
            .execute(&mut *conn)
            .await?;
            Ok(r.rows_affected() == 1)
        }

        pub(crate) async fn next_due(conn: &mut Conn) -> Result<Option<Millis>> {
            Ok(sqlx::query_scalar(
                "SELECT MIN(next_attempt_at) FROM outbox_deliveries WHERE state = 'pending'",
            )
            .fetch_one(&mut *conn)
            .await?)
        }
    };
}

pub(crate) mod sqlite {
    // Writes are `BEGIN IMMEDIATE`: one at a time already.
    for_backend!(sqlx::Sqlite, "", "", None);
}

pub(crate) mod postgres {
    for_backend!(
        sqlx::Postgres,
        " FOR UPDATE SKIP LOCKED",
        " AND txid < txid_snapshot_xmin(txid_current_snapshot())",
        Some(
            "SELECT pg_advisory_xact_lock(hashtext('shoal_webhook_endpoints'), hashtext(COALESCE($1, '')))"
        )
    );
}

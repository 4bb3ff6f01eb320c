//! The outbox's SQL, shared by both stores: [`for_backend!`] instantiates it once per database.

use super::events::cursor_record_from_row;
use super::webhooks::{delivery_from_row, endpoint_from_row, events_col};
use super::*;
use crate::JobRecord;
use crate::rows::{StoreRow, json_col};

const ENDPOINT_COLS: &str = "id, owner, tenant, url, events, secret, guarded, created_at";

/// The outbox's SQL for one backend: `$db` the database, `$skip_locked` what a lease appends to
/// its row selection, `$backend` its [`crate::sql::dialect`] (for cursor reads), `$owner_turn` a
/// statement (bound to the owner) that makes endpoint creations of one owner take turns, if the
/// backend's transactions do not already.
macro_rules! for_backend {
    ($db:ty, $backend:ident, $skip_locked:expr, $owner_turn:expr) => {
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

        /// Events after `after` whose topic starts with `topic_prefix`, in cursor order.
        pub(crate) async fn after(
            conn: &mut Conn,
            topic_prefix: &str,
            after: UsageCursor,
            limit: u32,
        ) -> Result<Vec<UsageEventRecord>> {
            use crate::sql::dialect::$backend as d;
            let rows = sqlx::query(sql!(
                "SELECT ", d::CURSOR_COLS, " FROM outbox WHERE topic LIKE $4 AND ", d::CURSOR_AFTER,
                " ORDER BY ", d::CURSOR_ORDER, " LIMIT $3"
            ))
            .bind(after.txid)
            .bind(after.seq)
            .bind(i64::from(limit))
            .bind(format!("{}%", topic_prefix.replace(['%', '_'], "")))
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(cursor_record_from_row).collect()
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
    for_backend!(sqlx::Sqlite, sqlite, "", None);
}

pub(crate) mod postgres {
    for_backend!(
        sqlx::Postgres,
        postgres,
        " FOR UPDATE SKIP LOCKED",
        Some(
            "SELECT pg_advisory_xact_lock(hashtext('shoal_webhook_endpoints'), hashtext(COALESCE($1, '')))"
        )
    );
}

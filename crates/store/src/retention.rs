//! Retention's storage: what has aged out (finished jobs, operators' events, spent webhook
//! deliveries and the outbox events nothing waits on any more) and deleting exactly that. The
//! caller exports a batch before it deletes it, so a crash between the two exports the batch
//! again (every exported row carries its stable id) and loses nothing. Kept whatever their age:
//! queued and running jobs, pending deliveries and their events, usage events (`usage.*`, the
//! ledger's stream), the ledger, the audit log and the monthly counts quotas are held to.

use crate::outbox::{DeliveryRecord, OutboxRecord, delivery_from_row, event_from_row};
use crate::rows::{JOB_COLS, job_from_row};
use crate::{EventRecord, JobRecord, Result};
use serde::Serialize;
use shoal_core::Millis;
use shoal_core::audit::AuditEntry;

/// One batch of aged-out rows, oldest first within each kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Expired {
    /// Finished jobs (with their specs and results).
    pub jobs: Vec<JobRecord>,
    /// Operators' events.
    pub events: Vec<EventRecord>,
    /// Delivered or failed deliveries.
    pub deliveries: Vec<DeliveryRecord>,
    /// Outbox events with no pending delivery left.
    pub outbox: Vec<OutboxRecord>,
}

impl Expired {
    /// Whether the batch holds no row at all.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.events.is_empty()
            && self.deliveries.is_empty()
            && self.outbox.is_empty()
    }

    /// Rows in the batch, all kinds together.
    pub fn len(&self) -> usize {
        self.jobs.len() + self.events.len() + self.deliveries.len() + self.outbox.len()
    }
}

/// How many rows a deletion removed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Deleted {
    /// Finished jobs.
    pub jobs: u64,
    /// Operators' events.
    pub events: u64,
    /// Delivered or failed deliveries.
    pub deliveries: u64,
    /// Outbox events.
    pub outbox: u64,
}

/// Retention's part of the store.
#[async_trait::async_trait]
pub trait Retention: Send + Sync {
    /// Up to `limit` rows of each kind that aged out before `cutoff`.
    async fn expired(&self, cutoff: Millis, limit: u32) -> Result<Expired>;
    /// Deletes the rows of `batch` that are still aged out before `cutoff` (a job's output
    /// with it), and records `audit`, in one transaction.
    async fn delete_expired(
        &self,
        batch: &Expired,
        cutoff: Millis,
        audit: &AuditEntry,
    ) -> Result<Deleted>;
}

/// Outbox events retention may take: not usage events, not audit records waiting to be sealed,
/// and none a delivery still waits to carry.
const OUTBOX_AGED: &str = "created_at < $1 AND topic NOT LIKE 'usage.%' AND topic <> 'audit' \
     AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.event_id = outbox.id AND d.state = 'pending')";

macro_rules! for_backend {
    ($db:ty, $audit:ident) => {
        use super::*;
        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        pub(crate) async fn expired(conn: &mut Conn, cutoff: Millis, limit: u32) -> Result<Expired> {
            let limit = i64::from(limit);
            let jobs = sqlx::query(sql!(
                "SELECT ", JOB_COLS, " FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
                 AND state NOT IN ('queued', 'running') ORDER BY finished_at, id LIMIT $2"
            ))
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>>>()?;
            let events = sqlx::query(
                "SELECT seq, tenant, at, kind, detail FROM events WHERE at < $1 ORDER BY seq LIMIT $2",
            )
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(crate::sql::records::operator_event_from_row)
            .collect::<Result<Vec<_>>>()?;
            let deliveries = sqlx::query(
                "SELECT d.seq, d.event_id, d.destination, o.topic, d.state, d.attempts, d.next_attempt_at, \
                 d.last_status, d.last_error, d.last_attempt_at, d.created_at, d.delivered_at \
                 FROM outbox_deliveries d JOIN outbox o ON o.id = d.event_id \
                 WHERE d.created_at < $1 AND d.state <> 'pending' ORDER BY d.seq LIMIT $2",
            )
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
            let outbox = sqlx::query(sql!(
                "SELECT seq, id, topic, tenant, payload, created_at FROM outbox WHERE ",
                OUTBOX_AGED,
                " ORDER BY seq LIMIT $2"
            ))
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
            Ok(Expired {
                jobs,
                events,
                deliveries,
                outbox,
            })
        }

        pub(crate) async fn delete(
            conn: &mut Conn,
            batch: &Expired,
            cutoff: Millis,
            audit: &AuditEntry,
        ) -> Result<Deleted> {
            let mut n = Deleted::default();
            for j in &batch.jobs {
                // Checked again: only a job still finished before the cutoff goes.
                let r = sqlx::query(
                    "DELETE FROM jobs WHERE id = $1 AND finished_at IS NOT NULL AND finished_at < $2 \
                     AND state NOT IN ('queued', 'running')",
                )
                .bind(&j.id)
                .bind(cutoff)
                .execute(&mut *conn)
                .await?;
                if r.rows_affected() == 0 {
                    continue;
                }
                n.jobs += 1;
                for q in [
                    "DELETE FROM job_logs WHERE job_id = $1",
                    "DELETE FROM job_log_heads WHERE job_id = $1",
                    "DELETE FROM job_completions WHERE job_id = $1",
                ] {
                    sqlx::query(q).bind(&j.id).execute(&mut *conn).await?;
                }
            }
            for e in &batch.events {
                let r = sqlx::query("DELETE FROM events WHERE seq = $1 AND at < $2")
                    .bind(e.seq)
                    .bind(cutoff)
                    .execute(&mut *conn)
                    .await?;
                n.events += r.rows_affected();
            }
            for d in &batch.deliveries {
                let r = sqlx::query(
                    "DELETE FROM outbox_deliveries WHERE seq = $1 AND created_at < $2 AND state <> 'pending'",
                )
                .bind(d.seq)
                .bind(cutoff)
                .execute(&mut *conn)
                .await?;
                n.deliveries += r.rows_affected();
            }
            for o in &batch.outbox {
                let r = sqlx::query(sql!(
                    "DELETE FROM outbox WHERE seq = $2 AND ",
                    OUTBOX_AGED
                ))
                .bind(cutoff)
                .bind(o.seq)
                .execute(&mut *conn)
                .await?;
                if r.rows_affected() == 1 {
                    n.outbox += 1;
                    // Its spent deliveries, if a later batch has not taken them yet.
                    sqlx::query("DELETE FROM outbox_deliveries WHERE event_id = $1")
                        .bind(&o.id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            crate::audit::$audit::record(conn, audit, None).await?;
            Ok(n)
        }
    };
}

/// Implements [`Retention`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_retention {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::retention::Retention for $store {
            async fn expired(
                &self,
                cutoff: shoal_core::Millis,
                limit: u32,
            ) -> crate::Result<crate::retention::Expired> {
                let mut c = self.pool.acquire().await?;
                crate::retention::$backend::expired(&mut c, cutoff, limit).await
            }

            async fn delete_expired(
                &self,
                batch: &crate::retention::Expired,
                cutoff: shoal_core::Millis,
                audit: &shoal_core::audit::AuditEntry,
            ) -> crate::Result<crate::retention::Deleted> {
                let mut tx = self.$begin().await?;
                let n = crate::retention::$backend::delete(&mut tx, batch, cutoff, audit).await?;
                tx.commit().await?;
                Ok(n)
            }
        }
    };
}
pub(crate) use impl_retention;

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}

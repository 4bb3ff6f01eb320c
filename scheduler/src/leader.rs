//! Leadership among scheduler replicas: exactly one replica runs the control loop (planner and
//! fleet). On SQLite there is one replica and it always leads. On Postgres, leadership is a
//! session-level advisory lock held on a dedicated connection, and each new leader takes the next
//! *epoch* from a one-row table: the fencing token. Before every provider call the control loop
//! checks that its connection still holds the lock and that the epoch is still its own, so a
//! deposed leader (its connection dropped, a newer epoch written) stops acting.
//!
//! The check and the call are two steps, so a leader deposed in between can finish one call already
//! decided; providers are idempotent and every call is applied through a compare-and-set on the
//! sandbox's state, so such a call can repeat an action but not contradict the new leader's.

use async_trait::async_trait;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio::sync::Mutex;

/// Arbitrary, fixed: the advisory lock key of Shoal's leadership ("shoal" in ASCII).
const LOCK_KEY: i64 = 0x73_68_6f_61_6c;

/// What went wrong while contending for leadership.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leadership database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Who leads.
#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// Waits until this replica leads; returns its fencing epoch.
    async fn acquire(&self) -> u64;
    /// Whether this replica still leads under `epoch`.
    async fn check(&self, epoch: u64) -> bool;
}

/// The only replica: always the leader, epoch 1.
pub struct Solo;

#[async_trait]
impl Leadership for Solo {
    async fn acquire(&self) -> u64 {
        1
    }

    async fn check(&self, epoch: u64) -> bool {
        epoch == 1
    }
}

/// Leadership through a Postgres advisory lock.
pub struct PgLeader {
    url: String,
    holder: String,
    conn: Mutex<Option<PgConnection>>,
}

impl PgLeader {
    pub fn new(url: &str, holder: &str) -> Self {
        PgLeader {
            url: url.to_string(),
            holder: holder.to_string(),
            conn: Mutex::new(None),
        }
    }

    async fn try_acquire(&self) -> Result<Option<u64>, LeaderError> {
        let mut conn = PgConnection::connect(&self.url).await?;
        // A replica that does not lead tries twice a second; the table's `already exists,
        // skipping` notice each time would drown the log.
        sqlx::query("SET client_min_messages = warning")
            .execute(&mut conn)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS shoal_leader (id INT PRIMARY KEY, epoch BIGINT NOT NULL, holder TEXT NOT NULL, since TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut conn)
        .await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            conn.close().await.ok();
            return Ok(None);
        }
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO shoal_leader (id, epoch, holder) VALUES (1, 1, $1) \
             ON CONFLICT (id) DO UPDATE SET epoch = shoal_leader.epoch + 1, holder = $1, since = now() RETURNING epoch",
        )
        .bind(&self.holder)
        .fetch_one(&mut conn)
        .await?;
        *self.conn.lock().await = Some(conn);
        Ok(Some(epoch as u64))
    }
}

#[async_trait]
impl Leadership for PgLeader {
    async fn acquire(&self) -> u64 {
        loop {
            match self.try_acquire().await {
                Ok(Some(epoch)) => {
                    tracing::info!(holder = %self.holder, epoch, "this replica leads");
                    return epoch;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "contending for leadership failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn check(&self, epoch: u64) -> bool {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return false;
        };
        let current: Result<i64, _> =
            sqlx::query_scalar("SELECT epoch FROM shoal_leader WHERE id = 1")
                .fetch_one(&mut *conn)
                .await;
        match current {
            Ok(e) if e as u64 == epoch => true,
            other => {
                tracing::warn!(epoch, ?other, "leadership lost");
                // Drop the connection: the lock goes with it, if it is still held.
                *guard = None;
                false
            }
        }
    }
}

/// Leadership through a `coordination.k8s.io` Lease (the `kubernetes` provider): the Lease's
/// transition count is the fencing token; the hold is renewed on every check.
pub struct K8sLeader {
    lock: shoal_fleet::kubernetes::lease::LeaseLock,
}

impl K8sLeader {
    pub fn new(lock: shoal_fleet::kubernetes::lease::LeaseLock) -> Self {
        K8sLeader { lock }
    }
}

#[async_trait]
impl Leadership for K8sLeader {
    async fn acquire(&self) -> u64 {
        loop {
            match self.lock.try_acquire(crate::state::now_ms()).await {
                Ok(Some(l)) => {
                    tracing::info!(holder = %self.lock.holder(), token = l.token, "this replica holds the Lease");
                    return l.token.max(1);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "contending for the Lease failed"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn check(&self, epoch: u64) -> bool {
        match self.lock.renew(crate::state::now_ms()).await {
            Ok(Some(l)) => l.token.max(1) == epoch,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the Lease failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_replica_always_leads() {
        let solo = Solo;
        let epoch = solo.acquire().await;
        assert!(solo.check(epoch).await);
        assert!(!solo.check(epoch + 1).await);
    }
}

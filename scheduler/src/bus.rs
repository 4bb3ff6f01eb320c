//! Wake-ups across scheduler replicas. An enqueue or a completion on one replica must wake agents
//! long-polling on another and the leader's planner: on Postgres each replica publishes the tenant
//! whose work changed with `NOTIFY` and listens for the others'. A missed notification costs only
//! latency (agents' long polls and the planner's tick catch up), never correctness.

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::sync::Weak;
use std::time::Duration;

const CHANNEL: &str = "shoal_work";

/// The cross-replica notifier.
#[derive(Clone)]
pub struct PgBus {
    pool: PgPool,
}

impl PgBus {
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Ok(PgBus {
            pool: PgPoolOptions::new().max_connections(2).connect(url).await?,
        })
    }

    /// Tells the other replicas that `tenant`'s work changed; does not wait.
    pub fn publish(&self, tenant: &str) {
        let (pool, tenant) = (self.pool.clone(), tenant.to_string());
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&tenant)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "publishing a wake-up failed");
            }
        });
    }

    /// Delivers the other replicas' wake-ups to `app` until it is dropped, reconnecting after
    /// errors (a Postgres restart, say).
    pub async fn listen(self, app: Weak<crate::state::App>) {
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => {
                    if let Err(e) = l.listen(CHANNEL).await {
                        tracing::warn!(error = %e, "LISTEN failed");
                    } else {
                        loop {
                            match l.recv().await {
                                Ok(n) => match app.upgrade() {
                                    Some(app) => app.wake_local(n.payload()),
                                    None => return,
                                },
                                Err(e) => {
                                    tracing::warn!(error = %e, "wake-up listener lost its connection; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "wake-up listener cannot connect"),
            }
            if app.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

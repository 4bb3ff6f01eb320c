//! Wake-ups across scheduler replicas. An enqueue or a completion on one replica must wake agents
//! long-polling on another and the leader's planner: on Postgres each replica publishes the tenant
//! whose work changed with `NOTIFY` and listens for the others'. Likewise a job that ended or got
//! new output on one replica wakes the callers waiting on that job on another (`wait_s`, followed
//! logs; `crate::jobwatch`). A missed notification costs only latency (agents' long polls, the
//! planner's tick and the job waiters' slow re-reads catch up), never correctness.

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::sync::Weak;
use std::time::Duration;

const CHANNEL: &str = "shoal_work";
/// Job wake-ups: the payload is `PULSE:JOB_ID` (`state:job_…`, `log:job_…`).
const JOB_CHANNEL: &str = "shoal_jobs";

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
        self.notify(CHANNEL, tenant.to_string());
    }

    /// Tells the other replicas that job `id` changed; does not wait.
    pub fn publish_job(&self, id: &str, pulse: crate::jobwatch::Pulse) {
        self.notify(JOB_CHANNEL, format!("{}:{id}", pulse.as_str()));
    }

    fn notify(&self, channel: &'static str, payload: String) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(&payload)
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
                    if let Err(e) = l.listen_all([CHANNEL, JOB_CHANNEL]).await {
                        tracing::warn!(error = %e, "LISTEN failed");
                    } else {
                        loop {
                            match l.recv().await {
                                Ok(n) => match app.upgrade() {
                                    Some(app) if n.channel() == JOB_CHANNEL => {
                                        if let Some((pulse, id)) = n.payload().split_once(':')
                                            && let Some(pulse) =
                                                crate::jobwatch::Pulse::parse(pulse)
                                        {
                                            app.jobs.pulse(id, pulse);
                                        }
                                    }
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

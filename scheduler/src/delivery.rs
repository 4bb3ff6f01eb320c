//! The webhook delivery worker: every replica runs one. It leases due deliveries from the outbox,
//! POSTs each signed event to its endpoint (10 s timeout, no redirects, no proxy), and records
//! the answer: a 2xx delivers it; anything else schedules the next try in the row itself
//! (exponential backoff with jitter, capped at an hour) until `webhook_max_attempts` tries have
//! been made, when it is failed. Nothing waits in memory: a replica killed mid-attempt leaves a
//! lease that lapses, and the delivery falls due again on whichever replica leases it next.
//!
//! The worker wakes when this replica (or, through the Postgres bus, another) writes an event,
//! when the earliest pending delivery falls due, and at the latest every [`POLL`].

use crate::state::{App, now_ms};
use crate::views::{self, rfc3339};
use shoal_core::Millis;
use shoal_protocol::webhooks::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use shoal_store::{AttemptOutcome, JobRecord, LeasedDelivery};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// An endpoint that has not answered in this long has failed the attempt.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a lease on a delivery lasts: the attempt's timeout and a margin.
const LEASE: Duration = Duration::from_secs(15);
/// Attempts in flight per replica.
pub const CONCURRENCY: usize = 32;
/// The longest the worker sleeps without looking, should a wake-up be missed.
const POLL: Duration = Duration::from_secs(1);

/// The wait after failed attempt `attempt` (from 1): `initial` doubled per attempt, at most
/// [`MAX_BACKOFF`], with "equal jitter": half of it fixed, the other half scaled by `jitter` in
/// [0, 1], so replicas retrying together spread out while every wait stays at least half the
/// exponential step.
pub fn backoff(attempt: u32, initial: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let step = initial
        .checked_mul(1u32 << doublings)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = step / 2;
    half + half.mul_f64(jitter)
}

/// The request body of an event: `{"type", "timestamp", "data"}`. A job event's data is the job
/// as `GET /v1/jobs/{id}` shows it, from the record the outbox kept of the moment it ended.
pub fn body(d: &LeasedDelivery) -> Vec<u8> {
    let data = if d.event.topic.starts_with("job.") {
        match serde_json::from_value::<JobRecord>(d.event.payload.clone()) {
            Ok(job) => serde_json::to_value(views::job(&job)).unwrap_or_default(),
            Err(_) => d.event.payload.clone(),
        }
    } else {
        d.event.payload.clone()
    };
    let body = serde_json::json!({
        "type": d.event.topic,
        "timestamp": rfc3339(d.event.created_at),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The two HTTP clients: `open` for the platform's own endpoints, `guarded` for endpoints a
/// tenant created, which connects only to public addresses.
pub struct Clients {
    open: reqwest::Client,
    guarded: reqwest::Client,
}

impl Clients {
    pub fn new() -> anyhow::Result<Self> {
        let base = || {
            reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("Shoal-Webhooks/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Clients {
            open: base().build()?,
            guarded: base()
                .dns_resolver(Arc::new(crate::ssrf::PublicOnly))
                .build()?,
        })
    }
}

/// One attempt: sign, POST, judge the answer.
pub async fn attempt(
    app: &App,
    clients: &Clients,
    d: &LeasedDelivery,
    rand01: f64,
) -> AttemptOutcome {
    let retry_or_give_up = |status: Option<u16>, error: String| {
        let retry_at = (d.attempt < app.cfg.webhook_max_attempts).then(|| {
            let wait = backoff(d.attempt, app.cfg.webhook_retry_initial, rand01);
            now_ms().saturating_add(wait.as_millis() as Millis)
        });
        AttemptOutcome::Failed {
            status,
            error,
            retry_at,
        }
    };
    let url: reqwest::Url = match d.endpoint.url.parse() {
        Ok(u) => u,
        Err(e) => return retry_or_give_up(None, format!("bad URL: {e}")),
    };
    let guarded = d.endpoint.guarded && !app.cfg.webhook_allow_private;
    if guarded && let Err(e) = crate::ssrf::check_url(&url).await {
        return retry_or_give_up(None, e.to_string());
    }
    let key = match webhooks::secret_key(&d.endpoint.secret) {
        Ok(k) => k,
        Err(e) => return retry_or_give_up(None, e.to_string()),
    };
    let body = body(d);
    let ts = now_ms() / 1000;
    let signature = webhooks::sign(&key, &d.event.id, ts, &body);
    let client = if guarded {
        &clients.guarded
    } else {
        &clients.open
    };
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_ID, &d.event.id)
        .header(HEADER_TIMESTAMP, ts.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => AttemptOutcome::Delivered {
            status: r.status().as_u16(),
        },
        Ok(r) => retry_or_give_up(
            Some(r.status().as_u16()),
            format!("the endpoint answered {}", r.status()),
        ),
        Err(e) => retry_or_give_up(None, error_chain(&e)),
    }
}

/// An error with its causes, which is where reqwest says what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out.chars().take(500).collect()
}

async fn record(app: &App, d: &LeasedDelivery, outcome: &AttemptOutcome) {
    let label = match outcome {
        AttemptOutcome::Delivered { .. } => {
            let latency = (now_ms() - d.event.created_at).max(0) as f64 / 1000.0;
            app.metrics
                .webhook_latency
                .with_label_values(&[d.event.topic.as_str()])
                .observe(latency);
            "delivered"
        }
        AttemptOutcome::Failed {
            retry_at: Some(_), ..
        } => "retry",
        AttemptOutcome::Failed { retry_at: None, .. } => "failed",
    };
    app.metrics
        .webhook_attempts
        .with_label_values(&[label])
        .inc();
    if let AttemptOutcome::Failed { error, .. } = outcome {
        tracing::debug!(event = %d.event.id, endpoint = %d.endpoint.id, attempt = d.attempt, %error, "webhook attempt failed");
    }
    // A store that is down now loses only the record of this attempt: the lease lapses and the
    // delivery is tried again (at least once, the same webhook-id).
    if let Err(e) = app.store.finish_delivery(d, outcome, now_ms()).await {
        tracing::warn!(error = %e, event = %d.event.id, "recording a webhook attempt failed");
    }
}

/// Runs this replica's delivery worker until shutdown.
pub async fn run(app: Arc<App>, owner: String) {
    let clients = match Clients::new() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP clients; no webhooks will be sent");
            return;
        }
    };
    let mut inflight: JoinSet<()> = JoinSet::new();
    loop {
        if app.is_shutting_down() {
            break;
        }
        let woken = app.outbox_kick.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        while inflight.try_join_next().is_some() {}
        // With every slot busy, a finishing attempt's wake-up brings the loop back here.
        let free = CONCURRENCY.saturating_sub(inflight.len());
        if free > 0 {
            match app
                .store
                .lease_deliveries(
                    &owner,
                    free as u32,
                    LEASE.as_millis() as Millis,
                    app.cfg.webhook_max_attempts,
                    now_ms(),
                )
                .await
            {
                Ok(batch) => {
                    for d in batch {
                        let (app, clients) = (Arc::clone(&app), Arc::clone(&clients));
                        inflight.spawn(async move {
                            let outcome = attempt(&app, &clients, &d, rand::random::<f64>()).await;
                            record(&app, &d, &outcome).await;
                            // A slot is free, and a retry may be due soon: look again.
                            app.outbox_kick.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leasing webhook deliveries failed"),
            }
        }
        let wait = match app.store.next_delivery_due().await {
            Ok(Some(due)) => {
                Duration::from_millis((due - now_ms()).clamp(0, POLL.as_millis() as i64) as u64)
            }
            _ => POLL,
        };
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    // Attempts under way finish (each is bounded by its timeout), so a clean stop sends no
    // duplicate after the restart.
    while inflight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_an_hour() {
        let s = Duration::from_secs(5);
        assert_eq!(backoff(1, s, 1.0), s);
        assert_eq!(backoff(1, s, 0.0), s / 2);
        assert_eq!(backoff(2, s, 1.0), s * 2);
        assert_eq!(backoff(3, s, 0.5), Duration::from_millis(15_000));
        for attempt in [11, 12, 40, u32::MAX] {
            assert_eq!(backoff(attempt, s, 1.0), MAX_BACKOFF, "attempt {attempt}");
            assert_eq!(backoff(attempt, s, 0.0), MAX_BACKOFF / 2);
        }
        // Out-of-range jitter and huge initial waits neither panic nor escape the bounds.
        assert_eq!(backoff(1, s, 7.0), s);
        assert_eq!(backoff(1, s, f64::NAN), s / 2);
        assert_eq!(backoff(5, Duration::MAX, 1.0), MAX_BACKOFF);
        for attempt in 1..=40 {
            for j in [0.0, 0.3, 0.999, 1.0] {
                let w = backoff(attempt, Duration::from_millis(100), j);
                let step = Duration::from_millis(100)
                    .saturating_mul(1 << (attempt - 1).min(31))
                    .min(MAX_BACKOFF);
                assert!(
                    w >= step / 2 && w <= step,
                    "attempt {attempt} jitter {j}: {w:?}"
                );
            }
        }
    }
}

//! The usage event stream: hourly cuts of open billing intervals (and, on the same tick, the
//! budget checks of `crate::budget`), `GET /v1/usage/events` (pull,
//! by cursor) and the push to `--usage-sink` (CloudEvents batch mode).
//!
//! Events are written by the store in the transaction that closes their interval (a sandbox's
//! `Stopped` in the ledger, or an hour cut here), so this module never makes one: it only cuts
//! and reads. The push is at least once: a batch's position is saved only after the sink took
//! it (a 2xx), and it is kept in the store, so a restart, or another replica taking the lead,
//! resumes there. A sink deduplicates by the events' ids, which never change.

use crate::auth::Caller;
use crate::control::Control;
use crate::error::{ApiError, shape_error};
use crate::state::{App, now_ms};
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use shoal_core::Millis;
use shoal_metering::HOUR_MS;
use shoal_store::UsageCursor;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// How often the leader looks for an hour boundary to cut at and checks budgets.
const CUT_EVERY: Duration = Duration::from_secs(5);
/// An hour is cut this long after it ends, so that a provider's report of a stop just before
/// the boundary, arriving a little late, closes the interval at its own time first.
pub const CUT_GRACE_MS: Millis = 120_000;
/// Events per pushed batch.
pub const BATCH: u32 = 100;
/// The longest wait between two tries of a refused batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A sink that has not answered in this long has refused the batch.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the pusher sleeps without looking, should a wake-up be missed.
const POLL: Duration = Duration::from_secs(2);
/// The content type of a CloudEvents batch (JSON batch format, HTTP structured mode).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The hour boundary to cut at, at `now`.
pub fn boundary(now: Millis) -> Millis {
    now.saturating_sub(CUT_GRACE_MS)
        .div_euclid(HOUR_MS)
        .saturating_mul(HOUR_MS)
}

/// The name under which the pusher keeps its position for `url`: a new sink starts from the
/// beginning, and billing systems drop what they have by id.
pub fn sink_cursor_name(url: &str) -> String {
    format!("sink {url}")
}

/// Runs the hourly cut and, with a sink, the push, on the leader, until shutdown.
pub async fn run(app: Arc<App>, control: Arc<Control>) {
    let push = app
        .cfg
        .usage_sink
        .clone()
        .map(|url| tokio::spawn(push(Arc::clone(&app), Arc::clone(&control), url)));
    loop {
        if control.leads() {
            let now = now_ms();
            match app
                .store
                .cut_usage(boundary(now), &app.cfg.usage_context(), now)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(events = n, "cut billing intervals at the hour");
                    app.usage_kick.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "cutting billing intervals failed"),
            }
            if let Err(e) = crate::budget::check(&app, now).await {
                tracing::warn!(error = %e, "checking budgets failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CUT_EVERY) => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    if let Some(p) = push {
        let _ = p.await;
    }
}

/// What one try of a batch came to.
enum Sent {
    Taken,
    /// Refused or unreachable: try again after at least this long (the sink's `Retry-After`).
    Refused {
        at_least: Option<Duration>,
        why: String,
    },
}

async fn send(client: &reqwest::Client, url: &str, token: Option<&str>, body: Vec<u8>) -> Sent {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Sent::Taken,
        Ok(r) => {
            let at_least = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_BACKOFF));
            Sent::Refused {
                at_least,
                why: format!("HTTP {}", r.status().as_u16()),
            }
        }
        Err(e) => Sent::Refused {
            at_least: None,
            why: e.to_string(),
        },
    }
}

/// Pushes every usage event to `url`, batch by batch, while this replica leads.
async fn push(app: Arc<App>, control: Arc<Control>, url: String) {
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "building the usage sink's HTTP client failed");
            return;
        }
    };
    let name = sink_cursor_name(&url);
    let token = app.cfg.usage_sink_token.clone();
    let mut failures: u32 = 0;
    loop {
        if app.shutdown.is_cancelled() {
            drain(&app, &control, &client, &url, token.as_deref(), &name).await;
            return;
        }
        let mut wait = POLL;
        if control.leads() {
            match next_batch(&app, &name).await {
                Err(e) => tracing::warn!(error = %e, "reading usage events failed"),
                Ok(None) => {}
                Ok(Some((body, last, n))) => {
                    match send(&client, &url, token.as_deref(), body).await {
                        Sent::Taken => {
                            failures = 0;
                            if let Err(e) = app.store.set_usage_cursor(&name, last, now_ms()).await
                            {
                                // The batch goes again: at least once.
                                tracing::warn!(error = %e, "saving the usage sink's position failed");
                            }
                            tracing::debug!(events = n, cursor = %last, "usage batch delivered");
                            continue;
                        }
                        Sent::Refused { at_least, why } => {
                            failures = failures.saturating_add(1);
                            let step = crate::delivery::backoff(
                                failures,
                                app.cfg.usage_sink_retry_initial,
                                rand::random::<f64>(),
                            )
                            .min(MAX_BACKOFF);
                            wait = at_least.map_or(step, |a| a.max(step));
                            tracing::warn!(sink = %url, failures, error = %why, retry_in = ?wait, "the usage sink refused a batch");
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.usage_kick.notified(), if failures == 0 => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
}

/// At shutdown: once the provider has stopped every sandbox (their intervals closed), sends what
/// is left, for a few seconds at most; what does not make it goes after the next start.
async fn drain(
    app: &App,
    control: &Control,
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    name: &str,
) {
    if !control.leads() {
        return;
    }
    let mut stopped = app.provider_stopped.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(25), stopped.wait_for(|s| *s)).await;
    // The control loop records the provider's last reports right after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some((body, last, _))) = next_batch(app, name).await {
            match send(client, url, token, body).await {
                Sent::Taken => {
                    let _ = app.store.set_usage_cursor(name, last, now_ms()).await;
                }
                Sent::Refused { .. } => return,
            }
        }
    })
    .await;
}

/// The next batch after the pusher's saved position: its body, the position after it, its size.
async fn next_batch(
    app: &App,
    name: &str,
) -> Result<Option<(Vec<u8>, UsageCursor, usize)>, shoal_store::StoreError> {
    let at = app.store.usage_cursor(name).await?.unwrap_or_default();
    let events = app.store.usage_events(None, at, BATCH).await?;
    let Some(last) = events.last().map(|e| e.cursor) else {
        return Ok(None);
    };
    let batch: Vec<&serde_json::Value> = events.iter().map(|e| &e.event.payload).collect();
    let body = serde_json::to_vec(&batch).unwrap_or_default();
    Ok(Some((body, last, events.len())))
}

/// The query of `GET /v1/usage/events`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageEventsQuery {
    /// A `next_cursor` from an earlier page; from the first event when absent.
    #[param(pattern = r"^[0-9]{1,18}\.[0-9]{1,18}$")]
    after: Option<String>,
    /// Most events in the page: 1 to 1000 [default: 100].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// One tenant's events (a tenant key: always its own).
    tenant: Option<String>,
}

/// A page of usage events.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageEventsPage {
    /// CloudEvents 1.0 (structured JSON), type `dev.shoal.sandbox.usage`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page: the position after this page's last event (the
    /// position given when the page is empty, so a consumer can poll with it).
    pub next_cursor: String,
}

/// Most events one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// Usage events, one per closed billing interval, in a stable order that survives restarts.
#[utoipa::path(get, path = "/v1/usage/events", tag = "usage", params(UsageEventsQuery),
    responses(
        (status = 200, body = UsageEventsPage),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 404, description = "no such tenant", body = crate::openapi::ErrorBody),
    ))]
pub async fn usage_events(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<UsageEventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<UsageEventsPage>, ApiError> {
    let Query(q) = q.map_err(|e| shape_error(&e.body_text()))?;
    let tenant = crate::api::scoped_tenant(&app, &caller, q.tenant.as_deref()).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("{limit} is not between 1 and {MAX_PAGE}"),
        ));
    }
    let after: UsageCursor = match &q.after {
        None => UsageCursor::default(),
        Some(a) => a
            .parse()
            .map_err(|e: String| ApiError::invalid("after", e))?,
    };
    let page = app
        .store
        .usage_events(tenant.as_deref(), after, limit)
        .await?;
    let next = page.last().map_or(after, |e| e.cursor);
    Ok(axum::Json(UsageEventsPage {
        events: page.into_iter().map(|e| e.event.payload).collect(),
        next_cursor: next.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_waits_out_its_grace() {
        let h = HOUR_MS;
        assert_eq!(boundary(10 * h + CUT_GRACE_MS - 1), 9 * h);
        assert_eq!(boundary(10 * h + CUT_GRACE_MS), 10 * h);
        assert_eq!(boundary(0), -h);
    }
}

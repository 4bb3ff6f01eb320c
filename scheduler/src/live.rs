//! The operators' live view: a sampler task that once a second builds the fleet overview (per
//! tenant: plan, sandboxes by state against desired, queued and running jobs, jobs per minute,
//! quota use), keeps an in-memory ring of samples over the last hour for the dashboard's charts,
//! forwards new events, sets the gauges that need a look across the fleet (desired size, quota
//! use, leaked sandboxes), and serves it all as `GET /v1/overview`, `GET /v1/history` and the
//! server-sent events of `GET /v1/stream`.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::{self, EventView, QuotaUsage, SandboxCounts, rfc3339};
use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use shoal_core::Millis;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use utoipa::{IntoParams, ToSchema};

/// How often the overview is rebuilt.
const TICK: Duration = Duration::from_secs(1);
/// A history sample every this many ticks (5 s).
const SAMPLE_EVERY: u64 = 5;
/// How far back the history goes.
const HISTORY_MS: Millis = 3_600_000;
/// The provider is checked for leaked sandboxes every this many ticks (1 min).
const LEAK_CHECK_EVERY: u64 = 60;

/// One tenant in the overview.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct TenantLive {
    pub tenant: String,
    #[schema(value_type = String, example = "pro")]
    pub plan: shoal_core::PlanTier,
    pub draining: bool,
    /// The pool size the planner last wanted.
    pub desired: u32,
    /// Booting, ready and busy sandboxes.
    pub active: u64,
    pub sandboxes: SandboxCounts,
    pub queued: u64,
    pub running: u64,
    /// Jobs that reached a terminal state in the last minute.
    pub jobs_per_minute: u64,
    /// This month's jobs against the quota, with the 80% warning.
    pub usage: QuotaUsage,
    /// This month's spend, when `[prices]` prices the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<Spend>,
}

/// A tenant's spend this month against its budget.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Spend {
    pub spent: f64,
    pub currency: String,
    /// `limits.monthly_budget`; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// At 80% of the budget or more.
    pub warning: bool,
    /// At the budget or more.
    pub exceeded: bool,
}

/// The whole fleet added up.
#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct Totals {
    pub desired: u64,
    pub active: u64,
    pub sandboxes: SandboxCounts,
    pub queued: u64,
    pub running: u64,
    pub jobs_per_minute: u64,
}

/// The fleet overview: what the dashboard's first page shows.
#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct Overview {
    /// When it was built.
    pub at: String,
    pub tenants: Vec<TenantLive>,
    pub totals: Totals,
}

impl Overview {
    fn add_up(at: Millis, tenants: Vec<TenantLive>) -> Overview {
        let mut t = Totals::default();
        for p in &tenants {
            t.desired += u64::from(p.desired);
            t.active += p.active;
            t.queued += p.queued;
            t.running += p.running;
            t.jobs_per_minute += p.jobs_per_minute;
            t.sandboxes.booting += p.sandboxes.booting;
            t.sandboxes.ready += p.sandboxes.ready;
            t.sandboxes.busy += p.sandboxes.busy;
            t.sandboxes.suspended += p.sandboxes.suspended;
            t.sandboxes.stopped += p.sandboxes.stopped;
        }
        Overview {
            at: rfc3339(at),
            tenants,
            totals: t,
        }
    }

    /// What `caller` may see: everything for the admin, its own tenant for a tenant key.
    fn for_caller(&self, caller: &Caller) -> Overview {
        match caller.tenant() {
            None => self.clone(),
            Some(t) => {
                let mut o = Overview::add_up(
                    0,
                    self.tenants
                        .iter()
                        .filter(|p| p.tenant == t)
                        .cloned()
                        .collect(),
                );
                o.at = self.at.clone();
                o
            }
        }
    }

    fn same_state(&self, other: &Overview) -> bool {
        self.tenants == other.tenants && self.totals == other.totals
    }
}

/// One pool at one sample.
#[derive(Debug, Clone, PartialEq)]
struct PoolSample {
    tenant: String,
    queued: u64,
    running: u64,
    active: u64,
    desired: u64,
}

/// The fleet at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Millis,
    pools: Vec<PoolSample>,
}

/// One point of a history series: one tenant's pool, or the sum of those the caller sees.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Point {
    pub at: String,
    /// `at` in milliseconds since the Unix epoch, for charts.
    pub t: i64,
    pub queued: u64,
    pub running: u64,
    /// Booting, ready and busy sandboxes: the pool's size.
    pub active: u64,
    pub desired: u64,
}

impl Sample {
    /// The point of `tenant`, or the sum over what `caller` sees.
    fn point(&self, tenant: Option<&str>, caller: &Caller) -> Point {
        let mut p = Point {
            at: rfc3339(self.at),
            t: self.at,
            queued: 0,
            running: 0,
            active: 0,
            desired: 0,
        };
        for s in self.pools.iter().filter(|s| {
            tenant.is_none_or(|t| s.tenant == t) && caller.check_tenant(&s.tenant).is_ok()
        }) {
            p.queued += s.queued;
            p.running += s.running;
            p.active += s.active;
            p.desired += s.desired;
        }
        p
    }
}

/// What the stream forwards besides overviews.
#[derive(Debug, Clone)]
enum Feed {
    Event(EventView),
    Sample(Arc<Sample>),
}

/// The live view's shared state, one per scheduler (in `App`).
pub struct Live {
    overview: watch::Sender<Arc<Overview>>,
    feed: broadcast::Sender<Feed>,
    history: Mutex<VecDeque<Arc<Sample>>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            overview: watch::channel(Arc::new(Overview::default())).0,
            feed: broadcast::channel(256).0,
            history: Mutex::new(VecDeque::new()),
        }
    }
}

impl Live {
    fn push_sample(&self, s: Arc<Sample>) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        while h.front().is_some_and(|f| f.at < s.at - HISTORY_MS) {
            h.pop_front();
        }
        h.push_back(Arc::clone(&s));
        drop(h);
        let _ = self.feed.send(Feed::Sample(s));
    }

    fn samples(&self) -> Vec<Arc<Sample>> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What is slow to read, refreshed with each sample rather than each tick.
#[derive(Default)]
struct Slow {
    usage: HashMap<String, QuotaUsage>,
    spend: HashMap<String, Spend>,
    per_minute: HashMap<String, u64>,
}

/// Runs the sampler until shutdown.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_seq = match app.store.events(None, 1).await {
        Ok(e) => e.first().map_or(0, |e| e.seq),
        Err(_) => 0,
    };
    let mut slow = Slow::default();
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let sample_now = n % SAMPLE_EVERY == 0;
        if let Err(e) = pass(&app, &mut slow, sample_now, &mut last_seq).await {
            tracing::debug!(error = %e, "live view: a pass failed");
        }
        // Only the leader lists the provider's sandboxes: on Fly, replicas listing each on
        // their own would add up past the app's list rate limit.
        if n % LEAK_CHECK_EVERY == 0 && app.metrics.leader.get() == 1 {
            check_leaks(&app).await;
        }
    }
}

async fn pass(
    app: &App,
    slow: &mut Slow,
    sample_now: bool,
    last_seq: &mut i64,
) -> Result<(), shoal_store::StoreError> {
    let now = now_ms();
    let tenants = app.store.tenants().await?;
    let counts: HashMap<String, shoal_store::QueueCounts> =
        app.store.queue_counts(now).await?.into_iter().collect();
    let mut by_tenant: HashMap<String, SandboxCounts> = HashMap::new();
    for s in app.store.sandboxes(None).await? {
        by_tenant.entry(s.tenant.clone()).or_default().add(s.state);
    }
    let desired = app
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if sample_now || tenants.iter().any(|t| !slow.usage.contains_key(&t.id)) {
        let period = shoal_metering::month_of(now);
        slow.usage.clear();
        slow.spend.clear();
        slow.per_minute.clear();
        for t in &tenants {
            if let Some(spent) = crate::budget::spent(app, &t.id, now).await? {
                let budget = t.limits().monthly_budget;
                let reached = budget.map(|b| crate::budget::reached(spent, b).len());
                slow.spend.insert(
                    t.id.clone(),
                    Spend {
                        spent,
                        currency: app.cfg.prices.currency.clone(),
                        budget,
                        warning: reached.is_some_and(|n| n >= 1),
                        exceeded: reached.is_some_and(|n| n >= 2),
                    },
                );
            }
            let jobs = app.store.period_jobs(&t.id, period.0).await?;
            let usage = views::quota_usage(period, jobs, t.limits().jobs_per_month);
            let label = app.metrics.tenant(&t.id);
            match usage.fraction {
                Some(f) => app
                    .metrics
                    .quota_usage_ratio
                    .with_label_values(&[label])
                    .set(f),
                None => {
                    let _ = app.metrics.quota_usage_ratio.remove_label_values(&[label]);
                }
            }
            slow.usage.insert(t.id.clone(), usage);
            let done = app
                .store
                .finished_jobs(Some(&t.id), now - 60_000, now + 1)
                .await?
                .len() as u64;
            slow.per_minute.insert(t.id.clone(), done);
        }
    }
    let mut live = Vec::with_capacity(tenants.len());
    for t in &tenants {
        let c = counts.get(&t.id).copied().unwrap_or_default();
        let sandboxes = by_tenant.get(&t.id).copied().unwrap_or_default();
        let want = desired.get(&t.id).copied().unwrap_or(0);
        app.metrics
            .sandboxes_desired
            .with_label_values(&[app.metrics.tenant(&t.id)])
            .set(i64::from(want));
        live.push(TenantLive {
            tenant: t.id.clone(),
            plan: t.plan,
            draining: t.draining,
            desired: want,
            active: sandboxes.active(),
            sandboxes,
            queued: c.queued,
            running: c.running,
            jobs_per_minute: slow.per_minute.get(&t.id).copied().unwrap_or(0),
            usage: slow
                .usage
                .get(&t.id)
                .cloned()
                .unwrap_or_else(|| views::quota_usage(shoal_metering::month_of(now), 0, None)),
            spend: slow.spend.get(&t.id).cloned(),
        });
    }
    let overview = Overview::add_up(now, live);
    if sample_now {
        app.live.push_sample(Arc::new(Sample {
            at: now,
            pools: overview
                .tenants
                .iter()
                .map(|p| PoolSample {
                    tenant: p.tenant.clone(),
                    queued: p.queued,
                    running: p.running,
                    active: p.active,
                    desired: u64::from(p.desired),
                })
                .collect(),
        }));
    }
    app.live.overview.send_if_modified(|cur| {
        if cur.same_state(&overview) {
            false
        } else {
            *cur = Arc::new(overview);
            true
        }
    });
    let mut fresh = app.store.events(None, 200).await?;
    fresh.retain(|e| e.seq > *last_seq);
    for e in fresh.iter().rev() {
        *last_seq = (*last_seq).max(e.seq);
        let _ = app.live.feed.send(Feed::Event(views::event(e)));
    }
    Ok(())
}

/// Counts provider sandboxes that the store does not know (or knows as destroyed): the control
/// loop collects them, so a count that stays up means collection is failing.
async fn check_leaks(app: &App) {
    let r = app.provider.list().await;
    app.metrics
        .provider_calls
        .with_label_values(&[
            app.provider.name(),
            "list",
            crate::metrics::provider_outcome(r.as_ref().err()),
        ])
        .inc();
    let Ok(listed) = r else { return };
    let Ok(known) = app.store.sandboxes(None).await else {
        return;
    };
    let known: HashSet<&str> = known.iter().map(|s| s.id.as_str()).collect();
    let leaked = listed
        .iter()
        .filter(|o| !known.contains(o.sandbox.sandbox_id.as_str()))
        .count();
    app.metrics
        .sandboxes_leaked
        .with_label_values(&[app.provider.name()])
        .set(leaked as i64);
}

/// The fleet overview now.
#[utoipa::path(get, path = "/v1/overview", tag = "operators",
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody)))]
pub async fn overview(State(app): State<Arc<App>>, caller: Caller) -> Json<Overview> {
    let o = app.live.overview.borrow().clone();
    Json(o.for_caller(&caller))
}

/// The query of `GET /v1/history`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// One tenant's pool; without it, the sum over the tenants the caller sees.
    tenant: Option<String>,
}

/// Queue depth and pool size over the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub tenant: Option<String>,
    /// Seconds between samples.
    pub interval_s: u64,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// Queue depth and pool size over the last hour, a sample every 5 s.
#[utoipa::path(get, path = "/v1/history", tag = "operators", params(HistoryQuery),
    responses(
        (status = 200, body = History),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
    ))]
pub async fn history(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    if let Some(t) = &q.tenant {
        crate::api::visible_tenant(&app, &caller, t).await?;
    }
    let tenant = q.tenant.or_else(|| caller.tenant().map(str::to_string));
    Ok(Json(History {
        points: app
            .live
            .samples()
            .iter()
            .map(|s| s.point(tenant.as_deref(), &caller))
            .collect(),
        tenant,
        interval_s: TICK.as_secs() * SAMPLE_EVERY,
    }))
}

/// Live updates as server-sent events: `overview` (an `Overview`, at once and on every change),
/// `event` (an `EventView`, as each is recorded) and `sample` (a `Point` of the whole fleet and
/// one per tenant, every 5 s).
#[utoipa::path(get, path = "/v1/stream", tag = "operators",
    responses(
        (status = 200, description = "`text/event-stream` of `overview`, `event` and `sample` events",
            body = Overview, content_type = "text/event-stream"),
        (status = 401, body = ErrorBody),
        (status = 503, description = "shutting down", body = ErrorBody),
    ))]
pub async fn stream(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let mut overviews = app.live.overview.subscribe();
    let mut feed = app.live.feed.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let first = overviews.borrow_and_update().for_caller(&caller);
        if tx.send(json_event("overview", &first)).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                r = overviews.changed() => match r {
                    Ok(()) => json_event("overview", &overviews.borrow_and_update().for_caller(&caller)),
                    Err(_) => return,
                },
                m = feed.recv() => match m {
                    Ok(Feed::Event(e)) => {
                        if e.tenant.as_deref().map_or(caller.tenant().is_some(), |t| caller.check_tenant(t).is_err()) {
                            continue;
                        }
                        json_event("event", &e)
                    }
                    Ok(Feed::Sample(s)) => {
                        let mut per: HashMap<String, Point> = HashMap::new();
                        for p in s.pools.iter().filter(|p| caller.check_tenant(&p.tenant).is_ok()) {
                            per.insert(p.tenant.clone(), s.point(Some(&p.tenant), &caller));
                        }
                        json_event("sample", &serde_json::json!({"fleet": s.point(None, &caller), "tenants": per}))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = app.shutdown.cancelled() => return,
                _ = tx.closed() => return,
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn json_event(name: &str, v: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Millis, pools: &[(&str, u64, u64)]) -> Arc<Sample> {
        Arc::new(Sample {
            at,
            pools: pools
                .iter()
                .map(|(t, q, a)| PoolSample {
                    tenant: t.to_string(),
                    queued: *q,
                    running: 0,
                    active: *a,
                    desired: *a,
                })
                .collect(),
        })
    }

    #[test]
    fn history_keeps_the_last_hour_and_sums_what_the_caller_sees() {
        let live = Live::default();
        live.push_sample(sample(0, &[("a", 1, 1)]));
        live.push_sample(sample(HISTORY_MS / 2, &[("a", 2, 1), ("b", 5, 2)]));
        live.push_sample(sample(HISTORY_MS + 1, &[("a", 3, 2), ("b", 4, 3)]));
        let s = live.samples();
        assert_eq!(s.len(), 2, "the sample older than an hour is dropped");
        let admin = s[1].point(None, &Caller::Admin);
        assert_eq!((admin.queued, admin.active), (7, 5));
        let b = Caller::Tenant {
            tenant: "b".into(),
            key: "key_b".into(),
        };
        let only_b = s[1].point(None, &b);
        assert_eq!((only_b.queued, only_b.active), (4, 3));
        assert_eq!(s[1].point(Some("a"), &Caller::Admin).queued, 3);
    }
}

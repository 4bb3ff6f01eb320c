//! The scheduler's Prometheus metrics, with a bound on how many tenants get a label of their own.
//!
//! With several replicas every one is scraped: counters and the HTTP metrics are each replica's
//! own (sum them), while the fleet's gauges (queue depth, running jobs, sandboxes, desired sizes,
//! quota use, leaks) are shown by the leader only, so a sum over replicas counts them once.
//! `shoal_leader` is 1 on the replica that leads, 0 on the others.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::collections::HashSet;
use std::sync::Mutex;

/// Everything `/metrics` shows.
pub struct Metrics {
    pub registry: Registry,
    pub jobs_enqueued: IntCounterVec,
    pub jobs_started: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub jobs_running: IntGaugeVec,
    pub sandboxes: IntGaugeVec,
    /// Sandboxes marked unhealthy, by tenant and cause (`agent_silent`, `provider_stopped`).
    pub sandboxes_unhealthy: IntCounterVec,
    pub provider_calls: IntCounterVec,
    pub wake_latency: HistogramVec,
    pub boot_latency: HistogramVec,
    pub start_latency: HistogramVec,
    pub quota_warnings: IntCounterVec,
    pub rejected: IntCounterVec,
    pub compute_seconds: prometheus::CounterVec,
    /// The size the planner last wanted per pool (set by the live view's sampler).
    pub sandboxes_desired: IntGaugeVec,
    /// Jobs admitted this month over the monthly quota (set by the live view's sampler).
    pub quota_usage_ratio: GaugeVec,
    /// Spend this month over the tenant's monthly budget (absent without a budget or a price).
    pub budget_usage_ratio: GaugeVec,
    /// Provider resources the store does not know or knows as destroyed (set by the sampler).
    pub sandboxes_leaked: IntGaugeVec,
    /// Callers waiting on one job (`wait_s`, followed logs), set when the metrics are read.
    pub job_watchers: prometheus::IntGauge,
    /// Bytes of job output stored, as agents ship it.
    pub log_bytes: IntCounterVec,
    /// Webhook delivery attempts by outcome: `delivered`, `retry`, `failed`.
    pub webhook_attempts: IntCounterVec,
    /// From an event's write to its delivery, by event type.
    pub webhook_latency: HistogramVec,
    /// 1 while this replica leads (runs the planner and the fleet), else 0.
    pub leader: prometheus::IntGauge,
    /// HTTP requests answered, by method, route template and status.
    pub http_requests: IntCounterVec,
    /// From a request's arrival to its answer's headers, by method and route template.
    pub http_duration: HistogramVec,
    tenants: Mutex<HashSet<String>>,
    max_tenants: usize,
}

/// The gauges that describe the whole fleet, read from the shared store: shown by the leader only.
const FLEET_GAUGES: &[&str] = &[
    "shoal_queue_depth",
    "shoal_jobs_running",
    "shoal_sandboxes",
    "shoal_sandboxes_desired",
    "shoal_sandboxes_leaked",
    "shoal_quota_usage_ratio",
];

/// The git revision the binary was built from, when the build said (`SHOAL_REVISION`).
pub const REVISION: &str = match option_env!("SHOAL_REVISION") {
    Some(r) => r,
    None => "unknown",
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new(max_tenants: usize) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let compute_seconds = prometheus::CounterVec::new(
            Opts::new(
                "shoal_compute_seconds_total",
                "Billable sandbox seconds, counted when a sandbox stops.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(compute_seconds.clone()))
            .expect("unique metric");
        let quota_usage_ratio = GaugeVec::new(
            Opts::new(
                "shoal_quota_usage_ratio",
                "Jobs admitted this month over the tenant's monthly quota (absent when unlimited).",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(quota_usage_ratio.clone()))
            .expect("unique metric");
        let budget_usage_ratio = GaugeVec::new(
            Opts::new(
                "shoal_budget_usage_ratio",
                "Spend this month over the tenant's monthly budget (absent without one).",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(budget_usage_ratio.clone()))
            .expect("unique metric");
        let job_watchers = prometheus::IntGauge::new(
            "shoal_job_watchers",
            "Requests waiting on one job: `wait_s` waits and followed logs.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(job_watchers.clone()))
            .expect("unique metric");
        let leader = prometheus::IntGauge::new(
            "shoal_leader",
            "1 while this replica leads (plans and drives the fleet), else 0.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(leader.clone()))
            .expect("unique metric");
        gauge(
            "shoal_build_info",
            "Always 1; the labels say which build this replica runs.",
            &["version", "revision"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
        .set(1);
        Metrics {
            leader,
            http_requests: counter(
                "shoal_http_requests_total",
                "HTTP requests answered, by method, route template and status code.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "shoal_http_request_duration_seconds",
                "From a request's arrival to its answer's headers, by method and route template.",
                &["method", "route"],
            ),
            job_watchers,
            log_bytes: counter(
                "shoal_log_bytes_total",
                "Bytes of job output that agents shipped and the scheduler stored.",
                &["tenant"],
            ),
            sandboxes_desired: gauge(
                "shoal_sandboxes_desired",
                "The pool size the planner last wanted.",
                &["tenant"],
            ),
            sandboxes_leaked: gauge(
                "shoal_sandboxes_leaked",
                "Provider sandboxes that the store does not know or knows as destroyed, at the last check.",
                &["provider"],
            ),
            quota_usage_ratio,
            budget_usage_ratio,
            jobs_enqueued: counter(
                "shoal_jobs_enqueued_total",
                "Jobs admitted.",
                &["tenant", "kind"],
            ),
            jobs_started: counter(
                "shoal_jobs_started_total",
                "Job attempts handed to an agent.",
                &["tenant"],
            ),
            jobs_finished: counter(
                "shoal_jobs_finished_total",
                "Jobs that reached a terminal state, by outcome.",
                &["tenant", "outcome"],
            ),
            queue_depth: gauge("shoal_queue_depth", "Jobs queued.", &["tenant"]),
            jobs_running: gauge("shoal_jobs_running", "Jobs running.", &["tenant"]),
            sandboxes: gauge(
                "shoal_sandboxes",
                "Sandboxes by state.",
                &["tenant", "state"],
            ),
            sandboxes_unhealthy: counter(
                "shoal_sandboxes_unhealthy_total",
                "Sandboxes marked unhealthy (their agent went silent, or the provider reported them stopped), by cause.",
                &["tenant", "cause"],
            ),
            provider_calls: counter(
                "shoal_provider_calls_total",
                "Provider calls by provider, operation and outcome.",
                &["provider", "operation", "outcome"],
            ),
            wake_latency: histogram(
                "shoal_wake_latency_seconds",
                "From an enqueue for a tenant with no ready sandbox to the provider call that wakes or creates one.",
                &["operation"],
            ),
            boot_latency: histogram(
                "shoal_boot_latency_seconds",
                "From the provider call to the sandbox's agent asking for work.",
                &["provider"],
            ),
            start_latency: histogram(
                "shoal_job_start_latency_seconds",
                "From enqueue to the job's first lease.",
                &["tenant"],
            ),
            quota_warnings: counter(
                "shoal_quota_warnings_total",
                "Tenants warned at 80% of their monthly quota.",
                &["tenant"],
            ),
            rejected: counter(
                "shoal_jobs_rejected_total",
                "Enqueues refused, by reason.",
                &["tenant", "reason"],
            ),
            webhook_attempts: counter(
                "shoal_webhook_attempts_total",
                "Webhook delivery attempts by outcome (delivered, retry, failed).",
                &["outcome"],
            ),
            webhook_latency: histogram(
                "shoal_webhook_delivery_latency_seconds",
                "From an event's write to its delivery to an endpoint.",
                &["type"],
            ),
            compute_seconds,
            registry,
            tenants: Mutex::new(HashSet::new()),
            max_tenants,
        }
    }

    /// The label for `tenant`: its name for the first `max_tenants` tenants seen, `other` after.
    pub fn tenant<'a>(&self, tenant: &'a str) -> &'a str {
        let mut seen = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(tenant) {
            return tenant;
        }
        if seen.len() < self.max_tenants {
            seen.insert(tenant.to_string());
            return tenant;
        }
        "other"
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let mut families = self.registry.gather();
        if self.leader.get() == 0 {
            families.retain(|f| !FLEET_GAUGES.contains(&f.name()));
        }
        let _ = prometheus::TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Counts and times every HTTP answer by its route template (`/v1/jobs/{id}`, never the id
/// itself, so the label set stays bounded); requests no route matched count as `unmatched`.
pub async fn http_layer(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::state::App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let answer = next.run(req).await;
    let m = &app.metrics;
    m.http_duration
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[method, &route, answer.status().as_str()])
        .inc();
    answer
}

/// The `outcome` label of a provider call.
pub fn provider_outcome(error: Option<&shoal_fleet::ProviderError>) -> &'static str {
    use shoal_fleet::ProviderError as E;
    match error {
        None => "ok",
        Some(E::RateLimited { .. }) => "rate_limited",
        Some(E::Capacity(_)) => "capacity",
        Some(E::NotFound(_)) => "not_found",
        Some(E::Conflict(_)) => "conflict",
        Some(E::Transient(_)) => "transient",
        Some(E::Permanent(_)) => "permanent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_bounded() {
        let m = Metrics::new(2);
        assert_eq!(m.tenant("a"), "a");
        assert_eq!(m.tenant("b"), "b");
        assert_eq!(m.tenant("c"), "other");
        assert_eq!(m.tenant("a"), "a");
        m.jobs_enqueued
            .with_label_values(&[m.tenant("a"), "agent"])
            .inc();
        assert!(
            m.render()
                .contains("shoal_jobs_enqueued_total{kind=\"agent\",tenant=\"a\"} 1")
        );
    }
}

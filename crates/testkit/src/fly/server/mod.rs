//! The emulator's HTTP side: every request goes through the spec check, the counters, Fly's rate
//! limits and the injected faults before the operation itself runs on the machines.

use super::machines::{HEX, Lease, Machine, Phase, ULID, now_ms, random_id, signal};
use super::{EmulatorConfig, Faults, MachineView, Spec, Stats};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod leases;
mod process;

type Limiter = RateLimiter<(String, String), HashMapStateStore<(String, String)>, DefaultClock>;

const VIOLATION_SAMPLES: usize = 20;

#[derive(Default)]
pub(crate) struct World {
    pub machines: HashMap<String, Machine>,
    pub order: Vec<String>,
}

pub(crate) struct Shared {
    pub cfg: EmulatorConfig,
    pub faults: Mutex<Faults>,
    pub spec: Spec,
    pub world: Mutex<World>,
    pub stats: Mutex<Stats>,
    actions: Limiter,
    gets: Limiter,
    epoch: Instant,
    pgids: Mutex<HashSet<u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn error(status: u16, message: impl Into<String>) -> Response {
    answer(status, json!({"error": message.into()}))
}

fn retry_after(message: &str, wait: Duration) -> Response {
    let mut r = error(429, message);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(secs));
    r
}

fn signal_number(name: &str) -> i32 {
    match name {
        "SIGHUP" => libc::SIGHUP,
        "SIGINT" => libc::SIGINT,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGKILL" => libc::SIGKILL,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        _ => libc::SIGTERM,
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut resp = if uri.path().starts_with("/_emulator/") {
        sh.admin(&method, uri.path(), &body)
    } else {
        sh.api(&method, &uri, &headers, &body).await
    };
    if let Ok(v) = HeaderValue::from_str(&random_id(26, ULID)) {
        resp.headers_mut().insert("fly-request-id", v);
    }
    resp
}

impl Shared {
    pub fn new(cfg: EmulatorConfig, spec: Spec) -> Shared {
        let quota = |period: Duration, burst: u32| {
            Quota::with_period(period)
                .expect("positive period")
                .allow_burst(NonZeroU32::new(burst).expect("burst > 0"))
        };
        Shared {
            faults: Mutex::new(cfg.faults.clone()),
            cfg,
            spec,
            world: Mutex::new(World::default()),
            stats: Mutex::new(Stats::default()),
            // Fly's published limits: 1 request/s per action and machine, bursts of 3; get
            // machine 5/s, bursts of 10.
            actions: RateLimiter::hashmap(quota(Duration::from_secs(1), 3)),
            gets: RateLimiter::hashmap(quota(Duration::from_millis(200), 10)),
            epoch: Instant::now(),
            pgids: Mutex::new(HashSet::new()),
        }
    }

    pub fn kill_all(&self) {
        for pgid in lock(&self.pgids).drain() {
            signal(pgid, libc::SIGKILL);
        }
    }

    pub fn running_ms_by(&self, key: &str) -> std::collections::BTreeMap<String, u64> {
        let now = now_ms();
        let world = lock(&self.world);
        let mut out = std::collections::BTreeMap::new();
        for m in world.machines.values() {
            let k = m.metadata().get(key).cloned().unwrap_or_default();
            *out.entry(k).or_insert(0) += m.running_ms_at(now);
        }
        out
    }

    pub fn machine_views(&self) -> Vec<MachineView> {
        let now = now_ms();
        let world = lock(&self.world);
        world
            .order
            .iter()
            .filter_map(|id| world.machines.get(id))
            .filter(|m| m.state != "destroyed")
            .map(|m| MachineView {
                id: m.id.clone(),
                state: m.state.clone(),
                region: m.region.clone(),
                env: m.env(),
                metadata: m.metadata(),
                pid: m.pid,
                running_ms: m.running_ms_at(now),
            })
            .collect()
    }

    fn admin(&self, method: &Method, path: &str, body: &[u8]) -> Response {
        match (method.as_str(), path) {
            ("GET", "/_emulator/stats") => answer(
                200,
                serde_json::to_value(lock(&self.stats).clone()).unwrap_or_default(),
            ),
            ("PUT", "/_emulator/faults") => match serde_json::from_slice::<Faults>(body) {
                Ok(f) => {
                    *lock(&self.faults) = f;
                    answer(200, json!({"ok": true}))
                }
                Err(e) => error(400, format!("bad faults: {e}")),
            },
            ("GET", "/_emulator/faults") => answer(
                200,
                serde_json::to_value(lock(&self.faults).clone()).unwrap_or_default(),
            ),
            ("GET", "/_emulator/machines") => {
                let views: Vec<Value> = self
                    .machine_views()
                    .into_iter()
                    .map(|m| json!({"id": m.id, "state": m.state, "region": m.region, "metadata": m.metadata, "pid": m.pid}))
                    .collect();
                answer(200, Value::Array(views))
            }
            _ => error(404, "no such emulator endpoint"),
        }
    }

    async fn api(
        self: &Arc<Self>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match header("authorization")
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            None => return error(401, "missing or malformed Authorization: Bearer token"),
            Some(t) if self.cfg.token.as_deref().is_some_and(|want| want != t) => {
                return error(401, "invalid token");
            }
            Some(_) => {}
        }
        let matched = match self
            .spec
            .check(method.as_str(), uri.path(), uri.query(), &header, body)
        {
            Ok(m) => m,
            Err(problem) => {
                let mut st = lock(&self.stats);
                st.spec_violations += 1;
                if st.violation_samples.len() < VIOLATION_SAMPLES {
                    st.violation_samples
                        .push(format!("{method} {uri}: {problem}"));
                }
                tracing::warn!(%method, %uri, problem, "fly emulator: request does not match the spec");
                return error(
                    400,
                    format!("request does not match the Machines API spec: {problem}"),
                );
            }
        };
        let op = matched.op.id.clone();
        let app = matched
            .path_params
            .get("app_name")
            .cloned()
            .unwrap_or_default();
        let machine = matched.path_params.get("machine_id").cloned();
        let query: HashMap<String, String> = matched.query.iter().cloned().collect();
        let scope = machine.clone().unwrap_or_else(|| app.clone());
        let charge = self.count(&op, &scope, machine.as_deref());

        if self.cfg.enforce_rate_limits {
            let limiter = if op == "Machines_show" {
                &self.gets
            } else {
                &self.actions
            };
            if let Err(not_until) = limiter.check_key(&(scope.clone(), op.clone())) {
                let mut st = lock(&self.stats);
                st.past_rate_limit += 1;
                *st.past_rate_limit_by_action.entry(op.clone()).or_default() += 1;
                drop(st);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return retry_after("rate limit exceeded", wait);
            }
        }
        let faults = lock(&self.faults).clone();
        if let Some(t) = faults
            .throttle
            .filter(|t| t.every_ms > 0 && t.length_ms > 0)
        {
            let phase = (self.epoch.elapsed().as_millis() as u64) % t.every_ms;
            if phase < t.length_ms {
                let mut st = lock(&self.stats);
                st.injected_429 += 1;
                drop(st);
                self.charge_fault(charge, machine.as_deref());
                return retry_after(
                    "rate limit exceeded",
                    Duration::from_millis(t.length_ms - phase),
                );
            }
        }
        if faults.server_error_fraction > 0.0
            && rand::random::<f64>() < faults.server_error_fraction
        {
            let mut st = lock(&self.stats);
            st.injected_5xx += 1;
            drop(st);
            self.charge_fault(charge, machine.as_deref());
            let status = [500, 502, 503][rand::random_range(0..3)];
            return error(status, "internal error (injected by the emulator)");
        }
        if app != self.cfg.app {
            return error(404, format!("app {app} not found"));
        }
        let nonce = header(fly_nonce_header());
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        let Some(id) = machine else {
            return match op.as_str() {
                "Machines_list" => self.list(&query),
                "Machines_create" => self.create(&body, &faults).await,
                _ => self.unimplemented(),
            };
        };
        if let Some(r) = self.check_visible(&id) {
            return r;
        }
        match op.as_str() {
            "Machines_show" => self.with_machine(&id, |m| answer(200, m.to_json(true))),
            "Machines_start" => self.start(&id, nonce.as_deref()),
            "Machines_stop" => self.stop(&id, &body, nonce.as_deref()),
            "Machines_suspend" => self.suspend(&id, nonce.as_deref()),
            "Machines_delete" => self.destroy(
                &id,
                query.get("force").is_some_and(|f| f == "true"),
                nonce.as_deref(),
            ),
            "Machines_wait" => self.wait(&id, &query).await,
            "Machines_create_lease" => self.create_lease(&id, &body, nonce.as_deref()),
            "Machines_show_lease" => self.with_machine(&id, |m| match m.active_lease() {
                Some(l) => answer(200, Machine::lease_json(l, true)),
                None => error(404, "no active lease"),
            }),
            "Machines_release_lease" => self.release_lease(&id, nonce.as_deref()),
            "Machines_list_events" => {
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(20)
                    .min(50);
                self.with_machine(&id, |m| answer(200, m.events_json(limit)))
            }
            "Machines_show_metadata" => {
                self.with_machine(&id, |m| answer(200, json!(m.metadata())))
            }
            _ => self.unimplemented(),
        }
    }

    fn unimplemented(&self) -> Response {
        lock(&self.stats).unimplemented += 1;
        error(501, "not implemented by the Shoal fly emulator")
    }

    /// Counts a request, and what it adds to the cost of starts (see [`Stats::start_calls`]).
    fn count(&self, op: &str, scope: &str, machine: Option<&str>) -> Charge {
        let mut st = lock(&self.stats);
        st.requests += 1;
        *st.by_action.entry(op.to_string()).or_default() += 1;
        *st.by_scope_action
            .entry(scope.to_string())
            .or_default()
            .entry(op.to_string())
            .or_default() += 1;
        if op == "Machines_create" {
            st.start_calls += 1;
            return Charge::Start;
        }
        let Some(id) = machine else {
            return Charge::Nothing;
        };
        let mut world = lock(&self.world);
        let Some(m) = world.machines.get_mut(id) else {
            return Charge::Nothing;
        };
        match op {
            "Machines_start" => {
                st.start_calls += 1 + m.pending_calls;
                st.start_calls_faulted += m.pending_faulted;
                m.pending_calls = 0;
                m.pending_faulted = 0;
                m.phase = Phase::Starting;
                Charge::Start
            }
            "Machines_stop" | "Machines_suspend" | "Machines_delete" => {
                m.pending_calls = 0;
                m.pending_faulted = 0;
                m.phase = Phase::Other;
                Charge::Nothing
            }
            "Machines_create_lease" => {
                m.pending_calls += 1;
                Charge::Pending
            }
            _ if m.phase == Phase::Starting => {
                st.start_calls += 1;
                Charge::Start
            }
            _ => Charge::Nothing,
        }
    }

    /// Records that a request counted by [`Self::count`] was answered by an injected fault, so
    /// [`Stats::start_calls_faulted`] can tell Fly's faults from Shoal's own calls.
    fn charge_fault(&self, charge: Charge, machine: Option<&str>) {
        match charge {
            Charge::Nothing => {}
            Charge::Start => lock(&self.stats).start_calls_faulted += 1,
            Charge::Pending => {
                let Some(id) = machine else { return };
                if let Some(m) = lock(&self.world).machines.get_mut(id) {
                    m.pending_faulted += 1;
                }
            }
        }
    }

    fn check_visible(&self, id: &str) -> Option<Response> {
        let world = lock(&self.world);
        match world.machines.get(id) {
            None => Some(error(404, format!("machine {id} not found"))),
            Some(m) if Instant::now() < m.visible_at => {
                drop(world);
                lock(&self.stats).early_not_found += 1;
                Some(error(404, format!("machine {id} not found")))
            }
            Some(_) => None,
        }
    }

    fn with_machine(&self, id: &str, f: impl FnOnce(&mut Machine) -> Response) -> Response {
        match lock(&self.world).machines.get_mut(id) {
            Some(m) => f(m),
            None => error(404, format!("machine {id} not found")),
        }
    }

    fn list(&self, query: &HashMap<String, String>) -> Response {
        let include_deleted = query.get("include_deleted").is_some_and(|v| v == "true");
        let states: Vec<&str> = query
            .get("state")
            .map(|s| s.split(',').collect())
            .unwrap_or_default();
        let region = query.get("region");
        let now = Instant::now();
        let world = lock(&self.world);
        let out: Vec<Value> = world
            .order
            .iter()
            .filter_map(|id| world.machines.get(id))
            .filter(|m| now >= m.visible_at)
            .filter(|m| include_deleted || m.state != "destroyed")
            .filter(|m| region.is_none_or(|r| *r == m.region))
            .filter(|m| states.is_empty() || states.contains(&m.state.as_str()))
            .map(|m| m.to_json(false))
            .collect();
        answer(200, Value::Array(out))
    }

    async fn create(self: &Arc<Self>, body: &Value, faults: &Faults) -> Response {
        let region = body
            .get("region")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.cfg.regions.first().cloned());
        let region = region.unwrap_or_else(|| "ams".into());
        if !self.cfg.regions.is_empty() && !self.cfg.regions.contains(&region) {
            return error(400, format!("invalid region {region}"));
        }
        if faults.slow_create_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.slow_create_ms)).await;
        }
        if faults.no_capacity.contains(&region) {
            lock(&self.stats).capacity_refusals += 1;
            return answer(
                412,
                json!({
                    "error": format!("insufficient resources available to fulfill request: could not reserve resource for machine in {region}"),
                    "status": "insufficient_capacity",
                }),
            );
        }
        let config = body.get("config").cloned().unwrap_or_else(|| json!({}));
        if config
            .get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return error(400, "invalid config.image: an image is required");
        }
        let skip_launch = body
            .get("skip_launch")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let id = random_id(14, HEX);
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("machine-{}", random_id(6, HEX)));
        let visible_at = Instant::now() + Duration::from_millis(faults.not_found_after_create_ms);
        let mut m = Machine::new(id.clone(), name, region, config, visible_at);
        m.set_state("created", Some(("launch", "created", "user")));
        let lease = body
            .get("lease_ttl")
            .and_then(Value::as_i64)
            .filter(|t| *t > 0)
            .map(|ttl| Lease {
                nonce: random_id(12, HEX),
                expires_at: now_ms() / 1000 + ttl,
                owner: "shoal@emulator.test".into(),
                description: String::new(),
            });
        m.lease = lease.clone();
        if !skip_launch {
            m.phase = Phase::Starting;
        }
        let mut json = m.to_json(false);
        if let Some(l) = &lease {
            json["nonce"] = json!(l.nonce);
        }
        {
            let mut world = lock(&self.world);
            world.order.push(id.clone());
            world.machines.insert(id.clone(), m);
        }
        if !skip_launch {
            lock(&self.stats).starts += 1;
            self.begin_start(&id);
        }
        answer(200, json)
    }

    fn start(self: &Arc<Self>, id: &str, nonce: Option<&str>) -> Response {
        let prev = {
            let world = lock(&self.world);
            let Some(m) = world.machines.get(id) else {
                return error(404, "machine not found");
            };
            if let Some(r) = Self::lease_conflict(m, nonce) {
                return r;
            }
            match m.state.as_str() {
                "stopped" | "created" | "suspended" | "failed" => m.state.clone(),
                "started" | "starting" => {
                    return error(
                        412,
                        "failed_precondition: machine still active, refusing to start",
                    );
                }
                other => {
                    return error(
                        412,
                        format!("failed_precondition: unable to start machine from state {other}"),
                    );
                }
            }
        };
        lock(&self.stats).starts += 1;
        self.begin_start(id);
        answer(
            200,
            json!({"previous_state": prev, "migrated": false, "new_host": ""}),
        )
    }

    fn stop(self: &Arc<Self>, id: &str, body: &Value, nonce: Option<&str>) -> Response {
        let (generation, pid, sig) = {
            let mut world = lock(&self.world);
            let Some(m) = world.machines.get_mut(id) else {
                return error(404, "machine not found");
            };
            if let Some(r) = Self::lease_conflict(m, nonce) {
                return r;
            }
            match m.state.as_str() {
                "started" | "starting" | "suspended" | "suspending" => {}
                "stopped" | "created" | "stopping" | "failed" => {
                    return answer(200, json!({"ok": true}));
                }
                other => {
                    return error(
                        412,
                        format!("failed_precondition: unable to stop machine in state {other}"),
                    );
                }
            }
            let sig = body
                .get("signal")
                .and_then(Value::as_str)
                .or_else(|| {
                    m.config
                        .pointer("/stop_config/signal")
                        .and_then(Value::as_str)
                })
                .map(signal_number)
                .unwrap_or(libc::SIGTERM);
            m.generation += 1;
            m.set_state("stopping", None);
            (m.generation, m.pid, sig)
        };
        let sh = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Some(pgid) = pid {
                signal(pgid, libc::SIGCONT);
                signal(pgid, sig);
                if !sh.wait_exit(&id, pgid, sh.cfg.kill_timeout).await {
                    signal(pgid, libc::SIGKILL);
                    sh.wait_exit(&id, pgid, Duration::from_secs(5)).await;
                }
            }
            tokio::time::sleep(sh.cfg.latencies.stop).await;
            let mut world = lock(&sh.world);
            if let Some(m) = world.machines.get_mut(&id)
                && m.generation == generation
            {
                m.pid = None;
                m.set_state("stopped", Some(("stop", "stopped", "user")));
            }
        });
        answer(200, json!({"ok": true}))
    }

    fn suspend(self: &Arc<Self>, id: &str, nonce: Option<&str>) -> Response {
        let generation = {
            let mut world = lock(&self.world);
            let Some(m) = world.machines.get_mut(id) else {
                return error(404, "machine not found");
            };
            if let Some(r) = Self::lease_conflict(m, nonce) {
                return r;
            }
            if m.state != "started" {
                return error(
                    412,
                    format!(
                        "failed_precondition: machine is not started (state {})",
                        m.state
                    ),
                );
            }
            if m.memory_mb() > self.cfg.suspend_max_memory_mb {
                return error(
                    412,
                    format!(
                        "failed_precondition: machines with more than {} MB of memory cannot be suspended",
                        self.cfg.suspend_max_memory_mb
                    ),
                );
            }
            if let Some(pgid) = m.pid {
                signal(pgid, libc::SIGSTOP);
            }
            m.generation += 1;
            m.set_state("suspending", None);
            m.generation
        };
        self.settle_after(
            id,
            generation,
            self.cfg.latencies.suspend,
            "suspend",
            "suspended",
        );
        answer(200, json!({"ok": true}))
    }

    /// After `latency`, moves machine `id` to `state` (with a `kind` event by the user), unless
    /// something else changed it since (its `generation` moved on).
    fn settle_after(
        self: &Arc<Self>,
        id: &str,
        generation: u64,
        latency: Duration,
        kind: &'static str,
        state: &'static str,
    ) {
        let sh = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            let mut world = lock(&sh.world);
            if let Some(m) = world.machines.get_mut(&id)
                && m.generation == generation
            {
                m.set_state(state, Some((kind, state, "user")));
            }
        });
    }

    fn destroy(self: &Arc<Self>, id: &str, force: bool, nonce: Option<&str>) -> Response {
        let generation = {
            let mut world = lock(&self.world);
            let Some(m) = world.machines.get_mut(id) else {
                return error(404, "machine not found");
            };
            if let Some(r) = Self::lease_conflict(m, nonce) {
                return r;
            }
            match m.state.as_str() {
                "destroyed" => return error(404, format!("machine {id} not found")),
                "destroying" => return answer(200, json!({"ok": true})),
                "started" | "starting" | "stopping" | "suspending" if !force => {
                    return error(
                        412,
                        format!(
                            "failed_precondition: machine is {}, use force=true to destroy it",
                            m.state
                        ),
                    );
                }
                _ => {}
            }
            if let Some(pgid) = m.pid.take() {
                signal(pgid, libc::SIGKILL);
            }
            m.lease = None;
            m.generation += 1;
            m.set_state("destroying", None);
            m.generation
        };
        self.settle_after(
            id,
            generation,
            self.cfg.latencies.destroy,
            "destroy",
            "destroyed",
        );
        answer(200, json!({"ok": true}))
    }

    async fn wait(&self, id: &str, query: &HashMap<String, String>) -> Response {
        let targets: Vec<String> = query
            .get("state")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_else(|| vec!["started".into()]);
        let secs = query
            .get("timeout")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(60);
        if !(1..=60).contains(&secs) {
            return error(400, "timeout must be between 1 and 60 seconds");
        }
        let mut rx = match lock(&self.world).machines.get(id) {
            Some(m) => m.state_tx.subscribe(),
            None => return error(404, "machine not found"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let state = rx.borrow_and_update().clone();
            if targets.contains(&state) {
                let world = lock(&self.world);
                let (event_id, version) = world
                    .machines
                    .get(id)
                    .map(|m| {
                        (
                            m.events.last().map(|e| e.id.clone()).unwrap_or_default(),
                            m.instance_id.clone(),
                        )
                    })
                    .unwrap_or_default();
                return answer(
                    200,
                    json!({"ok": true, "state": state, "event_id": event_id, "version": version}),
                );
            }
            if state == "destroyed" {
                return error(
                    412,
                    format!("failed_precondition: machine {id} was destroyed"),
                );
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return error(404, "machine not found"),
                Err(_) => {
                    return error(
                        408,
                        format!(
                            "deadline_exceeded: machine did not reach {} within {secs}s",
                            targets.join(",")
                        ),
                    );
                }
            }
        }
    }
}

fn fly_nonce_header() -> &'static str {
    "fly-machine-lease-nonce"
}

/// What a request adds to the cost of starts.
#[derive(Clone, Copy)]
enum Charge {
    Nothing,
    /// Counted in [`Stats::start_calls`] now.
    Start,
    /// A lease, counted when the start it prepares comes.
    Pending,
}

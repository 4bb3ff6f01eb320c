//! A recording fake [`Provider`]: sandboxes as entries in a map, for tests of the code that drives
//! a provider (the scheduler's control loop) without processes, containers or clouds.
//!
//! It keeps the trait's contract, and passes the shared conformance suite
//! (`shoal_fleet::conformance`): calls are idempotent, a call on a sandbox it does not hold
//! answers `NotFound`, and every change is reported on the observation sink. On top of that it
//! records every call in order ([`FakeProvider::calls`]), lets a test script failures
//! ([`FakeProvider::fail_next`]), make a sandbox vanish or stop by itself
//! ([`FakeProvider::lose`]), plant one the caller never made ([`FakeProvider::plant`]), and read
//! states ([`FakeProvider::state`]).

use async_trait::async_trait;
use shoal_core::{Millis, SandboxSize};
use shoal_fleet::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// One provider call, as the fake recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `create`, `start`, `stop`, `suspend`, `resume`, `destroy`, `list` or `tenant_limits`.
    pub op: &'static str,
    /// Shoal's id of the sandbox the call was about (the tenant for `tenant_limits`, empty for
    /// `list`).
    pub sandbox: String,
}

#[derive(Debug, Clone)]
struct Held {
    sandbox: SandboxRef,
    state: ObservedState,
}

#[derive(Default)]
struct Inner {
    /// By Shoal's sandbox id.
    held: BTreeMap<String, Held>,
    calls: Vec<Call>,
    /// Scripted failures, per operation, used up in order.
    failures: HashMap<&'static str, VecDeque<ProviderError>>,
    next_id: u64,
}

/// The fake. Build it with the sink its observations go to.
pub struct FakeProvider {
    inner: Mutex<Inner>,
    sink: ObservationSink,
    caps: Capabilities,
    /// The provider's clock for observations: the time of each report.
    clock: Box<dyn Fn() -> Millis + Send + Sync>,
}

impl FakeProvider {
    /// A fake that can suspend and stop, reporting on `sink`, stamping observations with the
    /// system clock.
    pub fn new(sink: ObservationSink) -> Self {
        FakeProvider {
            inner: Mutex::default(),
            sink,
            caps: Capabilities {
                suspend: true,
                stop: true,
            },
            clock: Box::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as Millis)
            }),
        }
    }

    /// The same fake with other capabilities.
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// The same fake stamping observations with `clock` (a test's paused clock, say).
    pub fn with_clock(mut self, clock: impl Fn() -> Millis + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one operation so far, in order: the sandboxes they were about.
    pub fn calls_of(&self, op: &str) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.sandbox.clone())
            .collect()
    }

    /// Makes the next call of `op` fail with `err` (scripted failures of one op queue up).
    pub fn fail_next(&self, op: &'static str, err: ProviderError) {
        self.lock().failures.entry(op).or_default().push_back(err);
    }

    /// The state the fake holds a sandbox in; `None` once it is gone.
    pub fn state(&self, sandbox_id: &str) -> Option<ObservedState> {
        self.lock().held.get(sandbox_id).map(|h| h.state)
    }

    /// The sandbox goes by itself: `Stopped` (it stays, stopped) or `Gone` (it vanishes); either
    /// way it is reported, as a real provider reports a crash or an eviction.
    pub fn lose(&self, sandbox_id: &str, to: ObservedState) -> Option<SandboxRef> {
        let sandbox = {
            let mut inner = self.lock();
            let sandbox = inner.held.get(sandbox_id)?.sandbox.clone();
            if to == ObservedState::Gone {
                inner.held.remove(sandbox_id);
            } else if let Some(h) = inner.held.get_mut(sandbox_id) {
                h.state = to;
            }
            sandbox
        };
        self.report(&sandbox, to);
        Some(sandbox)
    }

    /// Plants a running sandbox the caller never asked for (left over from another run, say).
    pub fn plant(&self, sandbox_id: &str, tenant: &str) -> SandboxRef {
        let mut inner = self.lock();
        inner.next_id += 1;
        let sandbox = SandboxRef {
            sandbox_id: sandbox_id.to_string(),
            tenant: tenant.to_string(),
            provider_id: format!("fake-{}", inner.next_id),
        };
        inner.held.insert(
            sandbox_id.to_string(),
            Held {
                sandbox: sandbox.clone(),
                state: ObservedState::Running,
            },
        );
        sandbox
    }

    fn report(&self, sandbox: &SandboxRef, state: ObservedState) {
        // A closed sink means nobody listens any more; the call itself still happened.
        let _ = self.sink.send(Observation {
            sandbox: sandbox.clone(),
            state,
            at: (self.clock)(),
        });
    }

    /// Records the call and answers a scripted failure if one is queued for `op`.
    fn begin(&self, op: &'static str, sandbox: &str) -> Result<(), ProviderError> {
        let mut inner = self.lock();
        inner.calls.push(Call {
            op,
            sandbox: sandbox.to_string(),
        });
        match inner.failures.get_mut(op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Moves a held sandbox to `to` (reporting it when it changed); `NotFound` when not held.
    fn set(&self, sandbox: &SandboxRef, to: ObservedState) -> Result<(), ProviderError> {
        let changed = {
            let mut inner = self.lock();
            let h = inner
                .held
                .get_mut(&sandbox.sandbox_id)
                .filter(|h| {
                    sandbox.provider_id.is_empty() || h.sandbox.provider_id == sandbox.provider_id
                })
                .ok_or_else(|| ProviderError::NotFound(sandbox.sandbox_id.clone()))?;
            let changed = h.state != to;
            h.state = to;
            changed.then(|| h.sandbox.clone())
        };
        if let Some(s) = changed {
            self.report(&s, to);
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.begin("create", &spec.sandbox_id)?;
        let sandbox = {
            let mut inner = self.lock();
            if let Some(h) = inner.held.get(&spec.sandbox_id) {
                return Ok(h.sandbox.provider_id.clone());
            }
            inner.next_id += 1;
            let sandbox = SandboxRef {
                sandbox_id: spec.sandbox_id.clone(),
                tenant: spec.tenant.clone(),
                provider_id: format!("fake-{}", inner.next_id),
            };
            inner.held.insert(
                spec.sandbox_id.clone(),
                Held {
                    sandbox: sandbox.clone(),
                    state: ObservedState::Running,
                },
            );
            sandbox
        };
        self.report(&sandbox, ObservedState::Running);
        Ok(sandbox.provider_id)
    }

    async fn start(&self, sandbox: &SandboxRef, _spec: &SandboxSpec) -> Result<(), ProviderError> {
        self.begin("start", &sandbox.sandbox_id)?;
        self.set(sandbox, ObservedState::Running)
    }

    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.begin("stop", &sandbox.sandbox_id)?;
        self.set(sandbox, ObservedState::Stopped)
    }

    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.begin("suspend", &sandbox.sandbox_id)?;
        if !self.caps.suspend {
            return Err(ProviderError::Permanent("this fake cannot suspend".into()));
        }
        self.set(sandbox, ObservedState::Suspended)
    }

    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.begin("resume", &sandbox.sandbox_id)?;
        self.set(sandbox, ObservedState::Running)
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.begin("destroy", &sandbox.sandbox_id)?;
        let gone = self.lock().held.remove(&sandbox.sandbox_id);
        if let Some(h) = gone {
            self.report(&h.sandbox, ObservedState::Gone);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        self.begin("list", "")?;
        let at = (self.clock)();
        Ok(self
            .lock()
            .held
            .values()
            .map(|h| Observation {
                sandbox: h.sandbox.clone(),
                state: h.state,
                at,
            })
            .collect())
    }

    async fn tenant_limits(
        &self,
        tenant: &str,
        _max_sandboxes: Option<u32>,
        _size: SandboxSize,
    ) -> Result<(), ProviderError> {
        self.begin("tenant_limits", tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> SandboxSpec {
        SandboxSpec {
            sandbox_id: id.into(),
            tenant: "t".into(),
            pool: "t".into(),
            token: "tok".into(),
            scheduler_url: "http://127.0.0.1:9".into(),
            size: SandboxSize {
                cpus: 1.0,
                memory_mb: 256,
            },
            regions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn records_calls_scripts_failures_and_reports_losses() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = FakeProvider::new(tx).with_clock(|| 42);
        p.fail_next("create", ProviderError::Capacity("none left".into()));
        assert!(matches!(
            p.create(&spec("a")).await,
            Err(ProviderError::Capacity(_))
        ));
        assert_eq!(p.state("a"), None, "a failed create holds nothing");
        let id = p.create(&spec("a")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().state, ObservedState::Running);
        let lost = p.lose("a", ObservedState::Gone).unwrap();
        assert_eq!(lost.provider_id, id);
        let o = rx.recv().await.unwrap();
        assert_eq!((o.state, o.at), (ObservedState::Gone, 42));
        assert_eq!(
            p.stop(&lost).await,
            Err(ProviderError::NotFound("a".into()))
        );
        assert_eq!(p.calls_of("create"), ["a", "a"]);
        assert_eq!(
            p.calls().iter().map(|c| c.op).collect::<Vec<_>>(),
            ["create", "create", "stop"]
        );
    }
}

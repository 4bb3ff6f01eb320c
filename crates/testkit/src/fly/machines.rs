//! The emulator's machines: their records, how they render as the API's `Machine`, and the
//! processes that run inside started ones.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::watch;

/// Milliseconds since the Unix epoch, by the emulator's (Fly's) clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An id of `len` characters from Fly's alphabets (hex machine ids, ULID-like event ids).
pub(crate) fn random_id(len: usize, alphabet: &[u8]) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

pub(crate) const HEX: &[u8] = b"0123456789abcdef";
pub(crate) const ULID: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub id: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub source: &'static str,
    pub ts: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub nonce: String,
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
}

/// Which kind of call a machine last had, for counting what starts cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Other,
}

#[derive(Debug)]
pub(crate) struct Machine {
    pub id: String,
    pub name: String,
    pub region: String,
    pub state: String,
    pub config: Value,
    pub instance_id: String,
    pub private_ip: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Oldest first.
    pub events: Vec<Event>,
    pub lease: Option<Lease>,
    /// Before this, the machine answers 404.
    pub visible_at: Instant,
    /// Bumped by each transition, so a delayed step of an older one does nothing.
    pub generation: u64,
    pub state_tx: watch::Sender<String>,
    /// The process group of the running process.
    pub pid: Option<u32>,
    pub phase: Phase,
    /// Calls since the last mutation that the next one may claim (a lease taken before it).
    pub pending_calls: u64,
    /// Of `pending_calls`, those answered by an injected fault.
    pub pending_faulted: u64,
    /// When the machine last went `started`, while it runs (`started`, or on its way down).
    pub running_since: Option<i64>,
    /// Milliseconds spent running in earlier runs: the emulator's own record of running time.
    /// A run lasts from `started` until the machine has come down (`stopped`, `suspended`,
    /// `failed`, `destroyed`): while `stopping` or `suspending` its VM still runs, and the
    /// `stop`/`suspend` event a client sees is stamped when it is down.
    pub running_ms: u64,
}

impl Machine {
    pub fn new(
        id: String,
        name: String,
        region: String,
        config: Value,
        visible_at: Instant,
    ) -> Machine {
        let now = now_ms();
        let (state_tx, _) = watch::channel("created".to_string());
        Machine {
            id,
            name,
            region,
            state: "created".into(),
            config,
            instance_id: random_id(26, ULID),
            private_ip: format!("fdaa:0:1:a7b:{}::2", random_id(4, HEX)),
            created_at: now,
            updated_at: now,
            events: Vec::new(),
            lease: None,
            visible_at,
            generation: 0,
            state_tx,
            pid: None,
            phase: Phase::Other,
            pending_calls: 0,
            pending_faulted: 0,
            running_since: None,
            running_ms: 0,
        }
    }

    /// Moves to `state`, recording an event when one is given.
    pub fn set_state(
        &mut self,
        state: &str,
        event: Option<(&'static str, &'static str, &'static str)>,
    ) {
        let now = now_ms().max(self.updated_at);
        let running = match state {
            "started" => true,
            // On the way down the VM still runs: the run goes on until it is down.
            "stopping" | "suspending" => self.running_since.is_some(),
            _ => false,
        };
        match (running, self.running_since) {
            (true, None) => self.running_since = Some(now),
            (false, Some(t)) => {
                self.running_ms += u64::try_from(now - t).unwrap_or(0);
                self.running_since = None;
            }
            _ => {}
        }
        self.state = state.to_string();
        self.updated_at = now;
        if let Some((kind, status, source)) = event {
            self.events.push(Event {
                id: random_id(26, ULID),
                kind,
                status,
                source,
                ts: now,
            });
        }
        self.state_tx.send_replace(state.to_string());
    }

    /// Milliseconds spent running, the current run up to `now` included.
    pub fn running_ms_at(&self, now: i64) -> u64 {
        self.running_ms
            + self
                .running_since
                .map_or(0, |t| u64::try_from(now - t).unwrap_or(0))
    }

    pub fn env(&self) -> BTreeMap<String, String> {
        string_map(self.config.get("env"))
    }

    pub fn metadata(&self) -> BTreeMap<String, String> {
        string_map(self.config.get("metadata"))
    }

    pub fn memory_mb(&self) -> u64 {
        self.config
            .pointer("/guest/memory_mb")
            .and_then(Value::as_u64)
            .unwrap_or(256)
    }

    pub fn active_lease(&self) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|l| l.expires_at > now_ms() / 1000)
    }

    pub fn lease_json(l: &Lease, with_nonce: bool) -> Value {
        let mut v = json!({
            "description": l.description,
            "expires_at": l.expires_at,
            "owner": l.owner,
        });
        if with_nonce {
            v["nonce"] = json!(l.nonce);
            v["version"] = json!("");
        }
        v
    }

    pub fn events_json(&self, limit: usize) -> Value {
        Value::Array(
            self.events
                .iter()
                .rev()
                .take(limit)
                .map(|e| json!({"id": e.id, "type": e.kind, "status": e.status, "source": e.source, "timestamp": e.ts}))
                .collect(),
        )
    }

    /// The API's `Machine`.
    pub fn to_json(&self, with_lease: bool) -> Value {
        let image = self
            .config
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (repo, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "private_ip": self.private_ip,
            "config": self.config,
            "image_ref": {"registry": "registry.fly.io", "repository": repo, "tag": tag, "digest": "", "labels": {}},
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "events": self.events_json(10),
            "checks": [],
            "host_status": "ok",
        });
        if with_lease && let Some(l) = self.active_lease() {
            v["lease"] = Self::lease_json(l, false);
        }
        v
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `sig` to a machine's process group.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub(crate) fn signal(pgid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a stale group id at worst fails with ESRCH.
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

//! The API's request and response bodies, as the OpenAPI spec names them, trimmed to what pools
//! need. Responses are read leniently (unknown fields ignored, missing ones defaulted); requests
//! skip empty fields so they carry only what was set.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A machine's state. Open: a state this client does not know is kept as [`MachineState::Other`]
/// rather than failing the whole response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MachineState {
    /// Created, never started.
    Created,
    /// Being started.
    Starting,
    /// Running.
    Started,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
    /// Being suspended.
    Suspending,
    /// Suspended (memory snapshotted).
    Suspended,
    /// Being replaced by an update.
    Replacing,
    /// Being updated.
    Updating,
    /// Being destroyed.
    Destroying,
    /// Destroyed.
    Destroyed,
    /// Failed to start or crashed past its restart policy.
    Failed,
    /// A state this client does not know.
    Other(String),
}

impl MachineState {
    /// The state's name as the API spells it.
    pub fn as_str(&self) -> &str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Replacing => "replacing",
            MachineState::Updating => "updating",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::Other(s) => s,
        }
    }

    /// Whether the machine is gone or on its way there.
    pub fn is_gone(&self) -> bool {
        matches!(self, MachineState::Destroying | MachineState::Destroyed)
    }
}

impl From<&str> for MachineState {
    fn from(s: &str) -> Self {
        match s {
            "created" => MachineState::Created,
            "starting" => MachineState::Starting,
            "started" => MachineState::Started,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "suspending" => MachineState::Suspending,
            "suspended" => MachineState::Suspended,
            "replacing" => MachineState::Replacing,
            "updating" => MachineState::Updating,
            "destroying" => MachineState::Destroying,
            "destroyed" => MachineState::Destroyed,
            "failed" => MachineState::Failed,
            other => MachineState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MachineState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(MachineState::from(s.as_str()))
    }
}

impl Default for MachineState {
    fn default() -> Self {
        MachineState::Other(String::new())
    }
}

/// The states `wait` accepts (`state` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitState {
    /// Wait until the machine runs.
    Started,
    /// Wait until it is stopped.
    Stopped,
    /// Wait until it is suspended.
    Suspended,
    /// Wait until it is destroyed.
    Destroyed,
}

impl WaitState {
    /// The state's name as the `state` query parameter spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Started => "started",
            WaitState::Stopped => "stopped",
            WaitState::Suspended => "suspended",
            WaitState::Destroyed => "destroyed",
        }
    }
}

/// `fly.MachineGuest`: the machine's size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Guest {
    /// The CPU kind (`shared`, `performance`); Fly's default when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_kind: String,
    /// Virtual CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: u32,
}

/// `fly.MachineRestart`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Restart {
    /// When Fly restarts the machine (`no`, `always`, `on-failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Restarts before giving up, for `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// `fly.StopConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StopConfig {
    /// The signal a stop sends first (`SIGTERM`, `SIGINT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// A Go duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `fly.MachineConfig`, the parts Shoal sets.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MachineConfig {
    /// The image the machine runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Environment variables of the machine's process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Free-form labels; Shoal marks its machines with these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The machine's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// The restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// How a stop ends the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// Whether Fly destroys the machine once it exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
}

/// `CreateMachineRequest`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CreateMachineRequest {
    /// The machine's name; Fly makes one up when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The region to create it in; the app's primary region when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The machine's config.
    pub config: MachineConfig,
    /// Seconds; when set, the machine is created holding a lease whose nonce comes back in
    /// [`Machine::nonce`], saving a separate lease call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
    /// Create the machine without starting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
}

/// `MachineEvent`. `timestamp` is in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct MachineEvent {
    /// The event's id.
    #[serde(default)]
    pub id: String,
    /// What happened (`launch`, `start`, `exit`, ...).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The outcome (`created`, `started`, `stopped`, ...).
    #[serde(default)]
    pub status: String,
    /// Who caused it (`user`, `flyd`).
    #[serde(default)]
    pub source: String,
    /// When it happened.
    #[serde(default)]
    pub timestamp: i64,
}

/// `StrippedLease`, as embedded in a machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct StrippedLease {
    /// What the lease's holder said it is for.
    #[serde(default)]
    pub description: String,
    /// When the lease lapses (Unix seconds).
    #[serde(default)]
    pub expires_at: i64,
    /// Who holds it.
    #[serde(default)]
    pub owner: String,
}

/// `Machine`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Machine {
    /// The machine's id.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its state.
    #[serde(default)]
    pub state: MachineState,
    /// The region it runs in.
    #[serde(default)]
    pub region: String,
    /// The id of its current version.
    #[serde(default)]
    pub instance_id: String,
    /// Its address on the app's private network.
    #[serde(default)]
    pub private_ip: String,
    /// Its config.
    #[serde(default)]
    pub config: Option<MachineConfig>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub updated_at: String,
    /// Recent events, newest first as the API sends them.
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    /// The lease nonce, only on creation with `lease_ttl`.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The lease held on it, if any.
    #[serde(default)]
    pub lease: Option<StrippedLease>,
}

impl Machine {
    /// The machine's metadata (empty when the response carried no config).
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.config.as_ref().map(|c| &c.metadata)
    }

    /// Whether every `(key, value)` pair is in the machine's metadata.
    pub fn has_metadata(&self, pairs: &[(String, String)]) -> bool {
        let Some(md) = self.metadata() else {
            return pairs.is_empty();
        };
        pairs.iter().all(|(k, v)| md.get(k) == Some(v))
    }
}

/// `CreateLeaseRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CreateLeaseRequest {
    /// What the lease is for, as shown to others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// `Lease`. `expires_at` is a Unix timestamp in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Lease {
    /// The secret that proves holding the lease; sent with calls made under it.
    #[serde(default)]
    pub nonce: String,
    /// When it lapses (Unix seconds).
    #[serde(default)]
    pub expires_at: i64,
    /// Who holds it.
    #[serde(default)]
    pub owner: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The lease's version.
    #[serde(default)]
    pub version: String,
}

/// `StopRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct StopRequest {
    /// The signal to stop with; the machine's stop config when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// A Go duration such as `10s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `WaitMachineResponse`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct WaitResponse {
    /// Whether the state was reached in time.
    #[serde(default)]
    pub ok: bool,
    /// The state the machine is in.
    #[serde(default)]
    pub state: MachineState,
    /// The event that brought it there.
    #[serde(default)]
    pub event_id: String,
    /// The machine version the state belongs to.
    #[serde(default)]
    pub version: String,
}

/// `ErrorResponse`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, as Fly says it.
    #[serde(default)]
    pub error: String,
    /// `unknown` or `insufficient_capacity` (`main.statusCode`).
    #[serde(default)]
    pub status: Option<String>,
}

/// Filters for [`crate::Client::list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOptions {
    /// List destroyed machines too.
    pub include_deleted: bool,
    /// Only machines in this region.
    pub region: Option<String>,
    /// Only machines in one of these states (`state` query parameter).
    pub states: Vec<String>,
    /// Only machines whose metadata holds every one of these pairs. The spec has no server-side
    /// metadata filter, so this one is applied to the answer.
    pub metadata: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_states_are_kept_not_refused() {
        let m: Machine =
            serde_json::from_str(r#"{"id":"m1","state":"hibernating","events":[]}"#).unwrap();
        assert_eq!(m.state, MachineState::Other("hibernating".into()));
        assert_eq!(m.state.to_string(), "hibernating");
        let m: Machine = serde_json::from_str(r#"{"id":"m1","state":"suspended"}"#).unwrap();
        assert_eq!(m.state, MachineState::Suspended);
    }

    #[test]
    fn requests_carry_only_what_was_set() {
        let req = CreateMachineRequest {
            config: MachineConfig {
                image: "img".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"config": {"image": "img"}})
        );
    }

    #[test]
    fn metadata_match_needs_every_pair() {
        let mut m = Machine {
            id: "m".into(),
            ..Default::default()
        };
        let mut cfg = MachineConfig::default();
        cfg.metadata.insert("a".into(), "1".into());
        m.config = Some(cfg);
        assert!(m.has_metadata(&[("a".into(), "1".into())]));
        assert!(!m.has_metadata(&[("a".into(), "1".into()), ("b".into(), "2".into())]));
    }
}

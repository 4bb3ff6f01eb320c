//! Plan tiers and the limits they give a tenant, with per-tenant overrides.
//!
//! A tenant's effective limits are its plan's defaults with its own overrides laid on top. In the
//! overrides, an absent field keeps the plan's value and `null` means unlimited.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::job::UnknownValue;

/// The plans the platform sells, each with default limits (see the contract's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanTier {
    Free,
    Pro,
    Team,
    Enterprise,
}

impl PlanTier {
    pub const ALL: [PlanTier; 4] = [
        PlanTier::Free,
        PlanTier::Pro,
        PlanTier::Team,
        PlanTier::Enterprise,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Free => "free",
            PlanTier::Pro => "pro",
            PlanTier::Team => "team",
            PlanTier::Enterprise => "enterprise",
        }
    }

    /// The plan's default limits.
    pub fn limits(self) -> Limits {
        let (max_sandboxes, jobs_per_month, rate) = match self {
            PlanTier::Free => (Some(1), Some(100), 10.0),
            PlanTier::Pro => (Some(5), Some(1_000), 100.0),
            PlanTier::Team => (Some(20), Some(10_000), 100.0),
            PlanTier::Enterprise => (None, None, 1_000.0),
        };
        Limits {
            max_sandboxes,
            max_concurrent_jobs: None,
            jobs_per_month,
            enqueue_rate_per_s: Some(rate),
            enqueue_burst: Some(rate as u32),
            min_warm: 0,
            idle_timeout_s: None,
            sandbox_size: SandboxSize::default(),
        }
    }

    /// The weight of this plan's tenants when the whole fleet's capacity is short.
    pub fn fair_share_weight(self) -> u32 {
        match self {
            PlanTier::Free => 1,
            PlanTier::Pro => 4,
            PlanTier::Team => 8,
            PlanTier::Enterprise => 16,
        }
    }
}

impl fmt::Display for PlanTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanTier {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlanTier::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "plan",
                value: s.to_string(),
            })
    }
}

/// The size of one sandbox: what it is priced by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSize {
    pub cpus: f64,
    pub memory_mb: u64,
}

impl Default for SandboxSize {
    fn default() -> Self {
        SandboxSize {
            cpus: 1.0,
            memory_mb: 512,
        }
    }
}

impl SandboxSize {
    /// CPUs in thousandths, the integer unit metering counts in.
    pub fn millicpus(&self) -> u64 {
        (self.cpus * 1000.0).round() as u64
    }
}

/// A tenant's effective limits. `None` means unlimited (for `idle_timeout_s`: the pool default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_sandboxes: Option<u32>,
    pub max_concurrent_jobs: Option<u32>,
    pub jobs_per_month: Option<u64>,
    pub enqueue_rate_per_s: Option<f64>,
    pub enqueue_burst: Option<u32>,
    pub min_warm: u32,
    pub idle_timeout_s: Option<u64>,
    pub sandbox_size: SandboxSize,
}

/// Overrides of a plan's limits. Each field: absent keeps the plan's value, `null` sets unlimited
/// (for `min_warm`: zero; for `sandbox_size`: the default size).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_sandboxes: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent_jobs: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub jobs_per_month: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub enqueue_rate_per_s: Option<Option<f64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub enqueue_burst: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_warm: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout_s: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sandbox_size: Option<Option<SandboxSize>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One limit that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field}: {message}")]
pub struct LimitError {
    pub field: &'static str,
    pub message: String,
}

impl Limits {
    /// The plan's limits with `patch` laid on top.
    pub fn resolve(plan: PlanTier, patch: &LimitsPatch) -> Limits {
        let mut l = plan.limits();
        if let Some(v) = patch.max_sandboxes {
            l.max_sandboxes = v;
        }
        if let Some(v) = patch.max_concurrent_jobs {
            l.max_concurrent_jobs = v;
        }
        if let Some(v) = patch.jobs_per_month {
            l.jobs_per_month = v;
        }
        if let Some(v) = patch.enqueue_rate_per_s {
            l.enqueue_rate_per_s = v;
            if patch.enqueue_burst.is_none() {
                l.enqueue_burst = v.map(|r| (r.ceil() as u32).max(1));
            }
        }
        if let Some(v) = patch.enqueue_burst {
            l.enqueue_burst = v;
        }
        if let Some(v) = patch.min_warm {
            l.min_warm = v.unwrap_or(0);
        }
        if let Some(v) = patch.idle_timeout_s {
            l.idle_timeout_s = v;
        }
        if let Some(v) = patch.sandbox_size {
            l.sandbox_size = v.unwrap_or_default();
        }
        l
    }

    /// Every inconsistency at once, empty when the limits are usable.
    pub fn validate(&self) -> Vec<LimitError> {
        let mut errs = Vec::new();
        let mut bad = |field, message: &str| {
            errs.push(LimitError {
                field,
                message: message.into(),
            })
        };
        if let Some(r) = self.enqueue_rate_per_s
            && !(r.is_finite() && r > 0.0)
        {
            bad("enqueue_rate_per_s", "must be a positive number or null");
        }
        if self.enqueue_burst == Some(0) {
            bad("enqueue_burst", "must be at least 1 or null");
        }
        if self.max_sandboxes == Some(0) {
            bad(
                "max_sandboxes",
                "must be at least 1 or null (a tenant with no sandbox can run nothing)",
            );
        }
        if self.max_concurrent_jobs == Some(0) {
            bad("max_concurrent_jobs", "must be at least 1 or null");
        }
        if let Some(m) = self.max_sandboxes
            && self.min_warm > m
        {
            bad("min_warm", "must not exceed max_sandboxes");
        }
        let s = self.sandbox_size;
        if !(s.cpus.is_finite() && s.cpus >= 0.001 && s.cpus <= 1024.0) {
            bad("sandbox_size", "cpus must be between 0.001 and 1024");
        }
        if s.memory_mb < 16 || s.memory_mb > 4 * 1024 * 1024 {
            bad("sandbox_size", "memory_mb must be between 16 and 4194304");
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_defaults_match_the_contract() {
        let f = PlanTier::Free.limits();
        assert_eq!(
            (f.max_sandboxes, f.jobs_per_month, f.enqueue_rate_per_s),
            (Some(1), Some(100), Some(10.0))
        );
        let p = PlanTier::Pro.limits();
        assert_eq!(
            (p.max_sandboxes, p.jobs_per_month, p.enqueue_rate_per_s),
            (Some(5), Some(1000), Some(100.0))
        );
        let t = PlanTier::Team.limits();
        assert_eq!(
            (t.max_sandboxes, t.jobs_per_month, t.enqueue_rate_per_s),
            (Some(20), Some(10_000), Some(100.0))
        );
        let e = PlanTier::Enterprise.limits();
        assert_eq!(
            (e.max_sandboxes, e.jobs_per_month, e.enqueue_rate_per_s),
            (None, None, Some(1000.0))
        );
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let patch: LimitsPatch = serde_json::from_str(
            r#"{"max_sandboxes": null, "min_warm": 2, "enqueue_rate_per_s": 3}"#,
        )
        .unwrap();
        let l = Limits::resolve(PlanTier::Pro, &patch);
        assert_eq!(l.max_sandboxes, None);
        assert_eq!(l.min_warm, 2);
        assert_eq!(l.jobs_per_month, Some(1000));
        assert_eq!(
            (l.enqueue_rate_per_s, l.enqueue_burst),
            (Some(3.0), Some(3))
        );
        assert!(l.validate().is_empty());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"max_sandbox": 3}"#).is_err());
        let patch: LimitsPatch =
            serde_json::from_str(r#"{"max_sandboxes": 1, "min_warm": 3, "enqueue_burst": 0}"#)
                .unwrap();
        let errs = Limits::resolve(PlanTier::Free, &patch).validate();
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["enqueue_burst", "min_warm"]);
    }
}

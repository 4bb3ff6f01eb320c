//! Plan tiers and the limits they give a tenant, with per-tenant overrides.
//!
//! A tenant's effective limits are its plan's defaults with its own overrides laid on top. In the
//! overrides, an absent field keeps the plan's value and `null` means unlimited.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

text_enum! {
    /// The plans the platform sells, each with default limits ([`PlanTier::limits`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum PlanTier("plan") {
        /// The free plan: one sandbox, a hundred jobs a month.
        Free = "free",
        /// The pro plan.
        Pro = "pro",
        /// The team plan.
        Team = "team",
        /// The enterprise plan: no sandbox or monthly job cap.
        Enterprise = "enterprise",
    }
}

impl PlanTier {
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
            monthly_budget: None,
            on_budget_exceeded: BudgetAction::Notify,
            regions: Vec::new(),
            auto_size: false,
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

/// The size of one sandbox: what it is priced by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSize {
    /// Virtual CPUs (fractions allowed).
    pub cpus: f64,
    /// Memory in MiB.
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
    /// Sandboxes the tenant may have at once (active or not).
    pub max_sandboxes: Option<u32>,
    /// Jobs the tenant may have running at once.
    pub max_concurrent_jobs: Option<u32>,
    /// Jobs the tenant may submit per calendar month (UTC).
    pub jobs_per_month: Option<u64>,
    /// Sustained job submissions per second.
    pub enqueue_rate_per_s: Option<f64>,
    /// Submissions allowed in a burst above the rate.
    pub enqueue_burst: Option<u32>,
    /// Sandboxes kept ready even when no job waits.
    pub min_warm: u32,
    /// Seconds an idle sandbox is kept before it is suspended or stopped.
    pub idle_timeout_s: Option<u64>,
    /// The size every sandbox of the tenant gets.
    pub sandbox_size: SandboxSize,
    /// Spend allowed per calendar month (UTC), in the `[prices]` currency; `None`: no budget.
    #[serde(default)]
    pub monthly_budget: Option<f64>,
    /// What reaching the budget does.
    #[serde(default)]
    pub on_budget_exceeded: BudgetAction,
    /// Where the tenant's sandboxes run, most preferred first (region codes such as `fra`).
    /// Empty: wherever the fleet's provider is configured to place them. Providers that place
    /// by region (`fly`, `kubernetes`) never place a sandbox outside a non-empty list.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Size new sandboxes by the tenant's recent usage ([`crate::sizing`]) instead of
    /// [`Limits::sandbox_size`]: opt-in, off by default.
    #[serde(default)]
    pub auto_size: bool,
}

/// What a tenant that reached its monthly budget gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// `budget.warning` and `budget.exceeded` are sent; jobs are still admitted.
    #[default]
    Notify,
    /// As `notify`, and new jobs are refused with 429 `budget_exceeded` until the month ends.
    Block,
}

/// Declares [`LimitsPatch`]: every field is an `Option<Option<T>>` read with `$de` (absent: `None`,
/// `null`: `Some(None)`) and left out when written if absent, so the serde attributes are spelled
/// once.
macro_rules! limits_patch {
    ($($(#[doc = $doc:literal])+ $field:ident: $ty:ty => $de:literal,)+) => {
        /// Overrides of a plan's limits. Each field: absent keeps the plan's value, `null` sets
        /// unlimited (for `min_warm`: zero; for `sandbox_size`: the default size).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitsPatch {
            $(
                $(#[doc = $doc])+
                #[serde(default, deserialize_with = $de, skip_serializing_if = "Option::is_none")]
                pub $field: Option<Option<$ty>>,
            )+
        }
    };
}

limits_patch! {
    /// Overrides [`Limits::max_sandboxes`].
    max_sandboxes: u32 => "present",
    /// Overrides [`Limits::max_concurrent_jobs`].
    max_concurrent_jobs: u32 => "present",
    /// Overrides [`Limits::jobs_per_month`].
    jobs_per_month: u64 => "present",
    /// Overrides [`Limits::enqueue_rate_per_s`]; without `enqueue_burst` beside it, the burst
    /// follows the rate (rounded up, at least 1).
    enqueue_rate_per_s: f64 => "present",
    /// Overrides [`Limits::enqueue_burst`].
    enqueue_burst: u32 => "present",
    /// Overrides [`Limits::min_warm`] (`null`: zero).
    min_warm: u32 => "present",
    /// Overrides [`Limits::idle_timeout_s`] (`null`: the pool default).
    idle_timeout_s: u64 => "present",
    /// Overrides [`Limits::sandbox_size`] (`null`: the default size); must be an object.
    sandbox_size: SandboxSize => "present_object",
    /// Overrides [`Limits::monthly_budget`] (`null`: no budget).
    monthly_budget: f64 => "present",
    /// Overrides [`Limits::on_budget_exceeded`] (`null`: the default, notify).
    on_budget_exceeded: BudgetAction => "present",
    /// Overrides [`Limits::regions`] (`null` or `[]`: no preference).
    regions: Vec<String> => "present",
    /// Overrides [`Limits::auto_size`] (`null`: off).
    auto_size: bool => "present",
}

/// A `T` read only from an object (JSON `{...}`). serde's derived structs also accept a list of
/// their fields in order (`[null, null]`), which no API caller means; this refuses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// [`present`] for a field that must be an object (or `null`).
fn present_object<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<ObjectOnly<T>>::deserialize(d).map(|v| Some(v.map(|o| o.0)))
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The range each limit may take (a set limit; `null`, unlimited, is always accepted). Bounds are
/// far beyond any real use and small enough that no arithmetic on a limit can overflow.
pub mod range {
    /// Bounds of [`Limits::max_sandboxes`](super::Limits::max_sandboxes).
    pub const MAX_SANDBOXES: (u32, u32) = (1, 100_000);
    /// Bounds of [`Limits::max_concurrent_jobs`](super::Limits::max_concurrent_jobs).
    pub const MAX_CONCURRENT_JOBS: (u32, u32) = (1, 1_000_000);
    /// Bounds of [`Limits::jobs_per_month`](super::Limits::jobs_per_month).
    pub const JOBS_PER_MONTH: (u64, u64) = (0, 1_000_000_000_000);
    /// Bounds of [`Limits::enqueue_rate_per_s`](super::Limits::enqueue_rate_per_s).
    pub const ENQUEUE_RATE_PER_S: (f64, f64) = (0.001, 1_000_000.0);
    /// Bounds of [`Limits::enqueue_burst`](super::Limits::enqueue_burst).
    pub const ENQUEUE_BURST: (u32, u32) = (1, 1_000_000);
    /// Bounds of [`Limits::min_warm`](super::Limits::min_warm).
    pub const MIN_WARM: (u32, u32) = (0, 100_000);
    /// Up to a year.
    pub const IDLE_TIMEOUT_S: (u64, u64) = (0, 31_536_000);
    /// Bounds of [`SandboxSize::cpus`](super::SandboxSize::cpus).
    pub const CPUS: (f64, f64) = (0.001, 1024.0);
    /// Bounds of [`SandboxSize::memory_mb`](super::SandboxSize::memory_mb).
    pub const MEMORY_MB: (u64, u64) = (16, 4 * 1024 * 1024);
    /// Bounds of [`Limits::monthly_budget`](super::Limits::monthly_budget).
    pub const MONTHLY_BUDGET: (f64, f64) = (0.0, 1_000_000_000_000.0);
    /// How many regions a tenant may list.
    pub const REGIONS: usize = 8;
    /// The length of one region code, in characters.
    pub const REGION_LEN: (usize, usize) = (2, 32);
}

/// Whether `r` is a region code: a short lowercase identifier (letters, digits, inner dashes),
/// such as `fra` or `eu-west-1`.
pub fn is_region_code(r: &str) -> bool {
    (range::REGION_LEN.0..=range::REGION_LEN.1).contains(&r.len())
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !r.starts_with('-')
        && !r.ends_with('-')
}

/// One limit that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field}: {message}")]
pub struct LimitError {
    /// The limit's field name, as in the API (`max_sandboxes`, `sandbox_size.cpus`, ...).
    pub field: &'static str,
    /// What is wrong with its value.
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
        if let Some(v) = patch.monthly_budget {
            l.monthly_budget = v;
        }
        if let Some(v) = patch.on_budget_exceeded {
            l.on_budget_exceeded = v.unwrap_or_default();
        }
        if let Some(v) = &patch.regions {
            l.regions = v.clone().unwrap_or_default();
        }
        if let Some(v) = patch.auto_size {
            l.auto_size = v.unwrap_or(false);
        }
        l
    }

    /// Every inconsistency at once, empty when the limits are usable: each set limit within its
    /// [`range`]. (`min_warm` above `max_sandboxes` is no error: the planner never keeps more
    /// sandboxes than `max_sandboxes`, warm or not.)
    pub fn validate(&self) -> Vec<LimitError> {
        let mut errs = Vec::new();
        let mut bad = |field, message: String| errs.push(LimitError { field, message });
        fn within<T: PartialOrd + fmt::Display + Copy>(
            v: T,
            (lo, hi): (T, T),
        ) -> Result<(), String> {
            if v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!(
                    "must be between {lo} and {hi}, or null for unlimited"
                ))
            }
        }
        let checks: [(&'static str, Option<Result<(), String>>); 8] = [
            (
                "monthly_budget",
                // NaN fails both comparisons, so it is refused too.
                self.monthly_budget
                    .map(|v| within(v, range::MONTHLY_BUDGET)),
            ),
            (
                "max_sandboxes",
                self.max_sandboxes.map(|v| within(v, range::MAX_SANDBOXES)),
            ),
            (
                "max_concurrent_jobs",
                self.max_concurrent_jobs
                    .map(|v| within(v, range::MAX_CONCURRENT_JOBS)),
            ),
            (
                "jobs_per_month",
                self.jobs_per_month
                    .map(|v| within(v, range::JOBS_PER_MONTH)),
            ),
            (
                "enqueue_rate_per_s",
                self.enqueue_rate_per_s.map(|v| {
                    // NaN fails both comparisons, so it is refused too.
                    within(v, range::ENQUEUE_RATE_PER_S)
                }),
            ),
            (
                "enqueue_burst",
                self.enqueue_burst.map(|v| within(v, range::ENQUEUE_BURST)),
            ),
            ("min_warm", Some(within(self.min_warm, range::MIN_WARM))),
            (
                "idle_timeout_s",
                self.idle_timeout_s
                    .map(|v| within(v, range::IDLE_TIMEOUT_S)),
            ),
        ];
        for (field, check) in checks {
            if let Some(Err(m)) = check {
                bad(field, m);
            }
        }
        let s = self.sandbox_size;
        if !(s.cpus >= range::CPUS.0 && s.cpus <= range::CPUS.1) {
            bad(
                "sandbox_size",
                format!(
                    "cpus must be between {} and {}",
                    range::CPUS.0,
                    range::CPUS.1
                ),
            );
        }
        if within(s.memory_mb, range::MEMORY_MB).is_err() {
            bad(
                "sandbox_size",
                format!(
                    "memory_mb must be between {} and {}",
                    range::MEMORY_MB.0,
                    range::MEMORY_MB.1
                ),
            );
        }
        if self.regions.len() > range::REGIONS {
            bad(
                "regions",
                format!("at most {} regions may be listed", range::REGIONS),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.regions {
            if !is_region_code(r) {
                bad(
                    "regions",
                    format!("`{r}` is not a region code (lowercase letters, digits, dashes)"),
                );
            } else if !seen.insert(r.as_str()) {
                bad("regions", format!("`{r}` is listed twice"));
            }
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
        let limits = Limits::resolve(PlanTier::Free, &patch);
        let fields: Vec<_> = limits.validate().iter().map(|e| e.field).collect();
        assert_eq!(fields, ["enqueue_burst"]);
    }

    /// The issue's cases: a rate so small its period overflows, an idle timeout that wraps when
    /// made milliseconds, and limits sent as a list.
    #[test]
    fn limits_out_of_range_are_refused() {
        for (patch, field) in [
            (r#"{"enqueue_rate_per_s": 1e-300}"#, "enqueue_rate_per_s"),
            (r#"{"enqueue_rate_per_s": -1}"#, "enqueue_rate_per_s"),
            (r#"{"enqueue_rate_per_s": 1e300}"#, "enqueue_rate_per_s"),
            (
                r#"{"idle_timeout_s": 18446744073709551615}"#,
                "idle_timeout_s",
            ),
            (
                r#"{"jobs_per_month": 18446744073709551615}"#,
                "jobs_per_month",
            ),
            (r#"{"max_sandboxes": 4294967295}"#, "max_sandboxes"),
            (r#"{"max_concurrent_jobs": 0}"#, "max_concurrent_jobs"),
            (r#"{"enqueue_burst": 4294967295}"#, "enqueue_burst"),
            (
                r#"{"max_sandboxes": null, "min_warm": 4294967295}"#,
                "min_warm",
            ),
            (
                r#"{"sandbox_size": {"cpus": 1e-9, "memory_mb": 512}}"#,
                "sandbox_size",
            ),
            (
                r#"{"sandbox_size": {"cpus": 1, "memory_mb": 18446744073709551615}}"#,
                "sandbox_size",
            ),
        ] {
            let patch: LimitsPatch = serde_json::from_str(patch).unwrap();
            let errs = Limits::resolve(PlanTier::Enterprise, &patch).validate();
            assert!(errs.iter().any(|e| e.field == field), "{patch:?}: {errs:?}");
        }
        let edge: LimitsPatch = serde_json::from_str(
            r#"{"enqueue_rate_per_s": 0.001, "idle_timeout_s": 31536000, "jobs_per_month": 0, "max_sandboxes": 100000, "min_warm": 100000}"#,
        )
        .unwrap();
        assert_eq!(Limits::resolve(PlanTier::Free, &edge).validate(), []);
        assert!(serde_json::from_str::<ObjectOnly<LimitsPatch>>("[null, null]").is_err());
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"sandbox_size": [1, 512]}"#).is_err());
        let ok: ObjectOnly<LimitsPatch> =
            serde_json::from_str(r#"{"sandbox_size": {"cpus": 2, "memory_mb": 1024}}"#).unwrap();
        assert_eq!(
            ok.0.sandbox_size,
            Some(Some(SandboxSize {
                cpus: 2.0,
                memory_mb: 1024
            }))
        );
        let null: LimitsPatch = serde_json::from_str(r#"{"sandbox_size": null}"#).unwrap();
        assert_eq!(null.sandbox_size, Some(None));
    }

    #[test]
    fn regions_are_an_ordered_list_of_short_codes() {
        let patch: LimitsPatch =
            serde_json::from_str(r#"{"regions": ["fra", "ams", "eu-west-1"]}"#).unwrap();
        let l = Limits::resolve(PlanTier::Pro, &patch);
        assert_eq!(l.regions, ["fra", "ams", "eu-west-1"]);
        assert_eq!(l.validate(), []);
        let cleared: LimitsPatch = serde_json::from_str(r#"{"regions": null}"#).unwrap();
        assert!(Limits::resolve(PlanTier::Pro, &cleared).regions.is_empty());
        assert!(PlanTier::Pro.limits().regions.is_empty());
        for bad in [
            r#"{"regions": ["FRA"]}"#,
            r#"{"regions": ["fra", "fra"]}"#,
            r#"{"regions": [""]}"#,
            r#"{"regions": ["-fra"]}"#,
            r#"{"regions": ["a"]}"#,
            r#"{"regions": ["fra ams"]}"#,
            r#"{"regions": ["r1","r2","r3","r4","r5","r6","r7","r8","r9"]}"#,
        ] {
            let patch: LimitsPatch = serde_json::from_str(bad).unwrap();
            let errs = Limits::resolve(PlanTier::Pro, &patch).validate();
            assert!(errs.iter().any(|e| e.field == "regions"), "{bad}: {errs:?}");
        }
        assert!(serde_json::from_str::<LimitsPatch>(r#"{"regions": "fra"}"#).is_err());
        // Limits stored before regions existed still read.
        let old = serde_json::to_value(PlanTier::Free.limits()).unwrap();
        let mut old = old.as_object().unwrap().clone();
        old.remove("regions");
        let back: Limits = serde_json::from_value(old.into()).unwrap();
        assert!(back.regions.is_empty());
    }
}

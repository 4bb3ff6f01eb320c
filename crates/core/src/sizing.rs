//! Right-sizing: from the peak memory and CPU time a tenant's recent jobs used, the smallest
//! sandbox size of the ladder that covers them, with the evidence it rests on and what the change
//! would save. Pure: the caller reads the samples and the billed time, this decides.
//!
//! The rule (docs/adr/0024-right-sizing.md): memory is the smallest step of
//! [`MEMORY_LADDER_MB`] that holds the 99th percentile of peak memory with [`HEADROOM`], and never
//! less than the largest peak in the window; CPUs the smallest step of [`CPU_LADDER`] that holds
//! the 95th percentile of cores used with the same headroom (the current count is kept when it is
//! between the need and that step). An OOM kill in the window means the size it ran at was too
//! small: memory goes at least one step above the largest size a job was killed at, however few
//! the samples (the size the job ran at, not the current one, so applying the rule twice does
//! not climb the ladder again). With fewer than
//! [`MIN_SAMPLES`] samples (and no OOM kill) the current size stands, and the evidence says so.

use crate::Millis;
use crate::limits::{SandboxSize, range};
use serde::{Deserialize, Serialize};

/// The memory sizes recommended, in MiB.
pub const MEMORY_LADDER_MB: [u64; 12] = [
    128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144,
];
/// The CPU counts recommended.
pub const CPU_LADDER: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Fewest samples a recommendation other than the current size rests on.
pub const MIN_SAMPLES: usize = 10;
/// Most recent jobs a recommendation looks at.
pub const WINDOW_JOBS: usize = 1000;
/// The oldest job a recommendation looks at: 30 days back.
pub const WINDOW_MS: Millis = 30 * 24 * 3600 * 1000;
/// The margin above the percentile a size must leave: a quarter.
pub const HEADROOM: f64 = 1.25;
/// The largest peak memory a sample may claim: the largest sandbox there can be.
pub const MAX_PEAK_KIB: u64 = range::MEMORY_MB.1 * 1024;
/// The most CPUs a sample's CPU time may imply over its run: the most a sandbox can have.
pub const MAX_CORES: u64 = range::CPUS.1 as u64;

/// What one job attempt used, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Peak memory, in KiB.
    pub peak_memory_kib: u64,
    /// CPU time (user and system), in milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time the job ran, in milliseconds.
    pub wall_ms: u64,
    /// The job was killed for lack of memory.
    pub oom_killed: bool,
    /// The memory of the sandbox it ran in, in MiB (the scheduler's record, not the agent's
    /// word): an OOM kill says this was too little.
    pub memory_mb: u64,
}

/// Why a reported sample was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSample {
    /// Peak memory beyond any sandbox.
    #[error("peak memory of {0} KiB is more than any sandbox has")]
    Memory(u64),
    /// More CPU time than the sandbox's run allows at the most CPUs a sandbox can have.
    #[error("{cpu_ms} ms of CPU time in {wall_ms} ms of running is more than any sandbox can use")]
    Cpu {
        /// CPU time claimed.
        cpu_ms: u64,
        /// Wall time it was claimed over.
        wall_ms: u64,
    },
}

impl Sample {
    /// The sample as it can be recorded, from what an agent reported: the wall time is cut to
    /// `elapsed_ms` (how long the job's attempt can have run, by the scheduler's clock); a peak
    /// beyond the largest sandbox or more CPU time than [`MAX_CORES`] could use in that time is
    /// refused. An agent runs in a sandbox its tenant controls, so nothing it says is believed
    /// beyond what is possible.
    pub fn checked(self, elapsed_ms: u64) -> Result<Sample, BadSample> {
        if self.peak_memory_kib > MAX_PEAK_KIB {
            return Err(BadSample::Memory(self.peak_memory_kib));
        }
        let wall_ms = self.wall_ms.min(elapsed_ms);
        // A second of slack for the clocks' grain.
        let room = elapsed_ms.saturating_add(1000).saturating_mul(MAX_CORES);
        if self.cpu_ms > room {
            return Err(BadSample::Cpu {
                cpu_ms: self.cpu_ms,
                wall_ms,
            });
        }
        Ok(Sample { wall_ms, ..self })
    }
}

/// Percentiles of one measure (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `values` (sorted here); zeros when empty.
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let n = values.len();
            let i = ((p / 100.0) * n as f64).ceil() as usize;
            values[i.clamp(1, n) - 1]
        };
        Percentiles {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: values[values.len() - 1],
        }
    }
}

/// What a recommendation rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Job attempts in the window that reported their usage.
    pub jobs_sampled: usize,
    /// Samples needed before the size moves on usage alone.
    pub min_samples: usize,
    /// The window: at most this many recent jobs...
    pub window_jobs: usize,
    /// ...of at most this many days.
    pub window_days: u64,
    /// Peak memory per job, in MiB.
    pub memory_mb: Percentiles,
    /// CPU time per job, in seconds.
    pub cpu_seconds: Percentiles,
    /// Cores used per job (CPU time over wall time).
    pub cpu_cores: Percentiles,
    /// Jobs in the window killed for lack of memory.
    pub oom_kills: u64,
    /// The size the tenant has now.
    pub current: SandboxSize,
    /// Why this size, in a sentence.
    pub reason: String,
}

/// A recommended size and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The size recommended.
    pub sandbox_size: SandboxSize,
    /// What it rests on.
    pub evidence: Evidence,
}

/// The smallest step of `ladder` at or above `need`, else `None`.
fn step_at_least<T: Copy + PartialOrd>(ladder: &[T], need: T) -> Option<T> {
    ladder.iter().copied().find(|s| *s >= need)
}

/// The recommendation for a tenant whose sandboxes are `current` and whose recent jobs used
/// `samples` (any order).
pub fn recommend(current: SandboxSize, samples: &[Sample]) -> Recommendation {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let memory = Percentiles::of(samples.iter().map(|s| mib(s.peak_memory_kib)).collect());
    let cpu_seconds = Percentiles::of(samples.iter().map(|s| s.cpu_ms as f64 / 1000.0).collect());
    let cpu_cores = Percentiles::of(
        samples
            .iter()
            .filter(|s| s.wall_ms > 0)
            .map(|s| s.cpu_ms as f64 / s.wall_ms as f64)
            .collect(),
    );
    let oom_kills = samples.iter().filter(|s| s.oom_killed).count() as u64;
    let mut evidence = Evidence {
        jobs_sampled: samples.len(),
        min_samples: MIN_SAMPLES,
        window_jobs: WINDOW_JOBS,
        window_days: (WINDOW_MS / (24 * 3600 * 1000)) as u64,
        memory_mb: memory,
        cpu_seconds,
        cpu_cores,
        oom_kills,
        current,
        reason: String::new(),
    };
    let enough = samples.len() >= MIN_SAMPLES;
    let mut size = current;
    if enough {
        // Never below the largest peak seen; the p99 with headroom above that when larger.
        let need_mb = (memory.p99 * HEADROOM).max(memory.max).ceil() as u64;
        size.memory_mb = step_at_least(&MEMORY_LADDER_MB, need_mb).unwrap_or_else(|| {
            // Beyond the ladder: whole GiB, as far as a sandbox goes.
            need_mb
                .div_ceil(1024)
                .saturating_mul(1024)
                .min(range::MEMORY_MB.1)
        });
        let need_cpus = cpu_cores.p95 * HEADROOM;
        let step = step_at_least(&CPU_LADDER, need_cpus).unwrap_or(range::CPUS.1);
        size.cpus = if current.cpus >= need_cpus && current.cpus <= step {
            current.cpus
        } else {
            step
        };
    }
    let killed_at = samples
        .iter()
        .filter(|s| s.oom_killed)
        .map(|s| s.memory_mb)
        .max();
    if let Some(killed_at) = killed_at {
        let above = MEMORY_LADDER_MB
            .iter()
            .copied()
            .find(|s| *s > killed_at)
            .unwrap_or_else(|| killed_at.saturating_mul(2).min(range::MEMORY_MB.1));
        size.memory_mb = size.memory_mb.max(above);
    }
    evidence.reason = if let Some(killed_at) = killed_at {
        format!(
            "{oom_kills} job(s) in the window were killed for lack of memory (at up to {killed_at} MiB): at least one step larger"
        )
    } else if !enough {
        format!(
            "too few samples: {} job(s) reported their usage, {MIN_SAMPLES} are needed; the current size stands",
            samples.len()
        )
    } else {
        format!(
            "the smallest size holding the 99th percentile of peak memory ({:.1} MiB) with {:.0}% headroom, \
             and the largest peak ({:.1} MiB); CPUs for the 95th percentile of cores used ({:.2})",
            memory.p99,
            (HEADROOM - 1.0) * 100.0,
            memory.max,
            cpu_cores.p95
        )
    };
    Recommendation {
        sandbox_size: size,
        evidence,
    }
}

/// What running at the recommended size instead of the current one saves over a month like the
/// last, in resource-seconds (negative: it costs more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saving {
    /// Seconds the tenant's sandboxes ran (were billed) in the last 30 days: the month it is
    /// projected from.
    pub sandbox_seconds: u64,
    /// vCPU-seconds saved a month.
    pub vcpu_seconds: f64,
    /// GiB-seconds saved a month.
    pub gib_seconds: f64,
    /// Money saved a month at the configured prices, when the provider has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    /// The prices' currency, with `amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// The saving of `recommended` over `current` for `sandbox_seconds` of running a month, priced at
/// `price` (`(per vCPU-second, per GiB-second, currency)`) when there is one.
pub fn saving(
    current: SandboxSize,
    recommended: SandboxSize,
    sandbox_seconds: u64,
    price: Option<(f64, f64, &str)>,
) -> Saving {
    let secs = sandbox_seconds as f64;
    let vcpu_seconds = secs * (current.cpus - recommended.cpus);
    let gib_seconds = secs * (current.memory_mb as f64 - recommended.memory_mb as f64) / 1024.0;
    let amount = price.map(|(cpu, gib, _)| vcpu_seconds * cpu + gib_seconds * gib);
    Saving {
        sandbox_seconds,
        vcpu_seconds,
        gib_seconds,
        amount,
        currency: price.map(|(_, _, c)| c.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mib: u64, oom: bool) -> Sample {
        Sample {
            peak_memory_kib: mib * 1024,
            cpu_ms: 200,
            wall_ms: 1000,
            oom_killed: oom,
            memory_mb: 512,
        }
    }

    const PLAN: SandboxSize = SandboxSize {
        cpus: 1.0,
        memory_mb: 512,
    };

    #[test]
    fn jobs_peaking_at_60_mib_on_512_get_128() {
        let samples: Vec<_> = (0..50).map(|i| sample(55 + i % 6, false)).collect();
        let r = recommend(PLAN, &samples);
        assert_eq!(r.sandbox_size.memory_mb, 128);
        assert_eq!(r.sandbox_size.cpus, 1.0);
        assert_eq!(r.evidence.jobs_sampled, 50);
        assert_eq!(r.evidence.memory_mb.max, 60.0);
        assert_eq!(r.evidence.memory_mb.p50, 57.0);
        let s = saving(PLAN, r.sandbox_size, 3600, Some((0.0, 0.001, "USD")));
        assert_eq!(s.gib_seconds, 3600.0 * 384.0 / 1024.0);
        assert!((s.amount.unwrap() - 1.35).abs() < 1e-9);
    }

    #[test]
    fn never_below_the_largest_peak() {
        // 99 small jobs and one at 300 MiB: the p99 is small, the max is not.
        let mut samples: Vec<_> = (0..99).map(|_| sample(20, false)).collect();
        samples.push(sample(300, false));
        assert_eq!(recommend(PLAN, &samples).sandbox_size.memory_mb, 512);
        samples.push(sample(600, false));
        assert_eq!(recommend(PLAN, &samples).sandbox_size.memory_mb, 1024);
    }

    #[test]
    fn an_oom_kill_means_larger_than_the_current_size() {
        let mut samples: Vec<_> = (0..30).map(|_| sample(60, false)).collect();
        samples.push(sample(512, true));
        let r = recommend(PLAN, &samples);
        assert!(r.sandbox_size.memory_mb > PLAN.memory_mb, "{r:?}");
        assert_eq!(r.evidence.oom_kills, 1);
        // Even with a single sample.
        let r = recommend(PLAN, &[sample(500, true)]);
        assert_eq!(r.sandbox_size.memory_mb, 1024);
        assert!(r.evidence.reason.contains("lack of memory"));
        // Once applied, the same evidence does not push the size up again.
        let applied = SandboxSize {
            cpus: 1.0,
            memory_mb: 1024,
        };
        assert_eq!(recommend(applied, &samples).sandbox_size.memory_mb, 1024);
    }

    #[test]
    fn too_few_samples_keep_the_current_size() {
        let samples: Vec<_> = (0..MIN_SAMPLES - 1).map(|_| sample(10, false)).collect();
        let r = recommend(PLAN, &samples);
        assert_eq!(r.sandbox_size, PLAN);
        assert!(r.evidence.reason.contains("too few samples"));
        assert_eq!(recommend(PLAN, &[]).sandbox_size, PLAN);
    }

    #[test]
    fn busy_cpus_get_more_cpus() {
        let samples: Vec<_> = (0..20)
            .map(|_| Sample {
                cpu_ms: 3000,
                ..sample(100, false)
            })
            .collect();
        assert_eq!(recommend(PLAN, &samples).sandbox_size.cpus, 4.0);
        let half = SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        };
        let idle: Vec<_> = (0..20)
            .map(|_| Sample {
                cpu_ms: 100,
                ..sample(100, false)
            })
            .collect();
        assert_eq!(
            recommend(half, &idle).sandbox_size.cpus,
            0.5,
            "a fractional size that is enough is kept"
        );
    }

    #[test]
    fn absurd_samples_are_refused_or_cut() {
        let big = Sample {
            peak_memory_kib: u64::MAX,
            ..sample(1, false)
        };
        assert!(matches!(big.checked(1000), Err(BadSample::Memory(_))));
        let cpu = Sample {
            cpu_ms: u64::MAX,
            ..sample(1, false)
        };
        assert!(matches!(cpu.checked(1000), Err(BadSample::Cpu { .. })));
        let long = Sample {
            wall_ms: u64::MAX,
            ..sample(1, false)
        };
        assert_eq!(long.checked(5000).unwrap().wall_ms, 5000);
        assert!(sample(60, false).checked(u64::MAX).is_ok());
        // Percentiles of extreme but accepted values do not overflow.
        let edge = Sample {
            peak_memory_kib: MAX_PEAK_KIB,
            ..sample(1, false)
        };
        let r = recommend(PLAN, &vec![edge; 20]);
        assert_eq!(r.sandbox_size.memory_mb, range::MEMORY_MB.1);
    }
}

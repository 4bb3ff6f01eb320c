//! Shoal's metering: turns the append-only ledger of sandbox transitions into billable intervals,
//! splits them exactly at hour, day or month boundaries (UTC) into usage buckets, and renders
//! usage events with deterministic ids.
//!
//! Everything is integer milliseconds, so totals are exact and the same inputs always give the
//! same report: a sandbox-millisecond is counted once, in exactly one bucket.

#![warn(missing_docs)]

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use shoal_core::{Millis, SandboxSize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// One transition in the ledger, by the provider's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The sandbox the transition is about.
    pub sandbox_id: String,
    /// The tenant that owns it and pays for it.
    pub tenant: String,
    /// When the provider saw the transition.
    pub at: Millis,
    /// Whether billing starts or stops here.
    pub kind: LedgerKind,
    /// Why the entry was written where no provider event said so (a reconciliation's finding:
    /// which time was used and why), or how the store adjusted it; `None` for a plain
    /// observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<serde_json::Value>,
}

/// Billing starts when the provider reports a sandbox running and stops when it reports it
/// stopped, suspended or gone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerKind {
    /// Running at this size: billing starts.
    Running {
        /// CPUs in thousandths.
        cpus_milli: u64,
        /// Memory in MiB.
        memory_mb: u64,
    },
    /// Not running any more (stopped, suspended or gone): billing stops.
    Stopped,
}

impl LedgerKind {
    /// `Running` at the size `size`.
    pub fn running(size: SandboxSize) -> Self {
        LedgerKind::Running {
            cpus_milli: size.millicpus(),
            memory_mb: size.memory_mb,
        }
    }
}

/// A stretch of billable time of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The sandbox billed.
    pub sandbox_id: String,
    /// The tenant billed.
    pub tenant: String,
    /// The interval's start (inclusive).
    pub start: Millis,
    /// The interval's end (exclusive).
    pub end: Millis,
    /// The sandbox's CPUs in thousandths during the interval.
    pub cpus_milli: u64,
    /// The sandbox's memory in MiB during the interval.
    pub memory_mb: u64,
}

/// Pairs the ledger's transitions (in ledger order) into intervals. A `Running` while already
/// running and a `Stopped` while not running are repeats and change nothing; an interval still
/// open is closed at `until`.
pub fn intervals(entries: &[LedgerEntry], until: Millis) -> Vec<Interval> {
    let mut open: HashMap<&str, (usize, Millis, u64, u64)> = HashMap::new();
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match e.kind {
            LedgerKind::Running {
                cpus_milli,
                memory_mb,
            } => {
                open.entry(&e.sandbox_id)
                    .or_insert((i, e.at, cpus_milli, memory_mb));
            }
            LedgerKind::Stopped => {
                if let Some((_, start, c, m)) = open.remove(e.sandbox_id.as_str()) {
                    out.push(Interval {
                        sandbox_id: e.sandbox_id.clone(),
                        tenant: e.tenant.clone(),
                        start,
                        end: e.at.max(start),
                        cpus_milli: c,
                        memory_mb: m,
                    });
                }
            }
        }
    }
    let mut still: Vec<_> = open.into_iter().collect();
    still.sort_by_key(|(_, (i, ..))| *i);
    for (id, (i, start, c, m)) in still {
        out.push(Interval {
            sandbox_id: id.to_string(),
            tenant: entries[i].tenant.clone(),
            start,
            end: until.max(start),
            cpus_milli: c,
            memory_mb: m,
        });
    }
    out
}

/// How wide a usage bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// An hour, from the top of the hour (UTC).
    Hour,
    /// A calendar day (UTC).
    Day,
    /// A calendar month (UTC).
    Month,
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            "month" => Ok(Granularity::Month),
            _ => Err(format!("unknown granularity `{s}` (hour, day or month)")),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        })
    }
}

fn to_dt(t: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The start of the bucket that holds `t`.
pub fn bucket_start(t: Millis, g: Granularity) -> Millis {
    const HOUR: Millis = 3_600_000;
    const DAY: Millis = 24 * HOUR;
    match g {
        Granularity::Hour => t.div_euclid(HOUR) * HOUR,
        Granularity::Day => t.div_euclid(DAY) * DAY,
        Granularity::Month => {
            let d = to_dt(t);
            month_start(d.year(), d.month())
        }
    }
}

fn month_start(year: i32, month: u32) -> Millis {
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
        .unwrap_or(Millis::MIN)
}

/// The start of the bucket after the one that holds `t`.
pub fn next_boundary(t: Millis, g: Granularity) -> Millis {
    match g {
        Granularity::Hour => bucket_start(t, g) + 3_600_000,
        Granularity::Day => bucket_start(t, g) + 86_400_000,
        Granularity::Month => {
            let d = to_dt(t);
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            month_start(y, m)
        }
    }
}

/// The month bucket (`[start, end)`) holding `t`: the quota period.
pub fn month_of(t: Millis) -> (Millis, Millis) {
    (
        bucket_start(t, Granularity::Month),
        next_boundary(t, Granularity::Month),
    )
}

/// Compute used in one bucket, in exact integer units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Sandbox time in milliseconds.
    pub sandbox_ms: u64,
    /// Thousandths of a CPU times milliseconds.
    pub millicpu_ms: u128,
    /// MiB times milliseconds.
    pub mib_ms: u128,
}

impl Usage {
    fn add_span(&mut self, ms: u64, iv: &Interval) {
        self.sandbox_ms += ms;
        self.millicpu_ms += ms as u128 * iv.cpus_milli as u128;
        self.mib_ms += ms as u128 * iv.memory_mb as u128;
    }

    /// Adds `o` to this usage.
    pub fn add(&mut self, o: &Usage) {
        self.sandbox_ms += o.sandbox_ms;
        self.millicpu_ms += o.millicpu_ms;
        self.mib_ms += o.mib_ms;
    }

    /// Sandbox time in seconds.
    pub fn sandbox_seconds(&self) -> f64 {
        self.sandbox_ms as f64 / 1e3
    }

    /// CPU time in vCPU-seconds.
    pub fn vcpu_seconds(&self) -> f64 {
        self.millicpu_ms as f64 / 1e6
    }

    /// Memory time in GiB-seconds.
    pub fn gib_seconds(&self) -> f64 {
        self.mib_ms as f64 / 1024.0 / 1e3
    }
}

/// One bucket of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's start (inclusive).
    pub start: Millis,
    /// The bucket's end (exclusive).
    pub end: Millis,
    /// What was used in it.
    pub usage: Usage,
}

/// The buckets of `[from, to)` at granularity `g`, each with the part of every interval that falls
/// in it. The first and last buckets are clipped to `from` and `to`.
pub fn bucketize(intervals: &[Interval], from: Millis, to: Millis, g: Granularity) -> Vec<Bucket> {
    let mut buckets = Vec::new();
    let mut t = from;
    while t < to {
        let end = next_boundary(t, g).min(to);
        buckets.push(Bucket {
            start: t,
            end,
            usage: Usage::default(),
        });
        t = end;
    }
    for iv in intervals {
        let (s, e) = (iv.start.max(from), iv.end.min(to));
        if s >= e {
            continue;
        }
        // Buckets are sorted and contiguous: find the first one holding `s`, walk to `e`.
        let mut i = buckets.partition_point(|b| b.end <= s);
        let mut cur = s;
        while cur < e && i < buckets.len() {
            let stop = buckets[i].end.min(e);
            buckets[i].usage.add_span((stop - cur) as u64, iv);
            cur = stop;
            i += 1;
        }
    }
    buckets
}

/// The whole of `intervals` clipped to `[from, to)`, summed without bucketing.
pub fn total(intervals: &[Interval], from: Millis, to: Millis) -> Usage {
    let mut u = Usage::default();
    for iv in intervals {
        let (s, e) = (iv.start.max(from), iv.end.min(to));
        if s < e {
            u.add_span((e - s) as u64, iv);
        }
    }
    u
}

/// A usage event for one tenant's closed bucket, as a CloudEvent (JSON format, spec 1.0). Its id
/// is derived from what it describes, so the same bucket sent twice has the same id and a sink can
/// drop the repeat.
pub fn usage_event(
    source: &str,
    tenant: &str,
    g: Granularity,
    bucket: &Bucket,
) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let key = format!("{tenant}/{g}/{}/{}", bucket.start, bucket.end);
    let digest = Sha256::digest(key.as_bytes());
    let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "specversion": "1.0",
        "type": "dev.shoal.usage.compute",
        "source": source,
        "id": id,
        "subject": tenant,
        "time": to_dt(bucket.end).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": {
            "tenant": tenant,
            "granularity": g,
            "start": to_dt(bucket.start).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "end": to_dt(bucket.end).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "sandbox_seconds": bucket.usage.sandbox_seconds(),
            "vcpu_seconds": bucket.usage.vcpu_seconds(),
            "gib_seconds": bucket.usage.gib_seconds(),
        }
    })
}

pub mod events;
pub use events::*;

#[cfg(test)]
mod tests;

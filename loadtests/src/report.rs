//! The policy report: every policy on every workload, as a Markdown table, a JSON file and an
//! SVG plot of cold-start rate against idle sandbox-hours (drawn with plotters), with cold starts
//! and idle time split by kind of tenant (by the name's prefix, as the generator names them).

use crate::engine::{EngineError, Outcome, RunStats, SimOptions, simulate_detailed};
use crate::policy::Policy;
use crate::workload::Workload;
use plotters::prelude::*;
use std::fmt::Write as _;

/// The policies the report compares.
pub fn default_policies() -> Vec<Policy> {
    let mut v: Vec<Policy> = [30.0, 60.0, 120.0, 300.0, 600.0, 1200.0]
        .into_iter()
        .map(Policy::Fixed)
        .collect();
    v.extend([Policy::Adaptive(None), Policy::Keda, Policy::FlyAutoscaler]);
    v
}

/// One cell of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: String,
    pub policy: String,
    /// Blank sandboxes in the shared warm pool (`--warm-pool`; 0: none).
    pub warm_pool: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The same run's cold starts and idle time by kind of tenant (kinds present only).
    pub by_kind: Vec<KindFigures>,
}

/// The kinds of tenant the report splits by, and the name prefixes that mark them.
pub const KINDS: [(&str, &[&str]); 5] = [
    ("interactive", &["int-"]),
    ("batch/bursty", &["batch-", "burst-"]),
    ("cron", &["cron-"]),
    ("rare", &["rare-"]),
    ("other", &[]),
];

/// The kind of a tenant, by its name.
pub fn kind_of(tenant: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| tenant.starts_with(p)))
        .map_or("other", |(k, _)| k)
}

/// One kind's share of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KindFigures {
    pub kind: &'static str,
    pub tenants: u64,
    pub jobs: u64,
    pub cold_starts: u64,
    pub idle_sandbox_seconds: f64,
}

/// Splits a run's cold starts (per job, workload order) and idle time (per tenant) by kind.
pub fn by_kind(w: &Workload, cold: &[bool], idle_ms_by_tenant: &[i64]) -> Vec<KindFigures> {
    let kind: Vec<&'static str> = w.tenants.iter().map(|t| kind_of(t)).collect();
    KINDS
        .iter()
        .filter_map(|&(k, _)| {
            let tenants = kind.iter().filter(|&&x| x == k).count() as u64;
            if tenants == 0 {
                return None;
            }
            let of = |t: u32| kind[t as usize] == k;
            let jobs = w.jobs.iter().filter(|j| of(j.tenant)).count() as u64;
            let cold_starts = w
                .jobs
                .iter()
                .zip(cold)
                .filter(|(j, c)| **c && of(j.tenant))
                .count() as u64;
            let idle: i64 = idle_ms_by_tenant
                .iter()
                .enumerate()
                .filter(|(t, _)| kind.get(*t) == Some(&k))
                .map(|(_, ms)| ms)
                .sum();
            Some(KindFigures {
                kind: k,
                tenants,
                jobs,
                cold_starts,
                idle_sandbox_seconds: idle as f64 / 1000.0,
            })
        })
        .collect()
}

fn row(name: &str, w: &Workload, p: Policy, opts: &SimOptions) -> Result<Row, EngineError> {
    let (outcome, stats, jobs): (Outcome, RunStats, _) = simulate_detailed(w, p, opts)?;
    let cold: Vec<bool> = jobs.iter().map(|j| j.cold).collect();
    let mut kinds = by_kind(w, &cold, &stats.idle_ms_by_tenant);
    if opts.warm_pool > 0 {
        // The shared warm pool's blanks belong to no tenant: their idle is the fleet's.
        kinds.push(KindFigures {
            kind: "warm pool",
            tenants: 0,
            jobs: 0,
            cold_starts: 0,
            idle_sandbox_seconds: outcome.warm_pool_idle_seconds,
        });
    }
    Ok(Row {
        workload: name.to_string(),
        policy: p.to_string(),
        warm_pool: opts.warm_pool,
        outcome,
        by_kind: kinds,
    })
}

/// Runs `policies` on each named workload, two at a time.
pub fn run_all(
    workloads: &[(String, Workload)],
    policies: &[Policy],
    opts: &SimOptions,
) -> Result<Vec<Row>, EngineError> {
    let tasks: Vec<(usize, Policy)> = (0..workloads.len())
        .flat_map(|w| policies.iter().map(move |&p| (w, p)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(w, p)) = tasks.get(i) else { break };
                    let r = row(&workloads[w].0, &workloads[w].1, p, opts);
                    if let Ok(mut v) = results.lock() {
                        v.push((i, r));
                    }
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_default();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

/// The Markdown table, one section per workload.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let mut last = "";
    for r in rows {
        if r.workload != last {
            last = &r.workload;
            let _ = writeln!(s, "\n**{}** ({} jobs)\n", r.workload, r.outcome.jobs);
            s.push_str("| policy | cold starts | cold-start rate | idle sandbox-s | sandbox-s | wait p50 s | wait p99 s | provider calls | interrupted jobs |\n");
            s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        }
        let o = &r.outcome;
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}% | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.policy,
            o.cold_starts,
            o.cold_start_rate * 100.0,
            o.idle_sandbox_seconds,
            o.sandbox_seconds,
            o.wait_p50_s,
            o.wait_p99_s,
            o.provider_calls,
            o.interrupted_jobs
        );
    }
    s
}

/// Per workload, each policy's cold starts and idle sandbox-seconds by kind of tenant.
pub fn kind_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let mut last = "";
    for r in rows {
        if r.workload != last {
            last = &r.workload;
            let _ = writeln!(
                s,
                "\n**{}** by kind: cold starts / idle sandbox-s (tenants, jobs)\n",
                r.workload
            );
            s.push_str("| policy |");
            for k in &r.by_kind {
                let _ = write!(s, " {} ({}, {}) |", k.kind, k.tenants, k.jobs);
            }
            s.push_str("\n|---|");
            s.push_str(&"---:|".repeat(r.by_kind.len()));
            s.push('\n');
        }
        let _ = write!(s, "| {} |", r.policy);
        for k in &r.by_kind {
            let _ = write!(s, " {} / {:.0} |", k.cold_starts, k.idle_sandbox_seconds);
        }
        s.push('\n');
    }
    s
}

/// The acceptance checks per workload, as restated for the simulator: `adaptive` has at least
/// 40% fewer cold starts than `fixed:600` at no more idle time, and fewer cold starts than
/// `keda` and `fly-autoscaler` with no interrupted job and a lower wait p99.
pub fn checks(rows: &[Row]) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    names.dedup();
    for w in names {
        let get = |p: &str| {
            rows.iter()
                .find(|r| r.workload == w && r.policy == p)
                .map(|r| &r.outcome)
        };
        let (Some(a), Some(f), Some(k), Some(fl)) = (
            get("adaptive"),
            get("fixed:600"),
            get("keda"),
            get("fly-autoscaler"),
        ) else {
            continue;
        };
        let fewer = 1.0 - a.cold_starts as f64 / f.cold_starts.max(1) as f64;
        let idle = a.idle_sandbox_seconds / f.idle_sandbox_seconds.max(1e-9) - 1.0;
        let peers = [k, fl]
            .iter()
            .all(|p| a.cold_starts < p.cold_starts && a.wait_p99_s < p.wait_p99_s);
        let ok = fewer >= 0.40
            && a.idle_sandbox_seconds <= f.idle_sandbox_seconds
            && a.interrupted_jobs == 0
            && peers;
        let msg = format!(
            "{w}: adaptive {:.1}% fewer cold starts than fixed:600 ({} vs {}), idle {:+.1}% ({:.0} vs {:.0} s), {} interrupted; keda {} cold, p99 {:.1} s; fly-autoscaler {} cold, p99 {:.1} s; adaptive p99 {:.1} s",
            fewer * 100.0,
            a.cold_starts,
            f.cold_starts,
            idle * 100.0,
            a.idle_sandbox_seconds,
            f.idle_sandbox_seconds,
            a.interrupted_jobs,
            k.cold_starts,
            k.wait_p99_s,
            fl.cold_starts,
            fl.wait_p99_s,
            a.wait_p99_s,
        );
        out.push((w.to_string(), ok, msg));
    }
    out
}

/// Draws one panel per workload: cold-start rate (y) against idle sandbox-hours (x), the fixed
/// timeouts as a connected curve and the other policies as labelled points.
pub fn plot_svg(rows: &[Row], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    names.dedup();
    let cols = 2usize;
    let nrows = names.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (1100, 460 * nrows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((nrows, cols));
    for (w, area) in names.iter().zip(panels.iter()) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.workload == *w).collect();
        let xs = mine.iter().map(|r| r.outcome.idle_sandbox_seconds / 3600.0);
        let ys = mine.iter().map(|r| r.outcome.cold_start_rate * 100.0);
        let xmax = xs.fold(0.0f64, f64::max) * 1.15 + 1e-9;
        let ymax = ys.fold(0.0f64, f64::max) * 1.15 + 1e-9;
        let mut chart = ChartBuilder::on(area)
            .caption(*w, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
        chart
            .configure_mesh()
            .x_desc("idle sandbox-hours")
            .y_desc("cold-start rate (%)")
            .light_line_style(WHITE)
            .draw()?;
        let fixed: Vec<(f64, f64)> = mine
            .iter()
            .filter(|r| r.policy.starts_with("fixed:"))
            .map(|r| {
                (
                    r.outcome.idle_sandbox_seconds / 3600.0,
                    r.outcome.cold_start_rate * 100.0,
                )
            })
            .collect();
        chart.draw_series(LineSeries::new(fixed.iter().copied(), BLUE.stroke_width(2)))?;
        for r in &mine {
            let p = (
                r.outcome.idle_sandbox_seconds / 3600.0,
                r.outcome.cold_start_rate * 100.0,
            );
            let color = match r.policy.as_str() {
                "adaptive" => RED,
                "keda" => MAGENTA,
                "fly-autoscaler" => GREEN,
                _ => BLUE,
            };
            let label = r.policy.trim_start_matches("fixed:").to_string();
            let label = if r.policy.starts_with("fixed:") {
                format!("fixed {label}s")
            } else {
                label
            };
            chart.draw_series(std::iter::once(Circle::new(p, 5, color.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                label,
                (p.0, p.1),
                ("sans-serif", 13).into_font().color(&color),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_split_a_run_and_add_up_to_it() {
        assert_eq!(kind_of("int-0001"), "interactive");
        assert_eq!(kind_of("burst-0002"), "batch/bursty");
        assert_eq!(kind_of("batch-0003"), "batch/bursty");
        assert_eq!(kind_of("az-001"), "other");
        let w = Workload::from_rows([
            ("int-1", 0, 1_000),
            ("cron-2", 1_000, 1_000),
            ("int-1", 2_000, 1_000),
            ("burst-3", 3_000, 1_000),
        ]);
        // Jobs in arrival order: int-1, cron-2, int-1, burst-3; tenants in first-seen order.
        let split = by_kind(&w, &[true, false, true, true], &[5_000, 0, 1_500]);
        let kinds: Vec<(&str, u64, u64, u64, f64)> = split
            .iter()
            .map(|k| {
                (
                    k.kind,
                    k.tenants,
                    k.jobs,
                    k.cold_starts,
                    k.idle_sandbox_seconds,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("interactive", 1, 2, 2, 5.0),
                ("batch/bursty", 1, 1, 1, 1.5),
                ("cron", 1, 1, 0, 0.0),
            ]
        );
    }
}

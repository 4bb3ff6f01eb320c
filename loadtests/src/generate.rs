//! Seeded multi-tenant workloads with the shapes real platforms see, and a workload derived from
//! the Azure LLM inference trace.
//!
//! A generated workload mixes five kinds of tenant:
//!
//! - **interactive**: people at work. Sessions arrive as a Poisson process modulated by a
//!   day/night cycle (in the tenant's own time zone); a session is a run of jobs a few seconds to
//!   a minute apart. Short jobs.
//! - **batch**: bursts of parallel jobs (fan-out: test shards, a data backfill), bursts arriving
//!   on the same day/night cycle. Longer jobs.
//! - **cron**: a fixed period (one minute to a day) and offset, a scheduler's jitter of a second
//!   or two, an occasional skipped run, sometimes several jobs per firing.
//! - **rare**: the long tail, a few jobs a day at random.
//! - **bursty**: quiet, then a burst: a few jobs to dozens arriving over seconds to a minute (a
//!   user's batch of agent tasks, a webhook storm, a backfill fanned out by a client loop), the
//!   bursts themselves at random on the day/night cycle. Unlike batch fan-out, most of a burst's
//!   jobs come after a sandbox woken at its first job would be ready.
//!
//! Rates are heavy-tailed: tenant `r` (by rank) gets a share proportional to `r^-s` (Zipf), so a
//! few tenants have most jobs. Everything is drawn from one seeded generator, so a profile and a
//! seed give the same CSV byte for byte.

use crate::workload::{Ms, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;

const DAY_S: f64 = 86_400.0;

/// The mix and size of a generated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub about: &'static str,
    pub tenants: u32,
    pub days: f64,
    /// Expected jobs from the rate-driven tenants (interactive, batch, rare); cron tenants add
    /// theirs by period.
    pub jobs: f64,
    /// Shares of tenants by kind: interactive, batch, cron, rare, bursty (need not sum to 1).
    pub mix: [f64; 5],
    /// Zipf exponent of the tenants' rates.
    pub zipf: f64,
    /// Day/night amplitude in [0, 1): the rate swings between `1 - a` and `1 + a` of its mean.
    pub diurnal: f64,
    /// Median job duration of interactive tenants, seconds.
    pub short_job_s: f64,
    /// Median job duration of batch tenants, seconds.
    pub long_job_s: f64,
}

/// The shipped profiles (see `loadtests/workloads/README.md`).
pub fn profiles() -> Vec<Profile> {
    vec![
        Profile {
            name: "saas-mix",
            about: "a general SaaS platform: 300 tenants over 3 days, every kind of tenant",
            tenants: 300,
            days: 3.0,
            jobs: 25_000.0,
            mix: [0.40, 0.15, 0.15, 0.30, 0.0],
            zipf: 1.1,
            diurnal: 0.7,
            short_job_s: 8.0,
            long_job_s: 120.0,
        },
        Profile {
            name: "ci-cron",
            about: "a CI and automation platform: 150 tenants over 2 days, half of them on schedules, \
                    bursts of parallel test shards on pushes during the working day",
            tenants: 150,
            days: 2.0,
            jobs: 12_000.0,
            mix: [0.10, 0.30, 0.50, 0.10, 0.0],
            zipf: 1.0,
            diurnal: 0.85,
            short_job_s: 20.0,
            long_job_s: 300.0,
        },
        Profile {
            name: "agents-long-tail",
            about: "an AI-agent platform: 2,000 tenants over 2 days, a few whales and a long tail \
                    that runs a handful of agent sessions, minutes-long jobs",
            tenants: 2_000,
            days: 2.0,
            jobs: 12_000.0,
            mix: [0.45, 0.05, 0.02, 0.48, 0.0],
            zipf: 1.2,
            diurnal: 0.6,
            short_job_s: 45.0,
            long_job_s: 600.0,
        },
        Profile {
            name: "bursty-mix",
            about: "a platform whose busiest tenants send bursts: 250 tenants over 2 days, a third \
                    of them quiet for minutes to hours, then a few jobs to dozens within a minute",
            tenants: 250,
            days: 2.0,
            jobs: 24_000.0,
            mix: [0.25, 0.10, 0.15, 0.17, 0.33],
            zipf: 1.1,
            diurnal: 0.7,
            short_job_s: 10.0,
            long_job_s: 90.0,
        },
    ]
}

/// Looks a shipped profile up by name.
pub fn profile(name: &str) -> Option<Profile> {
    profiles().into_iter().find(|p| p.name == name)
}

fn exp(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Geometric count >= 1 with the given mean.
fn geometric(rng: &mut StdRng, mean: f64) -> u32 {
    let p = 1.0 / mean.max(1.0);
    let mut n = 1;
    while rng.random::<f64>() > p && n < 10_000 {
        n += 1;
    }
    n
}

/// Day/night factor at time `t` for a tenant whose day peaks at `peak_s` into the day.
fn diurnal(t: f64, amplitude: f64, peak_s: f64) -> f64 {
    1.0 + amplitude * (2.0 * PI * (t - peak_s) / DAY_S).cos()
}

/// Arrival times of a Poisson process of `mean_rate` (per second) modulated by the day/night
/// cycle, on `[0, horizon)`, by thinning.
fn modulated_poisson(
    rng: &mut StdRng,
    mean_rate: f64,
    horizon: f64,
    amp: f64,
    peak_s: f64,
) -> Vec<f64> {
    let mut out = Vec::new();
    if mean_rate <= 0.0 {
        return out;
    }
    let max = mean_rate * (1.0 + amp);
    let mut t = 0.0;
    loop {
        t += exp(rng, 1.0 / max);
        if t >= horizon {
            return out;
        }
        if rng.random::<f64>() * (1.0 + amp) <= diurnal(t, amp, peak_s) {
            out.push(t);
        }
    }
}

/// Generates a workload from a profile and a seed.
pub fn generate(p: &Profile, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let horizon = p.days * DAY_S;
    let total_mix: f64 = p.mix.iter().sum();
    // Kinds assigned at random by the mix; rates by a random rank, so kind and size are
    // independent.
    let kinds: Vec<usize> = (0..p.tenants)
        .map(|_| {
            let mut x = rng.random::<f64>() * total_mix;
            for (k, &m) in p.mix.iter().enumerate() {
                if x < m {
                    return k;
                }
                x -= m;
            }
            3
        })
        .collect();
    let mut ranks: Vec<u32> = (1..=p.tenants).collect();
    for i in (1..ranks.len()).rev() {
        let j = rng.random_range(0..=i);
        ranks.swap(i, j);
    }
    let weight = |r: u32| (r as f64).powf(-p.zipf);
    let driven: f64 = (0..p.tenants as usize)
        .filter(|&i| kinds[i] != 2)
        .map(|i| weight(ranks[i]))
        .sum();
    // Time zones: most tenants in a few regions' working days.
    let zones = [14.0 * 3600.0, 9.0 * 3600.0, 20.0 * 3600.0];
    let mut rows: Vec<(String, Ms, Ms)> = Vec::new();
    let ms = |s: f64| (s * 1000.0).round() as Ms;
    for i in 0..p.tenants as usize {
        let name = format!(
            "{}-{:04}",
            ["int", "batch", "cron", "rare", "burst"][kinds[i]],
            i
        );
        let peak = zones[rng.random_range(0..zones.len())] + rng.random_range(-3600.0..3600.0);
        let jobs_here = p.jobs * weight(ranks[i]) / driven.max(1e-9);
        let push = |t: f64, d: f64, rows: &mut Vec<(String, Ms, Ms)>| {
            if t < horizon {
                rows.push((name.clone(), ms(t), ms(d.max(0.1))));
            }
        };
        match kinds[i] {
            0 => {
                // Interactive: sessions of a few jobs, seconds to a minute apart.
                let per_session = 1.0 + rng.random_range(1.0..8.0);
                let think = rng.random_range(3.0..40.0);
                let starts = modulated_poisson(
                    &mut rng,
                    jobs_here / per_session / horizon,
                    horizon,
                    p.diurnal,
                    peak,
                );
                let med = p.short_job_s * rng.random_range(0.5..2.0);
                for s in starts {
                    let n = geometric(&mut rng, per_session);
                    let mut t = s;
                    for _ in 0..n {
                        let d = lognormal(&mut rng, med, 0.8);
                        push(t, d, &mut rows);
                        t += d + exp(&mut rng, think);
                    }
                }
            }
            1 => {
                // Batch: bursts of parallel jobs.
                let fan = 2.0 + rng.random_range(0.0..20.0);
                let starts = modulated_poisson(
                    &mut rng,
                    jobs_here / fan / horizon,
                    horizon,
                    p.diurnal,
                    peak,
                );
                let med = p.long_job_s * rng.random_range(0.3..2.0);
                for s in starts {
                    let n = geometric(&mut rng, fan).min(200);
                    for _ in 0..n {
                        let t = s + rng.random_range(0.0..2.0);
                        push(t, lognormal(&mut rng, med, 0.6), &mut rows);
                    }
                }
            }
            2 => {
                // Cron: a period, an offset, a second or two of jitter, a rare skipped run.
                let periods = [
                    300.0, 600.0, 900.0, 1800.0, 3600.0, 3600.0, 7200.0, 21_600.0, 86_400.0,
                    86_400.0,
                ];
                let period = periods[rng.random_range(0..periods.len())];
                let offset = rng.random_range(0.0..period);
                let fan = if rng.random::<f64>() < 0.2 {
                    rng.random_range(2..6)
                } else {
                    1
                };
                let med = [5.0, 30.0, 120.0, 600.0][rng.random_range(0..4)];
                let mut t = offset;
                while t < horizon {
                    if rng.random::<f64>() >= 0.02 {
                        for _ in 0..fan {
                            let jitter = exp(&mut rng, 0.8);
                            push(t + jitter, lognormal(&mut rng, med, 0.3), &mut rows);
                        }
                    }
                    t += period;
                }
            }
            4 => {
                // Bursty: a burst's size varies around the tenant's own, its jobs spread over the
                // tenant's own span (seconds to a minute) after the first.
                let size = 2.0 + rng.random_range(0.0..30.0);
                let span = rng.random_range(5.0..60.0);
                let rate = jobs_here / size / horizon;
                let starts = modulated_poisson(&mut rng, rate, horizon, p.diurnal, peak);
                let med = p.long_job_s * rng.random_range(0.3..2.0);
                for s in starts {
                    let n = lognormal(&mut rng, size, 0.5).round().clamp(1.0, 200.0) as u32;
                    push(s, lognormal(&mut rng, med, 0.6), &mut rows);
                    for _ in 1..n {
                        let t = s + rng.random_range(0.0..span);
                        push(t, lognormal(&mut rng, med, 0.6), &mut rows);
                    }
                }
            }
            _ => {
                // Rare: a few jobs a day (at least a couple over the run), at random.
                let rate = (jobs_here / horizon).max(2.0 / horizon);
                let med = if rng.random::<bool>() {
                    p.short_job_s
                } else {
                    p.long_job_s
                };
                for t in modulated_poisson(&mut rng, rate, horizon, p.diurnal * 0.5, peak) {
                    push(t, lognormal(&mut rng, med, 1.0), &mut rows);
                }
            }
        }
    }
    let mut w = Workload::from_rows(rows);
    // Scheduled runs are known in advance.
    w.mark_due(|t| t.starts_with("cron-"));
    w
}

/// How a workload is derived from the Azure trace.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureDerivation {
    /// Tenants the requests are spread over.
    pub tenants: u32,
    /// Zipf exponent of the tenant draw.
    pub zipf: f64,
    /// Time stretch: 24 turns the trace's hour into a day.
    pub stretch: f64,
    pub seed: u64,
}

impl Default for AzureDerivation {
    fn default() -> Self {
        AzureDerivation {
            tenants: 100,
            zipf: 1.1,
            stretch: 24.0,
            seed: 7,
        }
    }
}

/// A trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("expected header TIMESTAMP,ContextTokens,GeneratedTokens")]
    Header,
}

/// Seconds since midnight (plus days since 2000) of `YYYY-MM-DD HH:MM:SS.fffffff`.
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from a civil date (proleptic Gregorian), enough to order timestamps across midnight.
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    Some(days as f64 * DAY_S + h * 3600.0 + mi * 60.0 + sec)
}

/// Derives a workload from the Azure LLM inference trace (`TIMESTAMP,ContextTokens,
/// GeneratedTokens`): each request becomes one job of a tenant drawn by Zipf weight, its arrival
/// the request's offset from the first one times `stretch`, its duration from its tokens (2 s of
/// start-up, prefill at 2,000 tokens/s, decode at 20 tokens/s).
pub fn from_azure(trace: &str, d: &AzureDerivation) -> Result<Workload, TraceError> {
    let mut lines = trace.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim().starts_with("TIMESTAMP") => {}
        _ => return Err(TraceError::Header),
    }
    let mut reqs = Vec::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| TraceError::Parse {
            line: i + 1,
            message: m.to_string(),
        };
        let mut f = l.split(',');
        let ts = f
            .next()
            .and_then(parse_timestamp)
            .ok_or_else(|| bad("bad TIMESTAMP"))?;
        let ctx: f64 = f
            .next()
            .and_then(|x| x.trim().parse().ok())
            .ok_or_else(|| bad("bad ContextTokens"))?;
        let gen_tokens: f64 = f
            .next()
            .and_then(|x| x.trim().parse().ok())
            .ok_or_else(|| bad("bad GeneratedTokens"))?;
        reqs.push((ts, ctx, gen_tokens));
    }
    let t0 = reqs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let mut rng = StdRng::seed_from_u64(d.seed);
    let weights: Vec<f64> = (1..=d.tenants).map(|r| (r as f64).powf(-d.zipf)).collect();
    let total: f64 = weights.iter().sum();
    let mut rows = Vec::with_capacity(reqs.len());
    for (ts, ctx, gen_tokens) in reqs {
        let mut x = rng.random::<f64>() * total;
        let mut tenant = weights.len() - 1;
        for (k, w) in weights.iter().enumerate() {
            if x < *w {
                tenant = k;
                break;
            }
            x -= w;
        }
        let arrival = (ts - t0) * d.stretch;
        let duration = 2.0 + ctx / 2_000.0 + gen_tokens / 20.0;
        rows.push((
            format!("az-{tenant:03}"),
            (arrival * 1000.0).round() as Ms,
            (duration * 1000.0).round() as Ms,
        ));
    }
    Ok(Workload::from_rows(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_reproducible_and_heavy_tailed() {
        let mut p = profile("saas-mix").unwrap();
        p.tenants = 60;
        p.jobs = 3_000.0;
        p.days = 1.0;
        let a = generate(&p, 3);
        assert_eq!(a, generate(&p, 3));
        assert_ne!(a, generate(&p, 4));
        let mut per: Vec<usize> = vec![0; a.tenants.len()];
        for j in &a.jobs {
            per[j.tenant as usize] += 1;
        }
        per.sort_unstable_by(|x, y| y.cmp(x));
        let top: usize = per.iter().take(per.len() / 10).sum();
        assert!(
            top * 2 > a.jobs.len(),
            "the top 10% of tenants have most jobs: {top} of {}",
            a.jobs.len()
        );
        assert!(
            a.jobs
                .windows(2)
                .all(|w| w[0].arrival_ms <= w[1].arrival_ms)
        );
    }

    #[test]
    fn azure_rows_become_jobs() {
        let trace = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                     2023-11-16 23:59:59.5000000,2000,20\n\
                     2023-11-17 00:00:00.0000000,4000,40\n";
        let w = from_azure(
            trace,
            &AzureDerivation {
                stretch: 2.0,
                ..AzureDerivation::default()
            },
        )
        .unwrap();
        assert_eq!(w.jobs.len(), 2);
        assert_eq!(w.jobs[1].arrival_ms, 1_000);
        assert_eq!(w.jobs[0].duration_ms, 4_000);
    }
}

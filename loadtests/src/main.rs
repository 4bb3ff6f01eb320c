//! `shoal-loadtests`: the policy simulator (`simulate`), the workload generator (`generate`), the
//! policy report (`report`), the simulator's scale run (`scale`), the fault run against real
//! replicas (`faults`), the comparison with a bare apalis worker loop (`queue-bench`) and the
//! measurements of waiting on jobs and following their output (`log-bench`), and the replay of a
//! workload against a running `shoal serve`, compared with the simulator (`replay`).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shoal_fleet::sim::SimLatencies;
use shoal_loadtests::engine::BlankState;
use shoal_loadtests::generate::{self, AzureDerivation, Profile};
use shoal_loadtests::{
    Policy, SimOptions, Workload, faults, hotbench, logbench, queuebench, replay, report, simulate,
};
use shoal_planner::adaptive::AdaptiveConfig;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "shoal-loadtests",
    about = "Shoal's load generator and policy simulator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct SimArgs {
    /// Create latency, seconds.
    #[arg(long, default_value_t = 3.0)]
    create_s: f64,
    /// Start latency, seconds.
    #[arg(long, default_value_t = 1.5)]
    start_s: f64,
    /// Resume latency, seconds.
    #[arg(long, default_value_t = 0.3)]
    resume_s: f64,
    /// Cap on each tenant's sandboxes (unlimited by default).
    #[arg(long)]
    max_sandboxes: Option<u32>,
    /// Probability that a create, start or resume fails.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Seed of the provider's failures and the peers' phases and machine ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tell Shoal's planner in advance when the workload's `due` rows arrive (as the scheduler
    /// knows its delayed jobs and schedules); without it, `due` is ignored.
    #[arg(long)]
    due_aware: bool,
    /// The adaptive policy's burst horizon, seconds (0: no burst scale-out).
    #[arg(long, default_value_t = 60.0)]
    burst_horizon_s: f64,
    /// The shared warm pool: this many blank sandboxes of no tenant, claimed by a tenant whose
    /// pool must grow and refilled in the background (0: none).
    #[arg(long, default_value_t = 0)]
    warm_pool: u32,
    /// How the warm pool's blanks wait: `ready` (running; a claim is immediate, their idle is
    /// billed to the fleet) or `stopped` (a claim starts one).
    #[arg(long, value_enum, default_value_t = BlankState::Ready)]
    blank_state: BlankState,
}

impl SimArgs {
    fn options(&self) -> Result<SimOptions> {
        let ms = |s: f64, what: &str| -> Result<i64> {
            if !s.is_finite() || s < 0.0 {
                bail!("--{what} must be a number of seconds >= 0");
            }
            Ok((s * 1000.0).round() as i64)
        };
        if !(0.0..=1.0).contains(&self.failure_rate) {
            bail!("--failure-rate must be in [0, 1]");
        }
        Ok(SimOptions {
            latencies: SimLatencies {
                create_ms: ms(self.create_s, "create-s")?,
                start_ms: ms(self.start_s, "start-s")?,
                resume_ms: ms(self.resume_s, "resume-s")?,
            },
            failure_rate: self.failure_rate,
            seed: self.seed,
            max_sandboxes: self.max_sandboxes,
            due_aware: self.due_aware,
            warm_pool: self.warm_pool,
            blank_state: self.blank_state,
            adaptive: AdaptiveConfig {
                burst_horizon_ms: ms(self.burst_horizon_s, "burst-horizon-s")?,
                ..AdaptiveConfig::default()
            },
            ..SimOptions::default()
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay a workload CSV under one policy; print the figures as JSON.
    Simulate {
        #[arg(long)]
        workload: PathBuf,
        /// fixed:SECONDS, adaptive, keda or fly-autoscaler.
        #[arg(long)]
        policy: Policy,
        /// Write the JSON here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also print run statistics (events, planning time) to standard error.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Generate a workload CSV from a named profile, or derive one from the Azure trace.
    Generate {
        /// saas-mix, ci-cron, agents-long-tail or bursty-mix.
        #[arg(long, conflicts_with = "azure_trace")]
        profile: Option<String>,
        /// Derive from this Azure LLM inference trace CSV instead.
        #[arg(long)]
        azure_trace: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Override the profile's tenant count.
        #[arg(long)]
        tenants: Option<u32>,
        /// Override the profile's expected job count.
        #[arg(long)]
        jobs: Option<f64>,
        /// Override the profile's length in days.
        #[arg(long)]
        days: Option<f64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run every policy on every workload of a folder; write a table, JSON and an SVG plot.
    Report {
        #[arg(long, default_value = "loadtests/workloads")]
        workloads: PathBuf,
        /// Folder for policy-results.md, policy-results.json and policy-plot.svg.
        #[arg(long, default_value = "loadtests/results")]
        out_dir: PathBuf,
        /// Policies, comma-separated (default: the fixed timeouts, adaptive, keda, fly-autoscaler).
        #[arg(long, value_delimiter = ',')]
        policies: Vec<Policy>,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// The scale run: generate a large workload in memory and replay it with timings.
    Scale {
        #[arg(long, default_value_t = 10_000)]
        tenants: u32,
        #[arg(long, default_value_t = 1_000_000.0)]
        jobs: f64,
        #[arg(long, default_value_t = 2.0)]
        days: f64,
        #[arg(long, default_value = "adaptive")]
        policy: Policy,
        /// Seed of the generated workload.
        #[arg(long, default_value_t = 1)]
        workload_seed: u64,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// The fault run: scheduler replicas on Postgres and Redis killed with SIGKILL while jobs
    /// flow, Postgres restarted once, then every job checked (release binaries under --release).
    Faults {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Concurrent enqueueing clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Kill one replica this often (`3s`, `1500ms`).
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        kill_every: std::time::Duration,
        /// Every N-th job goes through the apalis ingress queue (0: none).
        #[arg(long, default_value_t = 10)]
        ingress_every: usize,
        /// Each tenant's max_sandboxes.
        #[arg(long, default_value_t = 1)]
        max_sandboxes: u32,
        /// Run the sandboxes on the strict Fly emulator (real agents) and check the fleet after
        /// the last job: nothing booting or running within 40 s, no machine collected twice, no
        /// request past Fly's limits.
        #[arg(long)]
        fly: bool,
        /// Write the report as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Waiting on jobs (`wait_s`) and following their output: wake-up and delay, and a big job's
    /// memory.
    LogBench {
        #[command(flatten)]
        cfg: logbench::LogBenchConfig,
        /// Write the figures as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The hot path's other bars: the embedded default's no-op rate with 8 sandboxes, and a
    /// stopped tenant's wake with 200,000 jobs queued for another (latency and memory).
    HotBench {
        #[command(flatten)]
        cfg: hotbench::HotConfig,
        /// Write the figures as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Play a workload CSV against a running `shoal serve` (process provider), time compressed,
    /// and compare its cold starts and idle sandbox-seconds with the simulator's prediction.
    Replay {
        #[arg(long)]
        workload: PathBuf,
        /// The scheduler's base URL.
        #[arg(long)]
        url: String,
        /// Its admin token.
        #[arg(long, env = "SHOAL_ADMIN_TOKEN")]
        token: String,
        /// Divide every arrival and duration by this.
        #[arg(long)]
        compress: f64,
        /// The policy the scheduler runs, in real seconds (`fixed:25` for `--idle-timeout 25s`).
        #[arg(long, default_value = "fixed:300")]
        policy: Policy,
        /// Replay only the jobs arriving before this many (uncompressed) seconds.
        #[arg(long)]
        until_s: Option<f64>,
        /// Boot latencies for the simulator, seconds (create,start,resume); measured when absent.
        #[arg(long, value_delimiter = ',', num_args = 3)]
        latencies_s: Option<Vec<f64>>,
        /// Longest wait for the jobs to end and the pools to stop after the last arrival.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
        /// The scheduler's `--warm-pool` (running blanks), simulated alike.
        #[arg(long, default_value_t = 0)]
        warm_pool: u32,
        /// Write the JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Shoal against a bare apalis worker loop, side by side on one Postgres and one Redis.
    QueueBench {
        #[command(flatten)]
        cfg: queuebench::BenchConfig,
        /// Write the figures as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn write_json(out: Option<&Path>, v: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    if let Some(out) = out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn read_workload(path: &Path) -> Result<Workload> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Workload::parse_csv(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Simulate {
            workload,
            policy,
            out,
            stats,
            sim,
        } => {
            let w = read_workload(&workload)?;
            let mut opts = sim.options()?;
            opts.measure = stats;
            let started = Instant::now();
            let (outcome, run) = simulate(&w, policy, &opts)?;
            let json = serde_json::to_string_pretty(&outcome)?;
            match out {
                Some(p) => std::fs::write(&p, json + "\n")
                    .with_context(|| format!("writing {}", p.display()))?,
                None => println!("{json}"),
            }
            if stats {
                eprintln!("{}", serde_json::to_string_pretty(&run)?);
                eprintln!(
                    "wall {:.2} s, peak memory {:.0} MiB",
                    started.elapsed().as_secs_f64(),
                    peak_rss_mib().unwrap_or(0.0)
                );
            }
        }
        Cmd::Generate {
            profile,
            azure_trace,
            seed,
            tenants,
            jobs,
            days,
            out,
        } => {
            let w = if let Some(trace) = azure_trace {
                let text = std::fs::read_to_string(&trace)
                    .with_context(|| format!("reading {}", trace.display()))?;
                generate::from_azure(
                    &text,
                    &AzureDerivation {
                        seed,
                        ..AzureDerivation::default()
                    },
                )?
            } else {
                let name = profile.as_deref().unwrap_or("saas-mix");
                let Some(mut p): Option<Profile> = generate::profile(name) else {
                    bail!(
                        "unknown profile `{name}`: expected saas-mix, ci-cron, agents-long-tail or bursty-mix"
                    );
                };
                if let Some(t) = tenants {
                    p.tenants = t;
                }
                if let Some(j) = jobs {
                    p.jobs = j;
                }
                if let Some(d) = days {
                    p.days = d;
                }
                generate::generate(&p, seed)
            };
            std::fs::write(&out, w.to_csv())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "{}: {} jobs, {} tenants",
                out.display(),
                w.jobs.len(),
                w.tenants.len()
            );
        }
        Cmd::Report {
            workloads,
            out_dir,
            policies,
            sim,
        } => {
            let opts = sim.options()?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(&workloads)
                .with_context(|| format!("reading {}", workloads.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                .collect();
            files.sort();
            let mut ws = Vec::new();
            for f in &files {
                let name = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                ws.push((name, read_workload(f)?));
            }
            let policies = if policies.is_empty() {
                report::default_policies()
            } else {
                policies
            };
            let started = Instant::now();
            let rows = report::run_all(&ws, &policies, &opts)?;
            std::fs::create_dir_all(&out_dir)?;
            let md = format!(
                "{}\n### By kind of tenant\n{}",
                report::table(&rows),
                report::kind_table(&rows)
            );
            std::fs::write(out_dir.join("policy-results.md"), &md)?;
            std::fs::write(
                out_dir.join("policy-results.json"),
                serde_json::to_string_pretty(&rows)? + "\n",
            )?;
            report::plot_svg(&rows, &out_dir.join("policy-plot.svg"))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            println!("{md}");
            for (_, ok, msg) in report::checks(&rows) {
                println!("{} {msg}", if ok { "PASS" } else { "FAIL" });
            }
            eprintln!("report in {:.1} s", started.elapsed().as_secs_f64());
        }
        Cmd::Scale {
            tenants,
            jobs,
            days,
            policy,
            workload_seed,
            sim,
        } => {
            let mut opts = sim.options()?;
            opts.measure = true;
            let p = Profile {
                name: "scale",
                about: "scale run",
                tenants,
                days,
                jobs,
                mix: [0.40, 0.25, 0.10, 0.25, 0.0],
                zipf: 0.8,
                diurnal: 0.6,
                short_job_s: 20.0,
                long_job_s: 600.0,
            };
            let t0 = Instant::now();
            let w = generate::generate(&p, workload_seed);
            let gen_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let (outcome, run) = simulate(&w, policy, &opts)?;
            let sim_s = t1.elapsed().as_secs_f64();
            let summary = serde_json::json!({
                "policy": policy.to_string(),
                "tenants": w.tenants.len(),
                "jobs": w.jobs.len(),
                "generate_wall_s": gen_s,
                "simulate_wall_s": sim_s,
                "peak_memory_mib": peak_rss_mib(),
                "run": run,
                "outcome": outcome,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Faults {
            jobs,
            tenants,
            replicas,
            clients,
            kill_every,
            ingress_every,
            max_sandboxes,
            fly,
            out,
        } => {
            let mut cfg = faults::FaultConfig::new(jobs, tenants);
            cfg.replicas = replicas;
            cfg.clients = clients;
            cfg.kill_every = kill_every;
            cfg.ingress_every = ingress_every;
            cfg.max_sandboxes = max_sandboxes;
            cfg.fly = fly;
            cfg.verbose = true;
            let Some(report) = runtime()?.block_on(faults::run(cfg))? else {
                bail!("Postgres and Redis are needed (scripts/test installs them)");
            };
            for c in &report.checks {
                println!("PASS {c}");
            }
            write_json(out.as_deref(), &report)?;
        }
        Cmd::LogBench { cfg, out } => {
            let figures = runtime()?.block_on(logbench::run(&cfg))?;
            println!("{}", logbench::table(&figures));
            write_json(out.as_deref(), &figures)?;
        }
        Cmd::HotBench { cfg, out } => {
            let figures = runtime()?.block_on(hotbench::run(&cfg))?;
            write_json(out.as_deref(), &figures)?;
        }
        Cmd::Replay {
            workload,
            url,
            token,
            compress,
            policy,
            until_s,
            latencies_s,
            settle,
            warm_pool,
            out,
        } => {
            let mut w = read_workload(&workload)?;
            if let Some(u) = until_s {
                let u = (u * 1000.0).round() as i64;
                w.jobs.retain(|j| j.arrival_ms < u);
            }
            let latencies = latencies_s.map(|v| SimLatencies {
                create_ms: (v[0] * 1000.0).round() as i64,
                start_ms: (v[1] * 1000.0).round() as i64,
                resume_ms: (v[2] * 1000.0).round() as i64,
            });
            let cfg = replay::ReplayConfig {
                url,
                token,
                compress,
                policy,
                latencies,
                settle,
                warm_pool,
            };
            let cmp = runtime()?.block_on(replay::run(&w, &cfg))?;
            write_json(out.as_deref(), &cmp)?;
        }
        Cmd::QueueBench { cfg, out } => {
            let Some(figures) = runtime()?.block_on(queuebench::run(&cfg))? else {
                bail!("Postgres and Redis are needed (scripts/test installs them)");
            };
            println!("{}", queuebench::table(&figures));
            write_json(out.as_deref(), &figures)?;
        }
    }
    Ok(())
}

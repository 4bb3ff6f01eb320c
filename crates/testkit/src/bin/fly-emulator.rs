//! `fly-emulator`: the Fly Machines API emulator as a standalone server, for running Shoal with
//! `--provider fly` on one machine. Prints its URL on stdout and serves until SIGINT or SIGTERM,
//! then kills the machines' processes and prints its counters on stderr. Counters are also at
//! `GET /_emulator/stats`; faults can be changed with `PUT /_emulator/faults` (JSON).

use anyhow::Context;
use clap::Parser;
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults, Latencies, ThrottleBursts};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "fly-emulator",
    about = "A Fly Machines API emulator for Shoal's tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4280")]
    bind: SocketAddr,
    /// The app served.
    #[arg(long, default_value = "shoal-test")]
    app: String,
    /// Accept only this bearer token (any when unset).
    #[arg(long, env = "FLY_API_TOKEN")]
    token: Option<String>,
    /// Known regions, the first being the default.
    #[arg(long, value_delimiter = ',', default_value = "ams,fra,ord")]
    regions: Vec<String>,
    /// The `shoal-agent` binary to run in started machines.
    #[arg(long, conflicts_with = "command")]
    agent: Option<PathBuf>,
    /// Any command to run in started machines instead (after `--`).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    command: Vec<String>,
    /// Show the machines' processes' output.
    #[arg(long)]
    process_output: bool,
    /// Time from created or stopped to started.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
    start_latency: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    resume_latency: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "150ms")]
    stop_latency: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "150ms")]
    suspend_latency: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    destroy_latency: Duration,
    /// Fraction of requests answered with a 5xx.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx: f64,
    /// Bursts of 429 as EVERY/LENGTH, e.g. `10s/500ms`.
    #[arg(long)]
    fault_429_bursts: Option<String>,
    /// Regions out of capacity.
    #[arg(long, value_delimiter = ',')]
    no_capacity: Vec<String>,
    /// Extra time before each create answers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    slow_create: Duration,
    /// How long a new machine answers 404.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    not_found_after_create: Duration,
    /// Strict mode: a new machine answers 404 for a moment after its create, as Fly's API does
    /// (unless `--not-found-after-create` sets the window).
    #[arg(long)]
    strict: bool,
    /// Do not enforce Fly's rate limits.
    #[arg(long)]
    no_rate_limits: bool,
    /// The OpenAPI spec to check requests against.
    #[arg(long)]
    spec: Option<PathBuf>,
}

fn bursts(s: &str) -> anyhow::Result<ThrottleBursts> {
    let (every, length) = s
        .split_once('/')
        .context("--fault-429-bursts is EVERY/LENGTH")?;
    Ok(ThrottleBursts {
        every_ms: humantime::parse_duration(every)?.as_millis() as u64,
        length_ms: humantime::parse_duration(length)?.as_millis() as u64,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = EmulatorConfig {
        bind: args.bind,
        app: args.app,
        token: args.token,
        regions: args.regions,
        latencies: Latencies {
            start: args.start_latency,
            resume: args.resume_latency,
            stop: args.stop_latency,
            suspend: args.suspend_latency,
            destroy: args.destroy_latency,
        },
        faults: Faults {
            server_error_fraction: args.fault_5xx,
            throttle: args.fault_429_bursts.as_deref().map(bursts).transpose()?,
            no_capacity: args.no_capacity,
            slow_create_ms: args.slow_create.as_millis() as u64,
            not_found_after_create_ms: args.not_found_after_create.as_millis() as u64,
        },
        command: args.command,
        process_output: args.process_output,
        enforce_rate_limits: !args.no_rate_limits,
        ..EmulatorConfig::default()
    };
    if args.strict {
        cfg = cfg.strict();
    }
    if let Some(agent) = args.agent {
        cfg = cfg.with_agent(agent);
    }
    if let Some(spec) = args.spec {
        cfg.spec_path = spec;
    }
    let mut emu = Emulator::start(cfg).await?;
    println!("{}", emu.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = emu.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let stats = emu.stats();
    eprintln!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

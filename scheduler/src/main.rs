//! `shoal`: the scheduler (`shoal serve`) and the operators' CLI against a running scheduler.

use clap::{Parser, Subcommand};
use shoal_scheduler::cli::{self, OperatorCommand};
use shoal_scheduler::config::{Config, ServeArgs};
use shoal_scheduler::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: job scheduler and managed sandbox fleet orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler: API, dashboard, dispatcher, planner, fleet, metering.
    Serve(ServeCmd),
    /// Exit 0 when the scheduler on this host answers `/healthz` (the images' HEALTHCHECK).
    Healthcheck {
        /// The scheduler's address [default: the port of SHOAL_LISTEN on 127.0.0.1, else 8080].
        #[arg(long)]
        addr: Option<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Operator(OperatorCommand),
}

#[derive(clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    args: ServeArgs,
    /// Log lines as `text` or `json` (one object a line) [default: text].
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Resolve and validate the configuration, print it, and exit non-zero if anything is wrong.
    Check(ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(ServeCmd { args, log_format }) => {
            let _telemetry = telemetry::init(log_format);
            let cfg = match Config::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shoal: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let done = rt.block_on(shoal_scheduler::serve(cfg, shutdown_signal()));
            // The runtime goes before the span exporter flushes (its client blocks).
            drop(rt);
            match done {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shoal: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => match Config::resolve(&args) {
            Ok(c) => {
                println!(
                    "{}",
                    toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoal: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Healthcheck { addr } => healthcheck(addr),
        Command::Operator(cmd) => cli::run(cmd),
    }
}

/// `GET /healthz` on this host with a plain HTTP/1.0 request: no client, no runtime, so it stays
/// cheap as a container's periodic health check.
fn healthcheck(addr: Option<String>) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let addr = addr.unwrap_or_else(|| {
        let port = std::env::var("SHOAL_LISTEN")
            .ok()
            .and_then(|l| l.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
            .unwrap_or(8080);
        format!("127.0.0.1:{port}")
    });
    let answer = (|| -> std::io::Result<String> {
        let timeout = Some(std::time::Duration::from_secs(3));
        let sock: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(3))?;
        s.set_read_timeout(timeout)?;
        s.set_write_timeout(timeout)?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut buf = Vec::new();
        s.take(4096).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200") => {
            std::process::ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!(
                "shoal: {addr}/healthz answered {}",
                a.lines().next().unwrap_or("")
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("shoal: {addr}/healthz: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

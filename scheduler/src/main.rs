//! `shoal`: the scheduler (`shoal serve`) and the operators' CLI against a running scheduler.

use clap::{Parser, Subcommand};
use shoal_scheduler::cli::{self, OperatorCommand};
use shoal_scheduler::config::{Config, ServeArgs};

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
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Operator(OperatorCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Resolve and validate the configuration, print it, and exit non-zero if anything is wrong.
    Check(ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
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
            match rt.block_on(shoal_scheduler::serve(cfg, shutdown_signal())) {
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
        Command::Operator(cmd) => cli::run(cmd),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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

//! `shoal-agent`: runs inside a sandbox. It asks the scheduler for its tenant's jobs with its
//! sandbox token, runs each one (a command, a semantic diff, a flaky-test analysis), heartbeats
//! while it runs, ships the command's output as it is written, and reports the outcome. `semdiff` and `flaky` run the analysis engines locally,
//! without a scheduler.

mod client;
mod logship;
mod run;
mod tail;
mod usage;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "shoal-agent",
    version,
    about = "Shoal's in-sandbox agent and local analysis tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Lease and run this sandbox's jobs (the default). Reads SHOAL_URL and SHOAL_SANDBOX_TOKEN.
    Run(run::RunArgs),
    /// Compare two JSON documents or traces: exit 0 when equal, 1 when different, 2 on error.
    Semdiff {
        baseline: PathBuf,
        candidate: PathBuf,
        /// Options as a JSON file (the job spec's `options`).
        #[arg(long)]
        options: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Score tests' flakiness from JUnit XML reports.
    Flaky {
        /// JUnit XML files, each one run of an unknown commit.
        files: Vec<PathBuf>,
        /// A JSON file `{"runs": [...]}` like the job spec.
        #[arg(long)]
        runs: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None => run::main(run::RunArgs::from_env()),
        Some(Command::Run(args)) => run::main(args),
        Some(Command::Semdiff {
            baseline,
            candidate,
            options,
            format,
        }) => {
            let format = match format {
                Format::Json => shoal_semdiff::cli::Format::Json,
                Format::Text => shoal_semdiff::cli::Format::Text,
            };
            shoal_semdiff::cli::run(&baseline, &candidate, options.as_deref(), format)
        }
        Some(Command::Flaky {
            files,
            runs,
            format,
        }) => {
            let format = match format {
                Format::Json => shoal_flaky::cli::Format::Json,
                Format::Text => shoal_flaky::cli::Format::Text,
            };
            if files.is_empty() && runs.is_none() {
                eprintln!("shoal-agent flaky: give JUnit XML files or --runs RUNS.json");
                2
            } else {
                shoal_flaky::cli::run(&files, runs.as_deref(), format)
            }
        }
    };
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}

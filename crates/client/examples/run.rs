//! Runs a command as a job and shows its output while it runs, then exits with the job's exit
//! code: the HTTP client alone (no `ingress` feature).
//!
//! ```text
//! SHOAL_URL=http://127.0.0.1:8080 SHOAL_TOKEN=... cargo run -p shoal-client --example run -- acme sh -c 'echo hi; sleep 1; echo bye'
//! ```

use anyhow::{Context, Result};
use shoal_client::{Client, NewJob};
use std::io::Write;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let tenant = args.next().context("usage: run TENANT COMMAND...")?;
    let command: Vec<String> = args.collect();
    anyhow::ensure!(!command.is_empty(), "usage: run TENANT COMMAND...");
    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("SHOAL_TOKEN")
        .or_else(|_| std::env::var("SHOAL_ADMIN_TOKEN"))
        .context("set SHOAL_TOKEN to the admin token or a tenant key")?;
    let shoal = Client::new(&url, token)?;
    let queued = shoal.enqueue(&NewJob::agent(&tenant, command)).await?;
    eprintln!("job {}", queued.id);
    let mut log = shoal.follow_logs(&queued.id).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = log.next_chunk().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    let job = shoal.wait(&queued.id).await?;
    eprintln!("job {} {}", job.id, job.state);
    let code = job
        .result
        .as_ref()
        .and_then(|r| r["exit_code"].as_i64())
        .unwrap_or(if job.state == "succeeded" { 0 } else { 1 });
    std::process::exit(code as i32);
}

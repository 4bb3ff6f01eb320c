//! Enqueues one job through the HTTP API, or pushes it into the ingress queue, and shows it.
//!
//! ```text
//! SHOAL_URL=http://127.0.0.1:8080 SHOAL_TOKEN=... cargo run -p shoal-client --features ingress --example enqueue -- acme echo hi
//! SHOAL_INGRESS_URL=redis://127.0.0.1:6379/ cargo run -p shoal-client --features ingress --example enqueue -- acme echo hi
//! ```
//!
//! With `SHOAL_INGRESS_URL` set the job goes into the queue (no scheduler needs to be up);
//! otherwise it is enqueued over HTTP and its state is printed.

use anyhow::{Context, Result};
use shoal_client::{Client, Ingress, NewJob};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let tenant = args.next().context("usage: enqueue TENANT COMMAND...")?;
    let command: Vec<String> = args.collect();
    let command = if command.is_empty() {
        vec!["echo".to_string(), "hello from shoal".to_string()]
    } else {
        command
    };
    let job = NewJob::agent(&tenant, command);

    if let Ok(url) = std::env::var("SHOAL_INGRESS_URL") {
        let queued = Ingress::connect(&url).await?.push(job).await?;
        println!(
            "pushed into the ingress queue with idempotency key {}",
            queued.idempotency_key.unwrap_or_default()
        );
        return Ok(());
    }

    let url = std::env::var("SHOAL_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("SHOAL_TOKEN")
        .or_else(|_| std::env::var("SHOAL_ADMIN_TOKEN"))
        .context("set SHOAL_TOKEN to the admin token or a tenant key")?;
    let shoal = Client::new(&url, token)?;
    let queued = shoal.enqueue(&job).await?;
    let job = shoal.job(&queued.id).await?;
    println!("{} ({}) is {}", job.id, job.tenant, job.state);
    Ok(())
}

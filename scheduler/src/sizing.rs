//! Right-sizing in the scheduler: the samples agents report with their completions are checked
//! and recorded ([`record`]); a tenant's recommendation is made from its recent samples and its
//! billed time ([`recommendation`]), for `GET /v1/tenants/{id}/recommendation`, the dashboard
//! and the control loop, which applies it to new sandboxes of tenants with `limits.auto_size`
//! (docs/adr/0024-right-sizing.md).

use shoal_core::sizing::{self, Recommendation, Sample, Saving};
use shoal_core::{Limits, Millis, SandboxSize};
use shoal_protocol::JobUsage;
use shoal_store::{JobRecord, JobUsageRecord, SandboxRecord, Store, StoreError};

/// Records what a finished attempt used, as its agent reported it: checked against what the
/// attempt can have used (an agent runs where its tenant's code runs, so its word is bounded,
/// never believed beyond the possible), refused with a warning when it is impossible. `true` when
/// recorded.
pub async fn record(
    store: &dyn Store,
    sandbox: &SandboxRecord,
    job: &JobRecord,
    usage: JobUsage,
    now: Millis,
) -> Result<bool, StoreError> {
    // The attempt began no earlier than its lease: the job's start, else the sandbox's creation.
    let began = job.started_at.unwrap_or(sandbox.created_at);
    let elapsed = u64::try_from(now.saturating_sub(began)).unwrap_or(0);
    let reported = Sample {
        peak_memory_kib: usage.peak_memory_kib,
        cpu_ms: usage.cpu_ms,
        wall_ms: usage.wall_ms,
        oom_killed: usage.oom_killed,
        memory_mb: sandbox.memory_mb,
    };
    let sample = match reported.checked(elapsed) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(job = %job.id, sandbox = %sandbox.id, error = %e, "an agent's usage report was refused");
            return Ok(false);
        }
    };
    store
        .record_job_usage(&JobUsageRecord {
            job_id: job.id.clone(),
            attempt: job.attempts,
            tenant: job.tenant.clone(),
            at: now,
            sample,
        })
        .await
}

/// The size a tenant's new sandboxes get now: the one `auto_size` gave it when that is on and has
/// given one, else its `sandbox_size`.
pub async fn effective_size(
    store: &dyn Store,
    tenant: &str,
    limits: &Limits,
) -> Result<SandboxSize, StoreError> {
    if !limits.auto_size {
        return Ok(limits.sandbox_size);
    }
    Ok(store
        .auto_sizes()
        .await?
        .get(tenant)
        .copied()
        .unwrap_or(limits.sandbox_size))
}

/// The recommendation for `tenant`, whose configured size is `configured`, from its samples of
/// the window before `now`.
pub async fn recommendation(
    store: &dyn Store,
    tenant: &str,
    configured: SandboxSize,
    now: Millis,
) -> Result<Recommendation, StoreError> {
    let since = now.saturating_sub(sizing::WINDOW_MS);
    let samples = store
        .job_usage(tenant, since, sizing::WINDOW_JOBS as u32)
        .await?;
    Ok(sizing::recommend(configured, &samples))
}

/// Seconds `tenant`'s sandboxes were billed in the 30 days before `now`.
pub async fn billed_seconds(
    store: &dyn Store,
    tenant: &str,
    now: Millis,
) -> Result<u64, StoreError> {
    let from = now.saturating_sub(sizing::WINDOW_MS);
    let entries = store.period_ledger(tenant, from).await?;
    let ms: i64 = shoal_metering::intervals(&entries, now)
        .iter()
        .map(|i| (i.end.min(now) - i.start.max(from)).max(0))
        .sum();
    Ok(u64::try_from(ms / 1000).unwrap_or(0))
}

/// What moving from `current` to `recommended` saves a month, priced by `provider`'s `[prices]`
/// when it has one.
pub async fn saving(
    store: &dyn Store,
    tenant: &str,
    current: SandboxSize,
    recommended: SandboxSize,
    prices: &shoal_metering::Prices,
    provider: &str,
    now: Millis,
) -> Result<Saving, StoreError> {
    let secs = billed_seconds(store, tenant, now).await?;
    let price = prices
        .providers
        .get(provider)
        .map(|p| (p.vcpu_second, p.gib_second, prices.currency.as_str()));
    Ok(sizing::saving(current, recommended, secs, price))
}

/// Whether two sizes are the same (CPUs compared in thousandths).
pub fn same_size(a: SandboxSize, b: SandboxSize) -> bool {
    a.millicpus() == b.millicpus() && a.memory_mb == b.memory_mb
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_core::audit::Actor;
    use shoal_core::{LimitsPatch, PlanTier, RetryPolicy};
    use shoal_store::{Lease, LeasePolicy, NewJob, NewSandbox};

    /// An agent's report is believed only as far as it is possible: a peak beyond any sandbox or
    /// more CPU time than the attempt's run allows is refused, a wall time longer than the run is
    /// cut to it; what is possible is recorded with the sandbox's own size.
    #[tokio::test]
    async fn impossible_reports_are_refused_and_long_ones_cut() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = shoal_store::open(&url).await.unwrap();
        let admin = Actor::admin();
        store
            .put_tenant("t", PlanTier::Pro, &LimitsPatch::default(), 0, &admin)
            .await
            .unwrap();
        let sandbox = store
            .insert_sandbox(NewSandbox {
                id: "sb".into(),
                tenant: "t".into(),
                provider: "process".into(),
                token_hash: "h".into(),
                cpus_milli: 1000,
                memory_mb: 512,
                now: 0,
            })
            .await
            .unwrap();
        let job = NewJob {
            id: "j".into(),
            tenant: "t".into(),
            kind: "agent".into(),
            spec: json!({"command": ["true"]}),
            idempotency_key: None,
            priority: 0,
            max_attempts: 1,
            timeout_s: 60,
            created_at: 0,
            run_at: None,
            retry: RetryPolicy::default(),
            schedule: None,
        };
        store.admit(job, 0, None, &admin).await.unwrap();
        let policy = LeasePolicy {
            max_concurrent_jobs: None,
            draining: false,
            lease_ttl_ms: 60_000,
        };
        let Lease::Job(job) = store.lease("sb", policy, 1_000).await.unwrap() else {
            panic!("no lease");
        };
        // Ten seconds after the lease.
        let now = 11_000;
        let report = |peak_memory_kib, cpu_ms, wall_ms| JobUsage {
            peak_memory_kib,
            cpu_ms,
            wall_ms,
            oom_killed: false,
        };
        let s = store.as_ref();
        for bad in [
            report(u64::MAX, 10, 10),
            report(shoal_core::sizing::MAX_PEAK_KIB + 1, 10, 10),
            report(1024, u64::MAX, 10),
            // More than 1024 CPUs could use in 11 s.
            report(1024, 11_001 * 1024 + 1, 10),
        ] {
            assert!(
                !record(s, &sandbox, &job, bad, now).await.unwrap(),
                "{bad:?}"
            );
        }
        assert!(s.job_usage("t", 0, 10).await.unwrap().is_empty());
        assert!(
            record(s, &sandbox, &job, report(61_440, 900, u64::MAX), now)
                .await
                .unwrap()
        );
        let got = s.job_usage("t", 0, 10).await.unwrap();
        assert_eq!(
            got,
            [Sample {
                peak_memory_kib: 61_440,
                cpu_ms: 900,
                wall_ms: 10_000,
                oom_killed: false,
                memory_mb: 512,
            }]
        );
    }
}

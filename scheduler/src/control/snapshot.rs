//! The snapshot the planner sees: every tenant's pool from the store (queue counts, sandboxes,
//! work known in advance) under its policy, with the pool gauges updated on the way; and the dry
//! run that plans on it without applying anything.

use super::Settings;
use crate::idle::AdaptiveIdle;
use crate::metrics::Metrics;
use crate::state::{App, now_ms};
use shoal_core::{Millis, SandboxSize};
use shoal_fleet::Capabilities;
use shoal_planner::{IdleAction, PoolPolicy, PoolSnapshot, SandboxView, Snapshot};
use shoal_store::{SandboxRecord, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

/// Reads the pools from the store.
pub struct PoolReader {
    pub store: Arc<dyn Store>,
    /// The provider's, for the idle action (suspend only where it can).
    pub caps: Capabilities,
    pub metrics: Arc<Metrics>,
    pub adaptive: Option<Arc<AdaptiveIdle>>,
    pub settings: Settings,
}

impl PoolReader {
    /// The scheduler's own.
    pub fn of(app: &App) -> Self {
        PoolReader {
            store: Arc::clone(&app.store),
            caps: app.provider.capabilities(),
            metrics: Arc::clone(&app.metrics),
            adaptive: app.adaptive.clone(),
            settings: Settings::of(app),
        }
    }

    /// Builds the snapshot the planner sees at `now`, with each tenant's sandbox size; updates
    /// the pool gauges on the way. Under the adaptive idle policy, the pools of tenants without
    /// an idle timeout of their own get the policy's advice (`crate::idle`), and with `record`
    /// (a planning pass, not a dry run) their demand goes into its history.
    pub async fn snapshot(
        &self,
        now: Millis,
        record: bool,
    ) -> Result<(Snapshot, HashMap<String, SandboxSize>), StoreError> {
        let store = &self.store;
        let metrics = &self.metrics;
        let cfg = &self.settings;
        let tenants = store.tenants().await?;
        // The sizes `auto_size` gave, read only when a tenant has it on.
        let auto_sizes = if tenants.iter().any(|t| t.limits().auto_size) {
            store.auto_sizes().await?
        } else {
            HashMap::new()
        };
        let counts: HashMap<String, shoal_store::QueueCounts> =
            store.queue_counts(now).await?.into_iter().collect();
        // Work known in advance: each tenant's schedules' next fires (delayed jobs and retries
        // are in the queue counts).
        let mut fires: HashMap<String, Millis> = HashMap::new();
        for s in store.schedules(None).await? {
            if let Some(at) = s.next_fire_at {
                let e = fires.entry(s.tenant).or_insert(at);
                *e = (*e).min(at);
            }
        }
        let mut by_tenant: HashMap<String, Vec<SandboxRecord>> = HashMap::new();
        for s in store.sandboxes(None).await? {
            by_tenant.entry(s.tenant.clone()).or_default().push(s);
        }
        let mut sizes = HashMap::new();
        let mut pools = Vec::with_capacity(tenants.len());
        let mut depth: HashMap<String, i64> = HashMap::new();
        let mut running: HashMap<String, i64> = HashMap::new();
        let mut sandbox_gauge: HashMap<(String, &str), i64> = HashMap::new();
        let idle_action = if cfg.suspend_idle && self.caps.suspend {
            IdleAction::Suspend
        } else {
            IdleAction::Stop
        };
        for t in tenants {
            let limits = t.limits();
            let c = counts.get(&t.id).copied().unwrap_or_default();
            let sandboxes = by_tenant.remove(&t.id).unwrap_or_default();
            // Tenants past the label bound share `other`: their gauges add up, set once below.
            let label = metrics.tenant(&t.id).to_string();
            *depth.entry(label.clone()).or_default() += c.queued as i64;
            *running.entry(label.clone()).or_default() += c.running as i64;
            for b in [
                "booting",
                "ready",
                "busy",
                "unhealthy",
                "suspended",
                "stopped",
            ] {
                sandbox_gauge.entry((label.clone(), b)).or_default();
            }
            for s in &sandboxes {
                if let Some(b) = s.state.pool_bucket() {
                    *sandbox_gauge.entry((label.clone(), b)).or_default() += 1;
                }
            }
            let size = match auto_sizes.get(&t.id) {
                Some(auto) if limits.auto_size => *auto,
                _ => limits.sandbox_size,
            };
            sizes.insert(t.id.clone(), size);
            let mut pool = PoolSnapshot {
                tenant: t.id.clone(),
                policy: PoolPolicy {
                    min_warm: limits.min_warm,
                    max_sandboxes: limits.max_sandboxes,
                    max_concurrent_jobs: limits.max_concurrent_jobs,
                    slots_per_sandbox: 1,
                    idle_timeout_ms: limits.idle_timeout_s.map_or(cfg.idle_timeout_ms, |s| {
                        // Validated to a year at most; saturating all the same.
                        Millis::try_from(s)
                            .unwrap_or(Millis::MAX)
                            .saturating_mul(1000)
                    }),
                    idle_action,
                    retention_ms: cfg.retention_ms,
                    boot_timeout_ms: cfg.boot_timeout_ms,
                    weight: t.plan.fair_share_weight(),
                    due_lead_ms: cfg.due_lead_ms,
                },
                // Jobs waiting for their time are not demand yet: they are `next_due`.
                queued: c.queued.saturating_sub(c.waiting).min(u64::from(u32::MAX)) as u32,
                running: c.running.min(u64::from(u32::MAX)) as u32,
                draining: t.draining,
                prewarm: None,
                next_due: match (c.next_due, fires.get(&t.id).copied()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                // One job per delayed job, retry or fire as far as the snapshot knows.
                due_jobs: 1,
                sandboxes: sandboxes
                    .iter()
                    .map(|s| SandboxView {
                        id: s.id.clone(),
                        state: s.state,
                        since: s.since,
                        idle_since: s.idle_since,
                    })
                    .collect(),
            };
            if let Some(adaptive) = &self.adaptive
                && limits.idle_timeout_s.is_none()
            {
                adaptive.advise(&mut pool, now, record);
            }
            pools.push(pool);
        }
        for (label, v) in depth {
            metrics.queue_depth.with_label_values(&[&label]).set(v);
        }
        for (label, v) in running {
            metrics.jobs_running.with_label_values(&[&label]).set(v);
        }
        for ((label, state), v) in sandbox_gauge {
            metrics.sandboxes.with_label_values(&[&label, state]).set(v);
        }
        Ok((
            Snapshot {
                pools,
                fleet_max_active: cfg.fleet_max_sandboxes,
            },
            sizes,
        ))
    }
}

/// The plan the planner would make now, without applying it.
pub async fn dry_run(app: &App) -> Result<shoal_planner::Plan, StoreError> {
    let now = now_ms();
    let (snap, _) = PoolReader::of(app).snapshot(now, false).await?;
    Ok(shoal_planner::plan(&snap, now))
}

//! One planning pass: the snapshot, the plan, and its steps applied while this replica leads; and
//! the tenant limits given to providers that mirror them.

use super::Control;
use shoal_core::SandboxSize;
use shoal_planner::Snapshot;
use shoal_store::StoreError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Control {
    /// One planning pass: snapshot, plan, apply. Answers how long the snapshot took to read.
    /// A pass that learns it no longer leads applies no further step (the steps it applied
    /// already see the same in their provider calls, and step back).
    pub(super) async fn pass(self: &Arc<Self>) -> Result<Duration, StoreError> {
        if self.is_shutting_down() {
            return Ok(Duration::ZERO);
        }
        let now = self.now();
        let reading = Instant::now();
        let (snap, sizes) = self.pools.snapshot(now, true).await?;
        let read = reading.elapsed();
        self.send_limits(&snap, &sizes);
        let plan = shoal_planner::plan(&snap, now);
        let desired: Vec<(String, u32)> = plan
            .pools
            .iter()
            .map(|d| (d.tenant.clone(), d.desired))
            .collect();
        self.signals.planned(&desired);
        for step in plan.steps {
            if !self.leads() {
                tracing::warn!("deposed during a pass: its remaining steps are left to the leader");
                break;
            }
            let size = sizes.get(step.tenant()).copied().unwrap_or_default();
            if let Err(e) = self.apply(step, size, now).await {
                tracing::warn!(error = %e, "applying a step failed");
            }
        }
        if self.leads()
            && let Err(e) = self.refill(now).await
        {
            tracing::warn!(error = %e, "refilling the warm pool failed");
        }
        Ok(read)
    }

    /// Gives the provider the limits of tenants it has not seen or whose limits changed.
    fn send_limits(self: &Arc<Self>, snap: &Snapshot, sizes: &HashMap<String, SandboxSize>) {
        let mut sent = self.limits_sent.lock().unwrap_or_else(|e| e.into_inner());
        for pool in &snap.pools {
            let now = (
                pool.policy.max_sandboxes,
                sizes.get(&pool.tenant).copied().unwrap_or_default(),
            );
            if sent.get(&pool.tenant) == Some(&now) {
                continue;
            }
            sent.insert(pool.tenant.clone(), now);
            let (this, tenant) = (Arc::clone(self), pool.tenant.clone());
            tokio::spawn(async move {
                if let Err(e) = this.provider.tenant_limits(&tenant, now.0, now.1).await {
                    tracing::warn!(tenant, error = %e, "giving the provider a tenant's limits failed");
                    // Try again on the next pass.
                    this.limits_sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&tenant);
                }
            });
        }
    }
}

//! Right-sizing applied: for each tenant with `limits.auto_size`, the leader recomputes the
//! recommendation every [`super::AUTO_SIZE_EVERY`] and, when it differs from the size the
//! tenant's new sandboxes get, records the new size with an operators' event and an audit record
//! (one transaction, [`shoal_store::Sizing::set_auto_size`]). New sandboxes get it from the next
//! pass on; sandboxes running keep their size until they are replaced.

use super::Control;
use shoal_store::StoreError;

impl Control {
    /// Applies right-sizing to every tenant that opted in; answers how many changed size.
    pub(super) async fn auto_size(&self) -> Result<usize, StoreError> {
        let tenants = self.store.tenants().await?;
        if !tenants.iter().any(|t| t.limits().auto_size) {
            return Ok(0);
        }
        let now = self.now();
        let applied = self.store.auto_sizes().await?;
        let mut changed = 0;
        for t in tenants {
            let limits = t.limits();
            if !limits.auto_size {
                continue;
            }
            let store = self.store.as_ref();
            let rec = crate::sizing::recommendation(store, &t.id, limits.sandbox_size, now).await?;
            let effective = applied.get(&t.id).copied().unwrap_or(limits.sandbox_size);
            if crate::sizing::same_size(effective, rec.sandbox_size) {
                continue;
            }
            let evidence = serde_json::to_value(&rec.evidence).unwrap_or_default();
            if self
                .store
                .set_auto_size(&t.id, rec.sandbox_size, &evidence, now)
                .await?
            {
                changed += 1;
                tracing::info!(
                    tenant = %t.id,
                    from_mb = effective.memory_mb,
                    to_mb = rec.sandbox_size.memory_mb,
                    cpus = rec.sandbox_size.cpus,
                    "right-sizing changed the tenant's sandbox size"
                );
                self.kick.notify_one();
            }
        }
        Ok(changed)
    }
}

//! What a leader keeps in the store for its successor: the provider's lease nonces
//! ([`shoal_fleet::LeaseKeeper`]), so that after a failover the new leader can act on every
//! machine at once instead of waiting for its predecessor's leases to lapse (ADR 0023).

use async_trait::async_trait;
use shoal_core::Millis;
use shoal_store::Store;
use std::sync::Arc;

/// The store as a [`shoal_fleet::LeaseKeeper`]. A failed write or read is logged and costs only
/// the wait it would have saved.
pub struct StoreLeases {
    store: Arc<dyn Store>,
}

impl StoreLeases {
    /// Keeps leases in `store`.
    pub fn new(store: Arc<dyn Store>) -> StoreLeases {
        StoreLeases { store }
    }
}

#[async_trait]
impl shoal_fleet::LeaseKeeper for StoreLeases {
    async fn keep(&self, provider_id: &str, nonce: &str, expires_at: Millis) {
        let now = shoal_fleet::common::now_ms();
        if let Err(e) = self
            .store
            .keep_provider_lease(provider_id, nonce, expires_at, now)
            .await
        {
            tracing::warn!(provider_id, error = %e, "keeping a provider lease for a successor failed");
        }
    }

    async fn recall(&self, provider_id: &str) -> Option<(String, Millis)> {
        let now = shoal_fleet::common::now_ms();
        match self.store.provider_lease(provider_id, now).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(provider_id, error = %e, "reading a kept provider lease failed");
                None
            }
        }
    }

    async fn forget(&self, provider_id: &str) {
        if let Err(e) = self.store.forget_provider_lease(provider_id).await {
            tracing::warn!(provider_id, error = %e, "forgetting a provider lease failed");
        }
    }
}

//! The one orphan collector: a sandbox a provider runs for Shoal (found by its tags) that the
//! store does not know is destroyed. The scheduler's control loop calls it on its collection
//! timer; the provider conformance tests call it against each real provider or emulator.

use crate::{Observation, Provider, ProviderError, SandboxRef};

/// One sandbox the collector found unknown, and what destroying it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub sandbox: SandboxRef,
    pub result: Result<(), ProviderError>,
}

/// Destroys every sandbox in `listed` (a [`Provider::list`] answer) whose Shoal id `is_known`
/// does not recognise. A failed destroy does not stop the others; each outcome is answered, in
/// the listing's order.
pub async fn collect_listed<P: Provider + ?Sized>(
    provider: &P,
    listed: &[Observation],
    is_known: impl Fn(&str) -> bool,
) -> Vec<Collected> {
    let mut collected = Vec::new();
    for o in listed {
        if is_known(&o.sandbox.sandbox_id) {
            continue;
        }
        tracing::warn!(provider = provider.name(), sandbox = %o.sandbox.sandbox_id, provider_id = %o.sandbox.provider_id, "collecting a sandbox the store does not know");
        let result = provider.destroy(&o.sandbox).await;
        if let Err(e) = &result {
            tracing::warn!(sandbox = %o.sandbox.sandbox_id, error = %e, "collecting an unknown sandbox failed");
        }
        collected.push(Collected {
            sandbox: o.sandbox.clone(),
            result,
        });
    }
    collected
}

/// Lists the provider's sandboxes and collects those `is_known` does not recognise
/// ([`collect_listed`]); fails only when the listing does.
pub async fn collect_unknown<P: Provider + ?Sized>(
    provider: &P,
    is_known: impl Fn(&str) -> bool,
) -> Result<Vec<Collected>, ProviderError> {
    let listed = provider.list().await?;
    Ok(collect_listed(provider, &listed, is_known).await)
}

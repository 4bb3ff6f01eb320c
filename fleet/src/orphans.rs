//! The one orphan collector: a sandbox a provider runs for Shoal (found by its tags) that the
//! store does not know is destroyed. The scheduler's control loop calls it on its collection
//! timer; the provider conformance tests call it against each real provider or emulator.

use crate::{Observation, Provider, ProviderError, SandboxRef};

/// One sandbox the collector found unknown, and what destroying it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The sandbox found.
    pub sandbox: SandboxRef,
    /// What destroying it answered.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, ObservedState, SandboxSpec};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Sandboxes in memory; destroying `sb-bad` fails.
    struct Memory(Mutex<Vec<SandboxRef>>);

    #[async_trait]
    impl Provider for Memory {
        fn name(&self) -> &'static str {
            "memory"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                suspend: false,
                stop: false,
            }
        }
        async fn create(&self, _: &SandboxSpec) -> Result<String, ProviderError> {
            Err(ProviderError::Permanent("not here".into()))
        }
        async fn start(&self, _: &SandboxRef, _: &SandboxSpec) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn stop(&self, _: &SandboxRef) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn suspend(&self, _: &SandboxRef) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn resume(&self, _: &SandboxRef) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn destroy(&self, s: &SandboxRef) -> Result<(), ProviderError> {
            if s.sandbox_id == "sb-bad" {
                return Err(ProviderError::Transient("503".into()));
            }
            self.0.lock().unwrap().retain(|x| x != s);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|s| Observation {
                    sandbox: s.clone(),
                    state: ObservedState::Running,
                    at: 0,
                })
                .collect())
        }
    }

    fn sandbox(id: &str) -> SandboxRef {
        SandboxRef {
            sandbox_id: id.into(),
            tenant: "t".into(),
            provider_id: format!("p-{id}"),
        }
    }

    #[tokio::test]
    async fn unknown_sandboxes_are_destroyed_and_a_failure_does_not_stop_the_rest() {
        let p = Memory(Mutex::new(vec![
            sandbox("sb-keep"),
            sandbox("sb-bad"),
            sandbox("sb-lost"),
        ]));
        let collected = collect_unknown(&p, |id| id == "sb-keep").await.unwrap();
        let outcome: Vec<_> = collected
            .iter()
            .map(|c| (c.sandbox.sandbox_id.as_str(), c.result.is_ok()))
            .collect();
        assert_eq!(outcome, vec![("sb-bad", false), ("sb-lost", true)]);
        let left: Vec<_> =
            p.0.lock()
                .unwrap()
                .iter()
                .map(|s| s.sandbox_id.clone())
                .collect();
        assert_eq!(left, vec!["sb-keep", "sb-bad"]);
    }
}

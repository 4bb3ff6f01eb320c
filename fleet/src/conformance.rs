//! The provider conformance suite: one set of checks that every [`Provider`] must pass, run by each
//! provider's own tests against the real thing or its emulator.
//!
//! It drives one sandbox through its whole life and checks, after each call, both what the
//! provider reported on its observation channel and what `list` answers; and it checks that every
//! call is idempotent.

use crate::{Observation, ObservedState, Provider, ProviderError, SandboxRef, SandboxSpec};
use shoal_core::SandboxSize;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// A check of the suite that did not hold.
#[derive(Debug, thiserror::Error)]
#[error("conformance check `{check}` failed: {message}")]
pub struct ConformanceFailure {
    /// The check's name.
    pub check: &'static str,
    /// What it saw instead of what it expected.
    pub message: String,
}

fn fail(check: &'static str, message: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        check,
        message: message.into(),
    }
}

/// What the suite needs to know about the environment it runs in.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Put into the sandbox's spec; the agent inside tries to reach it.
    pub scheduler_url: String,
    /// How long a provider may take to reach a state.
    pub timeout: Duration,
    /// A tenant name unique to this run, so parallel runs do not see each other's sandboxes.
    pub tenant: String,
}

/// A spec for the suite's sandboxes.
pub fn sandbox_spec(cfg: &SuiteConfig, n: u32) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("conf-{}-{n}", cfg.tenant),
        tenant: cfg.tenant.clone(),
        pool: cfg.tenant.clone(),
        token: format!("token-{n}"),
        scheduler_url: cfg.scheduler_url.clone(),
        size: SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        },
        regions: Vec::new(),
    }
}

async fn expect_observed(
    check: &'static str,
    obs: &mut UnboundedReceiver<Observation>,
    sandbox_id: &str,
    want: ObservedState,
    timeout: Duration,
) -> Result<Observation, ConformanceFailure> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, obs.recv()).await {
            Ok(Some(o)) if o.sandbox.sandbox_id == sandbox_id && o.state == want => return Ok(o),
            Ok(Some(_)) => continue,
            Ok(None) => return Err(fail(check, "observation channel closed")),
            Err(_) => {
                return Err(fail(
                    check,
                    format!("no {want:?} observation for {sandbox_id} within {timeout:?}"),
                ));
            }
        }
    }
}

async fn listed_state(
    provider: &dyn Provider,
    sandbox_id: &str,
) -> Result<Option<ObservedState>, ConformanceFailure> {
    let all = provider
        .list()
        .await
        .map_err(|e| fail("list", e.to_string()))?;
    let mine: Vec<_> = all
        .iter()
        .filter(|o| o.sandbox.sandbox_id == sandbox_id)
        .collect();
    if mine.len() > 1 {
        return Err(fail(
            "list",
            format!("{sandbox_id} listed {} times", mine.len()),
        ));
    }
    Ok(mine.first().map(|o| o.state))
}

async fn expect_listed(
    check: &'static str,
    provider: &dyn Provider,
    sandbox_id: &str,
    want: Option<ObservedState>,
    timeout: Duration,
) -> Result<(), ConformanceFailure> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = listed_state(provider, sandbox_id).await?;
        if got == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(
                check,
                format!("list shows {got:?} for {sandbox_id}, wanted {want:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the whole suite against `provider`, whose observations arrive on `obs`.
pub async fn run(
    provider: &dyn Provider,
    obs: &mut UnboundedReceiver<Observation>,
    cfg: &SuiteConfig,
) -> Result<(), ConformanceFailure> {
    let t = cfg.timeout;
    let spec = sandbox_spec(cfg, 1);
    let caps = provider.capabilities();

    // Create, and create again: one sandbox, one id.
    let id = provider
        .create(&spec)
        .await
        .map_err(|e| fail("create", e.to_string()))?;
    let running = expect_observed(
        "create reports running",
        obs,
        &spec.sandbox_id,
        ObservedState::Running,
        t,
    )
    .await?;
    if running.sandbox.provider_id != id || running.sandbox.tenant != spec.tenant {
        return Err(fail(
            "create reports running",
            format!("observed {:?}, created {id}", running.sandbox),
        ));
    }
    expect_listed(
        "create lists running",
        provider,
        &spec.sandbox_id,
        Some(ObservedState::Running),
        t,
    )
    .await?;
    let again = provider
        .create(&spec)
        .await
        .map_err(|e| fail("create is idempotent", e.to_string()))?;
    if again != id {
        return Err(fail(
            "create is idempotent",
            format!("second create gave {again}, first {id}"),
        ));
    }
    expect_listed(
        "create is idempotent",
        provider,
        &spec.sandbox_id,
        Some(ObservedState::Running),
        t,
    )
    .await?;
    let sandbox = SandboxRef {
        sandbox_id: spec.sandbox_id.clone(),
        tenant: spec.tenant.clone(),
        provider_id: id,
    };

    if caps.suspend {
        provider
            .suspend(&sandbox)
            .await
            .map_err(|e| fail("suspend", e.to_string()))?;
        expect_observed(
            "suspend",
            obs,
            &spec.sandbox_id,
            ObservedState::Suspended,
            t,
        )
        .await?;
        expect_listed(
            "suspend",
            provider,
            &spec.sandbox_id,
            Some(ObservedState::Suspended),
            t,
        )
        .await?;
        provider
            .suspend(&sandbox)
            .await
            .map_err(|e| fail("suspend is idempotent", e.to_string()))?;
        provider
            .resume(&sandbox)
            .await
            .map_err(|e| fail("resume", e.to_string()))?;
        expect_observed("resume", obs, &spec.sandbox_id, ObservedState::Running, t).await?;
        expect_listed(
            "resume",
            provider,
            &spec.sandbox_id,
            Some(ObservedState::Running),
            t,
        )
        .await?;
    }

    if caps.stop {
        provider
            .stop(&sandbox)
            .await
            .map_err(|e| fail("stop", e.to_string()))?;
        let stopped =
            expect_observed("stop", obs, &spec.sandbox_id, ObservedState::Stopped, t).await?;
        if stopped.at < running.at {
            return Err(fail(
                "stop",
                "stopped before it started, by the provider's clock",
            ));
        }
        expect_listed(
            "stop",
            provider,
            &spec.sandbox_id,
            Some(ObservedState::Stopped),
            t,
        )
        .await?;
        provider
            .stop(&sandbox)
            .await
            .map_err(|e| fail("stop is idempotent", e.to_string()))?;
        provider
            .start(&sandbox, &spec)
            .await
            .map_err(|e| fail("start", e.to_string()))?;
        expect_observed("start", obs, &spec.sandbox_id, ObservedState::Running, t).await?;
        expect_listed(
            "start",
            provider,
            &spec.sandbox_id,
            Some(ObservedState::Running),
            t,
        )
        .await?;
        provider
            .start(&sandbox, &spec)
            .await
            .map_err(|e| fail("start is idempotent", e.to_string()))?;
    }

    provider
        .destroy(&sandbox)
        .await
        .map_err(|e| fail("destroy", e.to_string()))?;
    expect_listed("destroy", provider, &spec.sandbox_id, None, t).await?;
    provider
        .destroy(&sandbox)
        .await
        .map_err(|e| fail("destroy is idempotent", e.to_string()))?;

    // Calls on a sandbox that does not exist say so.
    let ghost = SandboxRef {
        provider_id: "no-such-sandbox".into(),
        sandbox_id: "conf-ghost".into(),
        tenant: cfg.tenant.clone(),
    };
    match provider.stop(&ghost).await {
        Err(ProviderError::NotFound(_)) => {}
        other => {
            return Err(fail(
                "unknown sandbox is not found",
                format!("stop answered {other:?}"),
            ));
        }
    }

    // Two sandboxes of one tenant are two resources, both tagged.
    let (a, b) = (sandbox_spec(cfg, 2), sandbox_spec(cfg, 3));
    let ia = provider
        .create(&a)
        .await
        .map_err(|e| fail("two sandboxes", e.to_string()))?;
    let ib = provider
        .create(&b)
        .await
        .map_err(|e| fail("two sandboxes", e.to_string()))?;
    if ia == ib {
        return Err(fail("two sandboxes", "two sandboxes share a provider id"));
    }
    for s in [&a, &b] {
        expect_listed(
            "two sandboxes",
            provider,
            &s.sandbox_id,
            Some(ObservedState::Running),
            t,
        )
        .await?;
    }
    for (s, pid) in [(&a, ia), (&b, ib)] {
        let r = SandboxRef {
            sandbox_id: s.sandbox_id.clone(),
            tenant: s.tenant.clone(),
            provider_id: pid,
        };
        provider
            .destroy(&r)
            .await
            .map_err(|e| fail("two sandboxes", e.to_string()))?;
        expect_listed("two sandboxes", provider, &s.sandbox_id, None, t).await?;
    }
    Ok(())
}

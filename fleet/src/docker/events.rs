//! Following the engine's event stream: container events become observations timed by the
//! engine's own clock.

use super::*;

pub(super) fn event_state(action: &str) -> Option<ObservedState> {
    match action {
        "start" | "unpause" => Some(ObservedState::Running),
        "pause" => Some(ObservedState::Suspended),
        "die" => Some(ObservedState::Stopped),
        "destroy" => Some(ObservedState::Gone),
        _ => None,
    }
}

/// Follows the namespace's container events until the provider is dropped (which aborts this
/// task), reconnecting from the last event seen.
pub(super) async fn follow(inner: Arc<Inner>) {
    let mut since_secs = inner.started_nanos / 1_000_000_000;
    let mut last: Option<(i64, String, String)> = None;
    loop {
        let docker = match inner.client().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "docker: the engine does not answer; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_NAMESPACE}={}", inner.cfg.namespace)],
        );
        let mut stream = docker.events(Some(EventsOptions {
            since: Some(since_secs.to_string()),
            until: None,
            filters: Some(filters),
        }));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(m) => {
                    let nanos = m.time_nano.unwrap_or(0);
                    let key = (
                        nanos,
                        m.actor
                            .as_ref()
                            .and_then(|a| a.id.clone())
                            .unwrap_or_default(),
                        m.action.clone().unwrap_or_default(),
                    );
                    // A reconnect replays the last second: skip what was already handled.
                    if last.as_ref().is_some_and(|l| key <= *l) {
                        continue;
                    }
                    since_secs = nanos / 1_000_000_000;
                    last = Some(key);
                    inner.on_event(&m);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "docker: the event stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Inner {
    pub(super) fn on_event(&self, m: &bollard::models::EventMessage) {
        let Some(actor) = &m.actor else { return };
        let Some(attrs) = &actor.attributes else {
            return;
        };
        let (Some(sandbox), Some(tenant), Some(id)) = (
            attrs.get(LABEL_SANDBOX),
            attrs.get(LABEL_TENANT),
            actor.id.as_ref(),
        ) else {
            return;
        };
        let nanos = m
            .time_nano
            .unwrap_or_else(|| m.time.unwrap_or(0) * 1_000_000_000);
        if nanos < self.started_nanos {
            return;
        }
        let action = m.action.as_deref().unwrap_or_default();
        if action == "oom" {
            let n = {
                let mut book = self.book();
                let n = book.ooms.entry(sandbox.clone()).or_default();
                *n += 1;
                *n
            };
            tracing::warn!(%sandbox, %tenant, container = %id, kills = n, "docker: a process of the sandbox was killed for going over its memory limit");
            return;
        }
        let Some(state) = event_state(action) else {
            return;
        };
        {
            let mut book = self.book();
            if state == ObservedState::Gone {
                book.seen.remove(id);
            } else {
                book.seen.insert(id.clone(), state);
            }
        }
        let _ = self.sink.send(Observation {
            sandbox: SandboxRef {
                sandbox_id: sandbox.clone(),
                tenant: tenant.clone(),
                provider_id: id.clone(),
            },
            state,
            at: nanos / 1_000_000,
        });
    }
}

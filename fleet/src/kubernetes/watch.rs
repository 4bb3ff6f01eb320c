//! Following the pods: a watch on Shoal's pods, resumed from the last resource version and
//! relisted when it lapses; pod changes become observations.

use super::*;

/// Follows the pods: list, then watch from there; when the watch ends or breaks, list again.
pub(super) async fn follow(inner: Arc<Inner>) {
    let pods: Api<Pod> = Api::all(inner.client.clone());
    loop {
        match inner.relist(&pods).await {
            Ok(version) => {
                let wp = WatchParams::default().labels(LABEL_SANDBOX).timeout(290);
                match pods.watch(&wp, &version).await {
                    Ok(stream) => {
                        let mut stream = std::pin::pin!(stream);
                        while let Some(ev) = stream.next().await {
                            match ev {
                                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                                    inner.on_pod(&p)
                                }
                                Ok(WatchEvent::Deleted(p)) => inner.on_pod_gone(&p, now_ms()),
                                Ok(WatchEvent::Bookmark(_)) => {}
                                Ok(WatchEvent::Error(s)) => {
                                    tracing::debug!(code = s.code, message = %s.message, "kubernetes: watch ended");
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "kubernetes: watch broke");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "kubernetes: watching pods failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "kubernetes: listing pods failed"),
        }
        tokio::time::sleep(inner.cfg.rewatch_delay).await;
    }
}

impl Inner {
    pub(super) fn on_pod(&self, pod: &Pod) {
        let Some(sandbox) = self.sandbox_of(&pod.metadata) else {
            return;
        };
        let state = objects::pod_state(pod);
        let mut book = self.book();
        let t = book
            .sandboxes
            .entry(sandbox.sandbox_id.clone())
            .or_insert_with(|| Tracked {
                sandbox: sandbox.clone(),
                last: None,
                intent: Intent::Run,
                pod_present: true,
            });
        t.pod_present = true;
        if let Some((s, at)) = state
            && t.last != Some(s)
        {
            t.last = Some(s);
            let sandbox = t.sandbox.clone();
            drop(book);
            self.emit(&sandbox, s, at.unwrap_or_else(now_ms));
        } else {
            drop(book);
        }
        self.bump();
    }

    pub(super) fn on_pod_gone(&self, pod: &Pod, now: Millis) {
        let Some(sandbox) = self.sandbox_of(&pod.metadata) else {
            return;
        };
        self.sandbox_gone(&sandbox, objects::finished_at(pod), now);
    }

    /// The pod of `sandbox` is no more: gone when Shoal destroyed it, else stopped (asked or
    /// not), at the container's finish time where it said.
    pub(super) fn sandbox_gone(&self, sandbox: &SandboxRef, finished: Option<Millis>, now: Millis) {
        let mut book = self.book();
        let t = book
            .sandboxes
            .entry(sandbox.sandbox_id.clone())
            .or_insert_with(|| Tracked {
                sandbox: sandbox.clone(),
                last: None,
                intent: Intent::Run,
                pod_present: true,
            });
        if !t.pod_present && t.intent != Intent::Destroy {
            return;
        }
        t.pod_present = false;
        let report = match t.intent {
            Intent::Destroy => {
                let r = (t.last != Some(ObservedState::Gone)).then_some(ObservedState::Gone);
                let s = t.sandbox.clone();
                book.sandboxes.remove(&sandbox.sandbox_id);
                r.map(|st| (s, st))
            }
            Intent::Run | Intent::Stop => {
                let r = (t.last != Some(ObservedState::Stopped)).then_some(ObservedState::Stopped);
                if t.intent == Intent::Run {
                    tracing::warn!(sandbox = %sandbox.sandbox_id, "kubernetes: a sandbox's pod vanished");
                }
                t.last = Some(ObservedState::Stopped);
                t.intent = Intent::Run;
                r.map(|st| (t.sandbox.clone(), st))
            }
        };
        drop(book);
        if let Some((s, state)) = report {
            self.emit(&s, state, finished.unwrap_or(now));
        }
        self.bump();
    }

    /// Lists the pods, reports what changed since the book last saw them, and answers the list's
    /// resource version to watch from.
    pub(super) async fn relist(&self, pods: &Api<Pod>) -> Result<String, kube::Error> {
        let list = pods
            .list(&ListParams::default().labels(LABEL_SANDBOX))
            .await?;
        let now = now_ms();
        let mut seen = HashSet::new();
        for p in &list.items {
            if let Some(s) = self.sandbox_of(&p.metadata) {
                seen.insert(s.sandbox_id.clone());
                self.on_pod(p);
            }
        }
        let vanished: Vec<SandboxRef> = self
            .book()
            .sandboxes
            .values()
            .filter(|t| t.pod_present && !seen.contains(&t.sandbox.sandbox_id))
            .map(|t| t.sandbox.clone())
            .collect();
        for s in vanished {
            self.sandbox_gone(&s, None, now);
        }
        Ok(list
            .metadata
            .resource_version
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0".into()))
    }
}

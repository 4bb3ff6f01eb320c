//! Reading machines: Fly's states and events become observations stamped with Fly's own times,
//! from the follower's periodic list of the app's machines.

use super::*;

/// The state a machine's event status means, for the ones that matter to billing.
pub(super) fn event_state(status: &str) -> Option<ObservedState> {
    match status {
        "started" => Some(ObservedState::Running),
        "stopped" | "failed" => Some(ObservedState::Stopped),
        "suspended" => Some(ObservedState::Suspended),
        "destroyed" => Some(ObservedState::Gone),
        _ => None,
    }
}

/// The settled state a machine state is, if it is one.
pub(super) fn settled_state(s: &MachineState) -> Option<ObservedState> {
    match s {
        MachineState::Started => Some(ObservedState::Running),
        MachineState::Stopped | MachineState::Failed => Some(ObservedState::Stopped),
        MachineState::Suspended => Some(ObservedState::Suspended),
        MachineState::Destroyed => Some(ObservedState::Gone),
        _ => None,
    }
}

/// What `list` reports for a machine in any state: transitions count as where they come from
/// as far as billing goes (a stopping machine still runs; a starting one does not yet).
pub(super) fn listed_state(s: &MachineState, last: Option<ObservedState>) -> Option<ObservedState> {
    match s {
        MachineState::Destroying | MachineState::Destroyed => None,
        MachineState::Stopping
        | MachineState::Suspending
        | MachineState::Replacing
        | MachineState::Updating => Some(ObservedState::Running),
        MachineState::Created | MachineState::Starting => {
            Some(last.unwrap_or(ObservedState::Stopped))
        }
        MachineState::Other(_) => Some(last.unwrap_or(ObservedState::Stopped)),
        settled => settled_state(settled),
    }
}

pub(super) fn parse_time(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One machine the provider follows.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub(super) sandbox: SandboxRef,
    pub(super) last: Option<ObservedState>,
    /// The newest event already turned into observations.
    pub(super) last_event_ts: i64,
    pub(super) created_here: Option<Instant>,
}

/// What one look at a machine reported, given what was known of it before. Pure, so it is
/// tested on its own.
pub(super) fn observe(t: &mut Tracked, m: &Machine, fallback_now: Millis) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut events: Vec<_> = m
        .events
        .iter()
        .filter(|e| e.timestamp > t.last_event_ts)
        .collect();
    events.sort_by_key(|e| e.timestamp);
    for e in events {
        if let Some(s) = event_state(&e.status)
            && t.last != Some(s)
        {
            t.last = Some(s);
            out.push(Observation {
                sandbox: t.sandbox.clone(),
                state: s,
                at: e.timestamp,
            });
        }
        t.last_event_ts = t.last_event_ts.max(e.timestamp);
    }
    // Events can be trimmed; the state itself is the last word.
    if let Some(s) = settled_state(&m.state)
        && t.last != Some(s)
    {
        t.last = Some(s);
        let at = parse_time(&m.updated_at).unwrap_or(fallback_now);
        out.push(Observation {
            sandbox: t.sandbox.clone(),
            state: s,
            at,
        });
    }
    out
}

pub(super) fn state_time(m: &Machine, state: ObservedState) -> Option<Millis> {
    m.events
        .iter()
        .filter(|e| event_state(&e.status) == Some(state))
        .map(|e| e.timestamp)
        .max()
}

/// Follows the app's machines until the provider is dropped (which aborts this task).
pub(super) async fn follow(inner: Arc<Inner>) {
    loop {
        // Wait for the poll interval, or less when a call has just changed a machine. Waiting
        // first gives the scheduler time to say whether this replica leads.
        let _ = tokio::time::timeout(inner.cfg.poll_interval, inner.nudge.notified()).await;
        // A replica that does not lead leaves the polling (and its share of the app's list
        // rate) to the one that does.
        if !inner.standby.load(std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = inner.refresh().await
        {
            tracing::warn!(error = %e, "fly: following machine states failed; will retry");
        }
    }
}

impl Inner {
    /// Lists the app's machines once, reports what changed on the sink, and answers the Shoal
    /// machines that are not gone with their current state.
    pub(super) async fn refresh(&self) -> Result<Vec<Observation>, ProviderError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let opts = ListOptions {
            include_deleted: true,
            ..Default::default()
        };
        let machines = self
            .call(None, true, || self.client.list(&opts))
            .await
            .map_err(to_provider_error)?;
        let now = now_ms();
        let mut listed = Vec::new();
        let mut report = Vec::new();
        let mut book = self.book();
        let mut seen = HashSet::new();
        for m in &machines {
            let Some(md) = m.metadata() else { continue };
            let Some(sandbox_id) = md.get(TAG_SANDBOX) else {
                continue;
            };
            seen.insert(m.id.clone());
            let sandbox = SandboxRef {
                sandbox_id: sandbox_id.clone(),
                tenant: md.get(TAG_TENANT).cloned().unwrap_or_default(),
                provider_id: m.id.clone(),
            };
            if !book.machines.contains_key(&m.id) {
                if m.state.is_gone() {
                    continue;
                }
                // First sight of a machine made elsewhere (or before a restart): report where it
                // is now, not its history.
                let last_event_ts = m.events.iter().map(|e| e.timestamp).max().unwrap_or(0);
                let current = settled_state(&m.state);
                if let Some(s) = current {
                    let at = state_time(m, s)
                        .or_else(|| parse_time(&m.updated_at))
                        .unwrap_or(now);
                    report.push(Observation {
                        sandbox: sandbox.clone(),
                        state: s,
                        at,
                    });
                }
                book.by_sandbox.insert(sandbox_id.clone(), m.id.clone());
                if !m.region.is_empty() {
                    book.placed.insert(m.id.clone(), m.region.clone());
                }
                book.machines.insert(
                    m.id.clone(),
                    Tracked {
                        sandbox: sandbox.clone(),
                        last: current,
                        last_event_ts,
                        created_here: None,
                    },
                );
            } else if let Some(t) = book.machines.get_mut(&m.id) {
                report.extend(observe(t, m, now));
            }
            let last = book.machines.get(&m.id).and_then(|t| t.last);
            if m.state.is_gone() {
                if last != Some(ObservedState::Gone) {
                    report.push(Observation {
                        sandbox: sandbox.clone(),
                        state: ObservedState::Gone,
                        at: now,
                    });
                }
                book.machines.remove(&m.id);
                book.placed.remove(&m.id);
                if book.by_sandbox.get(sandbox_id) == Some(&m.id) {
                    book.by_sandbox.remove(sandbox_id);
                }
                book.leases.remove(&m.id);
                continue;
            }
            if let Some(state) = listed_state(&m.state, last) {
                let at = state_time(m, state)
                    .or_else(|| parse_time(&m.updated_at))
                    .unwrap_or(now);
                listed.push(Observation { sandbox, state, at });
            }
        }
        // Followed machines missing from the answer are gone, unless just created (Fly's list
        // may not show them yet).
        let missing: Vec<String> = book
            .machines
            .iter()
            .filter(|(id, t)| {
                !seen.contains(*id)
                    && t.created_here
                        .is_none_or(|at| at.elapsed() >= self.cfg.create_grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in missing {
            book.placed.remove(&id);
            if let Some(t) = book.machines.remove(&id) {
                if t.last != Some(ObservedState::Gone) {
                    report.push(Observation {
                        sandbox: t.sandbox.clone(),
                        state: ObservedState::Gone,
                        at: now,
                    });
                }
                if book.by_sandbox.get(&t.sandbox.sandbox_id) == Some(&id) {
                    book.by_sandbox.remove(&t.sandbox.sandbox_id);
                }
                book.leases.remove(&id);
            }
        }
        book.synced = true;
        drop(book);
        for o in report {
            tracing::debug!(sandbox = %o.sandbox.sandbox_id, state = ?o.state, at = o.at, "fly: observed");
            let _ = self.sink.send(o);
        }
        Ok(listed)
    }
}

//! Fly leases: the one a mutation holds, reused while it is good, and kept for a successor
//! leader through the [`LeaseKeeper`] so that after a failover every machine is reachable at
//! once instead of after the predecessor's lease lapses.

use super::*;

impl Inner {
    pub(super) fn keeper(&self) -> Option<Arc<dyn LeaseKeeper>> {
        self.keeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Holds `nonce` as the machine's lease for `lease_ttl` from now, and keeps it for a
    /// successor leader before going on: a leader killed right after taking a lease must not
    /// leave its machine locked for the lease's TTL. The write is one short statement on the
    /// control loop's own pool, once per machine per `lease_ttl`.
    pub(super) async fn hold_lease(&self, id: &str, nonce: &str) {
        let until = Instant::now() + self.cfg.lease_ttl;
        self.book()
            .leases
            .insert(id.to_string(), (nonce.to_string(), until));
        if let Some(keeper) = self.keeper() {
            let expires_at = now_ms().saturating_add(self.cfg.lease_ttl.as_millis() as Millis);
            keeper.keep(id, nonce, expires_at).await;
        }
    }

    /// A lease a predecessor (or an earlier run) kept for the machine, taken into the book.
    pub(super) async fn recall_lease(&self, id: &str) -> Option<String> {
        let (nonce, expires_at) = self.keeper()?.recall(id).await?;
        let left = Duration::from_millis(expires_at.saturating_sub(now_ms()).max(0) as u64);
        self.book()
            .leases
            .insert(id.to_string(), (nonce.clone(), Instant::now() + left));
        Some(nonce)
    }

    /// The lease held on the machine: its nonce, and whether it is still good for a while.
    pub(super) fn held_lease(&self, id: &str) -> Option<(String, bool)> {
        let margin = Duration::from_secs(5).min(self.cfg.lease_ttl / 4);
        let book = self.book();
        book.leases
            .get(id)
            .map(|(n, until)| (n.clone(), *until > Instant::now() + margin))
    }

    /// A lease on the machine: the one held if still good, else that one refreshed (or a new
    /// one, if it lapsed).
    pub(super) async fn lease(&self, id: &str) -> Result<String, fly_machines::Error> {
        let mut held = self.held_lease(id);
        if held.is_none() && self.recall_lease(id).await.is_some() {
            // A predecessor's lease, kept in the store: use it while it is good, refresh it
            // (with its nonce) when it is about to lapse.
            held = self.held_lease(id);
        }
        if let Some((nonce, true)) = &held {
            return Ok(nonce.clone());
        }
        let previous = held.map(|(n, _)| n);
        let req = CreateLeaseRequest {
            description: Some(LEASE_DESCRIPTION.to_string()),
            ttl: Some(self.cfg.lease_ttl.as_secs().max(1)),
        };
        let got = match self
            .call(Some(id), true, || {
                self.client.acquire_lease(id, &req, previous.as_deref())
            })
            .await
        {
            Ok(l) => l,
            Err(e) if e.kind == ErrorKind::Conflict => {
                // Held by another nonce: a predecessor leader's, if it kept it for us.
                let kept = self.keeper();
                let recalled = match kept {
                    Some(k) => k.recall(id).await.map(|(n, _)| n),
                    None => None,
                };
                if let Some(n) = recalled.filter(|n| Some(n) != previous.as_ref())
                    && let Ok(l) = self
                        .call(Some(id), true, || {
                            self.client.acquire_lease(id, &req, Some(n.as_str()))
                        })
                        .await
                {
                    self.hold_lease(id, &l.nonce).await;
                    return Ok(l.nonce);
                }
                // Else ours if an earlier try (or an earlier run of the scheduler) took it.
                let held = self
                    .call(Some(id), true, || self.client.get_lease(id))
                    .await
                    .map_err(|_| e.clone())?;
                // Shoal's own leases: those it takes say so; the one a create takes (with
                // `lease_ttl`) has no description, and in an app of Shoal's machines only Shoal
                // creates.
                let ours = held.description == LEASE_DESCRIPTION || held.description.is_empty();
                if !ours || held.nonce.is_empty() {
                    return Err(e);
                }
                held
            }
            Err(e) => return Err(e),
        };
        self.hold_lease(id, &got.nonce).await;
        Ok(got.nonce)
    }

    /// Runs a mutation under the machine's lease, taking a new lease once if Fly says the one
    /// held is no longer good.
    pub(super) async fn leased<F, Fut>(&self, id: &str, f: F) -> Result<(), fly_machines::Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), fly_machines::Error>>,
    {
        let mut nonce = self.lease(id).await?;
        let mut renewed = false;
        loop {
            match self.call(Some(id), true, || f(nonce.clone())).await {
                Err(e) if e.kind == ErrorKind::Conflict && !renewed => {
                    // Our lease lapsed (or was taken over): refresh or retake it, once.
                    if let Some(l) = self.book().leases.get_mut(id) {
                        l.1 = Instant::now();
                    }
                    nonce = self.lease(id).await?;
                    renewed = true;
                }
                other => return other,
            }
        }
    }
}

//! Leadership among scheduler replicas through a `coordination.k8s.io/v1` Lease.
//!
//! One replica holds the Lease and runs the planner and the fleet; the others serve the API. The
//! holder renews it well within `lease_duration`; a Lease not renewed for that long may be taken
//! over by another replica, which bumps `leaseTransitions`. That count is the fencing token: a
//! deposed leader's token is lower than the new one's, so calls it still makes can be refused.
//!
//! Every write is a merge patch carrying the `resourceVersion` it read as a precondition, so two
//! replicas racing for an expired Lease cannot both win: the API server refuses the second with
//! 409 Conflict. Time is passed in (`now`), never read here.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use shoal_core::Millis;
use std::time::Duration;

/// A Lease operation that failed for a reason other than losing the race.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// A time that does not fit a Lease's timestamp.
    #[error("the time {0} ms is out of range")]
    Time(Millis),
}

/// Holding the Lease: the fencing token and until when the hold is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// `leaseTransitions` when this replica took the Lease; grows with every change of holder.
    pub token: u64,
    /// Our hold lapses at this time (by our clock) unless renewed.
    pub valid_until: Millis,
}

/// One replica's handle on the shared Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    duration: Duration,
}

fn micro(ms: Millis) -> Result<MicroTime, LeaseError> {
    Timestamp::from_millisecond(ms)
        .map(MicroTime)
        .map_err(|_| LeaseError::Time(ms))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// The Lease `name` in `namespace`, contended for as `holder` (this replica's identity,
    /// such as its pod name), held for `duration` after each renewal.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            holder: holder.to_string(),
            duration,
        }
    }

    /// This replica's identity.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn spec(
        &self,
        now: Millis,
        acquired: Option<MicroTime>,
        transitions: i32,
    ) -> Result<LeaseSpec, LeaseError> {
        Ok(LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(match acquired {
                Some(t) => t,
                None => micro(now)?,
            }),
            renew_time: Some(micro(now)?),
            lease_transitions: Some(transitions),
            ..Default::default()
        })
    }

    fn held(&self, now: Millis, transitions: i32) -> Leadership {
        Leadership {
            token: transitions.max(0) as u64,
            valid_until: now + self.duration.as_millis() as Millis,
        }
    }

    /// Writes `spec` onto the Lease as read in `current`, on the condition that it has not changed
    /// since (its `resourceVersion`, when the server gives one).
    async fn write(&self, current: &Lease, spec: serde_json::Value) -> Result<Lease, kube::Error> {
        let mut patch = serde_json::json!({ "spec": spec });
        if let Some(rv) = &current.metadata.resource_version {
            patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    /// Takes the Lease if it is free, expired, or already ours (then it is renewed). `None`: another
    /// replica holds it, or won the race for it just now.
    pub async fn try_acquire(&self, now: Millis) -> Result<Option<Leadership>, LeaseError> {
        let Some(current) = super::get_opt(&self.api, &self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    labels: Some(
                        [(
                            super::objects::LABEL_MANAGED_BY.to_string(),
                            super::objects::MANAGED_BY.to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 1)?),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Some(self.held(now, 1))),
                Err(e) if is_conflict(&e) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.holder;
        let renewed = spec
            .renew_time
            .as_ref()
            .or(spec.acquire_time.as_ref())
            .map_or(0, |t| t.0.as_millisecond());
        let ttl_ms = spec.lease_duration_seconds.unwrap_or(0).max(0) as Millis * 1000;
        let expired = holder.is_empty() || renewed + ttl_ms <= now;
        if !ours && !expired {
            return Ok(None);
        }
        let (acquired, transitions) = if ours {
            (spec.acquire_time.clone(), transitions)
        } else {
            (None, transitions + 1)
        };
        let spec = self.spec(now, acquired, transitions)?;
        match self
            .write(&current, serde_json::to_value(&spec).unwrap_or_default())
            .await
        {
            Ok(_) => Ok(Some(self.held(now, transitions))),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renews a Lease this replica holds; `None` when it no longer does (it must stop acting).
    pub async fn renew(&self, now: Millis) -> Result<Option<Leadership>, LeaseError> {
        match super::get_opt(&self.api, &self.name).await? {
            Some(l)
                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                    == Some(self.holder.as_str()) =>
            {
                self.try_acquire(now).await
            }
            _ => Ok(None),
        }
    }

    /// Gives the Lease up (a clean shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(l) = super::get_opt(&self.api, &self.name).await? else {
            return Ok(());
        };
        let Some(spec) = l.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        let _ = spec;
        let cleared = serde_json::json!({"holderIdentity": "", "leaseDurationSeconds": 1});
        match self.write(&l, cleared).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

//! Pushes into the apalis ingress queue (the `ingress` feature).

use crate::{ClientError, NewJob};

pub use shoal_store::ingress::{DEFAULT_QUEUE, IngressError, IngressJob};

impl From<NewJob> for IngressJob {
    fn from(j: NewJob) -> Self {
        IngressJob {
            tenant: j.tenant,
            kind: j.kind,
            spec: j.spec,
            idempotency_key: j.idempotency_key,
            priority: j.priority,
            max_attempts: j.max_attempts,
            timeout_s: j.timeout_s,
        }
    }
}

/// The ingress queue, for pushing jobs whether or not a scheduler is up: the scheduler admits
/// them when it runs, with the same validation, limits and idempotency as [`Client::enqueue`].
/// A job refused there (bad input, unknown tenant, quota) is recorded as rejected in the queue.
#[derive(Clone)]
pub struct Ingress {
    queue: shoal_store::ingress::IngressQueue,
}

impl Ingress {
    /// The queue at `url` (`redis://…` or `postgres://…`, the scheduler's `--redis-url` or
    /// database), named [`DEFAULT_QUEUE`] unless the scheduler was told otherwise.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_queue(url, DEFAULT_QUEUE).await
    }

    /// The queue named `queue` at `url`.
    pub async fn connect_queue(url: &str, queue: &str) -> Result<Self, ClientError> {
        Ok(Ingress {
            queue: shoal_store::ingress::IngressQueue::connect(url, queue).await?,
        })
    }

    /// Pushes a job; answers it as queued, with the idempotency key it was given if it had none.
    pub async fn push(&self, job: impl Into<IngressJob>) -> Result<IngressJob, ClientError> {
        Ok(self.queue.push(job.into()).await?)
    }
}

//! The platform's Rust client for Shoal: the HTTP API `/v1` (tenants, jobs, usage) through
//! [`Client`], and pushes into the apalis ingress queue through [`Ingress`], which a scheduler
//! drains even when it was down while the job was pushed. [`verify_webhook`] checks the signed
//! webhooks Shoal sends back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_client::ClientError> {
//! use shoal_client::{Client, NewJob};
//! let shoal = Client::new("http://127.0.0.1:8080", "ADMIN_TOKEN")?;
//! shoal.put_tenant("acme", "pro", None).await?;
//! let queued = shoal
//!     .enqueue(&NewJob::agent("acme", ["sh", "-c", "echo hi"]).idempotency_key("build-42"))
//!     .await?;
//! let job = shoal.job(&queued.id).await?;
//! println!("{} is {}", job.id, job.state);
//! # Ok(())
//! # }
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod webhook;
pub use webhook::{VerifyError, WebhookEvent, verify_webhook, verify_webhook_at};

pub use shoal_store::ingress::{DEFAULT_QUEUE, IngressError, IngressJob};

/// What went wrong talking to Shoal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Shoal answered with an error (`{"error": {"code", "message", "field"?}}`).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        /// Seconds to wait, from `Retry-After` (rate limited, quota exceeded).
        retry_after_s: Option<u64>,
    },
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("bad base URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("ingress queue: {0}")]
    Ingress(#[from] IngressError),
}

/// A job to enqueue: the body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewJob {
    pub tenant: String,
    pub kind: String,
    pub spec: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

impl NewJob {
    pub fn new(tenant: impl Into<String>, kind: impl Into<String>, spec: Value) -> Self {
        NewJob {
            tenant: tenant.into(),
            kind: kind.into(),
            spec,
            idempotency_key: None,
            priority: None,
            max_attempts: None,
            timeout_s: None,
        }
    }

    /// An `agent` job running `command` in the tenant's sandbox.
    pub fn agent<S: Into<String>>(
        tenant: impl Into<String>,
        command: impl IntoIterator<Item = S>,
    ) -> Self {
        let command: Vec<String> = command.into_iter().map(Into::into).collect();
        Self::new(tenant, "agent", serde_json::json!({ "command": command }))
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn timeout_s(mut self, s: u64) -> Self {
        self.timeout_s = Some(s);
        self
    }
}

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

/// The answer to an enqueue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Enqueued {
    pub id: String,
    pub state: String,
    /// `false` when the idempotency key had been seen: the first job is answered.
    #[serde(skip)]
    pub created: bool,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    #[serde(default)]
    pub sandbox_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Filters of [`Client::jobs`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Filters of [`Client::usage`]: times in RFC 3339, granularity `hour`, `day` or `month`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
}

/// A client of one Shoal scheduler (or a load balancer in front of its replicas).
#[derive(Clone)]
pub struct Client {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8080`; `token` the admin token or a tenant key.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        let mut base = url::Url::parse(base_url)?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Client {
            base,
            token: token.into(),
            http: reqwest::Client::new(),
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, ClientError> {
        Ok(self.base.join(path)?)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let retry_after_s = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let e = &body["error"];
        Err(ClientError::Api {
            status,
            code: e["code"].as_str().unwrap_or("unknown").to_string(),
            message: e["message"].as_str().unwrap_or_default().to_string(),
            field: e["field"].as_str().map(str::to_string),
            retry_after_s,
        })
    }

    /// Creates or updates a tenant on `plan`, with optional limit overrides; the tenant as Shoal
    /// shows it.
    pub async fn put_tenant(
        &self,
        id: &str,
        plan: &str,
        limits: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut body = serde_json::json!({ "plan": plan });
        if let Some(limits) = limits {
            body["limits"] = limits;
        }
        let url = self.url(&format!("v1/tenants/{}", enc(id)))?;
        Ok(self
            .send(self.http.put(url).json(&body))
            .await?
            .json()
            .await?)
    }

    /// The tenant, its limits and this period's usage.
    pub async fn tenant(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("v1/tenants/{}", enc(id)))?;
        Ok(self.send(self.http.get(url)).await?.json().await?)
    }

    /// Enqueues a job (202); with a known idempotency key, the first job (200, `created: false`).
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, ClientError> {
        let resp = self
            .send(self.http.post(self.url("v1/jobs")?).json(job))
            .await?;
        let created = resp.status() == reqwest::StatusCode::ACCEPTED;
        let mut e: Enqueued = resp.json().await?;
        e.created = created;
        Ok(e)
    }

    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.url(&format!("v1/jobs/{}", enc(id)))?;
        Ok(self.send(self.http.get(url)).await?.json().await?)
    }

    pub async fn jobs(&self, query: &JobQuery) -> Result<JobPage, ClientError> {
        let req = self.http.get(self.url("v1/jobs")?).query(query);
        Ok(self.send(req).await?.json().await?)
    }

    /// Cancels a queued or running job; the job.
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.url(&format!("v1/jobs/{}/cancel", enc(id)))?;
        Ok(self.send(self.http.post(url)).await?.json().await?)
    }

    /// Usage buckets and their total, as JSON.
    pub async fn usage(&self, query: &UsageQuery) -> Result<Value, ClientError> {
        let req = self.http.get(self.url("v1/usage")?).query(query);
        Ok(self.send(req).await?.json().await?)
    }
}

/// A path segment, percent-encoded.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
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

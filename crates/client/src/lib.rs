//! The platform's Rust client for Shoal: the HTTP API `/v1` (tenants, jobs, usage, waiting for a
//! job, its output while it runs) through [`Client`], which needs only reqwest and serde. With the
//! `ingress` feature, also pushes into the apalis ingress queue through `Ingress`, which a
//! scheduler drains even when it was down while the job was pushed (that brings in the store's
//! Redis and Postgres drivers). [`verify_webhook`] checks the signed webhooks Shoal sends back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_client::ClientError> {
//! use shoal_client::{Client, NewJob};
//! let shoal = Client::new("http://127.0.0.1:8080", "ADMIN_TOKEN")?;
//! shoal.put_tenant("acme", "pro", None).await?;
//! let queued = shoal
//!     .enqueue(&NewJob::agent("acme", ["sh", "-c", "echo hi"]).idempotency_key("build-42"))
//!     .await?;
//! // Its output while it runs, line by line, until it ends.
//! let mut log = shoal.follow_logs(&queued.id).await?;
//! while let Some(line) = log.next_line().await? {
//!     print!("{line}");
//! }
//! let job = shoal.wait(&queued.id).await?;
//! println!("{} is {}", job.id, job.state);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};

#[cfg(feature = "ingress")]
mod ingress;
#[cfg(feature = "ingress")]
pub use ingress::{DEFAULT_QUEUE, Ingress, IngressError, IngressJob};

/// The longest wait one request asks the scheduler for (`wait_s`).
pub const MAX_WAIT_S: u64 = 60;

mod webhook;
pub use webhook::{VerifyError, WebhookEvent, verify_webhook, verify_webhook_at};

/// What went wrong talking to Shoal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Shoal answered with an error (`{"error": {"code", "message", "field"?}}`).
    #[error("{status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's machine-readable code (`quota_exceeded`, `not_found`, ...).
        code: String,
        /// What went wrong, for a person.
        message: String,
        /// The request field at fault, for a validation error.
        field: Option<String>,
        /// Seconds to wait, from `Retry-After` (rate limited, quota exceeded).
        retry_after_s: Option<u64>,
    },
    /// The request did not get an answer (connection, TLS, timeout, or a body that did not parse).
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The base URL, or a URL made from it, is not a valid URL.
    #[error("bad base URL: {0}")]
    Url(String),
    /// Pushing into the ingress queue failed.
    #[cfg(feature = "ingress")]
    #[error("ingress queue: {0}")]
    Ingress(#[from] IngressError),
}

/// A job to enqueue: the body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewJob {
    /// The tenant the job runs for.
    pub tenant: String,
    /// The job's kind (`agent`, `semantic_diff`, `flaky_analysis`).
    pub kind: String,
    /// The kind's spec (for `agent`: `{"command": [...]}`).
    pub spec: Value,
    /// A key that makes a repeated enqueue answer the first job instead of adding one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Higher runs first among the tenant's queued jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts before the job is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds one attempt may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

impl NewJob {
    /// A job of `kind` with `spec` for `tenant`, every option left to the scheduler.
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

    /// Sets [`NewJob::idempotency_key`].
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets [`NewJob::priority`].
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets [`NewJob::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Sets [`NewJob::timeout_s`].
    pub fn timeout_s(mut self, s: u64) -> Self {
        self.timeout_s = Some(s);
        self
    }
}

/// The answer to an enqueue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Enqueued {
    /// The job's id.
    pub id: String,
    /// Its state right after the enqueue (`queued`, or later for a repeated key).
    pub state: String,
    /// `false` when the idempotency key had been seen: the first job is answered.
    #[serde(skip)]
    pub created: bool,
}

/// One job's answer in a batch (`POST /v1/jobs/batch`), in the batch's order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BatchEntry {
    /// 202 admitted, 200 its idempotency key was seen (the first job), else the status a single
    /// enqueue would have been refused with.
    pub status: u16,
    /// The job's id (202, 200).
    #[serde(default)]
    pub id: Option<String>,
    /// The job's state (202, 200).
    #[serde(default)]
    pub state: Option<String>,
    /// Why it was refused.
    #[serde(default)]
    pub error: Option<BatchError>,
    /// With 429: seconds before trying again may succeed.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// Why one job of a batch was refused: the API's error answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BatchError {
    /// The error code (`invalid`, `quota_exceeded`, `rate_limited`, ...).
    pub code: String,
    /// What was wrong, for a person.
    pub message: String,
    /// The field at fault, when one is.
    #[serde(default)]
    pub field: Option<String>,
}

/// The most jobs one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The tenant it runs for.
    pub tenant: String,
    /// Its kind.
    pub kind: String,
    /// Its state (`queued`, `running`, `succeeded`, `failed`, `cancelled`, `dead`).
    pub state: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// The sandbox running it, or that ran its last attempt.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// The idempotency key it was enqueued with.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// What it produced, once it succeeded (or failed with a result).
    #[serde(default)]
    pub result: Option<Value>,
    /// Why it failed, once it did.
    #[serde(default)]
    pub error: Option<Value>,
    /// When it was enqueued (RFC 3339).
    pub created_at: String,
    /// When its last attempt started (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
}

impl Job {
    /// Whether the job has ended: `succeeded`, `failed`, `cancelled` or `dead`.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "cancelled" | "dead"
        )
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobPage {
    /// The jobs of this page.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Filters of [`Client::jobs`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobQuery {
    /// Only this tenant's jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only jobs in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The most jobs on one page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Where to go on from: a previous page's `next_cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Filters of [`Client::usage`]: times in RFC 3339, granularity `hour`, `day` or `month`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageQuery {
    /// Only this tenant's usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The report's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The report's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The width of each bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
}

/// A client of one Shoal scheduler (or a load balancer in front of its replicas).
#[derive(Clone)]
pub struct Client {
    base: reqwest::Url,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8080`; `token` the admin token or a tenant key.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        let mut base =
            reqwest::Url::parse(base_url).map_err(|e| ClientError::Url(e.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::Url(format!(
                "`{base_url}` cannot be a base URL"
            )));
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Client {
            base,
            token: token.into(),
            http: reqwest::Client::new(),
        })
    }

    /// The URL of `v1/...` with each of `segments` appended as one percent-encoded path segment.
    fn url(&self, path: &str, segments: &[&str]) -> Result<reqwest::Url, ClientError> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))?;
        if !segments.is_empty() {
            url.path_segments_mut()
                .map_err(|_| ClientError::Url("not a base URL".into()))?
                .pop_if_empty()
                .extend(segments);
        }
        Ok(url)
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
        let url = self.url("v1/tenants/", &[id])?;
        Ok(self
            .send(self.http.put(url).json(&body))
            .await?
            .json()
            .await?)
    }

    /// The tenant, its limits and this period's usage.
    pub async fn tenant(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url("v1/tenants/", &[id])?;
        Ok(self.send(self.http.get(url)).await?.json().await?)
    }

    /// Enqueues up to [`MAX_BATCH`] jobs in one request; one entry per job, in order, each
    /// answered as [`Client::enqueue`] would have been (a refused job does not stop the others).
    pub async fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<BatchEntry>, ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            jobs: Vec<BatchEntry>,
        }
        let body = serde_json::json!({ "jobs": jobs });
        let resp = self
            .send(self.http.post(self.url("v1/jobs/batch", &[])?).json(&body))
            .await?;
        Ok(resp.json::<Answer>().await?.jobs)
    }

    /// Enqueues a job (202); with a known idempotency key, the first job (200, `created: false`).
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, ClientError> {
        let resp = self
            .send(self.http.post(self.url("v1/jobs", &[])?).json(job))
            .await?;
        let created = resp.status() == reqwest::StatusCode::ACCEPTED;
        let mut e: Enqueued = resp.json().await?;
        e.created = created;
        Ok(e)
    }

    /// The job `id` as it is now (`GET /v1/jobs/{id}`).
    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.url("v1/jobs/", &[id])?;
        Ok(self.send(self.http.get(url)).await?.json().await?)
    }

    /// The job once it has ended, or as it is after `wait_s` seconds (at most 60): one request,
    /// answered by the scheduler the moment the job ends.
    pub async fn job_wait(&self, id: &str, wait_s: u64) -> Result<Job, ClientError> {
        let wait_s = wait_s.min(MAX_WAIT_S);
        let req = self
            .http
            .get(self.url("v1/jobs/", &[id])?)
            .query(&[("wait_s", wait_s)])
            .timeout(Duration::from_secs(wait_s + 30));
        Ok(self.send(req).await?.json().await?)
    }

    /// Waits until the job has ended, however long that takes, a minute-long request at a time.
    pub async fn wait(&self, id: &str) -> Result<Job, ClientError> {
        loop {
            let job = self.job_wait(id, MAX_WAIT_S).await?;
            if job.is_finished() {
                return Ok(job);
            }
        }
    }

    /// Waits until the job has ended or `limit` has passed; the job as it is then.
    pub async fn wait_for(&self, id: &str, limit: Duration) -> Result<Job, ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let job = self.job_wait(id, left.as_secs().min(MAX_WAIT_S)).await?;
            if job.is_finished() || left < Duration::from_secs(1) {
                return Ok(job);
            }
        }
    }

    /// Enqueues a job and waits until it has ended (or, with an idempotency key seen before,
    /// until the first job with that key has).
    pub async fn submit_and_wait(&self, job: &NewJob) -> Result<Job, ClientError> {
        let queued = self.enqueue(job).await?;
        self.wait(&queued.id).await
    }

    /// The job's output so far: stdout and stderr as written, the newest part the scheduler keeps
    /// (`max_log_bytes`, 1 MiB unless configured).
    pub async fn logs(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url("v1/jobs/", &[id, "logs"])?;
        Ok(self.send(self.http.get(url)).await?.bytes().await?.to_vec())
    }

    /// The job's output so far and then as it is written, until the job ends.
    pub async fn follow_logs(&self, id: &str) -> Result<LogStream, ClientError> {
        let url = self.url("v1/jobs/", &[id, "logs"])?;
        let resp = self
            .send(self.http.get(url).query(&[("follow", "true")]))
            .await?;
        Ok(LogStream {
            resp,
            line: Vec::new(),
            ended: false,
        })
    }

    /// A page of jobs matching `query` (`GET /v1/jobs`).
    pub async fn jobs(&self, query: &JobQuery) -> Result<JobPage, ClientError> {
        let req = self.http.get(self.url("v1/jobs", &[])?).query(query);
        Ok(self.send(req).await?.json().await?)
    }

    /// Cancels a queued or running job; the job.
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        let url = self.url("v1/jobs/", &[id, "cancel"])?;
        Ok(self.send(self.http.post(url)).await?.json().await?)
    }

    /// Usage buckets and their total, as JSON.
    pub async fn usage(&self, query: &UsageQuery) -> Result<Value, ClientError> {
        let req = self.http.get(self.url("v1/usage", &[])?).query(query);
        Ok(self.send(req).await?.json().await?)
    }
}

/// A job's output as it arrives (see [`Client::follow_logs`]): in chunks as the scheduler sends
/// them, or in lines. Ends when the job has ended and all of its output was read.
pub struct LogStream {
    resp: reqwest::Response,
    /// The start of a line not yet ended.
    line: Vec<u8>,
    ended: bool,
}

/// The longest line [`LogStream::next_line`] gathers; a longer one comes in pieces this long.
pub const MAX_LINE: usize = 1024 * 1024;

impl LogStream {
    /// The next bytes of output; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if !self.line.is_empty() {
            return Ok(Some(std::mem::take(&mut self.line)));
        }
        if self.ended {
            return Ok(None);
        }
        match self.resp.chunk().await? {
            Some(c) => Ok(Some(c.to_vec())),
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }

    /// The next line of output with its `\n` (the last one may have none), bytes that are not
    /// UTF-8 replaced; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(i) = self.line.iter().position(|b| *b == b'\n') {
                let rest = self.line.split_off(i + 1);
                let line = std::mem::replace(&mut self.line, rest);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.line.len() >= MAX_LINE {
                let rest = self.line.split_off(MAX_LINE);
                let piece = std::mem::replace(&mut self.line, rest);
                return Ok(Some(String::from_utf8_lossy(&piece).into_owned()));
            }
            if self.ended {
                if self.line.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.line);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.resp.chunk().await? {
                Some(c) => self.line.extend_from_slice(&c),
                None => self.ended = true,
            }
        }
    }
}

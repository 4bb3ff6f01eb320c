//! The agent's HTTP client for `/v1/agent/*`, authenticated with the sandbox token.

use anyhow::{Context, Result, bail};
use shoal_protocol::{
    Completion, Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, LogChunk,
};
use std::time::Duration;

/// The scheduler's answer to a completion it read.
#[derive(Debug)]
pub enum CompleteAnswer {
    /// Recorded; with the next job's lease answer when the completion asked for it and the
    /// scheduler knows how to answer so.
    Recorded(Option<LeaseResponse>),
    /// Refused because the lease is no longer the job's.
    Stale,
    /// Refused as it is (too large, malformed): sending it again would get the same answer.
    Refused { status: u16, message: String },
}

/// A call under a lease (a log chunk) the scheduler refused because the lease is no longer the
/// job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleLease;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Asks for a job, waiting up to `wait` on the scheduler's side.
    pub async fn lease(&self, wait: Duration) -> Result<LeaseResponse> {
        let resp = self
            .post("/v1/agent/lease")
            .timeout(wait + Duration::from_secs(15))
            .json(&LeaseRequest {
                wait_ms: Some(wait.as_millis() as u64),
            })
            .send()
            .await
            .context("lease request")?;
        match resp.status().as_u16() {
            200 => Ok(resp.json().await.context("lease answer")?),
            // The scheduler no longer knows this sandbox (or its token): nothing to do here.
            401 | 403 | 404 => Ok(LeaseResponse::Stop),
            s => bail!(
                "lease answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse> {
        let resp = self
            .post("/v1/agent/heartbeat")
            .timeout(Duration::from_secs(10))
            .json(hb)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => Ok(resp.json().await?),
            s => bail!("heartbeat answered {s}"),
        }
    }

    /// Ships a chunk of the job's output: `Ok(Ok(()))` stored, `Ok(Err(StaleLease))` refused.
    pub async fn log(
        &self,
        job_id: &str,
        lease_id: &str,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<Result<(), StaleLease>> {
        let resp = self
            .post("/v1/agent/log")
            .timeout(Duration::from_secs(10))
            .query(&LogChunk {
                job_id: job_id.to_string(),
                lease_id: lease_id.to_string(),
                offset,
            })
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => Ok(Ok(())),
            409 => Ok(Err(StaleLease)),
            s => bail!(
                "log answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    /// Reports an outcome; `Err` when the scheduler could not be reached or could not answer now
    /// (worth retrying).
    pub async fn complete(&self, c: &Completion) -> Result<CompleteAnswer> {
        let resp = self
            .post("/v1/agent/complete")
            .timeout(Duration::from_secs(30))
            .json(c)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => {
                // An answer that cannot be read is still a recorded completion; the next job
                // is then asked for by a lease.
                let answer: Option<shoal_protocol::CompleteResponse> = resp.json().await.ok();
                Ok(CompleteAnswer::Recorded(answer.and_then(|a| a.next)))
            }
            409 => Ok(CompleteAnswer::Stale),
            status @ (400 | 413 | 415 | 422) => Ok(CompleteAnswer::Refused {
                status,
                message: resp.text().await.unwrap_or_default(),
            }),
            s => bail!(
                "complete answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
}

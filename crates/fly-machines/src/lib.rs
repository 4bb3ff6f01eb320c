//! A typed client for the Fly Machines API (`https://api.machines.dev/v1`), covering what Shoal's
//! pools need: create, get, list (machines come with their metadata), start, stop, suspend, wait,
//! destroy, leases and events.
//!
//! Every request waits for its turn under Fly's published rate limits ([`pace`]), so the client
//! does not learn them from 429s. Errors are typed from the status and Fly's error body
//! ([`Error`], with `insufficient_capacity` apart) and keep the `fly-request-id`. The client does
//! not retry on its own: callers decide what is safe to repeat (see [`Error::is_retryable`] and
//! [`Error::surely_not_applied`]), except for [`Client::wait`], which loops over Fly's 60-second
//! cap on one wait.

#![warn(missing_docs)]

pub mod error;
pub mod pace;
pub mod types;

pub use error::{Error, ErrorKind};
pub use pace::{Action, Limits, Pacer, Rate};
pub use types::*;

use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The header that carries a lease's nonce on calls made under that lease.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// The header Fly answers with to name the request on its side.
pub const REQUEST_ID_HEADER: &str = "fly-request-id";
/// The longest one `wait` may block, per the spec.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Without `/v1`, e.g. `https://api.machines.dev`.
    pub api_url: String,
    /// The Fly app whose machines the client manages.
    pub app: String,
    /// The API token, sent as a bearer token.
    pub token: String,
    /// The rate limits the client paces its requests by.
    pub limits: Limits,
    /// The timeout of one request (a `wait` gets its own wait time on top).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A config for `app` at `api_url` with Fly's published limits and the default request timeout.
    pub fn new(
        api_url: impl Into<String>,
        app: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        ClientConfig {
            api_url: api_url.into(),
            app: app.into(),
            token: token.into(),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A paced client for one Fly app. Cheap to clone; clones share their pacing.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    app: String,
    token: String,
    timeout: Duration,
    pacer: Arc<Pacer>,
    sent: Arc<AtomicU64>,
}

/// The chunks a wait of `total` is split into, each within Fly's 1 to 60 seconds.
pub fn wait_chunks(total: Duration) -> Vec<Duration> {
    let mut left = total.max(Duration::from_secs(1));
    let mut out = Vec::new();
    while !left.is_zero() {
        let chunk = left.min(MAX_WAIT);
        let chunk = Duration::from_secs(chunk.as_secs_f64().ceil().max(1.0) as u64);
        out.push(chunk);
        left = left.saturating_sub(chunk);
    }
    out
}

fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

impl Client {
    /// A client for the config's app; fails when the API URL does not parse.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        let base = Url::parse(cfg.api_url.trim_end_matches('/')).map_err(|e| {
            Error::local(
                ErrorKind::BadRequest,
                format!("bad api_url {}: {e}", cfg.api_url),
            )
        })?;
        if base.cannot_be_a_base() {
            return Err(Error::local(
                ErrorKind::BadRequest,
                format!("bad api_url {}", cfg.api_url),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("shoal-fly-machines/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::local(ErrorKind::Transport, e.to_string()))?;
        Ok(Client {
            http,
            base,
            app: cfg.app,
            token: cfg.token,
            timeout: cfg.request_timeout,
            pacer: Arc::new(Pacer::new(cfg.limits)),
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The app the client manages.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The pacing shared by this client and its clones.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// Requests sent so far (every try counts).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("base checked at construction");
            path.pop_if_empty();
            path.push("v1")
                .push("apps")
                .push(&self.app)
                .push("machines");
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Sends one paced request and returns the body of a 2xx answer.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        scope: &str,
        action: Action,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        lease: Option<&str>,
        extra_timeout: Duration,
    ) -> Result<bytes_body::Body, Error> {
        self.pacer.pace(scope, action).await;
        self.send_paced(method, url, body, lease, extra_timeout)
            .await
    }

    /// Sends one request whose pacing token is already taken.
    async fn send_paced(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        lease: Option<&str>,
        extra_timeout: Duration,
    ) -> Result<bytes_body::Body, Error> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token)
            .timeout(self.timeout + extra_timeout);
        if let Some(nonce) = lease {
            req = req.header(LEASE_NONCE_HEADER, nonce);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Transport
            };
            Error::local(kind, format!("{method} {}: {e}", url.path()))
        })?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Transport
            };
            Error {
                kind,
                status: Some(status),
                message: e.to_string(),
                request_id: request_id.clone(),
                retry_after: None,
            }
        })?;
        if (200..300).contains(&status) {
            tracing::trace!(%method, path = url.path(), status, "fly call");
            Ok(bytes_body::Body { text, request_id })
        } else {
            let err = Error::from_answer(status, request_id, retry_after, &text);
            tracing::debug!(%method, path = url.path(), error = %err, "fly call failed");
            Err(err)
        }
    }

    fn decode<T: DeserializeOwned>(body: bytes_body::Body) -> Result<T, Error> {
        serde_json::from_str(&body.text).map_err(|e| Error {
            kind: ErrorKind::Decode,
            status: None,
            message: format!("{e}: {}", body.text.chars().take(200).collect::<String>()),
            request_id: body.request_id,
            retry_after: None,
        })
    }

    fn json<T: Serialize>(v: &T) -> Result<serde_json::Value, Error> {
        serde_json::to_value(v).map_err(|e| Error::local(ErrorKind::BadRequest, e.to_string()))
    }

    /// `POST /apps/{app}/machines`: creates (and, unless `skip_launch`, starts) a machine.
    /// Not idempotent: repeat it only after [`Error::surely_not_applied`].
    pub async fn create(&self, req: &CreateMachineRequest) -> Result<Machine, Error> {
        let req = req.clone();
        self.create_with(move || req).await
    }

    /// Like [`Client::create`], but the request is built by `make` once the create's turn has
    /// come under the pacing, so that it can use what earlier calls learnt meanwhile (such as
    /// which regions are out of capacity).
    pub async fn create_with(
        &self,
        make: impl FnOnce() -> CreateMachineRequest,
    ) -> Result<Machine, Error> {
        let app = self.app.clone();
        self.pacer.pace(&app, Action::Create).await;
        let req = make();
        let url = self.url(&[], &[]);
        let body = self
            .send_paced(
                Method::POST,
                url,
                Some(Self::json(&req)?),
                None,
                Duration::ZERO,
            )
            .await?;
        Self::decode(body)
    }

    /// `GET /apps/{app}/machines/{id}`.
    pub async fn get(&self, id: &str) -> Result<Machine, Error> {
        let url = self.url(&[id], &[]);
        Self::decode(
            self.send(
                id,
                Action::Get,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?,
        )
    }

    /// `GET /apps/{app}/machines`, with the machines' config (metadata included) and recent events.
    pub async fn list(&self, opts: &ListOptions) -> Result<Vec<Machine>, Error> {
        let mut query = Vec::new();
        if opts.include_deleted {
            query.push(("include_deleted", "true".to_string()));
        }
        if let Some(r) = &opts.region {
            query.push(("region", r.clone()));
        }
        if !opts.states.is_empty() {
            query.push(("state", opts.states.join(",")));
        }
        let url = self.url(&[], &query);
        let app = self.app.clone();
        let all: Vec<Machine> = Self::decode(
            self.send(
                &app,
                Action::List,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?,
        )?;
        Ok(all
            .into_iter()
            .filter(|m| m.has_metadata(&opts.metadata))
            .collect())
    }

    /// `POST .../{id}/start`: starts a stopped machine or resumes a suspended one.
    pub async fn start(&self, id: &str, lease: Option<&str>) -> Result<(), Error> {
        let url = self.url(&[id, "start"], &[]);
        self.send(
            id,
            Action::Start,
            Method::POST,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// `POST .../{id}/stop`.
    pub async fn stop(
        &self,
        id: &str,
        req: &StopRequest,
        lease: Option<&str>,
    ) -> Result<(), Error> {
        let url = self.url(&[id, "stop"], &[]);
        let body = if req == &StopRequest::default() {
            None
        } else {
            Some(Self::json(req)?)
        };
        self.send(
            id,
            Action::Stop,
            Method::POST,
            url,
            body,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// `POST .../{id}/suspend`.
    pub async fn suspend(&self, id: &str, lease: Option<&str>) -> Result<(), Error> {
        let url = self.url(&[id, "suspend"], &[]);
        self.send(
            id,
            Action::Suspend,
            Method::POST,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// `DELETE .../{id}`; `force` kills a running machine.
    pub async fn destroy(&self, id: &str, force: bool, lease: Option<&str>) -> Result<(), Error> {
        let query = if force {
            vec![("force", "true".to_string())]
        } else {
            vec![]
        };
        let url = self.url(&[id], &query);
        self.send(
            id,
            Action::Destroy,
            Method::DELETE,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// `GET .../{id}/wait` once, blocking up to `timeout` (1 to 60 s).
    pub async fn wait_once(
        &self,
        id: &str,
        state: WaitState,
        timeout: Duration,
    ) -> Result<WaitResponse, Error> {
        let secs = timeout.as_secs().clamp(1, MAX_WAIT.as_secs());
        let url = self.url(
            &[id, "wait"],
            &[
                ("state", state.as_str().to_string()),
                ("timeout", secs.to_string()),
            ],
        );
        let body = self
            .send(
                id,
                Action::Wait,
                Method::GET,
                url,
                None,
                None,
                Duration::from_secs(secs),
            )
            .await?;
        Self::decode(body)
    }

    /// Waits up to `total` for the machine to reach `state`, looping over Fly's 60-second cap.
    /// A wait that times out answers [`ErrorKind::Timeout`]; other errors end the wait at once.
    pub async fn wait(
        &self,
        id: &str,
        state: WaitState,
        total: Duration,
    ) -> Result<WaitResponse, Error> {
        let mut last = Error::local(
            ErrorKind::Timeout,
            format!("machine {id} did not reach {} in {total:?}", state.as_str()),
        );
        for chunk in wait_chunks(total) {
            match self.wait_once(id, state, chunk).await {
                Ok(r) => return Ok(r),
                Err(e) if e.kind == ErrorKind::Timeout => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// `POST .../{id}/lease`: takes a lease (or, with `existing`, refreshes that one).
    pub async fn acquire_lease(
        &self,
        id: &str,
        req: &CreateLeaseRequest,
        existing: Option<&str>,
    ) -> Result<Lease, Error> {
        let url = self.url(&[id, "lease"], &[]);
        let body = self
            .send(
                id,
                Action::LeaseAcquire,
                Method::POST,
                url,
                Some(Self::json(req)?),
                existing,
                Duration::ZERO,
            )
            .await?;
        Self::decode(body)
    }

    /// `GET .../{id}/lease`.
    pub async fn get_lease(&self, id: &str) -> Result<Lease, Error> {
        let url = self.url(&[id, "lease"], &[]);
        Self::decode(
            self.send(
                id,
                Action::LeaseGet,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?,
        )
    }

    /// `DELETE .../{id}/lease`.
    pub async fn release_lease(&self, id: &str, nonce: &str) -> Result<(), Error> {
        let url = self.url(&[id, "lease"], &[]);
        self.send(
            id,
            Action::LeaseRelease,
            Method::DELETE,
            url,
            None,
            Some(nonce),
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// `GET .../{id}/events`: the machine's events, newest first (`limit` at most 50).
    pub async fn events(&self, id: &str, limit: Option<u32>) -> Result<Vec<MachineEvent>, Error> {
        let query = limit
            .map(|l| vec![("limit", l.min(50).to_string())])
            .unwrap_or_default();
        let url = self.url(&[id, "events"], &query);
        Self::decode(
            self.send(
                id,
                Action::Events,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?,
        )
    }
}

mod bytes_body {
    /// A 2xx answer's body and request id.
    pub struct Body {
        pub text: String,
        pub request_id: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_cut_into_chunks_fly_accepts() {
        assert_eq!(
            wait_chunks(Duration::from_millis(300)),
            vec![Duration::from_secs(1)]
        );
        assert_eq!(
            wait_chunks(Duration::from_secs(150)),
            vec![MAX_WAIT, MAX_WAIT, Duration::from_secs(30)]
        );
        assert!(
            wait_chunks(Duration::from_secs(3600))
                .iter()
                .all(|c| *c >= Duration::from_secs(1) && *c <= MAX_WAIT)
        );
    }

    #[test]
    fn urls_follow_the_spec_and_escape_ids() {
        let c = Client::new(ClientConfig::new("http://127.0.0.1:1/", "my-app", "t")).unwrap();
        assert_eq!(
            c.url(&["m1", "start"], &[]).as_str(),
            "http://127.0.0.1:1/v1/apps/my-app/machines/m1/start"
        );
        assert_eq!(
            c.url(&["a/b"], &[]).path(),
            "/v1/apps/my-app/machines/a%2Fb"
        );
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}

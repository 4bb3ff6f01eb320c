//! Following one job while it runs: `GET /v1/jobs/{id}?wait_s=N` (answer once the job has ended,
//! or after N seconds), `GET /v1/jobs/{id}/logs[?follow=true]` (its output so far, or streamed
//! until it ends), and the agents' `POST /v1/agent/log`, by which a running job's output arrives.
//!
//! Waiters do not poll: they sleep on the job's wake-up (`crate::jobwatch`), pulsed wherever the
//! job changes, and re-read the job only when woken, with a slow re-read (`job_recheck`, 5 s) as a
//! safety net for a wake-up lost between replicas. Output is never held in memory beyond one page per reader: it
//! is stored as it arrives (at most `max_log_bytes` per job) and each reader reads its next page
//! from the store when woken, so a job printing hundreds of megabytes to many followers costs the
//! scheduler a page per follower.

use crate::api::visible_job;
use crate::auth::{Agent, Caller};
use crate::error::ApiError;
use crate::jobwatch::{Pulse, Watcher};
use crate::openapi::ErrorBody;
use crate::state::App;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_protocol::{LOG_BODY_LIMIT, LOG_MAX_OFFSET, LogChunk, LogStored};
use shoal_store::{JobRecord, LogAppend, StoreError};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

/// The most bytes of output read from the store and sent at a time.
const PAGE: usize = 64 * 1024;
/// The longest `wait_s`.
pub const MAX_WAIT_S: u64 = 60;

/// `wait_s` as a duration: absent is no wait; anything but a whole number from 0 to 60 is refused.
pub fn parse_wait_s(raw: Option<&str>) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    match raw.trim().parse::<u64>() {
        Ok(s) if s <= MAX_WAIT_S => Ok(Duration::from_secs(s)),
        _ => Err(ApiError::invalid(
            "wait_s",
            format!("`{raw}` is not a whole number of seconds from 0 to {MAX_WAIT_S}"),
        )),
    }
}

/// Resolves when the scheduler starts shutting down.
/// The job once it has ended, or as it is when `wait` has passed (or the scheduler is stopping).
pub async fn wait_for_end(
    app: &App,
    job: JobRecord,
    wait: Duration,
) -> Result<JobRecord, ApiError> {
    if job.state.is_terminal() || wait.is_zero() {
        return Ok(job);
    }
    let deadline = tokio::time::Instant::now() + wait;
    // Watching first, then reading, so that an end between the two still wakes the wait.
    let mut watcher = app.jobs.watch(&job.id);
    let id = job.id;
    loop {
        let job = app
            .store
            .job(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("job", &id))?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        tokio::select! {
            _ = watcher.state_changed() => {}
            _ = tokio::time::sleep(app.cfg.job_recheck) => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = app.shutdown.cancelled() => break,
        }
    }
    app.store
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))
}

/// The query of `GET /v1/jobs/{id}/logs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the answer open and send new output as it arrives, until the job ends.
    follow: Option<bool>,
}

/// The job's output so far: stdout and stderr interleaved as written, the newest
/// `max_log_bytes` of it; with `follow=true` the answer stays open and streams new output until
/// the job ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path), LogsQuery),
    responses(
        (status = 200, description = "the output, as bytes the job wrote", body = String, content_type = "text/plain"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn logs(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    let follow = q.follow.unwrap_or(false);
    // Watching before the first read, so that nothing stored after it goes unnoticed.
    let watcher = follow.then(|| app.jobs.watch(&id));
    let job = visible_job(&app, &caller, &id).await?;
    if follow && app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let reader = LogReader {
        shutdown: app.shutdown.clone(),
        app,
        id: job.id,
        at: 0,
        watcher,
        done: false,
    };
    let body = axum::body::Body::from_stream(futures::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|b| (Ok::<_, Infallible>(b), r))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Proxies that buffer answers would hold a followed log back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Reads a job's output a page at a time; while following, sleeps on the job's wake-up between
/// pages until the job has ended and everything before its end is sent.
struct LogReader {
    app: Arc<App>,
    id: String,
    /// The offset of the next byte to send.
    at: u64,
    /// Set when following.
    watcher: Option<Watcher>,
    shutdown: CancellationToken,
    done: bool,
}

impl LogReader {
    async fn page(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let s = self.app.store.job_log(&self.id, self.at, PAGE).await?;
        if s.data.is_empty() {
            self.at = self.at.max(s.at);
            return Ok(None);
        }
        self.at = s.at + s.data.len() as u64;
        Ok(Some(s.data))
    }

    async fn step(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        loop {
            if let Some(bytes) = self.page().await? {
                return Ok(Some(bytes));
            }
            if self.watcher.is_none() {
                return Ok(None);
            }
            // Caught up. An agent ships all of a job's output before it reports the end, and
            // nothing is stored once a job has ended: past the end, one more read gets the rest.
            let ended = self
                .app
                .store
                .job(&self.id)
                .await?
                .is_none_or(|j| j.state.is_terminal());
            if ended {
                return self.page().await;
            }
            let Some(watcher) = self.watcher.as_mut() else {
                return Ok(None);
            };
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tokio::time::sleep(self.app.cfg.job_recheck) => {}
                _ = self.shutdown.cancelled() => return Ok(None),
            }
        }
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        match self.step().await {
            Ok(Some(bytes)) => Some(bytes),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                tracing::warn!(job = %self.id, error = %e, "reading a job's output failed");
                self.done = true;
                None
            }
        }
    }
}

/// An agent ships a chunk of its running job's output: the body is the bytes (at most 1 MiB),
/// the query names the job, the lease and the chunk's offset in the attempt's output.
#[utoipa::path(post, path = "/v1/agent/log", tag = "agent", security(("bearer" = [])),
    params(
        ("job_id" = String, Query),
        ("lease_id" = String, Query),
        ("offset" = u64, Query, description = "where the chunk starts in this attempt's output"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "`{\"start\", \"end\"}`: what the job's log holds now", body = Object),
        (status = 409, description = "the lease is not the job's current one", body = ErrorBody),
        (status = 413, description = "the chunk is over 1 MiB", body = ErrorBody),
    ))]
pub async fn agent_log(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    q: Result<Query<LogChunk>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<Json<LogStored>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    let bytes = axum::body::to_bytes(body, LOG_BODY_LIMIT)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a chunk of output is at most {LOG_BODY_LIMIT} bytes"),
            )
        })?;
    if q.offset > LOG_MAX_OFFSET - bytes.len() as u64 {
        return Err(ApiError::invalid(
            "offset",
            format!("must be at most {LOG_MAX_OFFSET} with the chunk"),
        ));
    }
    match app
        .store
        .append_log(
            &sandbox.id,
            &q.job_id,
            &q.lease_id,
            q.offset,
            &bytes,
            app.cfg.max_log_bytes,
        )
        .await?
    {
        LogAppend::Stored { start, end } => {
            app.metrics
                .log_bytes
                .with_label_values(&[app.metrics.tenant(&sandbox.tenant)])
                .inc_by(bytes.len() as u64);
            app.job_changed(&q.job_id, Pulse::Log);
            Ok(Json(LogStored { start, end }))
        }
        LogAppend::Stale => Err(ApiError::conflict(format!(
            "lease `{}` is not the current lease of job `{}` on this sandbox",
            q.lease_id, q.job_id
        ))
        .field("lease_id")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_s_is_a_whole_number_of_seconds_up_to_a_minute() {
        assert_eq!(parse_wait_s(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait_s(Some("0")).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait_s(Some("60")).unwrap(), Duration::from_secs(60));
        for bad in ["61", "-1", "1.5", "", "soon", "99999999999999999999999"] {
            let e = parse_wait_s(Some(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code, e.field.as_deref()),
                (StatusCode::BAD_REQUEST, "invalid", Some("wait_s")),
                "{bad}"
            );
        }
    }
}

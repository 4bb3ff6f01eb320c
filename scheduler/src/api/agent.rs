//! The agents' protocol: lease (a long poll), heartbeat, complete. A sandbox token reaches its
//! own sandbox's jobs only.

use crate::auth::{Agent, AgentOrBlank};
use crate::control::health::MAX_LEASE_WAIT;
use crate::error::{ApiError, Body, RawBody};
use crate::jobwatch::Pulse;
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::CompletedView;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_core::SandboxState;
use shoal_protocol::{
    Assignment, Completion, Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, Outcome,
};
use shoal_store::{Completed, Finish, Lease, LeasePolicy};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// An agent asks for its sandbox's next job (long poll, at most [`MAX_LEASE_WAIT`]).
#[utoipa::path(post, path = "/v1/agent/lease", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"wait_ms\"?}`"),
    responses(
        (status = 200, description = "`run` with an assignment, `idle` or `stop`", body = Object),
        (status = 401, body = ErrorBody),
    ))]
pub(crate) async fn agent_lease(
    State(app): State<Arc<App>>,
    who: AgentOrBlank,
    Body(req): Body<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(20_000)).min(MAX_LEASE_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let sandbox = match who {
        AgentOrBlank::Sandbox(s) => s,
        AgentOrBlank::Blank(hash) => match wait_for_claim(&app, &hash, deadline).await? {
            Some(s) => s,
            None if app.is_shutting_down() => return Ok(Json(LeaseResponse::Stop)),
            None => return Ok(Json(LeaseResponse::Idle)),
        },
    };
    let signal = app.tenant_signal(&sandbox.tenant);
    let mut was_booting = sandbox.state == SandboxState::Booting;
    loop {
        if app.is_shutting_down() {
            return Ok(Json(LeaseResponse::Stop));
        }
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_ms();
        let answer = lease_now(&app, &sandbox, was_booting, now).await?;
        was_booting = false;
        match answer {
            LeaseResponse::Idle => {
                // A job that falls due before the deadline (delayed, scheduled or backing off)
                // is asked for again the moment it does.
                let due = app.store.next_due(&sandbox.tenant, now).await?;
                let wake = due.map_or(deadline, |at| {
                    let ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                    deadline.min(tokio::time::Instant::now() + Duration::from_millis(ms))
                });
                tokio::select! {
                    _ = &mut notified => continue,
                    _ = tokio::time::sleep_until(wake), if wake < deadline => continue,
                    _ = tokio::time::sleep_until(deadline) => return Ok(Json(LeaseResponse::Idle)),
                    _ = app.shutdown.cancelled() => return Ok(Json(LeaseResponse::Stop)),
                }
            }
            answer => return Ok(Json(answer)),
        }
    }
}

/// A blank sandbox's agent waits (until `deadline`) for its sandbox to be claimed: then its token
/// is the claimed sandbox's, bound to one tenant for good, and it goes on as that sandbox's agent.
/// `None` when the wait ran out. A blank that is no more (destroyed, forgotten) is refused.
async fn wait_for_claim(
    app: &App,
    token_hash: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<shoal_store::SandboxRecord>, ApiError> {
    let signal = app.tenant_signal(shoal_fleet::BLANK_TENANT);
    loop {
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(s) = app.store.sandbox_by_token(token_hash).await? {
            return Ok(Some(s));
        }
        if app.store.blank_by_token(token_hash).await?.is_none() {
            // Claimed between the two reads (the claim moves it in one transaction), or gone.
            return match app.store.sandbox_by_token(token_hash).await? {
                Some(s) => Ok(Some(s)),
                None => Err(ApiError::unauthorized()),
            };
        }
        tokio::select! {
            _ = &mut notified => continue,
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = app.shutdown.cancelled() => return Ok(None),
        }
    }
}

/// One lease for the sandbox, at once: its next due job (`run`), `idle` or `stop`. Shared by the
/// long poll and by a completion that asks for the next job.
async fn lease_now(
    app: &App,
    sandbox: &shoal_store::SandboxRecord,
    was_booting: bool,
    now: shoal_core::Millis,
) -> Result<LeaseResponse, ApiError> {
    if app.is_shutting_down() {
        return Ok(LeaseResponse::Stop);
    }
    let tenant = app.store.tenant(&sandbox.tenant).await?;
    let policy = LeasePolicy {
        max_concurrent_jobs: tenant.as_ref().and_then(|t| t.limits().max_concurrent_jobs),
        draining: tenant.as_ref().is_none_or(|t| t.draining),
        lease_ttl_ms: app.cfg.lease_ttl.as_millis() as i64,
    };
    let lease = app.store.lease(&sandbox.id, policy, now).await?;
    if was_booting {
        // The sandbox came up: the planner's view changed.
        app.metrics
            .boot_latency
            .with_label_values(&[app.provider.name()])
            .observe((now - sandbox.since).max(0) as f64 / 1000.0);
        app.kick.notify_one();
    }
    let job = match lease {
        Lease::Stop => return Ok(LeaseResponse::Stop),
        Lease::Idle => return Ok(LeaseResponse::Idle),
        Lease::Job(job) => job,
    };
    // One short span per job handed out (not per poll: idle polls are not news).
    let lease_span = tracing::info_span!(
        "lease",
        tenant = %job.tenant,
        sandbox = %sandbox.id,
        job = %job.id,
        attempt = job.attempts
    );
    crate::telemetry::join_job_trace(&lease_span, &job.id);
    crate::telemetry::link_sandbox_trace(&lease_span, &sandbox.id);
    let _lease = lease_span.entered();
    let label = app.metrics.tenant(&job.tenant);
    app.metrics.jobs_started.with_label_values(&[label]).inc();
    if job.attempts == 1 {
        app.metrics
            .start_latency
            .with_label_values(&[label])
            .observe((now - job.created_at).max(0) as f64 / 1000.0);
    }
    app.kick.notify_one();
    // The spec as stored, text for text (a `semantic_diff` job's numbers as written).
    let spec = job.spec.into_raw().into();
    Ok(LeaseResponse::Run(Assignment {
        job_id: job.id,
        lease_id: job.lease_id.unwrap_or_default(),
        kind: job.kind,
        spec,
        attempt: job.attempts,
        timeout_s: job.timeout_s,
        heartbeat_ms: app.cfg.heartbeat_interval.as_millis() as u64,
        log_max_bytes: Some(app.cfg.max_log_bytes),
    }))
}

/// An agent extends its job's lease and learns of a cancel.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"job_id\", \"lease_id\"}`"),
    responses((status = 200, description = "`{\"ok\", \"cancel\"}`", body = Object), (status = 401, body = ErrorBody)))]
pub(crate) async fn agent_heartbeat(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let job = app.store.job(&hb.job_id).await?;
    if job.as_ref().and_then(|j| j.sandbox_id.as_deref()) != Some(sandbox.id.as_str()) {
        return Ok(Json(HeartbeatResponse {
            ok: false,
            cancel: false,
        }));
    }
    let a = app
        .store
        .heartbeat(
            &hb.job_id,
            &hb.lease_id,
            app.cfg.lease_ttl.as_millis() as i64,
            now_ms(),
        )
        .await?;
    Ok(Json(HeartbeatResponse {
        ok: a.ok,
        cancel: a.cancel,
    }))
}

/// The ids of a completion, read without the rest of it: serde skips the fields it does not need
/// without recursing, so they are read from a completion of any depth.
#[derive(Deserialize)]
struct CompletionIds {
    job_id: String,
    lease_id: String,
    /// The completion also asks for the next job.
    #[serde(default)]
    next: Option<serde::de::IgnoredAny>,
}

/// Bytes a completion may take beyond its result: the ids, the outcome and an error.
const COMPLETION_OVERHEAD: usize = 64 * 1024;

/// What to record of a completion's body: the outcome, or a failure `result_too_large` when the
/// body is over the result bounds of `shoal_protocol` (a result nests one level inside the body).
fn finish_of(body: &[u8]) -> Result<(Finish, Option<shoal_protocol::JobUsage>), ApiError> {
    let depth = shoal_protocol::json_text_depth(body);
    let too_large = if body.len() > shoal_protocol::MAX_RESULT_BYTES + COMPLETION_OVERHEAD {
        Some(format!(
            "the completion is {} bytes, over the {} bytes a result may take",
            body.len(),
            shoal_protocol::MAX_RESULT_BYTES
        ))
    } else if depth > shoal_protocol::MAX_RESULT_DEPTH + 1 {
        Some(format!(
            "the result nests about {} levels deep, over the {} levels a result may take",
            depth - 1,
            shoal_protocol::MAX_RESULT_DEPTH
        ))
    } else {
        None
    };
    if let Some(message) = too_large {
        return Ok((
            Finish::Failed {
                result: None,
                error: serde_json::json!({"code": shoal_protocol::RESULT_TOO_LARGE, "message": message}),
            },
            None,
        ));
    }
    // Read straight from the text (not through a `Value`), so the result is kept as the text
    // the agent sent: a number no double holds stays as written.
    let c: Completion = from_body(body)?;
    let finish = match c.outcome {
        Outcome::Succeeded { result } => Finish::Succeeded { result },
        Outcome::Failed { result, error } => Finish::Failed {
            result,
            error: serde_json::to_value(error).unwrap_or_default(),
        },
        Outcome::Retry { error } => Finish::Retry {
            error: serde_json::to_value(error).unwrap_or_default(),
        },
    };
    Ok((finish, c.usage))
}

/// An agent reports how its job ended. A completion whose result is over the bounds (10 MiB of
/// JSON, 64 levels deep) is recorded as the job failing with `result_too_large`, at once: the
/// answer is final, so the agent does not retry it until the lease lapses.
#[utoipa::path(post, path = "/v1/agent/complete", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"job_id\", \"lease_id\", \"outcome\", \"next\"?: {}}`; with `next`, the answer carries the sandbox's next lease answer"),
    responses(
        (status = 200, body = CompletedView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "the lease is not the job's current one", body = ErrorBody),
        (status = 413, body = ErrorBody),
    ))]
pub(crate) async fn agent_complete(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body = body.0;
    let ids: CompletionIds = from_body(&body)?;
    // The job is known before the span starts, so the span joins the job's trace.
    let span = tracing::info_span!(
        "completion",
        tenant = %sandbox.tenant,
        sandbox = %sandbox.id,
        job = %ids.job_id,
        state = tracing::field::Empty
    );
    crate::telemetry::join_job_trace(&span, &ids.job_id);
    async move {
        let (finish, usage) = finish_of(&body)?;
        drop(body);
        let done = app
            .store
            .complete(&sandbox.id, &ids.job_id, &ids.lease_id, finish, now_ms())
            .await?;
        app.work_changed(&sandbox.tenant);
        match done {
            Completed::Done(job) => {
                tracing::Span::current().record("state", job.state.as_str());
                // What the attempt used, for right-sizing: a sample lost to a failing write
                // costs a statistic, never the completion.
                if let Some(usage) = usage
                    && let Err(e) =
                        crate::sizing::record(app.store.as_ref(), &sandbox, &job, usage, now_ms())
                            .await
                {
                    tracing::warn!(error = %e, "recording the job's usage failed");
                }
                if job.state.is_terminal() {
                    tracing::info!(state = %job.state, attempts = job.attempts, "job finished");
                } else {
                    tracing::info!(state = %job.state, attempts = job.attempts, "job attempt ended; it goes back to the queue");
                }
                app.job_changed(&job.id, Pulse::State);
                if job.state.is_terminal() {
                    app.metrics
                        .jobs_finished
                        .with_label_values(&[app.metrics.tenant(&job.tenant), job.state.as_str()])
                        .inc();
                }
                // The next job in the same request, leased at once (no waiting: the answer is
                // the completion's). A completion retried after its answer was lost finds its
                // lease gone (409), and the job handed out with that answer is put back when
                // the agent next asks for work (a busy sandbox asking has lost its job).
                let next = match ids.next {
                    Some(_) => Some(lease_now(&app, &sandbox, false, now_ms()).await?),
                    None => None,
                };
                Ok(Json(CompletedView {
                    id: job.id,
                    state: job.state,
                    next,
                })
                .into_response())
            }
            Completed::Stale => Err(ApiError::conflict(format!(
                "lease `{}` is not the current lease of job `{}`",
                ids.lease_id, ids.job_id
            ))
            .field("lease_id")),
        }
    }
    .instrument(span)
    .await
}

/// Reads a request body straight from its bytes: text that is not JSON answers 400
/// `malformed_json`, JSON of the wrong shape the API's usual shape error.
fn from_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {e}"),
            )
        } else {
            crate::error::shape_error(&e.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_deep_or_too_large_completion_fails_its_job() {
        let deep = format!(
            r#"{{"job_id":"j","lease_id":"l","outcome":"succeeded","result":{}1{}}}"#,
            "[".repeat(125),
            "]".repeat(125)
        );
        let (
            Finish::Failed {
                result: None,
                error,
            },
            None,
        ) = finish_of(deep.as_bytes()).unwrap()
        else {
            panic!("a deep result was recorded");
        };
        assert_eq!(error["code"], shoal_protocol::RESULT_TOO_LARGE);
        let ok = br#"{"job_id":"j","lease_id":"l","outcome":"succeeded","result":{"a":[[1]]}}"#;
        assert!(matches!(
            finish_of(ok).unwrap(),
            (Finish::Succeeded { .. }, None)
        ));
    }
}

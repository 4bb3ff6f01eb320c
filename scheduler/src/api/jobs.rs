//! Jobs: enqueue (through [`crate::admission`]), read (optionally waiting for the end), list by
//! pages, cancel.

use super::visible_job;
use crate::admission::{Admission, ENQUEUE_INTEGERS, Enqueue, admit};
use crate::auth::Caller;
use crate::error::{ApiError, RawBody};
use crate::joblive;
use crate::jobwatch::Pulse;
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::{self, Accepted, JobPage, JobView};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use shoal_core::JobState;
use shoal_store::JobFilter;
use std::sync::Arc;
use utoipa::IntoParams;

/// Admits a job for a tenant.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = Enqueue,
    responses(
        (status = 202, description = "admitted", body = Accepted),
        (status = 200, description = "the idempotency key was seen: the first job", body = JobView),
        (status = 400, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
        (status = 429, description = "`rate_limited`, `quota_exceeded` or `budget_exceeded`, with Retry-After", body = ErrorBody),
    ))]
pub(crate) async fn enqueue(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: RawBody,
) -> Result<Response, ApiError> {
    let value: Value = crate::error::parse_object(&body.0)?;
    let mut req: Enqueue = crate::error::parse_object_with(value, ENQUEUE_INTEGERS)?;
    crate::admission::keep_documents_as_written(&mut req, &body.0);
    drop(body);
    caller.check_tenant(&req.tenant)?;
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    match admit(&app, req, &caller.actor()).await? {
        Admission::Existing(job) => Ok((StatusCode::OK, Json(views::job(&job))).into_response()),
        Admission::Created(job) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                id: job.id,
                state: "queued".into(),
            }),
        )
            .into_response()),
    }
}

/// `POST /v1/jobs/batch`: up to [`crate::admission::MAX_BATCH`] jobs, each the body of
/// `POST /v1/jobs`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatch {
    /// The jobs, 0 to 1000, each a JSON object as `POST /v1/jobs` takes it. An object that is
    /// not a valid enqueue body is answered in its own entry (as `POST /v1/jobs` would answer
    /// it); the batch itself stands.
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    pub jobs: Vec<Value>,
}

/// The answer to a batch: one entry per job, in order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    pub jobs: Vec<BatchItem>,
}

/// One job's answer in a batch: what `POST /v1/jobs` would have answered for it alone.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    /// 202 admitted, 200 the idempotency key was seen (the first job's id), else the error's
    /// status (400, 403, 404, 429, ...).
    #[schema(example = 202)]
    pub status: u16,
    /// The job's id (202, 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The job's state (202: `queued`; 200: the first job's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why it was refused, as an error answer's `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::openapi::ErrorDetail>,
    /// With 429: the seconds after which trying again may succeed (a single enqueue's
    /// `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl BatchItem {
    fn of(answer: Result<Admission, ApiError>) -> BatchItem {
        let ok = |status: u16, job: shoal_store::JobRecord| BatchItem {
            status,
            id: Some(job.id),
            state: Some(job.state.as_str().to_string()),
            error: None,
            retry_after_s: None,
        };
        match answer {
            Ok(Admission::Created(job)) => ok(202, job),
            Ok(Admission::Existing(job)) => ok(200, job),
            Err(e) => BatchItem {
                status: e.status.as_u16(),
                id: None,
                state: None,
                error: Some(crate::openapi::ErrorDetail {
                    code: e.code.to_string(),
                    message: e.message,
                    field: e.field,
                }),
                retry_after_s: e.retry_after_s,
            },
        }
    }
}

/// Admits up to 1000 jobs at once, each under the rules of `POST /v1/jobs` (validation, rate,
/// budget, quota, idempotency), in one store transaction; a job refused does not stop the others.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = EnqueueBatch,
    responses(
        (status = 200, description = "one answer per job, in order", body = BatchAnswer),
        (status = 400, description = "not a batch: more than 1000 jobs, or one that is not an object", body = ErrorBody),
        (status = 503, description = "shutting down", body = ErrorBody),
    ))]
pub(crate) async fn enqueue_batch(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: RawBody,
) -> Result<Json<BatchAnswer>, ApiError> {
    let value: Value = crate::error::parse_object(&body.0)?;
    let req: EnqueueBatch = crate::error::parse_object_with(value, &[])?;
    // Each job's own text, for the documents of a `semantic_diff` job (see
    // `keep_documents_as_written`); none when the body cannot be read so (a repeated key).
    #[derive(Deserialize)]
    struct RawJobs<'a> {
        #[serde(borrow)]
        jobs: Vec<&'a serde_json::value::RawValue>,
    }
    let raw = serde_json::from_slice::<RawJobs>(&body.0)
        .ok()
        .filter(|r| r.jobs.len() == req.jobs.len());
    let max = crate::admission::MAX_BATCH;
    if req.jobs.len() > max {
        return Err(ApiError::invalid(
            "jobs",
            format!(
                "a batch holds at most {max} jobs; this one has {}",
                req.jobs.len()
            ),
        ));
    }
    if let Some(i) = req.jobs.iter().position(|j| !j.is_object()) {
        return Err(ApiError::invalid(
            format!("jobs[{i}]"),
            "each job must be a JSON object (the body of `POST /v1/jobs`)",
        ));
    }
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let reqs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            let mut job: Enqueue = crate::error::parse_object_with(job, ENQUEUE_INTEGERS)?;
            caller.check_tenant(&job.tenant)?;
            if let Some(r) = &raw {
                crate::admission::keep_documents_as_written(&mut job, r.jobs[i].get().as_bytes());
            }
            Ok(job)
        })
        .collect();
    drop(raw);
    drop(body);
    let answers = crate::admission::admit_batch(&app, reqs, &caller.actor()).await?;
    Ok(Json(BatchAnswer {
        jobs: answers.into_iter().map(BatchItem::of).collect(),
    }))
}

/// The query of `GET /v1/jobs/{id}`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetJob {
    /// Wait up to this many seconds (a whole number from 0 to 60) for the job to end: the answer
    /// comes as soon as it has ended, else after `wait_s` with the job as it is then.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 60)]
    wait_s: Option<String>,
}

/// A job, with its result once it has one; with `wait_s`, once it has ended (or `wait_s` passed).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path), GetJob),
    responses(
        (status = 200, body = JobView),
        (status = 400, description = "`wait_s` is not 0 to 60", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GetJob>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    let wait = joblive::parse_wait_s(q.wait_s.as_deref())?;
    let job = visible_job(&app, &caller, &id).await?;
    let job = joblive::wait_for_end(&app, job, wait).await?;
    Ok(Json(views::job(&job)))
}

/// Most bytes of results and errors one page of `GET /v1/jobs` carries: 8 MiB. A page stops
/// before the job that would pass it (it always holds one), and `next_cursor` goes on from there.
pub const LIST_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Filters and paging of `GET /v1/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobs {
    tenant: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `dead`.
    state: Option<String>,
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page's `limit` (1 to 1000, 100 when absent) and the `seq` its `cursor` stands for.
pub(crate) fn page(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(u32, Option<i64>), ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let before = cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
    Ok((limit, before))
}

/// A page of jobs, newest first: at most `limit` jobs, and no more than 8 MiB of results (a page
/// stops before the job that would pass that, holding at least one); `next_cursor` continues.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobs),
    responses(
        (status = 200, body = JobPage),
        (status = 400, body = ErrorBody),
        (status = 403, description = "a tenant key asking for another tenant", body = ErrorBody),
    ))]
pub(crate) async fn list_jobs(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<ListJobs>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    if let Some(t) = &q.tenant {
        caller.check_tenant(t)?;
    }
    let tenant = q.tenant.or_else(|| caller.tenant().map(str::to_string));
    let state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::invalid("state", e.to_string()))
        })
        .transpose()?;
    let (limit, before_seq) = page(q.limit, q.cursor.as_deref())?;
    let page = app
        .store
        .job_page(
            &JobFilter {
                tenant,
                state,
                limit,
                before_seq,
            },
            LIST_MAX_BYTES,
        )
        .await?;
    let next = if page.more {
        page.jobs.last().map(|j| j.seq.to_string())
    } else {
        None
    };
    Ok(Json(JobPage {
        jobs: page.jobs.iter().map(views::job).collect(),
        next_cursor: next,
    }))
}

/// Cancels a queued or running job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job already succeeded or failed", body = ErrorBody),
    ))]
pub(crate) async fn cancel_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&app, &caller, &id).await?;
    if job.state.is_terminal() && job.state != JobState::Cancelled {
        return Err(ApiError::conflict(format!(
            "job `{id}` already {}",
            job.state
        )));
    }
    let was = job.state;
    let job = app
        .store
        .cancel(&id, now_ms(), &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    // Counted once: cancelling a cancelled job again changes nothing.
    if was != JobState::Cancelled && job.state == JobState::Cancelled {
        app.metrics
            .jobs_finished
            .with_label_values(&[app.metrics.tenant(&job.tenant), "cancelled"])
            .inc();
    }
    app.work_changed(&job.tenant);
    app.job_changed(&job.id, Pulse::State);
    Ok(Json(views::job(&job)))
}

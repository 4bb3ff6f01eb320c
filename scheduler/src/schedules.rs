//! Cron schedules: the API (`PUT`, `GET`, `DELETE /v1/schedules`), the cron arithmetic (`croner`
//! for the pattern, `chrono-tz` for the time zone) and the firing loop.
//!
//! Firing: the leader sleeps until the earliest next fire time (looking again at least every
//! [`FIRE_EVERY`] for schedules changed elsewhere) and fires each schedule that is due through
//! [`shoal_store::Store::fire_schedule`]: one transaction claims that fire time (the schedule's
//! `next_fire_at` moves on only from the value read) and admits a job with `run_at` = the fire
//! time and the idempotency key `schedule:NAME:FIRE_MS`, so a fire time makes one job whatever
//! replicas race or restart. The admission wakes the tenant's waiting agents at once, and the
//! planner has had a sandbox ready since one boot lead before (the schedule's next fire time is
//! in its snapshot).
//!
//! Catch-up: when fire times were missed (no scheduler ran through them), only the latest of
//! them is run, once, at once; the schedule then continues from the first fire time after now.

use crate::admission::{Enqueue, check};
use crate::auth::Caller;
use crate::control::Control;
use crate::error::{ApiError, RawBody};
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::rfc3339;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_core::Millis;
use shoal_protocol::JsonText;
use shoal_store::{Admitted, NewSchedule, ScheduleRecord};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// The longest the leader goes without looking for schedules to fire.
pub const FIRE_EVERY: Duration = Duration::from_millis(500);
/// Fire times one schedule may make in one pass.
const MAX_FIRES_PER_PASS: usize = 16;
/// The most schedules one tenant may have.
pub const MAX_SCHEDULES: usize = 1_000;

/// A cron pattern in its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: chrono_tz::Tz,
}

impl CronSpec {
    /// Parses a 5-field (minute first) or 6-field (seconds first) pattern and an IANA time zone.
    pub fn parse(pattern: &str, timezone: &str) -> Result<Self, ApiError> {
        let fields = pattern.split_whitespace().count();
        if !(5..=6).contains(&fields) || pattern.contains('@') {
            return Err(ApiError::invalid(
                "cron",
                format!(
                    "`{pattern}` must have 5 fields (minute hour day month weekday) or 6 (seconds first)"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| ApiError::invalid("cron", format!("`{pattern}`: {e}")))?;
        let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
            ApiError::invalid(
                "timezone",
                format!("`{timezone}` is not an IANA time zone such as UTC or Europe/Berlin"),
            )
        })?;
        Ok(CronSpec { cron, tz })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let t = self.tz.timestamp_millis_opt(after).single()?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|n| n.with_timezone(&Utc).timestamp_millis())
    }

    /// The last fire time at or before `at`.
    pub fn last_at_or_before(&self, at: Millis) -> Option<Millis> {
        let t = self.tz.timestamp_millis_opt(at).single()?;
        self.cron
            .find_previous_occurrence(&t, true)
            .ok()
            .map(|n| n.with_timezone(&Utc).timestamp_millis())
    }
}

/// What to fire for a schedule whose next fire time is `next` at `now`: the fire time to run and
/// the one after it, or `None` when `next` is still ahead. Missed fire times (more than one in
/// the past) collapse into one run of the latest of them: the catch-up rule.
pub fn due_fire(spec: &CronSpec, next: Millis, now: Millis) -> Option<(Millis, Option<Millis>)> {
    if next > now {
        return None;
    }
    let mut fire = next;
    let mut after = spec.next_after(fire);
    if after.is_some_and(|a| a <= now) {
        // More than one fire time has passed: run the latest once.
        fire = spec.last_at_or_before(now).unwrap_or(fire).max(fire);
        after = spec.next_after(fire.max(now));
    }
    Some((fire, after))
}

/// `PUT /v1/schedules/{tenant}/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSchedule {
    /// 5 fields (`minute hour day month weekday`) or 6 (seconds first).
    #[schema(example = "*/5 * * * * *")]
    pub cron: String,
    /// An IANA time zone; `UTC` by default.
    #[serde(default)]
    pub timezone: Option<String>,
    /// What each fire enqueues: the body of `POST /v1/jobs` without `tenant`, `idempotency_key`,
    /// `run_at` and `delay_s`.
    #[schema(value_type = Object)]
    pub job: Value,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleView {
    pub tenant: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// As written when it was put (a `semantic_diff` job's documents keep their numbers exactly).
    #[schema(value_type = Object)]
    pub job: JsonText,
    /// The next fire time not yet made into a job; absent when the pattern never matches again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fire_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

pub fn view(s: &ScheduleRecord) -> ScheduleView {
    ScheduleView {
        tenant: s.tenant.clone(),
        name: s.name.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        job: s.job.clone(),
        next_fire_at: s.next_fire_at.map(rfc3339),
        last_fire_at: s.last_fire_at.map(rfc3339),
        created_at: rfc3339(s.created_at),
        updated_at: rfc3339(s.updated_at),
    }
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!(
                "schedule name `{name}` must be 1-63 of A-Z, a-z, 0-9, -, _ and ., starting with a letter or digit"
            ),
        ))
    }
}

/// The enqueue body a schedule's `job` stands for, for `tenant`.
/// The job of a schedule to store: for a `semantic_diff` job, its text cut from the request's own
/// bytes, so that numbers no double holds reach each fire's engine as written (`job` is a
/// `Value`, which rounds them); any other job, or a body this cannot read so, as `job`'s text.
fn job_as_written(job: &Value, body: &[u8]) -> JsonText {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        job: &'a serde_json::value::RawValue,
    }
    let semantic =
        job.get("kind").and_then(Value::as_str) == Some(shoal_core::JobKind::SemanticDiff.as_str());
    if semantic
        && let Some(text) = serde_json::from_slice::<Raw>(body)
            .ok()
            .and_then(|r| JsonText::from_text(r.job.get().to_string()).ok())
    {
        return text;
    }
    JsonText::from(job)
}

fn enqueue_of(tenant: &str, job: &Value) -> Result<Enqueue, ApiError> {
    let Some(obj) = job.as_object() else {
        return Err(ApiError::invalid("job", "must be an object"));
    };
    for k in ["tenant", "idempotency_key", "run_at", "delay_s"] {
        if obj.contains_key(k) {
            return Err(ApiError::invalid(
                "job",
                format!("`{k}` is set by the schedule, not in its job"),
            ));
        }
    }
    let mut body = job.clone();
    body["tenant"] = Value::String(tenant.to_string());
    crate::error::parse_object_with(body, crate::admission::ENQUEUE_INTEGERS)
        .map_err(|e| e.field("job"))
}

/// Creates or replaces a schedule. Replacing it starts it afresh from now: a fire time already
/// made into a job stays queued.
#[utoipa::path(put, path = "/v1/schedules/{tenant}/{name}", tag = "schedules",
    params(("tenant" = String, Path), ("name" = String, Path)),
    request_body = PutSchedule,
    responses(
        (status = 201, description = "created", body = ScheduleView),
        (status = 200, description = "replaced", body = ScheduleView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
    ))]
pub async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let req: PutSchedule = crate::error::parse_object(&body.0)?;
    let job = job_as_written(&req.job, &body.0);
    drop(body);
    let t = crate::api::visible_tenant(&app, &caller, &tenant).await?;
    valid_name(&name)?;
    let timezone = req.timezone.unwrap_or_else(|| "UTC".into());
    let spec = CronSpec::parse(&req.cron, &timezone)?;
    let now = now_ms();
    check(&enqueue_of(&t.id, &req.job)?, now)?;
    if app.store.schedule(&t.id, &name).await?.is_none()
        && app.store.schedules(Some(&t.id)).await?.len() >= MAX_SCHEDULES
    {
        return Err(ApiError::conflict(format!(
            "at most {MAX_SCHEDULES} schedules per tenant; delete one first"
        )));
    }
    let next = spec.next_after(now);
    let (rec, created) = app
        .store
        .put_schedule(
            &NewSchedule {
                tenant: t.id.clone(),
                name,
                cron: req.cron,
                timezone,
                job,
                next_fire_at: next,
                now,
            },
            &caller.actor(),
        )
        .await?;
    // The planner learns of the next fire.
    app.work_changed(&t.id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&rec))).into_response())
}

/// `GET /v1/schedules`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's schedules.
    pub tenant: Option<String>,
}

/// The schedules the caller may see (a tenant key: its own), by tenant and name.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    params(ListQuery),
    responses((status = 200, body = ScheduleList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    if let Some(t) = &q.tenant {
        caller.check_tenant(t)?;
    }
    let tenant = q.tenant.as_deref().or(caller.tenant());
    let all = app.store.schedules(tenant).await?;
    Ok(Json(ScheduleList {
        schedules: all.iter().map(view).collect(),
    }))
}

/// Deletes a schedule. A fire time already made into a job stays queued.
#[utoipa::path(delete, path = "/v1/schedules/{tenant}/{name}", tag = "schedules",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.check_tenant(&tenant)?;
    if app
        .store
        .delete_schedule(&tenant, &name, now_ms(), &caller.actor())
        .await?
    {
        app.work_changed(&tenant);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("schedule", &format!("{tenant}/{name}")))
    }
}

/// Fires every schedule due at `now`; answers how many jobs were made and the earliest fire time
/// still ahead.
pub async fn fire_due(
    app: &App,
    now: Millis,
) -> Result<(usize, Option<Millis>), shoal_store::StoreError> {
    let mut made = 0;
    let mut earliest: Option<Millis> = None;
    for s in app.store.schedules(None).await? {
        let Some(mut next) = s.next_fire_at else {
            continue;
        };
        let spec = match CronSpec::parse(&s.cron, &s.timezone) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(tenant = %s.tenant, schedule = %s.name, error = %e.message, "a stored schedule no longer parses");
                continue;
            }
        };
        for _ in 0..MAX_FIRES_PER_PASS {
            let Some((fire, after)) = due_fire(&spec, next, now) else {
                break;
            };
            if fire_one(app, &s, next, fire, after, now).await? {
                made += 1;
            }
            let Some(a) = after else {
                next = Millis::MIN;
                break;
            };
            next = a;
        }
        if next > now && s.next_fire_at.is_some() {
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
    }
    Ok((made, earliest))
}

/// Fires `fire` of schedule `s` (claimed from `claimed`, its `next_fire_at` as read), moving it to
/// `after`. `true` when a job was made.
async fn fire_one(
    app: &App,
    s: &ScheduleRecord,
    claimed: Millis,
    fire: Millis,
    after: Option<Millis>,
    now: Millis,
) -> Result<bool, shoal_store::StoreError> {
    let Some(tenant) = app.store.tenant(&s.tenant).await? else {
        return Ok(false);
    };
    let req = enqueue_of(&s.tenant, &s.job.to_value());
    let checked = req.and_then(|r| check(&r, now).map(|c| (c, r)));
    let schedule = format!("{}/{}", s.tenant, s.name);
    let key = shoal_store::schedules::fire_key(&s.name, fire);
    let job = match checked {
        Ok((mut c, mut r)) => {
            c.run_at = Some(fire);
            // The documents of a `semantic_diff` job as the schedule's job wrote them.
            crate::admission::keep_documents_as_written(&mut r, s.job.get().as_bytes());
            let spec = r
                .spec_text
                .take()
                .unwrap_or_else(|| JsonText::from(&r.spec));
            c.into_job(&s.tenant, spec, Some(key), now, Some(schedule.clone()))
        }
        Err(e) => {
            // Stored before a rule it breaks: the fire time passes without a job.
            skip_fire(app, s, claimed, fire, after, now, &e).await?;
            return Ok(false);
        }
    };
    let limits = tenant.limits();
    // The budget rule, as for every admission: a blocked tenant's fire passes without a job.
    if let Some(e) = crate::admission::budget(app, &s.tenant, &limits, now).await? {
        skip_fire(app, s, claimed, fire, after, now, &e).await?;
        return Ok(false);
    }
    let period = shoal_metering::month_of(now);
    let out = app
        .store
        .fire_schedule(
            &shoal_store::ScheduleFire {
                tenant: s.tenant.clone(),
                name: s.name.clone(),
                claimed,
                next: after,
            },
            job,
            period.0,
            limits.jobs_per_month,
        )
        .await?;
    match out {
        Some(Admitted::Created { job, .. }) => {
            let label = app.metrics.tenant(&job.tenant);
            app.metrics
                .jobs_enqueued
                .with_label_values(&[label, job.kind.as_str()])
                .inc();
            tracing::info!(schedule = %schedule, job = %job.id, fire_at = %rfc3339(fire), "schedule fired");
            app.work_changed(&job.tenant);
            Ok(true)
        }
        Some(Admitted::QuotaExceeded { used, limit }) => {
            tracing::warn!(schedule = %schedule, used, limit, "schedule fire refused: the tenant's monthly quota is used up");
            Ok(false)
        }
        Some(Admitted::Existing(_)) | None => Ok(false),
    }
}

/// A fire time of `s` that admission refused (`refusal`: a rule its job breaks, or the tenant's
/// budget block): it passes without a job, recorded as an event `schedule_skipped` with the
/// refusal's code and message, and the schedule moves on from `claimed` to `after` so it does not
/// retry this fire forever.
async fn skip_fire(
    app: &App,
    s: &ScheduleRecord,
    claimed: Millis,
    fire: Millis,
    after: Option<Millis>,
    now: Millis,
    refusal: &ApiError,
) -> Result<(), shoal_store::StoreError> {
    let schedule = format!("{}/{}", s.tenant, s.name);
    tracing::warn!(schedule = %schedule, code = refusal.code, error = %refusal.message, "a schedule's fire was refused by admission; fire skipped");
    let _ = app
        .store
        .record_event(
            Some(&s.tenant),
            now,
            "schedule_skipped",
            &serde_json::json!({"schedule": schedule, "fire_at": rfc3339(fire), "code": refusal.code, "error": refusal.message}),
        )
        .await;
    if app
        .store
        .schedule(&s.tenant, &s.name)
        .await?
        .and_then(|n| n.next_fire_at)
        == Some(claimed)
    {
        app.store
            .put_schedule(
                &NewSchedule {
                    tenant: s.tenant.clone(),
                    name: s.name.clone(),
                    cron: s.cron.clone(),
                    timezone: s.timezone.clone(),
                    job: s.job.clone(),
                    next_fire_at: after,
                    now,
                },
                &shoal_core::audit::Actor::system("schedule"),
            )
            .await?;
    }
    Ok(())
}

/// Fires due schedules while this replica leads, until shutdown: at each earliest fire time, and
/// at least every [`FIRE_EVERY`].
pub async fn run(app: Arc<App>, control: Arc<Control>) {
    let mut wait = FIRE_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.cancelled() => return,
        }
        wait = FIRE_EVERY;
        if !control.leads() || app.is_shutting_down() {
            continue;
        }
        match fire_due(&app, now_ms()).await {
            Ok((_, Some(at))) => {
                let ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                wait = wait.min(Duration::from_millis(ms));
            }
            Ok((_, None)) => {}
            Err(e) => tracing::warn!(error = %e, "firing schedules failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        crate::views::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn five_and_six_fields_in_a_time_zone() {
        let every5s = CronSpec::parse("*/5 * * * * *", "UTC").unwrap();
        assert_eq!(
            every5s.next_after(ms("2026-01-01T00:00:01Z")),
            Some(ms("2026-01-01T00:00:05Z"))
        );
        assert_eq!(
            every5s.next_after(ms("2026-01-01T00:00:05Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        // 02:30 every day in Berlin is 01:30 UTC in winter.
        let nightly = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            nightly.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T01:30:00Z"))
        );
        assert_eq!(
            nightly.next_after(ms("2026-07-10T12:00:00Z")),
            Some(ms("2026-07-11T00:30:00Z"))
        );
        for bad in ["* * * *", "* * * * * * *", "61 * * * *", "@daily", ""] {
            assert!(CronSpec::parse(bad, "UTC").is_err(), "{bad}");
        }
        assert!(CronSpec::parse("* * * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn missed_fire_times_collapse_into_one_catch_up_run() {
        let every5s = CronSpec::parse("*/5 * * * * *", "UTC").unwrap();
        let t0 = ms("2026-01-01T00:00:00Z");
        // Not yet.
        assert_eq!(due_fire(&every5s, t0 + 5_000, t0 + 4_999), None);
        // On time: that fire time, then the next.
        assert_eq!(
            due_fire(&every5s, t0 + 5_000, t0 + 5_000),
            Some((t0 + 5_000, Some(t0 + 10_000)))
        );
        // Just late (one fire time passed): that one, as usual.
        assert_eq!(
            due_fire(&every5s, t0 + 5_000, t0 + 6_000),
            Some((t0 + 5_000, Some(t0 + 10_000)))
        );
        // Down for a minute: one run for the latest missed time, then on from now.
        assert_eq!(
            due_fire(&every5s, t0 + 5_000, t0 + 61_000),
            Some((t0 + 60_000, Some(t0 + 65_000)))
        );
    }
}

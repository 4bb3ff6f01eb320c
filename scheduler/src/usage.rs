//! `GET /v1/usage`: compute hours per tenant from the ledger, split exactly into hour, day or month
//! buckets, with job counts, as JSON or CSV.

use crate::auth::Caller;
use crate::error::{ApiError, shape_error};
use crate::state::{App, now_ms};
use crate::views::{parse_rfc3339, rfc3339};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shoal_core::{JobState, Millis};
use shoal_metering::{Granularity, Price, Usage, bucketize, intervals, month_of, total};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// The query of `GET /v1/usage`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// One tenant (a tenant key: its own); without it, every tenant added up.
    tenant: Option<String>,
    /// RFC 3339; the start of the current month when absent.
    from: Option<String>,
    /// RFC 3339; now when absent.
    to: Option<String>,
    /// `hour`, `day` (the default) or `month`.
    granularity: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
    /// `region`: the report also splits the total by the region each sandbox ran in
    /// (`by_region`, JSON only; sandboxes whose region is unknown under `null`).
    group_by: Option<String>,
}

/// The total of one region (`null`: sandboxes whose region is not known).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionTotal {
    pub region: Option<String>,
    pub sandbox_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// One bucket of a usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucket {
    pub start: String,
    pub end: String,
    pub sandbox_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    /// The bucket's vCPU- and GiB-seconds at the provider's `[prices]`; absent without a price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// The report's total over `[from, to)`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotal {
    pub sandbox_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// `GET /v1/usage` as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub tenant: Option<String>,
    pub from: String,
    pub to: String,
    #[schema(value_type = String, example = "day")]
    pub granularity: Granularity,
    pub buckets: Vec<UsageBucket>,
    pub total: UsageTotal,
    /// The currency of `cost`, when the provider has a price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// With `group_by=region`: the total split by region, regions in name order, unknown last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_region: Option<Vec<RegionTotal>>,
}

/// Most buckets one report may hold.
const MAX_BUCKETS: i64 = 100_000;

/// One bucket with its job counts.
pub struct Row {
    pub start: Millis,
    pub end: Millis,
    pub usage: Usage,
    pub succeeded: u64,
    pub failed: u64,
}

fn bucket(r: &Row, price: Option<Price>) -> UsageBucket {
    UsageBucket {
        cost: price.map(|p| p.cost(&r.usage)),
        start: rfc3339(r.start),
        end: rfc3339(r.end),
        sandbox_seconds: r.usage.sandbox_seconds(),
        vcpu_seconds: r.usage.vcpu_seconds(),
        gib_seconds: r.usage.gib_seconds(),
        jobs_succeeded: r.succeeded,
        jobs_failed: r.failed,
    }
}

/// The price of this scheduler's provider, if `[prices]` has one.
pub fn price(app: &App) -> Option<Price> {
    app.cfg
        .prices
        .providers
        .get(app.cfg.provider.as_str())
        .copied()
}

/// Computes the report's rows and total for `tenant` (or all) over `[from, to)`.
pub async fn report(
    app: &App,
    tenant: Option<&str>,
    from: Millis,
    to: Millis,
    g: Granularity,
) -> Result<(Vec<Row>, Row), ApiError> {
    let now = now_ms();
    let ledger = app.store.ledger(tenant).await?;
    let ivs = intervals(&ledger, now.min(to).max(from));
    let buckets = bucketize(&ivs, from, to, g);
    let finished = app.store.finished_jobs(tenant, from, to).await?;
    let mut rows: Vec<Row> = buckets
        .into_iter()
        .map(|b| Row {
            start: b.start,
            end: b.end,
            usage: b.usage,
            succeeded: 0,
            failed: 0,
        })
        .collect();
    let mut tot = Row {
        start: from,
        end: to,
        usage: total(&ivs, from, to),
        succeeded: 0,
        failed: 0,
    };
    for f in finished {
        let i = rows.partition_point(|r| r.end <= f.at);
        let Some(row) = rows.get_mut(i) else { continue };
        match f.state {
            JobState::Succeeded => {
                row.succeeded += 1;
                tot.succeeded += 1;
            }
            JobState::Failed | JobState::Dead => {
                row.failed += 1;
                tot.failed += 1;
            }
            _ => {}
        }
    }
    Ok((rows, tot))
}

/// The usage of `tenant` (or all) over `[from, to)` split by the region each sandbox ran in.
pub async fn by_region(
    app: &App,
    tenant: Option<&str>,
    from: Millis,
    to: Millis,
    price: Option<Price>,
) -> Result<Vec<RegionTotal>, ApiError> {
    let ledger = app.store.ledger(tenant).await?;
    let regions = app.store.sandbox_regions(tenant).await?;
    let ivs = intervals(&ledger, now_ms().min(to).max(from));
    let mut split: std::collections::BTreeMap<(bool, Option<String>), Vec<_>> = Default::default();
    for iv in ivs {
        let region = regions.get(&iv.sandbox_id).cloned();
        split
            .entry((region.is_none(), region))
            .or_default()
            .push(iv);
    }
    Ok(split
        .into_iter()
        .map(|((_, region), ivs)| {
            let u = total(&ivs, from, to);
            RegionTotal {
                region,
                sandbox_seconds: u.sandbox_seconds(),
                vcpu_seconds: u.vcpu_seconds(),
                gib_seconds: u.gib_seconds(),
                cost: price.map(|p| p.cost(&u)),
            }
        })
        .collect())
}

/// Compute usage, split exactly into hour, day or month buckets, with job counts.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses(
        (status = 200, description = "JSON, or CSV with `format=csv`",
            content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 404, description = "no such tenant", body = crate::openapi::ErrorBody),
    ))]
pub async fn usage(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| shape_error(&e.body_text()))?;
    let tenant = crate::api::scoped_tenant(&app, &caller, q.tenant.as_deref()).await?;
    let g: Granularity = q
        .granularity
        .as_deref()
        .unwrap_or("day")
        .parse()
        .map_err(|e: String| ApiError::invalid("granularity", e))?;
    let now = now_ms();
    let time =
        |field: &'static str, v: &Option<String>, default: Millis| -> Result<Millis, ApiError> {
            match v {
                None => Ok(default),
                Some(s) => parse_rfc3339(s).ok_or_else(|| {
                    ApiError::invalid(field, format!("`{s}` is not an RFC 3339 time"))
                }),
            }
        };
    let from = time("from", &q.from, month_of(now).0)?;
    let to = time("to", &q.to, now)?;
    if from >= to {
        return Err(ApiError::invalid("to", "`to` must be after `from`"));
    }
    let width = match g {
        Granularity::Hour => 3_600_000,
        Granularity::Day => 86_400_000,
        Granularity::Month => 28 * 86_400_000,
    };
    if (to - from) / width > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "granularity",
            format!(
                "more than {MAX_BUCKETS} buckets: choose a coarser granularity or a shorter range"
            ),
        ));
    }
    let (rows, tot) = report(&app, tenant.as_deref(), from, to, g).await?;
    let price = price(&app);
    let by_region = match q.group_by.as_deref() {
        None => None,
        Some("region") => Some(by_region(&app, tenant.as_deref(), from, to, price).await?),
        Some(other) => {
            return Err(ApiError::invalid(
                "group_by",
                format!("`{other}` is not a grouping (`region`)"),
            ));
        }
    };
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(axum::Json(UsageReport {
            tenant,
            from: rfc3339(from),
            to: rfc3339(to),
            granularity: g,
            buckets: rows.iter().map(|r| bucket(r, price)).collect(),
            currency: price.map(|_| app.cfg.prices.currency.clone()),
            by_region,
            total: UsageTotal {
                cost: price.map(|p| p.cost(&tot.usage)),
                sandbox_seconds: tot.usage.sandbox_seconds(),
                vcpu_seconds: tot.usage.vcpu_seconds(),
                gib_seconds: tot.usage.gib_seconds(),
                jobs_succeeded: tot.succeeded,
                jobs_failed: tot.failed,
            },
        })
        .into_response()),
        "csv" => {
            let who = tenant.as_deref().unwrap_or("*");
            let mut out = String::from(
                "tenant,start,end,sandbox_seconds,vcpu_seconds,gib_seconds,jobs_succeeded,jobs_failed,cost\n",
            );
            for r in &rows {
                out.push_str(&format!(
                    "{who},{},{},{},{},{},{},{},{}\n",
                    rfc3339(r.start),
                    rfc3339(r.end),
                    r.usage.sandbox_seconds(),
                    r.usage.vcpu_seconds(),
                    r.usage.gib_seconds(),
                    r.succeeded,
                    r.failed,
                    price
                        .map(|p| p.cost(&r.usage).to_string())
                        .unwrap_or_default()
                ));
            }
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                out,
            )
                .into_response())
        }
        other => Err(ApiError::invalid(
            "format",
            format!("unknown format `{other}` (json or csv)"),
        )),
    }
}

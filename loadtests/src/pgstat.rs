//! A benchmark's statements by the time Postgres spent on them (`pg_stat_statements`, loaded
//! into the benchmark's own server when `SHOAL_PG_STAT_STATEMENTS` is set): calls per job, mean
//! and total time, so a job's cost in the store can be broken down by statement.

use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;

/// One statement's share of a phase, from `pg_stat_statements`.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub calls_per_job: f64,
    pub mean_ms: f64,
    pub total_ms: f64,
    pub query: String,
}

/// Resets `pg_stat_statements` for the database of `pool`; `false` when the extension is not
/// loaded (the server was started without `SHOAL_PG_STAT_STATEMENTS`).
pub async fn reset(pool: &PgPool) -> bool {
    if std::env::var_os("SHOAL_PG_STAT_STATEMENTS").is_none() {
        return false;
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .is_ok()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(pool)
            .await
            .is_ok()
}

/// The statements of the pool's database since the reset, by total time, the first 30.
pub async fn statements(pool: &PgPool, jobs: usize) -> Result<Vec<Statement>> {
    let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(
        "SELECT calls, mean_exec_time, total_exec_time, query FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT 30",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(calls, mean_ms, total_ms, query)| Statement {
            calls_per_job: calls as f64 / jobs.max(1) as f64,
            mean_ms,
            total_ms,
            query: query.split_whitespace().collect::<Vec<_>>().join(" "),
        })
        .collect())
}

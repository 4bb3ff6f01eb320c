//! `shoal schedules`: list, put and delete cron schedules.

use super::{Conn, call, pretty, rows_of, s, table};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Clone)]
pub enum SchedulesCommand {
    /// The schedules the token may see, with their next fire times.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create or replace a schedule that runs `CMD [ARG...]` as an agent job at each fire time.
    Put {
        tenant: String,
        name: String,
        /// 5 fields (`minute hour day month weekday`) or 6 (seconds first).
        #[arg(long)]
        cron: String,
        /// An IANA time zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// The whole job as JSON (`{"kind", "spec", ...}`) instead of a command.
        #[arg(long, conflicts_with = "command")]
        job: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Delete a schedule.
    Delete { tenant: String, name: String },
}

pub(super) fn schedules(conn: &Conn, command: Option<SchedulesCommand>) -> Result<String, String> {
    use reqwest::Method;
    const COLS: [&str; 6] = [
        "TENANT",
        "SCHEDULE",
        "CRON",
        "TIMEZONE",
        "NEXT FIRE",
        "LAST FIRE",
    ];
    let row = |v: &Value| {
        vec![
            s(&v["tenant"]),
            s(&v["name"]),
            s(&v["cron"]),
            s(&v["timezone"]),
            s(&v["next_fire_at"]),
            s(&v["last_fire_at"]),
        ]
    };
    match command.unwrap_or(SchedulesCommand::List { tenant: None }) {
        SchedulesCommand::List { tenant } => {
            let query: Vec<(&str, String)> = tenant.into_iter().map(|t| ("tenant", t)).collect();
            let (v, _) = call(conn, Method::GET, "/v1/schedules", &query, None)?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let rows: Vec<Vec<String>> = rows_of(&v["schedules"], row);
            Ok(table(&COLS, &rows))
        }
        SchedulesCommand::Put {
            tenant,
            name,
            cron,
            timezone,
            job,
            command,
        } => {
            let job: Value = match job {
                Some(j) => {
                    serde_json::from_str(&j).map_err(|e| format!("--job is not JSON: {e}"))?
                }
                None if command.is_empty() => {
                    return Err("give the command after `--`, or the job with --job".into());
                }
                None => serde_json::json!({"kind": "agent", "spec": {"command": command}}),
            };
            let mut body = serde_json::json!({"cron": cron, "job": job});
            if let Some(tz) = timezone {
                body["timezone"] = Value::String(tz);
            }
            let (v, _) = call(
                conn,
                Method::PUT,
                &format!("/v1/schedules/{tenant}/{name}"),
                &[],
                Some(body),
            )?;
            if conn.json {
                return Ok(pretty(&v));
            }
            Ok(table(&COLS, &[row(&v)]))
        }
        SchedulesCommand::Delete { tenant, name } => {
            call(
                conn,
                Method::DELETE,
                &format!("/v1/schedules/{tenant}/{name}"),
                &[],
                None,
            )?;
            if conn.json {
                return Ok(pretty(
                    &serde_json::json!({"deleted": format!("{tenant}/{name}")}),
                ));
            }
            Ok(format!("schedule {tenant}/{name} deleted\n"))
        }
    }
}

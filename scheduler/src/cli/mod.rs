//! The operators' CLI: `shoal tenants|pools|jobs|usage|drain|plan|webhooks|audit` (`jobs submit` and
//! `jobs logs` in `crate::jobcli`), talking to a running scheduler
//! at `SHOAL_URL` with `SHOAL_TOKEN` (else `SHOAL_ADMIN_TOKEN`). Tables for people, `--json` for
//! scripts.

mod schedules;
mod webhooks;

pub use schedules::SchedulesCommand;
use schedules::schedules;
pub use webhooks::WebhooksCommand;
use webhooks::webhooks;

use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args, Clone)]
pub struct Conn {
    /// The scheduler's URL.
    #[arg(
        long,
        env = "SHOAL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(crate) url: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Clone)]
pub enum OperatorCommand {
    /// List tenants, show one, or create/update one.
    Tenants {
        #[command(flatten)]
        conn: Conn,
        /// Show this tenant.
        id: Option<String>,
        /// Create or update the tenant with this plan (free, pro, team, enterprise).
        #[arg(long, requires = "id")]
        plan: Option<String>,
        /// Limit overrides as JSON, with --plan.
        #[arg(long, requires = "plan")]
        limits: Option<String>,
    },
    /// Pools: per tenant, sandboxes by state against desired, queued and running jobs.
    Pools {
        #[command(flatten)]
        conn: Conn,
        tenant: Option<String>,
    },
    /// Jobs: submit (and wait), list, show, cancel, print their output.
    Jobs {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Compute usage per bucket.
    Usage {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "day")]
        granularity: String,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Stop giving a tenant's sandboxes new work and stop its idle ones.
    Drain {
        #[command(flatten)]
        conn: Conn,
        tenant: String,
        /// Resume the tenant instead.
        #[arg(long)]
        undo: bool,
    },
    /// Webhook endpoints: list them (the default), create or delete one, or show its deliveries.
    Webhooks {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: Option<WebhooksCommand>,
    },
    /// Cron schedules: list them with their next fire time (the default), create or replace one,
    /// or delete one.
    Schedules {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: Option<SchedulesCommand>,
    },
    /// The audit log: list records, or verify its hash chain (`shoal audit verify`).
    Audit {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: Option<crate::audit::AuditCommand>,
    },
    /// What the planner would do now, without doing it (`--dry-run` is required: the planner only
    /// acts inside the scheduler).
    Plan {
        #[command(flatten)]
        conn: Conn,
        /// Print the plan without applying it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Clone)]
pub enum JobsCommand {
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// Submit a job and print its id; with --wait, wait for it to end and exit with its exit
    /// code (0 succeeded, the command's own code, 124 timed out, 125 failed without an exit code,
    /// 128+N killed by signal N, 75 dead, 130 cancelled).
    Submit(crate::jobcli::SubmitArgs),
    /// Print a job's output (stdout and stderr as written, the newest part kept); with --follow,
    /// keep printing it as it runs until the job ends.
    Logs {
        id: String,
        #[arg(long)]
        follow: bool,
    },
}

pub(crate) fn token() -> Option<String> {
    std::env::var("SHOAL_TOKEN")
        .ok()
        .or_else(|| std::env::var("SHOAL_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

/// One call to the API; the body of an error answer becomes the error.
pub(crate) fn call(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> Result<(Value, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method, format!("{}{path}", conn.url.trim_end_matches('/')))
            .query(query);
        if let Some(t) = token() {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the scheduler at {}: {e}", conn.url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(format!("{status}: {msg}"));
        }
        Ok((serde_json::from_str(&text).unwrap_or(Value::Null), text))
    })
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// One table row per element of the JSON list `list` (no rows when it is not a list).
pub(crate) fn rows_of(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| items.iter().map(row).collect())
        .unwrap_or_default()
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn run(cmd: OperatorCommand) -> ExitCode {
    // These two print as they go and choose their own exit code.
    let cmd = match cmd {
        OperatorCommand::Jobs {
            conn,
            command: JobsCommand::Submit(args),
        } => return crate::jobcli::submit(&conn, &args),
        OperatorCommand::Jobs {
            conn,
            command: JobsCommand::Logs { id, follow },
        } => return crate::jobcli::logs(&conn, &id, follow),
        other => other,
    };
    match execute(cmd) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The API's JSON as `--json` prints it: pretty, with a final newline.
pub(crate) fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

fn execute(cmd: OperatorCommand) -> Result<String, String> {
    use reqwest::Method;
    match cmd {
        OperatorCommand::Tenants {
            conn,
            id,
            plan,
            limits,
        } => {
            let (v, _) = match (&id, plan) {
                (Some(id), Some(plan)) => {
                    let limits = limits
                        .map(|l| {
                            serde_json::from_str::<Value>(&l).map_err(|e| format!("--limits: {e}"))
                        })
                        .transpose()?;
                    let mut body = serde_json::json!({"plan": plan});
                    if let Some(l) = limits {
                        body["limits"] = l;
                    }
                    call(
                        &conn,
                        Method::PUT,
                        &format!("/v1/tenants/{id}"),
                        &[],
                        Some(body),
                    )?
                }
                (Some(id), None) => {
                    call(&conn, Method::GET, &format!("/v1/tenants/{id}"), &[], None)?
                }
                (None, _) => call(&conn, Method::GET, "/v1/tenants", &[], None)?,
            };
            if conn.json {
                return Ok(pretty(&v));
            }
            let list = if v["tenants"].is_array() {
                v["tenants"].as_array().cloned().unwrap_or_default()
            } else {
                vec![v]
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        s(&t["id"]),
                        s(&t["plan"]),
                        s(&t["limits"]["max_sandboxes"]),
                        format!("{}/{}", s(&t["usage"]["jobs"]), s(&t["usage"]["quota"])),
                        // One word per cell, none blank, so rows split into the same columns.
                        if t["usage"]["exceeded"].as_bool() == Some(true) {
                            "exceeded".into()
                        } else if t["usage"]["warning"].as_bool() == Some(true) {
                            "over-80%".into()
                        } else {
                            "ok".into()
                        },
                        if t["draining"].as_bool() == Some(true) {
                            "draining".into()
                        } else {
                            "serving".into()
                        },
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "TENANT",
                    "PLAN",
                    "MAX SANDBOXES",
                    "JOBS/QUOTA",
                    "QUOTA",
                    "STATE",
                ],
                &rows,
            ))
        }
        OperatorCommand::Pools { conn, tenant } => {
            let (v, _) = match &tenant {
                Some(t) => call(&conn, Method::GET, &format!("/v1/pools/{t}"), &[], None)?,
                None => call(&conn, Method::GET, "/v1/pools", &[], None)?,
            };
            if conn.json {
                return Ok(pretty(&v));
            }
            let pools = if tenant.is_some() {
                vec![v.clone()]
            } else {
                v["pools"].as_array().cloned().unwrap_or_default()
            };
            let rows: Vec<Vec<String>> = pools
                .iter()
                .map(|p| {
                    let sb = &p["sandboxes"];
                    vec![
                        s(&p["tenant"]),
                        s(&p["plan"]),
                        // Named either way (as on the dashboard), so that no cell is blank
                        // and every row splits into the same columns.
                        if p["draining"].as_bool() == Some(true) {
                            "draining".into()
                        } else {
                            "serving".into()
                        },
                        s(&p["desired"]),
                        s(&p["queued"]),
                        s(&p["running"]),
                        s(&sb["booting"]),
                        s(&sb["ready"]),
                        s(&sb["busy"]),
                        s(&sb["suspended"]),
                        s(&sb["stopped"]),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "TENANT",
                    "PLAN",
                    "STATE",
                    "DESIRED",
                    "QUEUED",
                    "RUNNING",
                    "BOOTING",
                    "READY",
                    "BUSY",
                    "SUSPENDED",
                    "STOPPED",
                ],
                &rows,
            );
            if tenant.is_some() {
                let rows: Vec<Vec<String>> = rows_of(&v["sandbox_list"], |x| {
                    vec![
                        s(&x["id"]),
                        s(&x["state"]),
                        s(&x["provider_id"]),
                        s(&x["since"]),
                        s(&x["jobs_run"]),
                    ]
                });
                out.push('\n');
                out.push_str(&table(
                    &["SANDBOX", "STATE", "PROVIDER ID", "SINCE", "JOBS RUN"],
                    &rows,
                ));
            }
            Ok(out)
        }
        OperatorCommand::Jobs { conn, command } => {
            let v = match command {
                JobsCommand::List {
                    tenant,
                    state,
                    limit,
                } => {
                    let mut q = vec![("limit", limit.to_string())];
                    if let Some(t) = tenant {
                        q.push(("tenant", t));
                    }
                    if let Some(st) = state {
                        q.push(("state", st));
                    }
                    let (v, _) = call(&conn, Method::GET, "/v1/jobs", &q, None)?;
                    if conn.json {
                        return Ok(pretty(&v));
                    }
                    let rows: Vec<Vec<String>> = rows_of(&v["jobs"], |j| {
                        vec![
                            s(&j["id"]),
                            s(&j["tenant"]),
                            s(&j["kind"]),
                            s(&j["state"]),
                            s(&j["attempts"]),
                            s(&j["created_at"]),
                        ]
                    });
                    return Ok(table(
                        &["JOB", "TENANT", "KIND", "STATE", "ATTEMPTS", "CREATED"],
                        &rows,
                    ));
                }
                JobsCommand::Show { id } => {
                    call(&conn, Method::GET, &format!("/v1/jobs/{id}"), &[], None)?.0
                }
                // Run by `run` itself, which prints as they go.
                JobsCommand::Submit { .. } | JobsCommand::Logs { .. } => {
                    return Err("`jobs submit` and `jobs logs` print as they go".into());
                }
                JobsCommand::Cancel { id } => {
                    call(
                        &conn,
                        Method::POST,
                        &format!("/v1/jobs/{id}/cancel"),
                        &[],
                        None,
                    )?
                    .0
                }
            };
            if conn.json {
                return Ok(pretty(&v));
            }
            let mut rows = Vec::new();
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    rows.push(vec![k.clone(), s(val)]);
                }
            }
            Ok(table(&["FIELD", "VALUE"], &rows))
        }
        OperatorCommand::Usage {
            conn,
            tenant,
            from,
            to,
            granularity,
            csv,
        } => {
            let mut q = vec![("granularity", granularity)];
            for (k, v) in [("tenant", tenant), ("from", from), ("to", to)] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            if csv {
                q.push(("format", "csv".into()));
                let (_, text) = call(&conn, Method::GET, "/v1/usage", &q, None)?;
                return Ok(text);
            }
            let (v, _) = call(&conn, Method::GET, "/v1/usage", &q, None)?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let row = |b: &Value| {
                vec![
                    s(&b["start"]),
                    s(&b["end"]),
                    s(&b["sandbox_seconds"]),
                    s(&b["vcpu_seconds"]),
                    s(&b["gib_seconds"]),
                    s(&b["jobs_succeeded"]),
                    s(&b["jobs_failed"]),
                    match b["cost"].as_f64() {
                        Some(c) => format!("{c:.4}"),
                        None => "-".into(),
                    },
                ]
            };
            let mut rows: Vec<Vec<String>> = rows_of(&v["buckets"], row);
            let cost_header = format!("COST {}", v["currency"].as_str().unwrap_or_default());
            let mut total = row(&v["total"]);
            total[0] = "total".into();
            total[1] = String::new();
            rows.push(total);
            Ok(table(
                &[
                    "START",
                    "END",
                    "SANDBOX S",
                    "VCPU S",
                    "GIB S",
                    "SUCCEEDED",
                    "FAILED",
                    cost_header.trim_end(),
                ],
                &rows,
            ))
        }
        OperatorCommand::Drain { conn, tenant, undo } => {
            let (v, _) = call(
                &conn,
                Method::POST,
                &format!("/v1/tenants/{tenant}/drain"),
                &[],
                Some(serde_json::json!({"draining": !undo})),
            )?;
            if conn.json {
                return Ok(pretty(&v));
            }
            Ok(format!(
                "tenant {} {}\n",
                s(&v["id"]),
                if undo { "resumed" } else { "draining" }
            ))
        }
        OperatorCommand::Webhooks { conn, command } => webhooks(&conn, command),
        OperatorCommand::Schedules { conn, command } => schedules(&conn, command),
        OperatorCommand::Audit { conn, command } => crate::audit::command(&conn, command),
        OperatorCommand::Plan { conn, dry_run } => {
            if !dry_run {
                return Err(
                    "`shoal plan` only prints a dry run: pass --dry-run (the scheduler applies plans itself)"
                        .into(),
                );
            }
            let (v, _) = call(&conn, Method::GET, "/v1/plan", &[], None)?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let mut out = table(
                &["TENANT", "DESIRED", "ACTIVE"],
                &rows_of(&v["pools"], |p| {
                    vec![s(&p["tenant"]), s(&p["desired"]), s(&p["active"])]
                }),
            );
            let steps: Vec<Vec<String>> = rows_of(&v["steps"], |st| {
                vec![s(&st["op"]), s(&st["tenant"]), s(&st["sandbox"])]
            });
            out.push('\n');
            if steps.is_empty() {
                out.push_str("no steps: every pool is where the planner wants it\n");
            } else {
                out.push_str(&table(&["STEP", "TENANT", "SANDBOX"], &steps));
            }
            Ok(out)
        }
    }
}

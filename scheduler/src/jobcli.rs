//! `shoal jobs submit` and `shoal jobs logs`: submit a job (and wait for it, exiting with its exit
//! code), print a job's output (and follow it while it runs). Waiting uses `wait_s` in a loop, so
//! a job of any length is waited for without polling; a scheduler that cannot be reached for a
//! moment (a restart) is tried again.
//!
//! The exit code of `submit --wait`:
//!
//! | the job | exit code |
//! |---|---|
//! | succeeded | 0 (a `semantic_diff` that found differences: 1, as diff(1)) |
//! | failed with the command's exit code N | N |
//! | failed: the command was killed by signal S | 128 + S |
//! | failed: timed out | 124 |
//! | failed without an exit code (could not start, bad spec, engine error) | 125 |
//! | dead (every attempt lost) | 75 |
//! | cancelled | 130 |
//!
//! When `shoal` itself fails (bad flags, the submission refused, the scheduler unreachable for
//! long) it says so on stderr (`shoal: ...`) and exits 1, as its other subcommands do.

use crate::cli::{Conn, token};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

/// `shoal jobs submit`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    pub tenant: String,
    /// agent, semantic_diff or flaky_analysis.
    #[arg(long, default_value = "agent")]
    pub kind: String,
    /// Wait for the job to end and exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub timeout_s: Option<u64>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// The job's spec as a JSON file, or `-` for standard input (semantic_diff and
    /// flaky_analysis jobs; an agent job's full spec with env and workdir).
    #[arg(long)]
    pub spec: Option<String>,
    /// The command to run and its arguments (agent jobs), after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The exit code for a job that ended (see the module's table); `None` while it has not.
pub fn exit_code(job: &Value) -> Option<u8> {
    let result = &job["result"];
    Some(match job["state"].as_str()? {
        "succeeded" if job["kind"] == "semantic_diff" && result["equal"] == false => 1,
        "succeeded" => 0,
        "failed" => {
            if let Some(code) = result["exit_code"].as_i64().filter(|c| *c != 0) {
                // Exit statuses are 0-255 on Unix; a wider one keeps its low byte, never 0.
                match (code & 0xff) as u8 {
                    0 => 1,
                    c => c,
                }
            } else if job["error"]["code"] == "timeout" {
                124
            } else if let Some(sig) = result["signal"].as_i64().filter(|s| (1..=127).contains(s)) {
                128 + sig as u8
            } else {
                125
            }
        }
        "dead" => 75,
        "cancelled" => 130,
        _ => return None,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn request(conn: &Conn, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let req = reqwest::Client::new().request(method, url);
    match token() {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// An error answer's message, as the other subcommands show it.
async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    format!("{status}: {msg}")
}

/// The job's spec: `--spec FILE` or `-` (standard input), or for an agent job the command.
fn spec(s: &SubmitArgs) -> Result<Value, String> {
    match (&s.spec, s.command.is_empty()) {
        (Some(_), false) => {
            Err("give the job either --spec or a command after `--`, not both".into())
        }
        (Some(src), true) => {
            let text = if src == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .map_err(|e| format!("--spec -: {e}"))?;
                t
            } else {
                std::fs::read_to_string(src).map_err(|e| format!("--spec {src}: {e}"))?
            };
            serde_json::from_str(&text).map_err(|e| format!("--spec {src}: not JSON: {e}"))
        }
        (None, false) if s.kind == "agent" => Ok(json!({ "command": s.command })),
        (None, false) => Err(format!(
            "a `{}` job takes its spec from --spec FILE (or - for standard input), not a command",
            s.kind
        )),
        (None, true) if s.kind == "agent" => {
            Err("give the command to run after `--` (or its spec with --spec FILE)".into())
        }
        (None, true) => Err(format!(
            "a `{}` job needs its spec: --spec FILE (or - for standard input)",
            s.kind
        )),
    }
}

/// `shoal jobs submit`.
pub fn submit(conn: &Conn, s: &SubmitArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(submit_and_wait(conn, s))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn submit_and_wait(conn: &Conn, s: &SubmitArgs) -> Result<u8, String> {
    let mut body = json!({"tenant": s.tenant, "kind": s.kind, "spec": spec(s)?});
    if let Some(k) = &s.idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    if let Some(p) = s.priority {
        body["priority"] = json!(p);
    }
    if let Some(t) = s.timeout_s {
        body["timeout_s"] = json!(t);
    }
    if let Some(m) = s.max_attempts {
        body["max_attempts"] = json!(m);
    }
    let resp = request(conn, reqwest::Method::POST, "/v1/jobs")
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach the scheduler at {}: {e}", conn.url))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let submitted: Value = resp.json().await.map_err(|e| e.to_string())?;
    let id = submitted["id"]
        .as_str()
        .ok_or("the scheduler answered without a job id")?
        .to_string();
    if !s.wait {
        if conn.json {
            println!("{}", json!({"id": id, "state": submitted["state"]}));
        } else {
            println!("{id}");
        }
        return Ok(0);
    }
    if !conn.json {
        println!("{id}");
        let _ = std::io::stdout().flush();
    }
    let job = wait(conn, &id).await?;
    let code = exit_code(&job).unwrap_or(1);
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
    } else {
        eprintln!(
            "shoal: job {id} {} (exit {code})",
            job["state"].as_str().unwrap_or("?")
        );
    }
    Ok(code)
}

/// Waits for the job to end, a minute-long `wait_s` at a time; tries again for a while when the
/// scheduler cannot be reached or is not ready.
pub async fn wait(conn: &Conn, id: &str) -> Result<Value, String> {
    let path = format!("/v1/jobs/{id}");
    let mut failures = 0u32;
    loop {
        let answer = request(conn, reqwest::Method::GET, &path)
            .query(&[("wait_s", "60")])
            .timeout(Duration::from_secs(90))
            .send()
            .await;
        let retry = match answer {
            Ok(resp) if resp.status().is_success() => {
                failures = 0;
                let job: Value = resp.json().await.map_err(|e| e.to_string())?;
                if exit_code(&job).is_some() {
                    return Ok(job);
                }
                continue;
            }
            Ok(resp) if resp.status().is_server_error() => refusal(resp).await,
            Ok(resp) => return Err(refusal(resp).await),
            Err(e) => format!("cannot reach the scheduler at {}: {e}", conn.url),
        };
        failures += 1;
        if failures > 30 {
            return Err(retry);
        }
        eprintln!("shoal: {retry}; trying again");
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
    }
}

/// `shoal jobs logs ID [--follow]`.
pub fn logs(conn: &Conn, id: &str, follow: bool) -> ExitCode {
    let run = async {
        let mut req = request(conn, reqwest::Method::GET, &format!("/v1/jobs/{id}/logs"));
        if follow {
            req = req.query(&[("follow", "true")]);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the scheduler at {}: {e}", conn.url))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            out.write_all(&chunk).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    };
    match runtime().and_then(|rt| rt.block_on(run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_has_its_exit_code() {
        let job = |state: &str, result: Value, error: Value| json!({"state": state, "kind": "agent", "result": result, "error": error});
        assert_eq!(
            exit_code(&job("succeeded", json!({"exit_code": 0}), Value::Null)),
            Some(0)
        );
        assert_eq!(
            exit_code(&job(
                "failed",
                json!({"exit_code": 3}),
                json!({"code": "exit_code"})
            )),
            Some(3)
        );
        assert_eq!(
            exit_code(&job("failed", json!({"exit_code": 256}), Value::Null)),
            Some(1)
        );
        assert_eq!(
            exit_code(&job("failed", json!({"exit_code": -1}), Value::Null)),
            Some(255)
        );
        assert_eq!(
            exit_code(&job(
                "failed",
                json!({"exit_code": null, "signal": 9}),
                json!({"code": "oom_killed"})
            )),
            Some(137)
        );
        assert_eq!(
            exit_code(&job(
                "failed",
                json!({"exit_code": null, "signal": 9}),
                json!({"code": "timeout"})
            )),
            Some(124)
        );
        assert_eq!(
            exit_code(&job("failed", Value::Null, json!({"code": "spawn_failed"}))),
            Some(125)
        );
        assert_eq!(exit_code(&job("dead", Value::Null, Value::Null)), Some(75));
        assert_eq!(
            exit_code(&job("cancelled", Value::Null, Value::Null)),
            Some(130)
        );
        assert_eq!(exit_code(&job("running", Value::Null, Value::Null)), None);
        assert_eq!(exit_code(&job("queued", Value::Null, Value::Null)), None);
        let diff = |equal: bool| json!({"state": "succeeded", "kind": "semantic_diff", "result": {"equal": equal}});
        assert_eq!(
            (exit_code(&diff(true)), exit_code(&diff(false))),
            (Some(0), Some(1))
        );
    }
}

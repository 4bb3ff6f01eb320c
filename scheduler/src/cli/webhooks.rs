//! `shoal webhooks`: endpoints and their deliveries.

use super::{Conn, call, pretty, rows_of, s, table};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Clone)]
pub enum WebhooksCommand {
    /// The endpoints the token may see.
    List,
    /// Create an endpoint; prints its secret, shown this once.
    Create {
        /// Where to send events (http or https).
        #[arg(value_name = "URL")]
        target: String,
        /// An event type to send (repeat for several); every type when absent.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete an endpoint.
    Delete { id: String },
    /// An endpoint's deliveries, newest first.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub(super) fn webhooks(conn: &Conn, command: Option<WebhooksCommand>) -> Result<String, String> {
    use reqwest::Method;
    let endpoint_row = |w: &Value| {
        let events = w["events"]
            .as_array()
            .map(|e| e.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        vec![
            s(&w["id"]),
            // A platform-wide endpoint hears every tenant.
            if w["tenant"].is_null() {
                "*".into()
            } else {
                s(&w["tenant"])
            },
            events,
            s(&w["url"]),
        ]
    };
    const ENDPOINT_COLS: [&str; 4] = ["WEBHOOK", "TENANT", "EVENTS", "URL"];
    match command.unwrap_or(WebhooksCommand::List) {
        WebhooksCommand::List => {
            let (v, _) = call(conn, Method::GET, "/v1/webhooks", &[], None)?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let rows: Vec<Vec<String>> = rows_of(&v["webhooks"], endpoint_row);
            Ok(table(&ENDPOINT_COLS, &rows))
        }
        WebhooksCommand::Create {
            target,
            events,
            tenant,
        } => {
            let mut body = serde_json::json!({"url": target});
            if !events.is_empty() {
                body["events"] = serde_json::json!(events);
            }
            if let Some(t) = tenant {
                body["tenant"] = Value::String(t);
            }
            let (v, _) = call(conn, Method::POST, "/v1/webhooks", &[], Some(body))?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let mut out = table(&ENDPOINT_COLS, &[endpoint_row(&v)]);
            out.push_str(&format!(
                "\nsecret: {}   (shown this once: keep it to verify signatures)\n",
                s(&v["secret"])
            ));
            Ok(out)
        }
        WebhooksCommand::Delete { id } => {
            call(
                conn,
                Method::DELETE,
                &format!("/v1/webhooks/{id}"),
                &[],
                None,
            )?;
            if conn.json {
                return Ok(pretty(&serde_json::json!({"deleted": id})));
            }
            Ok(format!("webhook {id} deleted\n"))
        }
        WebhooksCommand::Deliveries { id, limit } => {
            let (v, _) = call(
                conn,
                Method::GET,
                &format!("/v1/webhooks/{id}/deliveries"),
                &[("limit", limit.to_string())],
                None,
            )?;
            if conn.json {
                return Ok(pretty(&v));
            }
            let rows: Vec<Vec<String>> = rows_of(&v["deliveries"], |d| {
                vec![
                    s(&d["id"]),
                    s(&d["type"]),
                    s(&d["state"]),
                    s(&d["attempts"]),
                    s(&d["last_status"]),
                    s(&d["next_attempt_at"]),
                ]
            });
            Ok(table(
                &[
                    "EVENT",
                    "TYPE",
                    "STATE",
                    "ATTEMPTS",
                    "LAST STATUS",
                    "NEXT ATTEMPT",
                ],
                &rows,
            ))
        }
    }
}

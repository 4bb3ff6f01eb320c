//! Retention: the leader exports finished jobs, operators' events and spent webhook deliveries
//! older than `retention` to `<data-dir>/export/YYYY-MM-DD.ndjson` (one file per day of the
//! records' own times, appended to) and then deletes them, batch by batch. A batch is written and
//! synced to disk before its delete commits, so a crash in between exports it twice, never loses
//! it; each line carries the record's stable id to tell the copies apart. The usage ledger, usage
//! events and the audit log are kept (`shoal_store::retention` says exactly what goes).

use crate::control::Control;
use crate::state::{App, now_ms};
use crate::views::rfc3339;
use serde_json::{Value, json};
use shoal_core::Millis;
use shoal_core::audit::Actor;
use shoal_store::{Deleted, Expired, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Rows of each kind one batch takes at most.
const BATCH: u32 = 500;

/// What stopped a retention pass.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export {path}: {source}")]
    Export {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How often the leader looks for aged-out rows: half the retention, between 1 s and 10 min.
pub fn pass_every(keep: Duration) -> Duration {
    (keep / 2).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Runs retention passes while this replica leads, until shutdown; nothing when `retention` is
/// `off`.
pub async fn run(app: Arc<App>, control: Arc<Control>) {
    let Some(keep) = app.cfg.retention else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pass_every(keep)) => {}
            _ = app.shutdown.cancelled() => return,
        }
        if !control.leads() {
            continue;
        }
        match pass(&app, keep, now_ms()).await {
            Ok(n) if n != Deleted::default() => tracing::info!(
                jobs = n.jobs,
                events = n.events,
                deliveries = n.deliveries,
                outbox = n.outbox,
                "retention exported and deleted aged-out records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

/// One pass at `now`: exports and deletes everything older than `keep`, batch by batch.
pub async fn pass(app: &App, keep: Duration, now: Millis) -> Result<Deleted, RetentionError> {
    let keep_ms = Millis::try_from(keep.as_millis()).unwrap_or(Millis::MAX);
    let cutoff = now.saturating_sub(keep_ms);
    let dir = app.cfg.data_dir.join("export");
    let mut total = Deleted::default();
    loop {
        let batch = app.store.expired(cutoff, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let lines = export_lines(&batch);
        let to = dir.clone();
        let files = tokio::task::spawn_blocking(move || write_export(&to, &lines))
            .await
            .unwrap_or_else(|e| {
                Err(RetentionError::Export {
                    path: dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        let detail = json!({
            "cutoff": rfc3339(cutoff),
            "jobs": batch.jobs.len(),
            "events": batch.events.len(),
            "deliveries": batch.deliveries.len(),
            "outbox": batch.outbox.len(),
            "files": files,
        });
        let audit = shoal_store::audit::entry(
            &Actor::system("retention"),
            "retention.run",
            "store",
            detail,
            now,
        );
        let n = app.store.delete_expired(&batch, cutoff, &audit).await?;
        total.jobs += n.jobs;
        total.events += n.events;
        total.deliveries += n.deliveries;
        total.outbox += n.outbox;
        let full = [
            batch.jobs.len(),
            batch.events.len(),
            batch.deliveries.len(),
            batch.outbox.len(),
        ]
        .iter()
        .any(|&l| l >= BATCH as usize);
        // A batch that deleted nothing (every row changed under it) or was not full ends the
        // pass; the next pass takes what is left.
        if !full || n == Deleted::default() {
            break;
        }
    }
    Ok(total)
}

/// One export line per record, with the day file it belongs to: `{"type", "id", "at",
/// "record"}`, `at` the time the record is filed under.
fn export_lines(b: &Expired) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(b.len());
    let mut push = |kind: &str, id: String, at: Millis, record: Value| {
        let line = json!({"type": kind, "id": id, "at": rfc3339(at), "record": record});
        out.push((day(at), line.to_string()));
    };
    for j in &b.jobs {
        let at = j.finished_at.unwrap_or(j.created_at);
        push("job", j.id.clone(), at, json!(j));
    }
    for e in &b.events {
        push("event", e.seq.to_string(), e.at, json!(e));
    }
    for d in &b.deliveries {
        push("delivery", d.seq.to_string(), d.created_at, json!(d));
    }
    for o in &b.outbox {
        push("outbox_event", o.id.clone(), o.created_at, json!(o));
    }
    out
}

/// `YYYY-MM-DD` (UTC) of `at`.
fn day(at: Millis) -> String {
    rfc3339(at).chars().take(10).collect()
}

/// Appends `lines` to their day files under `dir` and syncs them; returns the files' names.
fn write_export(dir: &Path, lines: &[(String, String)]) -> Result<Vec<String>, RetentionError> {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RetentionError::Export { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut by_day: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (d, l) in lines {
        by_day.entry(d).or_default().push(l);
    }
    let mut files = Vec::new();
    for (d, ls) in by_day {
        let name = format!("{d}.ndjson");
        let path = dir.join(&name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let mut buf = String::new();
        for l in ls {
            buf.push_str(l);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        files.push(name);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_come_often_enough_for_short_retentions_and_rarely_for_long_ones() {
        assert_eq!(pass_every(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(pass_every(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(
            pass_every(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn records_are_filed_under_their_own_day() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(86_400_000 - 1), "1970-01-01");
        assert_eq!(day(86_400_000), "1970-01-02");
    }
}

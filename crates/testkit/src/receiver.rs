//! A webhook receiver for tests and benchmarks: an HTTP server on a spare loopback port that
//! records every request it gets (path, Standard Webhooks headers, body, the status it answered)
//! and refuses the first `refuse_first` attempts of each message (by path and `webhook-id`),
//! answering 503 then 500, before it accepts with 204.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request's path (tests give each endpoint its own).
    pub path: String,
    /// The `webhook-id` header.
    pub id: String,
    /// The `webhook-timestamp` header.
    pub timestamp: String,
    /// The `webhook-signature` header.
    pub signature: String,
    /// The request's body.
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
    /// When it arrived, by the test's monotonic clock.
    pub at: Instant,
    /// Wall-clock milliseconds since the Unix epoch, to compare with the scheduler's times.
    pub at_ms: i64,
}

#[derive(Default)]
struct Log {
    all: Vec<Received>,
    attempts: HashMap<(String, String), u32>,
}

struct Shared {
    refuse_first: u32,
    log: Mutex<Log>,
    changed: tokio::sync::Notify,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`; endpoints are this plus a path.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    let mut log = shared.log.lock().unwrap_or_else(|e| e.into_inner());
    let n = log
        .attempts
        .entry((uri.path().to_string(), id.clone()))
        .or_default();
    *n += 1;
    let status = match *n {
        n if n > shared.refuse_first => StatusCode::NO_CONTENT,
        1 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    log.all.push(Received {
        path: uri.path().to_string(),
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        status: status.as_u16(),
        at: Instant::now(),
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    });
    drop(log);
    shared.changed.notify_waiters();
    status
}

impl Receiver {
    /// Starts a receiver that refuses the first `refuse_first` attempts of every message.
    pub async fn start(refuse_first: u32) -> anyhow::Result<Receiver> {
        let shared = Arc::new(Shared {
            refuse_first,
            log: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, shared, task })
    }

    /// Every request so far, in the order they came.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone()
    }

    /// How many requests were accepted (2xx) so far.
    pub fn accepted(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .iter()
            .filter(|r| r.status < 300)
            .count()
    }

    /// Waits until `done` holds for what was received, or `timeout` passes; `false` then.
    pub async fn wait_until(
        &self,
        timeout: std::time::Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.check(&mut done) {
                return true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return self.check(&mut done),
            }
        }
    }
}

impl Receiver {
    fn check(&self, done: &mut impl FnMut(&[Received]) -> bool) -> bool {
        done(
            &self
                .shared
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .all,
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback HTTP server that counts the requests it answers (each with an empty 200, then
/// closes), for a job that calls out once per run; answers its port.
pub async fn count_calls(calls: Arc<std::sync::atomic::AtomicUsize>) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                if conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    Ok(port)
}

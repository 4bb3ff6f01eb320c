//! Starting while a dependency is down: `shoal serve` binds its port first and, until its
//! database (and Redis, when configured) answer, serves a waiting room there: `/healthz` says the
//! process is alive, `/readyz` answers 503 with the reason, every other path 503. Each connection
//! is retried with backoff (`backon`), for as long as it takes; the process never exits for an
//! unreachable dependency, only for a stop signal (ADR 0023).

use crate::error::ApiError;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use backon::BackoffBuilder;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first wait between two tries to reach a dependency.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// The longest one try to reach a dependency may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The stop signal, boxed so it can be awaited in several places.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The waiting room served while dependencies are unreachable.
pub struct WaitingRoom {
    reason: Arc<Mutex<String>>,
    server: tokio::task::JoinHandle<()>,
    closing: tokio_util::sync::CancellationToken,
}

impl WaitingRoom {
    /// Serves the waiting room on `listener` (a clone of the socket the API is served on later:
    /// connections that arrive while the two swap wait in the socket's queue).
    pub fn open(listener: std::net::TcpListener) -> std::io::Result<WaitingRoom> {
        let reason = Arc::new(Mutex::new("starting".to_string()));
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (r1, r2) = (Arc::clone(&reason), Arc::clone(&reason));
        let not_ready = move |r: &Arc<Mutex<String>>| {
            let reason = r.lock().unwrap_or_else(|e| e.into_inner()).clone();
            ApiError::unavailable(reason).into_response()
        };
        let fallback = not_ready;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || async move { not_ready(&r1) }))
            .fallback(move || async move { fallback(&r2) })
            // No connection outlives the room: a client's next request opens a new one, which
            // the API answers once it has the socket.
            .layer(axum::middleware::map_response(
                |mut r: axum::response::Response| async move {
                    r.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    r
                },
            ));
        let closing = tokio_util::sync::CancellationToken::new();
        let closed = closing.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { closed.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the waiting room's server ended");
            }
        });
        Ok(WaitingRoom {
            reason,
            server,
            closing,
        })
    }

    /// Says why the scheduler is not ready (what `/readyz` answers).
    pub fn set_reason(&self, reason: impl Into<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
    }

    /// Stops serving the waiting room (the API takes the socket over): no new connection is
    /// accepted and the requests under way are answered before it returns, so a request that
    /// arrives during the swap is answered by one or the other, not dropped. A client that holds
    /// its connection open past a second is cut off.
    pub async fn close(mut self) {
        self.closing.cancel();
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
            let _ = self.server.await;
        }
    }

    /// Runs `connect` until it succeeds, waiting with exponential backoff and jitter between
    /// tries and showing the last error as the reason on `/readyz`. `None` when `stop` fired
    /// first.
    pub async fn until_up<T, F, Fut>(
        &self,
        what: &str,
        stop: &mut Stop,
        mut connect: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut waits = backon::ExponentialBuilder::default()
            .with_min_delay(FIRST_RETRY)
            .with_max_delay(MAX_RETRY)
            .without_max_times()
            .with_jitter()
            .build();
        let mut tries = 0u64;
        self.set_reason(format!("waiting for the {what} (connecting)"));
        loop {
            // A client may retry inside one attempt (a pool keeps trying for its acquire
            // timeout): bound each attempt so the reason shown stays current.
            let attempt = tokio::select! {
                r = tokio::time::timeout(ATTEMPT_TIMEOUT, connect()) => r.unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("no answer within {ATTEMPT_TIMEOUT:?}"))
                }),
                _ = &mut *stop => return None,
            };
            match attempt {
                Ok(v) => {
                    if tries > 0 {
                        tracing::info!(tries, "the {what} answers");
                    }
                    return Some(v);
                }
                Err(e) => {
                    tries += 1;
                    let wait = waits.next().unwrap_or(MAX_RETRY);
                    let reason = format!("the {what} is unreachable (retrying): {e:#}");
                    tracing::warn!(tries, ?wait, error = %format!("{e:#}"), "the {what} is unreachable; retrying");
                    self.set_reason(reason);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut *stop => return None,
                    }
                }
            }
        }
    }
}

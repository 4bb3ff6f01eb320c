//! Logs and traces of `shoal serve`: text or JSON lines on stdout (no ANSI colour unless stdout is
//! a terminal), and OpenTelemetry spans exported by OTLP over HTTP/protobuf when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. With neither
//! set no exporter, no OpenTelemetry layer and no background thread exist: the spans are plain
//! `tracing` spans (docs/adr/0008-shipping.md).
//!
//! The spans an operator can follow a job by: `admission` (enqueue), `lease` (an agent takes a
//! job), `completion` (an agent reports it), `planning_pass` (one pass of the control loop) and
//! `provider_call` (one call to the sandbox provider), each with the tenant, job or sandbox id it
//! concerns.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields.message`, `target`, and the fields
    /// of the spans it happened in (`span`, `spans`).
    Json,
}

/// What must outlive the program's work: flushes the span exporter when dropped.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("shoal: flushing traces failed: {e}");
        }
    }
}

/// Whether spans are to be exported: an OTLP endpoint is configured.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber. Call before any async runtime exists (the exporter's HTTP
/// client runs on its own thread) and keep the guard until the runtime is gone.
pub fn init(format: LogFormat) -> Guard {
    let _ = FORMAT.set(format);
    // sqlx reports every Postgres notice (`relation ... already exists, skipping`) at INFO; they
    // are the database's chatter, not Shoal's, and stay out unless RUST_LOG names them.
    let mut spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    if !spec.contains("sqlx::postgres::notice") {
        spec.push_str(",sqlx::postgres::notice=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("shoal: RUST_LOG `{spec}`: {e}; logging at info");
        tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn")
    });
    let ansi = std::io::stdout().is_terminal();
    let (provider, otel) = match otlp_configured().then(tracer_provider) {
        Some(Ok(p)) => {
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            let layer = tracing_opentelemetry::layer().with_tracer(p.tracer("shoal"));
            (Some(p), Some(layer))
        }
        Some(Err(e)) => {
            eprintln!("shoal: traces are not exported: {e}");
            (None, None)
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stdout)
                    .with_ansi(ansi)
                    .with_target(false),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stdout)
                    .with_ansi(false)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
    }
    Guard { provider }
}

/// The OTLP/HTTP exporter (protobuf), configured by the standard `OTEL_*` variables, behind a
/// batch processor.
fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("shoal")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether spans go to an OTLP exporter (set once by [`init`]).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Puts `span` into the trace of job `job_id`: its parent becomes a remote span context whose
/// trace id (and span id) are derived from the job id, so the spans of one job (its admission,
/// each lease, each completion), made on any replica at any time, share one trace without any
/// state carried between them. Call it before the span is first entered (an entered span has
/// started and keeps its parent). Does nothing when no exporter is configured.
pub fn join_job_trace(span: &tracing::Span, job_id: &str) {
    join_trace(span, job_id);
}

/// Puts `span` (a provider call about one sandbox) into that sandbox's trace, derived from its id
/// as a job's is: the calls that created, started, stopped and destroyed it form one trace, which
/// each lease span of a job run on it links to ([`link_sandbox_trace`]).
pub fn join_sandbox_trace(span: &tracing::Span, sandbox_id: &str) {
    join_trace(span, sandbox_id);
}

/// Links `span` (a job's lease) to the trace of the sandbox that took it.
pub fn link_sandbox_trace(span: &tracing::Span, sandbox_id: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        span.add_link(derived_context(sandbox_id));
    }
}

fn join_trace(span: &tracing::Span, id: &str) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let parent = derived_context(id);
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

fn derived_context(id: &str) -> opentelemetry::trace::SpanContext {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let ids = trace_ids(id);
    SpanContext::new(
        TraceId::from_bytes(ids.0),
        SpanId::from_bytes(ids.1),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// The trace id and the parent span id of the trace of a job or a sandbox `id`: the first 16 and
/// the next 8 bytes of SHA-256 of the id (never all zero in practice; OpenTelemetry treats zero
/// as invalid).
pub fn trace_ids(id: &str) -> ([u8; 16], [u8; 8]) {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&h[..16]);
    span.copy_from_slice(&h[16..24]);
    (trace, span)
}

/// Whether logs are JSON lines (then the start banner is a log event too).
pub fn json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// A database or Redis URL with its password replaced by `***`, fit for a log line.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_from_urls() {
        assert_eq!(
            redact_url("postgres://shoal:s3cret@db:5432/shoal?sslmode=require"),
            "postgres://shoal:***@db:5432/shoal?sslmode=require"
        );
        assert_eq!(redact_url("postgres://shoal@db/x"), "postgres://shoal@db/x");
        assert_eq!(
            redact_url("sqlite:///var/lib/shoal/shoal.db"),
            "sqlite:///var/lib/shoal/shoal.db"
        );
        assert_eq!(redact_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}

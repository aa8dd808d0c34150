//! Logs and metrics of the server commands: the log format
//! (`QUOTA_LOG_FORMAT`), the filter (`QUOTA_LOG`), and the Prometheus
//! endpoint of `--metrics-addr`.

use crate::cli::{LogFormat, MetricsAddr};
use anyhow::{Context, Result, anyhow};
use quota_telemetry::exporter::{self, Sampler};
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;

/// Sends log lines to stderr as `format` says, filtered by `QUOTA_LOG`
/// (default `info`). JSON lines carry the current span's fields (`span`)
/// and every enclosing span (`spans`): a request's id and route or method.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("QUOTA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The one line a failed command ends with: plain text, or a JSON log
/// object when every line must be one.
pub fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => tracing::error!("{message}"),
    }
}

/// The metrics listener, bound with the others (before the database is
/// opened) so that a bad or busy address fails at once; `None` when
/// `--metrics-addr` is unset or empty.
pub async fn bind_metrics(args: &MetricsAddr) -> Result<Option<TcpListener>> {
    let Some(addr) = args.metrics_addr.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr:?}"))?;
    Ok(Some(listener))
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `listener`
/// until `shutdown`; `sample` runs before each scrape. Announced as
/// `metrics listening on http://ADDR/metrics`.
pub fn serve_metrics<S>(
    listener: Option<TcpListener>,
    sample: impl Fn() -> S + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<JoinHandle<std::io::Result<()>>>>
where
    S: Future<Output = ()> + Send + 'static,
{
    let Some(listener) = listener else {
        return Ok(None);
    };
    let handle =
        exporter::install().map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))?;
    tracing::info!(
        "metrics listening on http://{}/metrics",
        listener.local_addr()?
    );
    let sample: Sampler = Arc::new(move || Box::pin(sample()));
    Ok(Some(tokio::spawn(exporter::serve(
        listener, handle, sample, shutdown,
    ))))
}

//! The Prometheus recorder and the `GET /metrics` server of `--metrics-addr`.
//!
//! [`install`] makes the recorder the process's own (once per process); from
//! then on every function of [`crate::metrics`] records. [`serve`] answers
//! scrapes on a listener the caller bound, until its shutdown future resolves.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Installs the Prometheus recorder for the whole process and describes
/// every metric. Both duration metrics are histograms with
/// [`crate::metrics::DURATION_BUCKETS`]. Fails if a recorder is already installed.
///
/// From then on [`crate::metrics`] keeps the handle of each series it
/// records. No idle timeout is set, so no series is ever dropped from the
/// registry behind a kept handle.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            crate::metrics::DURATION_BUCKETS,
        )?
        .install_recorder()?;
    crate::metrics::describe();
    crate::metrics::keep_handles();
    Ok(handle)
}

/// What runs just before each scrape renders: sampling of gauges that are
/// read rather than counted (database pool sizes, live holds). The scrape
/// waits for the future it returns.
pub type Sampler = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Serves `GET /metrics` (the Prometheus text format) on `listener` until
/// `shutdown` resolves. `sample` runs before each scrape.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    sample: Sampler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle, sample))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The scrape endpoint alone, for tests and for serving it elsewhere.
pub fn router(handle: PrometheusHandle, sample: Sampler) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let sample = sample.clone();
                async move {
                    sample().await;
                    handle.run_upkeep();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "not found: scrape /metrics\n").into_response()
        })
}

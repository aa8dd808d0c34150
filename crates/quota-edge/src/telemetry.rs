//! The edge's outer layers: request ids, one span and one log line per
//! request, and the REST metrics.
//!
//! Applied with `Router::layer`, so they see the matched route template
//! (`MatchedPath`), and outside CORS, so that preflights and every refusal
//! carry the request id, are logged and are counted.

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::Response;
use http::Method;
use pin_project_lite::pin_project;
use quota_telemetry::{metrics, request_id};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::layer::util::Stack;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, DefaultOnRequest};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

/// The internal detail of a failed request, put in the response's
/// extensions by the error that made it and logged once by [`AccessLog`],
/// in the request's span. It never reaches the client.
#[derive(Clone, Debug)]
pub(crate) struct InternalDetail(pub(crate) String);

/// The telemetry layers, outermost first: a caller's valid `X-Request-Id`
/// kept (or a UUID v4 made) and returned on the response; the request's
/// span and access log line; the metrics. The router adds the rest of its
/// layers to this builder, so that a route's whole stack is one service:
/// axum boxes each `Router::layer` apart, and clones every box of the
/// stack for every request.
pub(crate) fn layers() -> Layers {
    request_id::layers::<Body>()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan)
                .on_response(AccessLog)
                .on_failure(()),
        )
        .layer(RecordLayer)
}

/// The type of [`layers`].
pub(crate) type Layers = ServiceBuilder<
    Stack<
        RecordLayer,
        Stack<
            TraceLayer<
                SharedClassifier<ServerErrorsAsFailures>,
                RequestSpan,
                DefaultOnRequest,
                AccessLog,
                DefaultOnBodyChunk,
                DefaultOnEos,
                (),
            >,
            request_id::Stacked<Body>,
        >,
    >,
>;

/// The route template of a request, or [`metrics::UNKNOWN_ROUTE`].
fn route_of<B>(request: &http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(metrics::UNKNOWN_ROUTE, MatchedPath::as_str)
}

/// `http{method=GET route=/v1/dashboard/billing/subscription request_id=...}`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        // Displayed, not debugged: a template and an id of visible ASCII
        // need no quotes or escapes, and span fields are formatted for
        // every request.
        tracing::info_span!(
            "http",
            method = %request.method(),
            route = %route_of(request),
            request_id = %request_id::of(request),
        )
    }
}

/// One line per request, in its span: `debug` for an answer below 400 (a
/// read served: at `info` that line alone costs a cached read a sixth of
/// its throughput), `info` for a refusal (401, 404, 429, ...), `error`
/// (500) or `warn` (503, 504) with the internal detail when there is one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessLog;

impl<B> OnResponse<B> for AccessLog {
    fn on_response(self, response: &http::Response<B>, latency: Duration, _: &Span) {
        let status = response.status().as_u16();
        let latency_ms = quota_telemetry::latency_ms(latency);
        match response.extensions().get::<InternalDetail>() {
            Some(InternalDetail(detail)) if status == 500 => {
                tracing::error!(status, latency_ms, %detail, "request failed");
            }
            // 503 and 504: the service or its database is away; not a bug here.
            Some(InternalDetail(detail)) => {
                tracing::warn!(status, latency_ms, %detail, "request failed");
            }
            None if status < 400 => tracing::debug!(status, latency_ms, "request finished"),
            None => tracing::info!(status, latency_ms, "request finished"),
        }
    }
}

/// Counts every request by route template, method and status, and times it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordLayer;

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record { inner }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Record<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Record<S>
where
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Recorded<S::Future> {
        Recorded {
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: request.method().clone(),
            start: Instant::now(),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`Record`].
    pub(crate) struct Recorded<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        method: Method,
        start: Instant,
    }
}

impl<F, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this
                .route
                .as_ref()
                .map_or(metrics::UNKNOWN_ROUTE, MatchedPath::as_str);
            metrics::http_request(route, this.method, response.status(), this.start.elapsed());
        }
        Poll::Ready(result)
    }
}

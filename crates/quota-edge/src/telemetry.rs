//! The edge's outer layers: the headers measured as they came (for the
//! header bound), request ids, one span and one log line per request, and
//! the REST metrics.
//!
//! Applied with `Router::layer`, so they see the matched route template
//! (`MatchedPath`), and outside CORS, so that preflights and every refusal
//! carry the request id, are logged and are counted.

use crate::limits::HeadersLayer;
use axum::extract::MatchedPath;
use axum::response::Response;
use http::Method;
use pin_project_lite::pin_project;
use quota_telemetry::metrics;
use quota_telemetry::request_id::{self, RequestIdLayer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service, ServiceBuilder};
use tracing::Span;

/// The internal detail of a failed request, put in the response's
/// extensions by the error that made it and logged once by [`access_line`],
/// in the request's span. It never reaches the client.
#[derive(Clone, Debug)]
pub(crate) struct InternalDetail(pub(crate) String);

/// The telemetry layers, outermost first: the request's headers measured
/// as they came, for the header bound ([`crate::limits::HeadersLayer`]);
/// a caller's valid `X-Request-Id`
/// kept (or a UUID v4 made) and returned on the response; then, in one
/// layer ([`ObserveLayer`]), the request's span, its access line and its
/// metrics. The router adds the rest of its layers to this builder, so that
/// a route's whole stack is one service: axum boxes each `Router::layer`
/// apart, and clones every box of the stack for every request.
pub(crate) fn layers() -> Layers {
    ServiceBuilder::new()
        .layer(HeadersLayer)
        .layer(RequestIdLayer)
        .layer(ObserveLayer)
}

/// The type of [`layers`].
pub(crate) type Layers =
    ServiceBuilder<Stack<ObserveLayer, Stack<RequestIdLayer, Stack<HeadersLayer, Identity>>>>;

/// The route template a request matched, or [`metrics::UNKNOWN_ROUTE`].
fn route_name(route: Option<&MatchedPath>) -> &str {
    route.map_or(metrics::UNKNOWN_ROUTE, MatchedPath::as_str)
}

/// The span of a request:
/// `http{method=GET route=/v1/dashboard/billing/subscription request_id=...}`.
fn request_span<B>(request: &http::Request<B>, route: Option<&MatchedPath>) -> Span {
    // Displayed, not debugged: a template and an id of visible ASCII need
    // no quotes or escapes, and span fields are formatted for every
    // request.
    tracing::info_span!(
        "http",
        // A method is any token a client sends, a key included.
        method = %quota_telemetry::redact::keys(request.method().as_str()),
        route = %route_name(route),
        request_id = %request_id::of(request),
    )
}

/// The one line of a request, written in its span: `debug` for an answer
/// below 400 (a read served: at `info` that line alone costs a cached read
/// a sixth of its throughput), `info` for a refusal (401, 404, 429, ...),
/// `error` (500) or `warn` (503, 504) with the internal detail when there
/// is one.
fn access_line(response: &Response, latency: Duration) {
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

/// A request's span, access line and metrics, in one layer and from one
/// clock: the span is made with the request and entered whenever the
/// request is worked on (the service's own lines land in it); when the
/// response is ready, its line is written ([`access_line`]) and it is
/// counted and timed ([`metrics::http_request`]). The response body is left
/// as it is: every body here is whole when the response is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Observe<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Observed<S::Future> {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let span = request_span(&request, route.as_ref());
        let method = request.method().clone();
        let start = Instant::now();
        let inner = span.in_scope(|| self.inner.call(request));
        Observed {
            inner,
            span,
            route,
            method,
            start,
        }
    }
}

pin_project! {
    /// The response future of [`Observe`].
    pub(crate) struct Observed<F> {
        #[pin]
        inner: F,
        span: Span,
        route: Option<MatchedPath>,
        method: Method,
        start: Instant,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _in_span = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let latency = this.start.elapsed();
            access_line(response, latency);
            let route = route_name(this.route.as_ref());
            metrics::http_request(route, this.method, response.status(), latency);
        }
        Poll::Ready(result)
    }
}

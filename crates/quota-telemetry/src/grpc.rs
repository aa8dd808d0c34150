//! The gRPC server's layers: a request id for every call, one span per call
//! carrying it and the method, and one record per call (a log line with the
//! status code and the metrics) when its status is known.
//!
//! [`server_layers`] is the stack, outermost first; a server adds it with
//! `tonic::transport::Server::builder().layer(server_layers())`.

use crate::metrics;
use crate::request_id::{self, RequestIdLayer};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service, ServiceBuilder};
use tracing::Span;

/// The type of [`server_layers`].
pub type ServerLayers = ServiceBuilder<Stack<RecordCallsLayer, Stack<RequestIdLayer, Identity>>>;

/// The telemetry layers of the gRPC server, outermost first: a caller's
/// `x-request-id` kept (or made) and returned; a span per call
/// ([`call_span`]) and one record per call ([`RecordCallsLayer`]). Failures
/// are not logged here: the service logs an internal error once, with its
/// detail, inside the span, and the record line gives the code.
pub fn server_layers() -> ServerLayers {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(RecordCallsLayer)
}

/// The span of one gRPC call: `grpc{method=/quota.v1.QuotaService/Consume request_id=...}`.
pub fn call_span<B>(request: &Request<B>) -> Span {
    // Displayed, not debugged: a method path and an id of visible ASCII
    // need no quotes or escapes, and span fields are formatted for every
    // call.
    tracing::info_span!(
        "grpc",
        method = %crate::redact::keys(request.uri().path()),
        request_id = %request_id::of(request),
    )
}

/// Makes the span of every call ([`call_span`]), entered while the call is
/// worked on (the service's own lines land in it), and records every call
/// once its status is known: the counter and histogram of
/// [`metrics::grpc_request`] and one line with the code and the time taken,
/// in the call's span (`debug` for OK, `info` otherwise). One clock reading
/// at each end.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordCallsLayer;

impl<S> Layer<S> for RecordCallsLayer {
    type Service = RecordCalls<S>;

    fn layer(&self, inner: S) -> RecordCalls<S> {
        RecordCalls { inner }
    }
}

/// The service of [`RecordCallsLayer`].
#[derive(Clone, Debug)]
pub struct RecordCalls<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RecordCalls<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = RecordedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let span = call_span(&request);
        // A clone of the URI's own bytes (a reference count), not a copy.
        let method = request.uri().path_and_query().cloned();
        let start = Instant::now();
        let inner = span.in_scope(|| self.inner.call(request));
        RecordedFuture {
            inner,
            call: Some(Call {
                method,
                start,
                span,
                done: false,
            }),
        }
    }
}

/// One call in flight. Recorded once: when its status arrives, or as
/// CANCELLED if it is dropped before (the caller went away).
#[derive(Debug)]
struct Call {
    method: Option<PathAndQuery>,
    start: Instant,
    span: Span,
    done: bool,
}

impl Call {
    fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        self.done = true;
        let took = self.start.elapsed();
        let method = self.method.as_ref().map_or("", PathAndQuery::path);
        metrics::grpc_request(method, code, took);
        let latency_ms = crate::latency_ms(took);
        let code_name = metrics::code_name(code);
        // An answered call is `debug` (at `info` that line alone costs a
        // cached read a sixth of its throughput); any other code is `info`.
        // Inside the call's span, entered only when the line is wanted: the
        // line of an answered call is usually filtered out, and entering
        // costs as much as a line filtered out saves. (With the span as the
        // line's parent but not entered, JSON lines showed it as `span`
        // and left `spans` empty.)
        if code == tonic::Code::Ok {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let _in = self.span.enter();
                tracing::debug!(code = code_name, latency_ms, "call finished");
            }
        } else {
            let _in = self.span.enter();
            tracing::info!(code = code_name, latency_ms, "call finished");
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.record(tonic::Code::Cancelled);
        }
    }
}

/// The status in `grpc-status`, if the headers (or trailers) carry one.
fn status_in(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code: i32 = value.to_str().ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(code))
}

pin_project! {
    /// The response future of [`RecordCalls`].
    pub struct RecordedFuture<F> {
        #[pin]
        inner: F,
        // Some until the call's response arrives: its span is entered
        // whenever the call is polled.
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for RecordedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<RecordedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _in_span = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A call refused at once answers "trailers-only": the status is
                // in the headers. Otherwise it comes in the trailers.
                let call = match (status_in(response.headers()), call) {
                    (Some(code), Some(call)) => {
                        call.finish(code);
                        None
                    }
                    (_, call) => call,
                };
                Ok(response.map(|inner| RecordedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.finish(tonic::Code::Unknown);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body of [`RecordCalls`]: records the call at its trailers.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: http_body::Body> http_body::Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.finish(status_in(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Some(Err(_)) | None => {
                if let Some(call) = this.call.take() {
                    call.finish(tonic::Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

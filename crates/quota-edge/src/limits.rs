//! Bounds on what a request may carry and on how many are served at once.
//!
//! Oversized input is refused with the status HTTP has for it, in the edge's
//! JSON shape: 414 for a long URI, 431 for large headers, 413 for a large
//! body, 408 for a body that takes too long. Past [`HTTP_BUFFER_BYTES`]
//! hyper itself refuses the head with a bare 431 before the router sees it.
//! Past the concurrency limit a request is answered at once with 503 and
//! `Retry-After: 1`, never queued.

use crate::error::EdgeError;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// How long a request's body may take to arrive (408 beyond). A body is
/// read before its request takes a permit of the concurrency limit, so a
/// slow one holds back no other request, only its own connection, and for
/// no longer than this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection without TLS may stay silent before its first byte
/// (a TLS handshake has as long). Past it the connection is closed: the
/// server reads the first bytes to tell HTTP/1.1 from HTTP/2 with no time
/// limit of its own, and hyper's on a request head starts at its first byte.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a URI may hold (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most all request headers together may hold, counted as HTTP/1.1
/// writes them (`name: value\r\n`); 431 beyond.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most a request body may hold (413 beyond). No route takes a body,
/// but one sent anyway is read, within this bound, and dropped.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest `Authorization` value the edge forwards: a key is 51
/// characters, so anything far longer is refused as malformed (401) at the
/// edge, before any call to the gRPC service.
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;
/// The HTTP server's read buffer for a request head (HTTP/1.1) and its header
/// list limit (HTTP/2): large enough that every head up to the bounds above,
/// and well past them, reaches [`bounds`] and gets a JSON answer.
pub const HTTP_BUFFER_BYTES: usize = 64 * 1024;
/// Requests in flight per process when `--max-concurrency` is not given.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;

/// Refuses a URI, headers or a declared body over their bounds, then sheds
/// a request past the concurrency limit (503 at once, never queued). No
/// route takes a body: one sent anyway is read here and dropped as it
/// arrives, up to [`MAX_BODY_BYTES`] and within [`BODY_READ_TIMEOUT`],
/// before the request takes its permit. So a body no handler reads (a GET
/// with a chunked body) is bounded too (tower-http's
/// `RequestBodyLimitLayer` bounds only what a handler reads, and answers in
/// plain text), and a slow one holds no permit and no memory.
///
/// A request holds its permit until its answer is ready. The permit is
/// taken here, not by tower's `ConcurrencyLimit` behind `LoadShed`: that
/// pair polls a semaphore future and boxes an error for every request.
#[derive(Clone, Debug)]
pub(crate) struct BoundsLayer {
    in_flight: Arc<Semaphore>,
}

impl BoundsLayer {
    /// At most as many requests in flight as `in_flight` has permits,
    /// counted across every connection and route of the router (and
    /// whatever else shares the semaphore).
    pub(crate) fn new(in_flight: Arc<Semaphore>) -> BoundsLayer {
        BoundsLayer { in_flight }
    }
}

impl<S> Layer<S> for BoundsLayer {
    type Service = Bounds<S>;

    fn layer(&self, inner: S) -> Bounds<S> {
        Bounds {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// The service of [`BoundsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Bounds<S> {
    inner: S,
    in_flight: Arc<Semaphore>,
}

impl<S> Service<Request> for Bounds<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Bounded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Bounded<S::Future> {
        if let Some(refusal) = refusal(&request) {
            return Bounded::answered(refusal);
        }
        // `/healthz` answers while the process runs, busy or not, so a
        // liveness probe never takes a busy process for a dead one.
        let unbounded = request.uri().path() == crate::ops::HEALTHZ;
        // A request without a body (every GET a client sends) goes on as it is.
        if HttpBody::is_end_stream(request.body()) {
            return match permit(&self.in_flight, unbounded) {
                Ok(permit) => Bounded::Passed {
                    inner: self.inner.call(request),
                    permit,
                },
                Err(refusal) => Bounded::answered(refusal),
            };
        }
        // The service made ready goes with the body; its clone serves the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let in_flight = self.in_flight.clone();
        Bounded::Reading {
            read: Box::pin(async move {
                let (parts, body) = request.into_parts();
                match tokio::time::timeout(BODY_READ_TIMEOUT, drain(body)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refusal)) => return refusal.into_response(),
                    Err(_) => return EdgeError::BodyTimeout.into_response(),
                }
                let permit = match permit(&in_flight, unbounded) {
                    Ok(permit) => permit,
                    Err(refusal) => return refusal.into_response(),
                };
                let answer = match inner.call(Request::from_parts(parts, Body::empty())).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                drop(permit);
                answer
            }),
        }
    }
}

/// A permit of `in_flight` for a request, none for an `unbounded` one, or
/// the refusal of a busy process.
fn permit(
    in_flight: &Arc<Semaphore>,
    unbounded: bool,
) -> Result<Option<OwnedSemaphorePermit>, EdgeError> {
    if unbounded {
        return Ok(None);
    }
    in_flight
        .clone()
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| EdgeError::Overloaded)
}

/// What a request's head is refused for, if anything. Its headers were
/// measured as they arrived, by [`HeadersLayer`].
pub(crate) fn refusal(request: &Request) -> Option<EdgeError> {
    if uri_bytes(request.uri()) > MAX_URI_BYTES {
        Some(EdgeError::UriTooLong)
    } else if request.extensions().get::<HeadersTooLarge>().is_some() {
        Some(EdgeError::HeadersTooLarge)
    } else if content_length(request.headers()).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        Some(EdgeError::PayloadTooLarge)
    } else {
        None
    }
}

pin_project! {
    /// The response future of [`Bounds`].
    #[project = BoundedProj]
    pub(crate) enum Bounded<F> {
        /// Refused at once.
        Answered { response: Option<Response> },
        /// Within bounds, without a body; in flight until answered.
        Passed { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        /// A body being read within its bound, then the request.
        Reading { read: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F> Bounded<F> {
    fn answered(refusal: EdgeError) -> Bounded<F> {
        Bounded::Answered {
            response: Some(refusal.into_response()),
        }
    }
}

impl<F> Future for Bounded<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BoundedProj::Answered { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    EdgeError::Internal("a refusal was polled twice".into()).into_response()
                })))
            }
            BoundedProj::Passed { inner, .. } => inner.poll(cx),
            BoundedProj::Reading { read } => read.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Reads `body` to its end and drops it, as no route takes one: nothing is
/// kept, so a body costs no memory while it arrives. Past
/// [`MAX_BODY_BYTES`], 413.
async fn drain(mut body: Body) -> Result<(), EdgeError> {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::debug!(error = %e, "request body could not be read");
            EdgeError::UnreadableBody
        })?;
        read += frame.data_ref().map_or(0, |data| data.len());
        if read > MAX_BODY_BYTES {
            return Err(EdgeError::PayloadTooLarge);
        }
    }
    Ok(())
}

/// Measures a request's headers as the caller sent them, before the
/// request id layer below it makes an `x-request-id` for a request without
/// one (or drops a caller's that is not valid), and marks a request whose
/// headers are over [`MAX_HEADER_BYTES`] for [`BoundsLayer`] to refuse,
/// once CORS and telemetry have seen it. The mark is an extension, so a
/// request within the bound carries none and allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeadersLayer;

impl<S> Layer<S> for HeadersLayer {
    type Service = Headers<S>;

    fn layer(&self, inner: S) -> Headers<S> {
        Headers { inner }
    }
}

/// The service of [`HeadersLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Headers<S> {
    inner: S,
}

impl<S, B> Service<axum::http::Request<B>> for Headers<S>
where
    S: Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> S::Future {
        if header_bytes(request.headers()) > MAX_HEADER_BYTES {
            request.extensions_mut().insert(HeadersTooLarge);
        }
        self.inner.call(request)
    }
}

/// The mark of a request whose headers, as sent, are over the bound.
#[derive(Clone, Copy, Debug)]
struct HeadersTooLarge;

/// The bytes of `uri` as the URI bound counts them: every part.
pub(crate) fn uri_bytes(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_count_names_values_and_separators() {
        let mut headers = HeaderMap::new();
        headers.insert("a", "bc".parse().unwrap());
        assert_eq!(header_bytes(&headers), 1 + 2 + 4);
    }

    #[test]
    fn uri_bytes_count_every_part() {
        let uri: Uri = "http://h:1/p?q=1".parse().unwrap();
        assert_eq!(uri_bytes(&uri), "http://h:1/p?q=1".len());
        let uri: Uri = "/p?q=1".parse().unwrap();
        assert_eq!(uri_bytes(&uri), "/p?q=1".len());
    }
}

//! CORS: one policy for every route. Any origin may read the answers (`*`,
//! no credentials: a key travels in `Authorization`, never in a cookie),
//! with `GET`, `HEAD` and `OPTIONS` and the `Authorization`, `Content-Type`
//! and `X-Request-Id` headers, and any other header a preflight asks for
//! (NextChat sends `X-Requested-With`, SDKs their own): the answer is the
//! same whichever it carries, so refusing one would only break a client. A
//! preflight (any `OPTIONS`) is answered at once, to be cached for a day,
//! unless its URI, headers or declared body are over the bounds every
//! request is held to ([`crate::limits`]): 414, 431, 413.
//!
//! For any request but a preflight that asks for a header beyond those
//! three, this is tower-http's `CorsLayer` with `allow_origin(Any)`, the
//! policy below and no `Vary`, and it answers exactly as that layer does (a
//! test compares the two), but for `Allow` and `Vary` on a preflight. It is
//! written out because that layer builds a header map of its settings,
//! copied from them, for every request.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

// The policy, as its headers carry it (lists comma-separated, as tower-http
// writes them; the test builds tower-http's layer from the same lists).
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET,HEAD,OPTIONS");
// `x-request-id` too: a browser may send its own id, which the edge keeps.
const ALLOW_HEADER_NAMES: &str = "authorization,content-type,x-request-id";
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static(ALLOW_HEADER_NAMES);
const EXPOSE_HEADERS: HeaderValue =
    HeaderValue::from_static("www-authenticate,retry-after,x-request-id");
/// A day, in seconds.
const MAX_AGE: HeaderValue = HeaderValue::from_static("86400");
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
const VARY_ON_REQUEST_HEADERS: HeaderValue =
    HeaderValue::from_static("access-control-request-headers");
/// The methods every route answers, as `Allow` names them: on a preflight
/// and on a 405 alike.
pub(crate) const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");

/// Adds the CORS headers to every answer and answers preflights.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CorsLayer;

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner }
    }
}

/// The service of [`CorsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Cors<S> {
    inner: S,
}

impl<S> Service<Request> for Cors<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> CorsFuture<S::Future> {
        if request.method() == Method::OPTIONS {
            // Before any authentication, but not past the bounds on a
            // request's size, which every request is held to.
            let response = match crate::limits::refusal(&request) {
                Some(refusal) => with_headers(refusal.into_response()),
                None => preflight(
                    request
                        .headers()
                        .get(header::ACCESS_CONTROL_REQUEST_HEADERS),
                ),
            };
            return CorsFuture::Preflight {
                response: Some(response),
            };
        }
        CorsFuture::Call {
            inner: self.inner.call(request),
        }
    }
}

/// The answer to a preflight: 200, empty, the policy in its headers, and
/// the route's methods in `Allow` (as a 405 names them). `requested` is its
/// `Access-Control-Request-Headers`: names beyond the policy's are allowed
/// too, so every answer varies with that header.
fn preflight(requested: Option<&HeaderValue>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
    let allowed = requested
        .and_then(allowed_beyond_policy)
        .unwrap_or(ALLOW_HEADERS);
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
    headers.insert(header::VARY, VARY_ON_REQUEST_HEADERS);
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    headers.insert(header::ALLOW, ALLOW);
    response
}

/// The policy's headers and then every other header name `requested`
/// lists, lowercased, in one pass over it (a repeated name is repeated:
/// harmless, as tower-http's mirror has it), or `None` when it names none
/// beyond the policy's or is not a list of header names (which a browser
/// never sends).
fn allowed_beyond_policy(requested: &HeaderValue) -> Option<HeaderValue> {
    let requested = requested.to_str().ok()?;
    let mut allowed = String::new();
    for name in requested
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        header::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let in_policy = ALLOW_HEADER_NAMES
            .split(',')
            .any(|n| n.eq_ignore_ascii_case(name));
        if !in_policy {
            allowed.push(',');
            allowed.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        }
    }
    if allowed.is_empty() {
        return None;
    }
    HeaderValue::from_str(&format!("{ALLOW_HEADER_NAMES}{allowed}")).ok()
}

/// `response` with the headers of an answer that is not a preflight's.
fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    response
}

pin_project! {
    /// The response future of [`Cors`].
    #[project = CorsFutureProj]
    pub(crate) enum CorsFuture<F> {
        /// A preflight, answered at once.
        Preflight { response: Option<Response> },
        /// Any other request, whose answer gets the headers.
        Call { #[pin] inner: F },
    }
}

impl<F> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CorsFutureProj::Preflight { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| preflight(None))))
            }
            CorsFutureProj::Call { inner } => inner.poll(cx).map(|answer| answer.map(with_headers)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;
    use tower_http::cors::Any;

    /// A route answering 201 with headers of its own, one of them a CORS
    /// header the layer must replace.
    async fn route(_: Request) -> Result<Response, Infallible> {
        let mut response = Response::new(Body::from("body"));
        *response.status_mut() = StatusCode::CREATED;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://other.example"),
        );
        Ok(response)
    }

    /// Status, every header in order, and the body.
    async fn answer<S>(service: S, request: Request) -> (StatusCode, Vec<(String, String)>, String)
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let response = service
            .oneshot(request)
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap_or_default();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn answers_exactly_as_tower_http_with_the_same_policy() {
        let theirs = tower_http::cors::CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                quota_telemetry::request_id::HEADER,
            ])
            .expose_headers([
                header::WWW_AUTHENTICATE,
                header::RETRY_AFTER,
                quota_telemetry::request_id::HEADER,
            ])
            .max_age(Duration::from_secs(86_400))
            .vary([]);
        let requests: [(&str, &[(&str, &str)]); 6] = [
            (
                "OPTIONS",
                &[
                    ("origin", "https://chat.example"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization"),
                ],
            ),
            ("OPTIONS", &[]),
            ("GET", &[("origin", "https://chat.example")]),
            ("GET", &[]),
            ("HEAD", &[("origin", "null")]),
            ("POST", &[("origin", "https://chat.example")]),
        ];
        for (method, headers) in requests {
            let request = || {
                let mut request = Request::builder().method(method).uri("/v1/x");
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.body(Body::empty()).unwrap_or_default()
            };
            let (status, mut ours, body) =
                answer(CorsLayer.layer(tower::service_fn(route)), request()).await;
            let expected = answer(theirs.layer(tower::service_fn(route)), request()).await;
            // `Allow` and `Vary` are ours alone: a preflight names the
            // methods, as a 405 does, and allows the headers it asks for.
            if method == "OPTIONS" {
                for (name, wanted) in [
                    ("allow", "GET, HEAD, OPTIONS"),
                    ("vary", "access-control-request-headers"),
                ] {
                    let at = ours.iter().position(|(n, _)| n == name);
                    let value = at.map(|at| ours.remove(at).1);
                    assert_eq!(value.as_deref(), Some(wanted), "{method} {headers:?}");
                }
            }
            assert_eq!((status, ours, body), expected, "{method} {headers:?}");
        }
    }

    /// A preflight of NextChat (`x-requested-with`) or of an SDK (its own
    /// headers) is allowed every header it asks for, in the policy's names
    /// and then its own, and the answer varies with what it asked.
    #[tokio::test]
    async fn a_preflight_is_allowed_the_headers_it_asks_for() {
        let preflight = |requested: &str| {
            Request::builder()
                .method("OPTIONS")
                .uri("/v1/dashboard/billing/subscription")
                .header("origin", "https://chat.example")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", requested)
                .body(Body::empty())
                .unwrap_or_default()
        };
        for (requested, allowed) in [
            (
                "authorization,content-type,x-requested-with",
                "authorization,content-type,x-request-id,x-requested-with",
            ),
            (
                "Authorization, X-Stainless-OS, openai-organization",
                "authorization,content-type,x-request-id,x-stainless-os,openai-organization",
            ),
            // Nothing beyond the policy: its answer, as tower-http gives it.
            ("authorization", "authorization,content-type,x-request-id"),
            (
                "Content-Type, X-Request-Id",
                "authorization,content-type,x-request-id",
            ),
            // Not a list of header names: the policy alone.
            ("x-a b", "authorization,content-type,x-request-id"),
            ("x-a,(b)", "authorization,content-type,x-request-id"),
        ] {
            let (status, headers, _) = answer(
                CorsLayer.layer(tower::service_fn(route)),
                preflight(requested),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{requested}");
            let value = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(
                value("access-control-allow-headers"),
                Some(allowed),
                "{requested}"
            );
            // Whatever it asked: the answer depends on what was asked.
            assert_eq!(
                value("vary"),
                Some("access-control-request-headers"),
                "{requested}"
            );
            assert_eq!(
                value("access-control-allow-origin"),
                Some("*"),
                "{requested}"
            );
        }
    }

    /// A preflight near the header bound (16 KiB): each of its 2,000 names
    /// allowed, in one pass over them.
    #[tokio::test]
    async fn a_preflight_asking_for_thousands_of_headers_gets_them_all() {
        let names: Vec<String> = (0..2_000).map(|i| format!("x-{i}")).collect();
        let request = Request::builder()
            .method("OPTIONS")
            .uri("/v1/dashboard/billing/subscription")
            .header("access-control-request-headers", names.join(","))
            .body(Body::empty())
            .unwrap_or_default();
        let (status, headers, _) = answer(CorsLayer.layer(tower::service_fn(route)), request).await;
        assert_eq!(status, StatusCode::OK);
        let allowed = headers
            .iter()
            .find(|(n, _)| n == "access-control-allow-headers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert_eq!(allowed, format!("{ALLOW_HEADER_NAMES},{}", names.join(",")));
    }
}

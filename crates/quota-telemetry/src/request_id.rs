//! Request ids: `x-request-id` on every request and every response.
//!
//! A caller's id is kept when it is 1 to [`MAX_LEN`] visible ASCII
//! characters; any other value is dropped and replaced by a fresh UUID v4,
//! so that an id can always be written into a log line or a metadata value
//! as it is. [`RequestIdLayer`] does both and copies the id onto the
//! response.

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The header (and gRPC metadata key) carrying the id.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a caller.
pub const MAX_LEN: usize = 128;

/// Whether `value` is an id worth keeping: 1 to [`MAX_LEN`] bytes, each a
/// visible ASCII character (`!` to `~`), and no key in them (an id is
/// logged and returned as it is; see [`crate::redact`]).
pub fn is_valid(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
        && value.to_str().is_ok_and(|id| !crate::redact::has_key(id))
}

/// Removes a caller's `x-request-id` that [`is_valid`] refuses (or that
/// comes more than once), so that a fresh one is made for the request.
pub fn drop_invalid<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    let count = headers.get_all(&HEADER).iter().count();
    let keep = count == 1 && headers.get(&HEADER).is_some_and(is_valid);
    if count > 0 && !keep {
        headers.remove(&HEADER);
    }
    request
}

/// The id of a request, as [`RequestIdLayer`] left it (empty if none).
pub fn of<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A fresh id: a UUID v4 in its hyphenated lower-case form, written into a
/// buffer rather than through `core::fmt` and a `String`.
pub fn make() -> HeaderValue {
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // Hex digits and hyphens: always a valid header value.
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("invalid-uuid"))
}

/// A server's request-id layer: a caller's id that [`is_valid`] refuses
/// dropped ([`drop_invalid`]), a UUID v4 made for a request without one
/// ([`make`]), and the id set on the response unless the response carries
/// one already. The id lives in the request's header only: no copy of it
/// in the request's or the response's extensions.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIds<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> WithRequestId<S::Future> {
        let mut request = drop_invalid(request);
        let id = match request.headers().get(&HEADER) {
            Some(id) => id.clone(),
            None => {
                let id = make();
                request.headers_mut().insert(HEADER, id.clone());
                id
            }
        };
        WithRequestId {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response future of [`RequestIds`].
    pub struct WithRequestId<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take()
            && let http::header::Entry::Vacant(slot) = response.headers_mut().entry(HEADER)
        {
            slot.insert(id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    #[test]
    fn ids_are_visible_ascii_up_to_128() {
        assert!(is_valid(&value("abc-123_XYZ.~!")));
        assert!(is_valid(&value(&"a".repeat(128))));
        assert!(!is_valid(&value(&"a".repeat(129))));
        assert!(!is_valid(&value("has space")));
        assert!(!is_valid(&value("")));
        assert!(!is_valid(&value(
            "sk-AbCdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
        )));
        assert!(is_valid(&value("sk-short-id")));
        assert!(!is_valid(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap_or(value("x y"))
        ));
    }

    #[test]
    fn made_ids_are_distinct_uuids_v4() {
        let mut made = std::collections::HashSet::new();
        for _ in 0..100 {
            let id = make();
            let id = id.to_str().unwrap_or_default();
            let parsed = uuid::Uuid::parse_str(id).unwrap_or_default();
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(id, parsed.hyphenated().to_string(), "{id}");
            assert!(made.insert(id.to_owned()), "{id} made twice");
        }
    }

    #[test]
    fn invalid_and_repeated_ids_are_dropped() {
        let request = |ids: &[&str]| {
            let mut b = Request::builder();
            for id in ids {
                b = b.header(&HEADER, *id);
            }
            drop_invalid(b.body(()).unwrap_or_default())
        };
        assert_eq!(of(&request(&["good-id"])), "good-id");
        assert_eq!(of(&request(&["bad id"])), "");
        assert_eq!(of(&request(&["one", "two"])), "");
        assert_eq!(of(&request(&[])), "");
    }

    /// A service answering 200 with the id it was handed in a header of its
    /// own, and with its own `x-request-id` when asked to.
    async fn answer(request: Request<()>) -> Result<Response<()>, std::convert::Infallible> {
        let mut response = Response::new(());
        response.headers_mut().insert(
            "seen",
            request
                .headers()
                .get(&HEADER)
                .cloned()
                .unwrap_or(value("none")),
        );
        if request.headers().contains_key("answer-with-own") {
            response
                .headers_mut()
                .insert(HEADER, value("the-service's"));
        }
        Ok(response)
    }

    async fn through_layer(ids: &[&str], own: bool) -> Response<()> {
        use tower::{ServiceExt, service_fn};
        let mut b = Request::builder();
        for id in ids {
            b = b.header(&HEADER, *id);
        }
        if own {
            b = b.header("answer-with-own", "1");
        }
        let request = b.body(()).unwrap_or_default();
        let service = RequestIdLayer.layer(service_fn(answer));
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    fn header<'r>(response: &'r Response<()>, name: &str) -> Vec<&'r str> {
        response
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[tokio::test]
    async fn the_layer_keeps_a_valid_id_and_returns_it() {
        let response = through_layer(&["order-42"], false).await;
        assert_eq!(header(&response, "seen"), ["order-42"]);
        assert_eq!(header(&response, "x-request-id"), ["order-42"]);
    }

    #[tokio::test]
    async fn the_layer_makes_an_id_for_none_an_invalid_one_or_two() {
        for ids in [&[][..], &["bad id"], &["one", "two"]] {
            let response = through_layer(ids, false).await;
            let seen = header(&response, "seen");
            assert_eq!(seen.len(), 1, "{ids:?}");
            let parsed = uuid::Uuid::parse_str(seen[0]).unwrap_or_default();
            assert_eq!(parsed.get_version_num(), 4, "{ids:?}: {seen:?}");
            assert_eq!(header(&response, "x-request-id"), seen, "{ids:?}");
        }
    }

    #[tokio::test]
    async fn the_layer_leaves_a_responses_own_id() {
        let response = through_layer(&["order-42"], true).await;
        assert_eq!(header(&response, "seen"), ["order-42"]);
        assert_eq!(header(&response, "x-request-id"), ["the-service's"]);
    }
}

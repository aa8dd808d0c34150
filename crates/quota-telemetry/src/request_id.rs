//! Request ids: `x-request-id` on every request and every response.
//!
//! A caller's id is kept when it is 1 to [`MAX_LEN`] visible ASCII
//! characters; any other value is dropped and replaced by a fresh UUID v4,
//! so that an id can always be written into a log line or a metadata value
//! as it is. tower-http's `SetRequestIdLayer` makes the missing ones and
//! `PropagateRequestIdLayer` copies them onto the response.

use http::{HeaderName, HeaderValue, Request};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::util::MapRequestLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The header (and gRPC metadata key) carrying the id.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a caller.
pub const MAX_LEN: usize = 128;

/// Whether `value` is an id worth keeping: 1 to [`MAX_LEN`] bytes, each a
/// visible ASCII character (`!` to `~`).
pub fn is_valid(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Removes a caller's `x-request-id` that [`is_valid`] refuses, so that the
/// next layer makes a fresh one. For `tower::util::MapRequestLayer`.
pub fn drop_invalid<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    let count = headers.get_all(&HEADER).iter().count();
    let keep = count == 1 && headers.get(&HEADER).is_some_and(is_valid);
    if count > 0 && !keep {
        headers.remove(&HEADER);
    }
    request
}

/// The id of a request, as the set layer left it (empty if none).
pub fn of<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A server's request-id layers, outermost first: a caller's id that
/// [`is_valid`] refuses dropped ([`drop_invalid`]), a UUID v4 made for a
/// request without one, the id copied onto the response. Servers add their
/// own layers to the builder.
pub fn layers<B>() -> Layers<B> {
    ServiceBuilder::new()
        .layer(MapRequestLayer::new(
            drop_invalid::<B> as fn(Request<B>) -> Request<B>,
        ))
        .layer(SetRequestIdLayer::new(HEADER, MakeUuid))
        .layer(PropagateRequestIdLayer::new(HEADER))
}

/// Makes a request's id: a UUID v4 in its hyphenated lower-case form, as
/// tower-http's `MakeRequestUuid` makes it, written into a buffer rather
/// than through `core::fmt` and a `String`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// The type of [`layers`].
pub type Layers<B> = ServiceBuilder<Stacked<B>>;

/// The layers of [`layers`], for naming a builder that adds to them.
pub type Stacked<B> = Stack<
    PropagateRequestIdLayer,
    Stack<
        SetRequestIdLayer<MakeUuid>,
        Stack<MapRequestLayer<fn(Request<B>) -> Request<B>>, Identity>,
    >,
>;

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
        assert!(!is_valid(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap_or(value("x y"))
        ));
    }

    #[test]
    fn made_ids_are_distinct_uuids_v4() {
        let request = Request::new(());
        let mut made = std::collections::HashSet::new();
        for _ in 0..100 {
            let id = MakeUuid
                .make_request_id(&request)
                .map(|id| id.header_value().clone());
            let id = id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
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
}

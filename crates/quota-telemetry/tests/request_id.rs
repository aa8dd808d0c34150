//! Property tests of the `x-request-id` parser: any header value is either
//! kept exactly as sent (1 to 128 visible ASCII characters) or dropped for a
//! fresh id; none panics.

#![allow(clippy::unwrap_used)]

use http::{HeaderValue, Request};
use proptest::prelude::*;
use quota_telemetry::request_id::{HEADER, MAX_LEN, drop_invalid, is_valid, of};

fn visible_ascii(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (b'!'..=b'~').contains(b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ids_are_kept_exactly_when_visible_ascii(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(b'!'..=b'~', 120..136),
        "[ -~\t]{0,140}".prop_map(String::into_bytes),
    ]) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        prop_assert_eq!(is_valid(&value), visible_ascii(&bytes));
        let request = drop_invalid(Request::builder().header(&HEADER, value).body(()).unwrap());
        if visible_ascii(&bytes) {
            prop_assert_eq!(of(&request).as_bytes(), &bytes[..]);
        } else {
            prop_assert_eq!(of(&request), "");
        }
    }
}

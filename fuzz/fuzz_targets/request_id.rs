//! `RequestId::parse` on any string: never panics, keeps the id exactly as
//! sent, empty is none, and only ids over the ledger's limit are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::domain::{MAX_REQUEST_ID_LEN, RequestId};

fuzz_target!(|id: &str| {
    match RequestId::parse(id) {
        Ok(None) => assert!(id.is_empty()),
        Ok(Some(parsed)) => {
            assert!(id.len() <= MAX_REQUEST_ID_LEN);
            assert_eq!(parsed.as_str(), id);
        }
        Err(_) => assert!(id.len() > MAX_REQUEST_ID_LEN),
    }
});

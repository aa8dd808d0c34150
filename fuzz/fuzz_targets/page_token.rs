//! `PageToken::parse` on any string: never panics, and a token it accepts
//! encodes back to one that parses to the same page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::domain::PageToken;

fuzz_target!(|token: &str| {
    if let Ok(page) = PageToken::parse(token) {
        assert_eq!(PageToken::parse(&page.encode()).ok(), Some(page));
        assert_eq!(PageToken::after(page.after_id()), page);
    }
});

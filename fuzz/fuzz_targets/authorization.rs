//! The bearer parser on any `authorization` value: never panics; a
//! credential it returns is non-empty, has no surrounding whitespace, and
//! parses back to itself from `Bearer <credential>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::auth::bearer;
use tonic::metadata::{MetadataMap, MetadataValue};

fn with_authorization(value: MetadataValue<tonic::metadata::Ascii>) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", value);
    metadata
}

fuzz_target!(|input: &[u8]| {
    // Values HTTP/2 cannot carry (control characters) never reach the parser.
    let Ok(value) = MetadataValue::try_from(input) else {
        return;
    };
    let metadata = with_authorization(value);
    let Ok(credential) = bearer(&metadata) else {
        return;
    };
    assert!(!credential.is_empty());
    assert_eq!(credential, credential.trim());
    let text = std::str::from_utf8(input).expect("an accepted value is text");
    assert!(text.trim_start()[..6].eq_ignore_ascii_case("bearer"));
    assert!(text.contains(credential));
    let again = MetadataValue::try_from(format!("Bearer {credential}")).expect("still a header");
    assert_eq!(bearer(&with_authorization(again)).ok(), Some(credential));
});

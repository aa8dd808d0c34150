//! `TokenKey::parse` on any string: never panics, accepts exactly
//! `sk-` + 48 ASCII letters or digits, and what it accepts round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::domain::TokenKey;

fuzz_target!(|input: &str| {
    let well_formed = input.len() == 51
        && input.starts_with("sk-")
        && input[3..].bytes().all(|b| b.is_ascii_alphanumeric());
    match TokenKey::parse(input) {
        Ok(key) => {
            assert!(well_formed, "accepted a malformed key: {input:?}");
            assert_eq!(key.expose(), input);
            assert_eq!(TokenKey::parse(key.expose()).ok(), Some(key.clone()));
            assert_eq!(key.display_prefix(), format!("{}…", &input[..7]));
            assert!(!format!("{key:?}").contains(&input[7..]));
            assert_eq!(key.digest().as_str().len(), 64);
        }
        Err(_) => assert!(!well_formed, "refused a well-formed key: {input:?}"),
    }
});

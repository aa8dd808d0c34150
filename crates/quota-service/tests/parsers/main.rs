//! Property tests of every parser of untrusted input: keys, `Authorization`
//! values, usage dates, dollar amounts, request ids and page tokens. Random
//! and adversarial input never panics, each parser accepts exactly what its
//! format says, and what it accepts round-trips. `fuzz/` has the same
//! properties as cargo-fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, NaiveDate};
use proptest::prelude::*;
use quota_service::auth::bearer;
use quota_service::domain::{
    MAX_REQUEST_ID_LEN, PageToken, QuotaPerUsd, RequestId, TokenKey, UsageWindow,
};
use tonic::metadata::{MetadataMap, MetadataValue};

/// Any string, weighted towards the shapes the parsers look for.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,80}",
        "sk-[A-Za-z0-9]{40,56}",
        "sk-[A-Za-z0-9 _.é-]{44,50}",
        "[0-9]{0,5}-[0-9]{0,3}-[0-9]{0,3}",
        " ?[0-9]{0,22}(\\.[0-9]{0,14})? ?",
        "[+-]?[0-9]{0,21}",
    ]
}

fn well_formed_key(s: &str) -> bool {
    s.len() == 51 && s.starts_with("sk-") && s[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn authorization(value: &str) -> Option<MetadataMap> {
    let value = MetadataValue::try_from(value).ok()?;
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", value);
    Some(metadata)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn keys_parse_exactly_the_format(s in text()) {
        match TokenKey::parse(&s) {
            Ok(key) => {
                prop_assert!(well_formed_key(&s), "accepted {s:?}");
                prop_assert_eq!(key.expose(), s.as_str());
                prop_assert_eq!(TokenKey::parse(key.expose()).ok(), Some(key.clone()));
                let shown = format!("{key:?}");
                prop_assert!(!shown.contains(&s[7..]));
            }
            Err(_) => prop_assert!(!well_formed_key(&s), "refused {s:?}"),
        }
    }

    #[test]
    fn well_formed_keys_round_trip(body in "[A-Za-z0-9]{48}") {
        let s = format!("sk-{body}");
        let key = TokenKey::parse(&s).unwrap();
        prop_assert_eq!(key.expose(), s.as_str());
        prop_assert_eq!(key.digest(), TokenKey::parse(&s).unwrap().digest());
    }

    #[test]
    fn authorization_values_never_panic(value in prop_oneof![
        any::<String>(),
        "[\t -~]{0,60}",
        "[ \t]{0,3}[Bb][Ee][Aa][Rr][Ee][Rr][ \t]{0,3}[ -~]{0,20}",
    ]) {
        let Some(metadata) = authorization(&value) else { return Ok(()) };
        if let Ok(credential) = bearer(&metadata) {
            prop_assert!(!credential.is_empty());
            prop_assert_eq!(credential, credential.trim());
            prop_assert!(value.trim_start()[..6].eq_ignore_ascii_case("bearer"));
            let again = authorization(&format!("Bearer {credential}")).unwrap();
            prop_assert_eq!(bearer(&again).ok(), Some(credential));
        }
    }

    #[test]
    fn any_bearer_scheme_spelling_gives_the_credential(
        scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
        spaces in " {1,3}",
        credential in "[!-~]{1,60}",
    ) {
        let metadata = authorization(&format!("{scheme}{spaces}{credential}")).unwrap();
        prop_assert_eq!(bearer(&metadata).ok(), Some(credential.as_str()));
    }

    #[test]
    fn dates_never_panic_and_accepted_ones_round_trip(start in text(), end in text()) {
        if let Ok(window) = UsageWindow::parse(&start, &end) {
            for (date, bound) in [(&start, window.start), (&end, window.end)] {
                match bound {
                    None => prop_assert!(date.is_empty()),
                    Some(at) => {
                        prop_assert_eq!(at.rem_euclid(86_400), 0);
                        let day = DateTime::from_timestamp(at, 0).unwrap();
                        prop_assert_eq!(&day.format("%Y-%m-%d").to_string(), date);
                    }
                }
            }
        }
    }

    #[test]
    fn every_calendar_day_parses_to_its_start(days in 0i64..3_652_059) {
        let day = NaiveDate::from_num_days_from_ce_opt(days as i32 + 1).unwrap();
        let text = day.format("%Y-%m-%d").to_string();
        let window = UsageWindow::parse(&text, "").unwrap();
        prop_assert_eq!(
            window.start,
            Some(day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp())
        );
    }

    #[test]
    fn dollar_amounts_never_panic(rate in any::<i64>(), amount in text()) {
        if let Ok(per_usd) = QuotaPerUsd::new(rate) {
            if let Ok(units) = per_usd.usd_to_units(&amount) {
                prop_assert!(units >= 0);
                let dollars = units / per_usd.get();
                prop_assert_eq!(
                    per_usd.usd_to_units(&dollars.to_string()).ok(),
                    Some(dollars * per_usd.get())
                );
                let trimmed = amount.trim();
                let same = if trimmed.contains('.') {
                    format!(" 0{trimmed}")
                } else {
                    format!("0{trimmed}.0 ")
                };
                prop_assert_eq!(per_usd.usd_to_units(&same).ok(), Some(units));
            }
        } else {
            prop_assert!(rate <= 0);
        }
    }

    #[test]
    fn dollars_and_cents_convert_exactly(
        rate in 1i64..=1_000_000_000,
        dollars in 0i64..=1_000_000,
        cents in 0i64..100,
    ) {
        let per_usd = QuotaPerUsd::new(rate).unwrap();
        prop_assert_eq!(
            per_usd.usd_to_units(&format!("{dollars}.{cents:02}")).ok(),
            Some(dollars * rate + cents * rate / 100)
        );
    }

    #[test]
    fn request_ids_are_kept_as_sent_up_to_the_limit(id in prop_oneof![
        any::<String>(),
        "[ -~]{250,260}",
        "é{120,135}",
    ]) {
        match RequestId::parse(&id) {
            Ok(None) => prop_assert!(id.is_empty()),
            Ok(Some(parsed)) => {
                prop_assert!(id.len() <= MAX_REQUEST_ID_LEN);
                prop_assert_eq!(parsed.as_str(), id.as_str());
            }
            Err(_) => prop_assert!(id.len() > MAX_REQUEST_ID_LEN),
        }
    }

    #[test]
    fn page_tokens_never_panic(token in text()) {
        if let Ok(page) = PageToken::parse(&token) {
            let again = PageToken::parse(&page.encode()).unwrap();
            prop_assert_eq!(again, page);
        }
    }

    #[test]
    fn page_tokens_round_trip(last_id in 1..=i64::MAX) {
        let token = PageToken::after(last_id).encode();
        prop_assert_eq!(PageToken::parse(&token).unwrap().after_id(), last_id);
    }
}

//! `QuotaPerUsd::usd_to_units` on any string and rate: never panics; an
//! accepted amount is not negative, whole dollars convert exactly, and
//! writing the same amount differently (surrounding spaces, leading zeros,
//! trailing zeros in the cents) gives the same units.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::domain::QuotaPerUsd;

fuzz_target!(|input: (i64, &str)| {
    let (rate, amount) = input;
    let Ok(per_usd) = QuotaPerUsd::new(rate) else {
        assert!(rate <= 0);
        return;
    };
    let Ok(units) = per_usd.usd_to_units(amount) else {
        return;
    };
    assert!(units >= 0, "{amount:?} gave {units}");
    let dollars = units / per_usd.get();
    assert_eq!(
        per_usd.usd_to_units(&dollars.to_string()).ok(),
        Some(dollars * per_usd.get())
    );
    let trimmed = amount.trim();
    let same = if trimmed.contains('.') {
        format!(" 0{trimmed}")
    } else {
        format!("0{trimmed}.0 ")
    };
    assert_eq!(per_usd.usd_to_units(&same).ok(), Some(units), "{same:?}");
});

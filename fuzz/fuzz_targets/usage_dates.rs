//! `UsageWindow::parse` on any pair of strings: never panics; an empty date
//! leaves its end open; an accepted date is the start of a UTC day that
//! formats back to the same `YYYY-MM-DD`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_service::domain::UsageWindow;

fn check(date: &str, parsed: Option<i64>) {
    match parsed {
        None => assert!(date.is_empty(), "{date:?} parsed as no bound"),
        Some(start) => {
            assert_eq!(start.rem_euclid(86_400), 0, "{date:?} is not a day's start");
            let day = chrono::DateTime::from_timestamp(start, 0).expect("in chrono's range");
            assert_eq!(day.format("%Y-%m-%d").to_string(), date);
        }
    }
}

fuzz_target!(|input: (&str, &str)| {
    let (start_date, end_date) = input;
    if let Ok(window) = UsageWindow::parse(start_date, end_date) {
        check(start_date, window.start);
        check(end_date, window.end);
        // Each date is parsed on its own: swapping them swaps the bounds.
        let swapped = UsageWindow::parse(end_date, start_date).expect("both dates are valid");
        assert_eq!((swapped.start, swapped.end), (window.end, window.start));
    }
});

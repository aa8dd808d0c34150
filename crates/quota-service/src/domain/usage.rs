//! Usage windows and spend per UTC day.

use super::QuotaError;
use chrono::NaiveDate;

const SECONDS_PER_DAY: i64 = 86_400;

/// The time window of a usage query, in unix seconds: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageWindow {
    /// First second counted, if bounded.
    pub start: Option<i64>,
    /// First second not counted, if bounded.
    pub end: Option<i64>,
}

impl UsageWindow {
    /// Parses optional `YYYY-MM-DD` dates (UTC); an empty string leaves that
    /// end open. Future dates are fine; malformed ones are refused.
    pub fn parse(start_date: &str, end_date: &str) -> Result<UsageWindow, QuotaError> {
        Ok(UsageWindow {
            start: parse_day_start(start_date, "start_date")?,
            end: parse_day_start(end_date, "end_date")?,
        })
    }
}

/// The unix second at which a UTC day starts.
pub fn day_start(unix: i64) -> i64 {
    unix - unix.rem_euclid(SECONDS_PER_DAY)
}

fn parse_day_start(date: &str, field: &'static str) -> Result<Option<i64>, QuotaError> {
    if date.is_empty() {
        return Ok(None);
    }
    // chrono alone also takes leading white space, signs and short fields
    // ("\n\n  -7-7-7"): the shape is checked first, the calendar by chrono.
    let day = Some(date)
        .filter(|d| is_date_shaped(d))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| QuotaError::InvalidDate {
            field,
            message: format!(
                "{field} must be a date as YYYY-MM-DD, got {}",
                quoted_start(date)
            ),
        })?;
    Ok(Some(
        day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp(),
    ))
}

/// The most of a refused date an answer repeats, in characters.
const QUOTED_CHARS: usize = 32;

/// `text` quoted, cut after [`QUOTED_CHARS`] characters (marked `…`): an
/// answer need not carry back all that a caller sent. Any key in it is cut
/// to its display prefix first, as a key cut short by the quote might no
/// longer look like one to what redacts the answer.
fn quoted_start(text: &str) -> String {
    let text = quota_telemetry::redact::keys(text);
    // Escaped first (a control character is several), then cut.
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("\"{}\"…", &escaped[..cut]),
        None => format!("\"{escaped}\""),
    }
}

/// Exactly `YYYY-MM-DD` in ASCII digits.
fn is_date_shaped(date: &str) -> bool {
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Spend on one UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaySpend {
    /// Unix seconds of the day's start.
    pub day: i64,
    /// Units debited that day.
    pub units: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_date_is_repeated_up_to_32_characters() {
        let message = |date: &str| match UsageWindow::parse(date, "") {
            Err(QuotaError::InvalidDate { message, .. }) => message,
            other => panic!("{date:?}: {other:?}"),
        };
        assert_eq!(
            message("2026-13-01"),
            "start_date must be a date as YYYY-MM-DD, got \"2026-13-01\""
        );
        let key = format!("sk-{}", "k".repeat(48));
        assert_eq!(
            message(&format!("0123456789abcdef {key}")),
            "start_date must be a date as YYYY-MM-DD, got \"0123456789abcdef sk-kkkk…\""
        );
        // 32 characters as they are written back, escapes included.
        let controls = message(&"\u{1}".repeat(100));
        let quoted = controls.split_once("got ").unwrap().1;
        assert_eq!(quoted, format!("\"{}\"…", "\\u{1}".repeat(6) + "\\u"));
        let long = "é".repeat(5_000);
        assert_eq!(
            message(&long),
            format!(
                "start_date must be a date as YYYY-MM-DD, got {:?}…",
                "é".repeat(32)
            )
        );
    }

    #[test]
    fn usage_window_parses_utc_days() {
        let w = UsageWindow::parse("2026-11-01", "2026-11-02").unwrap();
        assert_eq!(w.start, Some(1_793_491_200));
        assert_eq!(w.end, Some(1_793_491_200 + 86_400));
        assert_eq!(
            UsageWindow::parse("", "").unwrap(),
            UsageWindow {
                start: None,
                end: None
            }
        );
        assert!(UsageWindow::parse("2999-01-01", "").is_ok());
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "20261101",
            "2026-1-1",
            "yesterday",
            "2026-11-01T00:00:00Z",
            // Found by the usage_dates fuzz target: chrono takes these.
            "\n\n  -7-7-7",
            " 2026-11-1",
            "+2026-11-1",
            "0002026-1-1",
            "2026-11-0\u{0661}",
        ] {
            assert!(
                matches!(
                    UsageWindow::parse(bad, ""),
                    Err(QuotaError::InvalidDate { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    UsageWindow::parse("", bad),
                    Err(QuotaError::InvalidDate { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(day_start(1_793_491_200 + 3_600), 1_793_491_200);
    }
}

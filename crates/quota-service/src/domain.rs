//! The domain: keys, quota units, the limit arithmetic and usage windows.
//! Everything here is pure; the store and the gRPC services build on it.

use crate::error::QuotaError;
use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use std::fmt;

/// What the subscription route reports for an unlimited token, in USD.
pub const UNLIMITED_USD: i64 = 100_000_000;

/// Quota units per US dollar when `QUOTA_PER_USD` is not set (as in one-api).
pub const DEFAULT_QUOTA_PER_USD: i64 = 500_000;

const KEY_PREFIX: &str = "sk-";
const KEY_BODY_LEN: usize = 48;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECONDS_PER_DAY: i64 = 86_400;

/// An API key in plaintext: `sk-` and 48 base62 characters.
///
/// Only [`TokenKey::generate`] and [`TokenKey::parse`] make one, so a value of
/// this type is always well-formed. It never implements `Display`, so it
/// cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(String);

impl TokenKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<TokenKey, QuotaError> {
        let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_BODY_LEN);
        key.push_str(KEY_PREFIX);
        let mut buf = [0u8; 64];
        while key.len() < KEY_PREFIX.len() + KEY_BODY_LEN {
            getrandom::fill(&mut buf)
                .map_err(|e| QuotaError::Internal(format!("OS random source failed: {e}")))?;
            // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
            for b in buf.iter().filter(|b| **b < 248) {
                if key.len() == KEY_PREFIX.len() + KEY_BODY_LEN {
                    break;
                }
                key.push(char::from(BASE62[usize::from(*b % 62)]));
            }
        }
        Ok(TokenKey(key))
    }

    /// Accepts exactly `sk-` followed by 48 base62 characters.
    pub fn parse(s: &str) -> Result<TokenKey, QuotaError> {
        let well_formed = s.strip_prefix(KEY_PREFIX).is_some_and(|body| {
            body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if well_formed {
            Ok(TokenKey(s.to_owned()))
        } else {
            Err(QuotaError::MalformedKey)
        }
    }

    /// The plaintext, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the key is stored and looked up.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }

    /// What may be shown in lists and logs: `sk-` and four characters.
    pub fn display_prefix(&self) -> String {
        format!("{}…", &self.0[..KEY_PREFIX.len() + 4])
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({})", self.display_prefix())
    }
}

/// The lowercase hex SHA-256 of a secret: the only form in which keys are kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyDigest(String);

impl KeyDigest {
    /// The digest of any secret (an API key or the admin credential).
    pub fn of(secret: &str) -> KeyDigest {
        let hash = Sha256::digest(secret.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in hash {
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        KeyDigest(hex)
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A strictly positive amount of quota units: what a grant or a debit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaUnits(i64);

impl QuotaUnits {
    /// Accepts any amount above zero.
    pub fn positive(units: i64) -> Result<QuotaUnits, QuotaError> {
        if units > 0 {
            Ok(QuotaUnits(units))
        } else {
            Err(QuotaError::InvalidArgument(format!(
                "quota must be a positive number of units, got {units}"
            )))
        }
    }

    /// The number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// How many quota units make one US dollar (`QUOTA_PER_USD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaPerUsd(i64);

impl QuotaPerUsd {
    /// Accepts any rate above zero.
    pub fn new(units: i64) -> Result<QuotaPerUsd, QuotaError> {
        if units > 0 {
            Ok(QuotaPerUsd(units))
        } else {
            Err(QuotaError::InvalidArgument(format!(
                "QUOTA_PER_USD must be a positive number of units, got {units}"
            )))
        }
    }

    /// Units per dollar.
    pub fn get(self) -> i64 {
        self.0
    }

    /// Whole dollars in `units`, rounded down.
    pub fn whole_usd(self, units: i64) -> i64 {
        units.div_euclid(self.0)
    }

    /// `units` in US cents (fractional).
    pub fn cents(self, units: i64) -> f64 {
        units as f64 * 100.0 / self.0 as f64
    }

    /// Parses a decimal dollar amount such as `5` or `0.25` into units,
    /// rounded down to a whole unit. Negative, empty or oversized amounts are refused.
    pub fn usd_to_units(self, usd: &str) -> Result<i64, QuotaError> {
        let invalid = || {
            QuotaError::InvalidArgument(format!(
                "not a dollar amount: {usd:?} (expected digits with an optional decimal point, e.g. 5 or 0.25)"
            ))
        };
        let (whole, frac) = usd.trim().split_once('.').unwrap_or((usd.trim(), ""));
        if whole.is_empty() && frac.is_empty()
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
            || frac.len() > 12
        {
            return Err(invalid());
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let scale = 10i128.pow(frac.len() as u32);
        let frac: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| invalid())?
        };
        let units = i128::from(whole) * i128::from(self.0) + frac * i128::from(self.0) / scale;
        i64::try_from(units).map_err(|_| invalid())
    }
}

impl Default for QuotaPerUsd {
    fn default() -> Self {
        QuotaPerUsd(DEFAULT_QUOTA_PER_USD)
    }
}

/// A token's counters. The limit is `remaining + used`: grants add to
/// `remaining`, debits move units from `remaining` to `used`, so spending
/// never changes the limit. An unlimited token is debited the same way, only
/// never refused: its `remaining` may go below zero, and should it be made
/// limited again it must be granted back above zero before it can spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// Units the token may still spend.
    pub remaining: i64,
    /// Units the token has spent.
    pub used: i64,
    /// Never refused for quota; debits still move units to `used`.
    pub unlimited: bool,
}

impl Balance {
    /// The counters after a debit of `units` (checked by [`Token::debit_refusal`]).
    pub fn after_debit(self, units: QuotaUnits) -> Balance {
        Balance {
            remaining: self.remaining - units.get(),
            used: self.used + units.get(),
            unlimited: self.unlimited,
        }
    }

    /// The limit in units: what was ever granted.
    pub fn limit_units(&self) -> i64 {
        self.remaining.saturating_add(self.used)
    }

    /// The limit in whole dollars, as the subscription route reports it:
    /// [`UNLIMITED_USD`] for an unlimited token, else the limit rounded down.
    pub fn limit_usd(&self, per_usd: QuotaPerUsd) -> i64 {
        if self.unlimited {
            UNLIMITED_USD
        } else {
            per_usd.whole_usd(self.limit_units())
        }
    }
}

/// A token as the store keeps it (without its key, which is never kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Numeric id.
    pub id: i64,
    /// `sk-AbCd…`.
    pub display_prefix: String,
    /// Free-form name.
    pub name: String,
    /// The counters.
    pub balance: Balance,
    /// Expiry in unix seconds, if any.
    pub expires_at: Option<i64>,
    /// False when disabled.
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Token {
    /// `access_until` of the subscription route: the expiry, or 0 for never.
    pub fn access_until(&self) -> i64 {
        self.expires_at.unwrap_or(0)
    }

    /// True once the expiry has passed.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Why this token cannot pay `units` at `now`, or `None` when it can:
    /// enabled, unexpired, unlimited or with `remaining >= units`, and no
    /// counter overflows. Every debit path applies this one rule; the
    /// conditional UPDATE of a single debit states it in SQL.
    pub fn debit_refusal(&self, units: QuotaUnits, now: i64) -> Option<QuotaError> {
        let n = units.get();
        if !self.enabled {
            Some(QuotaError::TokenDisabled)
        } else if self.is_expired(now) {
            Some(QuotaError::TokenExpired)
        } else if !self.balance.unlimited && self.balance.remaining < n {
            Some(QuotaError::QuotaExhausted {
                remaining: self.balance.remaining,
                requested: n,
            })
        } else if self.balance.used > i64::MAX - n {
            Some(QuotaError::InvalidArgument(
                "debit refused: the token's used quota would exceed the largest number of units"
                    .into(),
            ))
        } else {
            None
        }
    }
}

/// How an admin names a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocator {
    /// By numeric id.
    Id(i64),
    /// By the digest of its plaintext key.
    Digest(KeyDigest),
}

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
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|_| date.len() == 10)
        .ok_or_else(|| QuotaError::InvalidDate {
            field,
            message: format!("{field} must be a date as YYYY-MM-DD, got {date:?}"),
        })?;
    Ok(Some(
        day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp(),
    ))
}

/// Spend on one UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaySpend {
    /// Unix seconds of the day's start.
    pub day: i64,
    /// Units debited that day.
    pub units: i64,
}

/// The outcome of a successful debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debit {
    /// The counters after the debit.
    pub balance: Balance,
    /// True when the request id had already been debited: nothing more was taken.
    pub repeat: bool,
}

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_USD: QuotaPerUsd = QuotaPerUsd(DEFAULT_QUOTA_PER_USD);

    fn balance(remaining: i64, used: i64) -> Balance {
        Balance {
            remaining,
            used,
            unlimited: false,
        }
    }

    #[test]
    fn limit_floors_to_whole_dollars() {
        assert_eq!(balance(2_500_000, 0).limit_usd(PER_USD), 5);
        assert_eq!(balance(2_999_999, 0).limit_usd(PER_USD), 5);
        assert_eq!(balance(499_999, 0).limit_usd(PER_USD), 0);
        assert_eq!(balance(0, 0).limit_usd(PER_USD), 0);
    }

    #[test]
    fn unlimited_reports_one_hundred_million() {
        let b = Balance {
            remaining: 0,
            used: 123,
            unlimited: true,
        };
        assert_eq!(b.limit_usd(PER_USD), 100_000_000);
    }

    #[test]
    fn spending_leaves_the_limit_unchanged_and_grants_accumulate() {
        let fresh = balance(2_500_000, 0);
        let spent = balance(1_000_000, 1_500_000);
        assert_eq!(fresh.limit_units(), spent.limit_units());
        assert_eq!(spent.limit_usd(PER_USD), 5);
        let granted = balance(spent.remaining + 500_000, spent.used);
        assert_eq!(granted.limit_usd(PER_USD), 6);
    }

    #[test]
    fn debits_move_units_and_keep_the_limit_even_when_unlimited() {
        let five = QuotaUnits::positive(5).unwrap();
        assert_eq!(balance(10, 0).after_debit(five), balance(5, 5));
        let unlimited = Balance {
            remaining: 2,
            used: 0,
            unlimited: true,
        };
        let spent = unlimited.after_debit(five);
        assert_eq!((spent.remaining, spent.used), (-3, 5));
        assert_eq!(spent.limit_units(), unlimited.limit_units());
        let limited_again = Balance {
            unlimited: false,
            ..spent
        };
        assert_eq!(limited_again.limit_usd(PER_USD), 0);
    }

    #[test]
    fn debit_refusal_is_one_rule() {
        let units = |n| QuotaUnits::positive(n).unwrap();
        let mut t = token(balance(10, 0));
        assert!(t.debit_refusal(units(10), 100).is_none());
        assert!(matches!(
            t.debit_refusal(units(11), 100),
            Some(QuotaError::QuotaExhausted {
                remaining: 10,
                requested: 11
            })
        ));
        t.balance.unlimited = true;
        assert!(t.debit_refusal(units(11), 100).is_none());
        t.balance.used = i64::MAX - 5;
        assert!(matches!(
            t.debit_refusal(units(6), 100),
            Some(QuotaError::InvalidArgument(_))
        ));
        t.balance.used = 0;
        t.expires_at = Some(100);
        assert!(matches!(
            t.debit_refusal(units(1), 100),
            Some(QuotaError::TokenExpired)
        ));
        assert!(t.debit_refusal(units(1), 99).is_none());
        t.enabled = false;
        assert!(matches!(
            t.debit_refusal(units(1), 99),
            Some(QuotaError::TokenDisabled)
        ));
    }

    fn token(balance: Balance) -> Token {
        Token {
            id: 1,
            display_prefix: "sk-abcd…".into(),
            name: String::new(),
            balance,
            expires_at: None,
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn access_until_is_zero_without_expiry() {
        let mut t = token(balance(0, 0));
        assert_eq!(t.access_until(), 0);
        assert!(!t.is_expired(i64::MAX));
        t.expires_at = Some(1_900_000_000);
        assert_eq!(t.access_until(), 1_900_000_000);
        assert!(t.is_expired(1_900_000_000));
        assert!(!t.is_expired(1_899_999_999));
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 51);
        assert!(a.expose().starts_with("sk-"));
        assert_eq!(TokenKey::parse(a.expose()).unwrap(), a);
        assert_eq!(a.display_prefix(), format!("{}…", &a.expose()[..7]));
        assert!(!format!("{a:?}").contains(&a.expose()[7..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let body = "a".repeat(48);
        assert!(TokenKey::parse(&format!("sk-{body}")).is_ok());
        for bad in [
            String::new(),
            "sk-".into(),
            format!("sk-{}", "a".repeat(47)),
            format!("sk-{}", "a".repeat(49)),
            format!("pk-{body}"),
            format!("sk-{}-", "a".repeat(47)),
            format!("sk-{}é", "a".repeat(46)),
        ] {
            assert!(
                matches!(TokenKey::parse(&bad), Err(QuotaError::MalformedKey)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(
            KeyDigest::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = TokenKey::generate().unwrap();
        assert_eq!(key.digest(), KeyDigest::of(key.expose()));
    }

    #[test]
    fn dollar_amounts_convert_exactly() {
        assert_eq!(PER_USD.usd_to_units("5").unwrap(), 2_500_000);
        assert_eq!(PER_USD.usd_to_units("0.25").unwrap(), 125_000);
        assert_eq!(PER_USD.usd_to_units(".1").unwrap(), 50_000);
        assert_eq!(PER_USD.usd_to_units("0.0000001").unwrap(), 0);
        for bad in ["", ".", "-1", "1e3", "abc", "1.2.3", "99999999999999999999"] {
            assert!(PER_USD.usd_to_units(bad).is_err(), "{bad:?}");
        }
        assert_eq!(PER_USD.cents(500_000), 100.0);
        assert_eq!(PER_USD.cents(1), 0.0002);
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

    #[test]
    fn quota_units_are_positive() {
        assert_eq!(QuotaUnits::positive(1).unwrap().get(), 1);
        assert!(QuotaUnits::positive(0).is_err());
        assert!(QuotaUnits::positive(-5).is_err());
    }
}

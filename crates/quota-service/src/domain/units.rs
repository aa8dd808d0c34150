//! Quota units and money: what a grant or a debit moves, and the dollar rate.

use super::QuotaError;

/// Quota units per US dollar when `QUOTA_PER_USD` is not set (as in one-api).
pub const DEFAULT_QUOTA_PER_USD: i64 = 500_000;

/// A strictly positive amount of quota units: what a grant or a debit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaUnits(i64);

impl QuotaUnits {
    /// Accepts any amount above zero.
    pub fn positive(units: i64) -> Result<QuotaUnits, QuotaError> {
        positive(units, "quota").map(QuotaUnits)
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
    /// The default rate, [`DEFAULT_QUOTA_PER_USD`].
    pub const DEFAULT: QuotaPerUsd = QuotaPerUsd(DEFAULT_QUOTA_PER_USD);

    /// Accepts any rate above zero.
    pub fn new(units: i64) -> Result<QuotaPerUsd, QuotaError> {
        positive(units, "QUOTA_PER_USD").map(QuotaPerUsd)
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
        let too_large = || {
            QuotaError::InvalidArgument(format!(
                "quota_usd {usd:?} is more units than a key can hold (at most {} at {} units a dollar)",
                i64::MAX,
                self.0
            ))
        };
        // Only digits are left: a whole part that does not parse is too large.
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let scale = 10i128.pow(frac.len() as u32);
        let frac: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| invalid())?
        };
        let units = i128::from(whole) * i128::from(self.0) + frac * i128::from(self.0) / scale;
        i64::try_from(units).map_err(|_| too_large())
    }
}

impl Default for QuotaPerUsd {
    fn default() -> Self {
        QuotaPerUsd::DEFAULT
    }
}

/// `units` if above zero; else the refusal naming `what`.
fn positive(units: i64, what: &str) -> Result<i64, QuotaError> {
    if units > 0 {
        Ok(units)
    } else {
        Err(QuotaError::InvalidArgument(format!(
            "{what} must be a positive number of units, got {units}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_USD: QuotaPerUsd = QuotaPerUsd::DEFAULT;

    #[test]
    fn dollar_amounts_convert_exactly() {
        assert_eq!(PER_USD.usd_to_units("5").unwrap(), 2_500_000);
        assert_eq!(PER_USD.usd_to_units("0.25").unwrap(), 125_000);
        assert_eq!(PER_USD.usd_to_units(".1").unwrap(), 50_000);
        assert_eq!(PER_USD.usd_to_units("0.0000001").unwrap(), 0);
        for bad in ["", ".", "-1", "1e3", "abc", "1.2.3"] {
            let refused = PER_USD.usd_to_units(bad).unwrap_err().to_string();
            assert!(
                refused.starts_with("not a dollar amount"),
                "{bad:?}: {refused}"
            );
        }
        // Digits, but more than a key holds: said as such.
        for huge in ["99999999999999999999", "18446744073709.6"] {
            let refused = PER_USD.usd_to_units(huge).unwrap_err().to_string();
            assert!(
                refused.contains("more units than a key can hold"),
                "{huge:?}: {refused}"
            );
        }
        assert_eq!(PER_USD.cents(500_000), 100.0);
        assert_eq!(PER_USD.cents(1), 0.0002);
    }

    #[test]
    fn quota_units_are_positive() {
        assert_eq!(QuotaUnits::positive(1).unwrap().get(), 1);
        assert!(QuotaUnits::positive(0).is_err());
        assert!(QuotaUnits::positive(-5).is_err());
    }
}

//! A token's counters and the limit arithmetic: limit = remaining + used.

use super::{QuotaPerUsd, QuotaUnits};

/// What the subscription route reports for an unlimited token, in USD.
pub const UNLIMITED_USD: i64 = 100_000_000;

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const PER_USD: QuotaPerUsd = QuotaPerUsd::DEFAULT;

    /// A limited balance, for the tests of this and the other domain modules.
    pub(in crate::domain) fn balance(remaining: i64, used: i64) -> Balance {
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
    fn the_limit_is_remaining_plus_used_and_a_debit_keeps_it() {
        // $5 fresh; the same $5 once $3 of it is spent.
        assert_eq!(balance(2_500_000, 0).limit_units(), 2_500_000);
        let spent = balance(2_500_000, 0).after_debit(QuotaUnits::positive(1_500_000).unwrap());
        assert_eq!(spent, balance(1_000_000, 1_500_000));
        assert_eq!(spent.limit_units(), 2_500_000);
        assert_eq!(spent.limit_usd(PER_USD), 5);
        // A $1 grant (the store adds it to remaining): $6.
        assert_eq!(balance(1_500_000, 1_500_000).limit_units(), 3_000_000);
        assert_eq!(balance(1_500_000, 1_500_000).limit_usd(PER_USD), 6);
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
}

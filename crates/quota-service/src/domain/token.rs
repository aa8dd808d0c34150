//! A token as the store keeps it, how an admin names one, and the debit rule.

use super::{Balance, KeyDigest, QuotaError, QuotaUnits};

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
    /// Units of its live holds (counted until they expire; see [`Token::spendable`]).
    pub held: i64,
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
    /// enabled, unexpired, unlimited or with a spendable balance
    /// ([`Token::spendable`]: `remaining` less its unexpired holds) of at
    /// least `units`, and no
    /// counter overflows. Every debit path applies this one rule; the
    /// conditional UPDATE of a single debit states it in SQL.
    pub fn debit_refusal(&self, units: QuotaUnits, now: i64) -> Option<QuotaError> {
        let n = units.get();
        if !self.enabled {
            Some(QuotaError::TokenDisabled)
        } else if self.is_expired(now) {
            Some(QuotaError::TokenExpired)
        } else if !self.balance.unlimited && self.spendable() < n {
            Some(QuotaError::QuotaExhausted {
                spendable: self.spendable(),
                requested: n,
            })
        } else if self.balance.used > i64::MAX - n {
            Some(QuotaError::InvalidArgument(
                "refused: the token's used quota would exceed the largest number of units".into(),
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

/// The outcome of a successful debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debit {
    /// The counters after the debit.
    pub balance: Balance,
    /// True when the request id had already been debited: nothing more was taken.
    pub repeat: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::balance::tests::balance;

    #[test]
    fn debit_refusal_is_one_rule() {
        let units = |n| QuotaUnits::positive(n).unwrap();
        let mut t = token(balance(10, 0));
        assert!(t.debit_refusal(units(10), 100).is_none());
        assert!(matches!(
            t.debit_refusal(units(11), 100),
            Some(QuotaError::QuotaExhausted {
                spendable: 10,
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
            held: 0,
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
}

//! The domain: keys, quota units, the limit arithmetic and usage windows,
//! one file per concept. Everything here is pure (no database, no
//! transport); the store and the gRPC services build on it.

mod balance;
mod error;
mod hold;
mod key;
mod request;
mod token;
mod units;
mod usage;

pub use balance::{Balance, UNLIMITED_USD};
pub use error::QuotaError;
pub use hold::{Hold, HoldOutcome, HoldState, HoldTtl, overdraft, release, reserve, settle};
pub use key::{KeyDigest, TokenKey};
pub use request::{MAX_REQUEST_ID_LEN, PageToken, RequestId, acts_on_a_terminal, no_nul};
pub use token::{Debit, Token, TokenLocator};
pub use units::{DEFAULT_QUOTA_PER_USD, QuotaPerUsd, QuotaUnits};
pub use usage::{DaySpend, UsageWindow, day_start};

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

//! Holds: units of a token reserved before a call whose cost is known only at
//! its end, then settled (turned into a debit of the real cost) or released.
//!
//! The token's **spendable** balance is `remaining - held`, where `held`
//! counts its unexpired holds. A hold stops counting at its expiry by itself:
//! every rule here takes the time, and a live hold past its expiry is treated
//! as expired whether or not the store has swept it yet. What each call does
//! with a request id in each state is [`reserve`], [`settle`] and [`release`].

use super::{Balance, QuotaError, QuotaUnits, Token};

/// Where a hold is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldState {
    /// Counts against the spendable balance until its expiry.
    Live,
    /// Turned into a debit.
    Settled,
    /// Freed without a debit.
    Released,
    /// Past its expiry and swept: no longer counted.
    Expired,
}

impl HoldState {
    /// The number the store keeps.
    pub fn code(self) -> i16 {
        match self {
            HoldState::Live => 1,
            HoldState::Settled => 2,
            HoldState::Released => 3,
            HoldState::Expired => 4,
        }
    }

    /// The state the store's number stands for.
    pub fn from_code(code: i16) -> Result<HoldState, QuotaError> {
        match code {
            1 => Ok(HoldState::Live),
            2 => Ok(HoldState::Settled),
            3 => Ok(HoldState::Released),
            4 => Ok(HoldState::Expired),
            other => Err(QuotaError::Internal(format!("unknown hold state {other}"))),
        }
    }
}

/// How long a hold lasts: 0 asks for the default, at most a day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTtl(i64);

impl HoldTtl {
    /// Seconds a hold lasts when the caller gives 0.
    pub const DEFAULT_SECONDS: i64 = 600;
    /// The longest hold, in seconds.
    pub const MAX_SECONDS: i64 = 86_400;

    /// Accepts 0 (the default, 600 s) up to [`HoldTtl::MAX_SECONDS`].
    pub fn parse(seconds: i64) -> Result<HoldTtl, QuotaError> {
        match seconds {
            0 => Ok(HoldTtl(Self::DEFAULT_SECONDS)),
            1..=Self::MAX_SECONDS => Ok(HoldTtl(seconds)),
            _ => Err(QuotaError::InvalidArgument(format!(
                "ttl_seconds must be between 0 (for {}) and {}, got {seconds}",
                Self::DEFAULT_SECONDS,
                Self::MAX_SECONDS
            ))),
        }
    }

    /// The length in seconds.
    pub fn seconds(self) -> i64 {
        self.0
    }

    /// When a hold made at `now` expires.
    pub fn expires_at(self, now: i64) -> i64 {
        now.saturating_add(self.0)
    }

    /// This ttl for a hold made `subsec_nanos` into a second, counted from
    /// the start of that second: a second more unless it is the very start
    /// (so up to [`HoldTtl::MAX_SECONDS`] + 1). A hold's expiry is a whole
    /// second, and a hold has expired once the clock's whole seconds reach
    /// it; so a hold counts for at least its ttl, and less than a second
    /// more, rather than up to a second less.
    pub fn from_second_start(self, subsec_nanos: u32) -> HoldTtl {
        HoldTtl(self.0 + i64::from(subsec_nanos > 0))
    }
}

/// A hold as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Units held.
    pub units: i64,
    /// Unix seconds; from then on the hold no longer counts.
    pub expires_at: i64,
    /// The state last written; see [`Hold::state_at`].
    pub state: HoldState,
}

impl Hold {
    /// The state at `now`: a live hold past its expiry has expired, swept or not.
    pub fn state_at(&self, now: i64) -> HoldState {
        match self.state {
            HoldState::Live if self.expires_at <= now => HoldState::Expired,
            state => state,
        }
    }

    /// True while the hold counts against the spendable balance.
    pub fn counts_at(&self, now: i64) -> bool {
        self.state_at(now) == HoldState::Live
    }

    /// Marks a live hold past its expiry as expired; returns the units that
    /// thereby leave the token's `held` (0 if it was not live or has not expired).
    pub fn sweep(&mut self, now: i64) -> i64 {
        if self.state == HoldState::Live && self.expires_at <= now {
            self.state = HoldState::Expired;
            self.units
        } else {
            0
        }
    }
}

/// The answer to a successful Reserve, Settle or Release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldOutcome {
    /// The counters after the call.
    pub balance: Balance,
    /// Units of the token's unexpired holds after the call.
    pub held: i64,
    /// True when the call had already been made: nothing more was done.
    pub repeat: bool,
    /// The hold's expiry (unix seconds).
    pub expires_at: i64,
    /// Units of a settle the spendable balance could not cover (0 otherwise).
    pub overdraft: i64,
}

impl Token {
    /// What the token may still spend or hold: `remaining` minus its
    /// unexpired holds (`held`, once expired holds are swept). Below zero
    /// after a settle's overdraft.
    pub fn spendable(&self) -> i64 {
        self.balance.remaining.saturating_sub(self.held)
    }

    /// The answer of a hold call that changes nothing (or has just changed the token).
    pub fn hold_outcome(&self, hold: &Hold, repeat: bool, overdraft: i64) -> HoldOutcome {
        HoldOutcome {
            balance: self.balance,
            held: self.held,
            repeat,
            expires_at: hold.expires_at,
            overdraft,
        }
    }
}

/// Reserve: holds `units` of `token` under a request id that names `existing`
/// (`None`: unknown for this token). Returns the answer and, when a hold is
/// made, the new hold. Expired holds of the token must have been swept at
/// `now` ([`Hold::sweep`]).
///
/// Unknown: holds, if the token is enabled, unexpired, and unlimited or its
/// spendable balance covers `units` (the debit rule). A live or settled
/// hold: a repeat, nothing more held. An expired or released hold: refused.
pub fn reserve(
    token: &mut Token,
    existing: Option<&Hold>,
    units: QuotaUnits,
    ttl: HoldTtl,
    now: i64,
) -> Result<(HoldOutcome, Option<Hold>), QuotaError> {
    if let Some(hold) = existing {
        return match hold.state_at(now) {
            HoldState::Live | HoldState::Settled => Ok((token.hold_outcome(hold, true, 0), None)),
            HoldState::Expired => Err(QuotaError::HoldExpired),
            HoldState::Released => Err(QuotaError::HoldReleased),
        };
    }
    if let Some(refusal) = token.debit_refusal(units, now) {
        return Err(refusal);
    }
    token.held = token.held.checked_add(units.get()).ok_or_else(|| {
        QuotaError::InvalidArgument(
            "hold refused: the token's held quota would exceed the largest number of units".into(),
        )
    })?;
    let hold = Hold {
        units: units.get(),
        expires_at: ttl.expires_at(now),
        state: HoldState::Live,
    };
    Ok((token.hold_outcome(&hold, false, 0), Some(hold)))
}

/// Settle: turns `hold` into a debit of `cost` units (>= 0). Returns the
/// answer and whether a debit of `cost` is to be recorded.
///
/// A live hold is freed and `cost` debited; a cost above the hold comes from
/// the spendable balance, and what that balance cannot cover is overdraft
/// (the spendable balance goes below zero by that much; never for an
/// unlimited token). An expired hold is settled the same way with nothing
/// held for it: all of `cost` comes from the balance. A settled hold is a
/// repeat; a released one is refused. A disabled or expired token is still
/// settled: the call was admitted while it could pay.
pub fn settle(
    token: &mut Token,
    hold: &mut Hold,
    cost: i64,
    now: i64,
) -> Result<(HoldOutcome, bool), QuotaError> {
    if cost < 0 {
        return Err(QuotaError::InvalidArgument(format!(
            "quota must not be negative, got {cost}"
        )));
    }
    match hold.state_at(now) {
        HoldState::Settled => return Ok((token.hold_outcome(hold, true, 0), false)),
        HoldState::Released => return Err(QuotaError::HoldReleased),
        HoldState::Live | HoldState::Expired => {}
    }
    let overflow = || {
        QuotaError::InvalidArgument(
            "settle refused: the token's used quota would exceed the largest number of units"
                .into(),
        )
    };
    let remaining = token
        .balance
        .remaining
        .checked_sub(cost)
        .ok_or_else(overflow)?;
    let used = token.balance.used.checked_add(cost).ok_or_else(overflow)?;
    // An expired hold the store has not swept leaves `held` first: it covers nothing.
    token.held -= hold.sweep(now);
    let before = token.spendable();
    if hold.state == HoldState::Live {
        token.held -= hold.units;
    }
    token.balance.remaining = remaining;
    token.balance.used = used;
    let overdraft = if token.balance.unlimited {
        0
    } else {
        overdraft(before, token.spendable())
    };
    hold.state = HoldState::Settled;
    Ok((token.hold_outcome(hold, false, overdraft), true))
}

/// How much further below zero the spendable balance went from `before` to `after`.
pub fn overdraft(before: i64, after: i64) -> i64 {
    let below = |spendable: i64| 0i64.saturating_sub(spendable).max(0);
    below(after).saturating_sub(below(before)).max(0)
}

/// Release: frees `hold` without a debit. A live hold is freed; an expired
/// or released one has nothing to free (OK); a settled one is refused.
/// Either way a hold released is released for good: an expired hold becomes
/// released too, so that a later Settle of it is refused as for any other
/// released hold, whichever side of its expiry the Release came.
pub fn release(token: &mut Token, hold: &mut Hold, now: i64) -> Result<HoldOutcome, QuotaError> {
    match hold.state_at(now) {
        HoldState::Settled => Err(QuotaError::HoldSettled),
        HoldState::Released => Ok(token.hold_outcome(hold, false, 0)),
        HoldState::Expired => {
            token.held -= hold.sweep(now);
            hold.state = HoldState::Released;
            Ok(token.hold_outcome(hold, false, 0))
        }
        HoldState::Live => {
            token.held -= hold.units;
            hold.state = HoldState::Released;
            Ok(token.hold_outcome(hold, false, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(remaining: i64, used: i64, held: i64) -> Token {
        Token {
            id: 1,
            display_prefix: "sk-abcd…".into(),
            name: String::new(),
            balance: Balance {
                remaining,
                used,
                unlimited: false,
            },
            held,
            expires_at: None,
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn units(n: i64) -> QuotaUnits {
        QuotaUnits::positive(n).unwrap()
    }

    fn live(units: i64, expires_at: i64) -> Hold {
        Hold {
            units,
            expires_at,
            state: HoldState::Live,
        }
    }

    #[test]
    fn ttl_defaults_to_ten_minutes_and_is_at_most_a_day() {
        assert_eq!(HoldTtl::parse(0).unwrap().seconds(), 600);
        assert_eq!(HoldTtl::parse(1).unwrap().seconds(), 1);
        assert_eq!(HoldTtl::parse(86_400).unwrap().seconds(), 86_400);
        assert_eq!(HoldTtl::parse(30).unwrap().expires_at(100), 130);
        let ttl = HoldTtl::parse(30).unwrap();
        assert_eq!(ttl.from_second_start(0).expires_at(100), 130);
        assert_eq!(ttl.from_second_start(1).expires_at(100), 131);
        assert_eq!(ttl.from_second_start(999_999_999).expires_at(100), 131);
        for bad in [-1, 86_401, i64::MIN, i64::MAX] {
            assert!(matches!(
                HoldTtl::parse(bad),
                Err(QuotaError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn states_round_trip_through_their_codes() {
        for s in [
            HoldState::Live,
            HoldState::Settled,
            HoldState::Released,
            HoldState::Expired,
        ] {
            assert_eq!(HoldState::from_code(s.code()).unwrap(), s);
        }
        assert!(HoldState::from_code(9).is_err());
    }

    #[test]
    fn a_hold_stops_counting_at_its_expiry() {
        let mut h = live(5, 100);
        assert!(h.counts_at(99));
        assert!(!h.counts_at(100));
        assert_eq!(h.state_at(100), HoldState::Expired);
        assert_eq!(h.sweep(99), 0);
        assert_eq!(h.sweep(100), 5);
        assert_eq!(h.state, HoldState::Expired);
        assert_eq!(h.sweep(200), 0);
    }

    #[test]
    fn reserve_takes_only_the_spendable_balance() {
        let mut t = token(10, 0, 4);
        assert_eq!(t.spendable(), 6);
        assert!(matches!(
            reserve(&mut t, None, units(7), HoldTtl(60), 0),
            Err(QuotaError::QuotaExhausted { .. })
        ));
        let (out, hold) = reserve(&mut t, None, units(6), HoldTtl(60), 0).unwrap();
        assert_eq!((out.held, out.repeat, out.expires_at), (10, false, 60));
        assert_eq!(out.balance.remaining, 10, "a hold leaves remaining alone");
        let hold = hold.unwrap();
        let (again, none) = reserve(&mut t, Some(&hold), units(6), HoldTtl(60), 1).unwrap();
        assert!(again.repeat && none.is_none());
        assert_eq!(t.held, 10);
        assert!(matches!(
            reserve(&mut t, Some(&hold), units(6), HoldTtl(60), 60),
            Err(QuotaError::HoldExpired)
        ));
        let mut unlimited = token(0, 0, 0);
        unlimited.balance.unlimited = true;
        assert!(reserve(&mut unlimited, None, units(50), HoldTtl(60), 0).is_ok());
        assert_eq!(unlimited.held, 50);
        let mut disabled = token(10, 0, 0);
        disabled.enabled = false;
        assert!(matches!(
            reserve(&mut disabled, None, units(1), HoldTtl(60), 0),
            Err(QuotaError::TokenDisabled)
        ));
    }

    #[test]
    fn settle_below_at_and_above_the_hold() {
        // remaining 100, one hold of 30: spendable 70.
        for (cost, remaining, overdraft) in [(10, 90, 0), (30, 70, 0), (80, 20, 0), (120, -20, 20)]
        {
            let mut t = token(100, 0, 30);
            let mut h = live(30, 60);
            let (out, debit) = settle(&mut t, &mut h, cost, 0).unwrap();
            assert!(debit);
            assert_eq!(
                (out.balance.remaining, out.balance.used, out.held),
                (remaining, cost, 0)
            );
            assert_eq!(out.overdraft, overdraft, "cost {cost}");
            assert_eq!(t.spendable(), remaining);
            assert_eq!(t.balance.limit_units(), 100, "holds never change the limit");
            let (again, debit) = settle(&mut t, &mut h, cost, 1).unwrap();
            assert!(again.repeat && !debit && again.overdraft == 0);
        }
    }

    #[test]
    fn an_overdrawn_token_overdraws_by_the_cost_above_the_hold() {
        let mut t = token(-5, 10, 0);
        let mut h = live(3, 60);
        t.held = 3;
        let (out, _) = settle(&mut t, &mut h, 4, 0).unwrap();
        assert_eq!(out.overdraft, 1);
        assert_eq!(t.spendable(), -9);
        let mut t = token(-5, 10, 3);
        let mut h = live(3, 60);
        let (out, _) = settle(&mut t, &mut h, 2, 0).unwrap();
        assert_eq!((out.overdraft, t.spendable()), (0, -7));
    }

    #[test]
    fn an_expired_hold_is_settled_from_the_balance() {
        let mut t = token(10, 0, 0);
        let mut h = Hold {
            state: HoldState::Expired,
            ..live(8, 5)
        };
        let (out, _) = settle(&mut t, &mut h, 12, 6).unwrap();
        assert_eq!((out.balance.remaining, out.overdraft), (-2, 2));
        // Unswept: still counted in held until the settle frees it.
        let mut t = token(10, 0, 8);
        let mut h = live(8, 5);
        let (out, _) = settle(&mut t, &mut h, 4, 6).unwrap();
        assert_eq!((out.balance.remaining, out.held, out.overdraft), (6, 0, 0));
    }

    #[test]
    fn unlimited_tokens_never_overdraw() {
        let mut t = token(0, 0, 5);
        t.balance.unlimited = true;
        let mut h = live(5, 60);
        let (out, _) = settle(&mut t, &mut h, 50, 0).unwrap();
        assert_eq!((out.balance.remaining, out.overdraft), (-50, 0));
    }

    #[test]
    fn release_frees_and_refuses_only_a_settled_hold() {
        let mut t = token(10, 0, 4);
        let mut h = live(4, 60);
        let out = release(&mut t, &mut h, 0).unwrap();
        assert_eq!((out.held, h.state), (0, HoldState::Released));
        assert_eq!(release(&mut t, &mut h, 1).unwrap().held, 0);
        assert!(matches!(
            settle(&mut t, &mut h, 1, 1),
            Err(QuotaError::HoldReleased)
        ));
        let mut expired = live(2, 5);
        t.held = 2;
        assert_eq!(release(&mut t, &mut expired, 5).unwrap().held, 0);
        // Released for good: settling it later is refused, not a debit.
        assert_eq!(expired.state, HoldState::Released);
        assert!(matches!(
            settle(&mut t, &mut expired, 1, 6),
            Err(QuotaError::HoldReleased)
        ));
        assert_eq!(release(&mut t, &mut expired, 6).unwrap().held, 0);
        let mut settled = live(1, 60);
        t.held = 1;
        settle(&mut t, &mut settled, 1, 0).unwrap();
        assert!(matches!(
            release(&mut t, &mut settled, 0),
            Err(QuotaError::HoldSettled)
        ));
    }

    #[test]
    fn overdraft_counts_only_the_new_part_below_zero() {
        assert_eq!(overdraft(10, 5), 0);
        assert_eq!(overdraft(10, -3), 3);
        assert_eq!(overdraft(-3, -5), 2);
        assert_eq!(overdraft(-3, 4), 0);
        assert_eq!(overdraft(-3, -1), 0);
    }
}

//! Random sequences of consume, reserve, settle, release, grant and time
//! steps against an in-memory model of the contract: every answer and the
//! counters after every step match the model.
//!
//! The model is written from the contract alone (no code of the service):
//! spendable = remaining - units of unexpired holds, and the state table.

use quota_service::domain::{HoldTtl, QuotaUnits, TokenLocator};
use quota_service::store::NewToken;
use quota_service::testing::TestDb;
use quota_service::{QuotaError, Store, on_every_database};
use std::collections::{HashMap, HashSet};

const SEQUENCES: u64 = 6;
const STEPS: usize = 120;
const START: i64 = 1_800_000_000;

/// A small xorshift: the same seed gives the same sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Live,
    Settled,
    Released,
}

#[derive(Clone, Copy, Debug)]
struct ModelHold {
    units: i64,
    expires_at: i64,
    state: State,
}

/// What a call answers, as far as the contract says: the counters and flags
/// of a success, or the kind of refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Ok {
        remaining: i64,
        used: i64,
        held: i64,
        repeat: bool,
        overdraft: i64,
    },
    Exhausted,
    AlreadyExists,
    NotFound,
    FailedPrecondition,
}

struct Model {
    remaining: i64,
    used: i64,
    holds: HashMap<String, ModelHold>,
    debits: HashSet<String>,
}

impl Model {
    fn held(&self, now: i64) -> i64 {
        self.holds
            .values()
            .filter(|h| h.state == State::Live && h.expires_at > now)
            .map(|h| h.units)
            .sum()
    }

    fn spendable(&self, now: i64) -> i64 {
        self.remaining - self.held(now)
    }

    fn ok(&self, now: i64, repeat: bool, overdraft: i64) -> Answer {
        Answer::Ok {
            remaining: self.remaining,
            used: self.used,
            held: self.held(now),
            repeat,
            overdraft,
        }
    }

    fn expired(hold: &ModelHold, now: i64) -> bool {
        hold.state == State::Live && hold.expires_at <= now
    }

    fn consume(&mut self, units: i64, id: &str, now: i64) -> Answer {
        if self.holds.contains_key(id) {
            return Answer::AlreadyExists;
        }
        if self.debits.contains(id) {
            return self.ok(now, true, 0);
        }
        if self.spendable(now) < units {
            return Answer::Exhausted;
        }
        self.remaining -= units;
        self.used += units;
        self.debits.insert(id.to_owned());
        self.ok(now, false, 0)
    }

    fn reserve(&mut self, units: i64, id: &str, ttl: i64, now: i64) -> Answer {
        if self.debits.contains(id) {
            return Answer::AlreadyExists;
        }
        if let Some(hold) = self.holds.get(id) {
            return match hold.state {
                State::Released => Answer::FailedPrecondition,
                State::Live if Self::expired(hold, now) => Answer::FailedPrecondition,
                State::Live | State::Settled => self.ok(now, true, 0),
            };
        }
        if self.spendable(now) < units {
            return Answer::Exhausted;
        }
        let hold = ModelHold {
            units,
            expires_at: now + if ttl == 0 { 600 } else { ttl },
            state: State::Live,
        };
        self.holds.insert(id.to_owned(), hold);
        self.ok(now, false, 0)
    }

    fn settle(&mut self, id: &str, cost: i64, now: i64) -> Answer {
        if self.debits.contains(id) {
            return Answer::AlreadyExists;
        }
        let Some(hold) = self.holds.get(id).copied() else {
            return Answer::NotFound;
        };
        match hold.state {
            State::Released => Answer::FailedPrecondition,
            State::Settled => self.ok(now, true, 0),
            State::Live => {
                let below = |s: i64| (-s).max(0);
                let before = self.spendable(now);
                self.holds.insert(
                    id.to_owned(),
                    ModelHold {
                        state: State::Settled,
                        ..hold
                    },
                );
                self.remaining -= cost;
                self.used += cost;
                let overdraft = (below(self.spendable(now)) - below(before)).max(0);
                self.ok(now, false, overdraft)
            }
        }
    }

    fn release(&mut self, id: &str, now: i64) -> Answer {
        if self.debits.contains(id) {
            return Answer::AlreadyExists;
        }
        let Some(hold) = self.holds.get_mut(id) else {
            return Answer::NotFound;
        };
        match hold.state {
            State::Settled => Answer::FailedPrecondition,
            State::Released => self.ok(now, false, 0),
            // Expired or not, a released hold is released for good.
            State::Live => {
                hold.state = State::Released;
                self.ok(now, false, 0)
            }
        }
    }
}

/// The store's answer in the model's terms.
fn answer<T>(result: Result<T, QuotaError>, ok: impl FnOnce(T) -> Answer) -> Answer {
    match result {
        Ok(value) => ok(value),
        Err(QuotaError::QuotaExhausted { .. }) => Answer::Exhausted,
        Err(QuotaError::RequestIdInUse(_)) => Answer::AlreadyExists,
        Err(QuotaError::HoldNotFound) => Answer::NotFound,
        Err(QuotaError::HoldExpired | QuotaError::HoldReleased | QuotaError::HoldSettled) => {
            Answer::FailedPrecondition
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

on_every_database!(
    random_sequences_match_the_model,
    random_sequences_match_the_model
);
async fn random_sequences_match_the_model(db: TestDb) {
    let store = db.store().await;
    for seed in 1..=SEQUENCES {
        run(&store, seed).await;
    }
}

async fn run(store: &Store, seed: u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let granted = 50 + rng.below(100);
    let new = NewToken {
        quota: granted,
        ..Default::default()
    };
    let (token, key) = store.create_token(new, START).await.unwrap();
    let digest = key.digest();
    let mut model = Model {
        remaining: granted,
        used: 0,
        holds: HashMap::new(),
        debits: HashSet::new(),
    };
    let mut now = START;
    for step in 0..STEPS {
        // Few ids, so that calls meet each other's ids in every state.
        let id = format!("id-{}", rng.below(12));
        let units = 1 + rng.below(30);
        let (what, expected, got) = match rng.below(10) {
            0 | 1 => {
                let expected = model.consume(units, &id, now);
                let q = QuotaUnits::positive(units).unwrap();
                let got = answer(store.consume(&digest, q, Some(&id), now).await, |d| {
                    Answer::Ok {
                        remaining: d.balance.remaining,
                        used: d.balance.used,
                        held: model.held(now),
                        repeat: d.repeat,
                        overdraft: 0,
                    }
                });
                (format!("consume {units} {id}"), expected, got)
            }
            2..=4 => {
                let ttl = [0, 1, 2, 3, 5][rng.below(5) as usize];
                let expected = model.reserve(units, &id, ttl, now);
                let q = QuotaUnits::positive(units).unwrap();
                let ttl_parsed = HoldTtl::parse(ttl).unwrap();
                let result = store.reserve(&digest, q, &id, ttl_parsed, now).await;
                if let (Ok(held), Some(hold)) = (&result, model.holds.get(&id)) {
                    assert_eq!(held.expires_at, hold.expires_at, "step {step}");
                }
                let got = answer(result, hold_answer);
                (format!("reserve {units} {id} ttl {ttl}"), expected, got)
            }
            5 | 6 => {
                let cost = rng.below(40);
                let expected = model.settle(&id, cost, now);
                let got = answer(store.settle(&digest, &id, cost, now).await, hold_answer);
                (format!("settle {id} {cost}"), expected, got)
            }
            7 => {
                let expected = model.release(&id, now);
                let got = answer(store.release(&digest, &id, now).await, hold_answer);
                (format!("release {id}"), expected, got)
            }
            8 => {
                let at = TokenLocator::Id(token.id);
                let q = QuotaUnits::positive(units).unwrap();
                store.grant(&at, q, now).await.unwrap();
                model.remaining += units;
                (format!("grant {units}"), Answer::NotFound, Answer::NotFound)
            }
            _ => {
                now += rng.below(3);
                (format!("time {now}"), Answer::NotFound, Answer::NotFound)
            }
        };
        assert_eq!(got, expected, "seed {seed}, step {step}: {what}");
        let stored = store.token(&TokenLocator::Id(token.id)).await.unwrap();
        let held = store.held_at(&stored, now).await.unwrap();
        assert_eq!(
            (stored.balance.remaining, stored.balance.used, held),
            (model.remaining, model.used, model.held(now)),
            "seed {seed}, step {step}: counters after {what}"
        );
        assert_eq!(stored.balance.limit_units(), model.remaining + model.used);
    }
}

fn hold_answer(outcome: quota_service::domain::HoldOutcome) -> Answer {
    Answer::Ok {
        remaining: outcome.balance.remaining,
        used: outcome.balance.used,
        held: outcome.held,
        repeat: outcome.repeat,
        overdraft: outcome.overdraft,
    }
}

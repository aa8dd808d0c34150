//! A token's share of a transaction, in memory: its counters, the holds and
//! debits its operations name, and what they change.
//!
//! Each operation runs the domain's rule against the counters, after
//! sweeping the holds expired at its own time, in arrival order; what changed
//! is then handed to [`Writes`], which the transaction writes for every token
//! of the group at once (see `group`), the usage per day included.

use super::group::{LedgerRow, Writes};
use super::queue::{Op, Outcome};
use crate::domain::{self, Debit, Hold, HoldState, QuotaError, Token};
use crate::store::entity::{KIND_DEBIT, hold};
use std::collections::{HashMap, HashSet};

/// A hold the batch knows of: one looked up, or one it made.
struct Slot {
    /// The row's id; `None` for a hold this batch made.
    id: Option<i64>,
    hold: Hold,
    /// True when the state changed and is to be written.
    dirty: bool,
}

/// What a token's batch knows and changes, in memory until it writes.
pub(super) struct Book {
    token: Token,
    /// The counters as locked, to write only what changed.
    before: Token,
    /// Holds by request id.
    holds: HashMap<String, Slot>,
    /// Request ids of `Consume` debits (ledger rows that are not holds).
    debits: HashSet<String>,
    /// Request ids of live holds that may expire within the batch.
    expiring: Vec<String>,
    /// Ledger rows to insert.
    ledger: Vec<LedgerRow>,
    /// The same debits, as (time, units), for the usage per day.
    spent: Vec<(i64, i64)>,
    /// The latest time of an operation that changed something.
    last_now: i64,
}

impl Book {
    /// The book of `token` (its row locked), from the hold rows looked up for
    /// it (those its operations name, and live ones expired by `latest`; a
    /// row that is both comes twice and counts once) and the request ids of
    /// its ledger rows that its operations name (at least those that name no
    /// hold: a settled hold's ledger row, if given, counts as the hold).
    pub(super) fn new(
        token: Token,
        hold_rows: Vec<hold::Model>,
        ledger_ids: Vec<String>,
        latest: i64,
    ) -> Result<Book, QuotaError> {
        let mut holds = HashMap::with_capacity(hold_rows.len());
        let mut expiring = Vec::new();
        for row in hold_rows {
            if holds.contains_key(&row.request_id) {
                continue;
            }
            let hold = Hold {
                units: row.units,
                expires_at: row.expires_at,
                state: HoldState::from_code(row.state)?,
            };
            if hold.state == HoldState::Live && hold.expires_at <= latest {
                expiring.push(row.request_id.clone());
            }
            let slot = Slot {
                id: Some(row.id),
                hold,
                dirty: false,
            };
            holds.insert(row.request_id, slot);
        }
        let debits = ledger_ids
            .into_iter()
            // A settled hold's debit is in the ledger too: it is a hold.
            .filter(|id| !holds.contains_key(id))
            .collect();
        Ok(Book {
            before: token.clone(),
            token,
            holds,
            debits,
            expiring,
            ledger: Vec::new(),
            spent: Vec::new(),
            last_now: 0,
        })
    }

    /// Hands what changed to `writes`: the counters, new holds, hold states
    /// and ledger rows.
    pub(super) fn write_into(self, writes: &mut Writes) {
        let token = &self.token;
        if token.balance != self.before.balance || token.held != self.before.held {
            writes.token(token, self.last_now);
        }
        for (request_id, slot) in self.holds {
            match slot.id {
                None => writes.new_hold(token.id, request_id, &slot.hold, self.last_now),
                Some(id) if slot.dirty => writes.hold_state(id, slot.hold.state, self.last_now),
                Some(_) => {}
            }
        }
        writes.ledger(self.ledger);
        for (at, units) in self.spent {
            writes.spent(token.id, at, units);
        }
    }

    /// Sweeps the holds expired at `now`, then runs `op` by the domain's rules.
    pub(super) fn apply(&mut self, op: &Op, now: i64) -> Result<Outcome, QuotaError> {
        for id in &self.expiring {
            if let Some(slot) = self.holds.get_mut(id) {
                let freed = slot.hold.sweep(now);
                if freed != 0 {
                    self.token.held -= freed;
                    slot.dirty = true;
                    self.last_now = std::cmp::Ord::max(self.last_now, now);
                }
            }
        }
        let outcome = match op {
            Op::Consume { units, request_id } => {
                if let Some(id) = request_id {
                    if self.holds.contains_key(id) {
                        return Err(QuotaError::RequestIdInUse("a hold"));
                    }
                    if self.debits.contains(id) {
                        return Ok(Outcome::Debit(Debit {
                            balance: self.token.balance,
                            repeat: true,
                        }));
                    }
                }
                if let Some(refusal) = self.token.debit_refusal(*units, now) {
                    return Err(refusal);
                }
                self.token.balance = self.token.balance.after_debit(*units);
                self.debit(units.get(), request_id.as_deref(), now);
                if let Some(id) = request_id {
                    self.debits.insert(id.clone());
                }
                Outcome::Debit(Debit {
                    balance: self.token.balance,
                    repeat: false,
                })
            }
            Op::Reserve {
                units,
                request_id,
                ttl,
            } => {
                self.not_a_debit(request_id)?;
                let existing = self.holds.get(request_id).map(|slot| &slot.hold);
                let (outcome, made) =
                    domain::reserve(&mut self.token, existing, *units, *ttl, now)?;
                if let Some(hold) = made {
                    let slot = Slot {
                        id: None,
                        hold,
                        dirty: true,
                    };
                    self.holds.insert(request_id.clone(), slot);
                    self.touch(now);
                }
                Outcome::Hold(outcome)
            }
            Op::Settle { request_id, cost } => {
                self.not_a_debit(request_id)?;
                let slot = self
                    .holds
                    .get_mut(request_id)
                    .ok_or(QuotaError::HoldNotFound)?;
                let (outcome, debit) = domain::settle(&mut self.token, &mut slot.hold, *cost, now)?;
                if debit {
                    slot.dirty = true;
                    self.debit(*cost, Some(request_id), now);
                }
                Outcome::Hold(outcome)
            }
            Op::Release { request_id } => {
                self.not_a_debit(request_id)?;
                let slot = self
                    .holds
                    .get_mut(request_id)
                    .ok_or(QuotaError::HoldNotFound)?;
                let state = slot.hold.state;
                let outcome = domain::release(&mut self.token, &mut slot.hold, now)?;
                if slot.hold.state != state {
                    slot.dirty = true;
                    self.touch(now);
                }
                Outcome::Hold(outcome)
            }
        };
        Ok(outcome)
    }

    /// Refuses a hold call whose request id names a `Consume` debit.
    fn not_a_debit(&self, request_id: &str) -> Result<(), QuotaError> {
        if self.debits.contains(request_id) {
            Err(QuotaError::RequestIdInUse("a debit of Consume"))
        } else {
            Ok(())
        }
    }

    /// Notes that something changed at `now`.
    fn touch(&mut self, now: i64) {
        self.last_now = std::cmp::Ord::max(self.last_now, now);
    }

    fn debit(&mut self, units: i64, request_id: Option<&str>, now: i64) {
        self.ledger.push(LedgerRow {
            token_id: self.token.id,
            kind: KIND_DEBIT,
            units,
            request_id: request_id.map(str::to_owned),
            at: now,
        });
        self.spent.push((now, units));
        self.touch(now);
    }
}

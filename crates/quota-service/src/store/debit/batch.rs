//! One transaction for a batch of a token's debits and hold calls, in
//! arrival order, each with its own outcome.
//!
//! The token's row is locked first (as every write to a token does), then the
//! request ids of the batch are looked up in the ledger and the hold table,
//! together with the token's live holds that have expired by the batch's
//! latest time. Each operation then runs the domain's rule against the
//! counters in memory, after sweeping the holds expired at its own time; the
//! result is written back with one UPDATE of the token, one INSERT each for
//! new holds and ledger rows, one upsert of the usage per day (one row per
//! day, a settle's debit on the settle's day) and one UPDATE per hold state
//! changed.

use super::queue::{Op, Outcome};
use super::sql::{BatchError, ledger_insert, ledger_row};
use crate::domain::{self, Debit, Hold, HoldState, KeyDigest, QuotaError, Token};
use crate::store::entity::{KIND_DEBIT, hold, ledger, token};
use crate::store::usage::{UsageDays, add_usage_days};
use crate::store::{Store, to_domain};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QuerySelect,
};
use std::collections::{HashMap, HashSet};

/// A hold the batch knows of: one looked up, or one it made.
struct Slot {
    /// The row's id; `None` for a hold this batch made.
    id: Option<i64>,
    hold: Hold,
    /// True when the state changed and is to be written.
    dirty: bool,
}

/// What a batch knows and changes, in memory until it writes.
struct Book {
    token: Token,
    /// Holds by request id.
    holds: HashMap<String, Slot>,
    /// Request ids of `Consume` debits (ledger rows that are not holds).
    debits: HashSet<String>,
    /// Request ids of live holds that may expire within the batch.
    expiring: Vec<String>,
    /// Ledger rows to insert.
    ledger: Vec<[sea_orm::sea_query::SimpleExpr; 5]>,
    /// The same debits, summed per day.
    days: UsageDays,
    /// The latest time of an operation that changed something.
    last_now: i64,
}

impl Store {
    /// Runs `batch` (operations of the token whose key has `digest`, each
    /// with its time) in one transaction; returns each operation's outcome, in order.
    pub(super) async fn apply_batch(
        &self,
        digest: &KeyDigest,
        batch: &[(&Op, i64)],
    ) -> Result<Vec<Result<Outcome, QuotaError>>, BatchError> {
        let txn = self.begin_write().await?;
        let row = token::Entity::find()
            .filter(token::Column::KeyDigest.eq(digest.as_str()))
            .lock_exclusive()
            .one(&txn)
            .await?;
        let Some(row) = row else {
            return Ok(batch
                .iter()
                .map(|_| Err(QuotaError::TokenNotFound))
                .collect());
        };
        let token = to_domain(row);
        let before = token.clone();
        let latest = batch.iter().map(|(_, now)| *now).max().unwrap_or(0);
        let mut book = Book::load(&txn, token, batch, latest).await?;

        let outcomes = batch.iter().map(|(op, now)| book.apply(op, *now)).collect();
        book.write(&txn, &before).await?;
        txn.commit().await?;
        Ok(outcomes)
    }

    /// Runs one operation under the token's row lock: the exact answer, for
    /// the cases the single conditional UPDATE does not decide.
    pub(super) async fn apply_one(
        &self,
        digest: &KeyDigest,
        op: &Op,
        now: i64,
    ) -> Result<Outcome, QuotaError> {
        match self.apply_batch(digest, &[(op, now)]).await {
            Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                Err(QuotaError::Internal("a batch of one had no outcome".into()))
            }),
            // Under the row lock no other writer can have used the id: the
            // unique index disagreeing is a fault, not a race.
            Err(BatchError::Duplicate) => Err(QuotaError::Internal(
                "a request id was written while its token was locked".into(),
            )),
            Err(BatchError::Failed(err)) => Err(err),
        }
    }
}

impl Book {
    /// Looks up what the batch's request ids name, and the token's live holds
    /// expired by `latest`.
    async fn load(
        txn: &DatabaseTransaction,
        token: Token,
        batch: &[(&Op, i64)],
        latest: i64,
    ) -> Result<Book, BatchError> {
        let ids: Vec<&str> = batch.iter().filter_map(|(op, _)| op.request_id()).collect();
        let mut condition = Condition::any();
        if !ids.is_empty() {
            condition = condition.add(hold::Column::RequestId.is_in(ids.iter().copied()));
        }
        if token.held != 0 {
            condition = condition.add(
                Condition::all()
                    .add(hold::Column::State.eq(HoldState::Live.code()))
                    .add(hold::Column::ExpiresAt.lte(latest)),
            );
        }
        let rows = if condition.is_empty() {
            Vec::new()
        } else {
            hold::Entity::find()
                .filter(hold::Column::TokenId.eq(token.id))
                .filter(condition)
                .all(txn)
                .await?
        };
        let mut holds = HashMap::with_capacity(rows.len());
        let mut expiring = Vec::new();
        for row in rows {
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
        let debits = if ids.is_empty() {
            HashSet::new()
        } else {
            ledger::Entity::find()
                .select_only()
                .column(ledger::Column::RequestId)
                .filter(ledger::Column::TokenId.eq(token.id))
                .filter(ledger::Column::RequestId.is_in(ids))
                .into_tuple::<Option<String>>()
                .all(txn)
                .await?
                .into_iter()
                .flatten()
                // A settled hold's debit is in the ledger too: it is a hold.
                .filter(|id| !holds.contains_key(id))
                .collect()
        };
        Ok(Book {
            token,
            holds,
            debits,
            expiring,
            ledger: Vec::new(),
            days: UsageDays::default(),
            last_now: 0,
        })
    }

    /// Sweeps the holds expired at `now`, then runs `op` by the domain's rules.
    fn apply(&mut self, op: &Op, now: i64) -> Result<Outcome, QuotaError> {
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
        self.ledger.push(ledger_row(
            self.token.id,
            KIND_DEBIT,
            units,
            request_id,
            now,
        ));
        self.days.add(self.token.id, now, units);
        self.touch(now);
    }

    /// Writes what changed: the token's counters, new holds, hold states,
    /// ledger rows and the usage per day.
    async fn write(self, txn: &DatabaseTransaction, before: &Token) -> Result<(), BatchError> {
        let token = &self.token;
        if token.balance != before.balance || token.held != before.held {
            let update = Query::update()
                .table(token::Entity)
                .value(token::Column::Remaining, token.balance.remaining)
                .value(token::Column::Used, token.balance.used)
                .value(token::Column::Held, token.held)
                .value(token::Column::UpdatedAt, self.last_now)
                .and_where(Expr::col(token::Column::Id).eq(token.id))
                .to_owned();
            txn.execute(&update).await?;
        }

        let mut new_holds = Query::insert()
            .into_table(hold::Entity)
            .columns([
                hold::Column::TokenId,
                hold::Column::RequestId,
                hold::Column::Units,
                hold::Column::ExpiresAt,
                hold::Column::State,
                hold::Column::CreatedAt,
                hold::Column::UpdatedAt,
            ])
            .to_owned();
        let mut any_new = false;
        let mut changed: HashMap<i16, Vec<i64>> = HashMap::new();
        for (request_id, slot) in &self.holds {
            match slot.id {
                None => {
                    any_new = true;
                    new_holds
                        .values([
                            token.id.into(),
                            request_id.clone().into(),
                            slot.hold.units.into(),
                            slot.hold.expires_at.into(),
                            slot.hold.state.code().into(),
                            self.last_now.into(),
                            self.last_now.into(),
                        ])
                        .map_err(|e| QuotaError::Internal(format!("hold insert: {e}")))?;
                }
                Some(id) if slot.dirty => {
                    changed.entry(slot.hold.state.code()).or_default().push(id);
                }
                Some(_) => {}
            }
        }
        if any_new {
            txn.execute(&new_holds)
                .await
                .map_err(BatchError::from_insert)?;
        }
        for (state, ids) in changed {
            let update = Query::update()
                .table(hold::Entity)
                .value(hold::Column::State, state)
                .value(hold::Column::UpdatedAt, self.last_now)
                .and_where(Expr::col(hold::Column::Id).is_in(ids))
                .to_owned();
            txn.execute(&update).await?;
        }
        if !self.ledger.is_empty() {
            txn.execute(&ledger_insert(self.ledger)?)
                .await
                .map_err(BatchError::from_insert)?;
        }
        add_usage_days(txn, &self.days).await?;
        Ok(())
    }
}

//! Group commit: one transaction settles the waiting debits and hold calls
//! of several tokens, each in arrival order, each with its own outcome.
//!
//! The tokens' rows are locked first, in ascending id order, so that two
//! groups (on one replica or on several sharing the database) never wait for
//! each other in a cycle. Then one SELECT looks up the holds the group's
//! (token, request id) pairs name, with (`UNION ALL`) the live holds of its
//! tokens that have expired by the group's latest time and the ledger rows
//! that the pairs of its `Consume` and `Reserve` calls name (a `Settle` or
//! `Release` id that names no hold is looked up in the ledger after).
//! It names exact pairs, which the unique (token, request id) indexes
//! answer (on PostgreSQL one `LATERAL` probe per pair, on SQLite one per
//! element of a JSON array: see `json`), so neither a token's history nor
//! stale statistics make it slower. Each token's
//! operations run in memory against its own counters ([`Book`]); the result
//! is written with one UPDATE of every changed token row, one INSERT of the
//! new holds, one UPDATE per hold state (on SQLite one for all), one INSERT
//! of the ledger rows and one upsert of the usage per token and UTC day (on
//! PostgreSQL all of them in one statement, on SQLite in one call of
//! statements whose texts do not depend on the group), then one commit for
//! all of them.

use super::batch::Book;
use super::json::{self, Part};
use super::queue::{Op, Outcome};
use super::sql::{BatchError, ledger_insert, ledger_row};
use crate::domain::{Hold, HoldState, KeyDigest, QuotaError, Token};
use crate::store::entity::{hold, ledger, token};
use crate::store::usage::{UsageDays, usage_upsert};
use crate::store::{Store, to_domain};
use sea_orm::sea_query::{
    Alias, Asterisk, CommonTableExpression, Expr, ExprTrait, Iden, InsertStatement, JoinType,
    Query, SelectStatement, SimpleExpr, SubQueryStatement, UnionType, UpdateStatement, WithClause,
    WithQuery,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use std::collections::{HashMap, HashSet};

/// How many times a group the database rolled back to break a deadlock runs again.
const DEADLOCK_RETRIES: u32 = 3;

/// One token's operations in a group, each with its time.
pub(super) type Work<'a> = (&'a KeyDigest, Vec<(&'a Op, i64)>);

/// Each token's outcomes, in the order of its operations.
pub(super) type Outcomes = Vec<Vec<Result<Outcome, QuotaError>>>;

impl Store {
    /// Runs the operations of every token of `group` in one transaction;
    /// returns each token's outcomes, in order. A token that does not exist
    /// answers `TokenNotFound` to each of its operations and leaves the
    /// others unaffected.
    ///
    /// A transaction the database rolls back to break a deadlock (between
    /// replicas, or gap locks of the day totals' upserts on MySQL) wrote
    /// nothing and runs again, up to [`DEADLOCK_RETRIES`] times.
    pub(super) async fn apply_group(&self, group: &[Work<'_>]) -> Result<Outcomes, BatchError> {
        let mut retries = 0;
        loop {
            match self.apply_group_once(group).await {
                Err(BatchError::Deadlock(_)) if retries < DEADLOCK_RETRIES => retries += 1,
                other => return other,
            }
        }
    }

    async fn apply_group_once(&self, group: &[Work<'_>]) -> Result<Outcomes, BatchError> {
        let digests: Vec<&str> = group.iter().map(|(d, _)| d.as_str()).collect();
        // MySQL locks rows in the order its index scan meets them; a scan of
        // the primary key meets them by id. Ids never change, so they may be
        // read before the transaction.
        let ids = if digests.len() > 1 && self.db.get_database_backend() == DatabaseBackend::MySql {
            Some(
                token::Entity::find()
                    .select_only()
                    .column(token::Column::Id)
                    .filter(token::Column::KeyDigest.is_in(digests.iter().copied()))
                    .into_tuple::<i64>()
                    .all(&self.read)
                    .await?,
            )
        } else {
            None
        };
        let txn = self.begin_write().await?;
        let rows = lock_tokens(&txn, &digests, ids).await?;
        let latest = group
            .iter()
            .flat_map(|(_, ops)| ops.iter().map(|(_, now)| *now))
            .max()
            .unwrap_or(0);
        let tokens: Vec<(String, Token)> = rows.into_iter().map(to_domain_with_digest).collect();
        let mut books = load(&txn, tokens, group, latest).await?;

        let mut outcomes = Vec::with_capacity(group.len());
        for (digest, ops) in group {
            let answers = match books.get_mut(digest.as_str()) {
                Some(book) => ops.iter().map(|(op, now)| book.apply(op, *now)).collect(),
                None => ops.iter().map(|_| Err(QuotaError::TokenNotFound)).collect(),
            };
            outcomes.push(answers);
        }
        let mut writes = Writes::default();
        for (_, book) in books {
            book.write_into(&mut writes);
        }
        writes.execute(&txn).await?;
        txn.commit().await?;
        Ok(outcomes)
    }

    /// Runs `batch` (operations of the token whose key has `digest`, each
    /// with its time) in one transaction; returns each operation's outcome, in order.
    pub(super) async fn apply_batch(
        &self,
        digest: &KeyDigest,
        batch: Vec<(&Op, i64)>,
    ) -> Result<Vec<Result<Outcome, QuotaError>>, BatchError> {
        let mut outcomes = self.apply_group(&[(digest, batch)]).await?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    /// Runs one operation under the token's row lock: the exact answer, for
    /// the cases the single conditional UPDATE does not decide.
    pub(super) async fn apply_one(
        &self,
        digest: &KeyDigest,
        op: &Op,
        now: i64,
    ) -> Result<Outcome, QuotaError> {
        match self.apply_batch(digest, vec![(op, now)]).await {
            Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                Err(QuotaError::Internal("a batch of one had no outcome".into()))
            }),
            // Under the row lock no other writer can have used the id: the
            // unique index disagreeing is a fault, not a race.
            Err(BatchError::Duplicate) => Err(QuotaError::Internal(
                "a request id was written while its token was locked".into(),
            )),
            Err(BatchError::Deadlock(err) | BatchError::Failed(err)) => Err(err),
        }
    }
}

/// The token and the digest it was found by.
fn to_domain_with_digest(row: token::Model) -> (String, Token) {
    let digest = row.key_digest.clone();
    (digest, to_domain(row))
}

/// Locks the rows of the tokens with `digests`, in ascending id order (by
/// `ids` when given: their ids, read beforehand).
async fn lock_tokens(
    txn: &DatabaseTransaction,
    digests: &[&str],
    ids: Option<Vec<i64>>,
) -> Result<Vec<token::Model>, BatchError> {
    let find = token::Entity::find();
    let find = match ids {
        Some(ids) if ids.is_empty() => return Ok(Vec::new()),
        Some(ids) => find.filter(token::Column::Id.is_in(ids)),
        None if txn.get_database_backend() == DatabaseBackend::Sqlite => {
            let (condition, digests) = json::digest_in(digests);
            find.filter(Expr::cust_with_values(condition, [digests]))
        }
        None => find.filter(token::Column::KeyDigest.is_in(digests.iter().copied())),
    };
    // PostgreSQL locks the rows after sorting them; SQLite has one writer.
    let rows = find
        .order_by_asc(token::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| digests.contains(&row.key_digest.as_str()))
        .collect())
}

/// Looks up, for every locked token, the holds its operations name, its
/// live holds expired by `latest`, and the ledger rows of the request ids
/// that may name a debit (those of `Consume` and `Reserve` calls, and those
/// of `Settle` and `Release` calls that name no hold); one book each, by
/// key digest.
async fn load(
    txn: &DatabaseTransaction,
    tokens: Vec<(String, Token)>,
    group: &[Work<'_>],
    latest: i64,
) -> Result<HashMap<String, Book>, BatchError> {
    let id_of: HashMap<&str, i64> = tokens.iter().map(|(d, t)| (d.as_str(), t.id)).collect();
    // Each locked token's id with the request ids its operations name that
    // `keep` keeps.
    let named_by = |keep: fn(&Op) -> bool| -> Vec<(i64, Vec<&str>)> {
        group
            .iter()
            .filter_map(|(digest, ops)| {
                let ids: Vec<&str> = ops
                    .iter()
                    .filter(|(op, _)| keep(op))
                    .filter_map(|(op, _)| op.request_id())
                    .collect();
                let token = id_of.get(digest.as_str())?;
                (!ids.is_empty()).then_some((*token, ids))
            })
            .collect()
    };
    let named = named_by(|_| true);
    // The ledger answers only for ids that may name a debit: a `Consume`'s
    // (a repeat) or a `Reserve`'s (refused). A `Settle` or `Release` needs
    // it only when its id names no hold, looked up after.
    let may_be_debits = named_by(|op| matches!(op, Op::Consume { .. } | Op::Reserve { .. }));
    let holding: Vec<i64> = tokens
        .iter()
        .filter(|(_, t)| t.held != 0)
        .map(|(_, t)| t.id)
        .collect();
    // One statement: the named holds, the expired ones and the named ledger
    // rows, each a SELECT, joined by UNION ALL (rather than one SELECT with
    // OR, which SQLite plans as a scan of every hold of the token). A hold
    // both named and expired comes twice ([`Book::new`] keeps one); a named
    // id that is a hold and in the ledger (settled) is a hold.
    let backend = txn.get_database_backend();
    let lookup = if backend == DatabaseBackend::Sqlite {
        let mut parts = Vec::new();
        if !named.is_empty() {
            parts.push(json::holds_named(&named));
        }
        if !holding.is_empty() {
            parts.push(json::holds_expired(
                &holding,
                HoldState::Live.code(),
                latest,
            ));
        }
        if !may_be_debits.is_empty() {
            parts.push(json::ledger_named(&may_be_debits, LEDGER_ROW));
        }
        (!parts.is_empty()).then(|| Part::join(parts, " UNION ALL "))
    } else {
        sea_lookup(backend, &named, holding, latest, &may_be_debits)
    };
    let mut holds: HashMap<i64, Vec<hold::Model>> = HashMap::new();
    let mut debits: HashMap<i64, Vec<String>> = HashMap::new();
    if let Some(lookup) = lookup {
        let rows = hold::Entity::find().from_raw_sql(lookup).all(txn).await?;
        for row in rows {
            if row.expires_at == LEDGER_ROW {
                debits.entry(row.token_id).or_default().push(row.request_id);
            } else {
                holds.entry(row.token_id).or_default().push(row);
            }
        }
    }
    // Settle and Release ids that named no hold: a debit's, or nobody's.
    let closing = named_by(|op| matches!(op, Op::Settle { .. } | Op::Release { .. }));
    let mut unheld: Vec<(i64, Vec<&str>)> = Vec::new();
    if !closing.is_empty() {
        let found: HashSet<(i64, &str)> = holds
            .iter()
            .flat_map(|(token, rows)| rows.iter().map(|r| (*token, r.request_id.as_str())))
            .collect();
        for (token, mut ids) in closing {
            ids.retain(|id| !found.contains(&(token, *id)));
            if !ids.is_empty() {
                unheld.push((token, ids));
            }
        }
    }
    if !unheld.is_empty() {
        let lookup = if backend == DatabaseBackend::Sqlite {
            json::ledger_named(&unheld, LEDGER_ROW).statement()
        } else {
            backend.build(&ledger_named(backend, &unheld))
        };
        let rows = hold::Entity::find().from_raw_sql(lookup).all(txn).await?;
        for row in rows {
            debits.entry(row.token_id).or_default().push(row.request_id);
        }
    }
    let mut books = HashMap::with_capacity(tokens.len());
    for (digest, token) in tokens {
        let id = token.id;
        let book = Book::new(
            token,
            holds.remove(&id).unwrap_or_default(),
            debits.remove(&id).unwrap_or_default(),
            latest,
        )?;
        books.insert(digest, book);
    }
    Ok(books)
}

/// The look-up of `load` on PostgreSQL and MySQL: the named holds, the
/// expired ones and the named ledger rows, each a SELECT, joined by `UNION ALL`.
fn sea_lookup(
    backend: DatabaseBackend,
    named: &[(i64, Vec<&str>)],
    holding: Vec<i64>,
    latest: i64,
    may_be_debits: &[(i64, Vec<&str>)],
) -> Option<Statement> {
    let mut selects = Vec::new();
    if !named.is_empty() {
        selects.push(only_named(
            hold_select(),
            backend,
            named,
            (hold::Entity, hold::Column::TokenId, hold::Column::RequestId),
        ));
    }
    if !holding.is_empty() {
        selects.push(
            hold_select()
                .and_where(Expr::col(hold::Column::TokenId).is_in(holding))
                .and_where(Expr::col(hold::Column::State).eq(HoldState::Live.code()))
                .and_where(Expr::col(hold::Column::ExpiresAt).lte(latest))
                .to_owned(),
        );
    }
    if !may_be_debits.is_empty() {
        selects.push(ledger_named(backend, may_be_debits));
    }
    let mut selects = selects.into_iter();
    let mut select = selects.next()?;
    for other in selects {
        select.union(UnionType::All, other);
    }
    Some(backend.build(&select))
}

/// The ledger rows of exactly the (token, request id) `pairs` named, as
/// rows of [`hold_select`]'s shape (see [`ledger_select`]).
fn ledger_named(backend: DatabaseBackend, pairs: &[(i64, Vec<&str>)]) -> SelectStatement {
    only_named(
        ledger_select(),
        backend,
        pairs,
        (
            ledger::Entity,
            ledger::Column::TokenId,
            ledger::Column::RequestId,
        ),
    )
}

/// `select`, of `table`, restricted to the rows of exactly the (token,
/// request id) `pairs` named, which only the unique index on those two
/// columns answers in one probe each. On PostgreSQL the pairs are a `VALUES`
/// list, and `select` a `LATERAL` subquery run once per pair (`LIMIT 1`, as
/// the pair is unique, keeps the planner from flattening it into a join it
/// may plan as a scan): the plan is one index probe per pair, whatever the
/// statistics say. A join on the columns lets a planner whose statistics
/// predate the table's growth (they said it was empty) hash every row of
/// it, and a condition on them (even one pair per token and id) lets it probe
/// the index by the token alone and filter every row of it by id; either
/// way each call gets slower as the table or a busy token grows. On MySQL,
/// the condition of [`named_pairs`] (SQLite's look-ups are `json`'s).
fn only_named<T: Iden + Clone + 'static, C: ColumnTrait>(
    mut select: SelectStatement,
    backend: DatabaseBackend,
    pairs: &[(i64, Vec<&str>)],
    (table, token, request): (T, C, C),
) -> SelectStatement {
    if backend != DatabaseBackend::Postgres {
        select.cond_where(named_pairs(pairs, token, request));
        return select;
    }
    let rows = pairs
        .iter()
        .flat_map(|(id, ids)| ids.iter().map(move |r| (*id, (*r).to_owned())));
    select
        .and_where(Expr::col((table.clone(), token)).equals(("n", "column1")))
        .and_where(Expr::col((table, request)).equals(("n", "column2")))
        .limit(1);
    Query::select()
        .column(("h", Asterisk))
        .from_values(rows, "n")
        .join_lateral(JoinType::InnerJoin, select, "h", Expr::val(true))
        .to_owned()
}

/// `(token = t1 AND request IN (…)) OR (token = t2 AND …)`: exactly the
/// (token, request id) pairs named, which only the unique index on those
/// two columns answers. A plain `token IN (…) AND request IN (…)` lets a
/// planner whose statistics predate a token's growth read every row of the
/// token by its other index, which a busy token makes slower with each call.
fn named_pairs<C: ColumnTrait>(pairs: &[(i64, Vec<&str>)], token: C, request: C) -> Condition {
    pairs.iter().fold(Condition::any(), |any, (id, ids)| {
        any.add(
            Condition::all()
                .add(token.eq(*id))
                .add(request.is_in(ids.iter().copied())),
        )
    })
}

/// `SELECT` of every column of `quota_holds`, in the order of [`hold::Model`].
fn hold_select() -> SelectStatement {
    use hold::Column as C;
    Query::select()
        .columns([
            C::Id,
            C::TokenId,
            C::RequestId,
            C::Units,
            C::ExpiresAt,
            C::State,
            C::CreatedAt,
            C::UpdatedAt,
        ])
        .from(hold::Entity)
        .to_owned()
}

/// The `expires_at` of a ledger row in the group's look-up, which has the
/// columns of a hold: no hold expires before 1970.
const LEDGER_ROW: i64 = -1;

/// `SELECT` of a ledger row as [`hold_select`] selects a hold, under the
/// hold's column names (so it reads as a [`hold::Model`] alone as well as
/// after a hold's `SELECT` in a `UNION`): its id, token, request id and
/// units, [`LEDGER_ROW`] for the expiry, its kind for the state and its
/// time for both times.
fn ledger_select() -> SelectStatement {
    use hold::Column as H;
    use ledger::Column as C;
    Query::select()
        .columns([C::Id, C::TokenId, C::RequestId, C::Units])
        .expr_as(Expr::val(LEDGER_ROW), H::ExpiresAt)
        .expr_as(Expr::col(C::Kind), H::State)
        .expr_as(Expr::col(C::CreatedAt), H::CreatedAt)
        .expr_as(Expr::col(C::CreatedAt), H::UpdatedAt)
        .from(ledger::Entity)
        .to_owned()
}

/// A hold a group makes.
pub(super) struct NewHold {
    pub(super) token_id: i64,
    pub(super) request_id: String,
    pub(super) units: i64,
    pub(super) expires_at: i64,
    pub(super) state: i16,
    /// When it was made (its `created_at` and `updated_at`).
    pub(super) at: i64,
}

/// A ledger row a group writes.
pub(super) struct LedgerRow {
    pub(super) token_id: i64,
    pub(super) kind: i16,
    pub(super) units: i64,
    pub(super) request_id: Option<String>,
    pub(super) at: i64,
}

/// What a group writes, gathered from every token's [`Book`].
#[derive(Default)]
pub(super) struct Writes {
    /// Changed counters: id, remaining, used, held, updated at.
    tokens: Vec<[i64; 5]>,
    new_holds: Vec<NewHold>,
    /// Hold ids whose state changed, with the new state and time.
    states: Vec<(i64, i16, i64)>,
    ledger: Vec<LedgerRow>,
    /// The same debits summed per token and UTC day.
    days: UsageDays,
}

impl Writes {
    /// The counters of `token` changed, last at `now`.
    pub(super) fn token(&mut self, token: &Token, now: i64) {
        let b = &token.balance;
        self.tokens
            .push([token.id, b.remaining, b.used, token.held, now]);
    }

    /// A hold made at `now`.
    pub(super) fn new_hold(&mut self, token_id: i64, request_id: String, hold: &Hold, now: i64) {
        self.new_holds.push(NewHold {
            token_id,
            request_id,
            units: hold.units,
            expires_at: hold.expires_at,
            state: hold.state.code(),
            at: now,
        });
    }

    /// A hold whose state changed, last at `now`.
    pub(super) fn hold_state(&mut self, id: i64, state: HoldState, now: i64) {
        self.states.push((id, state.code(), now));
    }

    /// Ledger rows to insert.
    pub(super) fn ledger(&mut self, rows: Vec<LedgerRow>) {
        self.ledger.extend(rows);
    }

    /// A debit of `units` of token `token_id` at `at`, for the usage per day.
    pub(super) fn spent(&mut self, token_id: i64, at: i64, units: i64) {
        self.days.add(token_id, at, units);
    }

    /// Writes everything in `txn`: on PostgreSQL as one statement (each
    /// write but the last in a `WITH`), on SQLite as one call of several
    /// statements of fixed texts ([`json`]), elsewhere one statement each.
    async fn execute(self, txn: &DatabaseTransaction) -> Result<(), BatchError> {
        let backend = txn.get_database_backend();
        if backend == DatabaseBackend::Sqlite {
            let parts = self.sqlite_parts();
            if !parts.is_empty() {
                txn.execute_raw(Part::join(parts, ";\n"))
                    .await
                    .map_err(BatchError::from_insert)?;
            }
            return Ok(());
        }
        let statements = self.statements(backend)?;
        match backend {
            DatabaseBackend::Postgres if statements.len() > 1 => {
                if let Some(one) = as_one(statements) {
                    txn.execute(&one).await.map_err(BatchError::from_insert)?;
                }
            }
            _ => {
                for statement in statements {
                    txn.execute_raw(statement.build(backend))
                        .await
                        .map_err(BatchError::from_insert)?;
                }
            }
        }
        Ok(())
    }

    /// Every write on SQLite, in the order of [`Writes::statements`].
    fn sqlite_parts(self) -> Vec<Part> {
        let mut parts = Vec::new();
        if !self.tokens.is_empty() {
            parts.push(json::counters_update(&self.tokens));
        }
        if !self.new_holds.is_empty() {
            parts.push(json::holds_insert(&self.new_holds));
        }
        if !self.states.is_empty() {
            parts.push(json::hold_states(&self.states));
        }
        if !self.ledger.is_empty() {
            parts.push(json::ledger_insert(&self.ledger));
        }
        parts.extend(json::usage_upsert(&self.days));
        parts
    }

    /// Every write, in order: counters, new holds, hold states, ledger rows,
    /// usage per day. They touch different rows, so that PostgreSQL may run
    /// them as the parts of one statement, which sees none of the others'
    /// effects.
    fn statements(self, backend: DatabaseBackend) -> Result<Vec<Write>, BatchError> {
        let mut statements = Vec::new();
        if !self.tokens.is_empty() {
            statements.push(Write::Update(counters_update(&self.tokens)));
        }
        if !self.new_holds.is_empty() {
            statements.push(Write::Insert(holds_insert(&self.new_holds)?));
        }
        let mut states: HashMap<(i16, i64), Vec<i64>> = HashMap::new();
        for (id, state, now) in self.states {
            states.entry((state, now)).or_default().push(id);
        }
        for ((state, now), ids) in states {
            let update = Query::update()
                .table(hold::Entity)
                .value(hold::Column::State, state)
                .value(hold::Column::UpdatedAt, now)
                .and_where(Expr::col(hold::Column::Id).is_in(ids))
                .to_owned();
            statements.push(Write::Update(update));
        }
        if !self.ledger.is_empty() {
            let rows = self
                .ledger
                .iter()
                .map(|r| ledger_row(r.token_id, r.kind, r.units, r.request_id.as_deref(), r.at));
            statements.push(Write::Insert(ledger_insert(rows)?));
        }
        if let Some(upsert) = usage_upsert(backend, &self.days)? {
            statements.push(Write::Insert(upsert));
        }
        Ok(statements)
    }
}

/// `statements` as one: each but the last in a `WITH` (PostgreSQL runs
/// every part, whether or not the last one reads it).
fn as_one(mut statements: Vec<Write>) -> Option<WithQuery> {
    let last = SubQueryStatement::from(statements.pop()?);
    let mut with = WithClause::new();
    for (i, statement) in statements.into_iter().enumerate() {
        with.cte(
            CommonTableExpression::new()
                .query(statement)
                .table_name(Alias::new(format!("w{i}")))
                .to_owned(),
        );
    }
    Some(with.query(last))
}

/// One statement of [`Writes`].
enum Write {
    Insert(InsertStatement),
    Update(UpdateStatement),
}

impl Write {
    /// The statement in `backend`'s SQL, with its values.
    fn build(&self, backend: DatabaseBackend) -> Statement {
        match self {
            Write::Insert(insert) => backend.build(insert),
            Write::Update(update) => backend.build(update),
        }
    }
}

impl From<Write> for SubQueryStatement {
    fn from(write: Write) -> Self {
        match write {
            Write::Insert(insert) => insert.into(),
            Write::Update(update) => update.into(),
        }
    }
}

/// One UPDATE of the counters of every row in `rows` (id, remaining, used,
/// held, updated at): a plain one for a single row, `CASE id WHEN …` for several.
fn counters_update(rows: &[[i64; 5]]) -> sea_orm::sea_query::UpdateStatement {
    use token::Column as C;
    let mut update = Query::update().table(token::Entity).to_owned();
    if let [[id, remaining, used, held, now]] = rows {
        return update
            .value(C::Remaining, *remaining)
            .value(C::Used, *used)
            .value(C::Held, *held)
            .value(C::UpdatedAt, *now)
            .and_where(Expr::col(C::Id).eq(*id))
            .to_owned();
    }
    let column = |i: usize, col: C| -> SimpleExpr {
        let mut case = Expr::case(Expr::col(C::Id).eq(rows[0][0]), rows[0][i]);
        for row in &rows[1..] {
            case = case.case(Expr::col(C::Id).eq(row[0]), row[i]);
        }
        case.finally(Expr::col(col)).into()
    };
    update
        .value(C::Remaining, column(1, C::Remaining))
        .value(C::Used, column(2, C::Used))
        .value(C::Held, column(3, C::Held))
        .value(C::UpdatedAt, column(4, C::UpdatedAt))
        .and_where(Expr::col(C::Id).is_in(rows.iter().map(|r| r[0])))
        .to_owned()
}

/// `INSERT INTO quota_holds (...) VALUES (...), ...`.
fn holds_insert(rows: &[NewHold]) -> Result<InsertStatement, BatchError> {
    use hold::Column as C;
    let mut insert = Query::insert()
        .into_table(hold::Entity)
        .columns([
            C::TokenId,
            C::RequestId,
            C::Units,
            C::ExpiresAt,
            C::State,
            C::CreatedAt,
            C::UpdatedAt,
        ])
        .to_owned();
    for h in rows {
        let row: [SimpleExpr; 7] = [
            h.token_id.into(),
            h.request_id.as_str().into(),
            h.units.into(),
            h.expires_at.into(),
            h.state.into(),
            h.at.into(),
            h.at.into(),
        ];
        insert
            .values(row)
            .map_err(|e| QuotaError::Internal(format!("hold insert: {e}")))?;
    }
    Ok(insert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};

    #[test]
    fn postgres_writes_a_group_in_one_statement() {
        let mut writes = Writes::default();
        let token = Token {
            id: 7,
            display_prefix: String::new(),
            name: String::new(),
            balance: crate::domain::Balance {
                remaining: 90,
                used: 10,
                unlimited: false,
            },
            held: 5,
            expires_at: None,
            enabled: true,
            created_at: 0,
            updated_at: 0,
        };
        writes.token(&token, 100);
        let hold = Hold {
            units: 5,
            expires_at: 700,
            state: HoldState::Live,
        };
        writes.new_hold(7, "r".into(), &hold, 100);
        writes.hold_state(3, HoldState::Settled, 100);
        writes.ledger(vec![debit_row(7, 4, "s", 100)]);
        writes.spent(7, 100, 4);
        let statements = writes
            .statements(DatabaseBackend::Postgres)
            .unwrap_or_else(|_| panic!("the writes build"));
        let sql = as_one(statements)
            .expect("a statement")
            .to_string(PostgresQueryBuilder);
        let parts: Vec<&str> = sql.split(") , ").collect();
        assert_eq!(parts.len(), 4, "four parts in WITH: {sql}");
        assert!(
            parts[0].starts_with(r#"WITH "w0" AS (UPDATE "quota_tokens" SET"#),
            "{sql}"
        );
        assert!(
            parts[1].starts_with(r#""w1" AS (INSERT INTO "quota_holds""#),
            "{sql}"
        );
        assert!(
            parts[2].starts_with(r#""w2" AS (UPDATE "quota_holds" SET "state" = 2"#),
            "{sql}"
        );
        assert!(
            parts[3].starts_with(r#""w3" AS (INSERT INTO "quota_ledger""#),
            "{sql}"
        );
        assert!(
            parts[3].ends_with(concat!(
                r#"INSERT INTO "quota_usage_days" ("token_id", "day", "units") VALUES (7, 0, 4)"#,
                r#" ON CONFLICT ("token_id", "day") DO UPDATE SET "units" = "quota_usage_days"."units" + (excluded.units)"#
            )),
            "{sql}"
        );
    }

    fn debit_row(token_id: i64, units: i64, request_id: &str, at: i64) -> LedgerRow {
        LedgerRow {
            token_id,
            kind: 2,
            units,
            request_id: Some(request_id.to_owned()),
            at,
        }
    }

    /// The script of `writes` on SQLite: its text and its values.
    fn sqlite_script(writes: Writes) -> (String, Vec<String>) {
        let script = Part::join(writes.sqlite_parts(), ";\n");
        let values = script
            .values
            .map(|v| v.0.iter().map(|v| format!("{v:?}")).collect())
            .unwrap_or_default();
        (script.sql, values)
    }

    #[test]
    fn sqlite_writes_groups_of_any_size_with_the_same_texts() {
        let mut small = Writes::default();
        small.hold_state(3, HoldState::Settled, 100);
        small.ledger(vec![debit_row(7, 4, "s", 100)]);
        let (small_sql, values) = sqlite_script(small);
        // Each statement binds its rows as one JSON array, in order.
        assert_eq!(
            values,
            [
                r#"String(Some("[[3,2,100]]"))"#,
                r#"String(Some("[[7,2,4,\"s\",100]]"))"#,
            ]
        );
        let mut large = Writes::default();
        for id in 0..40 {
            large.hold_state(id, HoldState::Released, 100 + id);
            large.ledger(vec![debit_row(id, 1, &format!("r{id}"), 100)]);
        }
        let (large_sql, _) = sqlite_script(large);
        assert_eq!(large_sql, small_sql);
        assert_eq!(small_sql.matches('?').count(), 2, "{small_sql}");
    }

    #[test]
    fn postgres_probes_the_unique_index_once_per_named_pair() {
        let pairs = vec![(7, vec!["a", "b"]), (9, vec!["c"])];
        let select = only_named(
            hold_select(),
            DatabaseBackend::Postgres,
            &pairs,
            (hold::Entity, hold::Column::TokenId, hold::Column::RequestId),
        );
        let sql = select.to_string(PostgresQueryBuilder);
        assert_eq!(
            sql,
            concat!(
                r#"SELECT "h".* FROM (VALUES (7, 'a'), (7, 'b'), (9, 'c')) AS "n" INNER JOIN LATERAL"#,
                r#" (SELECT "id", "token_id", "request_id", "units", "expires_at", "state", "created_at", "updated_at""#,
                r#" FROM "quota_holds" WHERE "quota_holds"."token_id" = "n"."column1""#,
                r#" AND "quota_holds"."request_id" = "n"."column2" LIMIT 1) AS "h" ON TRUE"#,
            )
        );
    }

    #[test]
    fn named_pairs_match_each_token_with_its_own_request_ids() {
        let pairs = vec![(7, vec!["a", "b"]), (9, vec!["c"])];
        let sql = hold_select()
            .cond_where(named_pairs(
                &pairs,
                hold::Column::TokenId,
                hold::Column::RequestId,
            ))
            .to_string(SqliteQueryBuilder);
        let (_, condition) = sql.split_once(" WHERE ").expect("a WHERE clause");
        assert_eq!(
            condition,
            concat!(
                r#"("quota_holds"."token_id" = 7 AND "quota_holds"."request_id" IN ('a', 'b'))"#,
                r#" OR ("quota_holds"."token_id" = 9 AND "quota_holds"."request_id" IN ('c'))"#,
            )
        );
    }
}

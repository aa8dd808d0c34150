//! The SQL of a single debit, and of a single reserve: one conditional
//! UPDATE with its ledger row, or its hold's row. Batches, and whatever that
//! UPDATE does not decide, are in `batch`.

use super::queue::{Op, Outcome};
use crate::domain::{
    Balance, Debit, HoldOutcome, HoldState, HoldTtl, KeyDigest, QuotaError, QuotaUnits,
};
use crate::store::Store;
use crate::store::entity::{KIND_DEBIT, STATUS_ENABLED, hold, ledger, token};
use crate::store::error::{is_deadlock, is_unique_violation};
use crate::store::usage::{UsageDays, add_usage_days};
use sea_orm::sea_query::{
    Expr, ExprTrait, InsertStatement, Query, ReturningClause, SimpleExpr, UpdateStatement,
};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, TransactionTrait};

impl Store {
    /// One call on its own. A `Consume` is one conditional UPDATE (enabled,
    /// unexpired, unlimited or a spendable balance that covers it, counting
    /// every hold not yet swept) and its ledger row, written only if the
    /// request id names no hold, with its day's usage total, in one
    /// transaction. A `Reserve` is the same UPDATE of `held` and its hold's
    /// row, written only if the request id names no debit and no live hold
    /// of the token has expired: with none unswept, `held` counts exactly
    /// the live holds, so the answer is the one the row-locked path gives
    /// (on PostgreSQL and SQLite; on MySQL a reserve takes the row lock).
    /// Anything else (a refusal, a repeat that the unique index rolls back,
    /// an id that names the other kind, expired holds still counted), and
    /// every other call, is decided under the token's row lock, after a
    /// sweep: a refusal there is never wrong for long, and a success always
    /// right, since unswept holds only make the condition stricter.
    pub(super) async fn run_one(
        &self,
        digest: &KeyDigest,
        op: &Op,
        now: i64,
    ) -> Result<Outcome, QuotaError> {
        let alone = match op {
            Op::Consume { units, request_id } => self
                .debit_alone(digest, *units, request_id.as_deref(), now)
                .await
                .map(|debit| debit.map(Outcome::Debit)),
            // Not on MySQL: there the hold's `INSERT … SELECT` reads with
            // next-key locks, which two lone calls of neighbouring tokens can
            // take in opposite orders (a deadlock, answered again below, but
            // a rolled-back transaction each time).
            Op::Reserve {
                units,
                request_id,
                ttl,
            } if self.db.get_database_backend() != DatabaseBackend::MySql => self
                .reserve_alone(digest, *units, request_id, *ttl, now)
                .await
                .map(|hold| hold.map(Outcome::Hold)),
            Op::Reserve { .. } | Op::Settle { .. } | Op::Release { .. } => Ok(None),
        };
        match alone {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => self.apply_one(digest, op, now).await,
            // Rolled back to break a deadlock: nothing was written.
            Err(e) if is_deadlock(&e) => self.apply_one(digest, op, now).await,
            Err(e) => Err(e.into()),
        }
    }

    /// The single debit's transaction: the debit, or `None` (rolled back)
    /// when the conditional `UPDATE` or the ledger row did not take it.
    async fn debit_alone(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Option<Debit>, DbErr> {
        let update = debit_update(digest.as_str(), units.get(), now);
        let row = |token_id| debit_insert(token_id, units.get(), request_id, now);
        let counters = self
            .alone(digest, update, row, Some((units.get(), now)))
            .await?;
        Ok(counters.map(|(balance, _)| Debit {
            balance,
            repeat: false,
        }))
    }

    /// The single reserve's transaction: the hold, or `None` (rolled back)
    /// when the conditional `UPDATE` or the hold's row did not take it.
    async fn reserve_alone(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: &str,
        ttl: HoldTtl,
        now: i64,
    ) -> Result<Option<HoldOutcome>, DbErr> {
        let expires_at = ttl.expires_at(now);
        let update = reserve_update(digest.as_str(), units.get(), now);
        let row = |token_id| hold_insert(token_id, units.get(), request_id, expires_at, now);
        let counters = self.alone(digest, update, row, None).await?;
        Ok(counters.map(|(balance, held)| HoldOutcome {
            balance,
            held,
            repeat: false,
            expires_at,
            overdraft: 0,
        }))
    }

    /// One call's transaction: the conditional `update` of the token whose
    /// key has `digest`, then the row `insert` makes for the token's id and,
    /// for a debit (`debited`: its units and time), the day's usage total.
    /// Returns the counters after it (balance and held units), committed, or
    /// `None`, rolled back, when the update matched nothing or the insert
    /// wrote no row (its condition, or a unique index, refused it).
    async fn alone(
        &self,
        digest: &KeyDigest,
        update: UpdateStatement,
        insert: impl FnOnce(i64) -> Result<InsertStatement, DbErr>,
        debited: Option<(i64, i64)>,
    ) -> Result<Option<(Balance, i64)>, DbErr> {
        let txn = self.db.begin().await?;
        if let Some((token_id, balance, held)) = counters(&txn, digest, update).await? {
            match txn.execute(&insert(token_id)?).await {
                Ok(done) if done.rows_affected() == 1 => {
                    if let Some((units, at)) = debited {
                        add_usage_days(&txn, &UsageDays::one(token_id, at, units)).await?;
                    }
                    txn.commit().await?;
                    return Ok(Some((balance, held)));
                }
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e),
            }
        }
        txn.rollback().await?;
        Ok(None)
    }
}

/// The counters after a conditional `update` of the token whose key has
/// `digest` (made by [`spendable_update`]): its id, balance and held units,
/// or `None` when the condition did not take it.
async fn counters(
    txn: &DatabaseTransaction,
    digest: &KeyDigest,
    mut update: UpdateStatement,
) -> Result<Option<(i64, Balance, i64)>, DbErr> {
    use token::Column as C;
    let row = if txn.support_returning() {
        txn.query_one(update.returning(counters_returning()))
            .await?
    } else {
        if txn.execute(&update).await?.rows_affected() != 1 {
            return Ok(None);
        }
        let select = Query::select()
            .columns(COUNTERS)
            .from(token::Entity)
            .and_where(Expr::col(C::KeyDigest).eq(digest.as_str()))
            .to_owned();
        txn.query_one(&select).await?
    };
    let Some(row) = row else { return Ok(None) };
    let id: i64 = row.try_get_by_index(0)?;
    let balance = Balance {
        remaining: row.try_get_by_index(1)?,
        used: row.try_get_by_index(2)?,
        unlimited: row.try_get_by_index(3)?,
    };
    Ok(Some((id, balance, row.try_get_by_index(4)?)))
}

/// `UPDATE` of the counters that succeeds only where
/// [`crate::domain::Token::debit_refusal`] finds nothing to refuse: the same
/// rule in SQL, with no values set yet.
fn spendable_update(digest: &str, units: i64, now: i64) -> UpdateStatement {
    use token::Column as C;
    Query::update()
        .table(token::Entity)
        .value(C::UpdatedAt, now)
        .and_where(Expr::col(C::KeyDigest).eq(digest))
        .and_where(Expr::col(C::Status).eq(STATUS_ENABLED))
        .and_where(
            Expr::col(C::ExpiresAt)
                .is_null()
                .or(Expr::col(C::ExpiresAt).gt(now)),
        )
        .and_where(
            Expr::col(C::Unlimited)
                .eq(true)
                .or(Expr::col(C::Remaining).sub(Expr::col(C::Held)).gte(units)),
        )
        .and_where(Expr::col(C::Used).lte(i64::MAX - units))
        .to_owned()
}

/// The single debit's conditional `UPDATE`.
fn debit_update(digest: &str, units: i64, now: i64) -> UpdateStatement {
    use token::Column as C;
    spendable_update(digest, units, now)
        .value(C::Remaining, Expr::col(C::Remaining).sub(units))
        .value(C::Used, Expr::col(C::Used).add(units))
        .to_owned()
}

/// The single reserve's conditional `UPDATE`: the units held, where the
/// token could debit them and its held units do not overflow.
fn reserve_update(digest: &str, units: i64, now: i64) -> UpdateStatement {
    use token::Column as C;
    spendable_update(digest, units, now)
        .value(C::Held, Expr::col(C::Held).add(units))
        .and_where(Expr::col(C::Held).lte(i64::MAX - units))
        .to_owned()
}

/// What [`counters`] reads back, in its order.
const COUNTERS: [token::Column; 5] = [
    token::Column::Id,
    token::Column::Remaining,
    token::Column::Used,
    token::Column::Unlimited,
    token::Column::Held,
];

fn counters_returning() -> ReturningClause {
    Query::returning().columns(COUNTERS)
}

/// The hold row of a single reserve: `INSERT ... SELECT` that inserts
/// nothing when the request id names a debit of the token, or when a live
/// hold of the token has expired by `now` (its units, not yet swept, are
/// still in `held`: the full path sweeps them first). The token's row lock
/// is already held, so neither can appear in between; a hold that has the
/// request id already is refused by the unique index.
fn hold_insert(
    token_id: i64,
    units: i64,
    request_id: &str,
    expires_at: i64,
    now: i64,
) -> Result<InsertStatement, DbErr> {
    use hold::Column as H;
    let debit = Query::select()
        .expr(Expr::val(1))
        .from(ledger::Entity)
        .and_where(Expr::col((ledger::Entity, ledger::Column::TokenId)).eq(token_id))
        .and_where(Expr::col((ledger::Entity, ledger::Column::RequestId)).eq(request_id))
        .to_owned();
    let expired = Query::select()
        .expr(Expr::val(1))
        .from(hold::Entity)
        .and_where(Expr::col((hold::Entity, H::TokenId)).eq(token_id))
        .and_where(Expr::col((hold::Entity, H::State)).eq(HoldState::Live.code()))
        .and_where(Expr::col((hold::Entity, H::ExpiresAt)).lte(now))
        .to_owned();
    let row: [SimpleExpr; 7] = [
        token_id.into(),
        request_id.into(),
        units.into(),
        expires_at.into(),
        HoldState::Live.code().into(),
        now.into(),
        now.into(),
    ];
    let select = Query::select()
        .exprs(row)
        .from(token::Entity)
        .and_where(Expr::col((token::Entity, token::Column::Id)).eq(token_id))
        .and_where(Expr::exists(debit).not())
        .and_where(Expr::exists(expired).not())
        .to_owned();
    Query::insert()
        .into_table(hold::Entity)
        .columns([
            H::TokenId,
            H::RequestId,
            H::Units,
            H::ExpiresAt,
            H::State,
            H::CreatedAt,
            H::UpdatedAt,
        ])
        .select_from(select)
        .map(|insert| insert.to_owned())
        .map_err(|e| DbErr::Custom(format!("hold insert: {e}")))
}

/// The ledger row of a single debit: with a request id, `INSERT ... SELECT`
/// that inserts nothing when the id names a hold of the token (the row lock
/// is already held, so no hold can appear in between).
fn debit_insert(
    token_id: i64,
    units: i64,
    request_id: Option<&str>,
    now: i64,
) -> Result<InsertStatement, DbErr> {
    let row = ledger_row(token_id, KIND_DEBIT, units, request_id, now);
    let Some(request_id) = request_id else {
        return ledger_insert([row]);
    };
    let held = Query::select()
        .expr(Expr::val(1))
        .from(hold::Entity)
        .and_where(Expr::col((hold::Entity, hold::Column::TokenId)).eq(token_id))
        .and_where(Expr::col((hold::Entity, hold::Column::RequestId)).eq(request_id))
        .to_owned();
    let select = Query::select()
        .exprs(row)
        .from(token::Entity)
        .and_where(Expr::col((token::Entity, token::Column::Id)).eq(token_id))
        .and_where(Expr::exists(held).not())
        .to_owned();
    use ledger::Column as C;
    Query::insert()
        .into_table(ledger::Entity)
        .columns([C::TokenId, C::Kind, C::Units, C::RequestId, C::CreatedAt])
        .select_from(select)
        .map(|insert| insert.to_owned())
        .map_err(|e| DbErr::Custom(format!("ledger insert: {e}")))
}

/// `INSERT INTO quota_ledger (...) VALUES (...), ...` of rows made by [`ledger_row`].
pub(super) fn ledger_insert(
    rows: impl IntoIterator<Item = [SimpleExpr; 5]>,
) -> Result<InsertStatement, DbErr> {
    use ledger::Column as C;
    let mut insert = Query::insert()
        .into_table(ledger::Entity)
        .columns([C::TokenId, C::Kind, C::Units, C::RequestId, C::CreatedAt])
        .to_owned();
    for row in rows {
        insert
            .values(row)
            .map_err(|e| DbErr::Custom(format!("ledger insert: {e}")))?;
    }
    Ok(insert)
}

/// One ledger row, in the column order of [`ledger_insert`].
pub(super) fn ledger_row(
    token_id: i64,
    kind: i16,
    units: i64,
    request_id: Option<&str>,
    now: i64,
) -> [SimpleExpr; 5] {
    [
        token_id.into(),
        kind.into(),
        units.into(),
        request_id.map(str::to_owned).into(),
        now.into(),
    ]
}

/// Appends one row to the ledger inside `txn`.
pub(in crate::store) async fn insert_ledger(
    txn: &DatabaseTransaction,
    token_id: i64,
    kind: i16,
    units: i64,
    request_id: Option<&str>,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    let row = ledger_row(token_id, kind, units, request_id, now);
    txn.execute(&ledger_insert([row])?).await?;
    Ok(())
}

/// The statements one debit executes on PostgreSQL, as a pgbench script, so
/// that the benchmark compares the service with PostgreSQL running exactly
/// this SQL. `digest_sql` and `request_id_sql` are SQL expressions standing
/// for the bound values.
#[cfg(feature = "testing")]
pub fn pgbench_debit_script(
    digest_sql: &str,
    units: i64,
    request_id_sql: &str,
    now: i64,
) -> Result<String, QuotaError> {
    use sea_orm::sea_query::PostgresQueryBuilder;
    const DIGEST: &str = "@@digest@@";
    const REQUEST_ID: &str = "@@request_id@@";
    const TOKEN_ID: i64 = 987_654_321_987_654_321;
    let update = debit_update(DIGEST, units, now)
        .returning(counters_returning())
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{DIGEST}'"), digest_sql);
    let insert = debit_insert(TOKEN_ID, units, Some(REQUEST_ID), now)?
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{REQUEST_ID}'"), request_id_sql)
        .replace(&TOKEN_ID.to_string(), ":id");
    let usage = crate::store::usage::usage_upsert(
        sea_orm::DatabaseBackend::Postgres,
        &UsageDays::one(TOKEN_ID, now, units),
    )?
    .ok_or_else(|| QuotaError::Internal("a debit without its day".into()))?
    .to_string(PostgresQueryBuilder)
    .replace(&TOKEN_ID.to_string(), ":id");
    Ok(format!(
        "BEGIN;\n{update} \\gset\n{insert};\n{usage};\nCOMMIT;\n"
    ))
}

/// Why a batch as a whole did not settle.
pub(super) enum BatchError {
    /// A request id of the batch is in the ledger after all.
    Duplicate,
    /// The database rolled the transaction back to break a deadlock:
    /// nothing was written, and the batch may run again.
    Deadlock(QuotaError),
    /// The database failed; every debit of the batch gets this answer.
    Failed(QuotaError),
}

impl BatchError {
    pub(super) fn from_insert(err: DbErr) -> BatchError {
        if is_unique_violation(&err) {
            BatchError::Duplicate
        } else {
            err.into()
        }
    }
}

impl From<DbErr> for BatchError {
    fn from(err: DbErr) -> Self {
        if is_deadlock(&err) {
            BatchError::Deadlock(err.into())
        } else {
            BatchError::Failed(err.into())
        }
    }
}

impl From<QuotaError> for BatchError {
    fn from(err: QuotaError) -> Self {
        BatchError::Failed(err)
    }
}

//! The SQL of a debit: one conditional UPDATE with its ledger row, or a batch
//! of one token's debits under its row lock in one transaction.

use super::queue::Pending;
use crate::domain::{Balance, Debit, KeyDigest, QuotaError, QuotaUnits};
use crate::store::entity::{KIND_DEBIT, STATUS_ENABLED, ledger, token};
use crate::store::error::is_unique_violation;
use crate::store::{Store, to_domain};
use sea_orm::sea_query::{
    Expr, ExprTrait, InsertStatement, Query, ReturningClause, SimpleExpr, UpdateStatement,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait,
};
use std::collections::HashSet;

impl Store {
    /// Settles several debits of one token in one transaction; returns each
    /// debit's outcome, in order.
    pub(super) async fn consume_batch(
        &self,
        digest: &KeyDigest,
        batch: &[Pending],
    ) -> Result<Vec<Result<Debit, QuotaError>>, BatchError> {
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
        let ids: Vec<&str> = batch
            .iter()
            .filter_map(|p| p.request_id.as_deref())
            .collect();
        let mut seen: HashSet<String> = if ids.is_empty() {
            HashSet::new()
        } else {
            ledger::Entity::find()
                .select_only()
                .column(ledger::Column::RequestId)
                .filter(ledger::Column::TokenId.eq(row.id))
                .filter(ledger::Column::RequestId.is_in(ids))
                .into_tuple::<Option<String>>()
                .all(&txn)
                .await?
                .into_iter()
                .flatten()
                .collect()
        };

        let mut token = to_domain(row);
        let mut rows = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut last_now = 0;
        for p in batch {
            if p.request_id.as_ref().is_some_and(|id| seen.contains(id)) {
                outcomes.push(Ok(Debit {
                    balance: token.balance,
                    repeat: true,
                }));
                continue;
            }
            let outcome = match token.debit_refusal(p.units, p.now) {
                Some(refusal) => Err(refusal),
                None => {
                    token.balance = token.balance.after_debit(p.units);
                    rows.push(ledger_row(
                        token.id,
                        KIND_DEBIT,
                        p.units.get(),
                        p.request_id.as_deref(),
                        p.now,
                    ));
                    seen.extend(p.request_id.clone());
                    last_now = std::cmp::Ord::max(last_now, p.now);
                    Ok(Debit {
                        balance: token.balance,
                        repeat: false,
                    })
                }
            };
            outcomes.push(outcome);
        }

        if !rows.is_empty() {
            let update = Query::update()
                .table(token::Entity)
                .value(token::Column::Remaining, token.balance.remaining)
                .value(token::Column::Used, token.balance.used)
                .value(token::Column::UpdatedAt, last_now)
                .and_where(Expr::col(token::Column::Id).eq(token.id))
                .to_owned();
            txn.execute(&update).await?;
            txn.execute(&ledger_insert(rows)?)
                .await
                .map_err(BatchError::from_insert)?;
        }
        txn.commit().await?;
        Ok(outcomes)
    }

    /// One debit on its own: one conditional UPDATE (enabled, unexpired,
    /// unlimited or enough left) and the ledger row, in one transaction. The
    /// unique (token, request id) index makes a repeat of a succeeded request
    /// id roll back; it is then answered as a repeat, with nothing more debited.
    pub(super) async fn consume_one(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Debit, QuotaError> {
        // A refusal is diagnosed after the rollback; should the token have
        // changed in between (a grant landed), the debit is tried again.
        for _ in 0..3 {
            let txn = self.db.begin().await?;
            if let Some((token_id, balance)) = debit_counters(&txn, digest, units, now).await? {
                match insert_ledger(&txn, token_id, KIND_DEBIT, units.get(), request_id, now).await
                {
                    Ok(()) => {
                        txn.commit().await?;
                        return Ok(Debit {
                            balance,
                            repeat: false,
                        });
                    }
                    Err(e) if is_unique_violation(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            txn.rollback().await?;
            if let Some(refusal) = self.explain_refusal(digest, units, request_id, now).await? {
                return refusal;
            }
        }
        Err(QuotaError::Internal(
            "debit did not settle after three attempts".into(),
        ))
    }

    /// Why a debit was refused: a repeat (success), or the token's state.
    /// `None` when nothing stands in the way any more.
    async fn explain_refusal(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Option<Result<Debit, QuotaError>>, QuotaError> {
        let Some(token) = self.token_by_digest(digest).await? else {
            return Ok(Some(Err(QuotaError::TokenNotFound)));
        };
        if let Some(request_id) = request_id {
            let seen = ledger::Entity::find()
                .filter(ledger::Column::TokenId.eq(token.id))
                .filter(ledger::Column::RequestId.eq(request_id))
                .one(&self.db)
                .await?;
            if seen.is_some() {
                return Ok(Some(Ok(Debit {
                    balance: token.balance,
                    repeat: true,
                })));
            }
        }
        Ok(token.debit_refusal(units, now).map(Err))
    }
}

/// The conditional debit of the counters. Returns the token id and the
/// counters after the debit, or `None` when the token cannot pay.
async fn debit_counters(
    txn: &DatabaseTransaction,
    digest: &KeyDigest,
    units: QuotaUnits,
    now: i64,
) -> Result<Option<(i64, Balance)>, QuotaError> {
    use token::Column as C;
    let mut update = debit_update(digest.as_str(), units.get(), now);
    let row = if txn.support_returning() {
        txn.query_one(update.returning(debit_returning())).await?
    } else {
        if txn.execute(&update).await?.rows_affected() != 1 {
            return Ok(None);
        }
        let select = Query::select()
            .columns([C::Id, C::Remaining, C::Used, C::Unlimited])
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
    Ok(Some((id, balance)))
}

/// `UPDATE` of the counters that succeeds only where
/// [`crate::domain::Token::debit_refusal`] finds nothing to refuse: the same
/// rule in SQL.
fn debit_update(digest: &str, units: i64, now: i64) -> UpdateStatement {
    use token::Column as C;
    Query::update()
        .table(token::Entity)
        .value(C::Remaining, Expr::col(C::Remaining).sub(units))
        .value(C::Used, Expr::col(C::Used).add(units))
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
                .or(Expr::col(C::Remaining).gte(units)),
        )
        .and_where(Expr::col(C::Used).lte(i64::MAX - units))
        .to_owned()
}

fn debit_returning() -> ReturningClause {
    use token::Column as C;
    Query::returning().columns([C::Id, C::Remaining, C::Used, C::Unlimited])
}

/// `INSERT INTO quota_ledger (...) VALUES (...), ...` of rows made by [`ledger_row`].
fn ledger_insert(
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
fn ledger_row(
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
        .returning(debit_returning())
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{DIGEST}'"), digest_sql);
    let row = ledger_row(TOKEN_ID, KIND_DEBIT, units, Some(REQUEST_ID), now);
    let insert = ledger_insert([row])?
        .to_string(PostgresQueryBuilder)
        .replace(&format!("'{REQUEST_ID}'"), request_id_sql)
        .replace(&TOKEN_ID.to_string(), ":id");
    Ok(format!("BEGIN;\n{update} \\gset\n{insert};\nCOMMIT;\n"))
}

/// Why a batch as a whole did not settle.
pub(super) enum BatchError {
    /// A request id of the batch is in the ledger after all.
    Duplicate,
    /// The database failed; every debit of the batch gets this answer.
    Failed(QuotaError),
}

impl BatchError {
    fn from_insert(err: DbErr) -> BatchError {
        if is_unique_violation(&err) {
            BatchError::Duplicate
        } else {
            BatchError::Failed(err.into())
        }
    }
}

impl From<DbErr> for BatchError {
    fn from(err: DbErr) -> Self {
        BatchError::Failed(err.into())
    }
}

impl From<QuotaError> for BatchError {
    fn from(err: QuotaError) -> Self {
        BatchError::Failed(err)
    }
}

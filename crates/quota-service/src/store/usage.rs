//! Usage per UTC day: `quota_usage_days`, the sum of each token's debits on
//! each day, kept in the debit's own transaction and read by the usage route.
//!
//! Every transaction that writes a debit's ledger row (the single debit in
//! `debit/sql.rs`, through [`add_usage_days`]; a group in `debit/group.rs`,
//! whose writes include the same [`usage_upsert`]) adds the same units to
//! the same (token, day) here before it commits; a token's deletion removes
//! both. So the table always equals the ledger's
//! debits summed per (token, day), which `quotad verify` checks.

use super::entity::usage_day;
use super::{Store, placeholder};
use crate::domain::{DaySpend, QuotaError, UsageWindow};
use sea_orm::sea_query::{Expr, ExprTrait, InsertStatement, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};
use std::collections::BTreeMap;

const SECONDS_PER_DAY: i64 = 86_400;

/// The UTC day of a ledger row's time, as SQL has always computed it
/// (`created_at - created_at % 86400`); times are after 1970.
fn ledger_day(created_at: i64) -> i64 {
    created_at - created_at % SECONDS_PER_DAY
}

/// Debited units to add, per (token id, UTC day start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(in crate::store) struct UsageDays(BTreeMap<(i64, i64), i64>);

impl UsageDays {
    /// Counts a debit of `units` made at `at` (unix seconds) by `token_id`.
    /// A debit of 0 units (a settle of 0) still writes its day's row, as it
    /// writes its ledger row; [`Store::daily_usage`] leaves out days of 0.
    pub(in crate::store) fn add(&mut self, token_id: i64, at: i64, units: i64) {
        let day = self.0.entry((token_id, ledger_day(at))).or_insert(0);
        // Never overflows: a day's units are part of `used`, itself an i64.
        *day = day.saturating_add(units);
    }

    /// Each (token id, day start, units), in (token, day) order.
    pub(in crate::store) fn rows(&self) -> impl Iterator<Item = (i64, i64, i64)> + '_ {
        self.0
            .iter()
            .map(|(&(token, day), &units)| (token, day, units))
    }

    /// The days of one debit.
    pub(in crate::store) fn one(token_id: i64, at: i64, units: i64) -> UsageDays {
        let mut days = UsageDays::default();
        days.add(token_id, at, units);
        days
    }
}

/// Adds `days` to `quota_usage_days` inside `txn`, the transaction that
/// writes their ledger rows: one multi-row upsert for all of them (one row
/// per (token, day), however many debits), in (token, day) order, so that
/// concurrent transactions take the rows' locks in one order.
///
/// Call it once per transaction with every debit the transaction writes.
pub(in crate::store) async fn add_usage_days<C: ConnectionTrait>(
    txn: &C,
    days: &UsageDays,
) -> Result<(), DbErr> {
    if let Some(upsert) = usage_upsert(txn.get_database_backend(), days)? {
        txn.execute(&upsert).await?;
    }
    Ok(())
}

/// The upsert of [`add_usage_days`] (`None` for no days): a day already
/// counted gets the new units added to its own.
pub(in crate::store) fn usage_upsert(
    backend: DatabaseBackend,
    days: &UsageDays,
) -> Result<Option<InsertStatement>, DbErr> {
    use usage_day::Column as C;
    if days.0.is_empty() {
        return Ok(None);
    }
    let mut insert = Query::insert()
        .into_table(usage_day::Entity)
        .columns([C::TokenId, C::Day, C::Units])
        .to_owned();
    for (&(token_id, day), &units) in &days.0 {
        insert
            .values([token_id.into(), day.into(), units.into()])
            .map_err(|e| DbErr::Custom(format!("usage upsert: {e}")))?;
    }
    // The incoming row's units: MySQL names them by `VALUES()`, the others
    // by the `excluded` row.
    let incoming = match backend {
        DatabaseBackend::MySql => Expr::cust("VALUES(units)"),
        _ => Expr::cust("excluded.units"),
    };
    insert.on_conflict(
        OnConflict::columns([C::TokenId, C::Day])
            .value(
                C::Units,
                Expr::col((usage_day::Entity, C::Units)).add(incoming),
            )
            .to_owned(),
    );
    Ok(Some(insert))
}

impl Store {
    /// Units debited per UTC day within `window`, oldest first: the token's
    /// rows of `quota_usage_days`, one per day with spend. A day whose
    /// debits add up to 0 units (settles of 0) is not a day with spend and
    /// is left out. The window's bounds are day starts (as
    /// [`UsageWindow::parse`] makes them); a day counts when its start is
    /// within `[start, end)`.
    pub async fn daily_usage(
        &self,
        token_id: i64,
        window: UsageWindow,
    ) -> Result<Vec<DaySpend>, QuotaError> {
        self.bounded(async {
            let backend = self.read.get_database_backend();
            // Debits are never negative: a day's units are 0 or spend.
            let mut sql = format!(
                "SELECT day, units FROM quota_usage_days WHERE token_id = {} AND units > 0",
                placeholder(backend, 1)
            );
            let mut values: Vec<sea_orm::Value> = vec![token_id.into()];
            for (bound, op) in [(window.start, ">="), (window.end, "<")] {
                if let Some(at) = bound {
                    values.push(at.into());
                    sql.push_str(&format!(
                        " AND day {op} {}",
                        placeholder(backend, values.len())
                    ));
                }
            }
            sql.push_str(" ORDER BY day");
            let rows = self
                .read
                .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(DaySpend {
                        day: row.try_get_by_index(0)?,
                        units: row.try_get_by_index(1)?,
                    })
                })
                .collect::<Result<_, DbErr>>()
                .map_err(QuotaError::from)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debits_add_up_per_token_and_utc_day() {
        let day0 = 1_799_971_200;
        let mut days = UsageDays::default();
        days.add(2, day0 + 5, 10);
        days.add(1, day0 + SECONDS_PER_DAY - 1, 3);
        days.add(2, day0, 7);
        days.add(2, day0 + SECONDS_PER_DAY, 1);
        days.add(1, day0, 0);
        let rows: Vec<_> = days.0.into_iter().collect();
        assert_eq!(
            rows,
            [
                ((1, day0), 3),
                ((2, day0), 17),
                ((2, day0 + SECONDS_PER_DAY), 1)
            ]
        );
        assert_eq!(
            UsageDays::one(4, day0 + 1, 0)
                .0
                .into_iter()
                .collect::<Vec<_>>(),
            [((4, day0), 0)]
        );
    }
}

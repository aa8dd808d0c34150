//! Per-day usage totals: the units each token debited on each UTC day, kept
//! in the debit's own transaction, so that the usage route reads a few rows
//! per token instead of scanning its ledger.
//!
//! Additive only: a new table, backfilled from the ledger's debits in one
//! `INSERT ... SELECT` (one row per token and day, however many debits).
//! Debits written by a replica of the previous version after the backfill
//! are not in it: `quotad verify` names every day that disagrees.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum QuotaTokens {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum QuotaUsageDays {
    Table,
    TokenId,
    Day,
    Units,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QuotaUsageDays::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QuotaUsageDays::TokenId)
                            .big_integer()
                            .not_null(),
                    )
                    // Unix seconds of the UTC day's start.
                    .col(ColumnDef::new(QuotaUsageDays::Day).big_integer().not_null())
                    // The sum of the token's debits that day (a settle of 0 is a
                    // debit of 0 units: the day is there, with 0).
                    .col(
                        ColumnDef::new(QuotaUsageDays::Units)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(QuotaUsageDays::TokenId)
                            .col(QuotaUsageDays::Day),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(QuotaUsageDays::Table, QuotaUsageDays::TokenId)
                            .to(QuotaTokens::Table, QuotaTokens::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // The day of a ledger row as the usage route has always counted it:
        // created_at - created_at % 86400 (times are after 1970).
        let bigint = match manager.get_database_backend() {
            DatabaseBackend::MySql => "SIGNED",
            _ => "BIGINT",
        };
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "INSERT INTO quota_usage_days (token_id, day, units) \
                 SELECT token_id, created_at - (created_at % 86400), CAST(SUM(units) AS {bigint}) \
                 FROM quota_ledger WHERE kind = 2 \
                 GROUP BY token_id, created_at - (created_at % 86400)"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuotaUsageDays::Table).to_owned())
            .await
    }
}

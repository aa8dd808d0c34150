//! The tokens and their ledger of grants and debits.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum QuotaTokens {
    Table,
    Id,
    KeyDigest,
    DisplayPrefix,
    Name,
    Remaining,
    Used,
    Unlimited,
    ExpiresAt,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum QuotaLedger {
    Table,
    Id,
    TokenId,
    Kind,
    Units,
    RequestId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QuotaTokens::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QuotaTokens::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    // Hex SHA-256 of the plaintext key: the only form of the key kept. VARCHAR,
                    // not CHAR: PostgreSQL compares CHAR with text parameters through a
                    // cast that cannot use the index.
                    .col(
                        ColumnDef::new(QuotaTokens::KeyDigest)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::DisplayPrefix)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::Name)
                            .string_len(255)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::Remaining)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::Used)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::Unlimited)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    // Unix seconds; NULL: never expires.
                    .col(ColumnDef::new(QuotaTokens::ExpiresAt).big_integer().null())
                    // 1 enabled, 2 disabled.
                    .col(
                        ColumnDef::new(QuotaTokens::Status)
                            .small_integer()
                            .not_null()
                            .default(1),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaTokens::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(QuotaLedger::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QuotaLedger::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QuotaLedger::TokenId)
                            .big_integer()
                            .not_null(),
                    )
                    // 1 grant, 2 debit.
                    .col(ColumnDef::new(QuotaLedger::Kind).small_integer().not_null())
                    .col(ColumnDef::new(QuotaLedger::Units).big_integer().not_null())
                    // The caller's idempotency key; NULL when none was given.
                    .col({
                        // Request ids are compared exactly. MySQL's collations would
                        // take `req-a` and `REQ-A ` for one id (even `_bin` ignores
                        // trailing spaces), so there they are bytes.
                        let mut col = ColumnDef::new(QuotaLedger::RequestId);
                        if manager.get_database_backend() == DatabaseBackend::MySql {
                            col.custom(Alias::new("VARBINARY(255)"));
                        } else {
                            col.string_len(255);
                        }
                        col.null();
                        col
                    })
                    .col(
                        ColumnDef::new(QuotaLedger::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(QuotaLedger::Table, QuotaLedger::TokenId)
                            .to(QuotaTokens::Table, QuotaTokens::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // One successful debit per (token, request id); NULLs never collide.
        manager
            .create_index(
                Index::create()
                    .name("ux_quota_ledger_token_request")
                    .table(QuotaLedger::Table)
                    .col(QuotaLedger::TokenId)
                    .col(QuotaLedger::RequestId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        // Usage windows scan a token's rows by time.
        manager
            .create_index(
                Index::create()
                    .name("ix_quota_ledger_token_time")
                    .table(QuotaLedger::Table)
                    .col(QuotaLedger::TokenId)
                    .col(QuotaLedger::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuotaLedger::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(QuotaTokens::Table).to_owned())
            .await
    }
}

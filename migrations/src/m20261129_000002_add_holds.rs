//! Holds: units of a token reserved before a call and settled after it.
//!
//! Additive only: a `held` counter on tokens (the units of the token's live
//! holds not yet swept, a fast copy like `remaining` and `used`) and a table
//! of the holds themselves.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum QuotaTokens {
    Table,
    Id,
    Held,
}

#[derive(DeriveIden)]
enum QuotaHolds {
    Table,
    Id,
    TokenId,
    RequestId,
    Units,
    ExpiresAt,
    State,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(QuotaTokens::Table)
                    .add_column(
                        ColumnDef::new(QuotaTokens::Held)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(QuotaHolds::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QuotaHolds::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(QuotaHolds::TokenId).big_integer().not_null())
                    // The caller's id of the hold, compared exactly: bytes on MySQL,
                    // as the ledger's request ids are.
                    .col({
                        let mut col = ColumnDef::new(QuotaHolds::RequestId);
                        if manager.get_database_backend() == DatabaseBackend::MySql {
                            col.custom(Alias::new("VARBINARY(255)"));
                        } else {
                            col.string_len(255);
                        }
                        col.not_null();
                        col
                    })
                    .col(ColumnDef::new(QuotaHolds::Units).big_integer().not_null())
                    // Unix seconds; past it the hold no longer counts.
                    .col(
                        ColumnDef::new(QuotaHolds::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    // 1 live, 2 settled, 3 released, 4 expired (swept).
                    .col(ColumnDef::new(QuotaHolds::State).small_integer().not_null())
                    .col(
                        ColumnDef::new(QuotaHolds::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaHolds::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(QuotaHolds::Table, QuotaHolds::TokenId)
                            .to(QuotaTokens::Table, QuotaTokens::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // One hold per (token, request id).
        manager
            .create_index(
                Index::create()
                    .name("ux_quota_holds_token_request")
                    .table(QuotaHolds::Table)
                    .col(QuotaHolds::TokenId)
                    .col(QuotaHolds::RequestId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        // The sweep finds a token's live holds by expiry.
        manager
            .create_index(
                Index::create()
                    .name("ix_quota_holds_token_state_expiry")
                    .table(QuotaHolds::Table)
                    .col(QuotaHolds::TokenId)
                    .col(QuotaHolds::State)
                    .col(QuotaHolds::ExpiresAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuotaHolds::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(QuotaTokens::Table)
                    .drop_column(QuotaTokens::Held)
                    .to_owned(),
            )
            .await
    }
}

//! The tables, as sea-orm entities. `migrations/` creates them.

/// `quota_tokens`: one row per API key.
pub mod token {
    use sea_orm::entity::prelude::*;

    /// A token row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "quota_tokens")]
    pub struct Model {
        /// Numeric id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Hex SHA-256 of the key.
        #[sea_orm(unique)]
        pub key_digest: String,
        /// `sk-AbCd…`.
        pub display_prefix: String,
        /// Free-form name.
        pub name: String,
        /// Units left.
        pub remaining: i64,
        /// Units spent.
        pub used: i64,
        /// Units of the token's live holds not yet swept (some may have
        /// expired since; the next write to the token subtracts those).
        pub held: i64,
        /// Never refused for quota.
        pub unlimited: bool,
        /// Unix seconds; `None` never expires.
        pub expires_at: Option<i64>,
        /// [`super::STATUS_ENABLED`] or [`super::STATUS_DISABLED`].
        pub status: i16,
        /// Unix seconds.
        pub created_at: i64,
        /// Unix seconds.
        pub updated_at: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `quota_ledger`: every grant and every debit.
pub mod ledger {
    use sea_orm::entity::prelude::*;

    /// A ledger row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "quota_ledger")]
    pub struct Model {
        /// Numeric id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The token.
        pub token_id: i64,
        /// [`super::KIND_GRANT`] or [`super::KIND_DEBIT`].
        pub kind: i16,
        /// Units granted or debited (positive).
        pub units: i64,
        /// The caller's idempotency key, unique per token.
        pub request_id: Option<String>,
        /// Unix seconds.
        pub created_at: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `quota_holds`: units reserved before a call, settled or released after it.
pub mod hold {
    use sea_orm::entity::prelude::*;

    /// A hold row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "quota_holds")]
    pub struct Model {
        /// Numeric id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The token.
        pub token_id: i64,
        /// The caller's id of the hold, unique per token.
        pub request_id: String,
        /// Units held.
        pub units: i64,
        /// Unix seconds; past it the hold no longer counts.
        pub expires_at: i64,
        /// [`crate::domain::HoldState`] as a number.
        pub state: i16,
        /// Unix seconds.
        pub created_at: i64,
        /// Unix seconds.
        pub updated_at: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `quota_usage_days`: the sum of a token's debits on one UTC day, kept with
/// every debit (`store/usage.rs`).
pub mod usage_day {
    use sea_orm::entity::prelude::*;

    /// One token's usage on one day.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "quota_usage_days")]
    pub struct Model {
        /// The token.
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_id: i64,
        /// Unix seconds of the UTC day's start.
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: i64,
        /// Units debited that day.
        pub units: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `status` of an enabled token.
pub const STATUS_ENABLED: i16 = 1;
/// `status` of a disabled token.
pub const STATUS_DISABLED: i16 = 2;
/// `kind` of a grant.
pub const KIND_GRANT: i16 = 1;
/// `kind` of a debit.
pub const KIND_DEBIT: i16 = 2;

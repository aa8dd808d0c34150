//! Shared setup of the store tests: tokens, debits and ledger reads.

pub use quota_service::domain::{
    Balance, DaySpend, Debit, KeyDigest, QuotaUnits, Token, TokenKey, TokenLocator, UsageWindow,
    day_start,
};
pub use quota_service::store::entity::{KIND_DEBIT, KIND_GRANT, ledger, token, usage_day};
pub use quota_service::store::{NewToken, Store, TokenChanges};
pub use quota_service::testing::TestDb;
pub use quota_service::{QuotaError, on_every_database};
pub use sea_orm::ActiveValue::Set;
pub use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

/// The clock of these tests (2027-01-15T08:00:00Z); the store takes time as an argument.
pub const NOW: i64 = 1_800_000_000;
/// 2027-01-15T00:00:00Z, the start of `NOW`'s UTC day.
pub const DAY0: i64 = 1_799_971_200;
pub const DAY: i64 = 86_400;

/// A limited token with `quota` units, created at `NOW`.
pub async fn new_token(store: &Store, quota: i64) -> (Token, TokenKey) {
    create(
        store,
        NewToken {
            name: "test".into(),
            quota,
            ..NewToken::default()
        },
    )
    .await
}

pub async fn create(store: &Store, new: NewToken) -> (Token, TokenKey) {
    store.create_token(new, NOW).await.expect("create token")
}

/// `quotad verify`'s check of the whole database, asserted to agree.
pub async fn assert_verified(store: &Store) -> quota_service::store::verify::Verification {
    let verification = store.verify().await.expect("verify");
    assert!(verification.agrees(), "{:?}", verification.disagreeing);
    verification
}

/// Disables token `id` at `at`.
pub async fn disable(store: &Store, id: i64, at: i64) {
    let off = TokenChanges {
        enabled: Some(false),
        ..TokenChanges::default()
    };
    store
        .update_token(&TokenLocator::Id(id), off, at)
        .await
        .expect("disable token");
}

pub fn units(n: i64) -> QuotaUnits {
    QuotaUnits::positive(n).unwrap()
}

/// A debit at `NOW`.
pub async fn consume(
    store: &Store,
    key: &TokenKey,
    n: i64,
    request_id: Option<&str>,
) -> Result<Debit, QuotaError> {
    store
        .consume(&key.digest(), units(n), request_id, NOW)
        .await
}

pub fn limited(remaining: i64, used: i64) -> Balance {
    Balance {
        remaining,
        used,
        unlimited: false,
    }
}

/// The token's counters as stored now.
pub async fn balance(store: &Store, id: i64) -> Balance {
    store.token(&TokenLocator::Id(id)).await.unwrap().balance
}

/// The token's ledger rows, oldest first.
pub async fn ledger_of(store: &Store, token_id: i64) -> Vec<ledger::Model> {
    ledger::Entity::find()
        .filter(ledger::Column::TokenId.eq(token_id))
        .order_by_asc(ledger::Column::Id)
        .all(store.connection())
        .await
        .unwrap()
}

/// The token's debit rows, oldest first.
pub async fn debits_of(store: &Store, token_id: i64) -> Vec<ledger::Model> {
    let mut rows = ledger_of(store, token_id).await;
    rows.retain(|r| r.kind == KIND_DEBIT);
    rows
}

/// Writes a ledger row directly, with a chosen time; a debit also goes into
/// its day's usage total, as every debit of the store does.
pub async fn insert_ledger_row(
    store: &Store,
    token_id: i64,
    kind: i16,
    units: i64,
    created_at: i64,
) {
    let row = ledger::ActiveModel {
        token_id: Set(token_id),
        kind: Set(kind),
        units: Set(units),
        request_id: Set(None),
        created_at: Set(created_at),
        ..Default::default()
    };
    ledger::Entity::insert(row)
        .exec_without_returning(store.connection())
        .await
        .unwrap();
    if kind == KIND_DEBIT {
        let day = day_start(created_at);
        let kept = usage_day::Entity::find_by_id((token_id, day))
            .one(store.connection())
            .await
            .unwrap();
        let row = usage_day::ActiveModel {
            token_id: Set(token_id),
            day: Set(day),
            units: Set(kept.as_ref().map_or(0, |k| k.units) + units),
        };
        if kept.is_some() {
            usage_day::Entity::update(row)
                .exec(store.connection())
                .await
                .unwrap();
        } else {
            usage_day::Entity::insert(row)
                .exec_without_returning(store.connection())
                .await
                .unwrap();
        }
    }
}

pub fn assert_exhausted<T: std::fmt::Debug>(
    result: Result<T, QuotaError>,
    remaining: i64,
    requested: i64,
) {
    match result {
        Err(QuotaError::QuotaExhausted {
            spendable: r,
            requested: q,
        }) => assert_eq!((r, q), (remaining, requested)),
        other => panic!("expected QuotaExhausted {{ {remaining}, {requested} }}, got {other:?}"),
    }
}

/// A transaction of `store` holding the row lock of token `id`, as another
/// session (a replica, `psql`) would, until it ends.
pub async fn lock_token_row(store: &Store, id: i64) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = store.connection().begin().await.unwrap();
    txn.execute_unprepared(&format!(
        "SELECT id FROM quota_tokens WHERE id = {id} FOR UPDATE"
    ))
    .await
    .unwrap();
    txn
}

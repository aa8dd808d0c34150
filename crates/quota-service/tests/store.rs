//! Integration tests of the store API on SQLite and PostgreSQL: tokens and
//! their ledger, the all-or-nothing idempotent debit, daily usage, and the
//! debit under concurrency on one store and on two stores ("replicas")
//! sharing a database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota_service::domain::{
    Balance, DaySpend, Debit, KeyDigest, QuotaUnits, Token, TokenKey, TokenLocator, UsageWindow,
    day_start,
};
use quota_service::store::entity::{KIND_DEBIT, KIND_GRANT, ledger, token};
use quota_service::store::{NewToken, Store, TokenChanges};
use quota_service::testing::TestDb;
use quota_service::{QuotaError, on_every_database};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

/// The clock of these tests (2027-01-15T08:00:00Z); the store takes time as an argument.
const NOW: i64 = 1_800_000_000;
/// 2027-01-15T00:00:00Z, the start of `NOW`'s UTC day.
const DAY0: i64 = 1_799_971_200;
const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------
// Helpers

/// A limited token with `quota` units, created at `NOW`.
async fn new_token(store: &Store, quota: i64) -> (Token, TokenKey) {
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

async fn create(store: &Store, new: NewToken) -> (Token, TokenKey) {
    store.create_token(new, NOW).await.expect("create token")
}

fn units(n: i64) -> QuotaUnits {
    QuotaUnits::positive(n).unwrap()
}

/// A debit at `NOW`.
async fn consume(
    store: &Store,
    key: &TokenKey,
    n: i64,
    request_id: Option<&str>,
) -> Result<Debit, QuotaError> {
    store
        .consume(&key.digest(), units(n), request_id, NOW)
        .await
}

fn limited(remaining: i64, used: i64) -> Balance {
    Balance {
        remaining,
        used,
        unlimited: false,
    }
}

/// The token's counters as stored now.
async fn balance(store: &Store, id: i64) -> Balance {
    store.token(&TokenLocator::Id(id)).await.unwrap().balance
}

/// The token's ledger rows, oldest first.
async fn ledger_of(store: &Store, token_id: i64) -> Vec<ledger::Model> {
    ledger::Entity::find()
        .filter(ledger::Column::TokenId.eq(token_id))
        .order_by_asc(ledger::Column::Id)
        .all(store.connection())
        .await
        .unwrap()
}

/// The token's debit rows, oldest first.
async fn debits_of(store: &Store, token_id: i64) -> Vec<ledger::Model> {
    let mut rows = ledger_of(store, token_id).await;
    rows.retain(|r| r.kind == KIND_DEBIT);
    rows
}

/// Writes a ledger row directly, with a chosen time.
async fn insert_ledger_row(store: &Store, token_id: i64, kind: i16, units: i64, created_at: i64) {
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
}

fn assert_exhausted<T: std::fmt::Debug>(
    result: Result<T, QuotaError>,
    remaining: i64,
    requested: i64,
) {
    match result {
        Err(QuotaError::QuotaExhausted {
            remaining: r,
            requested: q,
        }) => assert_eq!((r, q), (remaining, requested)),
        other => panic!("expected QuotaExhausted {{ {remaining}, {requested} }}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Tokens

on_every_database!(
    create_token_keeps_digest_prefix_and_grant,
    create_token_keeps_digest_prefix_and_grant
);
async fn create_token_keeps_digest_prefix_and_grant(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = create(
        &store,
        NewToken {
            name: "alice".into(),
            quota: 1_000,
            unlimited: false,
            expires_at: Some(NOW + 3_600),
        },
    )
    .await;

    // The key is well-formed and is found by its digest, and only by it.
    assert_eq!(TokenKey::parse(key.expose()).unwrap(), key);
    assert_eq!(
        store.token_by_digest(&key.digest()).await.unwrap(),
        Some(tok.clone())
    );
    assert_eq!(
        store
            .token(&TokenLocator::Digest(key.digest()))
            .await
            .unwrap(),
        tok
    );
    assert_eq!(store.token(&TokenLocator::Id(tok.id)).await.unwrap(), tok);
    let other = TokenKey::generate().unwrap();
    assert_eq!(store.token_by_digest(&other.digest()).await.unwrap(), None);

    // What was stored.
    assert_eq!(tok.display_prefix, key.display_prefix());
    assert_eq!(tok.display_prefix, format!("{}…", &key.expose()[..7]));
    assert_eq!(tok.name, "alice");
    assert_eq!(tok.balance, limited(1_000, 0));
    assert_eq!(tok.expires_at, Some(NOW + 3_600));
    assert!(tok.enabled);
    assert_eq!((tok.created_at, tok.updated_at), (NOW, NOW));

    // The row keeps the digest, never the plaintext.
    let row = token::Entity::find_by_id(tok.id)
        .one(store.connection())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.key_digest, key.digest().as_str());
    assert_eq!(row.key_digest, KeyDigest::of(key.expose()).as_str());
    assert!(!row.key_digest.contains(&key.expose()[3..]));
    assert!(!row.display_prefix.contains(&key.expose()[7..]));

    // The initial quota is one grant in the ledger.
    let rows = ledger_of(&store, tok.id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].kind, rows[0].units, rows[0].request_id.as_deref()),
        (KIND_GRANT, 1_000, None)
    );
    assert_eq!(rows[0].created_at, NOW);
}

on_every_database!(
    create_token_with_zero_quota_writes_no_ledger,
    create_token_with_zero_quota_writes_no_ledger
);
async fn create_token_with_zero_quota_writes_no_ledger(db: TestDb) {
    let store = db.store().await;
    let (empty, _) = new_token(&store, 0).await;
    assert_eq!(empty.balance, limited(0, 0));
    assert!(ledger_of(&store, empty.id).await.is_empty());

    let (unlimited, _) = create(
        &store,
        NewToken {
            unlimited: true,
            ..NewToken::default()
        },
    )
    .await;
    assert!(unlimited.balance.unlimited);
    assert_eq!(unlimited.expires_at, None);
    assert!(ledger_of(&store, unlimited.id).await.is_empty());
}

on_every_database!(
    create_token_refuses_negative_quota,
    create_token_refuses_negative_quota
);
async fn create_token_refuses_negative_quota(db: TestDb) {
    let store = db.store().await;
    let refused = store
        .create_token(
            NewToken {
                quota: -1,
                ..NewToken::default()
            },
            NOW,
        )
        .await;
    assert!(
        matches!(refused, Err(QuotaError::InvalidArgument(_))),
        "{refused:?}"
    );
    assert!(store.list_tokens(0, 100).await.unwrap().is_empty());
    assert!(
        ledger::Entity::find()
            .all(store.connection())
            .await
            .unwrap()
            .is_empty()
    );
}

on_every_database!(
    grant_accumulates_on_the_limit,
    grant_accumulates_on_the_limit
);
async fn grant_accumulates_on_the_limit(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;
    consume(&store, &key, 300, None).await.unwrap();

    let granted = store
        .grant(&TokenLocator::Id(tok.id), units(500), NOW + 1)
        .await
        .unwrap();
    assert_eq!(granted.balance, limited(1_200, 300));
    assert_eq!(granted.balance.limit_units(), 1_000 + 500);
    assert_eq!(granted.updated_at, NOW + 1);

    // By key as well; grants keep accumulating.
    let granted = store
        .grant(&TokenLocator::Digest(key.digest()), units(250), NOW + 2)
        .await
        .unwrap();
    assert_eq!(granted.balance, limited(1_450, 300));
    assert_eq!(granted.balance.limit_units(), 1_750);
    assert_eq!(balance(&store, tok.id).await, granted.balance);

    // Every grant is in the ledger, and the grants add up to the limit.
    let grants: Vec<i64> = ledger_of(&store, tok.id)
        .await
        .iter()
        .filter(|r| r.kind == KIND_GRANT)
        .map(|r| r.units)
        .collect();
    assert_eq!(grants, [1_000, 500, 250]);
    assert_eq!(grants.iter().sum::<i64>(), granted.balance.limit_units());
}

on_every_database!(
    grant_to_unknown_token_is_not_found,
    grant_to_unknown_token_is_not_found
);
async fn grant_to_unknown_token_is_not_found(db: TestDb) {
    let store = db.store().await;
    let (tok, _) = new_token(&store, 10).await;
    let by_id = store
        .grant(&TokenLocator::Id(tok.id + 1_000), units(5), NOW)
        .await;
    assert!(matches!(by_id, Err(QuotaError::TokenNotFound)), "{by_id:?}");
    let unknown = TokenKey::generate().unwrap();
    let by_digest = store
        .grant(&TokenLocator::Digest(unknown.digest()), units(5), NOW)
        .await;
    assert!(
        matches!(by_digest, Err(QuotaError::TokenNotFound)),
        "{by_digest:?}"
    );
    assert_eq!(balance(&store, tok.id).await, limited(10, 0));
    assert_eq!(ledger_of(&store, tok.id).await.len(), 1);
}

on_every_database!(
    update_token_changes_only_what_is_given,
    update_token_changes_only_what_is_given
);
async fn update_token_changes_only_what_is_given(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let at = TokenLocator::Id(tok.id);

    let renamed = store
        .update_token(
            &at,
            TokenChanges {
                name: Some("renamed".into()),
                ..TokenChanges::default()
            },
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "renamed");
    assert_eq!(renamed.updated_at, NOW + 1);
    assert_eq!(
        (renamed.enabled, renamed.expires_at, renamed.balance),
        (true, None, limited(100, 0))
    );

    let disabled = store
        .update_token(
            &TokenLocator::Digest(key.digest()),
            TokenChanges {
                enabled: Some(false),
                expires_at: Some(Some(NOW + 60)),
                ..TokenChanges::default()
            },
            NOW + 2,
        )
        .await
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.expires_at, Some(NOW + 60));
    assert_eq!(disabled.name, "renamed");

    let changed = store
        .update_token(
            &at,
            TokenChanges {
                enabled: Some(true),
                expires_at: Some(None),
                unlimited: Some(true),
                ..TokenChanges::default()
            },
            NOW + 3,
        )
        .await
        .unwrap();
    assert!(changed.enabled);
    assert_eq!(changed.expires_at, None);
    assert!(changed.balance.unlimited);
    assert_eq!(store.token(&at).await.unwrap(), changed);

    let limited_again = store
        .update_token(
            &at,
            TokenChanges {
                unlimited: Some(false),
                ..TokenChanges::default()
            },
            NOW + 4,
        )
        .await
        .unwrap();
    assert_eq!(limited_again.balance, limited(100, 0));

    let unknown = store
        .update_token(
            &TokenLocator::Id(tok.id + 1_000),
            TokenChanges::default(),
            NOW,
        )
        .await;
    assert!(
        matches!(unknown, Err(QuotaError::TokenNotFound)),
        "{unknown:?}"
    );
}

on_every_database!(
    delete_token_removes_it_and_its_ledger,
    delete_token_removes_it_and_its_ledger
);
async fn delete_token_removes_it_and_its_ledger(db: TestDb) {
    let store = db.store().await;
    let (doomed, doomed_key) = new_token(&store, 100).await;
    let (kept, kept_key) = new_token(&store, 100).await;
    consume(&store, &doomed_key, 10, Some("r")).await.unwrap();
    consume(&store, &kept_key, 10, Some("r")).await.unwrap();
    assert_eq!(ledger_of(&store, doomed.id).await.len(), 2);

    store
        .delete_token(&TokenLocator::Id(doomed.id))
        .await
        .unwrap();
    let gone = store.token(&TokenLocator::Id(doomed.id)).await;
    assert!(matches!(gone, Err(QuotaError::TokenNotFound)), "{gone:?}");
    assert_eq!(
        store.token_by_digest(&doomed_key.digest()).await.unwrap(),
        None
    );
    assert!(ledger_of(&store, doomed.id).await.is_empty());
    let debit = consume(&store, &doomed_key, 1, None).await;
    assert!(matches!(debit, Err(QuotaError::TokenNotFound)), "{debit:?}");

    // The other token and its ledger are untouched.
    assert_eq!(balance(&store, kept.id).await, limited(90, 10));
    assert_eq!(ledger_of(&store, kept.id).await.len(), 2);

    // By key, too; a second delete finds nothing.
    store
        .delete_token(&TokenLocator::Digest(kept_key.digest()))
        .await
        .unwrap();
    assert!(ledger_of(&store, kept.id).await.is_empty());
    for at in [
        TokenLocator::Id(kept.id),
        TokenLocator::Digest(kept_key.digest()),
    ] {
        let again = store.delete_token(&at).await;
        assert!(matches!(again, Err(QuotaError::TokenNotFound)), "{again:?}");
    }
    assert!(store.list_tokens(0, 100).await.unwrap().is_empty());
}

on_every_database!(list_tokens_pages_by_id, list_tokens_pages_by_id);
async fn list_tokens_pages_by_id(db: TestDb) {
    let store = db.store().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(new_token(&store, 1).await.0.id);
    }

    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_tokens(after, 2).await.unwrap();
        page_sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page.iter().map(|t| t.id));
    }
    assert_eq!(page_sizes, [2, 2, 1, 0]);
    assert_eq!(seen, created);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let all: Vec<i64> = store
        .list_tokens(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(all, created);
    let tail: Vec<i64> = store
        .list_tokens(created[2], 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(tail, created[3..]);
}

// ---------------------------------------------------------------------------
// The debit

on_every_database!(
    consume_moves_units_and_writes_a_debit,
    consume_moves_units_and_writes_a_debit
);
async fn consume_moves_units_and_writes_a_debit(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;

    let debit = consume(&store, &key, 300, Some("r1")).await.unwrap();
    assert_eq!(
        debit,
        Debit {
            balance: limited(700, 300),
            repeat: false
        }
    );
    let debit = store
        .consume(&key.digest(), units(200), None, NOW + 5)
        .await
        .unwrap();
    assert_eq!(debit.balance, limited(500, 500));
    assert!(!debit.repeat);

    let stored = store.token(&TokenLocator::Id(tok.id)).await.unwrap();
    assert_eq!(stored.balance, limited(500, 500));
    assert_eq!(stored.balance.limit_units(), 1_000);
    assert_eq!(stored.updated_at, NOW + 5);

    let debits = debits_of(&store, tok.id).await;
    let summary: Vec<_> = debits
        .iter()
        .map(|r| (r.units, r.request_id.as_deref(), r.created_at))
        .collect();
    assert_eq!(summary, [(300, Some("r1"), NOW), (200, None, NOW + 5)]);
}

on_every_database!(consume_is_all_or_nothing, consume_is_all_or_nothing);
async fn consume_is_all_or_nothing(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;

    // More than remaining: refused, nothing moves.
    assert_exhausted(
        consume(&store, &key, 1_001, Some("big")).await,
        1_000,
        1_001,
    );
    assert_eq!(balance(&store, tok.id).await, limited(1_000, 0));
    assert!(debits_of(&store, tok.id).await.is_empty());

    // Exactly what is left: succeeds.
    let debit = consume(&store, &key, 1_000, Some("all")).await.unwrap();
    assert_eq!(debit.balance, limited(0, 1_000));

    // One unit more: refused, and nothing is left behind.
    assert_exhausted(consume(&store, &key, 1, Some("one-more")).await, 0, 1);
    assert_exhausted(consume(&store, &key, 1, None).await, 0, 1);
    assert_eq!(balance(&store, tok.id).await, limited(0, 1_000));
    let debits = debits_of(&store, tok.id).await;
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0].request_id.as_deref(), Some("all"));
    assert_eq!(ledger_of(&store, tok.id).await.len(), 2);
}

on_every_database!(
    consume_refuses_disabled_expired_and_unknown,
    consume_refuses_disabled_expired_and_unknown
);
async fn consume_refuses_disabled_expired_and_unknown(db: TestDb) {
    let store = db.store().await;

    let (disabled, disabled_key) = new_token(&store, 100).await;
    store
        .update_token(
            &TokenLocator::Id(disabled.id),
            TokenChanges {
                enabled: Some(false),
                ..TokenChanges::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let refused = consume(&store, &disabled_key, 10, Some("d")).await;
    assert!(
        matches!(refused, Err(QuotaError::TokenDisabled)),
        "{refused:?}"
    );
    assert_eq!(balance(&store, disabled.id).await, limited(100, 0));
    assert!(debits_of(&store, disabled.id).await.is_empty());

    // Expired from its expiry second on; usable just before.
    let (expiring, expiring_key) = create(
        &store,
        NewToken {
            quota: 100,
            expires_at: Some(NOW + 10),
            ..NewToken::default()
        },
    )
    .await;
    let digest = expiring_key.digest();
    let before = store.consume(&digest, units(10), None, NOW + 9).await;
    assert_eq!(before.unwrap().balance, limited(90, 10));
    for at in [NOW + 10, NOW + 1_000] {
        let refused = store.consume(&digest, units(10), Some("e"), at).await;
        assert!(
            matches!(refused, Err(QuotaError::TokenExpired)),
            "{refused:?}"
        );
    }
    assert_eq!(balance(&store, expiring.id).await, limited(90, 10));
    assert_eq!(debits_of(&store, expiring.id).await.len(), 1);

    let unknown = TokenKey::generate().unwrap();
    let refused = consume(&store, &unknown, 10, Some("u")).await;
    assert!(
        matches!(refused, Err(QuotaError::TokenNotFound)),
        "{refused:?}"
    );
    assert!(
        ledger::Entity::find()
            .filter(ledger::Column::Kind.eq(KIND_DEBIT))
            .all(store.connection())
            .await
            .unwrap()
            .iter()
            .all(|r| r.token_id == expiring.id)
    );
}

on_every_database!(
    unlimited_token_records_use_and_is_never_refused,
    unlimited_token_records_use_and_is_never_refused
);
async fn unlimited_token_records_use_and_is_never_refused(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = create(
        &store,
        NewToken {
            quota: 100,
            unlimited: true,
            ..NewToken::default()
        },
    )
    .await;
    let big = 1_000_000_000_000;
    for i in 1..=3 {
        let debit = consume(&store, &key, big, None).await.unwrap();
        // Units move from remaining to used, unlimited or not: the limit stays 100.
        assert_eq!(
            debit.balance,
            Balance {
                remaining: 100 - i * big,
                used: i * big,
                unlimited: true
            }
        );
        assert_eq!(debit.balance.limit_units(), 100);
        assert!(!debit.repeat);
    }
    assert_eq!(balance(&store, tok.id).await.used, 3 * big);
    let debits = debits_of(&store, tok.id).await;
    assert_eq!(debits.iter().map(|r| r.units).sum::<i64>(), 3 * big);

    // A spent limited token becomes usable when made unlimited.
    let (spent, spent_key) = new_token(&store, 5).await;
    assert_exhausted(consume(&store, &spent_key, 6, None).await, 5, 6);
    store
        .update_token(
            &TokenLocator::Id(spent.id),
            TokenChanges {
                unlimited: Some(true),
                ..TokenChanges::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let debit = consume(&store, &spent_key, 6, None).await.unwrap();
    assert_eq!(
        debit.balance,
        Balance {
            remaining: -1,
            used: 6,
            unlimited: true
        }
    );

    // Limited again, it owes the unit it overspent: refused until a grant
    // brings remaining back above the debit; the limit never moved.
    let back = TokenChanges {
        unlimited: Some(false),
        ..TokenChanges::default()
    };
    let at = TokenLocator::Id(spent.id);
    let again = store.update_token(&at, back, NOW).await.unwrap();
    assert_eq!(again.balance.limit_units(), 5);
    assert_exhausted(consume(&store, &spent_key, 1, None).await, -1, 1);
    store.grant(&at, units(2), NOW).await.unwrap();
    let debit = consume(&store, &spent_key, 1, None).await.unwrap();
    assert_eq!(debit.balance, limited(0, 7));
}

on_every_database!(
    repeated_request_id_debits_once,
    repeated_request_id_debits_once
);
async fn repeated_request_id_debits_once(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 1_000).await;

    let first = consume(&store, &key, 100, Some("a")).await.unwrap();
    assert_eq!(
        first,
        Debit {
            balance: limited(900, 100),
            repeat: false
        }
    );
    let second = consume(&store, &key, 100, Some("a")).await.unwrap();
    assert_eq!(
        second,
        Debit {
            balance: limited(900, 100),
            repeat: true
        }
    );
    assert_eq!(balance(&store, tok.id).await, limited(900, 100));
    assert_eq!(debits_of(&store, tok.id).await.len(), 1);

    // Spent: a repeat still succeeds, a new request is refused.
    consume(&store, &key, 900, Some("b")).await.unwrap();
    for id in ["a", "b"] {
        let repeat = consume(&store, &key, 100, Some(id)).await.unwrap();
        assert_eq!(
            repeat,
            Debit {
                balance: limited(0, 1_000),
                repeat: true
            }
        );
    }
    assert_exhausted(consume(&store, &key, 100, Some("c")).await, 0, 100);

    // Disabled: a repeat still succeeds, a new request is refused.
    store
        .update_token(
            &TokenLocator::Id(tok.id),
            TokenChanges {
                enabled: Some(false),
                ..TokenChanges::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let repeat = consume(&store, &key, 100, Some("a")).await.unwrap();
    assert!(repeat.repeat);
    assert_eq!(repeat.balance, limited(0, 1_000));
    let refused = consume(&store, &key, 100, Some("d")).await;
    assert!(
        matches!(refused, Err(QuotaError::TokenDisabled)),
        "{refused:?}"
    );

    let debits: Vec<_> = debits_of(&store, tok.id)
        .await
        .iter()
        .map(|r| (r.units, r.request_id.clone()))
        .collect();
    assert_eq!(
        debits,
        [(100, Some("a".to_owned())), (900, Some("b".to_owned()))]
    );
}

on_every_database!(
    refused_request_id_can_succeed_later,
    refused_request_id_can_succeed_later
);
async fn refused_request_id_can_succeed_later(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    assert_exhausted(consume(&store, &key, 150, Some("x")).await, 100, 150);
    assert!(debits_of(&store, tok.id).await.is_empty());

    store
        .grant(&TokenLocator::Id(tok.id), units(100), NOW)
        .await
        .unwrap();
    let debit = consume(&store, &key, 150, Some("x")).await.unwrap();
    assert_eq!(
        debit,
        Debit {
            balance: limited(50, 150),
            repeat: false
        }
    );
    let repeat = consume(&store, &key, 150, Some("x")).await.unwrap();
    assert_eq!(
        repeat,
        Debit {
            balance: limited(50, 150),
            repeat: true
        }
    );
    assert_eq!(debits_of(&store, tok.id).await.len(), 1);
}

on_every_database!(request_ids_are_per_token, request_ids_are_per_token);
async fn request_ids_are_per_token(db: TestDb) {
    let store = db.store().await;
    let (a, a_key) = new_token(&store, 100).await;
    let (b, b_key) = new_token(&store, 100).await;
    let from_a = consume(&store, &a_key, 10, Some("same")).await.unwrap();
    let from_b = consume(&store, &b_key, 20, Some("same")).await.unwrap();
    assert_eq!((from_a.repeat, from_a.balance), (false, limited(90, 10)));
    assert_eq!((from_b.repeat, from_b.balance), (false, limited(80, 20)));
    for (tok, units) in [(a, 10), (b, 20)] {
        let debits = debits_of(&store, tok.id).await;
        assert_eq!(debits.len(), 1);
        assert_eq!(
            (debits[0].units, debits[0].request_id.as_deref()),
            (units, Some("same"))
        );
    }
}

on_every_database!(
    request_ids_are_compared_exactly,
    request_ids_are_compared_exactly
);
async fn request_ids_are_compared_exactly(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    for id in ["req-a", "REQ-A", "req-a ", "req-á"] {
        let debit = consume(&store, &key, 1, Some(id)).await.unwrap();
        assert!(!debit.repeat, "{id:?} was taken for another id");
    }
    assert!(
        consume(&store, &key, 1, Some("REQ-A"))
            .await
            .unwrap()
            .repeat
    );
    assert_eq!(debits_of(&store, tok.id).await.len(), 4);
    assert_eq!(balance(&store, tok.id).await, limited(96, 4));
}

// ---------------------------------------------------------------------------
// Daily usage

on_every_database!(
    daily_usage_sums_debits_per_utc_day,
    daily_usage_sums_debits_per_utc_day
);
async fn daily_usage_sums_debits_per_utc_day(db: TestDb) {
    assert_eq!(day_start(NOW), DAY0);
    let store = db.store().await;
    let (tok, key) = new_token(&store, 0).await;
    store
        .grant(&TokenLocator::Id(tok.id), units(1_000_000), DAY0 + 1)
        .await
        .unwrap();
    // Day 0: its first and its last second; a grant that must not count.
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 100, DAY0).await;
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 200, DAY0 + DAY - 1).await;
    insert_ledger_row(&store, tok.id, KIND_GRANT, 5_000, DAY0 + 100).await;
    // Day 1: its first second.
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 300, DAY0 + DAY).await;
    // Day 3, through the debit itself.
    store
        .consume(&key.digest(), units(400), Some("d3"), DAY0 + 3 * DAY + 7)
        .await
        .unwrap();
    // Another token's spend on day 0 must not count.
    let (other, _) = new_token(&store, 0).await;
    insert_ledger_row(&store, other.id, KIND_DEBIT, 9_999, DAY0 + 5).await;

    let spend = |day: i64, units: i64| DaySpend { day, units };
    let usage = |start: Option<i64>, end: Option<i64>| {
        let store = store.clone();
        async move {
            store
                .daily_usage(tok.id, UsageWindow { start, end })
                .await
                .unwrap()
        }
    };

    assert_eq!(
        usage(None, None).await,
        [
            spend(DAY0, 300),
            spend(DAY0 + DAY, 300),
            spend(DAY0 + 3 * DAY, 400)
        ]
    );
    // Start inclusive, end exclusive.
    assert_eq!(
        usage(Some(DAY0 + DAY), Some(DAY0 + 3 * DAY)).await,
        [spend(DAY0 + DAY, 300)]
    );
    assert_eq!(usage(None, Some(DAY0 + DAY)).await, [spend(DAY0, 300)]);
    assert_eq!(
        usage(Some(DAY0 + DAY), None).await,
        [spend(DAY0 + DAY, 300), spend(DAY0 + 3 * DAY, 400)]
    );
    assert_eq!(usage(Some(DAY0), Some(DAY0)).await, []);
    // The window as the API parses it: 2027-01-15 is DAY0.
    let parsed = UsageWindow::parse("2027-01-15", "2027-01-16").unwrap();
    assert_eq!(
        store.daily_usage(tok.id, parsed).await.unwrap(),
        [spend(DAY0, 300)]
    );
    // The future: nothing, not an error.
    assert_eq!(usage(Some(DAY0 + 100 * DAY), None).await, []);
    let future = UsageWindow::parse("2999-01-01", "").unwrap();
    assert_eq!(store.daily_usage(tok.id, future).await.unwrap(), []);
    // A token without debits.
    let (idle, _) = new_token(&store, 10).await;
    assert_eq!(
        store
            .daily_usage(idle.id, UsageWindow::parse("", "").unwrap())
            .await
            .unwrap(),
        []
    );
}

// ---------------------------------------------------------------------------
// Concurrency

const REQUESTS: usize = 1_000;
const TASKS: usize = 32;

/// What [`hammer`] saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Successful, non-repeat debits.
    debited: i64,
    /// Successful repeats.
    repeats: i64,
    /// Refusals for quota.
    exhausted: i64,
}

/// Sends `REQUESTS` debits of `size` units from `TASKS` concurrent tasks,
/// spread over `stores` in turn. `request_id(i)` names request `i`. Panics on
/// any error other than `QuotaExhausted`, and on any impossible balance.
async fn hammer(
    stores: &[Store],
    key: &TokenKey,
    size: i64,
    request_id: impl Fn(usize) -> Option<String>,
) -> Outcome {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = stores[t % stores.len()].clone();
        let digest = key.digest();
        let ids: Vec<Option<String>> = (t..REQUESTS).step_by(TASKS).map(&request_id).collect();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            for id in ids {
                match store
                    .consume(&digest, units(size), id.as_deref(), NOW)
                    .await
                {
                    Ok(debit) => {
                        assert!(debit.balance.remaining >= 0, "{debit:?}");
                        if debit.repeat {
                            outcome.repeats += 1;
                        } else {
                            outcome.debited += 1;
                        }
                    }
                    Err(QuotaError::QuotaExhausted {
                        remaining,
                        requested,
                    }) => {
                        assert!(remaining >= 0 && remaining < size, "{remaining}");
                        assert_eq!(requested, size);
                        outcome.exhausted += 1;
                    }
                    Err(other) => panic!("a debit failed with {other:?}"),
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        let outcome = task.await.expect("debit task");
        total.debited += outcome.debited;
        total.repeats += outcome.repeats;
        total.exhausted += outcome.exhausted;
    }
    assert_eq!(
        total.debited + total.repeats + total.exhausted,
        REQUESTS as i64
    );
    total
}

/// A token that affords `affordable` debits of `size` and has `spare` units
/// over is hammered with distinct requests on `stores`: exactly the
/// affordable debits succeed, and counters and ledger agree.
async fn overspend_is_impossible(stores: &[Store], size: i64, affordable: i64, spare: i64) {
    assert!(spare < size && affordable < REQUESTS as i64);
    let quota = size * affordable + spare;
    let (tok, key) = new_token(&stores[0], quota).await;

    let outcome = hammer(stores, &key, size, |i| Some(format!("req-{i}"))).await;
    assert_eq!(outcome.debited, affordable, "{outcome:?}");
    assert_eq!(outcome.repeats, 0);
    assert_eq!(outcome.exhausted, REQUESTS as i64 - affordable);

    let after = balance(&stores[0], tok.id).await;
    assert_eq!(after, limited(spare, affordable * size));
    let debits = debits_of(&stores[0], tok.id).await;
    assert_eq!(debits.len() as i64, affordable);
    assert_eq!(debits.iter().map(|r| r.units).sum::<i64>(), after.used);
}

on_every_database!(
    concurrent_debits_on_one_store_never_overspend,
    concurrent_debits_on_one_store_never_overspend
);
async fn concurrent_debits_on_one_store_never_overspend(db: TestDb) {
    let store = db.store().await;
    // Evenly divisible: the token ends at exactly zero.
    overspend_is_impossible(std::slice::from_ref(&store), 7, 300, 0).await;
    // Uneven: the odd units stay.
    overspend_is_impossible(&[store], 7, 300, 5).await;
}

on_every_database!(
    concurrent_debits_on_two_replicas_never_overspend,
    concurrent_debits_on_two_replicas_never_overspend
);
async fn concurrent_debits_on_two_replicas_never_overspend(db: TestDb) {
    let replicas = [db.store().await, db.store().await];
    overspend_is_impossible(&replicas, 7, 300, 0).await;
    overspend_is_impossible(&replicas, 7, 300, 5).await;
}

on_every_database!(
    concurrent_duplicates_on_two_replicas_debit_once,
    concurrent_duplicates_on_two_replicas_debit_once
);
async fn concurrent_duplicates_on_two_replicas_debit_once(db: TestDb) {
    let replicas = [db.store().await, db.store().await];
    let (tok, key) = new_token(&replicas[0], 1_000).await;

    let outcome = hammer(&replicas, &key, 10, |_| Some("dup".to_owned())).await;
    assert_eq!(outcome.debited, 1, "{outcome:?}");
    assert_eq!(outcome.repeats, REQUESTS as i64 - 1);
    assert_eq!(outcome.exhausted, 0);

    assert_eq!(balance(&replicas[1], tok.id).await, limited(990, 10));
    let debits = debits_of(&replicas[1], tok.id).await;
    assert_eq!(debits.len(), 1);
    assert_eq!(
        (debits[0].units, debits[0].request_id.as_deref()),
        (10, Some("dup"))
    );
}

on_every_database!(
    grants_and_debits_on_two_replicas_all_land,
    grants_and_debits_on_two_replicas_all_land
);
async fn grants_and_debits_on_two_replicas_all_land(db: TestDb) {
    // Grants read the token before they write it: on SQLite, a replica's
    // write in between must not fail them with "database is locked".
    const PER_TASK: i64 = 40;
    let replicas = [db.store().await, db.store().await];
    let (tok, key) = new_token(&replicas[0], 0).await;
    let mut granters = Vec::new();
    let mut debiters = Vec::new();
    for t in 0..TASKS / 2 {
        let store = replicas[0].clone();
        granters.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                store
                    .grant(&TokenLocator::Id(tok.id), units(3), NOW)
                    .await
                    .expect("grant");
            }
        }));
        let store = replicas[1].clone();
        let digest = key.digest();
        debiters.push(tokio::spawn(async move {
            let mut debited = 0;
            for i in 0..PER_TASK {
                let id = format!("{t}-{i}");
                match store.consume(&digest, units(2), Some(&id), NOW).await {
                    Ok(debit) => {
                        assert!(!debit.repeat && debit.balance.remaining >= 0, "{debit:?}");
                        debited += 2;
                    }
                    Err(QuotaError::QuotaExhausted { .. }) => {}
                    Err(other) => panic!("a debit failed with {other:?}"),
                }
            }
            debited
        }));
    }
    for task in granters {
        task.await.expect("grant task");
    }
    let mut used = 0;
    for task in debiters {
        used += task.await.expect("debit task");
    }

    let granted = 3 * PER_TASK * (TASKS / 2) as i64;
    let after = balance(&replicas[1], tok.id).await;
    assert_eq!(after, limited(granted - used, used));
    let rows = ledger_of(&replicas[1], tok.id).await;
    let sum = |kind| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.units)
            .sum::<i64>()
    };
    assert_eq!(sum(KIND_GRANT), granted);
    assert_eq!(sum(KIND_DEBIT), used);
}

/// A burst of debits on one token: `copies` debits of each of `ids` request
/// ids, all in flight at once. Returns (first debits, repeats, refusals).
async fn burst(
    store: &Store,
    key: &TokenKey,
    n: i64,
    ids: usize,
    copies: usize,
) -> (usize, usize, Vec<QuotaError>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..copies {
        for id in 0..ids {
            let (store, digest) = (store.clone(), key.digest());
            tasks.spawn(async move {
                store
                    .consume(&digest, units(n), Some(&format!("burst-{id}")), NOW)
                    .await
            });
        }
    }
    let (mut first, mut repeats, mut refused) = (0, 0, Vec::new());
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Ok(debit) if debit.repeat => repeats += 1,
            Ok(_) => first += 1,
            Err(e) => refused.push(e),
        }
    }
    (first, repeats, refused)
}

on_every_database!(
    a_burst_on_one_token_settles_each_debit_exactly,
    a_burst_settles_each_debit_exactly
);
async fn a_burst_settles_each_debit_exactly(db: TestDb) {
    let store = db.store().await;
    // Affords 20 debits of 5; 32 request ids, each sent twice at once.
    let (token, key) = new_token(&store, 100).await;
    let (first, repeats, refused) = burst(&store, &key, 5, 32, 2).await;
    assert_eq!(first, 20);
    assert_eq!(repeats, 20, "each debited id's second copy is a repeat");
    assert_eq!(refused.len(), 24);
    assert!(
        refused
            .iter()
            .all(|e| matches!(e, QuotaError::QuotaExhausted { .. })),
        "{refused:?}"
    );
    assert_eq!(balance(&store, token.id).await, limited(0, 100));
    let rows = debits_of(&store, token.id).await;
    assert_eq!(rows.len(), 20);
    let mut ids: Vec<_> = rows.iter().map(|r| r.request_id.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one ledger row per debited id");
}

on_every_database!(
    a_burst_on_a_refused_token_is_refused_whole,
    a_burst_on_a_refused_token_is_refused_whole
);
async fn a_burst_on_a_refused_token_is_refused_whole(db: TestDb) {
    let store = db.store().await;
    let (disabled, disabled_key) = new_token(&store, 1_000).await;
    let off = TokenChanges {
        enabled: Some(false),
        ..TokenChanges::default()
    };
    store
        .update_token(&TokenLocator::Id(disabled.id), off, NOW)
        .await
        .unwrap();
    let (expired, expired_key) = create(
        &store,
        NewToken {
            quota: 1_000,
            expires_at: Some(NOW),
            ..NewToken::default()
        },
    )
    .await;
    let unknown = TokenKey::generate().unwrap();

    for (key, id, refusal) in [
        (&disabled_key, Some(disabled.id), "disabled"),
        (&expired_key, Some(expired.id), "expired"),
        (&unknown, None, "unknown"),
    ] {
        let (first, repeats, refused) = burst(&store, key, 1, 16, 1).await;
        assert_eq!((first, repeats, refused.len()), (0, 0, 16), "{refusal}");
        for e in &refused {
            let expected = match refusal {
                "disabled" => matches!(e, QuotaError::TokenDisabled),
                "expired" => matches!(e, QuotaError::TokenExpired),
                _ => matches!(e, QuotaError::TokenNotFound),
            };
            assert!(expected, "{refusal}: {e:?}");
        }
        if let Some(id) = id {
            assert!(debits_of(&store, id).await.is_empty());
            assert_eq!(balance(&store, id).await, limited(1_000, 0));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_classed_for_the_caller() {
    use sea_orm::ConnectionTrait;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.store().await;
    let txn = sea_orm::TransactionTrait::begin(store.connection())
        .await
        .unwrap();
    // A statement the database gave up on: try again later, not a bug.
    txn.execute_unprepared("SET LOCAL statement_timeout = 10")
        .await
        .unwrap();
    let gave_up = txn
        .execute_unprepared("SELECT pg_sleep(1)")
        .await
        .unwrap_err();
    assert!(matches!(QuotaError::from(gave_up), QuotaError::Busy(_)));
    drop(txn);
    // A statement that cannot work: internal.
    let broken = store
        .connection()
        .execute_unprepared("SELEC 1")
        .await
        .unwrap_err();
    assert!(matches!(QuotaError::from(broken), QuotaError::Internal(_)));
}

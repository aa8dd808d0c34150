//! The debit: atomic, all-or-nothing, refused for the token's state, and unlimited tokens.

use crate::helpers::*;

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
    disable(&store, disabled.id, NOW).await;
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

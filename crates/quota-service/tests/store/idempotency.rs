//! Request ids: a repeat debits once, per token, compared exactly.

use crate::helpers::*;

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
    disable(&store, tok.id, NOW).await;
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

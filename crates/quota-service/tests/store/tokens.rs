//! Tokens: create, grant, update, delete, list.

use crate::helpers::*;

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
    grant_never_takes_the_limit_past_the_largest_number,
    grant_never_takes_the_limit_past_the_largest_number
);
/// The limit is remaining + used: a grant that would take it past
/// `i64::MAX` is refused, though `remaining` alone would still fit, and the
/// counters still agree with the ledger.
async fn grant_never_takes_the_limit_past_the_largest_number(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, i64::MAX).await;
    consume(&store, &key, 1, None).await.unwrap();
    let at = TokenLocator::Id(tok.id);
    let refused = store.grant(&at, units(1), NOW + 1).await;
    assert!(
        matches!(&refused, Err(QuotaError::InvalidArgument(m)) if m.contains("largest number")),
        "{refused:?}"
    );
    assert_eq!(balance(&store, tok.id).await, limited(i64::MAX - 1, 1));

    // Up to the largest limit exactly is fine.
    let (tok, key) = new_token(&store, i64::MAX - 10).await;
    consume(&store, &key, 4, None).await.unwrap();
    let at = TokenLocator::Id(tok.id);
    let granted = store.grant(&at, units(10), NOW + 1).await.unwrap();
    assert_eq!(granted.balance, limited(i64::MAX - 4, 4));
    assert_eq!(granted.balance.limit_units(), i64::MAX);
    assert!(store.grant(&at, units(1), NOW + 2).await.is_err());

    let verification = quota_service::store::verify::verify(store.connection())
        .await
        .unwrap();
    assert!(verification.agrees(), "{:?}", verification.disagreeing);
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

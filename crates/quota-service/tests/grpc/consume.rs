//! Consume: debits, repeats, unlimited tokens, refusals.

use crate::helpers::*;

on_every_database!(consume_debits_and_repeats, consume_debits_and_repeats);
async fn consume_debits_and_repeats(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api.create_units(1_000).await;

    let debit = api.consume(&key, 300, "req-1").await.unwrap();
    assert_eq!(
        debit,
        pb::ConsumeResponse {
            remaining: 700,
            used: 300,
            repeat: false,
            unlimited: false
        }
    );
    let repeat = api.consume(&key, 300, "req-1").await.unwrap();
    assert_eq!(
        repeat,
        pb::ConsumeResponse {
            remaining: 700,
            used: 300,
            repeat: true,
            unlimited: false
        }
    );

    // Over the remaining quota: refused, nothing taken.
    let over = api.consume(&key, 701, "req-2").await;
    assert_eq!(code(over), Code::ResourceExhausted);
    let token = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!((token.remaining, token.used), (700, 300));

    // Exactly the rest; then the token is spent.
    let rest = api.consume(&key, 700, "req-2").await.unwrap();
    assert_eq!((rest.remaining, rest.used, rest.repeat), (0, 1_000, false));
    assert_eq!(
        code(api.consume(&key, 1, "").await),
        Code::ResourceExhausted
    );
    assert!(api.consume(&key, 300, "req-1").await.unwrap().repeat);

    // A spent token may still read its balance.
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (
            sub.hard_limit_usd,
            sub.limit_units,
            sub.remaining_units,
            sub.used_units
        ),
        (0, 1_000, 0, 1_000)
    );
}

on_every_database!(
    repeats_succeed_on_a_token_since_disabled_or_expired,
    repeats_succeed_on_a_token_since_disabled_or_expired
);
/// Once a debit with a request id has succeeded, a repeat of the id succeeds
/// again and debits nothing more, though the token has since been disabled
/// or has expired; a new debit of it is refused.
async fn repeats_succeed_on_a_token_since_disabled_or_expired(db: TestDb) {
    let api = Api::start(db).await;
    let (disabled, disabled_key) = api.create_units(1_000).await;
    let (expired, expired_key) = api.create_units(1_000).await;
    for key in [&disabled_key, &expired_key] {
        let debit = api.consume(key, 300, "req-1").await.unwrap();
        assert_eq!(
            (debit.remaining, debit.used, debit.repeat),
            (700, 300, false)
        );
    }
    api.disable(disabled.id).await;
    api.update(pb::UpdateTokenRequest {
        token: by_id(expired.id),
        expires_at: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();

    for (case, id, key) in [
        ("disabled", disabled.id, &disabled_key),
        ("expired", expired.id, &expired_key),
    ] {
        let repeat = api.consume(key, 300, "req-1").await.unwrap();
        assert_eq!(
            repeat,
            pb::ConsumeResponse {
                remaining: 700,
                used: 300,
                repeat: true,
                unlimited: false
            },
            "{case}"
        );
        assert_eq!(
            code(api.consume(key, 1, "req-2").await),
            Code::FailedPrecondition,
            "{case}"
        );
        let token = api.get(by_id(id)).await.unwrap();
        assert_eq!((token.remaining, token.used), (700, 300), "{case}");
    }
}

on_every_database!(
    consume_of_unlimited_token_records_use,
    consume_of_unlimited_token_records_use
);
async fn consume_of_unlimited_token_records_use(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api
        .create(pb::CreateTokenRequest {
            unlimited: true,
            ..Default::default()
        })
        .await;
    let first = api.consume(&key, 5_000_000_000, "").await.unwrap();
    let second = api.consume(&key, 5_000_000_000, "").await.unwrap();
    // Debits move units from remaining to used, unlimited or not: the limit
    // (remaining + used) stays what was granted.
    assert_eq!(
        (first.remaining, first.used, first.unlimited),
        (-5_000_000_000, 5_000_000_000, true)
    );
    assert_eq!(
        (second.remaining, second.used),
        (-10_000_000_000, 10_000_000_000)
    );
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (sub.used_units, sub.limit_units, sub.hard_limit_usd),
        (10_000_000_000, 0, 100_000_000)
    );
}

on_every_database!(
    consume_refuses_bad_requests_and_tokens,
    consume_refuses_bad_requests_and_tokens
);
async fn consume_refuses_bad_requests_and_tokens(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api.create_units(1_000).await;

    assert_eq!(code(api.consume(&key, 0, "").await), Code::InvalidArgument);
    assert_eq!(code(api.consume(&key, -5, "").await), Code::InvalidArgument);
    assert_eq!(code(api.consume("", 1, "").await), Code::InvalidArgument);
    assert_eq!(
        code(api.consume("sk-bad", 1, "").await),
        Code::InvalidArgument
    );
    let long_id = "x".repeat(256);
    assert_eq!(
        code(api.consume(&key, 1, &long_id).await),
        Code::InvalidArgument
    );
    // PostgreSQL cannot store a NUL in text: refused on every database
    // before any store call, not an INTERNAL from the database.
    assert_eq!(
        code(api.consume(&key, 1, "a\0b").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(api.consume(&unknown_key(), 1, "").await),
        Code::NotFound
    );

    let (_, expired) = api
        .create(pb::CreateTokenRequest {
            quota: 1_000,
            expires_at: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(api.consume(&expired, 1, "").await),
        Code::FailedPrecondition
    );

    api.disable(tok.id).await;
    assert_eq!(
        code(api.consume(&key, 1, "r").await),
        Code::FailedPrecondition
    );

    // None of it debited anything.
    let token = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!((token.remaining, token.used), (1_000, 0));
    let expired = api.get(by_key(&expired)).await.unwrap();
    assert_eq!((expired.remaining, expired.used), (1_000, 0));
}

//! Every case of the contract's Holds section, through the gRPC API.

use super::{Api, code};
use quota::pb;
use quota_service::on_every_database;
use quota_service::testing::TestDb;
use tonic::Code;

on_every_database!(
    reserve_within_and_beyond_spendable_and_repeat,
    reserve_within_and_beyond_spendable_and_repeat
);
async fn reserve_within_and_beyond_spendable_and_repeat(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;

    let before = quota_service::domain::unix_now();
    let held = api.reserve(&key, 60, "call-1", 0).await.unwrap();
    let after = quota_service::domain::unix_now();
    assert_eq!((held.remaining, held.used, held.held), (100, 0, 60));
    assert!(!held.repeat && !held.unlimited);
    // The first whole second at least 600 s after the call.
    assert!(
        (before + 600..=after + 601).contains(&held.expires_at),
        "ttl 0 means 600 s"
    );

    // 40 left to spend: 41 is refused, 40 is held.
    assert_eq!(
        code(api.reserve(&key, 41, "call-2", 60).await),
        Code::ResourceExhausted
    );
    let second = api.reserve(&key, 40, "call-2", 60).await.unwrap();
    assert_eq!((second.remaining, second.held), (100, 100));

    // A repeat holds nothing more, whatever its quota, and answers the same expiry.
    let again = api.reserve(&key, 999, "call-1", 5).await.unwrap();
    assert!(again.repeat);
    assert_eq!((again.held, again.expires_at), (100, held.expires_at));

    // Reads show what is held; holds never change the limit.
    let token = api.get(id).await;
    assert_eq!((token.remaining, token.used, token.held), (100, 0, 100));
    let sub = api.subscription(&key).await;
    assert_eq!(
        (sub.held_units, sub.limit_units, sub.remaining_units),
        (100, 100, 100)
    );
}

on_every_database!(
    consume_is_refused_when_only_held_units_would_cover_it,
    consume_is_refused_when_only_held_units_would_cover_it
);
async fn consume_is_refused_when_only_held_units_would_cover_it(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api.token(100).await;
    api.reserve(&key, 70, "stream", 60).await.unwrap();
    for id in ["", "debit-1"] {
        assert_eq!(
            code(api.consume(&key, 31, id).await),
            Code::ResourceExhausted
        );
    }
    let debit = api.consume(&key, 30, "debit-1").await.unwrap();
    assert_eq!((debit.remaining, debit.used), (70, 30));
    assert_eq!(
        code(api.consume(&key, 1, "").await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(api.reserve(&key, 1, "more", 60).await),
        Code::ResourceExhausted
    );
    // Freed, the units can be spent again.
    let released = api.release(&key, "stream").await.unwrap();
    assert_eq!(
        (released.remaining, released.used, released.held),
        (70, 30, 0)
    );
    api.consume(&key, 70, "").await.unwrap();
}

on_every_database!(
    settle_below_equal_to_and_above_the_hold,
    settle_below_equal_to_and_above_the_hold
);
async fn settle_below_equal_to_and_above_the_hold(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(1000).await;
    for (n, cost) in [(1, 40), (2, 50), (3, 80)] {
        api.reserve(&key, 50, &format!("h{n}"), 60).await.unwrap();
        let before = api.get(id).await;
        let settled = api.settle(&key, &format!("h{n}"), cost).await.unwrap();
        assert_eq!(settled.remaining, before.remaining - cost, "cost {cost}");
        assert_eq!(settled.used, before.used + cost);
        assert_eq!(
            (settled.held, settled.overdraft, settled.repeat),
            (0, 0, false)
        );
    }
    let token = api.get(id).await;
    assert_eq!((token.remaining, token.used, token.held), (830, 170, 0));
    // The usage route counts settled costs.
    assert_eq!(api.usage_units(&key).await, 170);
    // Settling at zero frees the hold and debits nothing.
    api.reserve(&key, 30, "free", 60).await.unwrap();
    let zero = api.settle(&key, "free", 0).await.unwrap();
    assert_eq!((zero.remaining, zero.used, zero.held), (830, 170, 0));
}

on_every_database!(
    overdraft_is_reported_and_refuses_until_granted,
    overdraft_is_reported_and_refuses_until_granted
);
async fn overdraft_is_reported_and_refuses_until_granted(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    api.reserve(&key, 60, "a", 60).await.unwrap();
    api.reserve(&key, 30, "b", 60).await.unwrap();
    // Spendable 10: a cost of 85 takes 60 from the hold, 10 from the balance,
    // and overdraws by 15.
    let settled = api.settle(&key, "a", 85).await.unwrap();
    assert_eq!(
        (settled.remaining, settled.used, settled.held),
        (15, 85, 30)
    );
    assert_eq!(settled.overdraft, 15);
    // Spendable is -15: Consume and Reserve refuse, even of one unit.
    assert_eq!(
        code(api.consume(&key, 1, "c").await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(api.reserve(&key, 1, "d", 60).await),
        Code::ResourceExhausted
    );
    // The other hold still settles; a cost above it overdraws further.
    let b = api.settle(&key, "b", 35).await.unwrap();
    assert_eq!((b.remaining, b.held, b.overdraft), (-20, 0, 5));
    // Repeats report nothing more.
    let again = api.settle(&key, "b", 35).await.unwrap();
    assert!(again.repeat);
    assert_eq!((again.remaining, again.overdraft), (-20, 0));
    // Limit unchanged by holds: 100 granted.
    let sub = api.subscription(&key).await;
    assert_eq!(
        (sub.limit_units, sub.remaining_units, sub.used_units),
        (100, -20, 120)
    );
    // A grant of 20 brings spendable to 0: still nothing to spend; one more unit does.
    api.grant(id, 20).await;
    assert_eq!(
        code(api.consume(&key, 1, "c").await),
        Code::ResourceExhausted
    );
    api.grant(id, 1).await;
    api.consume(&key, 1, "c").await.unwrap();
    assert_eq!(
        code(api.reserve(&key, 1, "d", 60).await),
        Code::ResourceExhausted
    );
}

on_every_database!(
    unlimited_tokens_hold_and_never_overdraw,
    unlimited_tokens_hold_and_never_overdraw
);
async fn unlimited_tokens_hold_and_never_overdraw(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api
        .create(pb::CreateTokenRequest {
            unlimited: true,
            ..Default::default()
        })
        .await;
    let held = api.reserve(&key, 1_000, "u", 60).await.unwrap();
    assert!(held.unlimited);
    assert_eq!((held.remaining, held.held), (0, 1_000));
    api.consume(&key, 5, "").await.unwrap();
    let settled = api.settle(&key, "u", 3_000).await.unwrap();
    assert_eq!(
        (settled.remaining, settled.used, settled.held),
        (-3_005, 3_005, 0)
    );
    assert_eq!(settled.overdraft, 0);
}

on_every_database!(settle_and_release_repeats, settle_and_release_repeats);
async fn settle_and_release_repeats(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    api.reserve(&key, 10, "s", 60).await.unwrap();
    api.settle(&key, "s", 7).await.unwrap();
    for cost in [7, 9, 0] {
        let again = api.settle(&key, "s", cost).await.unwrap();
        assert!(again.repeat);
        assert_eq!((again.remaining, again.used, again.overdraft), (93, 7, 0));
    }
    // A settled hold is a repeat for Reserve too.
    assert!(api.reserve(&key, 10, "s", 60).await.unwrap().repeat);

    api.reserve(&key, 10, "r", 60).await.unwrap();
    for _ in 0..2 {
        let released = api.release(&key, "r").await.unwrap();
        assert_eq!(
            (released.remaining, released.used, released.held),
            (93, 7, 0)
        );
    }
    let token = api.get(id).await;
    assert_eq!((token.remaining, token.used, token.held), (93, 7, 0));
    assert_eq!(api.usage_units(&key).await, 7);
}

on_every_database!(
    settled_released_and_unknown_ids,
    settled_released_and_unknown_ids
);
async fn settled_released_and_unknown_ids(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api.token(100).await;
    api.reserve(&key, 10, "settled", 60).await.unwrap();
    api.settle(&key, "settled", 10).await.unwrap();
    assert_eq!(
        code(api.release(&key, "settled").await),
        Code::FailedPrecondition
    );

    api.reserve(&key, 10, "released", 60).await.unwrap();
    api.release(&key, "released").await.unwrap();
    assert_eq!(
        code(api.settle(&key, "released", 1).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(api.reserve(&key, 1, "released", 60).await),
        Code::FailedPrecondition
    );

    assert_eq!(code(api.settle(&key, "unknown", 1).await), Code::NotFound);
    assert_eq!(code(api.release(&key, "unknown").await), Code::NotFound);
    // Ids are per token: another token's hold is unknown here.
    let (_, other) = api.token(100).await;
    assert_eq!(code(api.settle(&other, "settled", 1).await), Code::NotFound);
    // Ids are compared exactly.
    assert_eq!(code(api.release(&key, "RELEASED").await), Code::NotFound);
    assert_eq!(code(api.release(&key, "released ").await), Code::NotFound);
}

on_every_database!(
    request_ids_are_one_namespace_with_consume,
    request_ids_are_one_namespace_with_consume
);
async fn request_ids_are_one_namespace_with_consume(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    api.consume(&key, 5, "debit").await.unwrap();
    assert_eq!(
        code(api.reserve(&key, 1, "debit", 60).await),
        Code::AlreadyExists
    );
    // The id is the answer even when the balance could not cover the hold.
    assert_eq!(
        code(api.reserve(&key, 1000, "debit", 60).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(api.settle(&key, "debit", 1).await),
        Code::AlreadyExists
    );
    assert_eq!(code(api.release(&key, "debit").await), Code::AlreadyExists);

    // Consume with an id that names a hold, in every state of the hold.
    api.reserve(&key, 5, "live", 60).await.unwrap();
    api.reserve(&key, 5, "settled", 60).await.unwrap();
    api.settle(&key, "settled", 5).await.unwrap();
    api.reserve(&key, 5, "released", 60).await.unwrap();
    api.release(&key, "released").await.unwrap();
    for hold in ["live", "settled", "released"] {
        assert_eq!(
            code(api.consume(&key, 1, hold).await),
            Code::AlreadyExists,
            "{hold}"
        );
    }
    let token = api.get(id).await;
    assert_eq!((token.remaining, token.used, token.held), (90, 10, 5));
}

on_every_database!(holds_refuse_bad_requests, holds_refuse_bad_requests);
async fn holds_refuse_bad_requests(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api.token(100).await;
    let invalid = Code::InvalidArgument;
    assert_eq!(code(api.reserve(&key, 1, "", 60).await), invalid);
    assert_eq!(code(api.settle(&key, "", 1).await), invalid);
    assert_eq!(code(api.release(&key, "").await), invalid);
    let long = "x".repeat(256);
    assert_eq!(code(api.reserve(&key, 1, &long, 60).await), invalid);
    assert_eq!(code(api.settle(&key, &long, 1).await), invalid);
    assert_eq!(code(api.release(&key, &long).await), invalid);
    assert_eq!(code(api.reserve(&key, 1, "a\0b", 60).await), invalid);
    assert_eq!(code(api.settle(&key, "a\0b", 1).await), invalid);
    assert_eq!(code(api.release(&key, "a\0b").await), invalid);
    assert!(api.reserve(&key, 1, &"x".repeat(255), 60).await.is_ok());
    for ttl in [-1, 86_401, i64::MIN, i64::MAX] {
        assert_eq!(code(api.reserve(&key, 1, "t", ttl).await), invalid, "{ttl}");
    }
    assert_eq!(api.reserve(&key, 1, "day", 86_400).await.unwrap().held, 2);
    for quota in [0, -1] {
        assert_eq!(code(api.reserve(&key, quota, "q", 60).await), invalid);
    }
    assert_eq!(code(api.settle(&key, "day", -1).await), invalid);
    for bad in ["", "sk-short", "not a key"] {
        assert_eq!(code(api.reserve(bad, 1, "k", 60).await), invalid);
        assert_eq!(code(api.settle(bad, "k", 1).await), invalid);
        assert_eq!(code(api.release(bad, "k").await), invalid);
    }
    let unknown = format!("sk-{}", "Z".repeat(48));
    assert_eq!(
        code(api.reserve(&unknown, 1, "k", 60).await),
        Code::NotFound
    );
    assert_eq!(code(api.settle(&unknown, "k", 1).await), Code::NotFound);
    assert_eq!(code(api.release(&unknown, "k").await), Code::NotFound);
}

on_every_database!(
    holds_need_the_admin_credential,
    holds_need_the_admin_credential
);
async fn holds_need_the_admin_credential(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api.token(100).await;
    let reserve = pb::ReserveRequest {
        token: key.clone(),
        quota: 1,
        request_id: "r".into(),
        ttl_seconds: 0,
    };
    let mut client = api.quota();
    let none = client.reserve(tonic::Request::new(reserve.clone())).await;
    assert_eq!(code(none), Code::Unauthenticated);
    let as_user = client.reserve(super::bearer(reserve.clone(), &key)).await;
    assert_eq!(code(as_user), Code::PermissionDenied);
    let settle = pb::SettleRequest {
        token: key.clone(),
        request_id: "r".into(),
        quota: 1,
    };
    let wrong = client.settle(super::bearer(settle, "wrong-secret")).await;
    assert_eq!(code(wrong), Code::Unauthenticated);
    let release = pb::ReleaseRequest {
        token: key.clone(),
        request_id: "r".into(),
    };
    let as_user = client.release(super::bearer(release, &key)).await;
    assert_eq!(code(as_user), Code::PermissionDenied);
}

on_every_database!(
    a_disabled_token_holds_nothing_but_settles_its_holds,
    a_disabled_token_holds_nothing_but_settles_its_holds
);
async fn a_disabled_token_holds_nothing_but_settles_its_holds(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    api.reserve(&key, 20, "before", 60).await.unwrap();
    api.reserve(&key, 20, "freed", 60).await.unwrap();
    api.disable(id).await;
    assert_eq!(
        code(api.reserve(&key, 1, "after", 60).await),
        Code::FailedPrecondition
    );
    // A repeat of a hold made before is still a repeat.
    assert!(api.reserve(&key, 20, "before", 60).await.unwrap().repeat);
    // The call was admitted while the key could pay: its cost is recorded.
    let settled = api.settle(&key, "before", 15).await.unwrap();
    assert_eq!(
        (settled.remaining, settled.used, settled.held),
        (85, 15, 20)
    );
    let released = api.release(&key, "freed").await.unwrap();
    assert_eq!(released.held, 0);
}

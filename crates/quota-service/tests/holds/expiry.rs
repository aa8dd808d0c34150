//! Holds expire by themselves: past its ttl a hold no longer counts, with no
//! background job and no call in between. The store takes the time, so most
//! of these inject it; one runs on the real clock through gRPC.

use super::{Api, code};
use quota_service::domain::{HoldTtl, QuotaUnits, TokenKey, unix_now};
use quota_service::store::NewToken;
use quota_service::testing::TestDb;
use quota_service::{QuotaError, Store, on_every_database};
use std::time::Duration;
use tonic::Code;

const T: i64 = 1_800_000_000;

fn units(n: i64) -> QuotaUnits {
    QuotaUnits::positive(n).unwrap()
}

fn ttl(seconds: i64) -> HoldTtl {
    HoldTtl::parse(seconds).unwrap()
}

async fn token(store: &Store, quota: i64) -> (i64, TokenKey) {
    let new = NewToken {
        quota,
        ..Default::default()
    };
    let (token, key) = store.create_token(new, T).await.unwrap();
    (token.id, key)
}

/// `held` as a read at `now` shows it.
async fn held_at(store: &Store, id: i64, now: i64) -> i64 {
    let token = store
        .token(&quota_service::domain::TokenLocator::Id(id))
        .await
        .unwrap();
    store.held_at(&token, now).await.unwrap()
}

on_every_database!(
    a_hold_stops_counting_at_its_expiry_with_no_call_in_between,
    a_hold_stops_counting_at_its_expiry_with_no_call_in_between
);
async fn a_hold_stops_counting_at_its_expiry_with_no_call_in_between(db: TestDb) {
    let store = db.store().await;
    let (id, key) = token(&store, 100).await;
    let digest = key.digest();
    let held = store
        .reserve(&digest, units(100), "h", ttl(1), T)
        .await
        .unwrap();
    assert_eq!((held.held, held.expires_at), (100, T + 1));
    assert_eq!(held_at(&store, id, T).await, 100);
    // Nothing is spendable while it counts...
    let refused = store.consume(&digest, units(1), None, T).await;
    assert!(
        matches!(refused, Err(QuotaError::QuotaExhausted { .. })),
        "{refused:?}"
    );
    // ...and all of it one second later, though nothing touched the token.
    assert_eq!(held_at(&store, id, T + 1).await, 0);
    let debit = store
        .consume(&digest, units(60), None, T + 1)
        .await
        .unwrap();
    assert_eq!((debit.balance.remaining, debit.balance.used), (40, 60));
    let again = store
        .reserve(&digest, units(40), "h2", ttl(1), T + 1)
        .await
        .unwrap();
    assert_eq!(again.held, 40);
    // The expired hold: Reserve refuses it, Release has nothing to free.
    let expired = store.reserve(&digest, units(1), "h", ttl(1), T + 1).await;
    assert!(
        matches!(expired, Err(QuotaError::HoldExpired)),
        "{expired:?}"
    );
    let released = store.release(&digest, "h", T + 1).await.unwrap();
    assert_eq!((released.held, released.balance.remaining), (40, 40));
    assert_eq!(held_at(&store, id, T + 2).await, 0);
    // Released, it stays released: a later Settle is refused and debits
    // nothing; a Release again is OK.
    let late = store.settle(&digest, "h", 10, T + 2).await;
    assert!(matches!(late, Err(QuotaError::HoldReleased)), "{late:?}");
    let again = store.release(&digest, "h", T + 2).await.unwrap();
    assert_eq!((again.balance.remaining, again.balance.used), (40, 60));
    // Used + remaining is still what was granted.
    let token = store
        .token(&quota_service::domain::TokenLocator::Id(id))
        .await
        .unwrap();
    assert_eq!(token.balance.limit_units(), 100);
}

on_every_database!(
    an_expired_hold_is_settled_from_the_balance,
    an_expired_hold_is_settled_from_the_balance
);
async fn an_expired_hold_is_settled_from_the_balance(db: TestDb) {
    let store = db.store().await;
    let (_, key) = token(&store, 100).await;
    let digest = key.digest();
    store
        .reserve(&digest, units(60), "late", ttl(2), T)
        .await
        .unwrap();
    store
        .reserve(&digest, units(30), "live", ttl(60), T)
        .await
        .unwrap();
    // At T + 2 "late" no longer counts: spendable is 100 - 30 = 70, all of
    // the cost comes from it.
    let settled = store.settle(&digest, "late", 50, T + 2).await.unwrap();
    assert_eq!(
        (
            settled.balance.remaining,
            settled.balance.used,
            settled.held,
            settled.overdraft
        ),
        (50, 50, 30, 0)
    );
    store
        .reserve(&digest, units(10), "later", ttl(1), T + 2)
        .await
        .unwrap();
    // Spendable 50 - 30 = 20 once "later" expires; a cost of 25 overdraws by 5.
    let over = store.settle(&digest, "later", 25, T + 3).await.unwrap();
    assert_eq!(
        (over.balance.remaining, over.held, over.overdraft),
        (25, 30, 5)
    );
    // A repeat of either is a repeat.
    assert!(
        store
            .settle(&digest, "late", 50, T + 4)
            .await
            .unwrap()
            .repeat
    );
}

/// Sleeps until the real clock is `into` past the start of a second (the
/// next such moment).
async fn sleep_until_into_a_second(into: Duration) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = u64::from(since_epoch.subsec_nanos());
    let target = u64::try_from(into.as_nanos()).unwrap();
    let to_wait = (1_000_000_000 + target - now) % 1_000_000_000;
    tokio::time::sleep(Duration::from_nanos(if to_wait == 0 {
        1_000_000_000
    } else {
        to_wait
    }))
    .await;
}

on_every_database!(
    a_hold_expires_on_the_real_clock,
    a_hold_expires_on_the_real_clock
);
async fn a_hold_expires_on_the_real_clock(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    // Start at the top of a second, so that the checks below run well
    // before the hold's second ends.
    sleep_until_into_a_second(Duration::ZERO).await;
    let held = api.reserve(&key, 100, "one-second", 1).await.unwrap();
    assert_eq!(api.subscription(&key).await.held_units, 100);
    assert_eq!(
        code(api.consume(&key, 1, "").await),
        Code::ResourceExhausted
    );
    // Wait out the second on the service's clock, with no call in between.
    while unix_now() < held.expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.subscription(&key).await.held_units, 0);
    assert_eq!(api.get(id).await.held, 0);
    let debit = api.consume(&key, 100, "").await.unwrap();
    assert_eq!(debit.remaining, 0);
}

on_every_database!(
    a_hold_counts_for_at_least_its_ttl_on_the_real_clock,
    a_hold_counts_for_at_least_its_ttl
);
/// A hold made late in a second still counts once the clock's whole
/// seconds have moved on, until its ttl has passed on the real clock.
async fn a_hold_counts_for_at_least_its_ttl(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    // Reserve 0.8 s into a second.
    sleep_until_into_a_second(Duration::from_millis(800)).await;
    let made = std::time::Instant::now();
    let held = api.reserve(&key, 100, "late-in-a-second", 1).await.unwrap();
    // The next second on the service's clock, short of the ttl.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(made.elapsed() < Duration::from_secs(1), "too slow to tell");
    assert_eq!(api.subscription(&key).await.held_units, 100);
    assert_eq!(api.get(id).await.held, 100);
    while unix_now() < held.expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(made.elapsed() >= Duration::from_secs(1));
    // `GetToken` reads no cache (a subscription may lag by the cache's ttl).
    assert_eq!(api.get(id).await.held, 0);
}

on_every_database!(
    an_expired_hold_answers_the_contracts_row_over_grpc,
    an_expired_hold_answers_the_contracts_row_over_grpc
);
/// The row "an expired hold" of the contract's table, through gRPC on the
/// real clock: Reserve repeated is FAILED_PRECONDITION, Settle takes the cost
/// from the balance, Release is OK with nothing to free (and the hold is
/// released: a Settle after it is FAILED_PRECONDITION); `Consume` with its
/// id is ALREADY_EXISTS. None of the refusals holds or debits anything.
async fn an_expired_hold_answers_the_contracts_row_over_grpc(db: TestDb) {
    let api = Api::start(db).await;
    let (id, key) = api.token(100).await;
    let released = api.reserve(&key, 30, "to-release", 1).await.unwrap();
    let settled = api.reserve(&key, 20, "to-settle", 1).await.unwrap();
    assert_eq!(settled.held, 50);
    // Wait out both on the service's clock, with no call in between.
    while unix_now() < released.expires_at.max(settled.expires_at) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for hold in ["to-release", "to-settle"] {
        assert_eq!(
            code(api.reserve(&key, 30, hold, 1).await),
            Code::FailedPrecondition,
            "Reserve {hold}"
        );
        assert_eq!(
            code(api.consume(&key, 1, hold).await),
            Code::AlreadyExists,
            "Consume {hold}"
        );
    }
    let token = api.get(id).await;
    assert_eq!((token.remaining, token.used, token.held), (100, 0, 0));

    let freed = api.release(&key, "to-release").await.unwrap();
    assert_eq!((freed.remaining, freed.used, freed.held), (100, 0, 0));
    // The Release sticks: the call it freed is not settled after all.
    assert_eq!(
        code(api.settle(&key, "to-release", 10).await),
        Code::FailedPrecondition
    );
    let settled = api.settle(&key, "to-settle", 25).await.unwrap();
    assert_eq!(
        (
            settled.remaining,
            settled.used,
            settled.held,
            settled.repeat,
            settled.overdraft
        ),
        (75, 25, 0, false, 0)
    );
    assert_eq!(api.usage_units(&key).await, 25);
}

on_every_database!(live_holds_count_only_unexpired_open_holds, live_holds_count);
/// `quota_holds_live` samples [`Store::live_holds`]: holds neither settled,
/// released nor expired, across tokens, with expired ones not yet swept left out.
async fn live_holds_count(db: TestDb) {
    let store = db.store().await;
    let (_, a) = token(&store, 1_000).await;
    let (_, b) = token(&store, 1_000).await;
    assert_eq!(store.live_holds(T).await.unwrap(), 0);
    for (key, id, seconds) in [
        (&a, "a1", 600),
        (&a, "a2", 600),
        (&a, "a3", 10),
        (&b, "b1", 600),
        (&b, "b2", 600),
    ] {
        store
            .reserve(&key.digest(), units(5), id, ttl(seconds), T)
            .await
            .unwrap();
    }
    assert_eq!(store.live_holds(T).await.unwrap(), 5);
    store.settle(&a.digest(), "a1", 3, T).await.unwrap();
    store.release(&b.digest(), "b1", T).await.unwrap();
    assert_eq!(store.live_holds(T).await.unwrap(), 3);
    // "a3" expires at T + 10, unswept: no longer live.
    assert_eq!(store.live_holds(T + 10).await.unwrap(), 2);
}

on_every_database!(
    a_reserve_counts_no_expired_hold_even_when_the_balance_covers_both,
    a_reserve_counts_no_expired_hold
);
/// A lone reserve whose spendable balance covers it even with an expired,
/// unswept hold still in `held` answers the `held` of live holds only: the
/// expired one is swept first, not reported. The same when the expired hold
/// makes the balance look short, and for a debit's or a hold's request id.
async fn a_reserve_counts_no_expired_hold(db: TestDb) {
    let store = db.store().await;
    let (id, key) = token(&store, 100).await;
    let digest = key.digest();
    store
        .reserve(&digest, units(30), "old", ttl(1), T)
        .await
        .unwrap();
    // 100 - 30 covers 20 even while "old" is counted; at T + 1 it has expired.
    let fresh = store
        .reserve(&digest, units(20), "fresh", ttl(60), T + 1)
        .await
        .unwrap();
    assert_eq!(
        (
            fresh.held,
            fresh.balance.remaining,
            fresh.repeat,
            fresh.expires_at
        ),
        (20, 100, false, T + 61)
    );
    let stored = store
        .token(&quota_service::domain::TokenLocator::Id(id))
        .await
        .unwrap();
    assert_eq!(stored.held, 20, "the expired hold was swept from the row");
    let expired = store.reserve(&digest, units(1), "old", ttl(1), T + 1).await;
    assert!(
        matches!(expired, Err(QuotaError::HoldExpired)),
        "{expired:?}"
    );

    // 80 spendable while "late" (ttl 1) counts; 90 once it has expired.
    store
        .reserve(&digest, units(10), "late", ttl(1), T + 1)
        .await
        .unwrap();
    let big = store
        .reserve(&digest, units(75), "big", ttl(60), T + 2)
        .await
        .unwrap();
    assert_eq!((big.held, big.balance.remaining), (95, 100));

    // A request id a debit used, and a repeat of a live hold.
    store
        .consume(&digest, units(1), Some("debit"), T + 2)
        .await
        .unwrap();
    let clash = store
        .reserve(&digest, units(1), "debit", ttl(60), T + 2)
        .await;
    assert!(
        matches!(clash, Err(QuotaError::RequestIdInUse(_))),
        "{clash:?}"
    );
    let repeat = store
        .reserve(&digest, units(75), "big", ttl(60), T + 3)
        .await
        .unwrap();
    assert_eq!(
        (repeat.held, repeat.balance.remaining, repeat.repeat),
        (95, 99, true)
    );
    assert_eq!(held_at(&store, id, T + 3).await, 95);
}

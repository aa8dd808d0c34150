//! The read cache: a change made through a process is seen by its next read;
//! another replica sees it within the TTL; with a TTL of 0 at once; the
//! cache holds at most its capacity.
//!
//! The services are called in process (their trait methods), one
//! `QuotaApi` per replica, each with its own cache; the replicas of a
//! database on a server or in a file have a store (a pool) each.

use crate::helpers::*;
use quota::pb::quota_service_server::QuotaService;
use quota::pb::token_admin_server::TokenAdmin;
use quota_service::cache::CacheConfig;
use quota_service::{QuotaApi, Store};
use std::time::{Duration, Instant};

/// A TTL longer than any test: only an invalidation explains a change seen.
const FOREVER: Duration = Duration::from_secs(3600);
/// The TTL of the replica that must see the others' changes within it.
const REPLICA_TTL: Duration = Duration::from_millis(400);
/// How often the other replica reads while it waits for a change.
const STEP: Duration = Duration::from_millis(10);

fn replica(store: Store, ttl: Duration, capacity: u64) -> QuotaApi {
    QuotaApi::new(
        store,
        ServiceConfig {
            cache: CacheConfig { ttl, capacity },
            ..test_config()
        },
    )
}

/// What a read of `key` shows: the counters, or the refusal.
async fn read(api: &QuotaApi, key: &str) -> String {
    match api
        .get_subscription(bearer(pb::GetSubscriptionRequest {}, key))
        .await
    {
        Ok(sub) => {
            let s = sub.into_inner();
            format!(
                "limit {} used {} unlimited {} until {}",
                s.limit_units, s.used_units, s.unlimited, s.access_until
            )
        }
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// The changes an admin or a relay makes, in the order the tests make them.
#[derive(Clone, Copy, Debug)]
enum Change {
    Grant,
    Debit,
    Unlimited,
    Disable,
    EnableExpired,
    Delete,
}

/// Every change, and what a read shows after it (the token starts at 1000 units).
const CHANGES: [(Change, &str); 6] = [
    (Change::Grant, "limit 1500 used 0 unlimited false until 0"),
    (Change::Debit, "limit 1500 used 200 unlimited false until 0"),
    (
        Change::Unlimited,
        "limit 1500 used 200 unlimited true until 0",
    ),
    (Change::Disable, "Unauthenticated: API key is disabled"),
    (
        Change::EnableExpired,
        "Unauthenticated: API key has expired",
    ),
    (
        Change::Delete,
        "Unauthenticated: invalid API key: no such key",
    ),
];

async fn create(api: &QuotaApi, quota: i64, expires_at: i64) -> (i64, String) {
    let created = api
        .create_token(as_admin(pb::CreateTokenRequest {
            quota,
            expires_at,
            ..Default::default()
        }))
        .await
        .expect("CreateToken")
        .into_inner();
    (created.token.expect("a token").id, created.key)
}

async fn update(api: &QuotaApi, id: i64, change: pb::UpdateTokenRequest) {
    let req = pb::UpdateTokenRequest {
        token: by_id(id),
        ..change
    };
    api.update_token(as_admin(req)).await.expect("UpdateToken");
}

/// Makes `change` through `api`; tokens are named by id, the debit by key.
async fn apply(api: &QuotaApi, id: i64, key: &str, change: Change) {
    match change {
        Change::Grant => {
            let req = pb::GrantQuotaRequest {
                token: by_id(id),
                quota: 500,
                ..Default::default()
            };
            api.grant_quota(as_admin(req)).await.expect("GrantQuota");
        }
        Change::Debit => {
            let req = pb::ConsumeRequest {
                token: key.into(),
                quota: 200,
                request_id: "r1".into(),
            };
            api.consume(as_admin(req)).await.expect("Consume");
        }
        Change::Unlimited => {
            let change = pb::UpdateTokenRequest {
                unlimited: Some(true),
                ..Default::default()
            };
            update(api, id, change).await;
        }
        Change::Disable => {
            let change = pb::UpdateTokenRequest {
                enabled: Some(false),
                ..Default::default()
            };
            update(api, id, change).await;
        }
        Change::EnableExpired => {
            let change = pb::UpdateTokenRequest {
                enabled: Some(true),
                expires_at: Some(1),
                ..Default::default()
            };
            update(api, id, change).await;
        }
        Change::Delete => {
            let req = pb::DeleteTokenRequest { token: by_id(id) };
            api.delete_token(as_admin(req)).await.expect("DeleteToken");
        }
    }
}

on_every_database!(
    changes_are_seen_at_once_by_the_process_that_made_them,
    changes_are_seen_at_once_by_the_process_that_made_them
);
async fn changes_are_seen_at_once_by_the_process_that_made_them(db: TestDb) {
    let api = replica(db.store().await, FOREVER, 1000);
    let (id, key) = create(&api, 1000, 0).await;
    assert_eq!(
        read(&api, &key).await,
        "limit 1000 used 0 unlimited false until 0"
    );
    for (change, after) in CHANGES {
        // Cached before the change...
        read(&api, &key).await;
        apply(&api, id, &key, change).await;
        // ...and seen by the very next read.
        assert_eq!(read(&api, &key).await, after, "after {change:?}");
    }
}

on_every_database!(
    an_expiry_is_seen_at_once_from_the_cache,
    an_expiry_is_seen_at_once_from_the_cache
);
async fn an_expiry_is_seen_at_once_from_the_cache(db: TestDb) {
    let api = replica(db.store().await, FOREVER, 1000);
    // Far enough ahead for the first read to come first on a loaded machine.
    let expires_at = unix_now() + 3;
    let (_, key) = create(&api, 1000, expires_at).await;
    assert_eq!(
        read(&api, &key).await,
        format!("limit 1000 used 0 unlimited false until {expires_at}")
    );
    while unix_now() < expires_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cached entry is still there; the clock decides.
    assert_eq!(
        read(&api, &key).await,
        "Unauthenticated: API key has expired"
    );
}

on_every_database!(
    another_replica_sees_each_change_within_the_ttl,
    another_replica_sees_each_change_within_the_ttl
);
async fn another_replica_sees_each_change_within_the_ttl(db: TestDb) {
    let writer = replica(db.store().await, FOREVER, 1000);
    let reader = replica(db.store().await, REPLICA_TTL, 1000);
    let (id, key) = create(&writer, 1000, 0).await;
    for (change, after) in CHANGES {
        // The reader caches what it sees now, just before the change.
        read(&reader, &key).await;
        apply(&writer, id, &key, change).await;
        let changed = Instant::now();
        // The bound: a read that begins a TTL after the change shows it. One
        // that begins before may still show the old answer.
        loop {
            let began = Instant::now();
            let shown = read(&reader, &key).await;
            if shown == after {
                break;
            }
            assert!(
                began < changed + REPLICA_TTL,
                "a read {:?} after {change:?} still shows {shown:?}, past the TTL of {REPLICA_TTL:?}",
                began - changed
            );
            tokio::time::sleep(STEP).await;
        }
    }
}

on_every_database!(
    with_a_ttl_of_zero_another_replica_sees_each_change_at_once,
    with_a_ttl_of_zero_another_replica_sees_each_change_at_once
);
async fn with_a_ttl_of_zero_another_replica_sees_each_change_at_once(db: TestDb) {
    let writer = replica(db.store().await, FOREVER, 1000);
    let reader = replica(db.store().await, Duration::ZERO, 1000);
    assert!(!reader.cache().enabled());
    let (id, key) = create(&writer, 1000, 0).await;
    for (change, after) in CHANGES {
        read(&reader, &key).await;
        apply(&writer, id, &key, change).await;
        assert_eq!(read(&reader, &key).await, after, "after {change:?}");
    }
    assert_eq!(reader.cache().entry_count(), 0);
}

on_every_database!(
    the_cache_holds_at_most_its_capacity,
    the_cache_holds_at_most_its_capacity
);
async fn the_cache_holds_at_most_its_capacity(db: TestDb) {
    let api = replica(db.store().await, FOREVER, 8);
    let (_, key) = create(&api, 1000, 0).await;
    for i in 0..50 {
        // Unknown keys are cached too (negative entries).
        let unknown = format!("sk-{i:0>48}");
        assert_eq!(
            read(&api, &unknown).await,
            "Unauthenticated: invalid API key: no such key"
        );
        assert_eq!(
            read(&api, &key).await,
            "limit 1000 used 0 unlimited false until 0"
        );
    }
    let held = api.cache().entry_count();
    assert!(
        (1..=8).contains(&held),
        "{held} entries for a capacity of 8"
    );
}

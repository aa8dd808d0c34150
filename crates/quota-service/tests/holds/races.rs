//! Two replicas on one database, many callers: holds are never oversold,
//! and settling them on the other replica leaves the counters and the
//! ledger in agreement.

use super::{as_admin, connect, reserve, settle};
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::domain::{TokenLocator, unix_now};
use quota_service::store::NewToken;
use quota_service::store::entity::{KIND_DEBIT, KIND_GRANT, hold, ledger};
use quota_service::testing::{TestDb, TestServer, test_config};
use quota_service::{Store, on_every_database};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::Code;
use tonic::transport::Channel;

const CALLERS: usize = 32;
/// One US cent at the default 500000 units per dollar.
const CENT: i64 = 5_000;
/// Reserve attempts in all: twice what the key can hold.
const ATTEMPTS: usize = 200;

on_every_database!(
    two_replicas_grant_exactly_the_holds_a_key_affords,
    two_replicas_grant_exactly_the_holds_a_key_affords
);
async fn two_replicas_grant_exactly_the_holds_a_key_affords(db: TestDb) {
    let a = TestServer::spawn(db.store().await, test_config()).await;
    let b = TestServer::spawn(db.store().await, test_config()).await;
    let clients = [
        QuotaServiceClient::new(connect(&a).await),
        QuotaServiceClient::new(connect(&b).await),
    ];
    let store = db.store().await;
    let new = NewToken {
        quota: 100 * CENT,
        ..Default::default()
    };
    let (token, key) = store.create_token(new, unix_now()).await.unwrap();
    let key = key.expose().to_owned();

    // 32 callers over both replicas reserve a cent at a time; each remembers
    // which replica granted which hold.
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client = clients[caller % 2].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut refused = 0;
            for attempt in (caller..ATTEMPTS).step_by(CALLERS) {
                let id = format!("hold-{attempt}");
                match reserve(&mut client, &key, CENT, &id, 600).await {
                    Ok(held) => {
                        assert_eq!((held.remaining, held.repeat), (100 * CENT, false));
                        granted.push((id, caller % 2, held.held));
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        refused += 1;
                    }
                }
            }
            (granted, refused)
        }));
    }
    let mut granted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (g, r) = task.await.unwrap();
        granted.extend(g);
        refused += r;
    }
    assert_eq!(granted.len(), 100, "exactly the holds the key affords");
    assert_eq!(refused, ATTEMPTS - 100);
    // Each hold saw its own total held: one cent, two, ... a hundred.
    let mut held: Vec<i64> = granted.iter().map(|(_, _, held)| *held).collect();
    held.sort_unstable();
    assert_eq!(held, (1..=100).map(|k| k * CENT).collect::<Vec<_>>());

    // Each hold is settled at its full cent on the other replica, concurrently.
    let mut tasks = Vec::new();
    for chunk in granted.chunks(granted.len().div_ceil(CALLERS)) {
        let chunk = chunk.to_vec();
        let clients = clients.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for (id, replica, _) in chunk {
                let mut other = clients[1 - replica].clone();
                let settled = settle(&mut other, &key, &id, CENT).await.unwrap();
                assert_eq!((settled.overdraft, settled.repeat), (0, false));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let after = store.token(&TokenLocator::Id(token.id)).await.unwrap();
    assert_eq!(
        (after.balance.used, after.balance.remaining),
        (100 * CENT, 0)
    );
    assert_eq!(after.held, 0);
    assert_used_and_held_match_the_ledger(&store, token.id).await;
    // The key is spent: neither replica holds or debits another unit.
    for mut client in clients {
        let r = reserve(&mut client, &key, 1, "one-more", 60).await;
        assert_eq!(r.unwrap_err().code(), Code::ResourceExhausted);
        let req = as_admin(pb::ConsumeRequest {
            token: key.clone(),
            quota: 1,
            request_id: String::new(),
        });
        assert_eq!(
            client.consume(req).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
    }
}

on_every_database!(
    consume_and_reserve_race_without_overspending,
    consume_and_reserve_race_without_overspending
);
/// Debits and holds of one key at once on both replicas: the spendable
/// balance never goes below zero, and each id is a debit or a hold, never both.
async fn consume_and_reserve_race_without_overspending(db: TestDb) {
    let a = TestServer::spawn(db.store().await, test_config()).await;
    let b = TestServer::spawn(db.store().await, test_config()).await;
    let clients = [
        QuotaServiceClient::new(connect(&a).await),
        QuotaServiceClient::new(connect(&b).await),
    ];
    let store = db.store().await;
    let new = NewToken {
        quota: 1_000,
        ..Default::default()
    };
    let (token, key) = store.create_token(new, unix_now()).await.unwrap();
    let key = key.expose().to_owned();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client: QuotaServiceClient<Channel> = clients[caller % 2].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut taken = 0;
            for i in 0..10 {
                // Callers share ids two by two: one debits, one holds.
                let id = format!("id-{}-{i}", caller / 2);
                let outcome = if caller % 2 == 0 {
                    super::consume(&mut client, &key, 7, &id)
                        .await
                        .map(|r| !r.repeat)
                } else {
                    reserve(&mut client, &key, 7, &id, 600)
                        .await
                        .map(|r| !r.repeat)
                };
                match outcome {
                    Ok(first) => taken += if first { 7 } else { 0 },
                    Err(s) => assert!(
                        matches!(s.code(), Code::ResourceExhausted | Code::AlreadyExists),
                        "{s:?}"
                    ),
                }
            }
            taken
        }));
    }
    let mut taken = 0;
    for task in tasks {
        taken += task.await.unwrap();
    }
    let after = store.token(&TokenLocator::Id(token.id)).await.unwrap();
    // 160 ids of 7 units ask more than the 1000: some id was refused for
    // quota, so the race ended with every affordable 7 taken (142 of them)
    // and the 6 units left over.
    assert_eq!(taken, 994);
    assert_eq!(taken, after.balance.used + after.held);
    assert_eq!(after.spendable(), 6, "refused only when spent: {after:?}");
    assert_used_and_held_match_the_ledger(&store, token.id).await;
}

/// The ledger's debits add up to `used`, its grants to the limit, and the
/// live holds to `held`; no id is both a debit of Consume and a hold.
async fn assert_used_and_held_match_the_ledger(store: &Store, token_id: i64) {
    let token = store.token(&TokenLocator::Id(token_id)).await.unwrap();
    let rows = ledger::Entity::find()
        .filter(ledger::Column::TokenId.eq(token_id))
        .all(store.connection())
        .await
        .unwrap();
    let sum = |kind| -> i64 {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.units)
            .sum()
    };
    assert_eq!(sum(KIND_DEBIT), token.balance.used);
    assert_eq!(sum(KIND_GRANT), token.balance.limit_units());
    let holds = hold::Entity::find()
        .filter(hold::Column::TokenId.eq(token_id))
        .all(store.connection())
        .await
        .unwrap();
    let live: i64 = holds.iter().filter(|h| h.state == 1).map(|h| h.units).sum();
    assert_eq!(live, token.held);
    let verified = quota_service::store::verify::verify(store.connection())
        .await
        .unwrap();
    assert!(verified.agrees(), "{verified:?}");
    for row in rows.iter().filter(|r| r.kind == KIND_DEBIT) {
        let id = row.request_id.as_deref();
        let hold = holds.iter().find(|h| Some(h.request_id.as_str()) == id);
        if let Some(hold) = hold {
            assert_eq!(hold.state, 2, "a debit under a hold's id settled it");
        }
    }
}

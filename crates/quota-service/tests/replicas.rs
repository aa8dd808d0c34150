//! Two gRPC servers ("replicas") on one database, many concurrent callers:
//! debits are exact, never overspent, and idempotent across replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb::ConsumeRequest;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::domain::{Balance, TokenLocator, unix_now};
use quota_service::store::NewToken;
use quota_service::store::entity::{KIND_DEBIT, ledger};
use quota_service::testing::{TEST_ADMIN_TOKEN, TestDb, TestServer, test_config};
use quota_service::{Store, on_every_database};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::Code;
use tonic::transport::Channel;

const CALLERS: usize = 32;
const DEBITS: usize = 1000;

struct Replicas {
    clients: [QuotaServiceClient<Channel>; 2],
    store: Store,
    _servers: [TestServer; 2],
    _db: TestDb,
}

async fn replicas(db: TestDb) -> Replicas {
    let a = TestServer::spawn(db.store().await, test_config()).await;
    let b = TestServer::spawn(db.store().await, test_config()).await;
    let connect = |url: String| async move {
        QuotaServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap())
    };
    let clients = [connect(a.url()).await, connect(b.url()).await];
    Replicas {
        clients,
        store: db.store().await,
        _servers: [a, b],
        _db: db,
    }
}

fn consume(key: &str, quota: i64, request_id: String) -> tonic::Request<ConsumeRequest> {
    let mut request = tonic::Request::new(ConsumeRequest {
        token: key.to_owned(),
        quota,
        request_id,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TEST_ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// Debits of `units` from `CALLERS` tasks over both replicas, `DEBITS` in all;
/// returns (first debits, repeats, refusals) and the balance each first debit
/// left, sorted.
async fn hammer(
    r: &Replicas,
    key: &str,
    units: i64,
    request_id: impl Fn(usize) -> String,
) -> ((usize, usize, usize), Vec<i64>) {
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client = r.clients[caller % 2].clone();
        let ids: Vec<String> = (caller..DEBITS).step_by(CALLERS).map(&request_id).collect();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut first, mut repeats, mut refused) = (0, 0, 0);
            let mut left = Vec::new();
            for id in ids {
                match client.consume(consume(&key, units, id)).await {
                    Ok(response) => {
                        if response.get_ref().repeat {
                            repeats += 1;
                        } else {
                            first += 1;
                            left.push(response.get_ref().remaining);
                        }
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        refused += 1;
                    }
                }
            }
            ((first, repeats, refused), left)
        }));
    }
    let mut totals = (0, 0, 0);
    let mut all_left = Vec::new();
    for task in tasks {
        let ((first, repeats, refused), left) = task.await.unwrap();
        totals = (totals.0 + first, totals.1 + repeats, totals.2 + refused);
        all_left.extend(left);
    }
    all_left.sort_unstable();
    (totals, all_left)
}

async fn balance(store: &Store, token_id: i64) -> Balance {
    store
        .token(&TokenLocator::Id(token_id))
        .await
        .unwrap()
        .balance
}

async fn ledger_debits(store: &Store, token_id: i64) -> Vec<ledger::Model> {
    ledger::Entity::find()
        .filter(ledger::Column::TokenId.eq(token_id))
        .filter(ledger::Column::Kind.eq(KIND_DEBIT))
        .all(store.connection())
        .await
        .unwrap()
}

async fn never_overspent(db: TestDb) {
    let r = replicas(db).await;
    // Affords 400 debits of 7 units, with 3 units left over.
    let new = NewToken {
        name: "shared".into(),
        quota: 7 * 400 + 3,
        ..Default::default()
    };
    let (token, key) = r.store.create_token(new, unix_now()).await.unwrap();

    let (outcomes, left) = hammer(&r, key.expose(), 7, |i| format!("req-{i}")).await;
    assert_eq!(outcomes, (400, 0, DEBITS - 400));
    // Each debit left a balance of its own, one debit below another's.
    assert_eq!(left, (0..400).map(|k| 3 + 7 * k).collect::<Vec<i64>>());

    let after = balance(&r.store, token.id).await;
    assert_eq!(after.remaining, 3);
    assert_eq!(after.used, 7 * 400);
    let rows = ledger_debits(&r.store, token.id).await;
    assert_eq!(rows.len(), 400);
    assert_eq!(rows.iter().map(|row| row.units).sum::<i64>(), after.used);
}

async fn duplicates_debit_once(db: TestDb) {
    let r = replicas(db).await;
    let new = NewToken {
        name: "dup".into(),
        quota: 1_000_000,
        ..Default::default()
    };
    let (token, key) = r.store.create_token(new, unix_now()).await.unwrap();

    // Every caller on both replicas sends the same ten request ids at once.
    let (outcomes, left) = hammer(&r, key.expose(), 100, |i| format!("dup-{}", i % 10)).await;
    assert_eq!(
        outcomes,
        (10, DEBITS - 10, 0),
        "one first debit per id, the rest repeats"
    );
    assert_eq!(
        left,
        (0..10).map(|k| 999_000 + 100 * k).collect::<Vec<i64>>()
    );

    let after = balance(&r.store, token.id).await;
    assert_eq!(after.used, 10 * 100);
    assert_eq!(after.remaining, 1_000_000 - 10 * 100);
    let rows = ledger_debits(&r.store, token.id).await;
    let mut ids: Vec<_> = rows
        .iter()
        .map(|row| row.request_id.clone().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..10).map(|i| format!("dup-{i}")).collect::<Vec<_>>());
}

on_every_database!(two_replicas_never_overspend, never_overspent);
on_every_database!(two_replicas_debit_a_duplicate_once, duplicates_debit_once);

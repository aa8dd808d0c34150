//! The database goes away and comes back: 503 within 3 s while it is away,
//! and the same process serves again within 5 s of its return.

use crate::helpers::{
    RECOVERED_WITHIN, Server, UNAVAILABLE_WITHIN, assert_unavailable, consume, get, read_again,
    subscription,
};
use crate::proxy::{Proxy, server_of};
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::testing::TestDb;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What the server's `grpc.health.v1.Health` reports for the whole server,
/// and the status of its edge's `/readyz`.
async fn health(server: &Server) -> (ServingStatus, u16) {
    let reported = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    let readyz = get(server.http, "/readyz").await.status;
    (ServingStatus::try_from(reported).unwrap(), readyz)
}

async fn the_database_is_cut_and_restored(db: TestDb) {
    let proxy = Proxy::start(server_of(&db.url).await).await;
    let mut server = Server::start(&proxy.url_for(&db.url)).await;
    let (key, _) = server.create_token(5 * 500_000).await;
    let mut grpc = QuotaServiceClient::new(server.channel().await);
    assert_eq!(subscription(server.http, &key).await.status, 200);
    consume(&mut grpc, &key, "before").await.unwrap();

    assert_eq!(health(&server).await, (ServingStatus::Serving, 200));

    proxy.cut();
    let (rest_took, grpc_took) = assert_unavailable(&server, &mut grpc, &key, "while-cut").await;
    // Health follows the database: NOT_SERVING, and /readyz 503.
    let cut = Instant::now();
    while health(&server).await != (ServingStatus::NotServing, 503) {
        assert!(
            cut.elapsed() < UNAVAILABLE_WITHIN * 2,
            "health still {:?} {:?} after the cut",
            health(&server).await,
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.restore();
    let recovered = read_again(&server, &key, Instant::now()).await;
    assert!(
        recovered < RECOVERED_WITHIN,
        "recovered after {recovered:?}"
    );
    let back = Instant::now();
    while health(&server).await != (ServingStatus::Serving, 200) {
        assert!(back.elapsed() < RECOVERED_WITHIN, "health not back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "database cut: 503 after {rest_took:.2?}, UNAVAILABLE after {grpc_took:.2?}; \
         serving again {recovered:.2?} after its return"
    );
    let debit = consume(&mut grpc, &key, "after").await.unwrap();
    assert!(!debit.repeat);
    assert_eq!(debit.used, 2, "the debit refused while cut left nothing");

    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(25)).code(), Some(0));
    // A database away is the operator's to fix, not a bug: `warn`, with its detail.
    let log = server.log();
    let unreachable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("database unreachable"))
        .collect();
    assert!(!unreachable.is_empty(), "no detail logged:\n{log}");
    for line in unreachable {
        assert!(line.contains(" WARN "), "{line}");
    }
    // One watcher of the database for the whole process (the edge's
    // `/readyz` and the gRPC listener share it): each change is said once,
    // so the changes logged alternate (two watchers say each twice).
    let changes: Vec<bool> = log
        .lines()
        .filter_map(|l| {
            if l.contains("health is NOT_SERVING") {
                Some(false)
            } else if l.contains("health is SERVING") {
                Some(true)
            } else {
                None
            }
        })
        .collect();
    assert!(changes.len() >= 2, "{log}");
    assert!(
        changes.windows(2).all(|pair| pair[0] != pair[1]),
        "a health change logged twice:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_and_restored() {
    if let Some(db) = TestDb::postgres().await {
        the_database_is_cut_and_restored(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_cut_and_restored() {
    if let Some(db) = TestDb::mysql().await {
        the_database_is_cut_and_restored(db).await;
    }
}

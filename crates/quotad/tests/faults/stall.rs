//! The database stops answering and closes nothing (a frozen server, a
//! network that drops every packet): 503 / UNAVAILABLE within 3 s, a read
//! and a debit already on the wire included, and the same process serves
//! again within 5 s of the database answering again. The debit whose outcome
//! its caller never learnt is retried under its request id and counted once.

use crate::helpers::{
    RECOVERED_WITHIN, Server, UNAVAILABLE_WITHIN, assert_unavailable, consume, read_again,
    subscription, verify,
};
use crate::proxy::{Proxy, server_of};
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::testing::TestDb;
use sea_orm::{ConnectionTrait, DatabaseBackend, TransactionTrait};
use std::time::{Duration, Instant};

async fn the_database_stalls_and_answers_again(db: TestDb) {
    let proxy = Proxy::start(server_of(&db.url).await).await;
    let mut server = Server::start(&proxy.url_for(&db.url)).await;
    let (key, _) = server.create_token(5 * 500_000).await;
    let mut grpc = QuotaServiceClient::new(server.channel().await);
    // Warm: the pool holds connections that are open when the database stalls.
    for i in 0..4 {
        assert_eq!(subscription(server.http, &key).await.status, 200);
        consume(&mut grpc, &key, &format!("warm-{i}"))
            .await
            .unwrap();
    }

    // A read and a debit on the wire as the database stalls: they wait for
    // the tokens table, locked from outside the proxy, and their answers are
    // then held back.
    let outside = db.store().await;
    let lock = outside.connection().begin().await.unwrap();
    let mysql = lock.get_database_backend() == DatabaseBackend::MySql;
    lock.execute_unprepared(if mysql {
        "LOCK TABLES quota_tokens WRITE"
    } else {
        "LOCK TABLE quota_tokens IN ACCESS EXCLUSIVE MODE"
    })
    .await
    .unwrap();
    let (mut client, debit_key, http, read_key) =
        (grpc.clone(), key.clone(), server.http, key.clone());
    let sent = Instant::now();
    let debit_on_the_wire = tokio::spawn(async move {
        let answer = consume(&mut client, &debit_key, "in-flight").await;
        (answer, sent.elapsed())
    });
    let read_on_the_wire = tokio::spawn(async move {
        let answer = subscription(http, &read_key).await;
        (answer, sent.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.stall();
    if mysql {
        lock.execute_unprepared("UNLOCK TABLES").await.unwrap();
    }
    lock.rollback().await.unwrap();
    let (answer, read_in_flight_took) = read_on_the_wire.await.unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("service_unavailable"), "{answer:?}");
    assert!(
        read_in_flight_took < UNAVAILABLE_WITHIN,
        "the read on the wire: 503 after {read_in_flight_took:?}"
    );
    let (answer, in_flight_took) = debit_on_the_wire.await.unwrap();
    let status = answer.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        in_flight_took < UNAVAILABLE_WITHIN,
        "the debit on the wire: UNAVAILABLE after {in_flight_took:?}"
    );

    // Calls made while it stalls.
    let (rest_took, grpc_took) =
        assert_unavailable(&server, &mut grpc, &key, "while-stalled").await;

    proxy.restore();
    let restored = Instant::now();
    let read_again = read_again(&server, &key, restored).await;
    // The caller of the debit on the wire retries it: applied once, whether
    // or not the first attempt reached the ledger.
    let retried = loop {
        match consume(&mut grpc, &key, "in-flight").await {
            Ok(debit) => break debit,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    restored.elapsed() < RECOVERED_WITHIN,
                    "debits still refused {:?} after the database answered again; stderr:\n{}",
                    restored.elapsed(),
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let debit_again = restored.elapsed();
    assert!(
        read_again < RECOVERED_WITHIN && debit_again < RECOVERED_WITHIN,
        "read after {read_again:?}, debited after {debit_again:?}"
    );
    eprintln!(
        "database stalled: on the wire, the read 503 after {read_in_flight_took:.2?} and \
         the debit UNAVAILABLE after {in_flight_took:.2?}; then 503 after {rest_took:.2?}, \
         UNAVAILABLE after {grpc_took:.2?}; read again {read_again:.2?} and debited again \
         {debit_again:.2?} after it answered again"
    );
    let repeat = consume(&mut grpc, &key, "in-flight").await.unwrap();
    assert!(repeat.repeat, "a retry of a retried debit is a repeat");
    let after = consume(&mut grpc, &key, "while-stalled").await.unwrap();
    assert!(!after.repeat);
    assert_eq!(
        (retried.used, after.used),
        (5, 6),
        "4 warm debits, then the one on the wire and the one refused, once each"
    );

    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(25)).code(), Some(0));
    let checked = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_and_answering_again() {
    if let Some(db) = TestDb::postgres().await {
        the_database_stalls_and_answers_again(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_stalled_and_answering_again() {
    if let Some(db) = TestDb::mysql().await {
        the_database_stalls_and_answers_again(db).await;
    }
}

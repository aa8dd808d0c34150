//! SIGTERM and Ctrl-C: a clean stop with exit 0.

use crate::helpers::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn sigterm_and_ctrl_c_stop_the_server_with_exit_0() {
    for signal in ["TERM", "INT"] {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (key, _) = create_key(&server, "1");
        assert_subscription(&server, &key, 1);
        let started = Instant::now();
        let (status, log) = server.stop_with(signal);
        // An idle server stops at once; the bound only shows that it did not
        // sit out its 10 s grace, with room for a machine shared with others.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "SIG{signal}: took {:?}\n{log}",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}\n{log}");
        assert!(log.contains("stopped"), "SIG{signal}:\n{log}");
        assert!(!log.contains("panicked"), "SIG{signal}:\n{log}");
    }
}

#[test]
fn connections_that_send_nothing_do_not_hold_the_shutdown_open() {
    let dir = TempDir::new();
    let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
    // Clients that connected and never spoke, on both ports, and one that
    // sent half a request.
    let _silent_grpc = TcpStream::connect(server.grpc_url.trim_start_matches("http://")).unwrap();
    let _silent_rest = TcpStream::connect(server.http.unwrap()).unwrap();
    let mut half = TcpStream::connect(server.http.unwrap()).unwrap();
    half.write_all(b"GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A whole request is still answered meanwhile.
    let response = http_get(
        server.http.unwrap(),
        "/v1/dashboard/billing/subscription",
        None,
    );
    assert_eq!(response.status, 401, "{response:?}");
    let (status, log) = server.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
}

#[test]
fn a_signal_right_after_the_listeners_are_announced_is_a_clean_stop() {
    // The handlers must be in place before readiness is announced.
    for _ in 0..5 {
        let dir = TempDir::new();
        let server = Server::start(&dir.sqlite_url("quota.db"), dir.path());
        let (status, log) = server.stop_with("TERM");
        assert_eq!(status.code(), Some(0), "{status}\n{log}");
    }
}

/// The connections of this test's PostgreSQL database that wait for a lock.
async fn waiting_on_locks(store: &quota_service::Store) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Declared before the server, so the server is killed before the database is dropped.
    let Some(db) = rt.block_on(quota_service::testing::TestDb::postgres()) else {
        return;
    };
    let dir = TempDir::new();
    let server = Server::start(&db.url, dir.path());
    // A key the server has never read, so its first read goes to the database.
    let store = rt.block_on(db.store());
    let new = quota_service::store::NewToken {
        name: "in-flight".into(),
        quota: 2_500_000,
        ..Default::default()
    };
    let (_, key) = rt
        .block_on(store.create_token(new, quota_service::domain::unix_now()))
        .unwrap();
    let key = key.expose().to_owned();

    // Another connection holds the token table: the requests below wait for it.
    let lock = rt.block_on(async {
        let txn = store.connection().begin().await.unwrap();
        txn.execute_unprepared("LOCK TABLE quota_tokens IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        txn
    });
    let http = server.http.unwrap();
    let rest = {
        let key = key.clone();
        std::thread::spawn(move || http_get(http, "/v1/dashboard/billing/subscription", Some(&key)))
    };
    let debit = {
        let (url, key) = (server.grpc_url.clone(), key.clone());
        std::thread::spawn(move || consume(&url, &key, 1_000, "in-flight-1"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(waiting_on_locks(&store)) < 2 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the database"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // SIGTERM while both wait; once the server has begun to stop, let them go on.
    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log.lock().unwrap().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown in the log");
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(lock.commit()).unwrap();

    let response = rest.join().unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, subscription_body(5));
    let debited = debit.join().unwrap().unwrap();
    assert_eq!(
        (debited.remaining, debited.used, debited.repeat),
        (2_499_000, 1_000, false)
    );
    let (status, log) = server.exited();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    drop(db);
}

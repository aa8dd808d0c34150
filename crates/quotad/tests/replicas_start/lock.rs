//! The migration lock: a bounded wait with a clear message, and a starting
//! server that refuses connections until it can answer.

use crate::{Grpc, SERVING, all_answer, failed_with_one_line, health, quotad_on};
use quota_service::testing::TestDb;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The wait the processes here are given.
const WAIT: Duration = Duration::from_secs(2);
/// How much later than `WAIT` a process may give up (start, connect, exit).
const SLACK: Duration = Duration::from_secs(8);

/// What a process that gave up on the lock says.
const GAVE_UP: &str = "gave up after 2s waiting for the migration lock: another process is migrating this database or holds its lock";

async fn held_lock_bounds_the_wait(db: TestDb) {
    let holder = db.store().await;
    let lock = holder.lock_migrations(WAIT).await.unwrap();

    for args in [
        vec!["migrate", "--migrate-lock-timeout", "2s"],
        vec![
            "grpc",
            "--grpc-addr",
            "127.0.0.1:0",
            "--migrate-lock-timeout",
            "2",
        ],
    ] {
        let started = Instant::now();
        let out = quotad_on(&db.url, &args);
        let took = started.elapsed();
        let line = failed_with_one_line(&out);
        assert!(line.contains("cannot migrate database"), "{line}");
        assert!(line.contains(GAVE_UP), "{line}");
        assert!(line.contains("--migrate-lock-timeout"), "{line}");
        assert!(
            took >= WAIT && took < WAIT + SLACK,
            "{args:?} took {took:?}"
        );
    }
    // The environment variable sets the same bound.
    let mut cmd = crate::quotad();
    cmd.args(["migrate", "--database-url", &db.url])
        .env("QUOTA_MIGRATE_LOCK_TIMEOUT", "2s");
    let out = crate::run(cmd, crate::COMMAND_TIMEOUT);
    assert!(failed_with_one_line(&out).contains(GAVE_UP));

    // Released, the same command migrates.
    lock.release().await.unwrap();
    let out = quotad_on(&db.url, &["migrate", "--migrate-lock-timeout", "2s"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::describe(&out));
    assert!(
        db.store()
            .await
            .migration_status()
            .await
            .unwrap()
            .is_current()
    );
}

on_shared_databases!(
    a_held_migration_lock_bounds_the_wait_with_a_clear_message,
    held_lock_bounds_the_wait
);

/// SIGTERM while a server waits for the migration lock ends the wait: it
/// exits 0 at once, having migrated and served nothing.
async fn signal_ends_the_wait(db: TestDb) {
    let holder = db.store().await;
    let lock = holder.lock_migrations(WAIT).await.unwrap();
    let mut server = Grpc::spawn(&db.url, &["--migrate-lock-timeout", "60s"]);
    server.logs("waiting for it", crate::READY_TIMEOUT);
    server.terminate();
    // At once: the wait it was in had 60 s to go.
    let status = server
        .child
        .wait_timeout(SLACK)
        .expect("exits at the signal");
    assert!(
        status.success(),
        "{status:?}: {}",
        server.log.lock().unwrap()
    );
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("stopped while waiting for the migration lock"),
        "{log}"
    );
    assert!(!log.contains("listening"), "{log}");
    lock.release().await.unwrap();
    let status = db.store().await.migration_status().await.unwrap();
    assert!(!status.is_current(), "nothing was migrated");
}

on_shared_databases!(
    a_signal_ends_a_servers_wait_for_the_migration_lock,
    signal_ends_the_wait
);

/// Asserts nothing accepts a connection on `addr`: refused, not accepted.
fn refuses(addr: std::net::SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connecting to {addr} while it starts: {e} (expected refused)"),
        Ok(_) => panic!("{addr} accepted a connection before its server could answer"),
    }
}

async fn starting_server_refuses_until_ready(db: TestDb) {
    let holder = db.store().await;
    let lock = holder.lock_migrations(WAIT).await.unwrap();
    // The bound address is logged at debug level.
    let mut server = Grpc::spawn_env(&db.url, &[], &[("QUOTA_LOG", "info,quotad=debug")]);
    let addr = server.address_after("gRPC bound to ", crate::READY_TIMEOUT);

    // The server waits for the lock: its port is bound (no one else can take
    // it) but refuses connections, for as long as the database is not ready.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        refuses(addr);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port is claimed: a plain bind (no SO_REUSEADDR) finds it in use.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let err = other.bind(&addr.into()).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AddrInUse,
        "the port is held while starting"
    );
    let call = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(call.is_err(), "a gRPC client cannot connect before ready");

    lock.release().await.unwrap();
    assert_eq!(server.ready(), addr);
    assert_eq!(health(addr, "").await, SERVING);
    all_answer(&[addr]).await;
}

on_shared_databases!(
    a_starting_server_refuses_connections_until_it_can_answer,
    starting_server_refuses_until_ready
);

//! `quotad serve`, `grpc` and `edge` serving, on SQLite and PostgreSQL.

use crate::helpers::*;

#[test]
fn grpc_and_edge_run_as_two_processes() {
    let dir = TempDir::new();
    let mut grpc = quotad();
    grpc.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0"]);
    let service = Server::spawn(grpc, dir.path(), Serves::GRPC);
    let (key, _) = create_key(&service, "5");

    let mut edge = quotad();
    edge.args(["edge", "--upstream", &service.grpc_url])
        .args(["--http-addr", "127.0.0.1:0"]);
    let edge = Server::spawn(edge, dir.path(), Serves::HTTP);
    assert_subscription(&edge, &key, 5);
    assert_refused(&edge, &"sk-".repeat(17));

    // The edge alone stops cleanly; with its service gone it answers 503.
    let (status, _) = service.stop_with("TERM");
    assert!(status.success(), "quotad grpc: {status:?}");
    let response = edge.get("/v1/dashboard/billing/subscription", &key);
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        response.body.contains(r#""code":"service_unavailable""#),
        "{response:?}"
    );
    let (status, _) = edge.stop_with("TERM");
    assert!(status.success(), "quotad edge: {status:?}");
}

#[test]
fn serve_on_postgres_when_configured() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Declared before the server, so on every path the server is killed
    // before the database is dropped.
    let Some(db) = rt.block_on(quota_service::testing::TestDb::postgres()) else {
        return;
    };
    let dir = TempDir::new();
    let server = Server::start(&db.url, dir.path());
    let (key, _) = create_key(&server, "5");
    assert_subscription(&server, &key, 5);
    succeeded(&server.token(&["grant", &key, "--quota-usd", "2"]));
    assert_subscription(&server, &key, 7);
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
    drop(db);
}

#[test]
fn serve_counts_rest_and_grpc_together_against_max_concurrency() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let dir = TempDir::new();
    let server = Server::serve(
        quotad(),
        &dir.sqlite_url("quota.db"),
        &["--max-concurrency", "1"],
        dir.path(),
    );
    let (key, _) = create_key(&server, "5");
    assert!(consume(&server.grpc_url, &key, 1, "before").is_ok());

    // A REST request whose body is still on its way holds the one permit
    // (once the permit of the last gRPC call is back: until then it is
    // answered 503 at once, and sent again).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = loop {
        let mut held = std::net::TcpStream::connect(server.http.unwrap()).unwrap();
        write!(
            held,
            "GET /v1/dashboard/billing/subscription HTTP/1.1\r\nHost: quota\r\n\
             Authorization: Bearer {key}\r\nContent-Length: 4\r\n\r\nab"
        )
        .unwrap();
        held.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut answer = [0u8; 12];
        match held.read(&mut answer) {
            Ok(n) if n > 0 && Instant::now() < deadline => {
                assert!(answer.starts_with(b"HTTP/1.1 503"), "{answer:?}");
            }
            Ok(_) => panic!("the REST request was answered before its body came"),
            Err(_) => break held,
        }
    };

    // gRPC is then refused at once: the process is at its bound.
    let started = Instant::now();
    let refused = consume(&server.grpc_url, &key, 1, "while-held").unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("busy"), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );

    // The body arrives, the REST request is answered, and gRPC is served again.
    held.write_all(b"cd").unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while consume(&server.grpc_url, &key, 1, "after").is_err() {
        assert!(
            Instant::now() < deadline,
            "gRPC still refused after the REST request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

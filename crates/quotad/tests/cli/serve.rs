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
    use quota::pb::{ConsumeRequest, ConsumeResponse};
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

    // A gRPC call whose message has not come yet holds the one permit
    // while the server waits for it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hold = || {
        let grpc_url = server.grpc_url.clone();
        runtime.spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(grpc_url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let never = tonic::codegen::tokio_stream::pending::<ConsumeRequest>();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/quota.v1.QuotaService/Consume",
            );
            let codec = quota::codec::RequestCodec::<ConsumeRequest, ConsumeResponse>::default();
            grpc.client_streaming(tonic::Request::new(never), path, codec)
                .await
        })
    };
    let mut held = hold();

    // REST is then refused at once: the process is at its bound. (The held
    // call may take a moment to reach the server, and is itself refused as
    // busy if it comes while a REST request has the permit: then it is
    // made again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "REST never refused");
        if held.is_finished() {
            let ended = runtime.block_on(held).unwrap();
            let refused = ended.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            held = hold();
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let started = Instant::now();
        let answer = http_get(
            server.http.unwrap(),
            "/v1/dashboard/billing/subscription",
            Some(&key),
        );
        if answer.status == 503 {
            assert!(answer.body.contains("service_unavailable"), "{answer:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "refused after {:?}",
                started.elapsed()
            );
            break;
        }
        assert_eq!(answer.status, 200, "{answer:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The held call goes away, and REST is served again.
    held.abort();
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http_get(
            server.http.unwrap(),
            "/v1/dashboard/billing/subscription",
            Some(&key),
        );
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "REST still refused: {answer:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

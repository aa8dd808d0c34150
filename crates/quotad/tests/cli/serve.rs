//! `quotad serve`, `grpc` and `edge` serving, on SQLite and PostgreSQL.

use crate::helpers::*;

#[test]
fn grpc_and_edge_run_as_two_processes() {
    let dir = TempDir::new();
    let mut grpc = quotad();
    grpc.args(["grpc", "--database-url", &dir.sqlite_url("quota.db")])
        .args(["--grpc-addr", "127.0.0.1:0"]);
    let service = Server::spawn(
        grpc,
        dir.path(),
        Serves {
            grpc: true,
            http: false,
        },
    );
    let (key, _) = create_key(&service, "5");

    let mut edge = quotad();
    edge.args(["edge", "--upstream", &service.grpc_url])
        .args(["--http-addr", "127.0.0.1:0"]);
    let edge = Server::spawn(
        edge,
        dir.path(),
        Serves {
            grpc: false,
            http: true,
        },
    );
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

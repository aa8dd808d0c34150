//! `/healthz` and `/readyz`: no authentication, CORS and request ids as everywhere.

use crate::helpers::*;
use axum::http::StatusCode;
use quota_edge::{Upstream, app};
use quota_service::testing::{TestDb, TestServer, test_config};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[tokio::test]
async fn healthz_is_200_even_without_the_service() {
    let router = unreachable_upstream().await;
    for path in ["/healthz", "/healthz?probe=1"] {
        let response = send(&router, "GET", path, &[("origin", "https://app.example")]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(body_text(response).await, r#"{"status":"ok"}"#);
    }
    let response = send(&router, "POST", "/healthz", &[]).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn readyz_is_503_when_the_service_cannot_be_reached() {
    let router = unreachable_upstream().await;
    let response = send(&router, "GET", "/readyz", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert_eq!(body["error"]["param"], Value::Null);
}

async fn ready_on(db: TestDb) {
    let server = TestServer::spawn(db.store().await, test_config()).await;
    let router = app(Upstream::lazy(&server.url()).unwrap());
    let response = send(&router, "GET", "/readyz", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, r#"{"status":"ok"}"#);
    // No key needed, and a key that is wrong changes nothing.
    let response = send(
        &router,
        "GET",
        "/readyz",
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}
quota_service::on_every_database!(readyz_is_200_with_the_service_and_database_up, ready_on);

/// A service whose health reports NOT_SERVING (as it does while its
/// database is unreachable), then SERVING.
#[tokio::test]
async fn readyz_follows_the_services_health() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let router = app(Upstream::lazy(&url).unwrap());
    let response = send(&router, "GET", "/readyz", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let response = send(&router, "GET", "/readyz", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
}

//! `X-Request-Id`: kept when valid, made otherwise, on every response, and
//! sent to the gRPC service as `x-request-id` metadata.

use crate::helpers::*;
use axum::http::StatusCode;
use quota::pb;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use quota_edge::{Upstream, app};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

/// An upstream that remembers the `x-request-id` of each call and refuses it.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<String>>>);

impl Recording {
    fn note<T>(&self, request: &tonic::Request<T>) -> Status {
        let id = request
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        self.0.lock().unwrap().push(id);
        Status::unauthenticated("invalid API key: no such key")
    }
}

#[tonic::async_trait]
impl QuotaService for Recording {
    async fn get_subscription(
        &self,
        r: tonic::Request<pb::GetSubscriptionRequest>,
    ) -> Result<tonic::Response<pb::Subscription>, Status> {
        Err(self.note(&r))
    }
    async fn get_usage(
        &self,
        r: tonic::Request<pb::GetUsageRequest>,
    ) -> Result<tonic::Response<pb::Usage>, Status> {
        Err(self.note(&r))
    }
    async fn consume(
        &self,
        r: tonic::Request<pb::ConsumeRequest>,
    ) -> Result<tonic::Response<pb::ConsumeResponse>, Status> {
        Err(self.note(&r))
    }
    async fn reserve(
        &self,
        r: tonic::Request<pb::ReserveRequest>,
    ) -> Result<tonic::Response<pb::ReserveResponse>, Status> {
        Err(self.note(&r))
    }
    async fn settle(
        &self,
        r: tonic::Request<pb::SettleRequest>,
    ) -> Result<tonic::Response<pb::SettleResponse>, Status> {
        Err(self.note(&r))
    }
    async fn release(
        &self,
        r: tonic::Request<pb::ReleaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, Status> {
        Err(self.note(&r))
    }
}

async fn recording_upstream() -> (axum::Router, Recording) {
    let recording = Recording::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(QuotaServiceServer::new(recording.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (app(Upstream::lazy(&url).unwrap()), recording)
}

fn id_of(response: &axum::http::Response<axum::body::Body>) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && groups[2].starts_with('4')
}

#[tokio::test]
async fn a_callers_id_is_returned_and_sent_upstream() {
    let (router, recording) = recording_upstream().await;
    let id = "req-ABC_123.~!";
    for path in [
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/usage",
    ] {
        let response = send(&router, "GET", path, &[("x-request-id", id)]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(id_of(&response), id);
    }
    assert_eq!(*recording.0.lock().unwrap(), [id, id]);
}

#[tokio::test]
async fn an_id_is_made_when_there_is_none_or_it_is_invalid() {
    let (router, recording) = recording_upstream().await;
    let long = "a".repeat(129);
    // Logged and returned as they are, so never kept with a key in them.
    let key = "req-sk-AbCdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
    let cases: [&[(&str, &str)]; 5] = [
        &[],
        &[("x-request-id", "has space")],
        &[("x-request-id", long.as_str())],
        &[("x-request-id", "one"), ("x-request-id", "two")],
        &[("x-request-id", key)],
    ];
    let mut made = Vec::new();
    for headers in cases {
        let response = send(
            &router,
            "GET",
            "/v1/dashboard/billing/subscription",
            headers,
        )
        .await;
        let id = id_of(&response);
        assert!(is_uuid_v4(&id), "{id:?} for {headers:?}");
        made.push(id);
    }
    assert_eq!(
        *recording.0.lock().unwrap(),
        made,
        "the made id is the one sent"
    );
    made.dedup();
    assert_eq!(made.len(), 5, "each request its own id");
    // Exactly 128 visible characters are kept.
    let max = "b".repeat(128);
    let response = send(&router, "GET", "/healthz", &[("x-request-id", &max)]).await;
    assert_eq!(id_of(&response), max);
}

#[tokio::test]
async fn every_response_carries_an_id() {
    let router = unreachable_upstream().await;
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
        ("x-request-id", "preflight-1"),
    ];
    let response = send(
        &router,
        "OPTIONS",
        "/v1/dashboard/billing/subscription",
        &preflight,
    )
    .await;
    assert!(response.status().is_success());
    assert_eq!(id_of(&response), "preflight-1");
    for (method, path, status) in [
        ("GET", "/nowhere", StatusCode::NOT_FOUND),
        (
            "DELETE",
            "/v1/dashboard/billing/usage",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            "/v1/dashboard/billing/subscription",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        ("GET", "/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("GET", "/openapi.json", StatusCode::OK),
    ] {
        let response = send(&router, method, path, &[("origin", "https://app.example")]).await;
        assert_eq!(response.status(), status, "{method} {path}");
        assert!(is_uuid_v4(&id_of(&response)), "{method} {path}");
        // Browsers may read it.
        let exposed = response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(
            exposed.to_ascii_lowercase().contains("x-request-id"),
            "{exposed}"
        );
    }
}

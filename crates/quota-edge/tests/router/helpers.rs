//! What the router tests share: upstreams that fail on purpose, requests
//! sent with `oneshot`, and the assertion on an OpenAI-shaped error.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use quota::pb;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use quota_edge::{Upstream, app};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Status};
use tower::ServiceExt;

pub const SUBSCRIPTION: &str = "/v1/dashboard/billing/subscription";
pub const SPEC_EXAMPLE: &str = r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":5,"hard_limit_usd":5,"system_hard_limit_usd":5,"access_until":0}"#;

/// An upstream that answers every call with one status, after a delay.
/// The message of a [`Failing`] whose handlers panic.
pub const PANIC: &str = "panic";

pub struct Failing {
    pub code: Code,
    pub message: &'static str,
    pub delay: std::time::Duration,
}

impl Failing {
    pub async fn answer<T>(&self) -> Result<tonic::Response<T>, Status> {
        tokio::time::sleep(self.delay).await;
        // A handler's bug: its stream is reset.
        assert_ne!(self.message, PANIC, "a handler that panics");
        Err(Status::new(self.code, self.message))
    }
}

#[tonic::async_trait]
impl QuotaService for Failing {
    async fn get_subscription(
        &self,
        _: tonic::Request<pb::GetSubscriptionRequest>,
    ) -> Result<tonic::Response<pb::Subscription>, Status> {
        self.answer().await
    }
    async fn get_usage(
        &self,
        _: tonic::Request<pb::GetUsageRequest>,
    ) -> Result<tonic::Response<pb::Usage>, Status> {
        self.answer().await
    }
    async fn consume(
        &self,
        _: tonic::Request<pb::ConsumeRequest>,
    ) -> Result<tonic::Response<pb::ConsumeResponse>, Status> {
        self.answer().await
    }
    async fn reserve(
        &self,
        _: tonic::Request<pb::ReserveRequest>,
    ) -> Result<tonic::Response<pb::ReserveResponse>, Status> {
        self.answer().await
    }
    async fn settle(
        &self,
        _: tonic::Request<pb::SettleRequest>,
    ) -> Result<tonic::Response<pb::SettleResponse>, Status> {
        self.answer().await
    }
    async fn release(
        &self,
        _: tonic::Request<pb::ReleaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, Status> {
        self.answer().await
    }
}

/// The URL of a `Failing` upstream on port 0; it stops with the test's runtime.
pub async fn spawn_upstream(failing: Failing) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(QuotaServiceServer::new(failing))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

/// A router in front of an upstream failing at once with `code`.
pub async fn failing_upstream(code: Code, message: &'static str) -> axum::Router {
    let delay = std::time::Duration::ZERO;
    app(Upstream::lazy(
        &spawn_upstream(Failing {
            code,
            message,
            delay,
        })
        .await,
    )
    .unwrap())
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives:
/// the socket is bound, so no one else can take the port, and never listens.
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        ClosedPort(socket)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }
}

/// A router whose upstream is never reached (a closed port, held by the
/// second value).
pub async fn unreachable_upstream() -> (axum::Router, ClosedPort) {
    let closed = ClosedPort::new();
    (app(Upstream::lazy(&closed.url()).unwrap()), closed)
}

pub async fn send(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Response<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

pub async fn body_text(response: Response<Body>) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// Asserts an OpenAI-shaped error with this status and code; returns its message.
/// Asserts that `router` answers a subscription read 503
/// `service_unavailable`: its upstream could not be reached.
pub async fn assert_unreachable(router: &axum::Router) {
    let response = send(
        router,
        "GET",
        "/v1/dashboard/billing/subscription",
        &[("authorization", "Bearer sk-x")],
    )
    .await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "service_unavailable",
    )
    .await;
}

pub async fn assert_error(
    response: Response<Body>,
    status: StatusCode,
    kind: &str,
    code: &str,
) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
    let error = &body["error"];
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(error.get("param").is_some(), "{body}");
    error["message"].as_str().unwrap().to_owned()
}

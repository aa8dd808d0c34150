//! The edge's router, driven with `oneshot`: every error of the contract,
//! CORS, and the whole chain edge -> gRPC -> database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use quota::pb;
use quota::pb::quota_service_server::{QuotaService, QuotaServiceServer};
use quota_edge::{Upstream, app};
use quota_service::store::NewToken;
use quota_service::testing::{TestDb, TestServer, test_config};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Status};
use tower::ServiceExt;

const SUBSCRIPTION: &str = "/v1/dashboard/billing/subscription";
const SPEC_EXAMPLE: &str = r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":5,"hard_limit_usd":5,"system_hard_limit_usd":5,"access_until":0}"#;

/// An upstream that answers every call with one status, after a delay.
struct Failing {
    code: Code,
    message: &'static str,
    delay: std::time::Duration,
}

impl Failing {
    async fn answer<T>(&self) -> Result<tonic::Response<T>, Status> {
        tokio::time::sleep(self.delay).await;
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
}

/// The URL of a `Failing` upstream on port 0; it stops with the test's runtime.
async fn spawn_upstream(failing: Failing) -> String {
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
async fn failing_upstream(code: Code, message: &'static str) -> axum::Router {
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

/// A router whose upstream is never reached (a closed port).
async fn unreachable_upstream() -> axum::Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    app(Upstream::lazy(&url).unwrap())
}

async fn send(
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

async fn body_text(response: Response<Body>) -> String {
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
async fn assert_error(
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

#[tokio::test]
async fn unknown_path_is_404_unknown_url() {
    let router = unreachable_upstream().await;
    for path in [
        "/",
        "/v1/dashboard/billing/nope",
        "/v2/dashboard/billing/subscription",
    ] {
        let response = send(&router, "GET", path, &[]).await;
        let message = assert_error(
            response,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
        )
        .await;
        assert!(message.contains(path), "{message}");
    }
}

#[tokio::test]
async fn wrong_method_is_405_method_not_allowed() {
    let router = unreachable_upstream().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [SUBSCRIPTION, "/dashboard/billing/usage"] {
            let response = send(&router, method, path, &[]).await;
            assert_eq!(response.headers()["allow"], "GET, HEAD, OPTIONS");
            assert_error(
                response,
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn preflight_answers_before_auth_on_every_route() {
    let router = unreachable_upstream().await;
    for path in [
        SUBSCRIPTION,
        "/dashboard/billing/subscription",
        "/v1/dashboard/billing/usage",
        "/anything",
    ] {
        let response = send(
            &router,
            "OPTIONS",
            path,
            &[
                ("origin", "https://chat.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
        )
        .await;
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        assert!(!allowed.contains('*'));
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("GET")
        );
    }
}

#[test]
fn upstream_must_be_a_plain_http_url() {
    for bad in [
        "127.0.0.1:50051",
        "https://127.0.0.1:50051",
        "http://",
        "not a url",
        "",
    ] {
        assert!(Upstream::lazy(bad).is_err(), "{bad:?}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    assert!(Upstream::lazy("http://127.0.0.1:50051").is_ok());
    assert!(Upstream::lazy("http://quota-grpc:50051").is_ok());
}

#[tokio::test]
async fn a_silent_upstream_is_504_after_the_deadline() {
    let slow = Failing {
        code: Code::Internal,
        message: "too late",
        delay: std::time::Duration::from_secs(5),
    };
    let upstream = Upstream::lazy(&spawn_upstream(slow).await)
        .unwrap()
        .timeout(std::time::Duration::from_millis(200));
    let router = app(upstream);
    for path in [SUBSCRIPTION, "/v1/dashboard/billing/usage"] {
        let started = std::time::Instant::now();
        let response = send(&router, "GET", path, &[("authorization", "Bearer sk-x")]).await;
        assert_error(
            response,
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "timeout",
        )
        .await;
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }
}

#[tokio::test]
async fn unreachable_upstream_is_503() {
    let router = unreachable_upstream().await;
    let response = send(
        &router,
        "GET",
        SUBSCRIPTION,
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

#[tokio::test]
async fn upstream_statuses_map_like_grpc_gateway_without_leaking_detail() {
    let cases = [
        (
            Code::Unauthenticated,
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        ),
        (
            Code::PermissionDenied,
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "permission_denied",
        ),
        (
            Code::NotFound,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
        ),
        (
            Code::InvalidArgument,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        (
            Code::ResourceExhausted,
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        (
            Code::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "service_unavailable",
        ),
        (
            Code::DeadlineExceeded,
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "timeout",
        ),
        (
            Code::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
        ),
        (
            Code::Unknown,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
        ),
    ];
    for (code, status, kind, error_code) in cases {
        let router = failing_upstream(code, "detail from upstream: db at 10.0.0.5 said no").await;
        for path in [SUBSCRIPTION, "/dashboard/billing/usage"] {
            let response = send(&router, "GET", path, &[("authorization", "Bearer sk-x")]).await;
            let unauthorized = response.status() == StatusCode::UNAUTHORIZED;
            let has_challenge = response
                .headers()
                .get("www-authenticate")
                .is_some_and(|v| v == "Bearer");
            assert_eq!(unauthorized, has_challenge, "{code:?}");
            let message = assert_error(response, status, kind, error_code).await;
            assert_eq!(
                status.is_server_error(),
                !message.contains("10.0.0.5"),
                "{code:?}: {message}"
            );
        }
    }
}

#[tokio::test]
async fn non_ascii_authorization_is_401() {
    let router = unreachable_upstream().await;
    let request = Request::builder()
        .uri(SUBSCRIPTION)
        .header(
            "authorization",
            axum::http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(
        response,
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
    )
    .await;
}

/// The edge in front of a real gRPC server on a real database.
struct Chain {
    router: axum::Router,
    store: quota_service::Store,
    _server: TestServer,
    _db: TestDb,
}

async fn chain(db: TestDb) -> Chain {
    let store = db.store().await;
    let server = TestServer::spawn(store.clone(), test_config()).await;
    let router = app(Upstream::lazy(&server.url()).unwrap());
    Chain {
        router,
        store,
        _server: server,
        _db: db,
    }
}

async fn subscription_and_errors(db: TestDb) {
    let c = chain(db).await;
    let now = quota_service::domain::unix_now();
    let new = |quota, unlimited, expires_at| NewToken {
        name: "t".into(),
        quota,
        unlimited,
        expires_at,
    };
    let (_, five) = c
        .store
        .create_token(new(2_500_000, false, None), now)
        .await
        .unwrap();
    let bearer = format!("Bearer {}", five.expose());

    for path in [SUBSCRIPTION, "/dashboard/billing/subscription"] {
        let response = send(
            &c.router,
            "GET",
            path,
            &[("authorization", &bearer), ("origin", "https://x")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert_eq!(body_text(response).await, SPEC_EXAMPLE);
    }
    let lower = format!("bearer {}", five.expose());
    let response = send(&c.router, "GET", SUBSCRIPTION, &[("authorization", &lower)]).await;
    assert_eq!(body_text(response).await, SPEC_EXAMPLE);

    let (_, unlimited) = c
        .store
        .create_token(new(0, true, Some(1_900_000_000)), now)
        .await
        .unwrap();
    let response = send(
        &c.router,
        "GET",
        SUBSCRIPTION,
        &[("authorization", &format!("Bearer {}", unlimited.expose()))],
    )
    .await;
    assert_eq!(
        body_text(response).await,
        r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":100000000,"hard_limit_usd":100000000,"system_hard_limit_usd":100000000,"access_until":1900000000}"#
    );

    let (disabled, disabled_key) = c
        .store
        .create_token(new(1, false, None), now)
        .await
        .unwrap();
    let changes = quota_service::store::TokenChanges {
        enabled: Some(false),
        ..Default::default()
    };
    c.store
        .update_token(
            &quota_service::domain::TokenLocator::Id(disabled.id),
            changes,
            now,
        )
        .await
        .unwrap();
    let (_, expired_key) = c
        .store
        .create_token(new(1, false, Some(now - 1)), now)
        .await
        .unwrap();
    let unknown = quota_service::domain::TokenKey::generate().unwrap();

    let cases: [(Vec<(&str, String)>, &str); 6] = [
        (vec![], "missing"),
        (vec![("authorization", "Basic abc".into())], "malformed"),
        (
            vec![("authorization", "Bearer sk-short".into())],
            "malformed",
        ),
        (
            vec![("authorization", format!("Bearer {}", unknown.expose()))],
            "no such key",
        ),
        (
            vec![("authorization", format!("Bearer {}", disabled_key.expose()))],
            "disabled",
        ),
        (
            vec![("authorization", format!("Bearer {}", expired_key.expose()))],
            "expired",
        ),
    ];
    for (headers, says) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = send(&c.router, "GET", SUBSCRIPTION, &headers).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let message = assert_error(
            response,
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        )
        .await;
        assert!(message.contains(says), "{says}: {message}");
    }
}

quota_service::on_every_database!(whole_chain_subscription, subscription_and_errors);

async fn usage_through_the_chain(db: TestDb) {
    let c = chain(db).await;
    let now = quota_service::domain::unix_now();
    let new = NewToken {
        name: "u".into(),
        quota: 1_000_000,
        ..Default::default()
    };
    let (_, key) = c.store.create_token(new, now).await.unwrap();
    let bearer = format!("Bearer {}", key.expose());
    let units = quota_service::domain::QuotaUnits::positive(250_000).unwrap();
    for id in ["a", "b", "a"] {
        c.store
            .consume(&key.digest(), units, Some(id), now)
            .await
            .unwrap();
    }
    let today = quota_service::domain::day_start(now);
    let expected = format!(
        r#"{{"object":"list","total_usage":100.0,"daily_costs":[{{"timestamp":{today},"line_items":[{{"name":"usage","cost":100.0}}]}}]}}"#
    );
    for path in ["/v1/dashboard/billing/usage", "/dashboard/billing/usage"] {
        let response = send(&c.router, "GET", path, &[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, expected);
    }
    let future = "/v1/dashboard/billing/usage?start_date=2999-01-01&end_date=2999-02-01";
    let response = send(&c.router, "GET", future, &[("authorization", &bearer)]).await;
    assert_eq!(
        body_text(response).await,
        r#"{"object":"list","total_usage":0.0,"daily_costs":[]}"#
    );

    // Spent to the last unit, the token still reads its balance and usage.
    let rest = quota_service::domain::QuotaUnits::positive(500_000).unwrap();
    c.store
        .consume(&key.digest(), rest, None, now)
        .await
        .unwrap();
    for path in [SUBSCRIPTION, "/v1/dashboard/billing/usage"] {
        let response = send(&c.router, "GET", path, &[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let response = send(&c.router, "GET", "/dashboard/billing/usage", &[]).await;
    assert_error(
        response,
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
    )
    .await;
}

quota_service::on_every_database!(whole_chain_usage, usage_through_the_chain);

/// A TCP proxy on 127.0.0.1:0 to `target`; dropping it closes the port and
/// every connection through it, as a database that goes away would.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { port, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_503_not_a_timeout() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // The same database, reached through a proxy that can be pulled.
    let target = {
        let authority = db
            .url
            .split_once("://")
            .unwrap()
            .1
            .split_once('/')
            .unwrap()
            .0;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        tokio::net::lookup_host(host_port)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = Proxy::to(target).await;
    let proxied = db.url.replacen(
        &format!(":{}/", target.port()),
        &format!(":{}/", proxy.port),
        1,
    );
    let proxied = if proxied == db.url {
        db.url
            .replacen("127.0.0.1/", &format!("127.0.0.1:{}/", proxy.port), 1)
    } else {
        proxied
    };
    let store = quota_service::Store::connect(&proxied).await.unwrap();
    let now = quota_service::domain::unix_now();
    let new = NewToken {
        quota: 2_500_000,
        ..Default::default()
    };
    let (_, key) = store.create_token(new, now).await.unwrap();
    let server = TestServer::spawn(store, test_config()).await;
    let router = app(Upstream::lazy(&server.url()).unwrap());
    let bearer = format!("Bearer {}", key.expose());
    let response = send(&router, "GET", SUBSCRIPTION, &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), StatusCode::OK);

    drop(proxy);
    let started = std::time::Instant::now();
    let response = send(&router, "GET", SUBSCRIPTION, &[("authorization", &bearer)]).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "service_unavailable",
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

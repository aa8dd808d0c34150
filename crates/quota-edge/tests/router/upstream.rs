//! Upstream failures and how their statuses become HTTP.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use quota_edge::{Upstream, app};
use tonic::Code;
use tower::ServiceExt;

#[test]
fn upstream_must_be_an_http_or_https_url_or_host_and_port() {
    for bad in [
        "ftp://127.0.0.1:50051",
        "http://",
        "not a url",
        "",
        "http://127.0.0.1:99999",
        "127.0.0.1:70000",
        "http://127.0.0.1:-1",
        "http://127.0.0.1:0",
        "http://127.0.0.1:50051/quota",
        "http://127.0.0.1:50051?tls=1",
        "http://quota:secret@127.0.0.1:50051",
    ] {
        assert!(Upstream::lazy(bad).is_err(), "{bad:?}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    assert!(Upstream::lazy("http://127.0.0.1:50051").is_ok());
    assert!(Upstream::lazy("http://127.0.0.1:50051/").is_ok());
    assert!(Upstream::lazy("http://[::1]:50051").is_ok());
    assert!(Upstream::lazy("https://quota.example").is_ok());
    assert!(Upstream::lazy("https://127.0.0.1:50051").is_ok());
    assert!(Upstream::lazy("http://quota-grpc:50051").is_ok());
    // As --grpc-addr names it: a plain one.
    assert!(Upstream::lazy("127.0.0.1:50051").is_ok());
    assert!(Upstream::lazy("quota-grpc:50051").is_ok());
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

/// An upstream gone without closing is found by TCP keepalive (and HTTP/2
/// pings) on the edge's connection to it, which then connects again: the
/// edge's side has its probe timer armed for `quota::liveness`'s idle time.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_connection_to_the_upstream_has_tcp_keepalive() {
    // A listener that accepts and never answers: the connection is all
    // this test looks at.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let upstream = Upstream::lazy(&format!("http://{upstream_addr}"))
        .unwrap()
        .timeout(std::time::Duration::from_secs(10));
    let router = app(upstream);
    let request = tokio::spawn(async move {
        send(
            &router,
            "GET",
            SUBSCRIPTION,
            &[("authorization", "Bearer sk-x")],
        )
        .await
    });
    let (_held_open, edge_side) = listener.accept().await.unwrap();
    quota_service::testing::assert_keepalive_armed(edge_side, upstream_addr).await;
    request.abort();
}

#[tokio::test]
async fn unreachable_upstream_is_503() {
    let (router, _closed) = unreachable_upstream().await;
    assert_unreachable(&router).await;
}

/// A peer that is there but is no gRPC server (it closes every connection
/// it accepts, or answers in HTTP/1.1, as a plain port of a TLS server or
/// a proxy would): the service cannot be reached, 503, not tonic's
/// CANCELLED or UNKNOWN read as 500.
#[tokio::test]
async fn an_upstream_that_is_not_a_grpc_server_is_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for answer in [
        &b""[..],
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let peer = tokio::spawn(async move {
            loop {
                let (mut connection, _) = listener.accept().await.unwrap();
                let mut buffer = [0; 1024];
                let _ = connection.read(&mut buffer).await;
                let _ = connection.write_all(answer).await;
            }
        });
        let router = app(Upstream::lazy(&url).unwrap());
        assert_unreachable(&router).await;
        peer.abort();
    }
}

/// A peer that answers in HTTP/2 but not in gRPC (a REST port named as the
/// upstream): not reached, 503.
#[tokio::test]
async fn an_upstream_that_answers_in_another_protocol_is_503() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rest = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            "{}",
        )
    });
    let peer = tokio::spawn(async move { axum::serve(listener, rest).await });
    let router = app(Upstream::lazy(&url).unwrap());
    assert_unreachable(&router).await;
    peer.abort();
}

/// A service that resets its stream (a handler that panicked) answered:
/// its bug is a 500, not a 503 that asks the caller to try again.
#[tokio::test]
async fn an_upstream_that_resets_its_stream_is_500() {
    let router = failing_upstream(Code::Ok, PANIC).await;
    let response = send(
        &router,
        "GET",
        SUBSCRIPTION,
        &[("authorization", "Bearer sk-x")],
    )
    .await;
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal_error",
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
            Code::FailedPrecondition,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "failed_precondition",
        ),
        (
            Code::OutOfRange,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "out_of_range",
        ),
        (
            Code::AlreadyExists,
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
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
    let (router, _closed) = unreachable_upstream().await;
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

//! Routes, methods and CORS, answered before any call upstream.

use crate::helpers::*;
use axum::http::StatusCode;

#[tokio::test]
async fn unknown_path_is_404_unknown_url() {
    let (router, _closed) = unreachable_upstream().await;
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
    // A key in the path is shown as its display prefix only.
    let key = "sk-AbCdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
    let response = send(&router, "GET", &format!("/v1/{key}"), &[]).await;
    let message = assert_error(
        response,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
    )
    .await;
    assert_eq!(message, "Unknown request URL: GET /v1/sk-AbCd….");
    // So is one sent as the method, which a client may make any token.
    let response = send(&router, key, "/nowhere", &[]).await;
    let message = assert_error(
        response,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
    )
    .await;
    assert_eq!(message, "Unknown request URL: sk-AbCd… /nowhere.");
}

#[tokio::test]
async fn wrong_method_is_405_method_not_allowed() {
    let (router, _closed) = unreachable_upstream().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            SUBSCRIPTION,
            "/dashboard/billing/subscription",
            "/v1/dashboard/billing/usage",
            "/dashboard/billing/usage",
        ] {
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
    let (router, _closed) = unreachable_upstream().await;
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
        // The methods, as a 405 names them.
        assert_eq!(headers["allow"], "GET, HEAD, OPTIONS", "{path}");
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        // A browser may send its own request id: the edge keeps it.
        assert!(allowed.contains("x-request-id"), "{allowed}");
        assert!(!allowed.contains('*'));
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("GET")
        );
    }
}

//! Shared setup: routers in front of real or fake upstreams, one request.

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use quota_edge::{Upstream, app};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A router whose upstream is never reached (a closed port).
pub async fn unreachable_upstream() -> axum::Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    app(Upstream::lazy(&url).unwrap())
}

/// Sends one request through `router`.
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

/// The body as text.
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

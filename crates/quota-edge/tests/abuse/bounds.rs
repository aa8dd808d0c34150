//! Each bound: the status it gets, before any upstream call, and that the
//! edge still serves afterwards.

use crate::helpers::*;
use quota_edge::EdgeConfig;
use std::sync::Arc;
use tokio::sync::Semaphore;

const SUBSCRIPTION: &str = "/v1/dashboard/billing/subscription";

async fn still_serves(edge: &Edge) {
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_uri_over_8_kib_gets_414() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let path = format!("{SUBSCRIPTION}?pad={}", "a".repeat(9 * 1024));
    let reply = send(edge.addr, &get(&path, &[])).await;
    assert_eq!(reply.status, 414, "{reply:?}");
    assert_eq!(reply.code(), "uri_too_long");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(edge.calls(), 0);
    still_serves(&edge).await;
}

#[tokio::test]
async fn headers_over_16_kib_get_431_without_an_upstream_call() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    // The case found in the field: a 20,000-character Authorization.
    let huge = format!("Bearer sk-{}", "x".repeat(20_000));
    let reply = send(edge.addr, &get(SUBSCRIPTION, &[("Authorization", &huge)])).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!(reply.code(), "headers_too_large");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // Many small headers count together.
    let pad = "p".repeat(1000);
    let many: Vec<(String, &str)> = (0..20)
        .map(|i| (format!("x-pad-{i}"), pad.as_str()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let reply = send(edge.addr, &get(SUBSCRIPTION, &many)).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!(edge.calls(), 0);
    still_serves(&edge).await;
}

#[tokio::test]
async fn an_authorization_too_long_for_a_key_gets_401_without_an_upstream_call() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let long = format!("Bearer sk-{}", "x".repeat(4000));
    let reply = send(edge.addr, &get(SUBSCRIPTION, &[("Authorization", &long)])).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.code(), "invalid_api_key");
    assert_eq!(edge.calls(), 0);
    still_serves(&edge).await;
}

#[tokio::test]
async fn a_head_past_the_server_buffer_gets_hyper_s_431() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let huge = "h".repeat(200 * 1024);
    let reply = send(edge.addr, &get(SUBSCRIPTION, &[("x-huge", &huge)])).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!(edge.calls(), 0);
    still_serves(&edge).await;
}

#[tokio::test]
async fn a_body_over_64_kib_gets_413_even_on_a_get() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let auth = format!("Bearer {VALID_KEY}");
    // Announced by Content-Length: refused before it is sent.
    let declared = get(
        SUBSCRIPTION,
        &[("Authorization", &auth), ("Content-Length", "100000")],
    );
    let reply = send(edge.addr, &declared).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.code(), "payload_too_large");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // Chunked, with no length: refused once 64 KiB have been read.
    let mut chunked = get(
        SUBSCRIPTION,
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
    );
    let chunk = 65 * 1024;
    chunked.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
    chunked.extend(std::iter::repeat_n(b'b', chunk));
    chunked.extend_from_slice(b"\r\n");
    let reply = send(edge.addr, &chunked).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(edge.calls(), 0);
    // A small body on a GET is read and ignored.
    let mut small = get(
        SUBSCRIPTION,
        &[("Authorization", &auth), ("Content-Length", "5")],
    );
    small.extend_from_slice(b"hello");
    let reply = send(edge.addr, &small).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    still_serves(&edge).await;
}

#[tokio::test]
async fn past_max_concurrency_requests_get_503_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let config = EdgeConfig {
        in_flight: Arc::new(Semaphore::new(2)),
        ..EdgeConfig::default()
    };
    let edge = spawn_edge_with(config, Some(gate.clone()), None).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = edge.addr;
            tokio::spawn(async move { send(addr, &subscription(VALID_KEY)).await })
        })
        .collect();
    // Both are in flight once the upstream has seen them.
    while edge.calls() < 2 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.code(), "service_unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(edge.calls(), 2, "a shed request never reaches the upstream");
    gate.add_permits(10);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    gate.add_permits(10);
    still_serves(&edge).await;
}

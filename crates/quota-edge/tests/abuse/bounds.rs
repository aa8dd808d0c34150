//! Each bound: the status it gets, before any upstream call, and that the
//! edge still serves afterwards.

use crate::helpers::*;
use quota_edge::EdgeConfig;
use quota_edge::limits::{BODY_READ_TIMEOUT, FIRST_BYTE_TIMEOUT};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// A client whose base URL ends in a slash (`http://host/v1/`) asks for
/// `/v1//dashboard/…`; one that copied a route may keep a trailing slash.
/// Both reach the route; a path that names none is still 404, and a URI
/// over the bound still 414.
#[tokio::test]
async fn doubled_and_trailing_slashes_reach_the_route() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let auth = format!("Bearer {VALID_KEY}");
    for path in [
        "/v1//dashboard/billing/subscription",
        "//dashboard/billing/subscription",
        "/v1/dashboard/billing/subscription/",
        "/v1/dashboard//billing/usage/?start_date=2026-01-01",
    ] {
        let reply = send(edge.addr, &get(path, &[("Authorization", &auth)])).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
    assert_eq!(edge.calls(), 4);
    let reply = send(
        edge.addr,
        &get("/v1//dashboard/nothing/", &[("Authorization", &auth)]),
    )
    .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.code(), "unknown_url");
    let long = format!(
        "/v1//dashboard/billing/subscription?pad={}",
        "a".repeat(9 * 1024)
    );
    let reply = send(edge.addr, &get(&long, &[("Authorization", &auth)])).await;
    assert_eq!(reply.status, 414, "{reply:?}");
    assert_eq!(edge.calls(), 4);
}

/// Two `Authorization` headers: which is the caller's is not the edge's to
/// guess, whatever the first holds.
#[tokio::test]
async fn two_authorization_headers_get_401_without_an_upstream_call() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let good = format!("Bearer {VALID_KEY}");
    for other in [
        "Bearer sk-someoneelsesomeoneelsesomeoneelsesomeoneelse1",
        good.as_str(),
    ] {
        let headers = [("Authorization", good.as_str()), ("Authorization", other)];
        let reply = send(edge.addr, &get(SUBSCRIPTION, &headers)).await;
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(reply.code(), "invalid_api_key");
        assert!(
            reply.body.contains("more than one Authorization header"),
            "{reply:?}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
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

/// 16 KiB of headers in all passes, a byte more does not, whether or not
/// the caller sends its own `X-Request-Id`: the one the edge makes for a
/// request without is not the caller's to pay for.
#[tokio::test]
async fn headers_of_exactly_16_kib_pass_with_or_without_a_request_id() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    // `get` sends "Host: edge" and "Connection: close": 12 + 19 bytes with
    // their separators and line ends; "x-pad: …\r\n" is 9 more.
    let fits = 16 * 1024 - 12 - 19 - 9;
    for (pad, status) in [(fits, 200), (fits + 1, 431)] {
        let pad = "p".repeat(pad);
        let reply = send(edge.addr, &get("/healthz", &[("x-pad", &pad)])).await;
        assert_eq!(reply.status, status, "{reply:?}");
        // The caller's own id counts as its header: "x-request-id: r\r\n".
        let pad = &pad[..pad.len() - 17];
        let reply = send(
            edge.addr,
            &get("/healthz", &[("x-pad", pad), ("x-request-id", "r")]),
        )
        .await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.header("x-request-id"), Some("r"));
    }
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
async fn a_preflight_is_held_to_the_same_bounds() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let preflight = |path: &str, headers: &[(&str, &str)]| {
        let mut raw = get(path, headers);
        raw.splice(0..3, *b"OPTIONS");
        raw
    };
    let long_uri = format!("{SUBSCRIPTION}?pad={}", "a".repeat(9 * 1024));
    let pad = "p".repeat(17 * 1024);
    for (raw, status, code) in [
        (preflight(&long_uri, &[]), 414, "uri_too_long"),
        (
            preflight(SUBSCRIPTION, &[("x-pad", &pad)]),
            431,
            "headers_too_large",
        ),
        (
            preflight(SUBSCRIPTION, &[("Content-Length", "100000")]),
            413,
            "payload_too_large",
        ),
    ] {
        let reply = send(edge.addr, &raw).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.code(), code);
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    }
    // Within the bounds, a preflight is answered as ever.
    let reply = send(edge.addr, &preflight(SUBSCRIPTION, &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(edge.calls(), 0);
}

#[tokio::test]
async fn a_slow_body_holds_no_permit_and_gets_408() {
    let in_flight = Arc::new(Semaphore::new(1));
    let config = EdgeConfig {
        in_flight: in_flight.clone(),
        ..EdgeConfig::default()
    };
    let edge = spawn_edge(config).await;
    let auth = format!("Bearer {VALID_KEY}");
    // Ten bytes announced, one sent, and the connection kept open.
    let mut slow = get(
        SUBSCRIPTION,
        &[("Authorization", &auth), ("Content-Length", "10")],
    );
    slow.push(b'x');
    let started = Instant::now();
    let addr = edge.addr;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let slow = slow.clone();
            tokio::spawn(async move { send(addr, &slow).await })
        })
        .collect();
    // Time for the server to read their heads (a permit is taken, when it
    // is, as soon as a head is read).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The only permit is free: bodies still arriving hold none.
    assert_eq!(in_flight.available_permits(), 1);
    still_serves(&edge).await;
    still_serves(&edge).await;
    for slow in slow {
        let reply = slow.await.unwrap();
        assert_eq!(reply.status, 408, "{reply:?}");
        assert_eq!(reply.code(), "request_timeout");
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    }
    assert!(started.elapsed() >= BODY_READ_TIMEOUT);
    assert_eq!(
        edge.calls(),
        2,
        "a request whose body never came is not served"
    );
}

#[tokio::test]
async fn a_connection_that_begins_no_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = spawn_edge(EdgeConfig::default()).await;
    let started = Instant::now();
    // Nothing at all; and the start of HTTP/2's preface, which leaves open
    // which HTTP the connection speaks.
    let mut silent = Vec::new();
    for first in [&b""[..], b"PRI * HT"] {
        let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        stream.write_all(first).await.unwrap();
        silent.push(stream);
    }
    for mut stream in silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(FIRST_BYTE_TIMEOUT * 3, stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() >= FIRST_BYTE_TIMEOUT);
    still_serves(&edge).await;
}

/// A client that vanishes without closing (a laptop's lid shut, a dropped
/// NAT mapping) is found by TCP keepalive: the edge's side of every
/// connection has its probe timer armed for `quota::liveness`'s idle time.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn every_connection_has_tcp_keepalive() {
    let edge = spawn_edge(EdgeConfig::default()).await;
    let stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    quota_service::testing::assert_keepalive_armed(edge.addr, client).await;
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
    // A liveness probe still finds the process alive.
    let reply = send(edge.addr, &get("/healthz", &[])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    gate.add_permits(10);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    gate.add_permits(10);
    still_serves(&edge).await;
}

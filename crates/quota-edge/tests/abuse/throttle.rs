//! The key-guessing throttle: it starts after N failures, says when to
//! retry, lets keys seen succeeding through, spares other addresses, and
//! lets the address try again once its window has passed.

use crate::helpers::*;
use quota_edge::{EdgeConfig, ThrottleConfig};
use std::net::IpAddr;
use std::time::Duration;

const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn config(max_failures: u32, window: Duration, success_ttl: Duration) -> EdgeConfig {
    EdgeConfig {
        throttle: ThrottleConfig {
            max_failures,
            window,
            success_ttl,
            trusted_proxies: Vec::new(),
        },
        ..EdgeConfig::default()
    }
}

fn guess(i: usize) -> String {
    format!("sk-guess{i:0>43}")
}

/// `n` failed authentications from `from`, each answered 401 by the upstream.
async fn fail(edge: &Edge, from: IpAddr, n: usize) {
    for i in 0..n {
        let reply = send_from(from, edge.addr, &subscription(&guess(i))).await;
        assert_eq!(reply.status, 401, "guess {i}: {reply:?}");
    }
}

#[tokio::test]
async fn more_than_n_failures_throttle_the_address_without_upstream_calls() {
    let edge = spawn_edge(config(3, Duration::from_secs(60), Duration::from_secs(60))).await;
    // The valid key succeeds once before the guessing starts.
    assert_eq!(send(edge.addr, &subscription(VALID_KEY)).await.status, 200);
    // N failures are allowed; the one past N throttles.
    fail(&edge, LOCAL, 4).await;
    let calls = edge.calls();
    let reply = send(edge.addr, &subscription(&guess(99))).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.code(), "rate_limit_exceeded");
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // No key at all is no better.
    let reply = send(edge.addr, &get("/v1/dashboard/billing/usage", &[])).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(
        edge.calls(),
        calls,
        "a throttled guess costs no upstream call"
    );
    // The key seen succeeding still works, on both routes.
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let usage = get(
        "/dashboard/billing/usage",
        &[("Authorization", &format!("bearer {VALID_KEY}"))],
    );
    assert_eq!(send(edge.addr, &usage).await.status, 200);
    // Unauthenticated routes are not throttled: an unknown path is still 404.
    assert_eq!(send(edge.addr, &get("/nowhere", &[])).await.status, 404);
}

#[tokio::test]
async fn a_key_that_keeps_succeeding_keeps_passing_a_throttled_address() {
    let ttl = Duration::from_secs(2);
    let edge = spawn_edge(config(1, Duration::from_secs(60), ttl)).await;
    assert_eq!(send(edge.addr, &subscription(VALID_KEY)).await.status, 200);
    fail(&edge, LOCAL, 2).await;
    // Used every quarter of the TTL for three TTLs: each success counts
    // from itself, not from the first one remembered.
    for i in 0..12 {
        let reply = send(edge.addr, &subscription(VALID_KEY)).await;
        assert_eq!(reply.status, 200, "read {i}: {reply:?}");
        tokio::time::sleep(ttl / 4).await;
    }
    // Unused for longer than the TTL, it is throttled like any other key.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 429, "{reply:?}");
}

#[tokio::test]
async fn another_address_is_not_affected() {
    let edge = spawn_edge(config(2, Duration::from_secs(60), Duration::from_secs(1))).await;
    fail(&edge, LOCAL, 3).await;
    assert_eq!(send(edge.addr, &subscription(&guess(7))).await.status, 429);
    // 127.0.0.2 is another client: its guesses still reach the upstream.
    let reply = send_from(OTHER, edge.addr, &subscription(&guess(7))).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let reply = send_from(OTHER, edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn the_window_resets() {
    let window = Duration::from_secs(1);
    let edge = spawn_edge(config(1, window, Duration::from_secs(1))).await;
    fail(&edge, LOCAL, 2).await;
    let reply = send(edge.addr, &subscription(&guess(5))).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Once Retry-After has passed, guesses reach the upstream again.
    tokio::time::sleep(window).await;
    let reply = send(edge.addr, &subscription(&guess(5))).await;
    assert_eq!(reply.status, 401, "{reply:?}");
}

#[tokio::test]
async fn with_a_cache_ttl_of_zero_no_key_passes_a_throttled_address() {
    let edge = spawn_edge(config(1, Duration::from_secs(60), Duration::ZERO)).await;
    assert_eq!(send(edge.addr, &subscription(VALID_KEY)).await.status, 200);
    fail(&edge, LOCAL, 2).await;
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 429, "{reply:?}");
}

#[tokio::test]
async fn a_key_never_seen_succeeding_is_throttled_too() {
    let edge = spawn_edge(config(1, Duration::from_secs(60), Duration::from_secs(60))).await;
    fail(&edge, LOCAL, 2).await;
    let reply = send(edge.addr, &subscription(VALID_KEY)).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    // Once another address has used it, it passes here too.
    assert_eq!(
        send_from(OTHER, edge.addr, &subscription(VALID_KEY))
            .await
            .status,
        200
    );
    assert_eq!(send(edge.addr, &subscription(VALID_KEY)).await.status, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_x_forwarded_for_names_the_client() {
    let mut config = config(1, Duration::from_secs(60), Duration::from_secs(1));
    config.throttle.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let edge = spawn_edge(config).await;
    let from = |client: &str, key: &str| {
        get(
            "/v1/dashboard/billing/subscription",
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("X-Forwarded-For", client),
            ],
        )
    };
    for i in 0..2 {
        let reply = send(edge.addr, &from("203.0.113.1", &guess(i))).await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    let reply = send(edge.addr, &from("203.0.113.1", &guess(3))).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    // Another client behind the same proxy is not affected.
    let reply = send(edge.addr, &from("203.0.113.2", &guess(3))).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    // A client's own left-hand entries are not believed: the proxy appends.
    let reply = send(edge.addr, &from("198.51.100.9, 203.0.113.1", &guess(3))).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    // From an untrusted peer the header is ignored: 127.0.0.2 is its own client.
    let reply = send_from(OTHER, edge.addr, &from("203.0.113.1", &guess(3))).await;
    assert_eq!(reply.status, 401, "{reply:?}");
}

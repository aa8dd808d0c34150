//! The key-guessing throttle: an address with too many failed
//! authentications (401) within a window gets 429 for every key the edge has
//! not seen succeed lately, answered without a call to the gRPC service.
//!
//! Its tables are bounded: failure windows per client address (a moka
//! cache, written on a failure and read only for an address that may be
//! throttled), and two tables of atomic words that every request reads:
//! until when any address of a bucket is throttled ([`Horizons`]), and when
//! each key (by a keyed 64-bit hash, never the key) last succeeded
//! ([`Stamps`]). Millions of passing addresses cost at most their capacity.

mod stamps;

use crate::error::EdgeError;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use moka::ops::compute::Op;
use moka::sync::Cache;
use pin_project_lite::pin_project;
use stamps::{Horizons, Stamps};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

/// Failed authentications per address and window when not configured.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 60;
/// How many addresses the throttle remembers at most.
const ADDRESS_CAPACITY: u64 = 100_000;
/// Buckets of [`Horizons`] of throttled addresses: 2^14, 128 KiB.
const THROTTLED_BUCKET_BITS: u32 = 14;
/// Sets of [`Stamps`] of keys seen succeeding: 2^14, 65,536 keys.
const SUCCEEDED_SET_BITS: u32 = 14;

/// How the throttle counts.
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// More failed authentications than this within one window throttle the
    /// address (`--auth-failures-per-minute`); 0 throttles after the first.
    pub max_failures: u32,
    /// The window: a minute, shorter in tests.
    pub window: Duration,
    /// How long a key seen succeeding passes a throttled address
    /// (`QUOTA_CACHE_TTL`); zero: no key passes.
    pub success_ttl: Duration,
    /// Peers whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            window: Duration::from_secs(60),
            success_ttl: Duration::from_secs(1),
            trusted_proxies: Vec::new(),
        }
    }
}

/// A fixed window of failures of one address.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    failures: u32,
}

/// The throttle's state, shared by every request of the edge.
#[derive(Debug)]
pub(crate) struct Throttle {
    config: ThrottleConfig,
    failures: Cache<IpAddr, Window>,
    /// Per bucket of address hashes, until when an address of it is
    /// throttled: the end of the window in which its failures passed the
    /// limit.
    throttled_until: Horizons,
    /// When each key (by hash) last succeeded; none with a TTL of zero.
    succeeded: Option<Stamps>,
    /// The hash of keys and addresses, seeded at random per process, so
    /// that no one outside can aim a guess at a remembered key's hash.
    hasher: RandomState,
}

/// The address of an `X-Forwarded-For` hop: an address, or one with a
/// port (`192.0.2.1:5555`, `[2001:db8::1]:5555`), as some proxies write it.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Throttle {
        let failures = Cache::builder()
            .max_capacity(ADDRESS_CAPACITY)
            .time_to_idle(config.window.max(Duration::from_millis(1)))
            .build();
        let succeeded = (!config.success_ttl.is_zero()).then(|| Stamps::new(SUCCEEDED_SET_BITS));
        Throttle {
            config,
            failures,
            throttled_until: Horizons::new(THROTTLED_BUCKET_BITS),
            succeeded,
            hasher: RandomState::new(),
        }
    }

    /// How long `client` stays throttled, if it is. An address whose
    /// bucket holds no throttled one (nearly every address, nearly always)
    /// is answered by one load; any other by its failure window.
    fn throttled(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let horizon = self.throttled_until.latest(self.hasher.hash_one(client))?;
        if horizon <= now {
            return None;
        }
        let window = self.failures.get(&client)?;
        let elapsed = now.saturating_duration_since(window.start);
        (window.failures > self.config.max_failures && elapsed < self.config.window)
            .then(|| self.config.window - elapsed)
    }

    /// Counts a failure of `client`; past the limit, it is throttled until
    /// its window ends.
    fn record_failure(&self, client: IpAddr, now: Instant) {
        let window = self.config.window;
        let mut counted = None;
        self.failures.entry(client).and_compute_with(|entry| {
            let next = match entry.map(|e| e.into_value()) {
                Some(w) if now.saturating_duration_since(w.start) < window => Window {
                    failures: w.failures.saturating_add(1),
                    ..w
                },
                _ => Window {
                    start: now,
                    failures: 1,
                },
            };
            counted = Some(next);
            Op::Put(next)
        });
        if let Some(w) = counted
            && w.failures > self.config.max_failures
        {
            let until = w.start + window;
            self.throttled_until
                .raise(self.hasher.hash_one(client), until);
        }
    }

    /// Remembers that `key` succeeded at `now`: a key that keeps
    /// succeeding keeps passing a throttled address for as long as it does.
    fn record_success(&self, key: u64, now: Instant) {
        if let Some(succeeded) = &self.succeeded {
            succeeded.stamp(key, now);
        }
    }

    /// Whether `key` succeeded within the TTL before `now`.
    fn succeeded_lately(&self, key: &u64, now: Instant) -> bool {
        self.succeeded
            .as_ref()
            .and_then(|s| s.latest(*key))
            .is_some_and(|last| now.saturating_duration_since(last) <= self.config.success_ttl)
    }

    /// The address a request is counted against: the peer, or, when the peer
    /// is a trusted proxy, the rightmost `X-Forwarded-For` hop that is not.
    /// IPv6 clients are counted per /64, the block one host usually holds.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        let mut client = peer.to_canonical();
        if trusted(&client) {
            'hops: for value in headers.get_all("x-forwarded-for").iter().rev() {
                let Ok(value) = value.to_str() else { break };
                for hop in value.rsplit(',') {
                    let Some(ip) = hop_address(hop.trim()) else {
                        break 'hops;
                    };
                    client = ip.to_canonical();
                    if !trusted(&client) {
                        break 'hops;
                    }
                }
            }
        }
        match client {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
            v4 => v4,
        }
    }
}

impl Throttle {
    /// The keyed hash of the request's bearer credential, if it has one: all
    /// the throttle needs to recognise a key it saw succeed, at a fraction
    /// of a cryptographic digest's cost on every request. [`Stamps`] keeps
    /// 38 of its bits, so about one guess in four million from a throttled
    /// address is taken for a key seen succeeding: it gets past the throttle
    /// to the key check, no further.
    fn key_hash(&self, headers: &HeaderMap) -> Option<u64> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, credential) = value.trim().split_once(' ')?;
        let credential = credential.trim_start();
        if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
            return None;
        }
        Some(self.hasher.hash_one(credential))
    }
}

/// The throttle as a layer of the authenticated routes.
#[derive(Clone, Debug)]
pub(crate) struct ThrottleLayer(pub(crate) Arc<Throttle>);

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttled<S>;

    fn layer(&self, inner: S) -> Throttled<S> {
        Throttled {
            inner,
            throttle: self.0.clone(),
        }
    }
}

/// The service of [`ThrottleLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Throttled<S> {
    inner: S,
    throttle: Arc<Throttle>,
}

impl<S> Service<Request> for Throttled<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ThrottledFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> ThrottledFuture<S::Future> {
        let throttle = &self.throttle;
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let client = peer.map(|peer| throttle.client(peer, request.headers()));
        let key = throttle.key_hash(request.headers());
        let now = Instant::now();
        if let Some(wait) = client.and_then(|c| throttle.throttled(c, now))
            && !key.is_some_and(|k| throttle.succeeded_lately(&k, now))
        {
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            quota_telemetry::metrics::throttle_refused();
            let refusal = EdgeError::Throttled {
                retry_after: retry_after.max(1),
            };
            return ThrottledFuture::Refused {
                response: Some(refusal.into_response()),
            };
        }
        ThrottledFuture::Passed {
            inner: self.inner.call(request),
            throttle: throttle.clone(),
            client,
            key,
        }
    }
}

pin_project! {
    /// The response future of [`Throttled`]: counts a 401 against the
    /// client, remembers the key of a success.
    #[project = ThrottledProj]
    pub(crate) enum ThrottledFuture<F> {
        /// Throttled: answered at once, with no call to the service.
        Refused { response: Option<Response> },
        /// Passed on.
        Passed {
            #[pin]
            inner: F,
            throttle: Arc<Throttle>,
            client: Option<IpAddr>,
            key: Option<u64>,
        },
    }
}

impl<F> Future for ThrottledFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ThrottledProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    EdgeError::Internal("a refusal was polled twice".into()).into_response()
                })))
            }
            ThrottledProj::Passed {
                inner,
                throttle,
                client,
                key,
            } => {
                let Ok(response) = ready!(inner.poll(cx));
                match response.status() {
                    StatusCode::UNAUTHORIZED => {
                        if let Some(client) = client {
                            throttle.record_failure(*client, Instant::now());
                        }
                    }
                    status if status.is_success() => {
                        if let Some(key) = key {
                            throttle.record_success(*key, Instant::now());
                        }
                    }
                    _ => {}
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, trusted: &[&str]) -> Throttle {
        Throttle::new(ThrottleConfig {
            max_failures,
            window: Duration::from_secs(60),
            success_ttl: Duration::from_secs(1),
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        })
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn throttles_past_the_limit_within_the_window_only() {
        let t = throttle(2, &[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..2 {
            t.record_failure(ip, start);
        }
        assert!(t.throttled(ip, start).is_none(), "two failures are allowed");
        t.record_failure(ip, start);
        let wait = t.throttled(ip, start + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(t.throttled(ip, start + Duration::from_secs(60)).is_none());
        t.record_failure(ip, start + Duration::from_secs(61));
        assert!(t.throttled(ip, start + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let t = throttle(1, &["10.0.0.0/8"]);
        let headers = forwarded(&["203.0.113.9, 10.1.1.1"]);
        let outsider: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(t.client(outsider, &headers), outsider);
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            t.client(proxy, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // The rightmost untrusted hop: what a client writes further left is not believed.
        let headers = forwarded(&["1.1.1.1", "203.0.113.9"]);
        assert_eq!(
            t.client(proxy, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client(proxy, &HeaderMap::new()), proxy);
        assert_eq!(t.client(proxy, &forwarded(&["junk"])), proxy);
        // With a port, as some proxies write a hop.
        assert_eq!(
            t.client(proxy, &forwarded(&["203.0.113.9:5555"])),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            hop_address("[2001:db8::1]:5555"),
            "2001:db8::1".parse::<IpAddr>().ok()
        );
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let t = throttle(1, &[]);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(
            t.client(a, &HeaderMap::new()),
            t.client(b, &HeaderMap::new())
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            t.client(mapped, &HeaderMap::new()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn keys_are_remembered_by_hash_and_not_at_all_with_ttl_zero() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer sk-abc".parse().unwrap());
        let t = throttle(1, &[]);
        let key = t.key_hash(&headers).unwrap();
        let now = Instant::now();
        t.record_success(key, now);
        assert!(t.succeeded_lately(&key, now));
        // The same credential, however the header spells the scheme, is the same key.
        let mut spelled = HeaderMap::new();
        spelled.insert(header::AUTHORIZATION, "Bearer   sk-abc".parse().unwrap());
        assert_eq!(t.key_hash(&spelled), Some(key));
        let mut other = HeaderMap::new();
        other.insert(header::AUTHORIZATION, "Bearer sk-abd".parse().unwrap());
        assert!(!t.succeeded_lately(&t.key_hash(&other).unwrap(), now));
        let off = Throttle::new(ThrottleConfig {
            success_ttl: Duration::ZERO,
            ..ThrottleConfig::default()
        });
        off.record_success(key, now);
        assert!(!off.succeeded_lately(&key, now));
    }

    #[test]
    fn a_key_passes_for_the_ttl_after_its_last_success() {
        let t = throttle(1, &[]);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        t.record_success(7, start);
        assert!(t.succeeded_lately(&7, at(1_000)));
        assert!(!t.succeeded_lately(&7, at(1_002)));
        // Counted from the last success, not the first remembered.
        t.record_success(7, at(900));
        assert!(t.succeeded_lately(&7, at(1_900)));
        assert!(!t.succeeded_lately(&7, at(1_902)));
        assert!(!t.succeeded_lately(&8, at(900)));
    }

    #[test]
    fn each_address_is_throttled_on_its_own() {
        let t = throttle(0, &[]);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        t.record_failure(a, start);
        assert!(t.throttled(a, start).is_some());
        assert!(t.throttled(b, start).is_none());
        t.record_failure(b, start + Duration::from_secs(30));
        let wait = t.throttled(b, start + Duration::from_secs(30)).unwrap();
        assert_eq!(wait, Duration::from_secs(60));
        assert!(t.throttled(a, start + Duration::from_secs(60)).is_none());
        assert!(t.throttled(b, start + Duration::from_secs(60)).is_some());
    }

    #[test]
    fn more_throttled_addresses_than_buckets_are_all_throttled() {
        let t = throttle(0, &[]);
        let start = Instant::now();
        let addresses: Vec<IpAddr> = (0..20_000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        for &ip in &addresses {
            t.record_failure(ip, start);
        }
        let later = start + Duration::from_secs(1);
        for &ip in &addresses {
            assert!(t.throttled(ip, later).is_some(), "{ip}");
        }
        let outsider: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(t.throttled(outsider, later).is_none());
    }
}

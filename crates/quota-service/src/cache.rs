//! The read cache of key look-ups: the token behind a caller's key, as
//! `GetSubscription` shows it and `GetUsage` authenticates it, by the key's
//! digest (the contract's "Caching").
//!
//! - An entry lives at most the TTL (`QUOTA_CACHE_TTL`), counted from the
//!   moment its database read began, and is checked against the clock at
//!   every read: another replica's change is seen within the TTL.
//! - Unknown digests are cached too (negative entries), so a flood of bogus
//!   keys costs one database look-up per key and TTL.
//! - A change made through this process invalidates the token's entry once
//!   it is committed ([`KeyCache::invalidate`]): the next read here sees it.
//!   Every entry carries the invalidation epoch of its digest's shard as it
//!   was when its database read began, and is served only while that epoch
//!   is unchanged, so a read that raced the change can never put the old
//!   value back.
//! - Expiry is not cached as a decision: the caller checks the token's
//!   `expires_at` against the clock at every read.
//! - The cache holds at most its capacity (`QUOTA_CACHE_CAPACITY`) entries
//!   of a few dozen bytes each (moka's TinyLFU decides which stay).
//!
//! Debits and holds never read it; they only invalidate.

use crate::domain::{Balance, KeyDigest, QuotaError, Token};
use moka::sync::Cache;
use quota_telemetry::metrics;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `QUOTA_CACHE_TTL` when not configured.
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);
/// `QUOTA_CACHE_CAPACITY` when not configured: entries, not bytes. With
/// 100,000 distinct keys read, `quotad serve` stays within 64 MiB of RSS.
pub const DEFAULT_CAPACITY: u64 = 50_000;
/// The `cache` label of this cache's look-ups (`quota_cache_lookups_total`).
const METRIC_NAME: &str = "key";
/// Invalidation epochs: one per shard of digests (a power of two).
const SHARDS: usize = 1 << 14;

/// How the cache is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an entry may be served (`QUOTA_CACHE_TTL`); zero: no cache.
    pub ttl: Duration,
    /// Entries at most (`QUOTA_CACHE_CAPACITY`); zero: no cache.
    pub capacity: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl CacheConfig {
    /// No caching: every read goes to the database.
    pub const OFF: CacheConfig = CacheConfig {
        ttl: Duration::ZERO,
        capacity: 0,
    };
}

/// What a caller's read needs of its token: no name, no display prefix, so
/// an entry stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerToken {
    /// Numeric id.
    pub id: i64,
    /// The counters.
    pub balance: Balance,
    /// Units of its holds unexpired when it was read.
    pub held: i64,
    /// Expiry in unix seconds, if any.
    pub expires_at: Option<i64>,
    /// False when disabled.
    pub enabled: bool,
}

impl CallerToken {
    /// `access_until` of the subscription route: the expiry, or 0 for never.
    pub fn access_until(&self) -> i64 {
        self.expires_at.unwrap_or(0)
    }

    /// True once the expiry has passed (the rule of [`Token::is_expired`]).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl From<&Token> for CallerToken {
    fn from(token: &Token) -> CallerToken {
        CallerToken {
            id: token.id,
            balance: token.balance,
            held: token.held,
            expires_at: token.expires_at,
            enabled: token.enabled,
        }
    }
}

/// One cached look-up: the token, or `None` for a digest no token has.
#[derive(Clone, Copy, Debug)]
struct Entry {
    token: Option<CallerToken>,
    /// When the database read began.
    read_at: Instant,
    /// Its shard's epoch when the database read began.
    epoch: u64,
}

/// The cache of key look-ups of one process.
#[derive(Debug)]
pub struct KeyCache {
    entries: Option<Cache<[u8; 32], Entry>>,
    ttl: Duration,
    epochs: Box<[AtomicU64]>,
}

impl KeyCache {
    /// A cache as `config` says; with a zero TTL or capacity, none at all.
    pub fn new(config: CacheConfig) -> KeyCache {
        let on = !config.ttl.is_zero() && config.capacity > 0;
        let entries = on.then(|| {
            Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.ttl)
                .build()
        });
        let epochs = if on {
            (0..SHARDS).map(|_| AtomicU64::new(0)).collect()
        } else {
            Box::default()
        };
        KeyCache {
            entries,
            ttl: config.ttl,
            epochs,
        }
    }

    fn epoch(&self, digest: &KeyDigest) -> &AtomicU64 {
        let raw = digest.raw();
        let n = usize::from(u16::from_le_bytes([raw[0], raw[1]]));
        &self.epochs[n % SHARDS]
    }

    /// The token whose key has `digest`: from the cache when an entry is
    /// still good, else from `load` (the database), which is then cached.
    pub async fn get_or_load<F, Fut>(
        &self,
        digest: &KeyDigest,
        load: F,
    ) -> Result<Option<CallerToken>, QuotaError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<CallerToken>, QuotaError>>,
    {
        let Some(entries) = &self.entries else {
            return load().await;
        };
        let epoch = self.epoch(digest).load(Ordering::SeqCst);
        let read_at = Instant::now();
        if let Some(entry) = entries.get(digest.raw())
            && entry.epoch == epoch
            && read_at.saturating_duration_since(entry.read_at) < self.ttl
        {
            metrics::cache_lookup(METRIC_NAME, true);
            return Ok(entry.token);
        }
        metrics::cache_lookup(METRIC_NAME, false);
        let token = load().await?;
        entries.insert(
            *digest.raw(),
            Entry {
                token,
                read_at,
                epoch,
            },
        );
        Ok(token)
    }

    /// Forgets what is cached of `digest`: called once a change to its
    /// token is committed, so that the next read goes to the database.
    pub fn invalidate(&self, digest: &KeyDigest) {
        if let Some(entries) = &self.entries {
            // First the epoch, so that a read in flight cannot cache what
            // it read before the change; then the entry, to free it.
            self.epoch(digest).fetch_add(1, Ordering::SeqCst);
            entries.invalidate(digest.raw());
        }
    }

    /// Whether reads are cached at all.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The entries held now (after the cache's pending evictions).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: i64) -> CallerToken {
        CallerToken {
            id,
            balance: Balance {
                remaining: 10,
                used: 0,
                unlimited: false,
            },
            held: 0,
            expires_at: None,
            enabled: true,
        }
    }

    async fn read(cache: &KeyCache, digest: &KeyDigest, from_db: Option<i64>) -> Option<i64> {
        let loaded = cache
            .get_or_load(digest, || async { Ok(from_db.map(token)) })
            .await;
        loaded.unwrap().map(|t| t.id)
    }

    #[tokio::test]
    async fn hits_until_invalidated_and_caches_unknown_digests() {
        let cache = KeyCache::new(CacheConfig::default());
        let a = KeyDigest::of("a");
        assert_eq!(read(&cache, &a, Some(1)).await, Some(1));
        // Served from the cache: the database's answer is not asked.
        assert_eq!(read(&cache, &a, Some(2)).await, Some(1));
        cache.invalidate(&a);
        assert_eq!(read(&cache, &a, Some(2)).await, Some(2));
        let unknown = KeyDigest::of("b");
        assert_eq!(read(&cache, &unknown, None).await, None);
        assert_eq!(read(&cache, &unknown, Some(3)).await, None);
        assert_eq!(cache.entry_count(), 2);
    }

    #[tokio::test]
    async fn a_read_that_raced_a_change_is_not_served() {
        let cache = KeyCache::new(CacheConfig::default());
        let a = KeyDigest::of("a");
        // The change commits and is invalidated while the read is at the database.
        let raced = cache
            .get_or_load(&a, || async {
                cache.invalidate(&a);
                Ok(Some(token(1)))
            })
            .await;
        assert_eq!(raced.unwrap().map(|t| t.id), Some(1));
        assert_eq!(read(&cache, &a, Some(2)).await, Some(2));
        assert_eq!(read(&cache, &a, Some(3)).await, Some(2));
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let cache = KeyCache::new(CacheConfig {
            ttl: Duration::from_millis(50),
            capacity: 10,
        });
        let a = KeyDigest::of("a");
        assert_eq!(read(&cache, &a, Some(1)).await, Some(1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(read(&cache, &a, Some(2)).await, Some(2));
    }

    #[tokio::test]
    async fn a_zero_ttl_or_capacity_caches_nothing() {
        for config in [
            CacheConfig::OFF,
            CacheConfig {
                ttl: Duration::ZERO,
                capacity: 10,
            },
            CacheConfig {
                ttl: DEFAULT_TTL,
                capacity: 0,
            },
        ] {
            let cache = KeyCache::new(config);
            assert!(!cache.enabled());
            let a = KeyDigest::of("a");
            assert_eq!(read(&cache, &a, Some(1)).await, Some(1));
            assert_eq!(read(&cache, &a, Some(2)).await, Some(2));
            assert_eq!(cache.entry_count(), 0);
        }
    }

    #[tokio::test]
    async fn holds_at_most_its_capacity() {
        let cache = KeyCache::new(CacheConfig {
            ttl: Duration::from_secs(60),
            capacity: 100,
        });
        for i in 0..1000 {
            read(&cache, &KeyDigest::of(&i.to_string()), Some(i)).await;
        }
        assert!(cache.entry_count() <= 100, "{}", cache.entry_count());
    }
}

//! The keys the throttle has seen succeed, and when: a table of sets of
//! four slots, each slot one atomic word holding a tag of the key's hash and
//! the time of its last success. Remembering a success, which every read
//! served does, is a few loads and at most one atomic write: no lock, no
//! allocation, no cache bookkeeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per set: a key lives in the set its hash names, in any of its slots.
const WAYS: usize = 4;
/// Bits of the hash that name the set: 2^14 sets, 65,536 keys, 512 KiB.
const SET_BITS: u32 = 14;
/// Bits of a slot that hold the time, in milliseconds (35 years); the
/// 24 above them hold the tag, more bits of the hash.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// When each recently succeeded key (by its hash) last succeeded.
///
/// A key whose set is full replaces the one that succeeded longest ago, so
/// the table forgets only under more keys succeeding within a TTL than a set
/// holds; two keys are confused only if their hashes agree in 38 bits
/// (which would let one guess past the throttle to the key check).
#[derive(Debug)]
pub(super) struct RecentKeys {
    slots: Box<[AtomicU64]>,
    origin: Instant,
    ttl_ms: u64,
}

impl RecentKeys {
    /// A table whose keys pass for `ttl` after their last success.
    pub(super) fn new(ttl: Duration) -> RecentKeys {
        RecentKeys {
            slots: (0..WAYS << SET_BITS).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Remembers that the key with `hash` succeeded at `now`.
    pub(super) fn record(&self, hash: u64, now: Instant) {
        let (set, tag) = self.place(hash);
        let word = tag << TIME_BITS | self.millis(now);
        let mut oldest = &set[0];
        let mut oldest_word = u64::MAX;
        for slot in set {
            let seen = slot.load(Ordering::Relaxed);
            if seen != 0 && seen >> TIME_BITS == tag {
                // The same key: its time moves on, never back (another
                // thread may have written a later one).
                if seen < word {
                    slot.fetch_max(word, Ordering::Relaxed);
                }
                return;
            }
            if seen & TIME_MASK < oldest_word & TIME_MASK {
                oldest = slot;
                oldest_word = seen;
            }
        }
        oldest.store(word, Ordering::Relaxed);
    }

    /// Whether the key with `hash` succeeded within the TTL before `now`.
    pub(super) fn succeeded_lately(&self, hash: u64, now: Instant) -> bool {
        let (set, tag) = self.place(hash);
        let now = self.millis(now);
        set.iter().any(|slot| {
            let seen = slot.load(Ordering::Relaxed);
            seen != 0
                && seen >> TIME_BITS == tag
                && now.saturating_sub(seen & TIME_MASK) <= self.ttl_ms
        })
    }

    /// The set of `hash` and its tag.
    fn place(&self, hash: u64) -> (&[AtomicU64], u64) {
        let set = usize::try_from(hash & ((1 << SET_BITS) - 1)).unwrap_or(0) * WAYS;
        let tag = (hash >> SET_BITS) & ((1 << (64 - TIME_BITS)) - 1);
        (&self.slots[set..set + WAYS], tag)
    }

    /// Milliseconds from the table's start to `at`, plus one: never 0, the
    /// word of an empty slot.
    fn millis(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.origin).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).min(TIME_MASK - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash in set `set` with tag `tag`.
    fn hash(set: u64, tag: u64) -> u64 {
        tag << SET_BITS | set
    }

    #[test]
    fn a_key_passes_for_the_ttl_after_its_last_success() {
        let keys = RecentKeys::new(Duration::from_secs(1));
        let start = keys.origin;
        let at = |ms| start + Duration::from_millis(ms);
        let key = hash(5, 77);
        assert!(!keys.succeeded_lately(key, start));
        keys.record(key, start);
        assert!(keys.succeeded_lately(key, at(1_000)));
        assert!(!keys.succeeded_lately(key, at(1_001)));
        keys.record(key, at(900));
        assert!(keys.succeeded_lately(key, at(1_900)));
        assert!(!keys.succeeded_lately(key, at(1_901)));
        // An earlier success reported late does not move it back.
        keys.record(key, at(100));
        assert!(keys.succeeded_lately(key, at(1_900)));
        // Another tag in the same set, or the same tag in another set, is
        // another key.
        assert!(!keys.succeeded_lately(hash(5, 78), at(1_000)));
        assert!(!keys.succeeded_lately(hash(6, 77), at(1_000)));
    }

    #[test]
    fn a_full_set_forgets_the_key_that_succeeded_longest_ago() {
        let keys = RecentKeys::new(Duration::from_secs(60));
        let start = keys.origin;
        let at = |ms| start + Duration::from_millis(ms);
        for tag in 0..WAYS as u64 {
            keys.record(hash(3, tag), at(10 * (tag + 1)));
        }
        // The first key succeeds again: now the second is the oldest.
        keys.record(hash(3, 0), at(100));
        keys.record(hash(3, 99), at(200));
        let now = at(300);
        assert!(keys.succeeded_lately(hash(3, 0), now));
        assert!(!keys.succeeded_lately(hash(3, 1), now));
        for tag in [2, 3, 99] {
            assert!(keys.succeeded_lately(hash(3, tag), now), "{tag}");
        }
        // Other sets are untouched.
        assert!(!keys.succeeded_lately(hash(4, 1), now));
    }
}

//! A bounded table of the latest time stamped on each of many hashes: when
//! a key last succeeded, until when an address is throttled. Sets of four
//! slots, each slot one atomic word holding a tag of the hash and the time,
//! so that stamping and reading, which every request does, are a few loads
//! and at most one atomic write: no lock, no allocation, no cache
//! bookkeeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per set: a hash lives in the set its low bits name, in any slot.
const WAYS: usize = 4;
/// Bits of a slot that hold the time, in milliseconds from the table's
/// start, plus one (35 years); the 24 above them hold the tag, more bits of
/// the hash.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// The latest time stamped on each hash, to the millisecond, rounded up:
/// a key succeeded no later, an address is throttled no shorter.
///
/// A hash whose set is full replaces the one with the earliest time, so the
/// table forgets only when more hashes than a set holds are stamped in the
/// same span; two hashes are confused only if they agree in the set's bits
/// and the tag's 24.
#[derive(Debug)]
pub(super) struct Stamps {
    slots: Box<[AtomicU64]>,
    set_bits: u32,
    origin: Instant,
}

impl Stamps {
    /// A table of `2^set_bits` sets, `4 * 2^set_bits` hashes, 8 bytes each.
    pub(super) fn new(set_bits: u32) -> Stamps {
        Stamps {
            slots: (0..WAYS << set_bits).map(|_| AtomicU64::new(0)).collect(),
            set_bits,
            origin: Instant::now(),
        }
    }

    /// Stamps `at` on `hash`, unless it holds a later time.
    pub(super) fn stamp(&self, hash: u64, at: Instant) {
        let (set, tag) = self.place(hash);
        let word = tag << TIME_BITS | self.millis(at);
        let mut earliest = &set[0];
        let mut earliest_at = TIME_MASK + 1;
        for slot in set {
            let seen = slot.load(Ordering::Relaxed);
            if seen != 0 && seen >> TIME_BITS == tag {
                // Its time moves on, never back (another thread may have
                // written a later one).
                if seen < word {
                    slot.fetch_max(word, Ordering::Relaxed);
                }
                return;
            }
            if seen & TIME_MASK < earliest_at {
                earliest = slot;
                earliest_at = seen & TIME_MASK;
            }
        }
        earliest.store(word, Ordering::Relaxed);
    }

    /// The latest time stamped on `hash`, if the table still holds it.
    pub(super) fn latest(&self, hash: u64) -> Option<Instant> {
        let (set, tag) = self.place(hash);
        set.iter().find_map(|slot| {
            let seen = slot.load(Ordering::Relaxed);
            (seen != 0 && seen >> TIME_BITS == tag)
                .then(|| self.origin + Duration::from_millis((seen & TIME_MASK) - 1))
        })
    }

    /// The set of `hash` and its tag.
    fn place(&self, hash: u64) -> (&[AtomicU64], u64) {
        let set = usize::try_from(hash & ((1 << self.set_bits) - 1)).unwrap_or(0) * WAYS;
        let tag = (hash >> self.set_bits) & ((1 << (64 - TIME_BITS)) - 1);
        (&self.slots[set..set + WAYS], tag)
    }

    /// Milliseconds from the table's start to `at`, rounded up, plus one:
    /// never 0, the word of an empty slot.
    fn millis(&self, at: Instant) -> u64 {
        let ms = at
            .saturating_duration_since(self.origin)
            .as_nanos()
            .div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX).min(TIME_MASK - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_BITS: u32 = 4;

    /// A hash in set `set` with tag `tag`.
    fn hash(set: u64, tag: u64) -> u64 {
        tag << SET_BITS | set
    }

    #[test]
    fn a_hash_keeps_its_latest_time() {
        let stamps = Stamps::new(SET_BITS);
        let at = |ms| stamps.origin + Duration::from_millis(ms);
        let h = hash(5, 77);
        assert_eq!(stamps.latest(h), None);
        stamps.stamp(h, at(1_000));
        assert_eq!(stamps.latest(h), Some(at(1_000)));
        stamps.stamp(h, at(1_900));
        assert_eq!(stamps.latest(h), Some(at(1_900)));
        // An earlier time stamped late does not move it back.
        stamps.stamp(h, at(100));
        assert_eq!(stamps.latest(h), Some(at(1_900)));
        // To the millisecond, rounded up.
        stamps.stamp(h, at(2_000) + Duration::from_micros(1));
        assert_eq!(stamps.latest(h), Some(at(2_001)));
        // Another tag in the same set, or the same tag in another set, is
        // another hash.
        assert_eq!(stamps.latest(hash(5, 78)), None);
        assert_eq!(stamps.latest(hash(6, 77)), None);
    }

    #[test]
    fn a_full_set_forgets_the_earliest_time() {
        let stamps = Stamps::new(SET_BITS);
        let at = |ms| stamps.origin + Duration::from_millis(ms);
        for tag in 0..WAYS as u64 {
            stamps.stamp(hash(3, tag), at(10 * (tag + 1)));
        }
        // The first hash is stamped again: now the second is the earliest.
        stamps.stamp(hash(3, 0), at(100));
        stamps.stamp(hash(3, 99), at(200));
        assert_eq!(stamps.latest(hash(3, 0)), Some(at(100)));
        assert_eq!(stamps.latest(hash(3, 1)), None);
        for (tag, ms) in [(2, 30), (3, 40), (99, 200)] {
            assert_eq!(stamps.latest(hash(3, tag)), Some(at(ms)), "{tag}");
        }
        // Other sets are untouched.
        assert_eq!(stamps.latest(hash(4, 1)), None);
    }
}

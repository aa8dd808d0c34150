//! Bounded tables of times stamped on hashes, which every request reads:
//! when each key last succeeded ([`Stamps`]), and until when any address
//! of a bucket is throttled ([`Horizons`]). Each entry is one atomic word,
//! so stamping and reading are a few loads and at most one atomic write: no
//! lock, no allocation, no cache bookkeeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per set of [`Stamps`]: a hash lives in the set its low bits name,
/// in any slot.
const WAYS: usize = 4;
/// Bits of a word that hold the time, in milliseconds from the table's
/// start, rounded up, plus one (35 years); in [`Stamps`] the 24 above them
/// hold the tag, more bits of the hash.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// Milliseconds from `origin` to `at`, rounded up, plus one: never 0, the
/// word of an empty entry.
fn millis(origin: Instant, at: Instant) -> u64 {
    let ms = at
        .saturating_duration_since(origin)
        .as_nanos()
        .div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).min(TIME_MASK - 1) + 1
}

/// The time of a non-empty word.
fn instant(origin: Instant, word: u64) -> Instant {
    origin + Duration::from_millis((word & TIME_MASK) - 1)
}

/// The latest time stamped on each hash, to the millisecond, rounded up.
///
/// A hash whose set is full replaces the one with the earliest time, so the
/// table forgets only when more hashes than a set holds are stamped in the
/// same span (and, rarely, when two threads race for one slot); two hashes
/// are confused only if they agree in the set's bits and the tag's 24.
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
        let word = tag << TIME_BITS | millis(self.origin, at);
        let mut earliest = &set[0];
        let mut earliest_word = u64::MAX;
        for slot in set {
            let seen = slot.load(Ordering::Relaxed);
            if seen != 0 && seen >> TIME_BITS == tag {
                // Its time moves on, never back, and only while the slot is
                // still this hash's (another thread may have written a later
                // time, or given the slot to another hash: the stamp is then
                // lost, as if the set had forgotten it).
                let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    (now >> TIME_BITS == tag && now < word).then_some(word)
                });
                return;
            }
            if seen & TIME_MASK < earliest_word & TIME_MASK {
                earliest = slot;
                earliest_word = seen;
            }
        }
        // Only if no other thread took the slot meanwhile.
        let _ =
            earliest.compare_exchange(earliest_word, word, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The latest time stamped on `hash`, if the table still holds it.
    pub(super) fn latest(&self, hash: u64) -> Option<Instant> {
        let (set, tag) = self.place(hash);
        set.iter().find_map(|slot| {
            let seen = slot.load(Ordering::Relaxed);
            (seen != 0 && seen >> TIME_BITS == tag).then(|| instant(self.origin, seen))
        })
    }

    /// The set of `hash` and its tag.
    fn place(&self, hash: u64) -> (&[AtomicU64], u64) {
        let set = usize::try_from(hash & ((1 << self.set_bits) - 1)).unwrap_or(0) * WAYS;
        let tag = (hash >> self.set_bits) & ((1 << (64 - TIME_BITS)) - 1);
        (&self.slots[set..set + WAYS], tag)
    }
}

/// Per bucket of hashes, the latest time stamped on any of them, to the
/// millisecond, rounded up: never earlier than any one hash's own, so a
/// time already past proves that no hash of the bucket holds a later one.
/// Nothing is ever forgotten; a bucket shared with a later time only
/// answers "perhaps", for a look-up elsewhere to settle.
#[derive(Debug)]
pub(super) struct Horizons {
    buckets: Box<[AtomicU64]>,
    bits: u32,
    origin: Instant,
}

impl Horizons {
    /// `2^bits` buckets, 8 bytes each.
    pub(super) fn new(bits: u32) -> Horizons {
        Horizons {
            buckets: (0..1usize << bits).map(|_| AtomicU64::new(0)).collect(),
            bits,
            origin: Instant::now(),
        }
    }

    /// Raises the time of `hash`'s bucket to `at`, if it is earlier.
    pub(super) fn raise(&self, hash: u64, at: Instant) {
        self.bucket(hash)
            .fetch_max(millis(self.origin, at), Ordering::Relaxed);
    }

    /// The latest time stamped on any hash of `hash`'s bucket, if any.
    pub(super) fn latest(&self, hash: u64) -> Option<Instant> {
        let word = self.bucket(hash).load(Ordering::Relaxed);
        (word != 0).then(|| instant(self.origin, word))
    }

    fn bucket(&self, hash: u64) -> &AtomicU64 {
        &self.buckets[usize::try_from(hash & ((1 << self.bits) - 1)).unwrap_or(0)]
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

    #[test]
    fn stamps_from_many_threads_keep_the_latest() {
        let stamps = Stamps::new(SET_BITS);
        let at = |ms| stamps.origin + Duration::from_millis(ms);
        std::thread::scope(|s| {
            for thread in 0..4u64 {
                let stamps = &stamps;
                s.spawn(move || {
                    for ms in 0..1_000 {
                        stamps.stamp(hash(1, 7), at(ms * 4 + thread));
                    }
                });
            }
        });
        assert_eq!(stamps.latest(hash(1, 7)), Some(at(3_999)));
    }

    #[test]
    fn a_horizon_is_the_latest_of_its_bucket_and_forgets_nothing() {
        let horizons = Horizons::new(SET_BITS);
        let at = |ms| horizons.origin + Duration::from_millis(ms);
        assert_eq!(horizons.latest(hash(2, 1)), None);
        horizons.raise(hash(2, 1), at(500));
        horizons.raise(hash(2, 2), at(300));
        // Any hash of the bucket sees the latest; other buckets see nothing.
        assert_eq!(horizons.latest(hash(2, 1)), Some(at(500)));
        assert_eq!(horizons.latest(hash(2, 9)), Some(at(500)));
        assert_eq!(horizons.latest(hash(3, 1)), None);
        // Rounded up: never earlier than the time raised.
        horizons.raise(hash(2, 3), at(900) + Duration::from_micros(1));
        assert_eq!(horizons.latest(hash(2, 1)), Some(at(901)));
        // Thousands of hashes in one bucket: it holds the latest of them.
        for tag in 0..5_000 {
            horizons.raise(hash(2, tag), at(1_000 + tag % 7));
        }
        assert_eq!(horizons.latest(hash(2, 1)), Some(at(1_006)));
    }
}

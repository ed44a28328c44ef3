//! The `List` index's keep times by key: an open-addressing hash map laid
//! out so that one lookup reads one cache line whose address the key alone
//! gives, which the look-ahead can therefore prefetch with the table's
//! slot.
//!
//! The standard `HashMap` reads a control group, then the entry it points
//! to: its entry's address is known only after the first load, so it
//! cannot be loaded ahead. Here a 64-byte bucket holds three keys and
//! their keep times; a key lives in its home bucket (picked by the
//! fingerprint's low bits) or, when that is full, in the first bucket
//! after it with room. Each bucket counts the entries that passed it full
//! on their way to a later one (`overflow`), so a lookup stops at the
//! first bucket whose count is zero and a removal needs no tombstone: it
//! decrements the counts along its probe path instead. The map holds at
//! most four fifths of its slots; it doubles beyond that.
//!
//! Keep times are stored in whole seconds, rounded up: a name is kept at
//! least as long as asked, at most a second longer.

use crate::table::LeaseKey;

/// Entries a bucket holds.
const SLOTS: usize = 3;
/// A free slot's key word. Never a key's: keys keep their two low bits
/// clear ([`LeaseKey::from_raw`]).
const FREE: u128 = 1;
/// Buckets of a new map.
const BUCKETS_MIN: usize = 8;

/// Three entries on one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Bucket {
    keys: [u128; SLOTS],
    /// Keep-until times in seconds (see [`to_seconds`]).
    keep: [u32; SLOTS],
    /// Entries whose probe path passed this bucket full.
    overflow: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

/// `ms` in whole seconds, rounded up (saturating: `u32::MAX` seconds is
/// 136 years of the monotonic clock, later than any keep time).
fn to_seconds(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1_000)).unwrap_or(u32::MAX)
}

fn to_ms(seconds: u32) -> u64 {
    u64::from(seconds) * 1_000
}

impl Bucket {
    const FREE: Bucket = Bucket {
        keys: [FREE; SLOTS],
        keep: [0; SLOTS],
        overflow: 0,
    };
}

/// Keep-until times by [`LeaseKey`]. Growing never stops the caller for
/// long: once the table is seven tenths full, the doubled table's buckets
/// are written a few at a time ([`KeepMap::tidy`]: with each insert, and
/// with the index's background pruning); at four fifths it takes over and
/// the old table's entries move into it a bucket at a time, while lookups
/// read both. (Allocating, writing and filling the doubled table in one go
/// took 1.5 ms at 80 000 names.)
pub(super) struct KeepMap {
    table: Table,
    /// The table being emptied into `table`, and its next bucket to move.
    old: Option<(Table, usize)>,
    /// The next table's buckets as far as written (no allocation until
    /// `table` is seven tenths full: twice its memory, held from then
    /// until the next table takes over).
    next: Vec<Bucket>,
}

/// Old buckets moved, and next buckets written, per step of tidying (one
/// step per insert, more with pruning). Taking over at four fifths of `B`
/// buckets, the new table (`2B`) holds `2.4B` entries; the old one is empty
/// after `B` more inserts at most (`3.4B` entries, 57 % of the new table's
/// slots), before the next table (`4B` buckets) is due to be written from
/// seven tenths (`4.2B`); that takes `0.4B` of the `0.6B` inserts to four
/// fifths.
const MOVE_PER_STEP: usize = 1;
const WRITE_PER_STEP: usize = 10;

impl std::fmt::Debug for KeepMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepMap")
            .field("len", &self.len())
            .field("buckets", &self.table.buckets.len())
            .field(
                "moving",
                &self.old.as_ref().map(|(old, at)| old.buckets.len() - at),
            )
            .finish()
    }
}

impl KeepMap {
    pub(super) fn new() -> KeepMap {
        KeepMap {
            table: Table::with_buckets(BUCKETS_MIN),
            old: None,
            next: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len + self.old.as_ref().map_or(0, |(old, _)| old.len)
    }

    /// Starts loading `key`'s home bucket: a hint for a lookup that
    /// follows shortly.
    pub(super) fn prefetch(&self, key: LeaseKey) {
        self.table.prefetch(key);
        if let Some((old, _)) = &self.old {
            old.prefetch(key);
        }
    }

    /// `key`'s keep time (whole seconds, in ms), if held.
    pub(super) fn get(&self, key: LeaseKey) -> Option<u64> {
        self.table
            .get(key)
            .or_else(|| self.old.as_ref().and_then(|(old, _)| old.get(key)))
    }

    /// Keeps `key` at least until `keep_until_ms` if the map holds it;
    /// returns whether it does.
    pub(super) fn raise(&mut self, key: LeaseKey, keep_until_ms: u64) -> bool {
        self.table.raise(key, keep_until_ms)
            || self
                .old
                .as_mut()
                .is_some_and(|(old, _)| old.raise(key, keep_until_ms))
    }

    pub(super) fn contains_key(&self, key: LeaseKey) -> bool {
        self.get(key).is_some()
    }

    /// Adds `key`, which the map must not hold.
    pub(super) fn insert_new(&mut self, key: LeaseKey, keep_until_ms: u64) {
        debug_assert!(!self.contains_key(key), "inserted twice");
        self.tidy(1);
        if (self.len() + 1) * 5 > self.table.buckets.len() * SLOTS * 4 {
            // A safety net: by the arithmetic at `MOVE_PER_STEP` the steps
            // have finished both by now.
            self.migrate(usize::MAX);
            self.write_next(usize::MAX);
            let bigger = Table::of(std::mem::take(&mut self.next));
            let old = std::mem::replace(&mut self.table, bigger);
            self.old = Some((old, 0));
        }
        self.table.place(key.hash(), to_seconds(keep_until_ms));
    }

    /// Removes `key`; returns its keep time if it was held.
    pub(super) fn remove(&mut self, key: LeaseKey) -> Option<u64> {
        self.table
            .remove(key)
            .or_else(|| self.old.as_mut().and_then(|(old, _)| old.remove(key)))
    }

    /// `steps` steps of growing: moves old buckets into the table, or
    /// writes the next table's buckets when the table is seven tenths
    /// full. Bounded work.
    pub(super) fn tidy(&mut self, steps: usize) {
        self.migrate(steps.saturating_mul(MOVE_PER_STEP));
        self.write_next(steps.saturating_mul(WRITE_PER_STEP));
    }

    /// Writes up to `buckets` more of the next table's buckets once the
    /// table is seven tenths full (and no old table is being emptied).
    fn write_next(&mut self, buckets: usize) {
        if self.old.is_some() {
            return;
        }
        let target = self.table.buckets.len() * 2;
        if self.next.capacity() == 0 {
            if self.len() * 10 <= self.table.buckets.len() * SLOTS * 7 {
                return;
            }
            // Small pages: a huge page's first touch zeroes 2 MiB (200 µs
            // here) and, with `defrag` at `madvise` (Debian's default),
            // compacts memory first when none is free: 10-15 ms on this VM,
            // on the request path. The lease table takes huge pages
            // because it is written once, at start.
            self.next = Vec::with_capacity(target);
        }
        let more = buckets.min(target - self.next.len());
        self.next.extend(std::iter::repeat_n(Bucket::FREE, more));
    }

    /// Moves up to `buckets` buckets of the table being emptied, if any.
    fn migrate(&mut self, buckets: usize) {
        let Some((old, at)) = &mut self.old else {
            return;
        };
        let end = old.buckets.len().min(at.saturating_add(buckets));
        for index in *at..end {
            let bucket = &mut old.buckets[index];
            for slot in 0..SLOTS {
                let word = bucket.keys[slot];
                if word != FREE {
                    bucket.keys[slot] = FREE;
                    old.len -= 1;
                    // Overflow counts stay: a count too high only makes a
                    // lookup in the old table look one bucket further.
                    self.table.place(word, bucket.keep[slot]);
                }
            }
        }
        *at = end;
        if end == old.buckets.len() {
            debug_assert_eq!(old.len, 0);
            self.old = None;
        }
    }

    /// Buckets, for tests.
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.table.buckets.len()
    }

    /// Whether an old table is still being emptied, for tests.
    #[cfg(test)]
    fn moving(&self) -> bool {
        self.old.is_some()
    }
}

/// One open-addressing table.
struct Table {
    buckets: Box<[Bucket]>,
    mask: usize,
    len: usize,
}

/// Where an entry was found: its bucket, its slot, and how many buckets
/// past its home that is.
struct Found {
    bucket: usize,
    slot: usize,
    distance: usize,
}

impl Table {
    /// `count` (a power of two) empty buckets.
    fn with_buckets(count: usize) -> Table {
        Table::of(vec![Bucket::FREE; count])
    }

    /// A table of `buckets` (a power of two of them, all free).
    fn of(buckets: Vec<Bucket>) -> Table {
        let count = buckets.len();
        assert!(count.is_power_of_two());
        debug_assert!(buckets
            .iter()
            .all(|b| b.keys == [FREE; SLOTS] && b.overflow == 0));
        Table {
            buckets: buckets.into_boxed_slice(),
            mask: count - 1,
            len: 0,
        }
    }

    fn home(&self, key: LeaseKey) -> usize {
        // The fingerprint is a keyed SipHash: its bits above the two kind
        // bits are uniform.
        (key.hash() >> 2) as usize & self.mask
    }

    fn prefetch(&self, key: LeaseKey) {
        palisade_host::memory::prefetch(&self.buckets[self.home(key)]);
    }

    fn find(&self, key: LeaseKey) -> Option<Found> {
        let word = key.hash();
        let mut index = self.home(key);
        for distance in 0..self.buckets.len() {
            let bucket = &self.buckets[index];
            if let Some(slot) = bucket.keys.iter().position(|&k| k == word) {
                return Some(Found {
                    bucket: index,
                    slot,
                    distance,
                });
            }
            if bucket.overflow == 0 {
                return None;
            }
            index = (index + 1) & self.mask;
        }
        None
    }

    fn get(&self, key: LeaseKey) -> Option<u64> {
        self.find(key)
            .map(|f| to_ms(self.buckets[f.bucket].keep[f.slot]))
    }

    fn raise(&mut self, key: LeaseKey, keep_until_ms: u64) -> bool {
        let Some(found) = self.find(key) else {
            return false;
        };
        let keep = &mut self.buckets[found.bucket].keep[found.slot];
        *keep = (*keep).max(to_seconds(keep_until_ms));
        true
    }

    /// Adds the key whose word is `word` with its keep time in seconds;
    /// the table must not hold it and must have a free slot.
    fn place(&mut self, word: u128, keep_seconds: u32) {
        debug_assert!(self.len < self.buckets.len() * SLOTS);
        let mut index = self.home(LeaseKey::from_raw(word));
        loop {
            let bucket = &mut self.buckets[index];
            if let Some(slot) = bucket.keys.iter().position(|&k| k == FREE) {
                bucket.keys[slot] = word;
                bucket.keep[slot] = keep_seconds;
                self.len += 1;
                return;
            }
            bucket.overflow += 1;
            index = (index + 1) & self.mask;
        }
    }

    fn remove(&mut self, key: LeaseKey) -> Option<u64> {
        let found = self.find(key)?;
        let bucket = &mut self.buckets[found.bucket];
        bucket.keys[found.slot] = FREE;
        let keep = to_ms(bucket.keep[found.slot]);
        let mut index = self.home(key);
        for _ in 0..found.distance {
            self.buckets[index].overflow -= 1;
            index = (index + 1) & self.mask;
        }
        self.len -= 1;
        Some(keep)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Keys whose home is bucket `home` of an 8-bucket map.
    fn key_at(home: u128, n: u128) -> LeaseKey {
        LeaseKey::from_raw(((n << 3 | home) << 2) | (n << 80))
    }

    #[test]
    fn it_agrees_with_a_hash_map_under_random_use() {
        let mut map = KeepMap::new();
        let mut model: HashMap<LeaseKey, u64> = HashMap::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200_000u64 {
            // Few distinct keys, many crowded into few homes: long probe
            // paths, removals in their middle, growth.
            let n = u128::from(next() % 3_000);
            let key = key_at(n % 3, n);
            match next() % 4 {
                0 | 1 => {
                    // Keep times that rise and fall, in whole seconds.
                    let keep = (round % 1_000) * 1_000;
                    if map.raise(key, keep) {
                        let held = model.get_mut(&key).expect("held");
                        *held = (*held).max(keep);
                    } else {
                        map.insert_new(key, keep);
                        model.insert(key, keep);
                    }
                }
                2 => assert_eq!(map.remove(key), model.remove(&key)),
                _ => assert_eq!(map.get(key), model.get(&key).copied()),
            }
            assert_eq!(map.len(), model.len());
        }
        for (&key, &keep) in &model {
            assert_eq!(map.get(key), Some(keep));
        }
        // Emptied, every overflow count is back to zero.
        for key in model.keys().copied().collect::<Vec<_>>() {
            assert!(map.remove(key).is_some());
        }
        assert_eq!(map.len(), 0);
        assert!(map.table.buckets.iter().all(|b| b.overflow == 0));
    }

    #[test]
    fn a_full_home_spills_into_the_next_bucket_and_back() {
        let mut map = KeepMap::new();
        // Four keys with one home: three fill it, the fourth goes next door.
        let keys: Vec<LeaseKey> = (0..4).map(|n| key_at(7, n)).collect();
        for (i, &key) in keys.iter().enumerate() {
            map.insert_new(key, i as u64 * 1_000);
        }
        assert_eq!(map.bucket_count(), 8, "no growth yet");
        assert_eq!(map.table.buckets[7].overflow, 1);
        // Wrapped around to bucket 0.
        assert!(map.table.buckets[0].keys.contains(&keys[3].hash()));
        assert_eq!(map.get(keys[3]), Some(3_000));
        // Removing a key of the home bucket leaves the spilled one found.
        assert_eq!(map.remove(keys[0]), Some(0));
        assert_eq!(map.get(keys[3]), Some(3_000));
        assert_eq!(map.table.buckets[7].overflow, 1);
        assert_eq!(map.remove(keys[3]), Some(3_000));
        assert_eq!(map.table.buckets[7].overflow, 0);
        assert_eq!(map.get(keys[3]), None);
        assert_eq!(map.remove(keys[3]), None);
    }

    #[test]
    fn it_grows_at_four_fifths_and_keeps_every_entry() {
        let mut map = KeepMap::new();
        let keep = |n: u128| u64::try_from(n).unwrap() * 1_000;
        for n in 0..17 {
            map.insert_new(key_at(n % 8, n), keep(n));
        }
        // 16 entries were under seven tenths of 24 slots when the 17th
        // tidied: nothing written ahead yet.
        assert_eq!(map.next.capacity(), 0);
        map.insert_new(key_at(17 % 8, 17), keep(17));
        map.insert_new(key_at(18 % 8, 18), keep(18));
        assert_eq!(map.next.len(), 16, "the next table is written ahead");
        assert_eq!(map.bucket_count(), 8, "19 of 24 slots");
        map.insert_new(key_at(19 % 8, 19), keep(19));
        assert_eq!(map.bucket_count(), 16);
        // The old buckets move one per insert; until then both are read.
        assert!(map.moving());
        for n in 0..=19u128 {
            map.prefetch(key_at(n % 8, n));
            assert_eq!(map.get(key_at(n % 8, n)), Some(keep(n)));
        }
        assert!(map.raise(key_at(0, 0), 90_000));
        assert_eq!(map.remove(key_at(7, 7)), Some(keep(7)));
        map.tidy(3);
        assert!(map.moving());
        map.tidy(5);
        assert!(!map.moving(), "3 + 5 buckets moved");
        assert_eq!(map.len(), 19);
        assert_eq!(map.get(key_at(0, 0)), Some(90_000));
        assert_eq!(map.get(key_at(7, 7)), None);
        for n in (0..=19u128).filter(|&n| n != 0 && n != 7) {
            assert_eq!(map.get(key_at(n % 8, n)), Some(keep(n)));
        }
    }

    #[test]
    fn keep_times_round_up_to_whole_seconds_and_only_rise() {
        let mut map = KeepMap::new();
        let key = key_at(1, 1);
        map.insert_new(key, 1);
        assert_eq!(map.get(key), Some(1_000));
        assert!(map.raise(key, 2_500));
        assert_eq!(map.get(key), Some(3_000));
        assert!(map.raise(key, 10));
        assert_eq!(map.get(key), Some(3_000), "never lowered");
        assert!(map.raise(key, u64::MAX));
        assert_eq!(map.get(key), Some(u64::from(u32::MAX) * 1_000));
        assert!(!map.raise(key_at(1, 2), 5), "not held");
    }
}

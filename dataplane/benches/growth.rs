//! The longest single note while a core's `List` index grows: what a
//! request that happens to arrive as the index doubles waits for.
//!
//! `cargo bench -p palisade-dataplane --bench growth`
//!
//! Notes 300 000 new names into a [`NameIndex`] and reports the longest
//! note and the name count it happened at, over five rounds (min and
//! median); then the same for a standard `HashMap` of keys to keep times
//! (what the index used before its keep map, with the same fingerprint
//! hasher), which rehashes everything in the insert that finds it full.
//! Wall-clock times of single operations: run it on a quiet machine, and
//! read the spread.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use palisade_dataplane::names::NameIndex;
use palisade_dataplane::table::{KeyHasher, LeaseKey};
use palisade_host::clock::monotonic_ns;

const NAMES: usize = 300_000;
const ROUNDS: usize = 5;

/// The hasher the old map used: the fingerprint's low bits.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value >> 2) as u64;
    }
}

/// The longest of `count` calls of `op` (ns) and the call it was.
fn longest(count: usize, mut op: impl FnMut(usize)) -> (u128, usize) {
    let mut worst = (0, 0);
    for i in 0..count {
        let start = monotonic_ns();
        op(i);
        let ns = u128::from(monotonic_ns() - start);
        if ns > worst.0 {
            worst = (ns, i + 1);
        }
    }
    worst
}

fn report(what: &str, mut rounds: Vec<(u128, usize)>) {
    rounds.sort_unstable();
    let us = |ns: u128| ns as f64 / 1_000.0;
    println!(
        "{what}: longest note min {:.0} µs, median {:.0} µs over {ROUNDS} rounds (at names {:?})",
        us(rounds[0].0),
        us(rounds[rounds.len() / 2].0),
        rounds.iter().map(|r| r.1).collect::<Vec<_>>()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours skips.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"growth".contains(a.as_str()))
    {
        return;
    }
    let hasher = KeyHasher::new([5; 16]);
    let names: Vec<String> = (0..NAMES).map(|i| format!("volumes/vm-{i:07}")).collect();
    let keys: Vec<LeaseKey> = names.iter().map(|n| hasher.key(0, n.as_bytes())).collect();
    let mut index_rounds = Vec::new();
    let mut map_rounds = Vec::new();
    for _ in 0..ROUNDS {
        let mut index = NameIndex::new(hasher.clone());
        index_rounds.push(longest(NAMES, |i| {
            index.note_keyed(0, &names[i], keys[i], 1_000);
        }));
        drop(index);
        let mut map: HashMap<LeaseKey, u64, BuildHasherDefault<Fingerprint>> = HashMap::default();
        map_rounds.push(longest(NAMES, |i| {
            map.insert(keys[i], 1_000);
        }));
    }
    report("NameIndex::note_keyed (keep map)", index_rounds);
    report("HashMap::insert (the former keep times)", map_rounds);
}

//! Criterion benchmarks of the per-core name index `List` reads: what the
//! request path pays for it.
//!
//! `cargo bench -p palisade-dataplane --bench names`
//!
//! - `NameIndex::note/known`: an acquire of a name the core has seen, in an
//!   index of 100 000 names (a map lookup).
//! - `NameIndex::contains/known`: the renewal path's check.
//! - `NameIndex::note/new+prune-step`: a name seen for the first time (an
//!   insert), plus one step of the background pruning that removes such
//!   names once their lease is gone.
//! - `NameIndex::note_keyed/cold-batch-of-32/{one-by-one,prefetched}`:
//!   batches of 32 notes of known names, keys given (as the server gives
//!   them), at random among 1 000 000, without and with the batch's
//!   entries prefetched first (what the server's look-ahead does). The
//!   index is larger than this VM's 32 MiB L3 so that a note misses the
//!   cache as it does in a server, whose network stack evicts a
//!   100 000-name index between two requests for one name (with the
//!   former `HashMap` a note took ~370 ns in a server's profile at 100 000
//!   arrivals/s, against ~35 ns in this bench with 100 000 names).
//!   `bench/results/keep-map/` has the figures.
//!
//! Measured with the former `HashMap` on the 2-CPU development VM while
//! other builds ran (load 3 to 4): note/known about 100 ns and
//! contains/known about 75 ns, each with
//! its 23 ns SipHash of the name (a `BTreeMap<String>` lookup instead cost
//! about 650 ns in an index of 100 000); note/new+prune-step about 900 ns.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_dataplane::names::NameIndex;
use palisade_dataplane::table::{KeyHasher, LeaseKey};

mod support;

const NAMES: usize = 100_000;
const NAMES_COLD: usize = 1_000_000;

fn index() -> (NameIndex, Vec<String>) {
    index_of(NAMES)
}

fn index_of(count: usize) -> (NameIndex, Vec<String>) {
    let names: Vec<String> = (0..count).map(|i| format!("volumes/vm-{i:07}")).collect();
    let mut index = NameIndex::new(KeyHasher::new([7; 16]));
    for name in &names {
        index.note(0, name, u64::MAX);
    }
    (index, names)
}

fn bench(c: &mut Criterion) {
    let (mut index, names) = index();
    let mut i = 0usize;
    c.bench_function("NameIndex::note/known", |b| {
        b.iter(|| {
            i = (i + 7_919) % NAMES;
            index.note(0, black_box(&names[i]), 1_000);
        });
    });
    c.bench_function("NameIndex::contains/known", |b| {
        b.iter(|| {
            i = (i + 7_919) % NAMES;
            black_box(index.contains(0, black_box(&names[i])))
        });
    });
    let mut n = 0u64;
    c.bench_function("NameIndex::note/new+prune-step", |b| {
        b.iter(|| {
            n += 1;
            let name = format!("fresh-{n}");
            index.note(0, black_box(&name), 0);
            // Pruning removes names whose key is not live: here, all of
            // the fresh ones, a few per call.
            index.prune(u64::MAX, 1, &mut |_, name: &str| {
                (!name.starts_with("fresh-")).then_some(palisade_dataplane::names::Live {
                    token: 1,
                    remaining_ms: 1,
                    waiters: false,
                })
            });
        });
    });
}

fn cold_batches(c: &mut Criterion) {
    let (mut index, names) = index_of(NAMES_COLD);
    let hasher = KeyHasher::new([7; 16]);
    let keys: Vec<LeaseKey> = names.iter().map(|n| hasher.key(0, n.as_bytes())).collect();
    // The walk laid out in its order: reading it is sequential and does
    // not itself miss the cache (a server has each request's key at hand).
    let walk: Vec<(LeaseKey, &str)> = support::random_walk(NAMES_COLD)
        .into_iter()
        .map(|i| (keys[i], names[i].as_str()))
        .collect();
    support::cold_batches(
        c,
        "NameIndex::note_keyed/cold-batch-of-32",
        &walk,
        |batch, prefetch| {
            if prefetch {
                for &(key, _) in batch {
                    index.prefetch(key);
                }
            }
            for &(key, name) in batch {
                index.note_keyed(0, black_box(name), key, 1_000);
            }
        },
    );
}

criterion_group!(benches, bench, cold_batches);
criterion_main!(benches);

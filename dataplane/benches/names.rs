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
//!
//! Measured on the 2-CPU development VM while other builds ran (load 3 to
//! 4): note/known about 100 ns and contains/known about 75 ns, each with
//! its 23 ns SipHash of the name (a `BTreeMap<String>` lookup instead cost
//! about 650 ns in an index of 100 000); note/new+prune-step about 900 ns.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_dataplane::names::NameIndex;
use palisade_dataplane::table::KeyHasher;

const NAMES: usize = 100_000;

fn index() -> (NameIndex, Vec<String>) {
    let names: Vec<String> = (0..NAMES).map(|i| format!("volumes/vm-{i:06}")).collect();
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

criterion_group!(benches, bench);
criterion_main!(benches);

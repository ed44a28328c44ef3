//! Criterion benchmarks of the lease table.
//!
//! `cargo bench -p palisade-dataplane --bench table`
//!
//! - `LeaseTable::acquire+release/1-thread`: one uncontended acquire and its
//!   release on one thread, over 1024 resources (target: < 60 ns).
//! - `.../1-thread-one-resource`: the same on one resource, whose slot stays
//!   in L1.
//! - `KeyHasher::key`: the per-request fingerprint, measured apart.
//! - `.../cold-batch-of-32/{one-by-one,prefetched}`: batches of 32 cycles
//!   on random resources in a table past the cache, without and with the
//!   slots prefetched first (what the server does for a batch it holds).
//! - `.../2-threads-distinct` and `.../2-threads-shared`: two threads at once,
//!   on their own resources or on one resource; time is per operation pair
//!   per thread.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade_dataplane::table::{AcquireMode, Acquired, Grant, KeyHasher, LeaseKey, LeaseTable};
use palisade_host::clock::monotonic_ns;

mod support;

const EPOCH: u32 = 1;
const NOW_MS: u64 = 1_000;

fn keys(table: &LeaseTable, prefix: &str, count: usize) -> Vec<LeaseKey> {
    (0..count)
        .map(|i| table.hasher().key(0, format!("{prefix}{i}").as_bytes()))
        .collect()
}

fn cycle(table: &LeaseTable, key: LeaseKey, holder: u64) -> bool {
    let grant = Grant {
        holder,
        ttl_ms: 10_000,
        lock_delay_ms: 0,
    };
    match table.acquire(key, grant, NOW_MS, EPOCH, AcquireMode::Fair) {
        Ok(Acquired::Granted { token, .. }) => {
            black_box(table.release(key, token, NOW_MS));
            true
        }
        Ok(Acquired::Busy { .. }) => false,
        Err(e) => panic!("{e}"),
    }
}

fn single_thread(c: &mut Criterion) {
    let table = LeaseTable::new(65_536, KeyHasher::new([1; 16]));
    let keys = keys(&table, "disk", 1024);
    let mut group = c.benchmark_group("LeaseTable::acquire+release");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("1-thread", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            assert!(cycle(&table, keys[i], 1));
        });
    });
    // One resource over and over: its slot stays in L1, so this is the cost
    // of the transitions themselves without the memory latency of reaching
    // a slot.
    group.bench_function("1-thread-one-resource", |b| {
        b.iter(|| assert!(cycle(&table, keys[0], 1)));
    });
    group.finish();

    let hasher = KeyHasher::new([1; 16]);
    let mut group = c.benchmark_group("KeyHasher::key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("16-byte name", |b| {
        b.iter(|| black_box(hasher.key(0, black_box(b"volumes/disk-0042"))));
    });
    group.finish();
}

/// Batches of 32 acquire+release cycles on random resources among 100 000
/// in a table for 262 144 keys (524 288 slots, 32 MiB: as large as the L3
/// of the development VM, and shared with everything else, as in the benchmark
/// harness's uncontended workload), served one after another, or with every
/// key's slot prefetched first (what the server does for a batch of frames
/// it has whole, `LeaseTable::prefetch`). Time is per cycle.
fn cold_batches(c: &mut Criterion) {
    const RESOURCES: usize = 100_000;
    let table = LeaseTable::new(262_144, KeyHasher::new([3; 16]));
    let keys = keys(&table, "volumes/vm-", RESOURCES);
    // Insert every key once so that both variants find, not insert.
    for key in &keys {
        cycle(&table, *key, 1);
    }
    support::cold_batches(
        c,
        "LeaseTable::acquire+release/cold-batch-of-32",
        &support::random_walk(RESOURCES),
        |batch, prefetch| {
            if prefetch {
                for &i in batch {
                    table.prefetch(keys[i]);
                }
            }
            for &i in batch {
                black_box(cycle(&table, keys[i], 1));
            }
        },
    );
}

fn two_threads(c: &mut Criterion, name: &str, shared: bool) {
    let table = Arc::new(LeaseTable::new(65_536, KeyHasher::new([2; 16])));
    let per_thread: Vec<Vec<LeaseKey>> = if shared {
        let one = keys(&table, "hot", 1);
        vec![one.clone(), one]
    } else {
        vec![keys(&table, "a", 1024), keys(&table, "b", 1024)]
    };
    let mut group = c.benchmark_group("LeaseTable::acquire+release");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = per_thread
                .iter()
                .cloned()
                .enumerate()
                .map(|(t, keys)| {
                    let table = table.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        let start = monotonic_ns();
                        let mut granted = 0u64;
                        for n in 0..iters as usize {
                            if cycle(&table, keys[n % keys.len()], t as u64 + 1) {
                                granted += 1;
                            }
                        }
                        black_box(granted);
                        Duration::from_nanos(monotonic_ns() - start)
                    })
                })
                .collect();
            let elapsed: Vec<Duration> = handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect();
            elapsed.into_iter().max().unwrap_or_default()
        });
    });
    group.finish();
}

fn multi_thread(c: &mut Criterion) {
    two_threads(c, "2-threads-distinct", false);
    two_threads(c, "2-threads-shared", true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = single_thread, cold_batches, multi_thread
}
criterion_main!(benches);

//! Criterion benchmarks of the replicated lease state's snapshot encoding:
//! what a compaction (encode, on the `palisade-compact` thread of the
//! leader and every follower) and a snapshot install (decode, on a
//! follower's control thread) cost for a full default table.
//!
//! `cargo bench -p palisade-dataplane --bench replica`
//!
//! - `LeaseState::encode/65536 short`: 65 536 leases named like
//!   `volumes/vm-000042` (the default `table_capacity`, full): 4.1 MB.
//! - `LeaseState::encode/65536 longest`: the same count with 64-byte
//!   tenants and 256-byte resources: 23.3 MB, the most a default table
//!   can hold.
//! - `LeaseState::decode/...`: the same states read back.
//! - `LeaseState::apply 1000 grants/65536 short`: what applying committed
//!   grants costs the control thread, 1 000 at a time, spread over the
//!   short-named state.
//!
//! Measured on the 2-CPU development VM, four alternating runs
//! (`bench/results/compaction-off-thread/replica-before-after*.txt`, median
//! estimates, min–max over the runs): with the state in `imbl::OrdMap`
//! (since the compaction moved off the control thread) encode 3.3–4.1 ms
//! short / 18.4–20.6 ms longest, decode 20.2–20.9 / 27.2–35.4 ms, 1 000
//! grants 189–197 µs; with the former `BTreeMap` encode 1.8–2.8 /
//! 16.7–20.8 ms, decode 27.7–33.0 / 44.8–55.6 ms, 1 000 grants 154–160 µs.
//! At the replicated table cap (1 500 000 leases) a decode scales to about
//! 0.5 / 0.7 s on the installing follower's control thread.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_dataplane::replica::{Command, LeaseName, LeaseState};

const LEASES: usize = 65_536;

fn state(name: impl Fn(usize) -> LeaseName) -> LeaseState {
    let mut state = LeaseState::new();
    for i in 0..LEASES {
        state.apply(
            &Command::Grant {
                name: name(i),
                token: 1 << 32 | i as u64,
                holder: i as u64,
                ttl_ms: 30_000,
                lock_delay_ms: 0,
            },
            1,
        );
    }
    state
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("LeaseState");
    group.sample_size(10);
    let short = state(|i| LeaseName::new("default", format!("volumes/vm-{i:06}")));
    let longest = state(|i| LeaseName::new("t".repeat(64), format!("{i:0>256}")));
    for (label, state) in [("65536 short", &short), ("65536 longest", &longest)] {
        group.bench_function(format!("encode/{label}"), |b| {
            b.iter(|| black_box(state.encode(0)));
        });
        let bytes = state.encode(0);
        group.bench_function(format!("decode/{label}"), |b| {
            b.iter(|| black_box(LeaseState::decode(black_box(&bytes)).expect("decodes")));
        });
    }
    // What the control thread pays per committed grant: 1 000 grants to
    // held names spread over the state (a newer token each time).
    let mut state = short.clone();
    let names: Vec<LeaseName> = (0..1_000u64)
        .map(|i| {
            LeaseName::new(
                "default",
                format!("volumes/vm-{:06}", (i * 104_729) % LEASES as u64),
            )
        })
        .collect();
    let mut generation = 1u64;
    group.bench_function("apply 1000 grants/65536 short", |b| {
        b.iter(|| {
            generation += 1;
            for (i, name) in names.iter().enumerate() {
                state.apply(
                    &Command::Grant {
                        name: name.clone(),
                        token: generation << 32 | i as u64,
                        holder: 7,
                        ttl_ms: 30_000,
                        lock_delay_ms: 0,
                    },
                    1,
                );
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

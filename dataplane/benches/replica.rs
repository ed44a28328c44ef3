//! Criterion benchmarks of the replicated lease state's snapshot encoding:
//! what a compaction (encode, on the leader's and every follower's control
//! thread) and a snapshot install (decode, on a follower's) cost for a full
//! default table.
//!
//! `cargo bench -p palisade-dataplane --bench replica`
//!
//! - `LeaseState::encode/65536 short`: 65 536 leases named like
//!   `volumes/vm-000042` (the default `table_capacity`, full): 4.1 MB.
//! - `LeaseState::encode/65536 longest`: the same count with 64-byte
//!   tenants and 256-byte resources: 23.3 MB, the most a default table
//!   can hold.
//! - `LeaseState::decode/...`: the same states read back.
//!
//! Measured on the 2-CPU development VM, quiet (median of 10 samples):
//! encode 2.2 ms short / 18.3 ms longest, decode 28.8 ms short / 50.8 ms
//! longest (a B-tree insert and two `String`s a lease). At the replicated
//! table cap (1 500 000 leases) that scales to about 50 / 420 ms and
//! 660 ms / 1.2 s on the control thread.

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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

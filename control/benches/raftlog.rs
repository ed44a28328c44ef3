//! Criterion benchmark of what one durable batch of the raft log costs:
//! queue one entry of 256 bytes (a group-committed entry of a few grants),
//! write it and fdatasync it, with space reserved ahead
//! (`RaftLog::preallocate`, as the node runs) and without (each batch
//! extends the file).
//!
//! `cargo bench -p palisade-control --bench raftlog`
//!
//! The files live in `$PALISADE_BENCH_DIR` (default: the system temporary
//! directory): put it on the disk the data directory will use, since a
//! tmpfs makes fdatasync free.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_control::raftlog::RaftLog;
use support::entry;

fn bench(c: &mut Criterion) {
    let base = std::env::var_os("PALISADE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let mut group = c.benchmark_group("RaftLog::sync");
    group.measurement_time(Duration::from_secs(10));
    for (name, reserve) in [("append", 0u64), ("preallocated", 4 << 20)] {
        let dir = tempfile::tempdir_in(&base).expect("temporary directory");
        let (mut log, _) = RaftLog::open(dir.path(), "bench", 1, false).expect("open");
        if reserve > 0 {
            log.preallocate(reserve).expect("reserve");
        }
        let mut index = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                index += 1;
                log.append(&[entry(index)]);
                log.sync().expect("sync");
                black_box(&log);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

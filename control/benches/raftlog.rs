//! Criterion benchmark of what one durable batch of the raft log costs:
//! queue one entry of 256 bytes (a group-committed entry of a few grants),
//! write it and fdatasync it: with space reserved ahead as written zeros
//! (`zeroed`: `RaftLog::preallocate`, as the node runs), reserved with
//! `fallocate` alone (`unwritten`: `RaftLog::preallocate_unwritten`, how
//! the node reserved it before) and not at all (`append`: each batch
//! extends the file). The three run one after another: repeat the run and
//! compare the ratios within each run, since the disk drifts between runs.
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
use palisade_host::clock;
use support::entry;

/// Ways to reserve space ahead of the log's end.
#[derive(Clone, Copy)]
enum Reserve {
    Append,
    Unwritten,
    Zeroed,
}

fn open_log(base: &std::path::Path, reserve: Reserve) -> (tempfile::TempDir, RaftLog) {
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let (mut log, _) = RaftLog::open(dir.path(), "bench", 1, false).expect("open");
    match reserve {
        Reserve::Append => {}
        Reserve::Unwritten => log.preallocate_unwritten(4 << 20).expect("reserve"),
        Reserve::Zeroed => log.preallocate(4 << 20).expect("reserve"),
    }
    (dir, log)
}

fn bench(c: &mut Criterion) {
    let base = std::env::var_os("PALISADE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let mut group = c.benchmark_group("RaftLog::sync");
    group.measurement_time(Duration::from_secs(10));
    let mut logs: Vec<(&str, Reserve, (tempfile::TempDir, RaftLog), u64)> = [
        ("append", Reserve::Append),
        ("unwritten", Reserve::Unwritten),
        ("zeroed", Reserve::Zeroed),
    ]
    .into_iter()
    .map(|(name, reserve)| (name, reserve, open_log(&base, reserve), 0))
    .collect();
    for (name, reserve, (dir, log), index) in &mut logs {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut spent_ns = 0;
                for _ in 0..iters {
                    // A fresh log (not timed) whenever the reserve would
                    // run out, so that every batch of `zeroed` lands on
                    // zeros and every batch of `unwritten` on fallocated
                    // space.
                    if log.file_len() > 3 << 20 {
                        let (fresh_dir, fresh) = open_log(&base, *reserve);
                        *dir = fresh_dir;
                        *log = fresh;
                    }
                    *index += 1;
                    let began_ns = clock::monotonic_ns();
                    log.append(&[entry(*index)]);
                    log.sync().expect("sync");
                    spent_ns += clock::monotonic_ns() - began_ns;
                    black_box(&log);
                }
                Duration::from_nanos(spent_ns)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

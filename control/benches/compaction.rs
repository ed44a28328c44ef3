//! How long a raft-log compaction holds the control thread (every grant,
//! heartbeat and vote waits for it), the way the node did it before, all on
//! that thread, against the way it does now: a clone of the lease state that
//! shares its nodes, encoded and written on another thread, then the new
//! file put in place on the control thread.
//!
//! `cargo bench -p palisade-control --bench compaction [-- ROUNDS]`
//!
//! For each state (65 536 leases with short names, the full default table;
//! with the longest names; 1 500 000 with short names, the replicated
//! table's cap) and each round it reports, in ms:
//!
//! - `one thread`: encode + rewrite (new file, fsync, rename, directory
//!   fsync), as `RaftLog::compact` after `ControlCore::compaction`;
//! - `split, begin` and `split, finish`: what the control thread still does
//!   in one go: the clone and `begin_compaction`; `finish_compaction` with
//!   the batches synced while the other thread worked (one small batch a
//!   millisecond here, as a busy leader syncs; `syncs meanwhile` counts
//!   them — the control thread's ordinary work, not part of the pause);
//! - `split, elapsed`: from the start until the new file is in place;
//! - `apply 1000, shared` / `alone`: 1 000 grants to held names spread
//!   over the state, applied while a clone is held (each first change of a
//!   tree node copies it) and without one.
//!
//! Min and median over the rounds (default 5). The files live in
//! `$PALISADE_BENCH_DIR` (default: the system temporary directory): put it
//! on the disk the data directory will use.

mod support;

use std::path::Path;
use std::time::Duration;

use palisade_control::raftlog::RaftLog;
use palisade_dataplane::replica::{LeaseState, GROUP_DEFAULT};
use palisade_host::clock::monotonic_ns;
use raft::eraftpb::{HardState, Snapshot};
use support::{entry, grant, longest, min_median, ms, rounds, short, state, Namer};

fn snapshot(state: &LeaseState, index: u64) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = 1;
    snapshot.set_data(state.encode(GROUP_DEFAULT).into());
    snapshot
}

/// A log with a few batches in it, as a compaction finds it.
fn log(dir: &Path) -> RaftLog {
    let (mut log, _) = RaftLog::open(dir, "bench", 1, false).expect("open");
    log.preallocate(4 << 20).expect("reserve");
    for index in 1..=100 {
        log.append(&[entry(index)]);
        log.sync().expect("sync");
    }
    log
}

struct Round {
    one_thread: f64,
    begin: f64,
    finish: f64,
    elapsed: f64,
    syncs: u64,
    apply_shared: f64,
    apply_alone: f64,
}

fn round(
    base: &Path,
    state: &mut LeaseState,
    leases: u64,
    generation: &mut u64,
    name: &Namer,
) -> Round {
    let hard_state = HardState {
        term: 1,
        vote: 1,
        commit: 100,
        ..Default::default()
    };
    // Before: everything on the control thread.
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let mut one = log(dir.path());
    let begun = monotonic_ns();
    let snap = snapshot(state, 100);
    one.compact(&snap, &hard_state, &[]).expect("compact");
    let one_thread = ms(begun);
    drop((one, snap, dir));

    // Now: the control thread clones and begins, syncs a batch a
    // millisecond while the other thread works, and finishes.
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let mut split = log(dir.path());
    let begun = monotonic_ns();
    let frozen = state.clone();
    let writer = split.begin_compaction();
    let begin = ms(begun);
    let hard = hard_state.clone();
    let worker = std::thread::spawn(move || {
        let snap = snapshot(&frozen, 100);
        let written = writer.write(&snap, &hard, &[]).expect("write");
        drop(frozen);
        written
    });
    let mut index = 100;
    let mut syncs = 0;
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
        index += 1;
        split.append(&[entry(index)]);
        split.sync().expect("sync");
        syncs += 1;
    }
    let written = worker.join().expect("worker");
    let at = monotonic_ns();
    split.finish_compaction(written).expect("finish");
    let finish = ms(at);
    let elapsed = ms(begun);
    drop((split, dir));

    // The price of sharing: changes while a clone is held copy nodes.
    let spread = |i: u64| (i * 104_729) % leases;
    *generation += 1;
    let token = |i: u64| *generation << 32 | i;
    let held = state.clone();
    let at = monotonic_ns();
    for i in 0..1_000u64 {
        state.apply(&grant(name(spread(i)), token(i)), 1);
    }
    let apply_shared = ms(at);
    drop(held);
    let at = monotonic_ns();
    for i in 1_000..2_000u64 {
        state.apply(&grant(name(spread(i)), token(i)), 1);
    }
    let apply_alone = ms(at);
    Round {
        one_thread,
        begin,
        finish,
        elapsed,
        syncs,
        apply_shared,
        apply_alone,
    }
}

fn main() {
    let rounds = rounds();
    let base = std::env::var_os("PALISADE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let states: [(&str, u64, &Namer); 3] = [
        ("65536 short", 65_536, &short),
        ("65536 longest", 65_536, &longest),
        ("1500000 short", 1_500_000, &short),
    ];
    println!("compaction, ms: min / median of {rounds} rounds");
    for (label, leases, name) in states {
        let mut state = state(leases, name);
        let bytes = state.encode(GROUP_DEFAULT).len();
        let mut generation = 1;
        let results: Vec<Round> = (0..rounds)
            .map(|_| round(Path::new(&base), &mut state, leases, &mut generation, name))
            .collect();
        let show = |what: &str, pick: &dyn Fn(&Round) -> f64| {
            let (min, median) = min_median(results.iter().map(pick).collect());
            println!("  {label:<14} {what:<18} {min:>9.2} / {median:>9.2}");
        };
        println!(
            "{label}: {leases} leases, snapshot {:.1} MB",
            bytes as f64 / 1e6
        );
        show("one thread", &|r| r.one_thread);
        show("split, begin", &|r| r.begin);
        show("split, finish", &|r| r.finish);
        show("split, elapsed", &|r| r.elapsed);
        show("syncs meanwhile", &|r| r.syncs as f64);
        show("apply 1000, shared", &|r| r.apply_shared);
        show("apply 1000, alone", &|r| r.apply_alone);
    }
}

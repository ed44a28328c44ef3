//! Raft log replay: `palisade_control::raftlog::RaftLog::open` on a
//! `raft.log` of arbitrary bytes in a scratch directory (on tmpfs).
//!
//! Input: one mode byte, then either the file's bytes as they are (bit 0
//! clear), or (bit 0 set) records framed by the harness with correct
//! lengths and checksums, so that replay's semantics are reached and not
//! only its checksum test: a list of (kind byte, u16-length-prefixed
//! payload), optionally preceded by a valid version 2 header for this node
//! (bit 1) and followed by raw trailing bytes (bit 2: a torn tail).
//!
//! Asserts (control/src/raftlog.rs module docs, S4):
//! - no panic on any file (the release build's overflow checks are on in
//!   fuzz builds, so an arithmetic overflow counts too);
//! - a refused file (`Err`) is left byte for byte as it was: a node that
//!   refuses to start must not destroy the evidence;
//! - a recovered log is consistent: entries in index order without gaps,
//!   starting right after the snapshot (or at 1), hard state's commit and
//!   term not behind the snapshot;
//! - recovery is stable: opening the repaired file again (torn tail cut,
//!   version 1 rewritten as version 2) recovers the same state with
//!   nothing torn; and the log accepts a new batch afterwards, after which
//!   a third open still recovers the same state (the batch numbering
//!   continues where the file left it).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_control::raftlog::{RaftLog, Recovered};
use palisade_fuzz::Input;

const CLUSTER: &str = "fuzz";
const NODE: u16 = 1;
const MAGIC_V2: &[u8] = b"palisade-raft-v2";

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| palisade_fuzz::scratch_dir("raftlog"))
}

fn record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

fn build(input: &mut Input) -> Vec<u8> {
    let mode = input.byte();
    if mode & 1 == 0 {
        return input.rest().to_vec();
    }
    let mut out = Vec::new();
    if mode & 2 != 0 {
        let mut header = MAGIC_V2.to_vec();
        header.extend_from_slice(&NODE.to_le_bytes());
        header.extend_from_slice(CLUSTER.as_bytes());
        record(&mut out, 0, &header);
    }
    let records = input.byte();
    for _ in 0..records {
        if input.is_empty() {
            break;
        }
        let kind = input.byte();
        let payload = input.blob();
        record(&mut out, kind, payload);
    }
    if mode & 4 != 0 {
        out.extend_from_slice(input.rest());
    }
    out
}

fn check_consistent(recovered: &Recovered) {
    let snapshot = recovered.snapshot.as_ref().map(|s| s.get_metadata());
    let first = snapshot.map_or(1, |m| m.index.wrapping_add(1));
    if let Some(entry) = recovered.entries.first() {
        assert_eq!(
            entry.index, first,
            "entries do not start right after the snapshot"
        );
    }
    for pair in recovered.entries.windows(2) {
        assert_eq!(
            pair[1].index,
            pair[0].index.wrapping_add(1),
            "a gap or disorder in the entries"
        );
    }
    if let Some(meta) = snapshot {
        assert!(
            recovered.hard_state.commit >= meta.index,
            "commit behind the snapshot"
        );
        assert!(
            recovered.hard_state.term >= meta.term,
            "term behind the snapshot"
        );
    }
}

fn same_state(a: &Recovered, b: &Recovered) -> bool {
    a.hard_state == b.hard_state
        && a.conf_state == b.conf_state
        && a.snapshot == b.snapshot
        && a.entries == b.entries
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let bytes = build(&mut input);
    let dir = dir();
    let path = dir.join("raft.log");
    let _ = std::fs::remove_file(dir.join("raft.log.tmp"));
    std::fs::write(&path, &bytes).expect("write raft.log");

    let (log, first) = match RaftLog::open(dir, CLUSTER, NODE, false) {
        Ok(opened) => opened,
        Err(_) => {
            let after = std::fs::read(&path).expect("raft.log still readable");
            assert!(
                after == bytes,
                "a refused log was changed ({} -> {} bytes)",
                bytes.len(),
                after.len()
            );
            return;
        }
    };
    assert!(first.existed);
    assert!(first.torn_bytes as usize <= bytes.len());
    check_consistent(&first);
    drop(log);

    let (mut log, second) =
        RaftLog::open(dir, CLUSTER, NODE, false).expect("a recovered log opens again");
    assert_eq!(
        second.torn_bytes, 0,
        "the repaired log still has a torn tail"
    );
    assert!(
        same_state(&first, &second),
        "reopening changed the recovered state"
    );

    log.set_hard_state(&second.hard_state);
    log.sync().expect("sync on tmpfs");
    drop(log);
    let (_log, third) =
        RaftLog::open(dir, CLUSTER, NODE, false).expect("the log opens after an append");
    assert_eq!(third.torn_bytes, 0);
    assert!(
        same_state(&second, &third),
        "a batch appended after recovery changed the state"
    );
});

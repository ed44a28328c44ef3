use super::*;
use palisade_dataplane::metrics::LATENCY_BOUNDS_NS;
use std::fs;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 3].into(),
        ..Default::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

#[test]
fn indexes_at_the_top_of_the_range_are_damage_not_a_panic() {
    // Found by the raftlog fuzz target: a snapshot at u64::MAX followed
    // by an entry overflowed while replaying.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
        log.apply_snapshot(&snapshot(u64::MAX, 2));
        log.append(&[entry(5, 2)]);
        log.sync().expect("sync");
    }
    assert!(RaftLog::open(dir.path(), "c", 1, false).is_err());
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().set_conf_state(conf(&[1, 2, 3]));
    snapshot
}

type State = (HardState, ConfState, Option<u64>, Vec<(u64, u64)>);

/// What a recovery yields for raft: hard state, membership, snapshot
/// index, and entries as (index, term).
fn state(recovered: &Recovered) -> State {
    (
        recovered.hard_state.clone(),
        recovered.conf_state.clone(),
        recovered.snapshot.as_ref().map(|s| s.get_metadata().index),
        recovered
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect(),
    )
}

/// Opens a log file holding `bytes`.
fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Recovered, LogError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(LOG_FILE), bytes).expect("write");
    let recovered = RaftLog::open(dir.path(), "c", 1, false).map(|(_, r)| r);
    (dir, recovered)
}

/// Where each record of a whole file ends: the header, then each batch.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        at = read_record(bytes, at).expect("a whole record").end;
        ends.push(at);
    }
    ends
}

/// Writes a known history of four syncs, each a batch of several
/// items, and returns the file's bytes.
fn history(dir: &Path) -> Vec<u8> {
    let (mut log, recovered) = RaftLog::open(dir, "c", 1, false).expect("open");
    assert!(!recovered.existed);
    log.set_conf_state(&conf(&[1, 2, 3]));
    log.set_hard_state(&hard_state(1, 1, 0));
    log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
    log.sync().expect("sync");
    log.set_hard_state(&hard_state(2, 2, 2));
    log.append(&[entry(3, 2), entry(4, 2)]);
    log.sync().expect("sync");
    // A snapshot from the leader of term 3, as raft-rs hands it over:
    // with the hard state that commits it.
    log.apply_snapshot(&snapshot(4, 2));
    log.set_hard_state(&hard_state(3, 0, 4));
    log.sync().expect("sync");
    log.append(&[entry(5, 3)]);
    log.set_hard_state(&hard_state(3, 0, 5));
    log.sync().expect("sync");
    fs::read(dir.join(LOG_FILE)).expect("read")
}

/// The state after each whole prefix of the history: (end, state).
fn history_states(full: &[u8]) -> Vec<(usize, State)> {
    let mut states = vec![(0, state(&Recovered::default()))];
    for end in record_ends(full) {
        let (_dir, recovered) = open_bytes(&full[..end]);
        let recovered = recovered.expect("a whole prefix opens");
        assert_eq!(recovered.torn_bytes, 0);
        states.push((end, state(&recovered)));
    }
    states
}

#[test]
fn replay_applies_raft_append_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = history(dir.path());
    let states: Vec<State> = history_states(&full).into_iter().map(|s| s.1).collect();
    let voters = conf(&[1, 2, 3]);
    let fresh = state(&Recovered::default());
    assert_eq!(states.len(), 6, "nothing, header, four batches");
    assert_eq!(states[1], fresh, "a header alone");
    assert_eq!(
        states[2],
        (
            hard_state(1, 1, 0),
            voters.clone(),
            None,
            vec![(1, 1), (2, 1), (3, 1)]
        )
    );
    assert_eq!(
        states[3],
        (
            hard_state(2, 2, 2),
            voters.clone(),
            None,
            vec![(1, 1), (2, 1), (3, 2), (4, 2)]
        )
    );
    assert_eq!(
        states[4],
        (hard_state(3, 0, 4), voters.clone(), Some(4), vec![])
    );
    assert_eq!(
        states[5],
        (hard_state(3, 0, 5), voters, Some(4), vec![(5, 3)])
    );
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert!(recovered.existed);
    assert_eq!(recovered.torn_bytes, 0);
    assert_eq!(state(&recovered), states[5]);
}

#[test]
fn every_truncation_recovers_whole_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = history(dir.path());
    let states = history_states(&full);
    let header_end = states[1].0;
    for cut in 0..=full.len() {
        // A cut inside a batch drops that batch whole, never part of it.
        let (good_end, expected) = states
            .iter()
            .rev()
            .find(|(end, _)| *end <= cut)
            .expect("0 is a boundary");
        let (case, recovered) = open_bytes(&full[..cut]);
        let recovered = recovered.unwrap_or_else(|e| panic!("cut at {cut} refused: {e}"));
        assert_eq!(&state(&recovered), expected, "cut at {cut}");
        assert_eq!(recovered.torn_bytes, (cut - good_end) as u64, "cut {cut}");
        let repaired = fs::read(case.path().join(LOG_FILE)).expect("read");
        assert_eq!(repaired, full[..(*good_end).max(header_end)], "cut {cut}");
        let reopened = RaftLog::open(case.path(), "c", 1, false)
            .expect("reopen after repair")
            .1;
        assert_eq!(reopened.torn_bytes, 0, "the tail was cut at {cut}");
        assert_eq!(state(&reopened), state(&recovered), "cut {cut}");
    }
}

#[test]
fn damage_anywhere_in_the_last_batch_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = history(dir.path());
    let states = history_states(&full);
    let (start, before) = states[states.len() - 2].clone();
    let torn = (full.len() - start) as u64;
    let check = |bytes: &[u8], what: &str| {
        let (_dir, recovered) = open_bytes(bytes);
        let recovered = recovered.unwrap_or_else(|e| panic!("{what} refused: {e}"));
        assert_eq!(state(&recovered), before, "{what}");
        assert_eq!(recovered.torn_bytes, torn, "{what}");
    };
    for at in start..full.len() {
        let mut bytes = full.clone();
        bytes[at] ^= 0x5a;
        check(&bytes, &format!("byte {at} flipped"));
        // The pages holding the batch's start never reached the disk,
        // a later one did: its header reads as zeros.
        let mut bytes = full.clone();
        bytes[start..=at].fill(0);
        check(&bytes, &format!("zeros up to byte {at}"));
        let mut bytes = full.clone();
        bytes[at..].fill(0);
        check(&bytes, &format!("zeros from byte {at}"));
    }
    // After the cut, the log goes on where the torn batch was.
    let mut bytes = full.clone();
    bytes[start..start + 20].fill(0);
    let (case, recovered) = open_bytes(&bytes);
    assert_eq!(recovered.expect("cut").torn_bytes, torn);
    let (mut log, _) = RaftLog::open(case.path(), "c", 1, false).expect("reopen");
    log.append(&[entry(5, 4)]);
    log.set_hard_state(&hard_state(4, 1, 4));
    log.sync().expect("sync");
    let (_, after) = RaftLog::open(case.path(), "c", 1, false).expect("reopen");
    assert_eq!(after.torn_bytes, 0);
    assert_eq!(after.hard_state, hard_state(4, 1, 4));
    assert_eq!(state(&after).3, [(5, 4)]);
}

#[test]
fn damage_before_the_last_batch_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = history(dir.path());
    let ends = record_ends(&full);
    let last_start = ends[ends.len() - 2];
    let refused = |bytes: &[u8], what: &str| {
        let (_dir, recovered) = open_bytes(bytes);
        match recovered {
            Err(LogError::Corrupt { .. }) => {}
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what} was accepted"),
        }
    };
    for at in 0..last_start {
        let mut bytes = full.clone();
        bytes[at] ^= 0x5a;
        refused(&bytes, &format!("byte {at} flipped"));
    }
    // A synced batch zeroed from its start, a later batch whole.
    for batch in ends.windows(2).take(ends.len() - 2) {
        for at in batch[0]..batch[1] {
            let mut bytes = full.clone();
            bytes[batch[0]..=at].fill(0);
            refused(&bytes, &format!("zeros over {}..={at}", batch[0]));
        }
    }
    // Damage in the first batch stays damage when the last is torn too.
    let mut bytes = full[..full.len() - 3].to_vec();
    bytes[ends[0] + HEADER_LEN + 1] ^= 0x40;
    refused(&bytes, "first batch flipped, last torn");
}

#[test]
fn a_snapshot_discards_every_entry_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.set_conf_state(&conf(&[1, 2, 3]));
    log.set_hard_state(&hard_state(1, 1, 0));
    log.append(&[
        entry(1, 1),
        entry(2, 1),
        entry(3, 1),
        entry(4, 1),
        entry(5, 1),
    ]);
    log.sync().expect("sync");
    // The leader of term 2 sent a snapshot at 3: entries 4 and 5 of
    // term 1 are from a history it abandoned.
    log.apply_snapshot(&snapshot(3, 2));
    log.set_hard_state(&hard_state(2, 0, 3));
    log.sync().expect("sync");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(
        state(&recovered),
        (hard_state(2, 0, 3), conf(&[1, 2, 3]), Some(3), vec![])
    );
    log.append(&[entry(4, 2)]);
    log.sync().expect("sync");
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(state(&recovered).3, [(4, 2)]);
}

#[test]
fn the_hard_state_is_brought_up_to_the_snapshot() {
    // Term and commit behind the snapshot: the term is raised, and the
    // vote of the older term does not carry over.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.set_hard_state(&hard_state(1, 1, 0));
    log.sync().expect("sync");
    log.apply_snapshot(&snapshot(5, 4));
    log.sync().expect("sync");
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(recovered.hard_state, hard_state(4, 0, 5));
    // Only the commit behind: term and vote stay.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.set_hard_state(&hard_state(6, 3, 1));
    log.apply_snapshot(&snapshot(5, 4));
    log.sync().expect("sync");
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(recovered.hard_state, hard_state(6, 3, 5));
}

/// A file as version 1 wrote it: one top-level record per item.
fn version_1(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = record(KIND_HEADER, &header_payload(MAGIC_V1, "c", 1));
    for (kind, payload) in records {
        bytes.extend(record(*kind, payload));
    }
    bytes
}

#[test]
fn a_version_1_log_is_read_and_rewritten() {
    let records = [
        (
            KIND_CONF_STATE,
            conf(&[1, 2, 3]).write_to_bytes().expect("encodes"),
        ),
        (
            KIND_HARD_STATE,
            hard_state(1, 1, 0).write_to_bytes().expect("encodes"),
        ),
        (
            KIND_ENTRIES,
            encode_entries(&[entry(1, 1), entry(2, 1), entry(3, 1)]),
        ),
        (
            KIND_HARD_STATE,
            hard_state(2, 2, 2).write_to_bytes().expect("encodes"),
        ),
        (KIND_ENTRIES, encode_entries(&[entry(3, 2), entry(4, 2)])),
    ];
    let expected = (
        hard_state(2, 2, 2),
        conf(&[1, 2, 3]),
        None,
        vec![(1, 1), (2, 1), (3, 2), (4, 2)],
    );
    let bytes = version_1(&records);
    let (dir, recovered) = open_bytes(&bytes);
    assert_eq!(state(&recovered.expect("a version 1 log opens")), expected);
    let rewritten = fs::read(dir.path().join(LOG_FILE)).expect("read");
    let header = read_record(&rewritten, 0).expect("header");
    assert!(
        header.payload.starts_with(MAGIC_V2),
        "rewritten as version 2"
    );
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(state(&recovered), expected);
    log.append(&[entry(5, 2)]);
    log.sync().expect("sync");
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(state(&recovered).3.last(), Some(&(5, 2)));

    // Version 1's rule: a torn last record is cut, damage before it
    // refuses.
    let (_dir, recovered) = open_bytes(&bytes[..bytes.len() - 2]);
    let recovered = recovered.expect("torn last record");
    assert_eq!(state(&recovered).0, hard_state(2, 2, 2));
    assert_eq!(state(&recovered).3, [(1, 1), (2, 1), (3, 1)]);
    let mut damaged = bytes.clone();
    let middle = record_ends(&bytes)[2] + HEADER_LEN + 1;
    damaged[middle] ^= 0x40;
    assert!(matches!(
        open_bytes(&damaged).1,
        Err(LogError::Corrupt { .. })
    ));

    // A snapshot whose hard state was torn away from it.
    let mut records = records.to_vec();
    records.push((
        KIND_SNAPSHOT,
        snapshot(4, 3).write_to_bytes().expect("encodes"),
    ));
    let (_dir, recovered) = open_bytes(&version_1(&records));
    assert_eq!(
        state(&recovered.expect("opens")),
        (hard_state(3, 0, 4), conf(&[1, 2, 3]), Some(4), vec![])
    );
}

#[test]
fn a_newer_format_is_named() {
    let bytes = record(KIND_HEADER, &header_payload(b"palisade-raft-v9", "c", 1));
    let (_dir, recovered) = open_bytes(&bytes);
    assert!(
        matches!(recovered, Err(LogError::UnknownFormat { ref found, .. }) if found == "palisade-raft-v9"),
        "{recovered:?}"
    );
}

#[test]
fn a_log_of_another_node_or_cluster_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    history(dir.path());
    assert!(matches!(
        RaftLog::open(dir.path(), "c", 2, false),
        Err(LogError::Foreign { found_node: 1, .. })
    ));
    assert!(matches!(
        RaftLog::open(dir.path(), "other", 1, false),
        Err(LogError::Foreign { .. })
    ));
}

#[test]
fn compaction_keeps_state_and_drops_covered_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.set_conf_state(&conf(&[1, 2, 3]));
    log.set_hard_state(&hard_state(2, 2, 3));
    log.append(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
    log.sync().expect("sync");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let rest: Vec<Entry> = recovered
        .entries
        .iter()
        .filter(|e| e.index > 3)
        .cloned()
        .collect();
    log.compact(&snapshot(3, 2), &recovered.hard_state, &rest)
        .expect("compact");
    assert_eq!(log.entries_written(), 1);
    log.append(&[entry(5, 2)]);
    log.sync().expect("sync");
    let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(after.torn_bytes, 0);
    assert_eq!(
        state(&after),
        (
            hard_state(2, 2, 3),
            conf(&[1, 2, 3]),
            Some(3),
            vec![(4, 2), (5, 2)]
        )
    );
}

/// A log of entries 1..=4 (3 committed) with the compaction of the first
/// three begun: what the compaction's thread is given.
fn compaction_begun(dir: &Path) -> (RaftLog, CompactionWriter, HardState, Vec<Entry>) {
    let (mut log, _) = RaftLog::open(dir, "c", 1, false).expect("open");
    log.set_conf_state(&conf(&[1, 2, 3]));
    log.set_hard_state(&hard_state(2, 2, 3));
    log.append(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
    log.sync().expect("sync");
    let writer = log.begin_compaction();
    assert!(log.compacting());
    (log, writer, hard_state(2, 2, 3), vec![entry(4, 2)])
}

#[test]
fn batches_synced_while_a_compaction_is_written_follow_its_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, writer, hard, rest) = compaction_begun(dir.path());
    // The control thread goes on while the file is written elsewhere: a
    // new term, an entry that replaces 4, one more after it.
    log.set_hard_state(&hard_state(3, 1, 3));
    log.append(&[entry(4, 3)]);
    log.sync().expect("sync");
    log.append(&[entry(5, 3)]);
    log.sync().expect("sync");
    let written = std::thread::spawn(move || writer.write(&snapshot(3, 2), &hard, &rest))
        .join()
        .expect("writer thread")
        .expect("written");
    // Queued, not synced, when the new file takes over: it stays queued.
    log.append(&[entry(6, 3)]);
    log.finish_compaction(written).expect("finish");
    assert!(!log.compacting());
    assert_eq!(log.entries_written(), 1 + 3);
    log.sync().expect("sync");
    let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(after.torn_bytes, 0);
    assert_eq!(
        state(&after),
        (
            hard_state(3, 1, 3),
            conf(&[1, 2, 3]),
            Some(3),
            vec![(4, 3), (5, 3), (6, 3)]
        )
    );
    assert!(!dir.path().join(LOG_TMP).exists());
}

#[test]
fn a_snapshot_installed_while_a_compaction_is_written_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, writer, hard, rest) = compaction_begun(dir.path());
    // A follower takes the leader's snapshot at 7 meanwhile.
    log.apply_snapshot(&snapshot(7, 3));
    log.set_hard_state(&hard_state(3, 1, 7));
    log.sync().expect("sync");
    let written = writer
        .write(&snapshot(3, 2), &hard, &rest)
        .expect("written");
    log.finish_compaction(written).expect("finish");
    let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let (hard_state_after, _, snapshot_index, entries) = state(&after);
    assert_eq!(hard_state_after, hard_state(3, 1, 7));
    assert_eq!(snapshot_index, Some(7));
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_crash_before_a_compaction_finishes_keeps_the_old_log_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, writer, hard, rest) = compaction_begun(dir.path());
    log.append(&[entry(5, 2)]);
    log.sync().expect("sync");
    writer
        .write(&snapshot(3, 2), &hard, &rest)
        .expect("written");
    // The process dies here: the new file is beside the log, not in place.
    drop(log);
    assert!(dir.path().join(LOG_TMP).exists());
    let (mut log, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(
        state(&after),
        (
            hard_state(2, 2, 3),
            conf(&[1, 2, 3]),
            None,
            vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
        )
    );
    // And the next compaction overwrites the stale file.
    let writer = log.begin_compaction();
    let written = writer
        .write(
            &snapshot(3, 2),
            &hard_state(2, 2, 3),
            &[entry(4, 2), entry(5, 2)],
        )
        .expect("written");
    log.finish_compaction(written).expect("finish");
    let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(state(&after).3, vec![(4, 2), (5, 2)]);
}

#[test]
fn the_fsync_failpoint_stalls_until_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, true).expect("open");
    let stall = dir.path().join(FSYNC_STALL_FAILPOINT);
    fs::write(&stall, "").expect("arm");
    let remover = {
        let stall = stall.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::remove_file(stall).expect("disarm");
        })
    };
    log.set_hard_state(&hard_state(1, 0, 0));
    log.sync().expect("sync after the stall");
    assert!(
        !stall.exists(),
        "sync returned while the failpoint was armed"
    );
    remover.join().expect("remover");
}

/// An entry carrying `len` bytes.
fn big_entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; len].into(),
        ..Default::default()
    }
}

#[test]
fn a_preallocated_log_keeps_space_ahead_and_recovers_every_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let len = || fs::metadata(&path).expect("metadata").len();
    let chunk = 64 << 10;
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate(chunk).expect("reserve");
    assert_eq!(len(), log.end + chunk, "reserved ahead of the header");
    log.set_conf_state(&conf(&[1, 2, 3]));
    // 300 batches of about 1 KiB: the reserve runs out several times.
    for index in 1..=300 {
        log.append(&[big_entry(index, 1, 1000)]);
        log.set_hard_state(&hard_state(1, 1, index - 1));
        log.sync().expect("sync");
        assert!(len() >= log.end, "batch {index} is inside the file");
    }
    let end = log.end;
    assert!(end > 4 * chunk, "the test crosses several reserves");
    assert!(len() > end, "space is reserved after the last batch");
    drop(log);
    let file_len = len();
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(recovered.entries.len(), 300);
    assert_eq!(recovered.hard_state, hard_state(1, 1, 299));
    assert_eq!(recovered.torn_bytes, file_len - end, "the reserve is cut");
    assert_eq!(
        recovered.zero_tail, recovered.torn_bytes,
        "and it was zeros"
    );
    assert_eq!(len(), end);
    // Reserved again, and the log goes on after the last batch.
    log.preallocate(chunk).expect("reserve");
    assert_eq!(len(), end + chunk);
    log.append(&[big_entry(301, 2, 10)]);
    log.set_hard_state(&hard_state(2, 0, 300));
    log.sync().expect("sync");
    drop(log);
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(recovered.entries.len(), 301);
    assert_eq!(recovered.hard_state, hard_state(2, 0, 300));
}

#[test]
fn a_torn_batch_before_the_reserved_space_is_cut_and_told_apart_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = history(dir.path());
    let states = history_states(&full);
    let (start, before) = states[states.len() - 2].clone();
    let reserve = 8192;
    // Every whole prefix followed by reserved zeros recovers that prefix.
    for (end, expected) in &states[1..] {
        let mut bytes = full[..*end].to_vec();
        bytes.resize(end + reserve, 0);
        let (_dir, recovered) = open_bytes(&bytes);
        let recovered = recovered.unwrap_or_else(|e| panic!("prefix {end} refused: {e}"));
        assert_eq!(&state(&recovered), expected, "prefix {end}");
        assert_eq!(recovered.torn_bytes, reserve as u64);
        assert_eq!(recovered.zero_tail, reserve as u64);
    }
    // The last batch damaged, the reserve after it: the batch is cut, and
    // only its bytes count as torn.
    for at in start..full.len() {
        let mut bytes = full.clone();
        bytes[at] ^= 0x5a;
        bytes.resize(full.len() + reserve, 0);
        let (_dir, recovered) = open_bytes(&bytes);
        let recovered = recovered.unwrap_or_else(|e| panic!("byte {at} refused: {e}"));
        assert_eq!(state(&recovered), before, "byte {at}");
        assert_eq!(recovered.torn_bytes, (bytes.len() - start) as u64);
        assert_eq!(
            recovered.torn_bytes - recovered.zero_tail,
            (full.len() - start) as u64,
            "byte {at}: the torn batch ends in a non-zero byte"
        );
    }
}

#[test]
fn compaction_reserves_space_in_the_new_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let chunk = 32 << 10;
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate(chunk).expect("reserve");
    log.append(&[entry(1, 1), entry(2, 1)]);
    log.set_hard_state(&hard_state(1, 1, 2));
    log.sync().expect("sync");
    log.compact(&snapshot(1, 1), &hard_state(1, 1, 2), &[entry(2, 1)])
        .expect("compact");
    // A small state and log: the least zeroed tail.
    assert_eq!(
        fs::metadata(&path).expect("metadata").len(),
        log.end + COMPACTION_TAIL_MIN
    );
    log.append(&[entry(3, 1)]);
    log.sync().expect("sync");
    drop(log);
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(state(&recovered).3, [(2, 1), (3, 1)]);
    assert_eq!(
        recovered.torn_bytes, recovered.zero_tail,
        "only the reserve was cut"
    );
    assert!(recovered.zero_tail > 0);
}

/// Whether `filefrag -v` (e2fsprogs) lists an unwritten extent in `path`'s
/// bytes `from..to`; `None` where it cannot say (no filefrag, or a file
/// system without FIEMAP, such as a tmpfs).
fn unwritten_in(path: &Path, from: u64, to: u64) -> Option<bool> {
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let block = text
        .lines()
        .find_map(|l| l.split(" blocks of ").nth(1))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    let mut extents = 0;
    let mut unwritten = false;
    // "   0:        0..     255:   49022464..  49022719:    256:     last,unwritten,eof"
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let Some((first, last)) = fields[1].split_once("..") else {
            continue;
        };
        let (Ok(first), Ok(last)) = (first.trim().parse::<u64>(), last.trim().parse::<u64>())
        else {
            continue;
        };
        extents += 1;
        let (start, end) = (first * block, (last + 1) * block);
        if start < to && from < end && line.contains("unwritten") {
            unwritten = true;
        }
    }
    (extents > 0).then_some(unwritten)
}

#[test]
fn reserved_space_is_written_zeros_and_fallocate_only_is_kept_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let chunk = 256 << 10;
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate(chunk).expect("reserve");
    let end = log.end;
    assert_eq!(fs::metadata(&path).expect("metadata").len(), end + chunk);
    let zeros = fs::read(&path).expect("read");
    assert!(zeros[end as usize..].iter().all(|&b| b == 0));
    match unwritten_in(&path, end, end + chunk) {
        Some(unwritten) => assert!(!unwritten, "the reserve is written zeros"),
        None => eprintln!("skipping the extent check: filefrag cannot map this file system"),
    }
    drop(log);

    // The old way, for the benchmark: fallocate alone leaves it unwritten.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate_unwritten(chunk).expect("reserve");
    let end = log.end;
    assert_eq!(fs::metadata(&path).expect("metadata").len(), end + chunk);
    if let Some(unwritten) = unwritten_in(&path, end, end + chunk) {
        assert!(unwritten, "fallocate leaves the reserve unwritten");
    }
    // A compaction then gives its file no zeroed tail.
    log.append(&[entry(1, 1)]);
    log.sync().expect("sync");
    log.compact(&snapshot(1, 1), &hard_state(1, 1, 1), &[])
        .expect("compact");
    let len = fs::metadata(&path).expect("metadata").len();
    assert_eq!(len, log.end + chunk, "reserved again after the compaction");
    if let Some(unwritten) = unwritten_in(&path, log.end, len) {
        assert!(unwritten);
    }
}

#[test]
fn a_compaction_zeroes_a_tail_as_long_as_the_state_it_carries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let chunk = 64 << 10;
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate(chunk).expect("reserve");
    log.append(&[entry(1, 1)]);
    log.set_hard_state(&hard_state(1, 1, 1));
    log.sync().expect("sync");
    // A state of 300 KiB: more than the chunk, less than the cap.
    let mut big = snapshot(1, 1);
    big.set_data(vec![7u8; 300 << 10].into());
    let writer = log.begin_compaction();
    let written = writer
        .write(&big, &hard_state(1, 1, 1), &[])
        .expect("write");
    // Synced while the compaction was written: lands on the zeroed tail.
    log.append(&[entry(2, 1)]);
    log.set_hard_state(&hard_state(1, 1, 2));
    log.sync().expect("sync");
    // A quarter more than the state, which outgrew what the log did.
    let tail = written.reserved - written.len;
    assert!((375 << 10..400 << 10).contains(&tail), "tail {tail}");
    log.finish_compaction(written).expect("finish");
    let len = fs::metadata(&path).expect("metadata").len();
    assert!(len > log.end, "zeros remain after the catch-up batch");
    assert_eq!(log.allocated, len);
    match unwritten_in(&path, log.end, len) {
        Some(unwritten) => assert!(!unwritten, "the tail is written zeros"),
        None => eprintln!("skipping the extent check: filefrag cannot map this file system"),
    }
    // Batches go on over the zeros without reserving more.
    for index in 3..=20 {
        log.append(&[big_entry(index, 1, 1000)]);
        log.sync().expect("sync");
    }
    assert_eq!(fs::metadata(&path).expect("metadata").len(), len);
    drop(log);
    let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(
        recovered.snapshot.as_ref().map(|s| s.get_data().len()),
        Some(300 << 10)
    );
    assert_eq!(recovered.entries.len(), 19);
    assert_eq!(
        recovered.torn_bytes, recovered.zero_tail,
        "only zeros were cut"
    );
}

#[test]
fn a_compaction_zeroes_a_tail_as_long_as_the_log_grew_since_the_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    log.preallocate(64 << 10).expect("reserve");
    let opened_at = log.end;
    for index in 1..=600 {
        log.append(&[big_entry(index, 1, 1000)]);
        log.sync().expect("sync");
    }
    let grown = log.end - opened_at;
    assert!(
        grown > 2 * COMPACTION_TAIL_MIN,
        "the log outgrew the least tail"
    );
    let writer = log.begin_compaction();
    let written = writer
        .write(&snapshot(600, 1), &hard_state(1, 1, 600), &[])
        .expect("write");
    assert_eq!(written.reserved - written.len, grown * 5 / 4);
    log.finish_compaction(written).expect("finish");
    // The next compaction measures from this one.
    log.append(&[entry(601, 1)]);
    log.sync().expect("sync");
    let writer = log.begin_compaction();
    let written = writer
        .write(&snapshot(601, 1), &hard_state(1, 1, 601), &[])
        .expect("write");
    assert_eq!(written.reserved - written.len, COMPACTION_TAIL_MIN);
    log.finish_compaction(written).expect("finish");
}

#[test]
fn every_sync_is_timed_a_stalled_one_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = RaftLog::open(dir.path(), "c", 1, true).expect("open");
    let histogram = Arc::new(LatencyHistogram::default());
    log.sync().expect("a sync before timing starts");
    log.time_syncs(Arc::clone(&histogram));
    assert_eq!(
        histogram.snapshot().count(),
        0,
        "untimed syncs are not counted"
    );

    log.append(&[entry(1, 1)]);
    log.sync().expect("sync");
    log.set_hard_state(&hard_state(1, 1, 1));
    log.sync().expect("sync");
    assert_eq!(histogram.snapshot().count(), 2);

    // A stalled fsync (the failpoint) is timed whole: the sync blocks
    // until the file is gone, 100 ms after the thread said it syncs.
    let stall = dir.path().join(FSYNC_STALL_FAILPOINT);
    fs::write(&stall, "").expect("arm");
    let before = histogram.snapshot();
    let (syncing_tx, syncing_rx) = std::sync::mpsc::channel();
    let syncing = std::thread::spawn(move || {
        log.append(&[entry(2, 1)]);
        syncing_tx.send(()).expect("main waits");
        log.sync().expect("stalled sync");
    });
    syncing_rx.recv().expect("the sync thread runs");
    std::thread::sleep(Duration::from_millis(100));
    fs::remove_file(&stall).expect("disarm");
    syncing.join().expect("sync thread");
    let after = histogram.snapshot();
    assert_eq!(after.count(), 3);
    // The one new sync landed in a bucket above 50 ms (or above them all).
    let new: Vec<u64> = after
        .buckets
        .iter()
        .zip(before.buckets)
        .map(|(a, b)| a - b)
        .collect();
    let slow_bucket = new.iter().position(|&n| n == 1).expect("one new sync");
    assert!(
        LATENCY_BOUNDS_NS
            .get(slow_bucket)
            .is_none_or(|&bound| bound > 50_000_000),
        "{after:?}"
    );
    assert!(after.sum_ns - before.sum_ns >= 50_000_000, "{after:?}");
}

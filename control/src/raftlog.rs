//! The durable raft log: one append-only file of checksummed records.
//!
//! ```text
//! record  = len: u32 LE | crc32: u32 LE (over kind and payload) | kind: u8 | payload[len]
//! kinds   = 0 header (magic, cluster name, node id) — always first
//!           1 hard state (protobuf)      2 entries (u32 count, then len-prefixed protobuf)
//!           3 snapshot (protobuf)        4 conf state (protobuf)
//! ```
//!
//! Writes go to the end of the file and become durable at [`RaftLog::sync`];
//! the control plane syncs before it sends any message that depends on them
//! (S4: term, vote and log are on disk before anyone hears of them).
//!
//! Recovery replays records in order with raft's append semantics (an entry
//! at index i replaces every entry from i on). A damaged *last* record is a
//! write torn by a crash before its sync, so nothing depended on it: the
//! file is cut back to the last whole record. Damage anywhere else means
//! the disk lost data it had acknowledged, and the node refuses to start
//! rather than guess.
//!
//! Why our own file and not raft-engine: the log here holds elections,
//! membership and settings — a few records a second, fsynced one batch at a
//! time — and a single file whose every byte is explained in this comment
//! is easier to audit and to fault-test (every truncation point is tested)
//! than a general-purpose engine built for TiKV's write rates.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

const LOG_FILE: &str = "raft.log";
const LOG_TMP: &str = "raft.log.tmp";
const MAGIC: &[u8] = b"palisade-raft-v1";
const HEADER_LEN: usize = 9;
/// No single record is larger than this; a bigger length is damage.
const RECORD_LEN_MAX: usize = 64 << 20;

const KIND_HEADER: u8 = 0;
const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRIES: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_CONF_STATE: u8 = 4;

/// Why the log cannot be used. Every variant stops the node.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading, writing or syncing failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A record before the last one is damaged.
    #[error("raft log {path} is damaged at byte {offset} ({why}); refusing to start: restore the data directory from a backup, or remove this node from the cluster and add it back empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The log belongs to another cluster or node.
    #[error("raft log {path} belongs to cluster {found_cluster:?} node {found_node}, but this node is cluster {cluster:?} node {node}; refusing to start (wrong --data-dir or node.id?)")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Cluster the file was made for.
        found_cluster: String,
        /// Node the file was made for.
        found_node: u16,
        /// Cluster of this node.
        cluster: String,
        /// This node.
        node: u16,
    },
}

/// What the log held at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    /// Last hard state (term, vote, commit).
    pub hard_state: HardState,
    /// Membership.
    pub conf_state: ConfState,
    /// Latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, in index order, without gaps.
    pub entries: Vec<Entry>,
    /// Bytes of a torn last record cut off at start.
    pub torn_bytes: u64,
    /// Whether the file existed before.
    pub existed: bool,
}

impl Recovered {
    fn apply(&mut self, kind: u8, payload: &[u8]) -> Result<(), String> {
        match kind {
            KIND_HARD_STATE => {
                self.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|e| format!("hard state: {e}"))?;
            }
            KIND_CONF_STATE => {
                self.conf_state =
                    ConfState::parse_from_bytes(payload).map_err(|e| format!("conf state: {e}"))?;
            }
            KIND_SNAPSHOT => {
                let snapshot =
                    Snapshot::parse_from_bytes(payload).map_err(|e| format!("snapshot: {e}"))?;
                let index = snapshot.get_metadata().index;
                self.entries.retain(|e| e.index > index);
                if self.entries.first().is_some_and(|e| e.index != index + 1) {
                    self.entries.clear();
                }
                self.conf_state = snapshot.get_metadata().get_conf_state().clone();
                self.snapshot = Some(snapshot);
            }
            KIND_ENTRIES => {
                for entry in decode_entries(payload)? {
                    self.append(entry)?;
                }
            }
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }

    /// raft's append: an entry at index i replaces everything from i on.
    fn append(&mut self, entry: Entry) -> Result<(), String> {
        let first = self
            .snapshot
            .as_ref()
            .map_or(1, |s| s.get_metadata().index + 1);
        if entry.index < first {
            return Ok(()); // Already covered by the snapshot.
        }
        let next = self.entries.last().map_or(first, |e| e.index + 1);
        if entry.index > next {
            return Err(format!(
                "entry {} leaves a gap after {}",
                entry.index,
                next - 1
            ));
        }
        let keep = usize::try_from(entry.index - first).map_err(|e| e.to_string())?;
        self.entries.truncate(keep);
        self.entries.push(entry);
        Ok(())
    }
}

fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 32);
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .expect("batch fits u32")
            .to_le_bytes(),
    );
    for entry in entries {
        let bytes = entry.write_to_bytes().expect("entries always encode");
        out.extend_from_slice(
            &u32::try_from(bytes.len())
                .expect("entry fits u32")
                .to_le_bytes(),
        );
        out.extend_from_slice(&bytes);
    }
    out
}

fn decode_entries(mut payload: &[u8]) -> Result<Vec<Entry>, String> {
    let take = |payload: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if payload.len() < n {
            return Err("entries record ends early".into());
        }
        let (head, rest) = payload.split_at(n);
        *payload = rest;
        Ok(head.to_vec())
    };
    let count = u32::from_le_bytes(take(&mut payload, 4)?.try_into().expect("4 bytes"));
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let len = u32::from_le_bytes(take(&mut payload, 4)?.try_into().expect("4 bytes")) as usize;
        let bytes = take(&mut payload, len)?;
        entries.push(Entry::parse_from_bytes(&bytes).map_err(|e| format!("entry: {e}"))?);
    }
    if !payload.is_empty() {
        return Err("trailing bytes in an entries record".into());
    }
    Ok(entries)
}

fn header_payload(cluster: &str, node: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= RECORD_LEN_MAX,
        "record above the size limit"
    );
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&u32::try_from(payload.len()).expect("bounded").to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Test hook: while this file exists, [`RaftLog::sync`] blocks (an fsync
/// that stalls, as a failing disk does). Name relative to the data dir.
pub const FSYNC_STALL_FAILPOINT: &str = "failpoint-fsync-stall";

/// The open, locked-by-the-caller log file.
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    cluster: String,
    node: u16,
    pending: Vec<u8>,
    /// Entries written since the last compaction.
    entries_written: u64,
    failpoints: bool,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsyncing directory", dir))
}

impl RaftLog {
    /// Opens (or creates) the log in `dir` for `cluster`/`node` and replays
    /// it. `failpoints` enables the fsync-stall test hook.
    pub fn open(
        dir: &Path,
        cluster: &str,
        node: u16,
        failpoints: bool,
    ) -> Result<(RaftLog, Recovered), LogError> {
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        let mut recovered = Recovered {
            existed,
            ..Recovered::default()
        };
        let mut offset = 0usize;
        let mut header_seen = false;
        let mut good_end = 0usize;
        while offset < bytes.len() {
            let corrupt = |why: String| LogError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                why,
            };
            let rest = &bytes[offset..];
            if rest.len() < HEADER_LEN {
                break; // Torn record header at the end.
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let kind = rest[8];
            if len > RECORD_LEN_MAX {
                if offset + HEADER_LEN + len.min(RECORD_LEN_MAX) >= bytes.len() {
                    break;
                }
                return Err(corrupt(format!("record length {len} above the limit")));
            }
            let end = offset + HEADER_LEN + len;
            if end > bytes.len() {
                break; // Torn record body at the end.
            }
            let payload = &bytes[offset + HEADER_LEN..end];
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&[kind]);
            hasher.update(payload);
            let last = end == bytes.len();
            if hasher.finalize() != crc {
                if last {
                    break; // The last record was torn mid-write.
                }
                return Err(corrupt("checksum mismatch".into()));
            }
            if !header_seen {
                if kind != KIND_HEADER
                    || !payload.starts_with(MAGIC)
                    || payload.len() < MAGIC.len() + 2
                {
                    return Err(corrupt("not a palisade raft log".into()));
                }
                let found_node =
                    u16::from_le_bytes([payload[MAGIC.len()], payload[MAGIC.len() + 1]]);
                let found_cluster =
                    String::from_utf8_lossy(&payload[MAGIC.len() + 2..]).into_owned();
                if found_node != node || found_cluster != cluster {
                    return Err(LogError::Foreign {
                        path: path.clone(),
                        found_cluster,
                        found_node,
                        cluster: cluster.to_string(),
                        node,
                    });
                }
                header_seen = true;
            } else {
                recovered.apply(kind, payload).map_err(corrupt)?;
            }
            offset = end;
            good_end = end;
        }
        recovered.torn_bytes = (bytes.len() - good_end) as u64;
        let mut log = RaftLog {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            cluster: cluster.to_string(),
            node,
            pending: Vec::new(),
            entries_written: recovered.entries.len() as u64,
            failpoints,
        };
        if recovered.torn_bytes > 0 || !header_seen {
            // Cut a torn tail (it was never synced, so nothing depended on
            // it) and make sure the header is in place and durable.
            log.file
                .set_len(good_end as u64)
                .map_err(io_err("truncating", &path))?;
            log.file
                .seek(SeekFrom::Start(good_end as u64))
                .map_err(io_err("seeking", &path))?;
            if !header_seen {
                log.pending = record(KIND_HEADER, &header_payload(cluster, node));
            }
            log.sync()?;
            sync_dir(dir)?;
        }
        log.file
            .seek(SeekFrom::End(0))
            .map_err(io_err("seeking", &log.path))?;
        Ok((log, recovered))
    }

    /// Queues a new hard state.
    pub fn set_hard_state(&mut self, hard_state: &HardState) {
        let bytes = hard_state.write_to_bytes().expect("hard state encodes");
        self.pending.extend(record(KIND_HARD_STATE, &bytes));
    }

    /// Queues a new membership.
    pub fn set_conf_state(&mut self, conf_state: &ConfState) {
        let bytes = conf_state.write_to_bytes().expect("conf state encodes");
        self.pending.extend(record(KIND_CONF_STATE, &bytes));
    }

    /// Queues entries (an entry at index i replaces the log from i on).
    pub fn append(&mut self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.entries_written += entries.len() as u64;
        self.pending
            .extend(record(KIND_ENTRIES, &encode_entries(entries)));
    }

    /// Queues a snapshot (the log before it is discarded on replay).
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        let bytes = snapshot.write_to_bytes().expect("snapshot encodes");
        self.pending.extend(record(KIND_SNAPSHOT, &bytes));
    }

    /// Entries written since the file was last rewritten.
    #[must_use]
    pub fn entries_written(&self) -> u64 {
        self.entries_written
    }

    /// Writes everything queued and fsyncs it. Call before sending any
    /// message that depends on what was queued.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.failpoints {
            let stall = self.dir.join(FSYNC_STALL_FAILPOINT);
            while stall.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(io_err("writing", &self.path))?;
            self.pending.clear();
        }
        self.file
            .sync_data()
            .map_err(io_err("fsyncing", &self.path))
    }

    /// Rewrites the file as header, snapshot, hard state, then `entries`
    /// (those after the snapshot), atomically: new file, fsync, rename,
    /// directory fsync. Anything queued and not synced is dropped, so sync
    /// first.
    pub fn compact(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Result<(), LogError> {
        assert!(self.pending.is_empty(), "sync before compacting");
        let tmp = self.dir.join(LOG_TMP);
        let mut bytes = record(KIND_HEADER, &header_payload(&self.cluster, self.node));
        bytes.extend(record(
            KIND_SNAPSHOT,
            &snapshot.write_to_bytes().expect("snapshot encodes"),
        ));
        bytes.extend(record(
            KIND_HARD_STATE,
            &hard_state.write_to_bytes().expect("hard state encodes"),
        ));
        if !entries.is_empty() {
            bytes.extend(record(KIND_ENTRIES, &encode_entries(entries)));
        }
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            file.write_all(&bytes).map_err(io_err("writing", &tmp))?;
            file.sync_all().map_err(io_err("fsyncing", &tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io_err("renaming over", &self.path))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_err("reopening", &self.path))?;
        self.file
            .seek(SeekFrom::End(0))
            .map_err(io_err("seeking", &self.path))?;
        self.entries_written = entries.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Writes a known history and returns the file's bytes and the state
    /// after each whole record.
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
        fs::read(dir.join(LOG_FILE)).expect("read")
    }

    #[test]
    fn replay_applies_raft_append_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        history(dir.path());
        let (_, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
        assert!(recovered.existed);
        assert_eq!(recovered.hard_state, hard_state(2, 2, 2));
        assert_eq!(recovered.conf_state, conf(&[1, 2, 3]));
        let got: Vec<(u64, u64)> = recovered
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(got, [(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(recovered.torn_bytes, 0);
    }

    #[test]
    fn every_truncation_recovers_a_synced_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = history(dir.path());
        let mut terms_seen = Vec::new();
        for cut in 0..=full.len() {
            let case = tempfile::tempdir().expect("tempdir");
            fs::write(case.path().join(LOG_FILE), &full[..cut]).expect("write");
            match RaftLog::open(case.path(), "c", 1, false) {
                Ok((_, recovered)) => {
                    // Whatever survives is a prefix of the history: the
                    // term never exceeds what was written, and a cut inside
                    // the last record drops that record whole.
                    assert!(recovered.hard_state.term <= 2, "cut {cut}");
                    terms_seen.push(recovered.hard_state.term);
                    let reopened = RaftLog::open(case.path(), "c", 1, false)
                        .expect("reopen after repair")
                        .1;
                    assert_eq!(reopened.torn_bytes, 0, "the tail was cut at {cut}");
                    assert_eq!(reopened.hard_state, recovered.hard_state);
                    assert_eq!(reopened.entries, recovered.entries);
                }
                Err(e) => panic!("cut at {cut} refused: {e}"),
            }
        }
        assert!(
            terms_seen.windows(2).all(|w| w[0] <= w[1]),
            "monotone in the cut"
        );
        assert_eq!(terms_seen.last(), Some(&2));
    }

    #[test]
    fn damage_before_the_last_record_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = history(dir.path());
        // Flip a byte inside the second record (the conf state).
        let second = HEADER_LEN + MAGIC.len() + 2 + 1 + HEADER_LEN + 1;
        bytes[second] ^= 0x40;
        fs::write(dir.path().join(LOG_FILE), &bytes).expect("write");
        let err = RaftLog::open(dir.path(), "c", 1, false).expect_err("corrupt");
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
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
        history(dir.path());
        let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().set_conf_state(conf(&[1, 2, 3]));
        let rest: Vec<Entry> = recovered
            .entries
            .iter()
            .filter(|e| e.index > 3)
            .cloned()
            .collect();
        log.compact(&snapshot, &recovered.hard_state, &rest)
            .expect("compact");
        log.append(&[entry(5, 2)]);
        log.sync().expect("sync");
        let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
        assert_eq!(after.snapshot.expect("snapshot").get_metadata().index, 3);
        let got: Vec<u64> = after.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, [4, 5]);
        assert_eq!(after.hard_state, hard_state(2, 2, 2));
        assert_eq!(after.conf_state, conf(&[1, 2, 3]));
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
}

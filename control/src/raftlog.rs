//! The durable raft log: one append-only file of checksummed records.
//!
//! ```text
//! file    = header record, then one batch record per sync
//! record  = len: u32 LE | crc32: u32 LE (over kind and payload) | kind: u8 | payload[len]
//! header  = kind 0: magic "palisade-raft-v2" | node id: u16 LE | cluster name
//! batch   = kind 5: seq: u64 LE (1, 2, … counted from the file's start) | item*
//! item    = len: u32 LE | kind: u8 | payload[len]    (checked by the batch's crc32)
//! items   = 1 hard state (protobuf)      2 entries (u32 count, then len-prefixed protobuf)
//!           3 snapshot (protobuf)        4 conf state (protobuf)
//! ```
//!
//! Writes are queued and become durable at [`RaftLog::sync`], which writes
//! everything queued as one batch and fsyncs it; the control plane syncs
//! before it sends any message that depends on them (S4: term, vote and log
//! are on disk before anyone hears of them).
//!
//! Recovery replays items in order with raft's append semantics (an entry
//! at index i replaces every entry from i on; a snapshot replaces them
//! all). A sync starts only after the previous one's fsync returned, so a
//! crash can damage only the last batch — and a torn batch can look like
//! anything: cut short, garbage in its middle, or zeros over its start
//! (the page holding its header never reached the disk while a later one
//! did), which leaves its length meaningless. So when the batch at some
//! offset is damaged, recovery looks for a whole batch with a higher
//! sequence number after it. If there is none, the damaged batch is the
//! torn last one: nothing depended on it, and the file is cut where it
//! starts. If there is one, the damaged batch was synced, the disk lost
//! data it had acknowledged, and the node refuses to start rather than
//! guess. One batch per sync also keeps what raft persisted together
//! together: a snapshot never survives without the hard state that came
//! with it.
//!
//! Space ahead of the last batch is reserved as written zeros
//! ([`RaftLog::preallocate`], which the node calls at open, and the tail
//! each compaction's new file gets): a batch then overwrites blocks the
//! file already owns and has written, so its fdatasync flushes the data
//! alone, with no journal commit for the file's size, its block map or
//! the state of its extents. When that space runs out between two
//! compactions, more is reserved with `fallocate`, which is fast but
//! leaves the blocks *unwritten*: the first write into each has it marked
//! written, a change the next fdatasync commits to ext4's journal. On
//! this project's test disk a sync over zeros had a p99 5–35 % below one
//! over `fallocate`d space (the larger the batch, the more) and 30–45 %
//! below one extending the file (`bench/results/log-zeroes/`). Reserved space
//! reads as zeros, which recovery treats as what it is: no whole batch
//! follows, so it is cut like a torn tail ([`Recovered::zero_tail`] says
//! how much of what was cut was zeros) and reserved again.
//!
//! Version 1 files (magic "palisade-raft-v1", from earlier versions) hold
//! the items as top-level records, several per sync, under the same
//! framing. They are replayed with version 1's rule (only a damaged last
//! record is a torn write) and rewritten as version 2 at open.
//!
//! Compaction rewrites the file as a snapshot, the hard state and the
//! entries after the snapshot, in two steps so that the part that grows
//! with the lease state runs on another thread:
//! [`RaftLog::begin_compaction`] hands out a [`CompactionWriter`], which
//! writes and fsyncs `raft.log.tmp` (header and batch 1) wherever it is
//! called; meanwhile the log goes on syncing batches into the old file and
//! keeps a copy of each; [`RaftLog::finish_compaction`] appends those
//! copies to the new file as batches 2, 3, …, fsyncs it, renames it over the
//! log and fsyncs the directory. So the new file replays to what the old
//! one did, from the snapshot on, and a crash at any point leaves one
//! whole log: the old until the rename, the new after it.
//!
//! Why our own file and not raft-engine: the log here holds elections,
//! membership and settings — a few records a second, fsynced one batch at a
//! time — and a single file whose every byte is explained in this comment
//! is easier to audit and to fault-test (every truncation point is tested)
//! than a general-purpose engine built for TiKV's write rates.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_dataplane::metrics::LatencyHistogram;
use palisade_host::clock;
use palisade_host::durable::{self, DurableError};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

const LOG_FILE: &str = "raft.log";
const LOG_TMP: &str = "raft.log.tmp";
/// Zeros written with one `pwrite` when space is reserved.
const ZEROES_PER_WRITE: usize = 1 << 20;
/// Smallest and largest zeroed tail a compaction gives its new file (see
/// [`CompactionWriter::write`]).
const COMPACTION_TAIL_MIN: u64 = 256 << 10;
const COMPACTION_TAIL_MAX: u64 = 16 << 20;
const MAGIC_V1: &[u8] = b"palisade-raft-v1";
const MAGIC_V2: &[u8] = b"palisade-raft-v2";
/// What every version's magic starts with.
const MAGIC_PREFIX: &[u8] = b"palisade-raft-v";
const _: () = assert!(MAGIC_V1.len() == MAGIC_V2.len());
const HEADER_LEN: usize = 9;
const ITEM_HEADER_LEN: usize = 5;
const SEQ_LEN: usize = 8;
/// No single record (a batch included) is larger than this; a bigger
/// length is damage. A compaction's batch holds a snapshot of the whole
/// lease state (at most `LEASE_STATE_LEN_MAX`, 512 MiB) and the entries
/// after it: 1 GiB leaves the entries the other half.
const RECORD_LEN_MAX: usize = 1 << 30;
const _: () =
    assert!(palisade_dataplane::replica::LEASE_STATE_LEN_MAX + (256 << 20) <= RECORD_LEN_MAX);

const KIND_HEADER: u8 = 0;
const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRIES: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_CONF_STATE: u8 = 4;
const KIND_BATCH: u8 = 5;

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
    /// A newer version wrote the log in a format this one cannot read.
    #[error("raft log {path} has format {found:?}, which this version cannot read; run the version that wrote it")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The magic found.
        found: String,
    },
    /// An earlier write or fsync failed. The file's tail is unknown, and a
    /// batch appended after it could hide it from recovery.
    #[error("raft log {path}: an earlier write or fsync failed; restart the node")]
    Failed {
        /// The file.
        path: PathBuf,
    },
}

/// What the log held at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    /// Last hard state (term, vote, commit), never behind the snapshot.
    pub hard_state: HardState,
    /// Membership.
    pub conf_state: ConfState,
    /// Latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, in index order, without gaps.
    pub entries: Vec<Entry>,
    /// Bytes after the last whole batch (or record), cut off at start: a
    /// torn write, and space reserved ahead of the log.
    pub torn_bytes: u64,
    /// How many of `torn_bytes`, at the end, were zeros (reserved space,
    /// or the zeros of a torn write): the rest held a torn write's bytes.
    pub zero_tail: u64,
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
                // As raft-rs's MemStorage::apply_snapshot: every entry held
                // before goes, even those past the snapshot's index — they
                // may be from a history the leader abandoned, and it sends
                // what follows the snapshot.
                self.entries.clear();
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
        // Indexes near 2^64 are damage, not a log (found by the raftlog
        // fuzz target: a snapshot at u64::MAX overflowed here).
        let first = match self.snapshot.as_ref() {
            None => 1,
            Some(s) => s
                .get_metadata()
                .index
                .checked_add(1)
                .ok_or("a snapshot at the largest index")?,
        };
        if entry.index < first {
            return Ok(()); // Already covered by the snapshot.
        }
        let next = match self.entries.last() {
            None => first,
            Some(e) => e
                .index
                .checked_add(1)
                .ok_or("an entry at the largest index")?,
        };
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

    /// Brings the hard state up to the snapshot, as raft-rs requires at
    /// start (it panics on a commit below the snapshot's index). A hard
    /// state behind its snapshot is one a version 1 file lost to a write
    /// torn between the two; version 2 writes them in one batch.
    fn make_consistent(&mut self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let meta = snapshot.get_metadata();
        if self.hard_state.term < meta.term {
            // Terms only grow, so no hard state of the snapshot's term was
            // ever synced: this node sent no vote in that term (S4).
            self.hard_state.term = meta.term;
            self.hard_state.vote = 0;
        }
        // A snapshot holds only committed entries.
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        assert!(self.hard_state.term >= meta.term);
        assert!(self.hard_state.commit >= meta.index);
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

fn header_payload(magic: &[u8], cluster: &str, node: u16) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    crc.finalize()
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= RECORD_LEN_MAX,
        "record above the size limit"
    );
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&u32::try_from(payload.len()).expect("bounded").to_le_bytes());
    out.extend_from_slice(&checksum(kind, payload).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Appends one item to a batch being built.
fn push_item(items: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    assert!(kind != KIND_HEADER && kind != KIND_BATCH, "items are state");
    items.extend_from_slice(
        &u32::try_from(payload.len())
            .expect("item fits u32")
            .to_le_bytes(),
    );
    items.push(kind);
    items.extend_from_slice(payload);
}

/// The batch record holding `items` as batch number `seq`.
fn batch_record(seq: u64, items: &[u8]) -> Vec<u8> {
    assert!(seq >= 1, "batches count from 1");
    assert!(!items.is_empty(), "a batch holds state");
    let mut payload = Vec::with_capacity(SEQ_LEN + items.len());
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(items);
    let out = record(KIND_BATCH, &payload);
    debug_assert!(read_record(&out, 0).is_ok_and(|f| f.kind == KIND_BATCH && f.end == out.len()));
    out
}

/// One item of a batch: kind and payload.
type Item<'a> = (u8, &'a [u8]);

/// Splits a batch's payload into its sequence number and items.
fn decode_batch(payload: &[u8]) -> Result<(u64, Vec<Item<'_>>), String> {
    if payload.len() < SEQ_LEN {
        return Err("batch ends before its sequence number".into());
    }
    let (seq, mut rest) = payload.split_at(SEQ_LEN);
    let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
    let mut items = Vec::new();
    while !rest.is_empty() {
        if rest.len() < ITEM_HEADER_LEN {
            return Err("item header ends early".into());
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = rest[4];
        let body = &rest[ITEM_HEADER_LEN..];
        if body.len() < len {
            return Err("item ends early".into());
        }
        items.push((kind, &body[..len]));
        rest = &body[len..];
    }
    Ok((seq, items))
}

/// A whole record: its checksum matches.
#[derive(Debug)]
struct Frame<'a> {
    kind: u8,
    payload: &'a [u8],
    /// Where the next record starts.
    end: usize,
}

/// Why the record at an offset is not whole.
#[derive(Debug)]
struct Damage {
    why: String,
    /// Whether the damage is what a write cut short at the end of the file
    /// leaves (version 1's test for a torn record).
    reaches_end: bool,
}

fn read_record(bytes: &[u8], offset: usize) -> Result<Frame<'_>, Damage> {
    assert!(offset <= bytes.len());
    let rest = &bytes[offset..];
    if rest.len() < HEADER_LEN {
        return Err(Damage {
            why: "record header ends early".into(),
            reaches_end: true,
        });
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let kind = rest[8];
    if len > RECORD_LEN_MAX {
        return Err(Damage {
            why: format!("record length {len} above the limit"),
            reaches_end: rest.len() <= HEADER_LEN + RECORD_LEN_MAX,
        });
    }
    if rest.len() < HEADER_LEN + len {
        return Err(Damage {
            why: "record ends early".into(),
            reaches_end: true,
        });
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + len];
    if checksum(kind, payload) != crc {
        return Err(Damage {
            why: "checksum mismatch".into(),
            reaches_end: rest.len() == HEADER_LEN + len,
        });
    }
    Ok(Frame {
        kind,
        payload,
        end: offset + HEADER_LEN + len,
    })
}

/// The first whole batch numbered above `seq_damaged` that starts after
/// `damaged`, as (offset, seq). Its existence proves the batch at
/// `damaged` was synced. Linear: the sequence number is checked before the
/// checksum, and the count of batches that fit bounds it.
fn whole_batch_after(bytes: &[u8], damaged: usize, seq_damaged: u64) -> Option<(usize, u64)> {
    let batch_len_min = HEADER_LEN + SEQ_LEN + ITEM_HEADER_LEN;
    let seq_max = seq_damaged.saturating_add(((bytes.len() - damaged) / batch_len_min) as u64);
    (damaged + 1..bytes.len()).find_map(|at| {
        let rest = &bytes[at..];
        if rest.len() < batch_len_min || rest[8] != KIND_BATCH {
            return None;
        }
        let seq = u64::from_le_bytes(
            rest[HEADER_LEN..HEADER_LEN + SEQ_LEN]
                .try_into()
                .expect("8 bytes"),
        );
        if seq <= seq_damaged || seq > seq_max {
            return None;
        }
        read_record(bytes, at).ok().map(|_| (at, seq))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Top-level state records, several per sync.
    V1,
    /// One batch per sync.
    V2,
}

/// What replaying a file's bytes found.
#[derive(Debug)]
struct Replay {
    recovered: Recovered,
    /// The header's format; `None` when the file holds no whole header.
    format: Option<Format>,
    /// Where the last whole record ends: what follows is a torn write.
    good_end: usize,
    /// The number of the next batch (version 2).
    seq_next: u64,
}

fn check_header(
    frame: &Frame<'_>,
    path: &Path,
    cluster: &str,
    node: u16,
) -> Result<Format, LogError> {
    let payload = frame.payload;
    let corrupt = |why: &str| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        why: why.into(),
    };
    if frame.kind != KIND_HEADER || payload.len() < MAGIC_V2.len() + 2 {
        return Err(corrupt("not a palisade raft log"));
    }
    let magic = &payload[..MAGIC_V2.len()];
    let format = if magic == MAGIC_V2 {
        Format::V2
    } else if magic == MAGIC_V1 {
        Format::V1
    } else if magic.starts_with(MAGIC_PREFIX) {
        return Err(LogError::UnknownFormat {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    } else {
        return Err(corrupt("not a palisade raft log"));
    };
    let found_node = u16::from_le_bytes([payload[MAGIC_V2.len()], payload[MAGIC_V2.len() + 1]]);
    let found_cluster = String::from_utf8_lossy(&payload[MAGIC_V2.len() + 2..]).into_owned();
    if found_node != node || found_cluster != cluster {
        return Err(LogError::Foreign {
            path: path.to_path_buf(),
            found_cluster,
            found_node,
            cluster: cluster.to_string(),
            node,
        });
    }
    Ok(format)
}

/// Replays a log file's bytes; `path` only names it in errors.
fn replay(bytes: &[u8], path: &Path, cluster: &str, node: u16) -> Result<Replay, LogError> {
    let corrupt = |offset: usize, why: String| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        why,
    };
    let mut replay = Replay {
        recovered: Recovered::default(),
        format: None,
        good_end: 0,
        seq_next: 1,
    };
    if bytes.is_empty() {
        return Ok(replay);
    }
    let header = match read_record(bytes, 0) {
        Ok(frame) => frame,
        // The header is synced alone before anything else is written, so a
        // torn header is all the file holds.
        Err(_) if bytes.len() <= HEADER_LEN + header_payload(MAGIC_V2, cluster, node).len() => {
            return Ok(replay);
        }
        Err(damage) => return Err(corrupt(0, damage.why)),
    };
    let format = check_header(&header, path, cluster, node)?;
    replay.format = Some(format);
    let mut offset = header.end;
    while offset < bytes.len() {
        let frame = match read_record(bytes, offset) {
            Ok(frame) => frame,
            Err(damage) => match format {
                Format::V1 if damage.reaches_end => break,
                Format::V1 => return Err(corrupt(offset, damage.why)),
                Format::V2 => match whole_batch_after(bytes, offset, replay.seq_next) {
                    None => break,
                    Some((at, seq)) => {
                        return Err(corrupt(
                            offset,
                            format!(
                                "{} in batch {}, yet batch {seq} at byte {at} after it is whole",
                                damage.why, replay.seq_next
                            ),
                        ))
                    }
                },
            },
        };
        match format {
            Format::V1 => replay
                .recovered
                .apply(frame.kind, frame.payload)
                .map_err(|why| corrupt(offset, why))?,
            Format::V2 => {
                if frame.kind != KIND_BATCH {
                    return Err(corrupt(
                        offset,
                        format!("record kind {} outside a batch", frame.kind),
                    ));
                }
                let (seq, items) =
                    decode_batch(frame.payload).map_err(|why| corrupt(offset, why))?;
                if seq != replay.seq_next {
                    return Err(corrupt(
                        offset,
                        format!("batch {seq} where batch {} belongs", replay.seq_next),
                    ));
                }
                for (kind, payload) in items {
                    replay
                        .recovered
                        .apply(kind, payload)
                        .map_err(|why| corrupt(offset, why))?;
                }
                replay.seq_next += 1;
            }
        }
        offset = frame.end;
    }
    replay.good_end = offset;
    replay.recovered.make_consistent();
    Ok(replay)
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
    /// Items queued for the next batch.
    pending: Vec<u8>,
    /// The number of the next batch written.
    seq_next: u64,
    /// Set when a write or fsync failed: nothing more may be appended.
    failed: bool,
    /// Entries written since the last compaction.
    entries_written: u64,
    failpoints: bool,
    /// Where the next batch goes: the end of the last one.
    end: u64,
    /// The file's length: `end` plus the space reserved after it.
    allocated: u64,
    /// Bytes reserved ahead of `end` each time the reserve runs out
    /// (0: none, batches extend the file).
    preallocate: u64,
    /// Compactions give their new file a tail of written zeros (false
    /// only after [`RaftLog::preallocate_unwritten`]).
    zero_tail: bool,
    /// `end` when the file was opened or last rewritten: what the log
    /// grew by since is the best guess of what it grows by until the next
    /// compaction.
    rewritten_end: u64,
    /// A compaction whose file is being written elsewhere, if one is.
    compacting: Option<Compacting>,
    /// Where each sync's duration goes ([`RaftLog::time_syncs`]), if
    /// anywhere.
    sync_times: Option<Arc<LatencyHistogram>>,
}

/// What a compaction in flight needs from the log it replaces: every batch
/// synced since it began, to append to the new file after its snapshot.
#[derive(Debug)]
struct Compacting {
    /// The items of each batch synced since the compaction began, in order.
    batches: Vec<Vec<u8>>,
    /// [`RaftLog::entries_written`] when it began.
    entries_at_begin: u64,
}

/// Writes a compaction's new log file, on a thread other than the control
/// thread: the half of a compaction whose cost grows with the lease state
/// ([`RaftLog::begin_compaction`]).
#[derive(Debug, Clone)]
pub struct CompactionWriter {
    tmp: PathBuf,
    cluster: String,
    node: u16,
    /// Whether to write a zeroed tail after the content.
    zero_tail: bool,
    /// What the log grew by since it was last rewritten.
    grown: u64,
}

/// A compaction's new file, written and fsynced beside the log but not yet
/// in its place ([`RaftLog::finish_compaction`]).
#[derive(Debug)]
pub struct CompactionWritten {
    len: u64,
    /// `len` plus the zeroed tail after it.
    reserved: u64,
    entries: u64,
}

impl CompactionWriter {
    /// Writes `raft.log.tmp`: the header, then batch 1 of `snapshot`,
    /// `hard_state` and `entries` (those after the snapshot), and fsyncs
    /// it. The log itself is untouched; a crash leaves the tmp file, which
    /// start ignores.
    pub fn write(
        &self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Result<CompactionWritten, LogError> {
        let mut items = Vec::new();
        let bytes = snapshot.write_to_bytes().expect("snapshot encodes");
        push_item(&mut items, KIND_SNAPSHOT, &bytes);
        drop(bytes);
        let bytes = hard_state.write_to_bytes().expect("hard state encodes");
        push_item(&mut items, KIND_HARD_STATE, &bytes);
        if !entries.is_empty() {
            push_item(&mut items, KIND_ENTRIES, &encode_entries(entries));
        }
        let mut bytes = record(
            KIND_HEADER,
            &header_payload(MAGIC_V2, &self.cluster, self.node),
        );
        bytes.extend(batch_record(1, &items));
        // The zeroed tail: for the batches until the next compaction, which
        // comes once the log grew by at least the state's size (the node's
        // `compaction_due`) and, at a steady rate, by about what it grew
        // since the last one; a quarter more than the larger of the two.
        let tail = if self.zero_tail {
            ((items.len() as u64).max(self.grown).saturating_mul(5) / 4)
                .clamp(COMPACTION_TAIL_MIN, COMPACTION_TAIL_MAX)
        } else {
            0
        };
        drop(items);
        let io = |action| io_err(action, &self.tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.tmp)
            .map_err(io("creating"))?;
        file.write_all(&bytes).map_err(io("writing"))?;
        write_zeroes(&file, bytes.len() as u64, tail).map_err(io("reserving space for"))?;
        file.sync_all().map_err(io("fsyncing"))?;
        Ok(CompactionWritten {
            len: bytes.len() as u64,
            reserved: bytes.len() as u64 + tail,
            entries: entries.len() as u64,
        })
    }
}

/// Writes `len` zeros into `file` from offset `at` on.
fn write_zeroes(file: &File, at: u64, len: u64) -> io::Result<()> {
    let zeroes = vec![0u8; len.min(ZEROES_PER_WRITE as u64) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64);
        file.write_all_at(&zeroes[..n as usize], at + done)?;
        done += n;
    }
    Ok(())
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl From<DurableError> for LogError {
    fn from(error: DurableError) -> LogError {
        let (step, path, source) = error.into_parts();
        LogError::Io {
            action: step.doing(),
            path,
            source,
        }
    }
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
        let replay = replay(&bytes, &path, cluster, node)?;
        let mut recovered = replay.recovered;
        recovered.existed = existed;
        recovered.torn_bytes = (bytes.len() - replay.good_end) as u64;
        recovered.zero_tail = bytes[replay.good_end..]
            .iter()
            .rev()
            .take_while(|&&b| b == 0)
            .count() as u64;
        let mut log = RaftLog {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            cluster: cluster.to_string(),
            node,
            pending: Vec::new(),
            seq_next: replay.seq_next,
            failed: false,
            entries_written: recovered.entries.len() as u64,
            failpoints,
            end: 0,
            allocated: 0,
            preallocate: 0,
            zero_tail: true,
            rewritten_end: 0,
            compacting: None,
            sync_times: None,
        };
        match replay.format {
            Some(Format::V2) => {
                if recovered.torn_bytes > 0 {
                    // Cut the torn tail (it was never synced, so nothing
                    // depended on it), durably, before anything is
                    // appended where it was.
                    log.file
                        .set_len(replay.good_end as u64)
                        .map_err(io_err("truncating", &path))?;
                    log.file.sync_all().map_err(io_err("fsyncing", &path))?;
                }
            }
            Some(Format::V1) => {
                let mut items = Vec::new();
                if let Some(snapshot) = &recovered.snapshot {
                    let bytes = snapshot.write_to_bytes().expect("snapshot encodes");
                    push_item(&mut items, KIND_SNAPSHOT, &bytes);
                }
                let bytes = recovered
                    .conf_state
                    .write_to_bytes()
                    .expect("conf state encodes");
                push_item(&mut items, KIND_CONF_STATE, &bytes);
                let bytes = recovered
                    .hard_state
                    .write_to_bytes()
                    .expect("hard state encodes");
                push_item(&mut items, KIND_HARD_STATE, &bytes);
                if !recovered.entries.is_empty() {
                    push_item(
                        &mut items,
                        KIND_ENTRIES,
                        &encode_entries(&recovered.entries),
                    );
                }
                log.replace(&items)?;
            }
            None => {
                // No whole header: nothing was ever synced after it.
                log.file.set_len(0).map_err(io_err("truncating", &path))?;
                log.file
                    .seek(SeekFrom::Start(0))
                    .map_err(io_err("seeking", &path))?;
                let header = record(KIND_HEADER, &header_payload(MAGIC_V2, cluster, node));
                log.file
                    .write_all(&header)
                    .map_err(io_err("writing", &path))?;
                log.file.sync_all().map_err(io_err("fsyncing", &path))?;
                durable::sync_dir(dir)?;
            }
        }
        log.end = log
            .file
            .seek(SeekFrom::End(0))
            .map_err(io_err("seeking", &log.path))?;
        log.allocated = log.end;
        log.rewritten_end = log.end;
        Ok((log, recovered))
    }

    /// Reserves `chunk` bytes ahead of the log's end as written zeros
    /// (synced), and from now on keeps space reserved: another `chunk`
    /// with `fallocate` whenever a batch would not fit, and a zeroed tail
    /// in each compaction's new file. A file system that cannot reserve
    /// space with `fallocate` (the call is refused) is logged once and the
    /// log appends past the zeros.
    pub fn preallocate(&mut self, chunk: u64) -> Result<(), LogError> {
        self.preallocate = chunk;
        if chunk == 0 {
            return Ok(());
        }
        self.write_zeroes_ahead(chunk)
    }

    /// Like [`RaftLog::preallocate`], but reserves with `fallocate` alone,
    /// never writing zeros: blocks stay unwritten until a batch lands in
    /// them. How the log reserved space before it wrote zeros, kept for
    /// `benches/raftlog.rs` to compare the two.
    pub fn preallocate_unwritten(&mut self, chunk: u64) -> Result<(), LogError> {
        self.preallocate = chunk;
        self.zero_tail = false;
        self.reserve(0)
    }

    /// Writes `len` zeros from the log's end on (never over a batch) and
    /// syncs them.
    fn write_zeroes_ahead(&mut self, len: u64) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed {
                path: self.path.clone(),
            });
        }
        let reserving = |source: io::Error| LogError::Io {
            action: "reserving space for",
            path: self.path.clone(),
            source,
        };
        write_zeroes(&self.file, self.end, len).map_err(reserving)?;
        self.file.sync_data().map_err(reserving)?;
        self.allocated = self.allocated.max(self.end + len);
        Ok(())
    }

    /// Makes sure `len` more bytes (and at least one) fit in the reserved
    /// space, if space is reserved at all.
    fn reserve(&mut self, len: u64) -> Result<(), LogError> {
        if self.preallocate == 0 || self.end + len.max(1) <= self.allocated {
            return Ok(());
        }
        let target = self.end + len + self.preallocate;
        match rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::empty(),
            self.allocated,
            target - self.allocated,
        ) {
            Ok(()) => {
                self.allocated = target;
                Ok(())
            }
            Err(e) if e == rustix::io::Errno::NOSPC => Err(LogError::Io {
                action: "reserving space for",
                path: self.path.clone(),
                source: e.into(),
            }),
            Err(e) => {
                tracing::info!(
                    path = %self.path.display(),
                    error = %e,
                    "the file system does not reserve space ahead (fallocate); the raft log appends instead"
                );
                self.preallocate = 0;
                Ok(())
            }
        }
    }

    /// Queues a new hard state.
    pub fn set_hard_state(&mut self, hard_state: &HardState) {
        let bytes = hard_state.write_to_bytes().expect("hard state encodes");
        push_item(&mut self.pending, KIND_HARD_STATE, &bytes);
    }

    /// Queues a new membership.
    pub fn set_conf_state(&mut self, conf_state: &ConfState) {
        let bytes = conf_state.write_to_bytes().expect("conf state encodes");
        push_item(&mut self.pending, KIND_CONF_STATE, &bytes);
    }

    /// Queues entries (an entry at index i replaces the log from i on).
    pub fn append(&mut self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.entries_written += entries.len() as u64;
        push_item(&mut self.pending, KIND_ENTRIES, &encode_entries(entries));
    }

    /// Queues a snapshot (every entry before it is discarded on replay).
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        let bytes = snapshot.write_to_bytes().expect("snapshot encodes");
        push_item(&mut self.pending, KIND_SNAPSHOT, &bytes);
    }

    /// Whether something is queued that no sync has written yet (a commit
    /// index raft did not need durable at once rides with the next sync).
    #[must_use]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Entries written since the file was last rewritten.
    #[must_use]
    pub fn entries_written(&self) -> u64 {
        self.entries_written
    }

    /// Bytes of the file up to the end of its last batch (space reserved
    /// ahead not counted).
    #[must_use]
    pub fn file_len(&self) -> u64 {
        self.end
    }

    /// Records how long each [`RaftLog::sync`] from now on takes (the
    /// batch's write and the fsync) in `histogram`; this thread must be
    /// its only writer.
    pub fn time_syncs(&mut self, histogram: Arc<LatencyHistogram>) {
        self.sync_times = Some(histogram);
    }

    /// Writes everything queued as one batch and fsyncs it. Call before
    /// sending any message that depends on what was queued. After an error
    /// the log refuses further writes: the node must stop.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed {
                path: self.path.clone(),
            });
        }
        let started_ns = self.sync_times.as_ref().map(|_| clock::monotonic_ns());
        if self.failpoints {
            let stall = self.dir.join(FSYNC_STALL_FAILPOINT);
            while stall.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Failing here leaves a partial batch, or pages the kernel dropped,
        // at the end: only a restart's recovery may decide what stays.
        self.failed = true;
        if !self.pending.is_empty() {
            let batch = batch_record(self.seq_next, &self.pending);
            self.reserve(batch.len() as u64)?;
            self.file
                .write_all_at(&batch, self.end)
                .map_err(io_err("writing", &self.path))?;
            self.end += batch.len() as u64;
            self.allocated = self.allocated.max(self.end);
        }
        self.file
            .sync_data()
            .map_err(io_err("fsyncing", &self.path))?;
        self.failed = false;
        if let (Some(histogram), Some(started_ns)) = (&self.sync_times, started_ns) {
            histogram.record(clock::monotonic_ns().saturating_sub(started_ns), 1);
        }
        if !self.pending.is_empty() {
            match &mut self.compacting {
                Some(compacting) => compacting.batches.push(std::mem::take(&mut self.pending)),
                None => self.pending.clear(),
            }
            self.seq_next += 1;
        }
        Ok(())
    }

    /// Rewrites the file as header, then one batch of snapshot, hard state
    /// and `entries` (those after the snapshot), atomically: new file,
    /// fsync, rename, directory fsync. All of [`RaftLog::begin_compaction`],
    /// [`CompactionWriter::write`] and [`RaftLog::finish_compaction`] on
    /// this thread. Sync first.
    pub fn compact(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Result<(), LogError> {
        let writer = self.begin_compaction();
        let written = writer.write(snapshot, hard_state, entries)?;
        self.finish_compaction(written)
    }

    /// Starts a compaction whose new file another thread writes with the
    /// returned writer: a snapshot as of the state now, the hard state now
    /// and the entries after the snapshot (everything up to here is synced:
    /// sync first). Batches synced from now on go on being appended here
    /// and are also kept, so that [`RaftLog::finish_compaction`] can append
    /// them to the new file after its snapshot, in their order.
    ///
    /// # Panics
    ///
    /// If something is queued and not synced, or a compaction is in flight.
    pub fn begin_compaction(&mut self) -> CompactionWriter {
        assert!(self.pending.is_empty(), "sync before compacting");
        assert!(self.compacting.is_none(), "one compaction at a time");
        self.compacting = Some(Compacting {
            batches: Vec::new(),
            entries_at_begin: self.entries_written,
        });
        CompactionWriter {
            tmp: self.dir.join(LOG_TMP),
            cluster: self.cluster.clone(),
            node: self.node,
            zero_tail: self.zero_tail && self.preallocate > 0,
            grown: self.end.saturating_sub(self.rewritten_end),
        }
    }

    /// Whether a compaction was begun and not finished.
    #[must_use]
    pub fn compacting(&self) -> bool {
        self.compacting.is_some()
    }

    /// Puts a compaction's new file in the log's place: appends the batches
    /// synced since it began (renumbered from 2), fsyncs them, renames the
    /// file over the log and fsyncs the directory. Costs what those batches
    /// and three syncs cost, not the state's size. What is queued and not
    /// synced stays queued, for the new file.
    ///
    /// # Panics
    ///
    /// If no compaction was begun.
    pub fn finish_compaction(&mut self, written: CompactionWritten) -> Result<(), LogError> {
        let compacting = self.compacting.take().expect("a compaction was begun");
        if self.failed {
            return Err(LogError::Failed {
                path: self.path.clone(),
            });
        }
        // Failing after the rename leaves `file` on the replaced file.
        self.failed = true;
        let tmp = self.dir.join(LOG_TMP);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err("reopening", &tmp))?;
        let mut end = written.len;
        let mut seq = 2;
        if !compacting.batches.is_empty() {
            let mut bytes = Vec::new();
            for items in &compacting.batches {
                bytes.extend(batch_record(seq, items));
                seq += 1;
            }
            file.write_all_at(&bytes, end)
                .map_err(io_err("writing", &tmp))?;
            end += bytes.len() as u64;
            file.sync_data().map_err(io_err("fsyncing", &tmp))?;
        }
        durable::rename_synced(&tmp, &self.path)?;
        close_elsewhere(std::mem::replace(&mut self.file, file));
        self.end = end;
        self.allocated = end.max(written.reserved);
        self.rewritten_end = end;
        self.seq_next = seq;
        self.entries_written =
            written.entries + (self.entries_written - compacting.entries_at_begin);
        self.reserve(0)?;
        self.failed = false;
        Ok(())
    }

    /// Replaces the file with a version 2 header and `items` as batch 1,
    /// atomically: new file, fsync, rename, directory fsync.
    fn replace(&mut self, items: &[u8]) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed {
                path: self.path.clone(),
            });
        }
        // Failing after the rename leaves `file` on the replaced file.
        self.failed = true;
        let tmp = self.dir.join(LOG_TMP);
        let mut bytes = record(
            KIND_HEADER,
            &header_payload(MAGIC_V2, &self.cluster, self.node),
        );
        bytes.extend(batch_record(1, items));
        durable::replace(&self.path, &tmp, &bytes, 0o600)?;
        let replaced = std::mem::replace(
            &mut self.file,
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(io_err("reopening", &self.path))?,
        );
        close_elsewhere(replaced);
        self.end = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(io_err("seeking", &self.path))?;
        self.allocated = self.end;
        self.rewritten_end = self.end;
        self.seq_next = 2;
        self.reserve(0)?;
        self.failed = false;
        Ok(())
    }
}

/// Closes the replaced log file off the caller's thread: it is the file's
/// last descriptor and its name is gone, so closing it frees all its blocks
/// (the 4 MiB reserve and every batch since the last compaction), which
/// took 1.3 ms of the control thread in one `strace -T` here — a pause for
/// every grant waiting on the log. Its bytes are already replaced durably;
/// a close error could say nothing about them.
fn close_elsewhere(file: File) {
    crate::drop_elsewhere("palisade-close", file);
}

#[cfg(test)]
mod tests;

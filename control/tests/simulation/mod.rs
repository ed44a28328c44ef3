//! What both deterministic simulations share: a seeded random source and a
//! simulated disk that loses what was not synced when its node crashes.

// Each simulation uses what it needs.
#![allow(dead_code)]

use palisade_control::consensus::{Persist, Restored};
use palisade_control::raftlog::LogError;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

/// xorshift64*: small, fast, and the same on every machine.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A disk: what was synced survives a crash, what was only queued does not.
#[derive(Default, Clone)]
pub struct Disk {
    pub synced: Restored,
    pub queued: Vec<Op>,
    /// (term, vote) after every sync, for the S4 check.
    pub history: Vec<(u64, u64)>,
    /// The next sync fails (a disk error): the node must stop without
    /// sending anything that depended on it.
    pub fail_next_sync: bool,
    /// Entries written since the last compaction.
    pub entries_written: u64,
    /// A compaction whose file is being written: the batches synced since
    /// it began (the real log appends them to the new file), and
    /// `entries_written` then.
    pub compacting: Option<(Vec<Vec<Op>>, u64)>,
}

impl Disk {
    /// Compaction: the synced state becomes the snapshot, its hard state
    /// and the entries after it (the real log rewrites its file).
    pub fn compact(&mut self, snapshot: Snapshot, hard_state: HardState, rest: Vec<Entry>) {
        self.begin_compaction();
        self.finish_compaction(snapshot, hard_state, rest);
    }

    /// A compaction begins (its file is written elsewhere): from now on
    /// every synced batch is also kept for the new file.
    pub fn begin_compaction(&mut self) {
        assert!(self.queued.is_empty(), "sync before compacting");
        assert!(self.compacting.is_none(), "one compaction at a time");
        self.compacting = Some((Vec::new(), self.entries_written));
    }

    /// The new file takes the log's place: the snapshot, its hard state and
    /// the entries after it when the compaction began, then every batch
    /// synced since, replayed in order (what the real log's file holds).
    pub fn finish_compaction(
        &mut self,
        snapshot: Snapshot,
        hard_state: HardState,
        rest: Vec<Entry>,
    ) {
        let (batches, entries_at_begin) = self.compacting.take().expect("a compaction was begun");
        self.synced = Restored {
            hard_state,
            conf_state: snapshot.get_metadata().get_conf_state().clone(),
            snapshot: Some(snapshot),
            entries: rest,
        };
        self.entries_written =
            self.synced.entries.len() as u64 + (self.entries_written - entries_at_begin);
        for batch in batches {
            self.replay(batch);
        }
    }

    /// What a crash leaves: only what was synced (a compaction not yet in
    /// place leaves the old file).
    pub fn crash(&mut self) {
        self.queued.clear();
        self.compacting = None;
    }

    fn replay(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::Append(entries) => {
                    for entry in entries {
                        let first = self
                            .synced
                            .snapshot
                            .as_ref()
                            .map_or(1, |s| s.get_metadata().index + 1);
                        if entry.index < first {
                            continue;
                        }
                        let keep = (entry.index - first) as usize;
                        self.synced.entries.truncate(keep);
                        self.synced.entries.push(entry);
                    }
                }
                Op::Hard(hs) => self.synced.hard_state = hs,
                Op::Conf(cs) => self.synced.conf_state = cs,
                Op::Snap(snap) => {
                    let index = snap.get_metadata().index;
                    self.synced.entries.retain(|e| e.index > index);
                    self.synced.conf_state = snap.get_metadata().get_conf_state().clone();
                    self.synced.snapshot = Some(snap);
                }
            }
        }
    }
}

#[derive(Clone)]
pub enum Op {
    Append(Vec<Entry>),
    Hard(HardState),
    Conf(ConfState),
    Snap(Snapshot),
}

impl Persist for Disk {
    fn append(&mut self, entries: &[Entry]) {
        self.entries_written += entries.len() as u64;
        self.queued.push(Op::Append(entries.to_vec()));
    }
    fn set_hard_state(&mut self, hard_state: &HardState) {
        self.queued.push(Op::Hard(hard_state.clone()));
    }
    fn set_conf_state(&mut self, conf_state: &ConfState) {
        self.queued.push(Op::Conf(conf_state.clone()));
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        self.queued.push(Op::Snap(snapshot.clone()));
    }
    fn sync(&mut self) -> Result<(), LogError> {
        if std::mem::take(&mut self.fail_next_sync) {
            self.queued.clear();
            return Err(LogError::Io {
                action: "syncing",
                path: "simulated/raft.log".into(),
                source: std::io::Error::other("injected fsync failure"),
            });
        }
        let batch = std::mem::take(&mut self.queued);
        if let Some((batches, _)) = &mut self.compacting {
            if !batch.is_empty() {
                batches.push(batch.clone());
            }
        }
        self.replay(batch);
        self.history
            .push((self.synced.hard_state.term, self.synced.hard_state.vote));
        Ok(())
    }
}

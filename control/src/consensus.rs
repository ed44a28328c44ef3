//! The control plane's state machine, sans-IO: a raft `RawNode` plus the
//! rules that turn raft state into the data plane's `Leadership` word.
//!
//! The shell (threads, sockets, the log file) does four things: feed ticks
//! and peer messages in ([`ControlCore::tick`], [`ControlCore::step`]), call
//! [`ControlCore::poll_ready`] which persists through [`Persist`] and
//! returns the messages that may now be sent, send them, and publish
//! [`ControlCore::leadership`]. The deterministic simulation drives exactly
//! this type with a fake network, clocks and disk.
//!
//! Leadership rules (S1, S2):
//! - epoch = raft term; a node is *leader* for the data plane only in the
//!   raft Leader state, and *grant-capable* only after it committed an entry
//!   of its own term;
//! - grants start `grace` after the node became leader:
//!   `(max_ttl + lock_delay_max + election_timeout) × (1 + max_drift)`;
//!   except in term 1, the cluster's first election, where nobody can have
//!   granted before (a restart or a second election leads in a later term);
//! - grants stop at `grants_until`: every tick a leader asks a quorum to
//!   confirm it (raft's ReadIndex, which rides on a heartbeat). A round sent
//!   at time S and confirmed by a quorum lets it grant until
//!   `grants_until = S + W × (1 − max_drift)`, `W = (election_tick − 1) ×
//!   tick`, which is below `election_timeout` by construction. A leader that
//!   stops hearing from a quorum, or whose thread stalls (an fsync that
//!   hangs), stops granting when that passes.
//!
//! Why that is safe (S2). Any later leader L' was elected by a quorum that
//! shares a voter v with the quorum that confirmed round S; v acknowledged
//! the round (in the old term) before it voted in the newer term, so L'
//! became leader after S. The old leader's last grant or renewal was before
//! S + W, so its leases end before S + W + max_ttl (+ lock delay), all
//! measured with drift. L' grants from its election + grace, and grace =
//! (max_ttl + lock_delay_max + election_timeout) × (1 + max_drift) covers
//! that. The argument does not lean on followers refusing votes while they
//! hear from a leader (check-quorum's leader lease): a restarted follower
//! votes at once, and that is fine. `W < election_timeout` is tested in
//! `node::tests`.
//!
//! Replicated leases (`leases.replication = "quorum"`). The data plane
//! proposes every grant and release ([`ControlCore::propose`]); many share
//! one raft entry. Every node applies committed entries to its
//! [`LeaseState`]; the proposing core answers once [`ControlCore::take_notices`]
//! says the entry committed in the term it was proposed in. A new leader,
//! once it committed an entry of its own term (so it has applied every
//! committed grant), hands the shell a [`Takeover`]: reset the table, then
//! install each replicated lease with its expiry re-armed to
//! `takeover + (ttl + election_timeout) × (1 + d) / (1 − d)`, and serve at
//! once — no global grace. Why that is enough (S2), for a lease last served
//! (granted or renewed) by an earlier leader L at real time r: L served only
//! before its `grants_until`, so r < s + W, where s is the real send time of
//! L's last confirmed round; every later leader was elected after s (the
//! quorum argument above), so the takeover at real time t0 ≥ s, and
//! r < t0 + W. L's lease ends, in real time, before r + ttl / (1 − d). The
//! re-armed expiry, counted on the new leader's clock (rate ≤ 1 + d), lasts
//! at least (ttl + ET) / (1 − d) real time after t0 > r − W, and ET > W.
//! Renewals never promise more than the ttl the grant logged (the table
//! caps them), so `ttl` here is the lease's own. Lock delay is added on top
//! by the table, as for any expiry. The re-arm counts not from the takeover
//! but from the first moment this node knew of a leader in a term after the
//! one that last served the lease ([`ControlCore::rearm_from`]; a leader
//! logs its first renewal of a lease it took over), so a dead holder's
//! lease is not extended at every takeover. Without replication the
//! takeover only resets the table and the grace period above stands.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::storage::{MemStorage, RaftState};
use raft::{
    GetEntriesContext, ProgressState, RawNode, ReadOnlyOption, SnapshotStatus, StateRole, Storage,
    StorageError,
};

use palisade_dataplane::leadership::{LeadershipView, TIME_MAX_MS};
use palisade_dataplane::replica::{
    decode_batch, encode_batch, Command, LeaseName, LeaseState, Notice, Proposal, Record,
    GROUP_DEFAULT,
};
use palisade_proto::Role;

use crate::raftlog::LogError;

/// Where the core's state becomes durable.
pub trait Persist {
    /// Queues entries (an entry at index i replaces the log from i on).
    fn append(&mut self, entries: &[Entry]);
    /// Queues a hard state (term, vote, commit).
    fn set_hard_state(&mut self, hard_state: &HardState);
    /// Queues a membership change.
    fn set_conf_state(&mut self, conf_state: &ConfState);
    /// Queues a snapshot received from the leader.
    fn apply_snapshot(&mut self, snapshot: &Snapshot);
    /// Makes everything queued durable. Nothing that depends on it may be
    /// sent before this returns. The error keeps its cause (the failed
    /// write or fsync and its `io::Error`).
    fn sync(&mut self) -> Result<(), LogError>;
}

impl Persist for crate::raftlog::RaftLog {
    fn append(&mut self, entries: &[Entry]) {
        crate::raftlog::RaftLog::append(self, entries);
    }
    fn set_hard_state(&mut self, hard_state: &HardState) {
        crate::raftlog::RaftLog::set_hard_state(self, hard_state);
    }
    fn set_conf_state(&mut self, conf_state: &ConfState) {
        crate::raftlog::RaftLog::set_conf_state(self, conf_state);
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        crate::raftlog::RaftLog::apply_snapshot(self, snapshot);
    }
    fn sync(&mut self) -> Result<(), LogError> {
        crate::raftlog::RaftLog::sync(self)
    }
}

/// Fixed settings of one node's control plane.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's raft id (its `node.id`).
    pub id: u64,
    /// Voters when the log holds no membership yet (bootstrap).
    pub voters: Vec<u64>,
    /// Time between ticks (the heartbeat interval).
    pub tick_ms: u64,
    /// Ticks without a leader before an election (at least 3).
    pub election_ticks: usize,
    /// Grace before a new leader grants.
    pub grace_ms: u64,
    /// Clock rate drift bound, parts per million.
    pub max_drift_ppm: u32,
    /// Grants and releases are replicated (`leases.replication = "quorum"`):
    /// no grace period, leases re-armed at takeover.
    pub replicated: bool,
}

/// Why the core cannot continue. The node must stop.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// raft refused its own state (a bug or a corrupt log).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Persisting failed: nothing that depended on it was sent.
    #[error("persisting raft state: {0}")]
    Persist(#[source] LogError),
    /// A committed membership change cannot be decoded.
    #[error("membership change at index {index} cannot be read: {reason}")]
    ConfChange {
        /// Log index of the entry.
        index: u64,
        /// The decoder's complaint.
        reason: String,
    },
    /// The term no longer fits the 32-bit epoch of a token.
    #[error("raft term {0} exceeds the 32-bit epoch space")]
    TermOverflow(u64),
    /// A committed entry or a snapshot holds lease state this node cannot
    /// read (a newer version wrote it, or a bug): it must not guess.
    #[error("replicated lease state at index {index}: {reason}")]
    LeaseState {
        /// Log index (snapshot index for a snapshot).
        index: u64,
        /// What was wrong.
        reason: String,
    },
}

/// Raft's storage: raft-rs's in-memory log plus the latest snapshot *with*
/// the lease state in it (raft-rs's own `MemStorage::snapshot` builds one
/// with metadata only, which would hand a lagging follower an empty lease
/// table).
#[derive(Clone)]
pub struct LogStore {
    mem: MemStorage,
    snapshot: Arc<RwLock<Option<Snapshot>>>,
}

impl LogStore {
    fn new() -> LogStore {
        LogStore {
            mem: MemStorage::new(),
            snapshot: Arc::new(RwLock::new(None)),
        }
    }

    fn set_snapshot(&self, snapshot: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    /// The snapshot of the last compaction (it covers every entry this
    /// log no longer holds). Raft asks only for entries below the first
    /// index, so one is there whenever it asks.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let guard = self
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(snapshot) if snapshot.get_metadata().index >= request_index => {
                Ok(snapshot.clone())
            }
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

/// What a node that just became leader must do before it serves: reset
/// its lease table and install these leases (with replication), then
/// serve from `at_ms`.
///
/// It holds the replicated state as of the takeover (a clone that shares
/// its nodes: no name is copied) and what re-arming each lease needs, so
/// listing them costs nothing until they are walked ([`Takeover::leases`]).
#[derive(Debug, Clone)]
pub struct Takeover {
    /// The epoch it serves in.
    pub epoch: u32,
    /// When it took over (monotonic ms): grants from then on.
    pub at_ms: u64,
    adoptions: Adoptions,
}

#[derive(Debug, Clone)]
enum Adoptions {
    /// A leader's: the replicated state, re-armed as walked.
    State { state: LeaseState, rearm: Rearm },
    /// Given lease by lease ([`Takeover::listed`]).
    Listed(Vec<Adopted>),
}

impl Takeover {
    /// A takeover of exactly these leases (tests, tools).
    #[must_use]
    pub fn listed(epoch: u32, at_ms: u64, leases: Vec<Adopted>) -> Takeover {
        Takeover {
            epoch,
            at_ms,
            adoptions: Adoptions::Listed(leases),
        }
    }

    /// A takeover at `at_ms` of every lease of `state`, each re-armed from
    /// `at_ms` as if this node had seen no other leader (a restarted node's
    /// takeover): `(ttl + election_ms) × (1 + d) / (1 − d)` after it.
    #[must_use]
    pub fn of_state(
        epoch: u32,
        at_ms: u64,
        state: LeaseState,
        max_drift_ppm: u32,
        election_ms: u64,
    ) -> Takeover {
        Takeover {
            epoch,
            at_ms,
            adoptions: Adoptions::State {
                state,
                rearm: Rearm {
                    leader_seen: BTreeMap::new(),
                    max_drift_ppm,
                    election_ms,
                    takeover_ms: at_ms,
                },
            },
        }
    }

    /// Leases to install.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.adoptions {
            Adoptions::State { state, .. } => state.len(),
            Adoptions::Listed(leases) => leases.len(),
        }
    }

    /// No lease to install.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every lease to install, re-armed, with its name borrowed.
    pub fn leases(&self) -> Box<dyn Iterator<Item = AdoptedRef<'_>> + '_> {
        match &self.adoptions {
            Adoptions::State { state, rearm } => {
                Box::new(state.iter().map(move |(name, record)| AdoptedRef {
                    name,
                    record: *record,
                    expires_at_ms: rearm.expires_at_ms(record),
                }))
            }
            Adoptions::Listed(leases) => Box::new(leases.iter().map(|adopted| AdoptedRef {
                name: &adopted.name,
                record: adopted.record,
                expires_at_ms: adopted.expires_at_ms,
            })),
        }
    }

    /// The replicated state it installs, for the names `List` reports until
    /// their holders renew (`palisade_dataplane::names::AdoptedNames`).
    #[must_use]
    pub fn into_state(self) -> LeaseState {
        match self.adoptions {
            Adoptions::State { state, .. } => state,
            Adoptions::Listed(leases) => {
                let mut state = LeaseState::new();
                for adopted in leases {
                    let record = adopted.record;
                    let grant = Command::Grant {
                        name: adopted.name,
                        token: record.token,
                        holder: record.holder,
                        ttl_ms: record.ttl_ms,
                        lock_delay_ms: record.lock_delay_ms,
                    };
                    state.apply(&grant, record.served_term);
                }
                state
            }
        }
    }

    /// [`Takeover::leases`] with the names copied.
    #[must_use]
    pub fn adopted(&self) -> Vec<Adopted> {
        self.leases()
            .map(|a| Adopted {
                name: a.name.clone(),
                record: a.record,
                expires_at_ms: a.expires_at_ms,
            })
            .collect()
    }
}

/// One lease a new leader installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The lease's name.
    pub name: LeaseName,
    /// As the log holds it.
    pub record: Record,
    /// Its re-armed expiry (monotonic ms).
    pub expires_at_ms: u64,
}

/// [`Adopted`] with its name borrowed from the takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptedRef<'a> {
    /// The lease's name.
    pub name: &'a LeaseName,
    /// As the log holds it.
    pub record: Record,
    /// Its re-armed expiry (monotonic ms).
    pub expires_at_ms: u64,
}

/// How a takeover re-arms each replicated lease (the argument is in the
/// module doc), captured when it takes over.
#[derive(Debug, Clone)]
struct Rearm {
    /// The first moment this node knew of a leader, per term.
    leader_seen: BTreeMap<u64, u64>,
    max_drift_ppm: u32,
    election_ms: u64,
    takeover_ms: u64,
}

impl Rearm {
    /// See [`ControlCore::rearm_from`].
    fn from(&self, served_term: u64) -> u64 {
        self.leader_seen
            .range(served_term + 1..)
            .map(|(_, &seen)| seen)
            .min()
            .unwrap_or(self.takeover_ms)
            .min(self.takeover_ms)
    }

    /// See [`ControlCore::rearm_ms`].
    fn ms(&self, ttl_ms: u32) -> u64 {
        let ppm = u128::from(self.max_drift_ppm.min(999_999));
        let base = u128::from(ttl_ms) + u128::from(self.election_ms);
        let scaled = (base * (1_000_000 + ppm)).div_ceil(1_000_000 - ppm);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    fn expires_at_ms(&self, record: &Record) -> u64 {
        self.from(record.served_term)
            .saturating_add(self.ms(record.ttl_ms))
    }
}

/// The lease state a snapshot carries (group 0 only, today).
fn snapshot_leases(snapshot: &Snapshot) -> Result<LeaseState, CoreError> {
    let index = snapshot.get_metadata().index;
    let (group, state) =
        LeaseState::decode(snapshot.get_data()).map_err(|e| CoreError::LeaseState {
            index,
            reason: e.to_string(),
        })?;
    if group != GROUP_DEFAULT {
        return Err(CoreError::LeaseState {
            index,
            reason: format!("snapshot of raft group {group}; this node serves group 0"),
        });
    }
    Ok(state)
}

/// Proposals in one raft entry awaiting its commit.
#[derive(Debug)]
struct Inflight {
    index: u64,
    term: u64,
    tags: Vec<u64>,
}

/// The largest entry a proposal batch makes: raft sends at most 1 MiB per
/// message (`max_size_per_msg`), and several entries share a message.
pub const BATCH_BYTES_MAX: usize = 256 << 10;

/// The state a log held at start.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Last hard state.
    pub hard_state: HardState,
    /// Membership (empty: bootstrap from the config's voters).
    pub conf_state: ConfState,
    /// Latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Entries after it.
    pub entries: Vec<Entry>,
}

impl From<crate::raftlog::Recovered> for Restored {
    fn from(r: crate::raftlog::Recovered) -> Restored {
        Restored {
            hard_state: r.hard_state,
            conf_state: r.conf_state,
            snapshot: r.snapshot,
            entries: r.entries,
        }
    }
}

/// One node's control plane state machine.
pub struct ControlCore {
    raw: RawNode<LogStore>,
    config: CoreConfig,
    /// Term in which this node most recently became leader, and when.
    leader_term: u64,
    leader_since_ms: u64,
    /// Quorum confirmation: until when grants are safe.
    grants_until_ms: u64,
    /// Outstanding confirmation rounds: request id to send time.
    rounds: BTreeMap<u64, u64>,
    next_round: u64,
    /// Overrides raft's own random election timeout (simulation only).
    election_jitter: Option<Box<dyn FnMut(usize, usize) -> usize + Send>>,
    last_term: u64,
    last_state: StateRole,
    /// The term leading without grace: the cluster's first term.
    graceless_term: Option<u64>,
    /// Elections this node started and won (metrics).
    elections: Elections,
    /// The replicated lease state, as of the applied index.
    leases: LeaseState,
    /// Entries proposed in this leadership, in index order.
    inflight: VecDeque<Inflight>,
    /// What became of proposals, for the shell to hand to the cores.
    notices: Vec<Notice>,
    /// The term whose takeover was handed out (0: none yet), and when.
    taken_over_term: u64,
    serving_since_ms: u64,
    /// The term whose takeover was begun and is being installed
    /// ([`ControlCore::begin_takeover`]; 0: none).
    takeover_begun_term: u64,
    /// Entries at or below this index were committed before a restart:
    /// their membership changes are already in the conf state.
    replayed_commit: u64,
    /// The term in which this node last proposed a replication marker.
    marker_term: u64,
    /// When this node first knew of a leader in each recent term (its own
    /// leadership included), for re-arming leases from the first leader
    /// change after they were last served.
    leader_seen: BTreeMap<u64, u64>,
    /// A leader's followers waiting for a snapshot: the snapshot's index
    /// and since when (ms). See [`ControlCore::retry_lost_snapshots`].
    snapshot_waits: BTreeMap<u64, (u64, u64)>,
    snapshots_resent: u64,
    /// The lease state of a snapshot from the leader, decoded ahead on
    /// another thread ([`ControlCore::step_decoded`]), for the install.
    decoded: Option<DecodedSnapshot>,
}

/// A snapshot's lease state, decoded off the control thread
/// ([`DecodedSnapshot::of`]): a follower that is sent one decodes the
/// whole replicated state, which takes tens of ms for the default table
/// and most of a second at its cap.
#[derive(Debug)]
pub struct DecodedSnapshot {
    index: u64,
    term: u64,
    state: Result<LeaseState, CoreError>,
}

impl DecodedSnapshot {
    /// Decodes the lease state `snapshot` carries (or why it cannot be).
    #[must_use]
    pub fn of(snapshot: &Snapshot) -> DecodedSnapshot {
        let metadata = snapshot.get_metadata();
        DecodedSnapshot {
            index: metadata.index,
            term: metadata.term,
            state: snapshot_leases(snapshot),
        }
    }

    /// Whether it is the state of `snapshot`.
    fn is_of(&self, snapshot: &Snapshot) -> bool {
        let metadata = snapshot.get_metadata();
        (self.index, self.term) == (metadata.index, metadata.term)
    }
}

/// How long a leader waits for a follower to take a snapshot before it
/// counts the snapshot lost and sends it again, besides
/// [`SNAPSHOT_BYTES_PER_MS`] for its size.
const SNAPSHOT_PATIENCE_MS: u64 = 5_000;
/// The slowest transfer a snapshot is given time for: 8 MB/s.
const SNAPSHOT_BYTES_PER_MS: u64 = 8_000;

/// Terms whose first-seen leader time a node remembers. Forgetting old
/// ones only makes a re-arm start later (safe).
const LEADER_SEEN_MAX: usize = 1024;

/// Elections one node took part in as a candidate, counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elections {
    /// Times it became a candidate in a new term (pre-votes not counted:
    /// they change nothing).
    pub started: u64,
    /// Times it became leader.
    pub won: u64,
}

impl std::fmt::Debug for ControlCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCore")
            .field("id", &self.config.id)
            .field("term", &self.raw.raft.term)
            .field("state", &self.raw.raft.state)
            .finish_non_exhaustive()
    }
}

/// Outstanding confirmation rounds kept at most (older ones are dropped:
/// their confirmation would be stale anyway).
const ROUNDS_MAX: usize = 64;

/// Kinds of messages a peer's raft sends over the wire. Everything else
/// (proposals, transfer requests, read-index forwarding, local kinds) is
/// refused.
fn peer_kind(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgAppend
            | MessageType::MsgAppendResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgSnapshot
            | MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
            // A leader handing over (a used-up epoch): the follower
            // campaigns at once.
            | MessageType::MsgTimeoutNow
    )
}

/// The range raft draws a follower's election timeout from, in ticks:
/// `[election_ticks + 1, 2 × election_ticks)` rather than raft-rs's default
/// `[election_ticks, 2 × election_ticks)`. Every follower ignores
/// (pre-)votes for `election_ticks` after it last heard the leader
/// (check-quorum); followers tick in different phases, so one that drew
/// exactly `election_ticks` usually asked a peer still one tick short of
/// that, was ignored, and waited a whole timeout more (a dead leader's
/// failover took up to ~500 ms longer in about one kill in six). One tick
/// later, every follower that heard the same heartbeat is past its lease.
/// Only when a campaign starts changes; the lease, pre-vote and the
/// confirmation window are as before.
fn election_timeout_range(election_ticks: usize) -> (usize, usize) {
    (election_ticks + 1, 2 * election_ticks)
}

/// The term of a cluster's first election: nobody led before it.
const FIRST_TERM: u64 = 1;

impl ControlCore {
    /// Builds the core from what the log held. `now_ms` is the node's
    /// monotonic clock.
    pub fn new(config: CoreConfig, restored: Restored) -> Result<ControlCore, CoreError> {
        assert!(
            config.election_ticks >= 3,
            "election needs at least 3 ticks"
        );
        assert!(config.tick_ms >= 1);
        let storage = LogStore::new();
        let mut leases = LeaseState::new();
        let mut applied = 0;
        {
            let mut core = storage.mem.wl();
            if let Some(snapshot) = restored.snapshot.clone() {
                let index = snapshot.get_metadata().index;
                let state = snapshot_leases(&snapshot)?;
                leases = state;
                applied = index;
                core.apply_snapshot(snapshot.clone())?;
                storage.set_snapshot(snapshot);
            }
            let conf_state = if restored.conf_state == ConfState::default() {
                ConfState::from((config.voters.clone(), vec![]))
            } else {
                restored.conf_state.clone()
            };
            core.set_conf_state(conf_state);
            if !restored.entries.is_empty() {
                core.append(&restored.entries)?;
            }
            core.set_hardstate(restored.hard_state.clone());
        }
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            min_election_tick: election_timeout_range(config.election_ticks).0,
            max_election_tick: election_timeout_range(config.election_ticks).1,
            heartbeat_tick: 1,
            // Committed entries after the snapshot are applied again: they
            // rebuild the lease state (membership is in the conf state).
            applied,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let logger = crate::logging::raft_logger();
        let raw = RawNode::new(&raft_config, storage, &logger)?;
        let term = raw.raft.term;
        Ok(ControlCore {
            raw,
            config,
            leader_term: 0,
            leader_since_ms: 0,
            grants_until_ms: 0,
            rounds: BTreeMap::new(),
            next_round: 1,
            election_jitter: None,
            last_term: term,
            last_state: StateRole::Follower,
            graceless_term: None,
            elections: Elections::default(),
            leases,
            inflight: VecDeque::new(),
            notices: Vec::new(),
            taken_over_term: 0,
            takeover_begun_term: 0,
            serving_since_ms: 0,
            replayed_commit: restored.hard_state.commit,
            marker_term: 0,
            leader_seen: BTreeMap::new(),
            snapshot_waits: BTreeMap::new(),
            snapshots_resent: 0,
            decoded: None,
        })
    }

    /// Simulation: choose election timeouts with `jitter(min, max)` instead
    /// of raft's thread-local RNG, so a seed replays exactly.
    pub fn set_election_jitter(&mut self, jitter: Box<dyn FnMut(usize, usize) -> usize + Send>) {
        self.election_jitter = Some(jitter);
        self.rejitter();
    }

    fn rejitter(&mut self) {
        if let Some(jitter) = self.election_jitter.as_mut() {
            let (min, max) = election_timeout_range(self.config.election_ticks);
            let t = jitter(min, max);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    /// After every raft call: re-draw the election timeout when raft reset
    /// it (a term or role change), and track when leadership began.
    fn observe(&mut self, now_ms: u64) {
        let raft = &self.raw.raft;
        if raft.leader_id != raft::INVALID_ID && !self.leader_seen.contains_key(&raft.term) {
            self.leader_seen.insert(raft.term, now_ms);
            while self.leader_seen.len() > LEADER_SEEN_MAX {
                self.leader_seen.pop_first();
            }
        }
        let raft = &self.raw.raft;
        let (term, state) = (raft.term, raft.state);
        if term != self.last_term || state != self.last_state {
            if state == StateRole::Candidate {
                self.elections.started += 1;
            }
            if state == StateRole::Leader
                && (term != self.leader_term || self.last_state != StateRole::Leader)
            {
                // A cluster of one campaigns and wins in one raft call:
                // the candidate state is never seen, the election was.
                if self.last_state != StateRole::Candidate {
                    self.elections.started += 1;
                }
                self.elections.won += 1;
                if term == FIRST_TERM {
                    // Nobody has led before: no lease of this cluster can
                    // be outstanding anywhere, so no grace is owed. A
                    // restart, a second election or an upgraded epoch file
                    // all lead in a later term.
                    self.graceless_term = Some(term);
                }
                self.leader_term = term;
                self.leader_since_ms = now_ms;
                self.grants_until_ms = 0;
                self.rounds.clear();
            }
            if state != StateRole::Leader {
                self.grants_until_ms = 0;
                self.rounds.clear();
            }
            if state != StateRole::Leader || term != self.taken_over_term {
                // This leadership has ended: nothing it proposed will be
                // answered by it (a later leader may still commit it; the
                // client's retry with the same holder id finds out).
                self.fail_inflight();
                self.taken_over_term = 0;
            }
            self.last_term = term;
            self.last_state = state;
            self.rejitter();
        }
    }

    /// One tick of the node's clock (every `tick_ms`). A leader also starts
    /// a quorum confirmation round.
    pub fn tick(&mut self, now_ms: u64) {
        self.raw.tick();
        self.observe(now_ms);
        self.request_confirmation(now_ms);
        self.retry_lost_snapshots(now_ms);
    }

    /// A leader sends a follower that is behind its compacted log a
    /// snapshot and then sends it nothing more until the follower answers
    /// from the snapshot's index or the snapshot is reported failed (raft-rs
    /// waits for `report_snapshot`). The peer links drop messages (a link
    /// that fails mid-frame, a full backlog) and say nothing, so a lost
    /// snapshot left that follower behind for the whole term: one failure
    /// more and the cluster had no quorum. A follower still waiting after
    /// [`SNAPSHOT_PATIENCE_MS`] plus the time to move the snapshot at
    /// [`SNAPSHOT_BYTES_PER_MS`] is reported failed; raft then probes it
    /// again at the next heartbeat and sends the snapshot anew.
    fn retry_lost_snapshots(&mut self, now_ms: u64) {
        if self.raw.raft.state != StateRole::Leader {
            self.snapshot_waits.clear();
            return;
        }
        let mut waits = BTreeMap::new();
        for (&id, progress) in self.raw.raft.prs().iter() {
            if progress.state == ProgressState::Snapshot {
                let index = progress.pending_snapshot;
                let since = match self.snapshot_waits.get(&id) {
                    Some(&(waited, since)) if waited == index => since,
                    _ => now_ms,
                };
                waits.insert(id, (index, since));
            }
        }
        self.snapshot_waits = waits;
        if self.snapshot_waits.is_empty() {
            return;
        }
        let size = self
            .raw
            .raft
            .raft_log
            .store
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |s| s.get_data().len() as u64);
        let patience = SNAPSHOT_PATIENCE_MS + size / SNAPSHOT_BYTES_PER_MS;
        let lost: Vec<u64> = self
            .snapshot_waits
            .iter()
            .filter(|(_, &(_, since))| now_ms.saturating_sub(since) >= patience)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            self.snapshot_waits.remove(&id);
            self.snapshots_resent += 1;
            self.raw.report_snapshot(id, SnapshotStatus::Failure);
        }
    }

    /// Snapshots counted lost and sent again, since start (the shell logs
    /// each).
    #[must_use]
    pub fn snapshots_resent(&self) -> u64 {
        self.snapshots_resent
    }

    /// Starts an election now (a single-node cluster at start: it need not
    /// wait an election timeout to find out nobody else is there).
    pub fn campaign(&mut self, now_ms: u64) -> Result<(), CoreError> {
        self.raw.campaign()?;
        self.observe(now_ms);
        Ok(())
    }

    /// A leader asks a quorum to confirm its leadership as of `now_ms`
    /// (raft ReadIndex on a heartbeat). Called on every tick.
    pub fn request_confirmation(&mut self, now_ms: u64) {
        if self.raw.raft.state == StateRole::Leader && self.raw.raft.commit_to_current_term() {
            let round = self.next_round;
            self.next_round += 1;
            self.rounds.insert(round, now_ms);
            while self.rounds.len() > ROUNDS_MAX {
                self.rounds.pop_first();
            }
            self.raw.read_index(round.to_le_bytes().to_vec());
            self.observe(now_ms);
        }
    }

    /// A message from a peer. Messages not addressed to this node, from
    /// nodes outside the membership, of a kind peers never send (proposals,
    /// leadership transfers, local messages), or that raft would treat as a
    /// fatal inconsistency (a heartbeat committing past this log) are
    /// dropped: a peer's mistake must not stop this node.
    pub fn step(&mut self, message: Message, now_ms: u64) -> Result<(), CoreError> {
        if message.to != self.config.id || !peer_kind(message.get_msg_type()) {
            return Ok(());
        }
        if message.get_msg_type() == MessageType::MsgHeartbeat
            && message.term >= self.raw.raft.term
            && message.commit > self.raw.raft.raft_log.last_index()
        {
            return Ok(());
        }
        let from = message.from;
        let known = self
            .raw
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .any(|id| id == from);
        if !known {
            return Ok(());
        }
        match self.raw.step(message) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) => {}
            Err(raft::Error::StepLocalMsg) => {}
            Err(e) => return Err(e.into()),
        }
        self.observe(now_ms);
        Ok(())
    }

    /// [`ControlCore::step`] of a snapshot message whose lease state was
    /// decoded ahead (`decoded`, of the message's snapshot): the install
    /// that follows takes it instead of decoding on this thread (if it is
    /// of the snapshot installed: same index and term). Call
    /// [`ControlCore::poll_ready`] before stepping anything else; a state
    /// it did not install is dropped there.
    pub fn step_decoded(
        &mut self,
        message: Message,
        decoded: DecodedSnapshot,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        self.decoded = Some(decoded);
        self.step(message, now_ms)
    }

    /// Persists what raft produced and returns the messages that may now be
    /// sent (S4: only after `persist.sync()` returned). A leader's appends
    /// go to `send_now` first, before its own fsync: the leader writes its
    /// log in parallel with replication (raft thesis §10.2.1; raft counts
    /// the leader's own entries only once they are persisted). Nothing is
    /// fsynced when raft needs nothing durable (a commit index or messages
    /// only): what is queued rides with the next sync.
    pub fn poll_ready(
        &mut self,
        persist: &mut dyn Persist,
        now_ms: u64,
        send_now: &mut dyn FnMut(Vec<Message>),
    ) -> Result<Vec<Message>, CoreError> {
        self.poll_ready_with(persist, now_ms, send_now, None)
    }

    /// [`ControlCore::poll_ready`], handing the notices of entries that
    /// were already committed to `before_sync` before this node's own
    /// fsync of the new entries. raft hands out only entries that are
    /// committed *and* persisted here (`min(committed, persisted)`), so
    /// their outcome is final: answering them need not wait for the sync
    /// of later entries (without this, every answer paid one more fsync).
    pub fn poll_ready_with(
        &mut self,
        persist: &mut dyn Persist,
        now_ms: u64,
        send_now: &mut dyn FnMut(Vec<Message>),
        before_sync: Option<&mut dyn FnMut(Vec<Notice>)>,
    ) -> Result<Vec<Message>, CoreError> {
        let mut out = Vec::new();
        // A state decoded ahead serves this ready's snapshot or none: one
        // for a snapshot raft did not take (stale, or of an old term) is
        // not kept.
        let decoded = self.decoded.take();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        let early = ready.take_messages();
        if !early.is_empty() {
            send_now(early);
        }
        let store = self.raw.raft.raft_log.store.clone();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot, decoded)?;
            persist.apply_snapshot(&snapshot);
            store.mem.wl().apply_snapshot(snapshot.clone())?;
            store.set_snapshot(snapshot);
        }
        // Committed entries are persisted here already (see above): apply
        // them first, so their answers leave before the sync below.
        let committed = ready.take_committed_entries();
        self.apply_committed(persist, committed)?;
        if let Some(before_sync) = before_sync {
            let notices = std::mem::take(&mut self.notices);
            if !notices.is_empty() {
                before_sync(notices);
            }
        }
        if !ready.entries().is_empty() {
            persist.append(ready.entries());
            store.mem.wl().append(ready.entries())?;
        }
        if let Some(hard_state) = ready.hs() {
            persist.set_hard_state(hard_state);
            store.mem.wl().set_hardstate(hard_state.clone());
        }
        if ready.must_sync() {
            persist.sync().map_err(CoreError::Persist)?;
        }
        out.extend(ready.take_persisted_messages());
        for state in ready.take_read_states() {
            self.confirm(&state.request_ctx);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            store.mem.wl().mut_hard_state().set_commit(commit);
        }
        out.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_committed(persist, committed)?;
        self.raw.advance_apply();
        self.observe(now_ms);
        Ok(out)
    }

    /// A snapshot from the leader replaces the lease state: `decoded`, if it
    /// is this snapshot's state decoded ahead, or the snapshot decoded here.
    fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        decoded: Option<DecodedSnapshot>,
    ) -> Result<(), CoreError> {
        self.leases = match decoded {
            Some(decoded) if decoded.is_of(snapshot) => decoded.state?,
            _ => snapshot_leases(snapshot)?,
        };
        Ok(())
    }

    /// Proposals from the data plane: those made in this node's current,
    /// serving leadership go into raft entries (as many as fit a batch each);
    /// the rest are refused at once (a notice that they will not commit).
    pub fn propose(&mut self, proposals: Vec<Proposal>) {
        let serving = self.serving();
        let term = self.raw.raft.term;
        let mut batch: Vec<Command> = Vec::new();
        let mut tags: Vec<u64> = Vec::new();
        let mut bytes = 0;
        for proposal in proposals {
            if !serving || u64::from(proposal.epoch) != term {
                self.notices.push(Notice {
                    tag: proposal.tag,
                    committed: false,
                });
                continue;
            }
            bytes +=
                32 + proposal.command.name().tenant.len() + proposal.command.name().resource.len();
            batch.push(proposal.command);
            tags.push(proposal.tag);
            if bytes >= BATCH_BYTES_MAX {
                self.propose_batch(std::mem::take(&mut batch), std::mem::take(&mut tags));
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.propose_batch(batch, tags);
        }
    }

    fn propose_batch(&mut self, batch: Vec<Command>, tags: Vec<u64>) {
        let data = encode_batch(GROUP_DEFAULT, &batch);
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                debug_assert!(self.inflight.back().is_none_or(|i| i.index < index));
                self.inflight.push_back(Inflight { index, term, tags });
            }
            Err(_) => {
                // Dropped (a leadership transfer under way): never logged.
                self.notices.extend(tags.into_iter().map(|tag| Notice {
                    tag,
                    committed: false,
                }));
            }
        }
    }

    fn fail_inflight(&mut self) {
        for inflight in self.inflight.drain(..) {
            self.notices
                .extend(inflight.tags.into_iter().map(|tag| Notice {
                    tag,
                    committed: false,
                }));
        }
    }

    /// What became of proposals since the last call. Call after
    /// `propose` and `poll_ready`; the shell hands each notice to the core
    /// named in its tag.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Whether this node leads, has taken over (its table holds the
    /// replicated state) and so may propose.
    #[must_use]
    pub fn serving(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
            && self.taken_over_term == self.raw.raft.term
            && self.taken_over_term != 0
    }

    /// The replicated lease state.
    #[must_use]
    pub fn leases(&self) -> &LeaseState {
        &self.leases
    }

    /// A leader whose term has committed an entry (so every earlier
    /// committed grant is applied) takes over once: the shell resets its
    /// table, installs the returned leases and publishes; grants start at
    /// once (with replication) or after the grace period (without).
    /// [`ControlCore::begin_takeover`] and
    /// [`ControlCore::takeover_installed`] in one step.
    pub fn poll_takeover(&mut self, now_ms: u64) -> Option<Takeover> {
        let takeover = self.begin_takeover(now_ms)?;
        let installed = self.takeover_installed(&takeover);
        debug_assert!(installed, "nothing ran between begin and installed");
        Some(takeover)
    }

    /// The takeover [`ControlCore::poll_takeover`] hands out, without
    /// serving yet: this leadership serves (and its view grants) only once
    /// the shell reports the table installed with
    /// [`ControlCore::takeover_installed`]. Handed out once per term.
    pub fn begin_takeover(&mut self, now_ms: u64) -> Option<Takeover> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || raft.term != self.leader_term
            || !raft.commit_to_current_term()
            || self.taken_over_term == raft.term
            || self.takeover_begun_term == raft.term
            || raft.raft_log.applied < raft.raft_log.committed
        {
            return None;
        }
        let epoch = u32::try_from(raft.term).ok()?;
        if !self.config.replicated && self.leases.replicated_since().is_some() {
            // Without replication this leader will grant leases the log
            // never sees: first tell later leaders (with replication) that
            // the log no longer holds every live lease, and serve only once
            // that is committed.
            self.propose_marker(false);
            return None;
        }
        self.takeover_begun_term = raft.term;
        let state = if self.config.replicated {
            self.leases.clone()
        } else {
            LeaseState::new()
        };
        Some(Takeover {
            epoch,
            at_ms: now_ms,
            adoptions: Adoptions::State {
                state,
                rearm: self.rearm(now_ms),
            },
        })
    }

    /// The shell installed `takeover` into its table: this leadership
    /// serves from the takeover's time on. False (and nothing changes) if
    /// the leadership it was begun for has ended meanwhile.
    pub fn takeover_installed(&mut self, takeover: &Takeover) -> bool {
        let raft = &self.raw.raft;
        let term = u64::from(takeover.epoch);
        if raft.state != StateRole::Leader
            || raft.term != term
            || self.takeover_begun_term != term
            || self.taken_over_term == term
        {
            return false;
        }
        self.taken_over_term = term;
        self.serving_since_ms = takeover.at_ms;
        true
    }

    /// Housekeeping of a serving leader, once per turn: with replication,
    /// when the log does not yet vouch for every live lease (a fresh
    /// cluster, an upgrade, or a leader without replication before), writes
    /// the marker that says it does, once this leader's grace period has
    /// passed (every lease granted outside the log has run out by then).
    pub fn maintain(&mut self, now_ms: u64) {
        if !self.config.replicated
            || !self.serving()
            || self.leases.replicated_since().is_some()
            || now_ms < self.grace_from_ms()
        {
            return;
        }
        self.propose_marker(true);
    }

    /// Proposes a replication marker, once per term.
    fn propose_marker(&mut self, on: bool) {
        if self.marker_term == self.raw.raft.term {
            return;
        }
        self.marker_term = self.raw.raft.term;
        self.propose_batch(vec![Command::Replication { on }], Vec::new());
    }

    /// When this leadership may grant if the log does not vouch for every
    /// live lease: after the grace period, or at once in the cluster's
    /// first term.
    fn grace_from_ms(&self) -> u64 {
        if self.graceless_term == Some(self.raw.raft.term) {
            self.leader_since_ms
        } else {
            (self.leader_since_ms + self.config.grace_ms).min(TIME_MAX_MS)
        }
    }

    /// A resource used up its epoch's 2^32 tokens: move to a new term, so
    /// that grants continue in a new epoch (S1), rather than refusing the
    /// resource until the next election. Alone, the node steps down and
    /// campaigns at once; in a cluster it hands leadership to the follower
    /// with the most of the log (a raft leadership transfer: the follower
    /// campaigns at once, without waiting out an election timeout). With
    /// replication every lease survives the change like any failover.
    pub fn force_new_term(&mut self, now_ms: u64) -> Result<(), CoreError> {
        if self.raw.raft.state != StateRole::Leader {
            return Ok(());
        }
        let me = self.config.id;
        let best = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        match best {
            Some(follower) => self.raw.transfer_leader(follower),
            None => {
                let term = self.raw.raft.term;
                self.raw.raft.become_follower(term, raft::INVALID_ID);
                self.observe(now_ms);
                self.raw.campaign()?;
            }
        }
        self.observe(now_ms);
        Ok(())
    }

    /// When the re-arm of a lease last served in `served_term` may start:
    /// the first moment this node knew of a leader in any later term (that
    /// leader was elected after the last round that confirmed the server of
    /// `served_term`, which is all the argument in the module doc needs),
    /// else the takeover itself. A leader of a later term serves the lease
    /// only after logging it (its first renewal, or a grant), which moves
    /// `served_term`; so a dead holder's lease is re-armed from the first
    /// leader change after it was last served, not again at every takeover
    /// (etcd#9888).
    pub fn rearm_from(&self, served_term: u64, takeover_ms: u64) -> u64 {
        self.rearm(takeover_ms).from(served_term)
    }

    /// How long after a takeover a replicated lease of `ttl_ms` stays
    /// held: `(ttl + election_timeout) × (1 + d) / (1 − d)`, rounded up
    /// (the argument is in the module doc).
    #[must_use]
    pub fn rearm_ms(&self, ttl_ms: u32) -> u64 {
        self.rearm(0).ms(ttl_ms)
    }

    /// What re-arming needs, for a takeover at `takeover_ms`.
    fn rearm(&self, takeover_ms: u64) -> Rearm {
        Rearm {
            leader_seen: self.leader_seen.clone(),
            max_drift_ppm: self.config.max_drift_ppm,
            election_ms: self.config.election_ticks as u64 * self.config.tick_ms,
            takeover_ms,
        }
    }

    fn confirm(&mut self, context: &[u8]) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else {
            return;
        };
        let round = u64::from_le_bytes(bytes);
        let Some(&sent_ms) = self.rounds.get(&round) else {
            return;
        };
        // Rounds confirm in order; older ones are covered by this one.
        self.rounds.retain(|&r, _| r > round);
        let ppm = u64::from(self.config.max_drift_ppm.min(999_999));
        let window = (self.config.election_ticks as u64 - 1) * self.config.tick_ms;
        let until = sent_ms + window * (1_000_000 - ppm) / 1_000_000;
        self.grants_until_ms = self.grants_until_ms.max(until);
    }

    fn apply_committed(
        &mut self,
        persist: &mut dyn Persist,
        entries: Vec<Entry>,
    ) -> Result<(), CoreError> {
        for entry in entries {
            self.answer_committed(&entry);
            let replayed = entry.index <= self.replayed_commit;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let (group, commands) =
                        decode_batch(&entry.data).map_err(|e| CoreError::LeaseState {
                            index: entry.index,
                            reason: e.to_string(),
                        })?;
                    if group != GROUP_DEFAULT {
                        return Err(CoreError::LeaseState {
                            index: entry.index,
                            reason: format!("entry of raft group {group}"),
                        });
                    }
                    for command in &commands {
                        self.leases.apply(command, entry.term);
                    }
                }
                // Applied before the restart: the conf state has it.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 if replayed => {}
                EntryType::EntryConfChange => {
                    let change =
                        raft::eraftpb::ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                            CoreError::ConfChange {
                                index: entry.index,
                                reason: e.to_string(),
                            }
                        })?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    persist.set_conf_state(&conf_state);
                    self.raw
                        .raft
                        .raft_log
                        .store
                        .mem
                        .wl()
                        .set_conf_state(conf_state);
                }
                EntryType::EntryConfChangeV2 => {
                    let change = raft::eraftpb::ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| CoreError::ConfChange {
                            index: entry.index,
                            reason: e.to_string(),
                        })?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    persist.set_conf_state(&conf_state);
                    self.raw
                        .raft
                        .raft_log
                        .store
                        .mem
                        .wl()
                        .set_conf_state(conf_state);
                }
            }
        }
        Ok(())
    }

    /// Proposals waiting for the entry at `entry.index`: committed if the
    /// entry is the one proposed (same term), else overwritten by another
    /// leader's log and never to commit.
    fn answer_committed(&mut self, entry: &Entry) {
        while let Some(front) = self.inflight.front() {
            if front.index > entry.index {
                return;
            }
            let inflight = self.inflight.pop_front().expect("front exists");
            let committed = inflight.index == entry.index && inflight.term == entry.term;
            self.notices.extend(
                inflight
                    .tags
                    .into_iter()
                    .map(|tag| Notice { tag, committed }),
            );
        }
    }

    /// Elections this node started and won since it started.
    #[must_use]
    pub fn elections(&self) -> Elections {
        self.elections
    }

    /// The raft term.
    #[must_use]
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The raft role.
    #[must_use]
    pub fn raft_state(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The election timeout raft drew for this term and role, in ticks
    /// (in `[election_ticks, 2 × election_ticks)`).
    #[must_use]
    pub fn election_timeout_drawn(&self) -> usize {
        self.raw.raft.randomized_election_timeout()
    }

    /// The node this one votes for in the current term (0 = none).
    #[must_use]
    pub fn vote(&self) -> u64 {
        self.raw.raft.vote
    }

    /// Whether the leader has committed an entry of its own term.
    #[must_use]
    pub fn committed_in_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    /// The last index in the log.
    #[must_use]
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The commit index.
    #[must_use]
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// What the data plane should see now.
    pub fn leadership(&self) -> Result<LeadershipView, CoreError> {
        let raft = &self.raw.raft;
        let epoch = u32::try_from(raft.term).map_err(|_| CoreError::TermOverflow(raft.term))?;
        let self_id = u16::try_from(self.config.id).expect("node ids fit u16");
        let view = match raft.state {
            StateRole::Leader => {
                // Serving needs the takeover done: the table reset (and
                // the replicated leases installed).
                let capable = raft.commit_to_current_term()
                    && raft.term == self.leader_term
                    && self.taken_over_term == raft.term;
                LeadershipView {
                    epoch,
                    role: Role::Leader,
                    leader_id: self_id,
                    grants_from_ms: if self.config.replicated
                        && self.leases.replicated_since().is_some()
                    {
                        // Each lease a previous leader granted is in the
                        // table, re-armed: no global grace.
                        self.serving_since_ms.max(self.leader_since_ms)
                    } else {
                        self.grace_from_ms()
                    },
                    grants_until_ms: if capable {
                        self.grants_until_ms.min(TIME_MAX_MS)
                    } else {
                        0
                    },
                }
            }
            StateRole::Follower => LeadershipView {
                epoch,
                role: Role::Follower,
                leader_id: u16::try_from(raft.leader_id).unwrap_or(0),
                grants_from_ms: TIME_MAX_MS,
                grants_until_ms: 0,
            },
            StateRole::Candidate | StateRole::PreCandidate => LeadershipView {
                epoch,
                role: Role::Candidate,
                leader_id: 0,
                grants_from_ms: TIME_MAX_MS,
                grants_until_ms: 0,
            },
        };
        Ok(view)
    }

    /// Compaction, all at once: [`ControlCore::compaction_start`], the
    /// snapshot encoded here, [`ControlCore::compaction_done`]. Returns the
    /// snapshot, hard state and remaining entries to rewrite the file with.
    /// The node encodes on another thread instead; tests and the
    /// simulation use this.
    pub fn compaction(
        &mut self,
        written: u64,
        threshold: u64,
    ) -> Option<(Snapshot, HardState, Vec<Entry>)> {
        let start = self.compaction_start(written, threshold)?;
        let snapshot = start.snapshot();
        self.compaction_done(snapshot.clone());
        Some((snapshot, start.hard_state, start.rest))
    }

    /// The start of a compaction, when the log written since the last one
    /// holds more than `threshold` entries: the lease state as of
    /// `applied` (a clone that shares structure, so this costs no copy of
    /// the state), the snapshot's metadata, the hard state and the entries
    /// after `applied`. Nothing changes here: memory is compacted by
    /// [`ControlCore::compaction_done`] once the snapshot is durable.
    pub fn compaction_start(&self, written: u64, threshold: u64) -> Option<CompactionStart> {
        if written <= threshold {
            return None;
        }
        let store = self.raw.raft.raft_log.store.clone();
        let applied = self.raw.raft.raft_log.applied;
        let term = store.term(applied).ok()?;
        let last = store.last_index().ok()?;
        let mut metadata = Snapshot::default();
        metadata.mut_metadata().index = applied;
        metadata.mut_metadata().term = term;
        metadata
            .mut_metadata()
            .set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let rest = if last > applied {
            store
                .entries(
                    applied + 1,
                    last + 1,
                    u64::MAX,
                    raft::GetEntriesContext::empty(false),
                )
                .ok()?
        } else {
            Vec::new()
        };
        let hard_state = store.mem.rl().hard_state().clone();
        Some(CompactionStart {
            metadata,
            // The lease state is exactly as of `applied`: committed entries
            // are applied as they are handed out.
            state: self.leases.clone(),
            hard_state,
            rest,
        })
    }

    /// A compaction's snapshot is durable in the rewritten log: raft's
    /// memory drops the entries it covers, and lagging followers are sent
    /// it — unless a newer snapshot arrived meanwhile (a follower installed
    /// the leader's), which stays.
    pub fn compaction_done(&mut self, snapshot: Snapshot) {
        let store = self.raw.raft.raft_log.store.clone();
        let index = snapshot.get_metadata().index;
        // Below the memory's first index (a newer snapshot was installed)
        // this is a no-op; above its last it cannot be: `index` was applied.
        let _ = store.mem.wl().compact(index);
        let newer = store
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|held| held.get_metadata().index > index);
        if !newer {
            store.set_snapshot(snapshot);
        }
    }
}

/// What a compaction starts from ([`ControlCore::compaction_start`]): the
/// lease state frozen at the snapshot's index, to encode off the control
/// thread, and what the rewritten log holds besides.
#[derive(Debug)]
pub struct CompactionStart {
    metadata: Snapshot,
    state: LeaseState,
    /// The hard state when the compaction started.
    pub hard_state: HardState,
    /// The entries after the snapshot's index when it started.
    pub rest: Vec<Entry>,
}

impl CompactionStart {
    /// The index the snapshot covers.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.metadata.get_metadata().index
    }

    /// Encodes the snapshot: the work proportional to the lease state,
    /// for another thread.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.metadata.clone();
        snapshot.set_data(self.state.encode(GROUP_DEFAULT).into());
        snapshot
    }
}

#[cfg(test)]
mod tests;

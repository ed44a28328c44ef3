//! Starting and running one node: lock the data directory, open the raft
//! log, start the data plane and the peer transport, then run the control
//! loop (ticks, peer messages, persistence, Leadership publication) until
//! told to stop. A single node is a cluster of one and runs the same code.
//!
//! Thread placement: the data-plane cores are pinned one per CPU by the
//! data plane. Once they run, [`Node::start`] pins the thread that called
//! it (the control thread: raft, the raft log's fsync, the service
//! manager's watchdog) and the data plane's admin thread to the CPUs the
//! cores leave over, then starts the peer transport from the control
//! thread, so its threads (and the readers its acceptor spawns) inherit
//! that mask. Nothing but request work then runs on a core's CPU. When no
//! CPU is left over (`node.cores = "all"`, or one allowed CPU) every
//! thread stays where it was and shares the cores' CPUs, as logged.
//!
//! A raft-log compaction's encoding and new file are written on a
//! short-lived thread of their own (`palisade-compact`, niced to 10, with
//! the control thread's mask): the control thread only clones the lease
//! state at the start and puts the file in place at the end. A new
//! leader's takeover (table reset, every replicated lease installed) runs
//! on another (`palisade-takeover`), and the leadership serves once it is
//! done. Neither holds the control thread, which sends the heartbeats, for
//! longer than a clone (`Elsewhere`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use palisade_dataplane::leadership::{Leadership, LeadershipView};
use palisade_dataplane::quota::{QuotaConfig, Quotas};
use palisade_dataplane::replica::{tag_core, LeaseName, Notice, Proposal};
use palisade_dataplane::server::{core_count, Cpus, ReplicaLink, Server, ServerOptions};
use palisade_dataplane::service::{RequestService, ServiceConfig, Tenant};
use palisade_dataplane::table::{KeyHasher, LeaseTable, TableError};
use palisade_host::affinity::{self, cpu_list, Tid};
use palisade_host::clock::{monotonic_ms, unix_ms};
use palisade_host::doorbell::Doorbell;
use palisade_proto::auth::StoredCredential;
use palisade_proto::Role;
use palisade_tuning::{Config, CoreSelection, Replication};
use raft::eraftpb::{Message, MessageType};
use tracing::{debug, error, info, warn};

use crate::consensus::{
    ControlCore, CoreConfig, CoreError, DecodedSnapshot, Elections, Restored, Takeover,
};
use crate::datadir::{DataDir, DataDirError};
use crate::leases::Installed;
use crate::raftlog::{CompactionWritten, LogError, RaftLog};
use crate::transport::Transport;

/// Peer messages stepped in one turn at most, after the first.
const STEPS_PER_TURN_MAX: usize = 1024;
/// Grants and releases the data plane may have queued for the control
/// thread; a full queue answers "retry" at once.
const PROPOSALS_MAX: usize = 65_536;
/// Proposals taken into raft entries in one turn at most.
const PROPOSALS_PER_TURN_MAX: usize = 16_384;
/// Replicated leases compared with the table per turn by the pass that
/// logs the ends the table saw alone (expiry, a release of an orphaned
/// grant).
const PRUNE_PER_TURN_MAX: usize = 4_096;
/// Longest sleep of the control loop between turns when nothing is due
/// sooner: how late it may notice a stop request or ping the service
/// manager's watchdog. Otherwise it sleeps until its next tick, a peer
/// message or a doorbell ring. Every wake-up of the control thread
/// preempts a data-plane core that shares its CPU (`node.cores = "all"`,
/// or a whole process pinned to one CPU), so it wakes no more often than
/// its work asks.
const TURN_WAIT_MAX: Duration = Duration::from_millis(100);
/// Pause between the pieces of the leader's walk over the replicated
/// leases ([`PRUNE_PER_TURN_MAX`] each), so that the walk goes on without
/// waiting for ticks and without taking the CPU in one piece.
const PRUNE_WALK_PAUSE: Duration = Duration::from_millis(10);

/// Bytes reserved ahead of the raft log's end (see `RaftLog::preallocate`).
const LOG_PREALLOCATE: u64 = 4 << 20;

/// Shortest cluster secret accepted.
const SECRET_MIN: usize = 16;

/// Why a node could not start, or had to stop. Every variant stops the
/// node; each says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster secret file cannot be read. The operator's to fix.
    #[error("reading cluster.secret_file {}", path.display())]
    SecretUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cluster secret is too short. The operator's to fix.
    #[error("cluster.secret_file {} holds {len} bytes; a cluster secret needs at least {SECRET_MIN} (for example `head -c 32 /dev/urandom | base64 > {}`)", path.display(), path.display())]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// Bytes it holds (trailing white space not counted).
        len: usize,
    },
    /// The config names no member with this node's id. The operator's.
    #[error("node.id {0} is not among the cluster members")]
    NotAMember(u16),
    /// `node.cores` cannot be placed on this machine's CPUs.
    #[error("placing data-plane cores")]
    Cores(#[source] std::io::Error),
    /// More data-plane cores than a core index holds.
    #[error("too many cores")]
    TooManyCores(#[source] std::num::TryFromIntError),
    /// The OS random source failed (the host's fault).
    #[error("reading the OS random source")]
    Random(#[source] getrandom::Error),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The raft log cannot be opened, read or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The raft log could not be synced before compacting.
    #[error("syncing the raft log before compacting")]
    SyncBeforeCompact(#[source] LogError),
    /// The raft log could not be compacted.
    #[error("compacting the raft log")]
    Compact(#[source] LogError),
    /// The thread writing a compaction ended without a word (it panicked).
    #[error("the thread compacting the raft log ended without finishing")]
    CompactionLost,
    /// The thread decoding a snapshot ended without a word (it panicked).
    #[error("the thread decoding a snapshot from the leader ended without a result")]
    DecodeLost,
    /// The thread installing a takeover ended without a word (it panicked).
    #[error("the thread installing the replicated leases ended without finishing")]
    TakeoverLost,
    /// The raft driver refused to go on (a bug or a corrupt log).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Raft state could not be made durable: the node stopped granting.
    #[error("raft state could not be made durable; stopping")]
    NotDurable(#[source] CoreError),
    /// The control thread's doorbell (an `eventfd`) could not be made.
    #[error("creating the control thread's doorbell (eventfd)")]
    Doorbell(#[source] std::io::Error),
    /// The data plane did not start (a port in use, cores that did not come
    /// up).
    #[error("starting the data plane")]
    DataPlane(#[source] std::io::Error),
    /// The peer transport did not start (its port in use).
    #[error("starting the peer transport on {listen}")]
    Transport {
        /// The peer address it was to listen on.
        listen: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A new leader's replicated leases do not fit the lease table. The
    /// operator's to fix.
    #[error("installing {leases} replicated leases into the lease table: {reason}; raise leases.table_capacity (now {capacity})")]
    TakeoverTable {
        /// Replicated leases to install.
        leases: usize,
        /// What the table said.
        reason: String,
        /// The table's capacity.
        capacity: u64,
    },
}

impl NodeError {
    /// The error and its causes on one line, `a: b: c` (for a log line).
    #[must_use]
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

/// Reads the cluster secret file (empty when none is configured).
///
/// # Errors
///
/// The file cannot be read or holds fewer than 16 bytes.
pub fn cluster_secret(config: &Config) -> Result<Vec<u8>, NodeError> {
    let Some(path) = config.secret_file_resolved() else {
        return Ok(Vec::new());
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(source) => return Err(NodeError::SecretUnreadable { path, source }),
    };
    let secret = bytes.trim_ascii_end().to_vec();
    if secret.len() < SECRET_MIN {
        return Err(NodeError::SecretTooShort {
            path,
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// Ticks of `tick_ms` in one election timeout, rounded down and at least 3.
/// The leadership confirmation window, `(ticks − 1) × tick`, must stay
/// below the election timeout the grace period is built from (S2); config
/// validation guarantees `election_timeout ≥ 3 × heartbeat_interval`.
fn election_ticks(tick_ms: u64, election_timeout_ms: u64) -> usize {
    usize::try_from(election_timeout_ms / tick_ms.max(1))
        .unwrap_or(usize::MAX)
        .max(3)
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    _data: DataDir,
    data_dir: PathBuf,
    log: RaftLog,
    core: ControlCore,
    shared: Arc<RequestService>,
    server: Server,
    transport: Option<Transport>,
    /// The priority qdisc tree (`[qos]`), removed when dropped.
    qos: Option<crate::qos::Installed>,
    /// The control thread's pin off the data-plane cores, if any.
    control_pin: Option<ControlPin>,
    /// Rung by the data plane's proposals and the transport's hand-overs
    /// while the control thread sleeps in `poll()`.
    doorbell: Arc<Doorbell>,
    /// Peer messages read in a turn (kept for its allocation).
    received: Vec<Message>,
    /// Grants and releases from the data plane, to be logged.
    proposals: flume::Receiver<Proposal>,
    /// Kept so that `proposals` never disconnects: without replication the
    /// data plane holds no sender, and a selector on a closed channel
    /// returns at once, every turn (the control loop spun a whole CPU).
    _proposals_tx: flume::Sender<Proposal>,
    /// Per core: what became of its proposals.
    notices: Vec<palisade_dataplane::server::NoticeSender>,
    /// Tenant name to the index the table's keys use.
    tenants: crate::leases::Tenants,
    prune: Prune,
    tick_ms: u64,
    next_tick_ms: u64,
    /// Raft has messages to send: the next turn polls without waiting.
    ready_now: bool,
    snapshot_entries: u64,
    /// The raft log's length right after its last compaction, and the
    /// bytes of lease state that compaction's snapshot carried (both 0
    /// before the first): see [`compaction_due`].
    compacted: (u64, u64),
    /// A compaction being encoded and written on its own thread.
    compaction: Option<Elsewhere<Compacted>>,
    /// A takeover being installed into the table on its own thread.
    installing: Option<Elsewhere<TakenOver>>,
    /// A snapshot from the leader whose lease state is being decoded on
    /// its own thread, stepped into raft once it is.
    decoding: Option<Elsewhere<(Message, DecodedSnapshot)>>,
    published: Option<LeadershipView>,
    /// Elections already logged and published.
    elections_seen: Elections,
    /// Raft term and role last logged (debug).
    raft_role_seen: Option<(u64, raft::StateRole)>,
    /// End of the grace period this node is in, to log when it ends.
    grace_until_ms: Option<u64>,
}

/// The leader's walk over the replicated leases, logging the end of each
/// lease whose end only the table saw (it ran out past its lock delay, or
/// the grant's connection was gone and the core released it).
#[derive(Debug)]
struct Prune {
    enabled: bool,
    cursor: Option<LeaseName>,
    next_ms: u64,
    interval_ms: u64,
}

/// The control thread's pin to the CPUs the data-plane cores leave over.
#[derive(Debug)]
struct ControlPin {
    /// The control thread.
    tid: Tid,
    /// Its mask before, given back when the node stops on that thread (so
    /// that a node started again there places its cores as the first did).
    before: Vec<usize>,
}

/// Pins the calling thread (the control thread) and the data plane's admin
/// thread to the CPUs `server`'s cores leave over, so that neither
/// preempts a core; threads the control thread spawns later inherit the
/// mask. Call right after the data plane started (its placement is
/// computed from this thread's full mask) and before the peer transport
/// starts. `None`, and everything left where it was, when no CPU is left
/// over or the kernel refuses; both are logged.
fn pin_control_plane(server: &Server) -> Option<ControlPin> {
    let data_plane = server.cpus();
    let allowed = match affinity::allowed_cpus() {
        Ok(allowed) => allowed,
        Err(e) => {
            warn!(error = %e, "cannot read the CPU affinity mask: the control plane shares the data-plane cores");
            return None;
        }
    };
    let spare = affinity::spare_cpus(&allowed, data_plane);
    if spare.is_empty() {
        info!(
            data_plane = %cpu_list(data_plane),
            "no CPU is left over for the control plane: the control thread (raft log fsync), the peer transport and the admin endpoint's thread share the data-plane cores and may preempt request work; set node.cores to fewer CPUs than this process may use to keep them off"
        );
        return None;
    }
    if let Err(e) = affinity::pin_current_thread(&spare) {
        warn!(error = %e, "could not pin the control thread off the data-plane cores: the control plane shares them");
        return None;
    }
    let pin = ControlPin {
        tid: affinity::current_tid(),
        before: allowed,
    };
    if let Err(e) = server.pin_helpers(&spare) {
        warn!(error = %e, "could not pin the admin endpoint's thread off the data-plane cores: it shares them");
        unpin(&pin);
        return None;
    }
    info!(
        data_plane = %cpu_list(data_plane),
        control = %cpu_list(&spare),
        "control plane pinned off the data-plane cores: the control thread (raft log fsync), the peer transport and the admin endpoint's thread run on the CPUs the cores leave over"
    );
    Some(pin)
}

/// Gives the control thread its mask from before [`pin_control_plane`],
/// if called on that thread.
fn unpin(pin: &ControlPin) {
    if affinity::current_tid() != pin.tid {
        return;
    }
    if let Err(e) = affinity::pin_current_thread(&pin.before) {
        debug!(error = %e, "could not give the control thread its CPU mask back");
    }
}

/// Where the node keeps its state when neither `--data-dir` nor the config
/// names one: systemd's `$STATE_DIRECTORY`; else `/var/lib/palisade` for
/// root (the same place the systemd unit uses, so a node run by hand and as
/// a service share one log); else `$XDG_STATE_HOME/palisade`, else
/// `~/.local/state/palisade`, else `./palisade-data`.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/palisade");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("palisade");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/palisade");
    }
    PathBuf::from("palisade-data")
}

fn cpus(selection: &CoreSelection) -> Cpus {
    match selection {
        CoreSelection::All => Cpus::All,
        CoreSelection::Count(n) => Cpus::Count(usize::from(*n)),
        CoreSelection::Cpus(list) => Cpus::List(list.iter().map(|&c| usize::from(c)).collect()),
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Start-time switches that tests use.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Honour failpoint files in the data directory (fsync stall).
    pub failpoints: bool,
}

impl Node {
    /// Starts a node from `config`, keeping state in `data_dir`. Call it on
    /// the thread that will run the control loop ([`Node::turn`]): when
    /// the data-plane cores leave a CPU over, it pins the calling thread
    /// there (see the module docs); [`Node::shutdown`] on that thread
    /// gives it its mask back.
    pub fn start(config: &Config, data_dir: PathBuf) -> Result<Node, NodeError> {
        Node::start_with(config, data_dir, StartOptions::default())
    }

    /// [`Node::start`] with test switches.
    pub fn start_with(
        config: &Config,
        data_dir: PathBuf,
        options: StartOptions,
    ) -> Result<Node, NodeError> {
        let selection = cpus(&config.node.cores);
        let cores = core_count(&selection).map_err(NodeError::Cores)?;
        let members = config.members();
        let voters: Vec<u64> = members.iter().map(|m| u64::from(m.id)).collect();
        if !voters.contains(&u64::from(config.node.id)) {
            return Err(NodeError::NotAMember(config.node.id));
        }
        let alone = voters.len() == 1;
        let secret = cluster_secret(config)?;
        if secret.is_empty() && !alone {
            warn!("cluster.secret_file is not set: peers are not authenticated; keep the peer port on a trusted network");
        }

        let data = DataDir::lock(&data_dir)?;
        let legacy_epoch = data.legacy_epoch()?;
        let (mut log, recovered) = RaftLog::open(
            &data_dir,
            &config.cluster.name,
            config.node.id,
            options.failpoints,
        )?;
        // Zeros at the end are the space reserved ahead of the log.
        let torn = recovered.torn_bytes - recovered.zero_tail;
        if torn > 0 {
            warn!(
                bytes = torn,
                "cut a torn record off the end of the raft log"
            );
        }
        log.preallocate(LOG_PREALLOCATE)?;
        let fresh = !recovered.existed && legacy_epoch.is_none();
        let mut restored = Restored::from(recovered);
        if let Some(epoch) = legacy_epoch {
            // An earlier single-node version minted tokens in `epoch`: the
            // first raft term must start above it (S1 across the upgrade).
            if restored.hard_state.term < u64::from(epoch) {
                restored.hard_state.term = u64::from(epoch);
                restored.hard_state.vote = 0;
                crate::consensus::Persist::set_hard_state(&mut log, &restored.hard_state);
                log.sync()?;
                info!(
                    epoch,
                    "continuing from the epoch file of an earlier version"
                );
            }
        }

        let tick_ms = millis(config.cluster.heartbeat_interval).max(1);
        let election_ticks = election_ticks(tick_ms, millis(config.cluster.election_timeout));
        let grace_ms = millis(config.grace_period());
        let max_drift_ppm = (config.leases.max_drift * 1_000_000.0).ceil() as u32;
        let replicated = config.leases.replication == Replication::Quorum;
        let mut core = ControlCore::new(
            CoreConfig {
                id: u64::from(config.node.id),
                voters: voters.clone(),
                tick_ms,
                election_ticks,
                grace_ms,
                max_drift_ppm,
                replicated,
            },
            restored,
        )?;
        if !core.leases().is_empty() {
            info!(
                leases = core.leases().len(),
                "replicated leases in the log: a leader installs them, re-armed, before it serves"
            );
        }
        let start_ms = monotonic_ms();
        if alone {
            // Nobody else to hear from: lead at once.
            core.campaign(start_ms)?;
            let _ = core.poll_ready(&mut log, start_ms, &mut |_| {})?;
            core.request_confirmation(start_ms);
            let _ = core.poll_ready(&mut log, start_ms, &mut |_| {})?;
        }
        let view = core.leadership()?;
        if replicated {
            info!(dir = %data_dir.display(), epoch = view.epoch, "grants and releases are replicated (leases.replication = \"quorum\"): a new leader keeps every lease and grants free resources at once");
        } else if fresh {
            info!(dir = %data_dir.display(), "first start of this data directory: a leader of the cluster's first term grants without a grace period");
        } else {
            info!(
                dir = %data_dir.display(),
                epoch = view.epoch,
                grace_ms,
                "leases.replication = \"none\": no grants until (max_ttl + lock_delay_max + election_timeout) x (1 + max_drift) has passed after becoming leader"
            );
        }

        let mut hash_key = [0u8; 16];
        getrandom::fill(&mut hash_key).map_err(NodeError::Random)?;
        let tenants = config
            .tenants
            .iter()
            .map(|t| Tenant {
                name: t.name.clone(),
                credential: t.credential.as_ref().map(|c| StoredCredential {
                    iterations: c.iterations,
                    salt: c.salt.clone(),
                    stored_key: c.stored_key,
                    server_key: c.server_key,
                }),
            })
            .collect();
        let leadership = Leadership::new(config.node.id);
        leadership.publish(view);
        let limits = &config.limits;
        let tenant_count = config.tenants.len();
        let shared = Arc::new(RequestService::new(
            LeaseTable::new(config.leases.table_capacity, KeyHasher::new(hash_key))
                .with_tenant_quota(tenant_count, u64::from(limits.tenant_leases_max)),
            leadership,
            tenants,
            ServiceConfig {
                node_id: config.node.id,
                min_ttl_ms: millis_u32(config.leases.min_ttl),
                max_ttl_ms: millis_u32(config.leases.max_ttl),
                lock_delay_max_ms: millis_u32(config.leases.lock_delay_max),
                max_drift_ppm,
                pending_per_connection_max: config.limits.pending_per_connection_max,
                cores: u16::try_from(cores).map_err(NodeError::TooManyCores)?,
                start_ms,
                unix_offset_ms: unix_ms() as i64 - start_ms as i64,
                members: members
                    .iter()
                    .map(|m| (m.id, m.client.to_string()))
                    .collect(),
                replicated,
            },
            Quotas::new(
                tenant_count,
                QuotaConfig {
                    tenant_connections_max: u64::from(limits.tenant_connections_max),
                    tenant_waiters_max: u64::from(limits.tenant_waiters_max),
                    waiters_per_connection_max: limits.waiters_per_connection_max,
                    wait_max_ms: millis_u32(limits.wait_max),
                },
            ),
        ));
        shared
            .control
            .peers
            .store(voters.len().saturating_sub(1) as u64, Ordering::Relaxed);
        log.time_syncs(Arc::clone(&shared.control.log_sync));
        let (proposals_tx, proposals) = flume::bounded(PROPOSALS_MAX);
        let doorbell = Arc::new(Doorbell::new().map_err(NodeError::Doorbell)?);
        let (notices, notice_rxs) =
            palisade_dataplane::server::notice_channels(cores).map_err(NodeError::Doorbell)?;
        let glommio_settings = palisade_tuning::DataplaneConfig::default();
        if config.dataplane.preempt_timer != glommio_settings.preempt_timer
            || config.dataplane.rpc_latency != glommio_settings.rpc_latency
        {
            warn!(
                preempt_timer = ?config.dataplane.preempt_timer,
                rpc_latency = ?config.dataplane.rpc_latency,
                "dataplane.preempt_timer and dataplane.rpc_latency have no effect (they were the glommio executor's; the data plane's cores are epoll loops now): remove them from the config"
            );
        }
        let server_options = ServerOptions {
            listen: config.listen.client,
            cpus: selection,
            dscp: config.dataplane.client_dscp,
            connections_max: config.limits.connections_max,
            waiters_max: config.limits.waiters_max,
            frame_payload_max: config.limits.frame_payload_max,
            handshake_timeout: config.limits.handshake_timeout,
            frame_timeout: config.limits.frame_timeout,
            unauthenticated_max: config.limits.unauthenticated_max,
            idle_timeout: config.limits.idle_timeout,
            write_stall_timeout: config.limits.write_stall_timeout,
            sweep_interval: config.leases.sweep_interval,
            busy_poll: config.dataplane.busy_poll,
            reclaim_after: config.leases.reclaim_after,
            admin: config.admin.listen,
            replica: replicated.then(|| ReplicaLink {
                proposals: proposals_tx.clone(),
                doorbell: doorbell.clone(),
                notices: notice_rxs,
            }),
        };
        crate::rlimit::ensure(crate::rlimit::needed(
            config.limits.connections_max,
            config.limits.unauthenticated_max,
            members.len().saturating_sub(1),
            cores,
        ));
        let server = Server::start(shared.clone(), server_options).map_err(NodeError::DataPlane)?;
        // Before the transport: its threads inherit the control thread's mask.
        let control_pin = pin_control_plane(&server);
        shared
            .control
            .control_pinned
            .store(u64::from(control_pin.is_some()), Ordering::Relaxed);

        let transport = match config.peer_listen() {
            Some(listen) if !alone => {
                let peers: Vec<(u16, std::net::SocketAddr)> = members
                    .iter()
                    .filter(|m| m.id != config.node.id)
                    .filter_map(|m| m.peer.map(|addr| (m.id, addr)))
                    .collect();
                Some(
                    Transport::start_with_dscp(
                        config.node.id,
                        &config.cluster.name,
                        &secret,
                        listen,
                        &peers,
                        doorbell.clone(),
                        config.qos.peer_dscp,
                    )
                    .map_err(|source| NodeError::Transport { listen, source })?,
                )
            }
            _ => None,
        };
        let qos = crate::qos::start(config);
        let now = monotonic_ms();
        let tenant_index = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    t.name.clone(),
                    u32::try_from(i).expect("tenant count is bounded"),
                )
            })
            .collect();
        let mut node = Node {
            _data: data,
            data_dir,
            log,
            core,
            shared,
            server,
            transport,
            qos,
            control_pin,
            doorbell,
            received: Vec::new(),
            proposals,
            _proposals_tx: proposals_tx,
            notices,
            tenants: tenant_index,
            prune: Prune {
                enabled: replicated,
                cursor: None,
                next_ms: now,
                interval_ms: millis(config.leases.sweep_interval).max(10),
            },
            tick_ms,
            next_tick_ms: now + tick_ms,
            ready_now: false,
            snapshot_entries: config.cluster.snapshot_entries,
            compacted: (0, 0),
            compaction: None,
            installing: None,
            decoding: None,
            published: None,
            elections_seen: Elections::default(),
            raft_role_seen: None,
            grace_until_ms: None,
        };
        // A cluster of one led before its data plane existed: take over
        // now, and wait for the install, so that it serves from its first
        // turn (and before the caller says it is ready).
        node.take_over_if_due(now)?;
        if let Some(mut installing) = node.installing.take() {
            let outcome = installing.wait().map_err(|()| NodeError::TakeoverLost)?;
            node.took_over(outcome, installing.started, monotonic_ms())?;
        }
        node.publish()?;
        Ok(node)
    }

    /// The admin (metrics) endpoint's address, if enabled.
    #[must_use]
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.admin_addr()
    }

    /// The client address the node serves on.
    #[must_use]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The peer address the node listens on (multi-node clusters).
    #[must_use]
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.transport.as_ref().map(Transport::local_addr)
    }

    /// The epoch grants are minted in now.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.shared.leadership.load().epoch
    }

    /// The published leadership word (the data plane's view of this node).
    #[must_use]
    pub fn leadership(&self) -> &Leadership {
        &self.shared.leadership
    }

    /// Each data-plane core's last heartbeat (monotonic ms) into `out`.
    pub fn core_heartbeats_ms(&self, out: &mut Vec<u64>) {
        self.server.core_heartbeats_ms(out);
    }

    /// The data directory in use.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Unix ms from which grants are allowed (0 if this node does not lead).
    #[must_use]
    pub fn grants_from_unix_ms(&self) -> u64 {
        let lead = self.shared.leadership.load();
        if lead.role != Role::Leader {
            return 0;
        }
        unix_ms() + lead.grants_from_ms.saturating_sub(monotonic_ms())
    }

    /// One pass of control work: ticks that are due, peer messages and
    /// data-plane proposals that arrived (waiting at most `wait` for the
    /// first), persistence, sending, takeover, publication, answers to the
    /// data plane, and compaction. An error means this node must stop: it
    /// has already stopped granting.
    ///
    /// Group commit: proposals that arrive while a turn is in its fsync
    /// wait in the channel and go into one entry in the next turn.
    pub fn turn(&mut self, wait: Duration) -> Result<(), NodeError> {
        let now = monotonic_ms();
        // Work raft already has (a tick's heartbeats or campaign, a
        // confirmation round) goes out now, not after a wait for input.
        let mut ready = std::mem::take(&mut self.ready_now);
        if now >= self.next_tick_ms {
            let resent = self.core.snapshots_resent();
            self.core.tick(now);
            if self.core.snapshots_resent() > resent {
                warn!(
                    resent = self.core.snapshots_resent(),
                    "a follower did not take the snapshot sent to it in time (a peer link dropped it?); sending it again"
                );
            }
            ready = true;
            let late_ms = now - self.next_tick_ms;
            // Catch up without a burst of ticks after a stall: raft counts
            // ticks, and a stalled node should not believe time flew.
            self.next_tick_ms = if now > self.next_tick_ms + self.tick_ms {
                debug!(
                    late_ms,
                    dropped = late_ms / self.tick_ms,
                    "tick late: ticks dropped"
                );
                now + self.tick_ms
            } else {
                self.next_tick_ms + self.tick_ms
            };
        }
        let until_tick = Duration::from_millis(self.next_tick_ms.saturating_sub(now));
        // One wait for everything: the peer sockets and the doorbell the
        // data plane rings with a proposal (see `palisade_host::doorbell`
        // for why no ring is lost between the look at the queue and the
        // sleep).
        self.doorbell.sleep_begins();
        let wait = if ready || !self.proposals.is_empty() {
            Duration::ZERO
        } else if self.prune.cursor.is_some() {
            until_tick.min(wait).min(PRUNE_WALK_PAUSE)
        } else {
            until_tick.min(wait)
        };
        let mut received = std::mem::take(&mut self.received);
        // Bounded, so a flood of messages cannot starve ticks; the rest
        // waits in the sockets.
        let rung = match self.transport.as_mut() {
            Some(transport) => transport.receive(wait, &mut received, STEPS_PER_TURN_MAX),
            None => !wait.is_zero() && self.doorbell.wait(wait),
        };
        self.doorbell.awake(rung);
        // The clock is read per message, so a leadership that begins in
        // the middle of a batch is timed when it began.
        for message in received.drain(..) {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.decode_elsewhere(message);
                continue;
            }
            self.core.step(message, monotonic_ms())?;
        }
        self.received = received;
        self.step_decoded()?;
        let mut batch = Vec::new();
        while batch.len() < PROPOSALS_PER_TURN_MAX {
            let Ok(proposal) = self.proposals.try_recv() else {
                break;
            };
            batch.push(proposal);
        }
        if !batch.is_empty() {
            self.core.propose(batch);
        }
        if self.shared.leadership.take_new_epoch_request() && self.core.serving() {
            warn!(
                epoch = self.core.term(),
                "a resource used up its epoch's token space: moving to a new term"
            );
            self.core.force_new_term(monotonic_ms())?;
        }
        let now = monotonic_ms();
        let transport = self.transport.as_ref();
        let senders = &self.notices;
        let sent = self.core.poll_ready_with(
            &mut self.log,
            now,
            &mut |messages| {
                if let Some(transport) = transport {
                    transport.send(messages);
                }
            },
            Some(&mut |notices| deliver(senders, notices)),
        );
        let messages = match sent {
            Ok(messages) => messages,
            Err(e) => {
                self.stop_leading();
                return Err(NodeError::NotDurable(e));
            }
        };
        if let Err(e) = self.take_over_if_due(now) {
            self.stop_leading();
            return Err(e);
        }
        self.core.maintain(now);
        // The data plane sees a lost leadership before any vote for somebody
        // else leaves this node.
        self.publish()?;
        self.report(now);
        self.prune(now);
        self.retire_adopted(now);
        self.deliver_notices();
        if let Some(transport) = &self.transport {
            transport.send(messages);
        }
        self.finish_compaction()?;
        if self.compaction.is_some() {
            return Ok(());
        }
        let (len_after, state_bytes) = self.compacted;
        let appended = self.log.file_len().saturating_sub(len_after);
        if !compaction_due(
            self.log.entries_written(),
            self.snapshot_entries,
            appended,
            state_bytes,
        ) {
            return Ok(());
        }
        if self.log.has_pending() {
            self.log.sync().map_err(NodeError::SyncBeforeCompact)?;
        }
        if let Some(start) = self
            .core
            .compaction_start(self.log.entries_written(), self.snapshot_entries)
        {
            let writer = self.log.begin_compaction();
            // Below the data plane's priority where they share a CPU
            // (`node.cores = "all"`): the encoding is background work.
            self.compaction = Some(Elsewhere::start(
                "palisade-compact",
                Some(10),
                Arc::clone(&self.doorbell),
                move || {
                    let snapshot = start.snapshot();
                    let written = writer.write(&snapshot, &start.hard_state, &start.rest);
                    // The frozen state's nodes that the control thread has
                    // replaced since are freed here, not there.
                    drop(start);
                    written.map(|written| (snapshot, written))
                },
            ));
        }
        Ok(())
    }

    /// Puts a compaction's file in place once its thread wrote it: the
    /// batches synced meanwhile are appended, the file renamed over the
    /// log, and raft's memory compacted ([`RaftLog::finish_compaction`]).
    fn finish_compaction(&mut self) -> Result<(), NodeError> {
        let Some(compaction) = self.compaction.as_mut() else {
            return Ok(());
        };
        let Some(result) = compaction.poll().map_err(|()| NodeError::CompactionLost)? else {
            return Ok(());
        };
        let started = compaction.started;
        self.compaction = None;
        let (snapshot, written) = result.map_err(NodeError::Compact)?;
        let state_bytes = snapshot.get_data().len() as u64;
        let index = snapshot.get_metadata().index;
        let finishing = monotonic_ms();
        self.log
            .finish_compaction(written)
            .map_err(NodeError::Compact)?;
        self.core.compaction_done(snapshot);
        self.compacted = (self.log.file_len(), state_bytes);
        let now = monotonic_ms();
        info!(
            index,
            state_bytes,
            log_bytes = self.log.file_len(),
            elapsed_ms = now - started,
            control_ms = now - finishing,
            "raft log compacted: a snapshot of the lease state replaces the entries it covers"
        );
        Ok(())
    }

    /// Decodes the lease state of a snapshot from the leader on a thread of
    /// its own (tens of ms for a default table, most of a second at its
    /// cap), so that this thread goes on answering heartbeats and votes
    /// meanwhile. One at a time: a snapshot that arrives during another's
    /// decoding is dropped, as a lost message would be (the leader sends it
    /// again).
    fn decode_elsewhere(&mut self, message: Message) {
        if self.decoding.is_some() {
            debug!(
                from = message.from,
                index = message.get_snapshot().get_metadata().index,
                "a snapshot arrived while another is decoded: dropped"
            );
            return;
        }
        self.decoding = Some(Elsewhere::start(
            "palisade-snapshot",
            None,
            Arc::clone(&self.doorbell),
            move || {
                let decoded = DecodedSnapshot::of(message.get_snapshot());
                (message, decoded)
            },
        ));
    }

    /// Steps a snapshot into raft once its state is decoded; raft's ready
    /// installs it in this turn.
    fn step_decoded(&mut self) -> Result<(), NodeError> {
        let Some(decoding) = self.decoding.as_mut() else {
            return Ok(());
        };
        let Some((message, decoded)) = decoding.poll().map_err(|()| NodeError::DecodeLost)? else {
            return Ok(());
        };
        let started = decoding.started;
        self.decoding = None;
        debug!(
            index = message.get_snapshot().get_metadata().index,
            decode_ms = monotonic_ms().saturating_sub(started),
            "a snapshot's lease state was decoded"
        );
        self.core.step_decoded(message, decoded, monotonic_ms())?;
        Ok(())
    }

    /// A new leader's takeover, if due: end every lease the table held,
    /// install the replicated ones, re-armed. Before [`Node::publish`], so
    /// the data plane serves only a table that holds exactly the
    /// replicated state.
    fn take_over_if_due(&mut self, now: u64) -> Result<(), NodeError> {
        self.finish_takeover(now)?;
        if self.installing.is_some() {
            return Ok(());
        }
        let Some(takeover) = self.core.begin_takeover(now) else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        let tenants = self.tenants.clone();
        // At the control thread's priority: grants wait for it.
        self.installing = Some(Elsewhere::start(
            "palisade-takeover",
            None,
            Arc::clone(&self.doorbell),
            move || {
                let installed = crate::leases::install(&shared.table, &tenants, &takeover);
                (takeover, installed)
            },
        ));
        Ok(())
    }

    /// Serves once a takeover's thread installed the table: until then the
    /// published view is this leader's without grants (as before any
    /// takeover), and the control thread went on sending heartbeats.
    fn finish_takeover(&mut self, now: u64) -> Result<(), NodeError> {
        let Some(installing) = self.installing.as_mut() else {
            return Ok(());
        };
        let Some(result) = installing.poll().map_err(|()| NodeError::TakeoverLost)? else {
            return Ok(());
        };
        let installing = self.installing.take().expect("in flight");
        self.took_over(result, installing.started, now)
    }

    /// A takeover's install is done: serve it if its leadership lasted.
    fn took_over(&mut self, outcome: TakenOver, started: u64, now: u64) -> Result<(), NodeError> {
        let (takeover, done) = outcome;
        let done = done.map_err(|e| NodeError::TakeoverTable {
            leases: takeover.len(),
            reason: e.to_string(),
            capacity: self.shared.table.capacity(),
        })?;
        if !self.core.takeover_installed(&takeover) {
            debug!(
                epoch = takeover.epoch,
                "a takeover was installed after its leadership ended: not serving it"
            );
            return Ok(());
        }
        // Their names, for `List` until each lease runs out or its holder
        // renews here (no core has seen them).
        let epoch = takeover.epoch;
        if done.installed > 0 {
            let names = takeover.into_state();
            let replaced = self.shared.adopted.adopt(epoch, done.expires_by_ms, names);
            if let Some(replaced) = replaced {
                crate::drop_elsewhere("palisade-drop", replaced);
            }
        }
        if done.unknown_tenant > 0 {
            warn!(
                leases = done.unknown_tenant,
                "replicated leases of tenants this node's config does not name were not installed; every node needs the same [[tenants]]"
            );
        }
        info!(
            epoch,
            installed = done.installed,
            ended_local = done.ended,
            install_ms = now.saturating_sub(started),
            "took over: replicated leases installed with re-armed expiries"
        );
        // It grants once a quorum confirms this leadership: ask now rather
        // than at the next tick, which is most of a tick away when (as
        // usual) its own tick started the election it just won.
        self.core.request_confirmation(now);
        self.ready_now = true;
        Ok(())
    }

    /// Hands each core what became of its proposals.
    fn deliver_notices(&mut self) {
        deliver(&self.notices, self.core.take_notices());
    }

    /// Forgets the names the last takeover kept for `List` once each of
    /// their leases has run out or been renewed here (which noted it on a
    /// core), or the leadership they were taken over for ended. Freed on a
    /// thread of its own: what the live state no longer shares is dropped
    /// name by name.
    fn retire_adopted(&mut self, now: u64) {
        if let Some(retired) = self.shared.adopted.retire(now, self.core.serving()) {
            crate::drop_elsewhere("palisade-drop", retired);
        }
    }

    /// Part of the leader's walk over the replicated leases: logs the end
    /// of every lease the table no longer holds (released by a core without
    /// the log, or run out past its lock delay), so the replicated state
    /// does not keep dead leases for a later leader to re-arm.
    fn prune(&mut self, now: u64) {
        if !self.prune.enabled || !self.core.serving() || now < self.prune.next_ms {
            return;
        }
        let epoch = self.shared.leadership.load().epoch;
        let (ended, next) = crate::leases::ended(
            self.core.leases(),
            self.prune.cursor.as_ref(),
            PRUNE_PER_TURN_MAX,
            &self.shared.table,
            &self.tenants,
            now,
        );
        self.prune.cursor = next;
        if self.prune.cursor.is_none() {
            self.prune.next_ms = now + self.prune.interval_ms;
        }
        if !ended.is_empty() {
            let proposals = ended
                .into_iter()
                .map(|command| Proposal {
                    tag: 0,
                    epoch,
                    command,
                })
                .collect();
            self.core.propose(proposals);
        }
    }

    /// Publishes the control plane's numbers for metrics and logs the
    /// events operators look for: elections, and the end of a grace period.
    fn report(&mut self, now_ms: u64) {
        let control = &self.shared.control;
        let elections = self.core.elections();
        control.term.store(self.core.term(), Ordering::Relaxed);
        control
            .commit_index
            .store(self.core.commit_index(), Ordering::Relaxed);
        control
            .replicated_leases
            .store(self.core.leases().len() as u64, Ordering::Relaxed);
        control
            .snapshots_resent
            .store(self.core.snapshots_resent(), Ordering::Relaxed);
        control
            .elections_started
            .store(elections.started, Ordering::Relaxed);
        control
            .elections_won
            .store(elections.won, Ordering::Relaxed);
        if let Some(transport) = &self.transport {
            control
                .peers_connected
                .store(transport.peers_connected() as u64, Ordering::Relaxed);
        }
        if elections.started > self.elections_seen.started {
            info!(
                term = self.core.term(),
                started = elections.started,
                "election started: this node is a candidate"
            );
        }
        if elections.won > self.elections_seen.won {
            info!(
                term = self.core.term(),
                won = elections.won,
                "election won: this node leads"
            );
        }
        self.elections_seen = elections;
        let role = (self.core.term(), self.core.raft_state());
        if self.raft_role_seen != Some(role) {
            debug!(
                term = role.0,
                role = ?role.1,
                election_ticks = self.core.election_timeout_drawn(),
                "raft role: election timeout drawn"
            );
            self.raft_role_seen = Some(role);
        }
        if let Some(until) = self.grace_until_ms {
            let lead = self.shared.leadership.load();
            if lead.role != Role::Leader {
                self.grace_until_ms = None;
            } else if now_ms >= until {
                info!(epoch = lead.epoch, "grace period over: granting");
                self.grace_until_ms = None;
            }
        }
    }

    fn publish(&mut self) -> Result<(), NodeError> {
        let view = self.core.leadership()?;
        if self.published != Some(view) {
            if self.published.map(|p| (p.role, p.epoch, p.leader_id))
                != Some((view.role, view.epoch, view.leader_id))
            {
                info!(
                    role = view.role.as_str(),
                    epoch = view.epoch,
                    leader = view.leader_id,
                    "leadership changed"
                );
                let now = monotonic_ms();
                if view.role == Role::Leader && view.grants_from_ms > now {
                    let grace_ms = view.grants_from_ms - now;
                    info!(
                        epoch = view.epoch,
                        grace_ms,
                        "grace period started: no grants until leases an earlier leader granted have run out"
                    );
                    self.grace_until_ms = Some(view.grants_from_ms);
                }
            }
            if view.role == Role::Leader
                && view.grants_until_ms > 0
                && self.published.is_none_or(|p| p.grants_until_ms == 0)
            {
                debug!(
                    epoch = view.epoch,
                    "leadership quorum confirmed: grants allowed"
                );
            }
            self.shared.leadership.publish(view);
            self.published = Some(view);
        }
        Ok(())
    }

    /// Withdraws this node's leadership from the data plane at once.
    fn stop_leading(&mut self) {
        let current = self.shared.leadership.load();
        self.shared.leadership.publish(LeadershipView {
            role: Role::Candidate,
            leader_id: 0,
            grants_until_ms: 0,
            ..current
        });
    }

    /// Runs control work until `stop` returns true.
    pub fn run_until(&mut self, mut stop: impl FnMut() -> bool) -> Result<(), NodeError> {
        self.run_until_with(|_| stop())
    }

    /// [`Node::run_until`], handing `stop` the node on every turn of the
    /// control loop (the service-manager watchdog pings from there).
    pub fn run_until_with(&mut self, mut stop: impl FnMut(&Node) -> bool) -> Result<(), NodeError> {
        while !stop(self) {
            if let Err(e) = self.turn(TURN_WAIT_MAX) {
                error!(error = %e.chain(), "control plane failed");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops the data plane and the transport.
    pub fn shutdown(mut self) {
        self.stop_leading();
        self.server.stop();
        if let Some(transport) = self.transport.take() {
            transport.stop();
        }
        drop(self.qos.take());
        if let Some(pin) = self.control_pin.take() {
            unpin(&pin);
        }
        info!("node stopped");
    }
}

/// Work of the control loop run on a thread of its own, so that the
/// control thread, which sends the heartbeats, goes on meanwhile: a
/// compaction (the lease state encoded and the new log written: hundreds
/// of ms for a large state) and a new leader's takeover (the table reset
/// and every replicated lease installed: a quarter of a second at the
/// table's cap). Both were longer than an election timeout on the control
/// thread. The thread rings the doorbell when it is done; one of each
/// kind at a time.
#[derive(Debug)]
struct Elsewhere<T> {
    done: std::sync::mpsc::Receiver<T>,
    /// When it started (monotonic ms).
    started: u64,
    /// Its outcome was taken: the thread has nothing left to write.
    taken: bool,
}

impl<T: Send + 'static> Elsewhere<T> {
    /// Starts `work` on a thread named `name`, niced to `nice` if given.
    fn start(
        name: &str,
        nice: Option<i32>,
        doorbell: Arc<Doorbell>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Elsewhere<T> {
        let (tx, done) = std::sync::mpsc::channel();
        run_elsewhere(name, nice, move || {
            // The control thread may have stopped: nobody to tell.
            let _ = tx.send(work());
            doorbell.ring();
        });
        Elsewhere {
            done,
            started: monotonic_ms(),
            taken: false,
        }
    }

    /// Its outcome, once it is done; `Err` if its thread ended without one
    /// (it panicked).
    fn wait(&mut self) -> Result<T, ()> {
        let outcome = self.done.recv().map_err(|_| ())?;
        self.taken = true;
        Ok(outcome)
    }

    /// Its outcome if it is done; `Err` if its thread ended without one
    /// (it panicked).
    fn poll(&mut self) -> Result<Option<T>, ()> {
        match self.done.try_recv() {
            Ok(outcome) => {
                self.taken = true;
                Ok(Some(outcome))
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(()),
        }
    }
}

/// Dropped before its outcome was taken (its node dropped or shut down),
/// it waits for its thread to be done: a node started again in this
/// process must not find `raft.log.tmp` or its table written by the
/// earlier one's. Once the outcome is taken the thread writes nothing more
/// (it only rings the doorbell), so the control thread does not wait for
/// it: the compaction's thread runs niced, and waiting for it behind a
/// busy core held the control thread.
impl<T> Drop for Elsewhere<T> {
    fn drop(&mut self) {
        if !self.taken {
            // Returns once the thread dropped its sender, whatever it sent.
            while self.done.recv().is_ok() {}
        }
    }
}

/// A compaction's outcome: the snapshot and the new file, written.
type Compacted = Result<(raft::eraftpb::Snapshot, CompactionWritten), LogError>;

/// A takeover's outcome: what the install did to the table.
type TakenOver = (Takeover, Result<Installed, TableError>);

/// Runs `work` on a thread of its own named `name`, niced to `nice` if
/// given (lowering a thread's priority needs no privilege; refused, it
/// runs as is), or here when no thread can be made (the process is out of
/// them): the pause the thread avoids otherwise, nothing lost.
fn run_elsewhere(name: &str, nice: Option<i32>, work: impl FnOnce() + Send + 'static) {
    let job = Arc::new(std::sync::Mutex::new(Some(work)));
    let theirs = Arc::clone(&job);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(nice) = nice {
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
            }
            if let Some(work) = take(&theirs) {
                work();
            }
        });
    if let Err(e) = spawned {
        warn!(thread = name, error = %e, "no thread could be made: its work runs on the control thread");
        if let Some(work) = take(&job) {
            work();
        }
    }
}

/// The work a thread was started for, taken once: by the thread, or by
/// the starter when no thread could be made.
fn take<T>(job: &std::sync::Mutex<Option<T>>) -> Option<T> {
    job.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Whether the raft log is due a compaction: more than `snapshot_entries`
/// entries written since the last one, and at least as many bytes appended
/// since as that compaction's snapshot of the lease state took. Each
/// compaction writes the whole state again (and encodes it on the control
/// thread); without the second rule a table full of long-lived leases was
/// rewritten every `snapshot_entries` entries however little they added
/// (a 23 MB state every 2.5 s at 4 000 entries a second). With it the
/// state's rewrites cost at most as many bytes as the entries they replace,
/// and the log stays under twice the state plus `snapshot_entries` entries.
fn compaction_due(
    entries: u64,
    snapshot_entries: u64,
    appended_bytes: u64,
    last_state_bytes: u64,
) -> bool {
    entries > snapshot_entries && appended_bytes >= last_state_bytes
}

/// Hands each notice to the core named in its tag.
fn deliver(senders: &[palisade_dataplane::server::NoticeSender], notices: Vec<Notice>) {
    if notices.is_empty() {
        return;
    }
    let mut per_core: Vec<Vec<Notice>> = vec![Vec::new(); senders.len()];
    for notice in notices {
        // Tag 0: the control plane's own proposals (the prune pass).
        if notice.tag == 0 {
            continue;
        }
        if let Some(batch) = per_core.get_mut(tag_core(notice.tag)) {
            batch.push(notice);
        }
    }
    for (sender, batch) in senders.iter().zip(per_core) {
        if !batch.is_empty() {
            // A closed channel: the core stopped; nobody waits.
            let _ = sender.send(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cluster_secret, compaction_due, election_ticks, NodeError};
    use palisade_tuning::Config;

    #[test]
    fn secret_errors_name_the_file_and_keep_their_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let mut config = Config::builtin_default();
        config.cluster.secret_file = Some(path.clone());
        let err = cluster_secret(&config).expect_err("missing");
        assert!(matches!(err, NodeError::SecretUnreadable { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("reading cluster.secret_file {}", path.display())
        );
        assert!(err.chain().ends_with("(os error 2)"), "{}", err.chain());
        std::fs::write(&path, "short\n").expect("write");
        let err = cluster_secret(&config).expect_err("too short");
        assert!(
            err.to_string()
                .contains("holds 5 bytes; a cluster secret needs at least 16"),
            "{err}"
        );
        std::fs::write(&path, "0123456789abcdef0123\n").expect("write");
        assert_eq!(
            cluster_secret(&config).expect("long enough"),
            b"0123456789abcdef0123"
        );
    }

    #[test]
    fn the_confirmation_window_stays_below_the_election_timeout() {
        // S2 depends on it: the grace period counts one election timeout.
        for tick in [1u64, 7, 50, 100, 333, 1_000] {
            for timeout in (3 * tick..=60_000).step_by(997) {
                let ticks = election_ticks(tick, timeout) as u64;
                assert!(ticks >= 3);
                assert!(
                    (ticks - 1) * tick < timeout,
                    "tick {tick} ms, timeout {timeout} ms: window {} ms",
                    (ticks - 1) * tick
                );
            }
        }
    }

    #[test]
    fn a_large_state_is_compacted_only_once_the_log_grew_by_as_much() {
        // Entries alone decide while the state is small (none yet, or a
        // few leases).
        assert!(!compaction_due(10_000, 10_000, 0, 0));
        assert!(compaction_due(10_001, 10_000, 0, 0));
        assert!(compaction_due(10_001, 10_000, 5_000, 4_000));
        // A 23 MB state waits for 23 MB of entries, however many.
        assert!(!compaction_due(50_000, 10_000, 22_999_999, 23_000_000));
        assert!(compaction_due(50_000, 10_000, 23_000_000, 23_000_000));
        // And never before the entry count, however large the log.
        assert!(!compaction_due(9_999, 10_000, u64::MAX, 0));
    }
}

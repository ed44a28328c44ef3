//! The glommio shell: one pinned executor per core, each with its own
//! SO_REUSEPORT listener. It reads bytes, feeds [`RequestService::handle`], drains
//! wait-queue events and writes bytes; every decision is made in the
//! sans-IO layers below.
//!
//! Per core:
//! - `lease-rpc` task queue (high shares, `Latency::Matters`): accept loop,
//!   connections, the wait-queue timer and cross-core messages;
//! - `background` task queue (low shares): the table sweeper, the shutdown
//!   watch and, on core 0, the admin endpoint (`GET /metrics`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::thread::JoinHandleExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::{
    CpuSet, Latency, LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles, Shares,
    TaskQueueHandle,
};
use tracing::{debug, error, info, warn};

use crate::leadership::LeadershipView;
use crate::metrics::Denial;
use crate::replica::{tag, tag_core, Command, Notice, Proposal};
use crate::service::{Commit, RequestService, WatchRequest};
use crate::table::LeaseKey;
use crate::waiters::{home_core, Origin, WaitEvent, WaitQueues, WaitRequest};
use nudge::{CoreWakers, Kicker, Registration};
use palisade_host::clock::monotonic_ms;
use palisade_host::heartbeat;

mod conn;
mod list;
pub mod net;
pub mod nudge;

/// Which CPUs run data-plane cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpus {
    /// One core per online CPU.
    All,
    /// This many cores, spread over the online CPUs.
    Count(usize),
    /// One core pinned to each listed CPU.
    List(Vec<usize>),
}

/// Settings of the shell (the request path's own settings live in
/// [`crate::service::ServiceConfig`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Client listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Core placement.
    pub cpus: Cpus,
    /// glommio preemption timer: how long a task may run before the
    /// scheduler checks for more urgent queues.
    pub preempt_timer: Duration,
    /// Latency target of the lease-rpc queue.
    pub rpc_latency: Duration,
    /// DSCP of client sockets.
    pub dscp: u8,
    /// Open connections allowed, node-wide.
    pub connections_max: u32,
    /// Waiters allowed, node-wide (split evenly over cores).
    pub waiters_max: u32,
    /// Largest request payload.
    pub frame_payload_max: u32,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a frame to arrive once it started.
    pub frame_timeout: Duration,
    /// Connections that have not finished the handshake, node-wide (split
    /// evenly over cores); when a core's share is full, its oldest
    /// unfinished handshake is closed to make room for the new one.
    pub unauthenticated_max: u32,
    /// An authenticated connection with nothing pending is closed after
    /// this long without a byte from its client.
    pub idle_timeout: Duration,
    /// A connection whose replies cannot be written for this long is closed.
    pub write_stall_timeout: Duration,
    /// How often each core sweeps its part of the table.
    pub sweep_interval: Duration,
    /// Idle time after which a key is reclaimed.
    pub reclaim_after: Duration,
    /// Admin endpoint (`GET /metrics`) address; `None`: no endpoint.
    pub admin: Option<SocketAddr>,
    /// With replication: where grants and releases go to be logged, and
    /// where each core hears back.
    pub replica: Option<ReplicaLink>,
}

/// The data plane's side of replication: proposals go to the control
/// thread, and core `i` receives what became of its proposals on
/// `notices[i]`.
#[derive(Debug, Clone)]
pub struct ReplicaLink {
    /// Bounded: a full channel answers "retry" at once.
    pub proposals: flume::Sender<Proposal>,
    /// Rung after a proposal is queued, so that a control thread asleep in
    /// `poll()` takes it (a busy one costs the ring no system call).
    pub doorbell: Arc<palisade_host::doorbell::Doorbell>,
    /// One per core, in core order.
    pub notices: Vec<flume::Receiver<Vec<Notice>>>,
}

/// A change waiting for its commit on the core that proposed it.
#[derive(Debug)]
struct PendingCommit {
    /// Delivered once committed.
    event: WaitEvent,
    key: LeaseKey,
    token: u64,
    /// Never committed: take the fresh grant back out of the table.
    undo_grant: bool,
    /// When the request arrived (monotonic ns), to time its answer; waiter
    /// grants are not timed (they waited by request).
    arrived_ns: Option<u64>,
    /// Once committed, the adopted lease counts as served here.
    confirm: bool,
}

/// What a client hears when its change will not be committed by this
/// leadership.
const UNCOMMITTED: &str = "leadership changed before the change was committed; retry (an acquire with the same holder id gets the same token if its grant was committed)";

/// Messages between cores.
#[derive(Debug)]
enum CoreMsg {
    /// Queue a waiter (sent to the key's home core).
    Enqueue(WaitRequest),
    /// A lease with waiters was released (sent to the key's home core).
    Wake(LeaseKey),
    /// A connection closed: drop its waiters (sent to every core it used).
    Cancel { core: u16, conn: u64 },
    /// An answer for a waiter (sent to the connection's core).
    Deliver(WaitEvent),
    /// Asks for this core's page of a `List` (sent to every other core).
    ListQuery(Box<list::Query>),
    /// A core's page of a `List` (sent to the core gathering it).
    ListPart { id: u64, part: crate::names::Part },
}

/// Capacity of each cross-core channel.
const MESH_CHANNEL_CAPACITY: usize = 4096;
/// How long [`Server::start`] waits for every core to listen before it
/// gives up (the node then exits non-zero and its service manager restarts
/// it).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Server::stop`] waits for the cores to end before it leaves
/// them running (a core stuck in a task that never yields cannot be ended
/// from outside; the process is about to exit anyway).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting [`Server::start`] or [`Server::stop`] looks at the
/// core threads.
const THREAD_POLL: Duration = Duration::from_millis(5);
/// A listening core whose heartbeat is this old gets kicked (see
/// [`nudge`]): its executor may be asleep with runnable tasks. Two periods:
/// a core that merely waited for the CPU a little is left alone, and a
/// core asleep with work queued (a connection's answers, say) is woken
/// within about 20 ms plus one kick interval rather than at its next
/// timer of its own.
const STALE_AFTER_MS: u64 = 2 * heartbeat::HEARTBEAT_PERIOD.as_millis() as u64;
/// How often a parked watch re-reads its key: the longest a watcher hears
/// of a new grant late. A table read is a few nanoseconds; a few watchers
/// per fencing proxy cost nothing measurable.
pub const WATCH_POLL: Duration = Duration::from_millis(1);
/// Slots swept between yields to the scheduler.
const SWEEP_CHUNK: usize = 4096;
/// glommio's registered I/O memory per core; the data plane does no DMA
/// file I/O, so a small pool keeps it within an unprivileged memlock limit.
const IO_MEMORY: usize = 512 << 10;

/// Per-core state, shared by the core's tasks.
struct CoreCtx {
    shared: Arc<RequestService>,
    opts: ServerOptions,
    index: usize,
    cores: usize,
    senders: Senders<CoreMsg>,
    waits: RefCell<WaitQueues>,
    /// Wakes the wait-queue timer task when its next deadline may have moved.
    waits_kick: LocalSender<()>,
    conns: RefCell<HashMap<u64, LocalSender<WaitEvent>>>,
    /// Connections still in their handshake, oldest first, each with the
    /// sender that closes it (see [`ServerOptions::unauthenticated_max`]).
    unauthenticated: RefCell<std::collections::BTreeMap<u64, LocalSender<()>>>,
    /// This core's share of [`ServerOptions::unauthenticated_max`].
    unauthenticated_max: usize,
    next_conn: Cell<u64>,
    connections: Arc<AtomicU64>,
    hot: TaskQueueHandle,
    /// Changes proposed by this core, by tag, until their notice.
    commits: RefCell<HashMap<u64, PendingCommit>>,
    next_tag: Cell<u64>,
    /// Names for `List`, and the pages being gathered.
    lists: RefCell<list::Lists>,
}

impl CoreCtx {
    fn lead(&self) -> LeadershipView {
        self.shared.leadership.load()
    }

    /// Sends `msg` to core `to` without waiting: cross-core sends from
    /// message handlers must never block on a peer that may be blocked on us.
    fn post(self: &Rc<Self>, to: usize, msg: CoreMsg) {
        debug_assert_ne!(to, self.index);
        let ctx = self.clone();
        let task = glommio::spawn_local_into(
            async move {
                if ctx.senders.send_to(to, msg).await.is_err() {
                    warn!(core = ctx.index, to, "peer core channel closed");
                }
            },
            self.hot,
        );
        match task {
            Ok(task) => {
                task.detach();
            }
            Err(e) => warn!(core = self.index, error = %e, "could not spawn a send"),
        }
    }

    /// Applies a message addressed to this core.
    fn on_message(self: &Rc<Self>, msg: CoreMsg) {
        let now = monotonic_ms();
        match msg {
            CoreMsg::Enqueue(request) => {
                let lead = self.lead();
                self.waits
                    .borrow_mut()
                    .handle_enqueue(&self.shared.table, lead, request, now);
            }
            CoreMsg::Wake(key) => {
                let lead = self.lead();
                self.waits
                    .borrow_mut()
                    .handle_wake(&self.shared.table, lead, key, now);
            }
            CoreMsg::Cancel { core, conn } => {
                let lead = self.lead();
                self.waits
                    .borrow_mut()
                    .handle_cancel(&self.shared.table, lead, core, conn, now);
            }
            CoreMsg::Deliver(event) => self.deliver_local(event),
            CoreMsg::ListQuery(query) => self.on_list_query(*query),
            CoreMsg::ListPart { id, part } => self.on_list_part(id, part),
        }
        self.drain_waits();
    }

    /// Routes a waiter to its key's home core.
    async fn route_wait(self: &Rc<Self>, request: WaitRequest) {
        let home = home_core(request.key, self.cores);
        if home == self.index {
            self.on_message(CoreMsg::Enqueue(request));
        } else if self
            .senders
            .send_to(home, CoreMsg::Enqueue(request))
            .await
            .is_err()
        {
            warn!(core = self.index, home, "home core channel closed");
        }
    }

    /// Parks a watch on this core: a task re-reads the key every
    /// [`WATCH_POLL`] until the watch has its answer or the connection is
    /// gone.
    fn watch(self: &Rc<Self>, watch: WatchRequest) {
        let ctx = self.clone();
        let task = glommio::spawn_local_into(
            async move {
                loop {
                    glommio::timer::sleep(WATCH_POLL).await;
                    if !ctx.conns.borrow().contains_key(&watch.origin.conn) {
                        return;
                    }
                    if let Some(event) = ctx.shared.watch_poll(&watch, monotonic_ms()) {
                        ctx.deliver_local(event);
                        return;
                    }
                }
            },
            self.hot,
        );
        match task {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                warn!(core = self.index, error = %e, "could not park a watch");
                self.deliver_local(WaitEvent::Failed {
                    origin: watch.origin,
                    code: palisade_proto::ErrorCode::Unavailable,
                    retry_after_ms: 100,
                    message: "the node could not park the watch; watch again",
                });
            }
        }
    }

    /// Tells `key`'s home core that a lease with waiters was released.
    async fn wake(self: &Rc<Self>, key: LeaseKey) {
        let home = home_core(key, self.cores);
        if home == self.index {
            self.on_message(CoreMsg::Wake(key));
        } else if self
            .senders
            .send_to(home, CoreMsg::Wake(key))
            .await
            .is_err()
        {
            warn!(core = self.index, home, "home core channel closed");
        }
    }

    /// A connection with waits closed: every core may hold some of them.
    fn cancel(self: &Rc<Self>, conn: u64) {
        let core = u16::try_from(self.index).expect("core count fits u16");
        for to in 0..self.cores {
            if to == self.index {
                self.on_message(CoreMsg::Cancel { core, conn });
            } else {
                self.post(to, CoreMsg::Cancel { core, conn });
            }
        }
    }

    /// Delivers queue answers to their connections and rearms the timer.
    fn drain_waits(self: &Rc<Self>) {
        let stats = &self.shared.stats[self.index];
        loop {
            let event = self.waits.borrow_mut().poll_event();
            let Some(mut event) = event else { break };
            if let WaitEvent::Granted {
                key, token, log, ..
            } = &mut event
            {
                if let Some(log) = log.take() {
                    // Replicated: answered once logged.
                    let (key, token) = (*key, *token);
                    let command = Command::Grant {
                        name: (*log.name).clone(),
                        token,
                        holder: log.holder,
                        ttl_ms: log.ttl_ms,
                        lock_delay_ms: log.lock_delay_ms,
                    };
                    let pending = PendingCommit {
                        event,
                        key,
                        token,
                        undo_grant: true,
                        arrived_ns: None,
                        confirm: false,
                    };
                    self.propose(command, (token >> 32) as u32, pending);
                    continue;
                }
            }
            match &event {
                WaitEvent::Granted { .. } => crate::metrics::bump(&stats.grants, 1),
                WaitEvent::TimedOut { .. } => stats.deny(Denial::Busy),
                WaitEvent::Failed { code, .. } => {
                    if let Some(denial) = Denial::of_error(*code) {
                        stats.deny(denial);
                    }
                }
                WaitEvent::Watched { .. } | WaitEvent::Reply { .. } => {}
            }
            self.route(event);
        }
        stats
            .waiters
            .store(self.waits.borrow().len() as u64, Ordering::Relaxed);
        crate::metrics::bump(
            &stats.expirations,
            self.waits.borrow_mut().take_expirations(),
        );
        if self.waits.borrow_mut().take_new_epoch_request() {
            self.shared.leadership.request_new_epoch();
        }
        // A full kick channel already holds a wake-up; that is enough.
        let _ = self.waits_kick.try_send(());
    }

    /// Sends `command` to the control plane to be logged; `event` is
    /// delivered once it committed.
    fn propose(self: &Rc<Self>, command: Command, epoch: u32, pending: PendingCommit) {
        let Some(link) = self.opts.replica.as_ref() else {
            unreachable!("changes are proposed only with replication");
        };
        let seq = self.next_tag.get();
        self.next_tag.set(seq + 1);
        let tag = tag(self.index, seq);
        self.commits.borrow_mut().insert(tag, pending);
        let queued = link.proposals.try_send(Proposal {
            tag,
            epoch,
            command,
        });
        if queued.is_ok() {
            link.doorbell.ring();
        } else {
            // Full (the log cannot keep up) or the control plane is gone.
            self.on_notices(vec![Notice {
                tag,
                committed: false,
            }]);
        }
    }

    /// A connection's change that must be logged before it is answered.
    fn commit(self: &Rc<Self>, origin: Origin, commit: Commit, arrived_ns: u64) {
        let Commit {
            command,
            epoch,
            key,
            reply,
            undo_grant,
            wake,
            confirm,
        } = commit;
        let token = command.token();
        let event = match reply {
            palisade_proto::Response::Granted {
                token,
                ttl_ms,
                waited_ms,
            } => WaitEvent::Granted {
                origin,
                key,
                token,
                ttl_ms,
                waited_ms,
                log: None,
            },
            response => WaitEvent::Reply { origin, response },
        };
        self.propose(
            command,
            epoch,
            PendingCommit {
                event,
                key,
                token,
                undo_grant,
                arrived_ns: Some(arrived_ns),
                confirm,
            },
        );
        if wake {
            let ctx = self.clone();
            server_spawn(self.hot, async move { ctx.wake(key).await });
        }
    }

    /// What became of this core's proposals: answer the committed ones,
    /// tell the others to retry (and take their fresh grants back).
    fn on_notices(self: &Rc<Self>, notices: Vec<Notice>) {
        let stats = &self.shared.stats[self.index];
        let now = monotonic_ms();
        let mut wakes = Vec::new();
        for notice in notices {
            debug_assert_eq!(tag_core(notice.tag), self.index);
            let Some(pending) = self.commits.borrow_mut().remove(&notice.tag) else {
                continue;
            };
            if let Some(arrived_ns) = pending.arrived_ns {
                // Answered now, on the core the request arrived on.
                stats.latency.record(
                    palisade_host::clock::monotonic_ns().saturating_sub(arrived_ns),
                    1,
                );
            }
            if notice.committed {
                if pending.confirm {
                    self.shared.table.confirm(pending.key, pending.token);
                }
                if let WaitEvent::Granted { .. } = pending.event {
                    crate::metrics::bump(&stats.grants, 1);
                }
                self.route(pending.event);
                continue;
            }
            if pending.undo_grant {
                if let crate::table::TokenOutcome::Released { wake_waiters: true } =
                    self.shared.table.release(pending.key, pending.token, now)
                {
                    wakes.push(pending.key);
                }
            }
            if let WaitEvent::Granted { .. } = pending.event {
                stats.deny(Denial::Unavailable);
            }
            self.route(WaitEvent::Failed {
                origin: pending.event.origin(),
                code: palisade_proto::ErrorCode::Unavailable,
                retry_after_ms: 50,
                message: UNCOMMITTED,
            });
        }
        for key in wakes {
            let ctx = self.clone();
            server_spawn(self.hot, async move { ctx.wake(key).await });
        }
    }

    /// Sends an answer to its connection's core.
    fn route(self: &Rc<Self>, event: WaitEvent) {
        let to = usize::from(event.origin().core);
        if to == self.index {
            self.deliver_local(event);
        } else {
            self.post(to, CoreMsg::Deliver(event));
        }
    }

    /// Hands an answer to a connection on this core. A grant for a
    /// connection that is gone is released at once, so no lease is held by
    /// nobody until it expires.
    fn deliver_local(self: &Rc<Self>, event: WaitEvent) {
        let origin = event.origin();
        let undelivered = {
            let conns = self.conns.borrow();
            match conns.get(&origin.conn) {
                Some(sender) => match sender.try_send(event) {
                    Ok(()) => None,
                    Err(
                        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(event))
                        | glommio::GlommioError::Closed(glommio::ResourceType::Channel(event)),
                    ) => Some(event),
                    Err(_) => None,
                },
                None => Some(event),
            }
        };
        if let Some(WaitEvent::Granted { key, token, .. }) = undelivered {
            let now = monotonic_ms();
            // With replication the log still holds the grant: the control
            // plane sees the table no longer does and logs its end.
            if let crate::table::TokenOutcome::Released { wake_waiters: true } =
                self.shared.table.release(key, token, now)
            {
                let ctx = self.clone();
                let task = glommio::spawn_local_into(async move { ctx.wake(key).await }, self.hot);
                if let Ok(task) = task {
                    task.detach();
                }
            }
            debug!(
                core = self.index,
                conn = origin.conn,
                "released a grant for a closed connection"
            );
        }
    }
}

/// Test hooks for [`Server::start_with_hooks`]; all off by default.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct StartHooks {
    /// Replaces [`START_TIMEOUT`].
    pub start_timeout: Option<Duration>,
    /// Replaces [`STOP_TIMEOUT`].
    pub stop_timeout: Option<Duration>,
    /// The core thread that registers `n`-th (0 first) wedges before it
    /// joins the mesh: it ignores the shutdown flag until the flag given
    /// here is set, like a core stuck where nothing can reach it.
    pub wedge: Option<(usize, Arc<AtomicBool>)>,
    /// The core thread that registers `n`-th ends at once, without a word,
    /// like a thread whose executor could not be built.
    pub vanish: Option<usize>,
}

/// A running data plane.
pub struct Server {
    handles: Option<PoolThreadHandles<()>>,
    shutdown: Arc<AtomicBool>,
    /// Each core's root task, woken when the server stops.
    wakers: Arc<CoreWakers>,
    /// Kicks a core that does not listen yet or whose heartbeat is late:
    /// glommio 0.9 can park a core with runnable tasks (see [`nudge`]).
    kicker: Option<Kicker>,
    /// The core threads that listen, with their core index.
    listening: Arc<std::sync::Mutex<Vec<(ThreadId, usize)>>>,
    stop_timeout: Duration,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    cores: usize,
    /// Each core's last heartbeat (monotonic ms).
    heartbeats: Arc<[AtomicU64]>,
    /// The CPUs the cores are pinned to, ascending (empty until they all
    /// listen).
    cpus: Vec<usize>,
}

/// What a core reports once it listens.
struct Listening {
    core: usize,
    thread: ThreadId,
    /// The CPUs its executor thread is pinned to.
    cpus: Vec<usize>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .field("cores", &self.cores)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

/// The online CPUs this process may run on (its affinity mask, which
/// `taskset`, systemd's `CPUAffinity=` and cgroup cpusets restrict).
fn allowed_cpus() -> io::Result<CpuSet> {
    let online = CpuSet::online().map_err(|e| io::Error::other(e.to_string()))?;
    let affinity = palisade_host::affinity::allowed_cpus().map_err(io::Error::other)?;
    let allowed = online.filter(|l| affinity.contains(&l.cpu));
    if allowed.is_empty() {
        return Err(io::Error::other(
            "the process may not run on any online CPU (affinity mask)",
        ));
    }
    Ok(allowed)
}

/// How many data-plane cores `cpus` starts on this machine, as
/// [`Server::start`] will place them.
pub fn core_count(cpus: &Cpus) -> io::Result<usize> {
    Ok(placement(cpus)?.executor_count())
}

fn placement(cpus: &Cpus) -> io::Result<PoolPlacement> {
    let online = allowed_cpus()?;
    let count = online.len();
    Ok(match cpus {
        Cpus::All => PoolPlacement::MaxSpread(count, Some(online)),
        Cpus::Count(n) => {
            if *n > count {
                return Err(io::Error::other(format!(
                    "node.cores = {n} but this process may use only {count} CPUs"
                )));
            }
            PoolPlacement::MaxSpread(*n, Some(online))
        }
        Cpus::List(list) => {
            let mut sets = Vec::with_capacity(list.len());
            for &cpu in list {
                let set = online.clone().filter(|l| l.cpu == cpu);
                if set.is_empty() {
                    return Err(io::Error::other(format!(
                        "node.cores lists CPU {cpu}, which is offline or outside this process's affinity"
                    )));
                }
                sets.push(set);
            }
            PoolPlacement::Custom(sets)
        }
    })
}

impl Server {
    /// Starts the cores and returns once every core listens, or with an
    /// error within [`START_TIMEOUT`] (plus at most [`STOP_TIMEOUT`] to
    /// end the cores that did start).
    pub fn start(shared: Arc<RequestService>, opts: ServerOptions) -> io::Result<Server> {
        Server::start_with_hooks(shared, opts, StartHooks::default())
    }

    /// [`Server::start`] with test hooks.
    #[doc(hidden)]
    pub fn start_with_hooks(
        shared: Arc<RequestService>,
        opts: ServerOptions,
        hooks: StartHooks,
    ) -> io::Result<Server> {
        let placement = placement(&opts.cpus)?;
        let cores = placement.executor_count();
        assert!(cores >= 1);
        if shared.stats.len() != cores {
            return Err(io::Error::other(format!(
                "{} stats blocks for {cores} cores: size them with core_count()",
                shared.stats.len()
            )));
        }
        // Resolve port 0 once so that every core binds the same port.
        let (reservation, local_addr) = net::reserve(opts.listen)?;
        // Bound here, so a taken port fails the start with its name; core 0
        // takes it over (a one-time hand-off at start, hence the mutex).
        let (admin, admin_addr) = match opts.admin {
            Some(addr) => {
                // Without SO_REUSEPORT: a second process on the same port must
                // fail rather than take half the scrapes.
                let (sock, local) =
                    palisade_host::admin::bind_listener(addr, false).map_err(|e| {
                        io::Error::new(e.kind(), format!("binding admin.listen {addr}: {e}"))
                    })?;
                (Some(sock), Some(local))
            }
            None => (None, None),
        };
        let admin = Arc::new(std::sync::Mutex::new(admin));
        let opts = ServerOptions {
            listen: local_addr,
            admin: admin_addr,
            ..opts
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let mesh = MeshBuilder::<CoreMsg, _>::full(cores, MESH_CHANNEL_CAPACITY);
        let heartbeats = heartbeat::slots(cores, monotonic_ms());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Listening, String>>();
        let wakers = Arc::new(CoreWakers::new(cores));
        let start_timeout = hooks.start_timeout.unwrap_or(START_TIMEOUT);
        let stop_timeout = hooks.stop_timeout.unwrap_or(STOP_TIMEOUT);
        let handles = LocalExecutorPoolBuilder::new(placement)
            .name("palisade-core")
            .preempt_timer(opts.preempt_timer)
            .io_memory(IO_MEMORY)
            .on_all_shards({
                let shutdown = shutdown.clone();
                let heartbeats = heartbeats.clone();
                let wakers = wakers.clone();
                move || async move {
                    let links = CoreLinks {
                        connections,
                        shutdown,
                        heartbeats,
                        admin,
                        wakers,
                        hooks,
                    };
                    core_main(shared, opts, mesh, links, ready_tx).await;
                }
            })
            .map_err(|e| io::Error::other(format!("starting data-plane cores: {e}")))?;
        let mut server = Server {
            handles: Some(handles),
            shutdown,
            wakers,
            kicker: None,
            listening: Arc::new(std::sync::Mutex::new(Vec::with_capacity(cores))),
            stop_timeout,
            local_addr,
            admin_addr,
            cores,
            heartbeats,
            cpus: Vec::new(),
        };
        let started = server.start_kicker().and_then(|()| {
            server
                .await_listening(&ready_rx, start_timeout)
                .map_err(io::Error::other)
        });
        let cpus = match started {
            Ok(cpus) => cpus,
            Err(e) => {
                let left = server.stop_within(stop_timeout);
                if left == 0 {
                    return Err(e);
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}; {left} core threads did not stop within {stop_timeout:?} and were left behind"),
                ));
            }
        };
        server.cpus = cpus;
        drop(reservation);
        info!(
            listen = %local_addr,
            cores,
            cpus = %palisade_host::affinity::cpu_list(&server.cpus),
            "data plane serving"
        );
        if let Some(admin) = admin_addr {
            info!(%admin, "metrics on http://{admin}/metrics");
        }
        Ok(server)
    }

    /// The admin endpoint's address (`None`: disabled).
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of cores serving.
    #[must_use]
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The CPUs the data-plane cores are pinned to, ascending, as each
    /// core's executor thread read its own mask once it listened: what
    /// the node's other threads should stay off (see
    /// [`palisade_host::affinity::spare_cpus`]).
    #[must_use]
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Pins the server's own thread that is not a core (the kick thread,
    /// see [`nudge`]) to `cpus`. Call once after [`Server::start`], with
    /// the CPUs the cores leave over. The cores keep theirs.
    ///
    /// # Errors
    ///
    /// The kernel refused the mask; the thread keeps its own.
    pub fn pin_helpers(
        &self,
        cpus: &[usize],
    ) -> Result<(), palisade_host::affinity::AffinityError> {
        match &self.kicker {
            Some(kicker) => palisade_host::affinity::pin_thread(kicker.tid(), cpus),
            None => Ok(()),
        }
    }

    /// Each core's last heartbeat in monotonic ms, by core index, into
    /// `out` (cleared first). The watchdog calls it from the control loop.
    pub fn core_heartbeats_ms(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.heartbeats.iter().map(|b| b.load(Ordering::Relaxed)));
    }

    /// Starts the thread that kicks stale cores (see [`nudge`]).
    fn start_kicker(&mut self) -> io::Result<()> {
        let Some(handles) = self.handles.as_ref() else {
            return Ok(());
        };
        let threads = handles
            .handles()
            .iter()
            .map(|h| (h.thread().id(), h.as_pthread_t()))
            .collect();
        let listening = self.listening.clone();
        let heartbeats = self.heartbeats.clone();
        let is_stale = move |thread: ThreadId| {
            let core = listening
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|(id, _)| *id == thread)
                .map(|&(_, core)| core);
            match core {
                // Not listening yet: it may never run its first task.
                None => true,
                Some(core) => {
                    let beat_ms = heartbeats[core].load(Ordering::Relaxed);
                    monotonic_ms().saturating_sub(beat_ms) > STALE_AFTER_MS
                }
            }
        };
        let kicker = Kicker::start(threads, is_stale)
            .map_err(|e| io::Error::new(e.kind(), format!("starting the kick thread: {e}")))?;
        self.kicker = Some(kicker);
        Ok(())
    }

    /// Waits until every core reported that it listens, a core failed,
    /// or `timeout` passed. Returns the CPUs the cores are pinned to.
    fn await_listening(
        &self,
        ready: &mpsc::Receiver<Result<Listening, String>>,
        timeout: Duration,
    ) -> Result<Vec<usize>, String> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = monotonic_ms().saturating_add(timeout_ms);
        let mut listening = 0;
        let mut cpus = Vec::with_capacity(self.cores);
        while listening < self.cores {
            let now_ms = monotonic_ms();
            if now_ms >= deadline_ms {
                return Err(format!(
                    "only {listening} of {} data-plane cores listened within {timeout:?}",
                    self.cores
                ));
            }
            let wait = Duration::from_millis(deadline_ms - now_ms).min(THREAD_POLL);
            match ready.recv_timeout(wait) {
                Ok(Ok(Listening {
                    core,
                    thread,
                    cpus: core_cpus,
                })) => {
                    debug!(core, cpus = ?core_cpus, "core listening");
                    self.listening
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((thread, core));
                    cpus.extend(core_cpus);
                    listening += 1;
                }
                Ok(Err(message)) => return Err(message),
                Err(timeout_or_gone) => {
                    if timeout_or_gone == RecvTimeoutError::Disconnected {
                        std::thread::sleep(THREAD_POLL);
                    }
                    // A thread that ended without a word never will (its
                    // executor could not be built, or it panicked).
                    if self.ended_cores() > listening {
                        return Err(format!(
                            "a data-plane core thread ended before it listened ({listening} of {} listening)",
                            self.cores
                        ));
                    }
                }
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(cpus)
    }

    /// Core threads that have ended.
    fn ended_cores(&self) -> usize {
        self.handles.as_ref().map_or(0, |handles| {
            handles.handles().iter().filter(|h| h.is_finished()).count()
        })
    }

    /// Stops every core and waits for them, at most [`STOP_TIMEOUT`]: a
    /// core that does not end by then (stuck in a task that never yields)
    /// is left running and logged.
    pub fn stop(&mut self) {
        let left = self.stop_within(self.stop_timeout);
        if left > 0 {
            error!(
                left,
                timeout = ?self.stop_timeout,
                "data-plane cores did not stop; leaving them behind"
            );
        }
    }

    /// Sets the shutdown flag, wakes every core and waits up to `timeout`
    /// for them to end. Returns how many did not.
    fn stop_within(&mut self, timeout: Duration) -> usize {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wakers.wake_all();
        let Some(handles) = self.handles.take() else {
            if let Some(mut kicker) = self.kicker.take() {
                kicker.stop();
            }
            return 0;
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = monotonic_ms().saturating_add(timeout_ms);
        // The kicker keeps kicking stale cores meanwhile: a stopping core
        // may be parked too.
        let left = loop {
            let running = handles
                .handles()
                .iter()
                .filter(|h| !h.is_finished())
                .count();
            if running == 0 || monotonic_ms() >= deadline_ms {
                break running;
            }
            std::thread::sleep(THREAD_POLL);
        };
        // Before the threads are joined or detached: the kicker holds
        // their pthread_t.
        if let Some(mut kicker) = self.kicker.take() {
            kicker.stop();
        }
        if left == 0 {
            for result in handles.join_all() {
                if let Err(e) = result {
                    warn!(error = %e, "data-plane core ended with an error");
                }
            }
        }
        // Otherwise dropping the handles detaches the threads.
        left
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every core shares with the server handle.
struct CoreLinks {
    /// Open client connections, all cores together.
    connections: Arc<AtomicU64>,
    /// Set when the server stops.
    shutdown: Arc<AtomicBool>,
    /// One liveness beat per core, for the service watchdog.
    heartbeats: Arc<[AtomicU64]>,
    /// The admin listener, taken by core 0.
    admin: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
    /// Where each core registers to be woken when the server stops.
    wakers: Arc<CoreWakers>,
    /// Test hooks (off by default).
    hooks: StartHooks,
}

/// Resolves once `shutdown` is set: [`Server::stop`] sets it and then wakes
/// the task registered in `registration` (the core's root task).
async fn shutdown_requested(shutdown: &AtomicBool, registration: &Registration) {
    std::future::poll_fn(|cx| {
        if shutdown.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        registration.refresh(cx.waker());
        if shutdown.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

async fn core_main(
    shared: Arc<RequestService>,
    opts: ServerOptions,
    mesh: MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>,
    links: CoreLinks,
    ready: mpsc::Sender<Result<Listening, String>>,
) {
    let CoreLinks {
        connections,
        shutdown,
        heartbeats,
        admin,
        wakers,
        hooks,
    } = links;
    let cores = mesh.nr_peers();
    // Until this core listens, the kick thread interrupts its sleep every
    // few ms: glommio 0.9 may park it with runnable tasks under load
    // (issue 16: starts hung in the mesh join while the machine was busy).
    let registration = wakers.register().await;
    if hooks.vanish == Some(registration.slot()) {
        warn!(slot = registration.slot(), "test hook: core thread ends");
        return;
    }
    if let Some((slot, release)) = &hooks.wedge {
        if *slot == registration.slot() {
            warn!(slot, "test hook: core wedged, deaf to shutdown");
            while !release.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            return;
        }
    }
    // A peer that never joins (its thread died) must not keep this core
    // from stopping.
    let joined_mesh = futures_lite::future::or(async { Some(mesh.join().await) }, async {
        shutdown_requested(&shutdown, &registration).await;
        None
    })
    .await;
    let (senders, mut receivers) = match joined_mesh {
        Some(Ok(joined)) => joined,
        Some(Err(e)) => {
            let _ = ready.send(Err(format!("joining the core mesh: {e}")));
            return;
        }
        None => {
            debug!("stopped before the core mesh formed");
            return;
        }
    };
    let index = senders.peer_id();
    let executor = glommio::executor();
    let hot = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(opts.rpc_latency),
        "lease-rpc",
    );
    let background =
        executor.create_task_queue(Shares::Static(50), Latency::NotImportant, "background");
    let listener = match net::listener(opts.listen, opts.dscp) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!("core {index}: binding {}: {e}", opts.listen)));
            return;
        }
    };
    let waiters_per_core = (opts.waiters_max as usize).div_ceil(cores).max(1);
    let ctx_unauthenticated_max = opts.unauthenticated_max;
    let (kick_tx, kick_rx) = local_channel::new_bounded::<()>(1);
    let ctx = Rc::new(CoreCtx {
        shared,
        opts,
        index,
        cores,
        senders,
        waits: RefCell::new(WaitQueues::new(waiters_per_core)),
        waits_kick: kick_tx,
        conns: RefCell::new(HashMap::new()),
        unauthenticated: RefCell::new(std::collections::BTreeMap::new()),
        unauthenticated_max: (ctx_unauthenticated_max as usize).div_ceil(cores).max(1),
        next_conn: Cell::new(1),
        connections,
        hot,
        commits: RefCell::new(HashMap::new()),
        next_tag: Cell::new(1),
        lists: RefCell::default(),
    });

    let mut tasks = Vec::new();
    for (_, receiver) in receivers.streams() {
        let ctx = ctx.clone();
        tasks.push(spawn_owned(hot, async move {
            while let Some(msg) = receiver.recv().await {
                ctx.on_message(msg);
            }
        }));
    }
    tasks.push(spawn_owned(hot, wait_timer(ctx.clone(), kick_rx)));
    if let Some(link) = ctx.opts.replica.as_ref() {
        let notices = link.notices[index].clone();
        let ctx = ctx.clone();
        tasks.push(spawn_owned(hot, async move {
            // The control thread's send wakes this task across threads
            // (glommio queues a foreign wake and rings the core's eventfd).
            while let Ok(batch) = notices.recv_async().await {
                ctx.on_notices(batch);
            }
        }));
    }
    tasks.push(spawn_owned(hot, conn::accept_loop(ctx.clone(), listener)));
    tasks.push(spawn_owned(background, sweeper(ctx.clone())));
    tasks.push(spawn_owned(background, list::prune_names(ctx.clone())));
    if index == 0 {
        let admin = admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sock) = admin {
            let listener = palisade_host::admin::into_glommio(sock);
            let metrics_ctx = ctx.clone();
            let pages =
                Rc::new(move |now_ms: u64| crate::metrics::render(&metrics_ctx.shared, now_ms));
            tasks.push(spawn_owned(
                background,
                palisade_host::admin::accept_loop(pages, listener, background),
            ));
        }
    }
    drop(admin);
    tasks.push(spawn_owned(hot, heartbeat::beat(heartbeats, index)));
    // glommio pinned this thread before it ran the executor: its mask is
    // the core's placement.
    let cpus = match palisade_host::affinity::allowed_cpus() {
        Ok(cpus) => cpus,
        Err(e) => {
            let _ = ready.send(Err(format!("core {index}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(Listening {
        core: index,
        thread: std::thread::current().id(),
        cpus,
    }));

    shutdown_requested(&shutdown, &registration).await;
    debug!(core = index, "core stopping");
    // Cancel the core's long-lived tasks here, while the executor runs:
    // left detached, they outlived it and kept its rings, its listener and
    // its blocking thread alive (per core and stop: 3 io_uring instances,
    // the listening socket, a thread).
    drop(tasks);
    drop(registration);
}

/// Spawns a detached task from a context that cannot fail on it (the
/// queue exists); a failure is logged, never a panic.
fn server_spawn(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => warn!(error = %e, "could not spawn a task"),
    }
}

fn spawn(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    spawn_owned(queue, future).detach();
}

/// Spawns one of a core's long-lived tasks; dropping the returned task
/// cancels it.
fn spawn_owned(
    queue: TaskQueueHandle,
    future: impl std::future::Future<Output = ()> + 'static,
) -> glommio::Task<()> {
    glommio::spawn_local_into(future, queue).expect("task queues created on this executor exist")
}

/// Runs wait-queue deadlines and retries; sleeps until the next one or
/// until kicked.
async fn wait_timer(ctx: Rc<CoreCtx>, kick: local_channel::LocalReceiver<()>) {
    loop {
        let next = ctx.waits.borrow().poll_timeout();
        let now = monotonic_ms();
        match next {
            Some(at) if at <= now => {
                let lead = ctx.lead();
                ctx.waits
                    .borrow_mut()
                    .handle_timeout(&ctx.shared.table, lead, now);
                ctx.drain_waits();
                continue;
            }
            Some(at) => {
                let sleep = glommio::timer::sleep(Duration::from_millis(at - now));
                futures_lite::future::or(sleep, async {
                    let _ = kick.recv().await;
                })
                .await;
            }
            None => {
                if kick.recv().await.is_none() {
                    return;
                }
            }
        }
    }
}

/// Sweeps this core's share of the table: counts live leases for status
/// and reclaims idle keys.
async fn sweeper(ctx: Rc<CoreCtx>) {
    let slots = ctx.shared.table.slot_count();
    let per_core = slots.div_ceil(ctx.cores);
    let range = (ctx.index * per_core)..((ctx.index + 1) * per_core).min(slots);
    let reclaim_after_ms = u64::try_from(ctx.opts.reclaim_after.as_millis()).unwrap_or(u64::MAX);
    loop {
        let mut held = 0;
        let mut start = range.start;
        let core_stats = &ctx.shared.stats[ctx.index];
        while start < range.end {
            let end = (start + SWEEP_CHUNK).min(range.end);
            let stats = ctx
                .shared
                .table
                .sweep(start..end, monotonic_ms(), reclaim_after_ms);
            held += stats.held;
            crate::metrics::bump(&core_stats.expirations, stats.expired);
            start = end;
            glommio::yield_if_needed().await;
        }
        core_stats.leases_held.store(held, Ordering::Relaxed);
        glommio::timer::sleep(ctx.opts.sweep_interval).await;
    }
}

//! The shell that moves bytes: one pinned thread per core, each running a
//! level-triggered `epoll` loop over its own SO_REUSEPORT listener, its
//! client connections and a doorbell ([`palisade_host::doorbell`]) that
//! other cores and the control thread ring after queueing work for it.
//! Every decision is made in the sans-IO layers below
//! ([`RequestService::handle`], [`crate::waiters::WaitQueues`]); the shell reads bytes,
//! feeds them in, and writes each connection's answers with one `write`
//! per turn.
//!
//! A turn of a core (`server/core.rs`): wait in `epoll_wait` (no longer
//! than the next deadline; near saturation, with `dataplane.busy_poll`,
//! poll a while before sleeping: `server/spin.rs`), read each readable connection once and answer
//! what it holds, accept, then take the messages other cores and the control
//! thread queued, run due timers (wait-queue deadlines, connection
//! deadlines, watches) and a bounded piece of background work (the table
//! sweep, the `List` name index's pruning), and finally write every
//! connection that has answers. Why not glommio (the first shell): on this
//! VM its park and wake cost about 11 µs of CPU per request more than a
//! plain epoll loop (`bench/results/echo-runtimes/`), and an executor
//! could park with runnable tasks (issue 16).
//!
//! What it never does: decide a request's outcome, block on a socket or a
//! lock, or sleep while a message, a notice or a ready connection waits.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use crate::replica::{Notice, Proposal};
use crate::service::RequestService;
use crate::waiters::{WaitEvent, WaitRequest};
use palisade_host::clock::monotonic_ms;
use palisade_host::doorbell::Doorbell;
use palisade_host::heartbeat;

mod conn;
mod core;
mod list;
pub mod net;
mod spin;

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
    /// How long a core polls for more work after its last before it
    /// sleeps, while its load is high (`spin.rs`); zero never polls.
    pub busy_poll: Duration,
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
/// `notices[i]` (made with [`notice_channels`]).
#[derive(Debug, Clone)]
pub struct ReplicaLink {
    /// Bounded: a full channel answers "retry" at once.
    pub proposals: flume::Sender<Proposal>,
    /// Rung after a proposal is queued, so that a control thread asleep in
    /// `poll()` takes it (a busy one costs the ring no system call).
    pub doorbell: Arc<Doorbell>,
    /// One per core, in core order.
    pub notices: Vec<NoticeInbox>,
}

/// Where the control plane sends one core what became of its proposals.
#[derive(Debug, Clone)]
pub struct NoticeSender {
    tx: flume::Sender<Vec<Notice>>,
    bell: Arc<Doorbell>,
}

impl NoticeSender {
    /// Queues `batch` for the core and wakes it if it sleeps. Returns
    /// `false` if the core is gone (stopped): nobody waits for the batch.
    pub fn send(&self, batch: Vec<Notice>) -> bool {
        let sent = self.tx.send(batch).is_ok();
        self.bell.ring();
        sent
    }
}

/// A core's end of [`NoticeSender`]: the channel, and the doorbell the
/// core waits on (the same one other cores ring).
#[derive(Debug, Clone)]
pub struct NoticeInbox {
    rx: flume::Receiver<Vec<Notice>>,
    bell: Arc<Doorbell>,
}

/// One notice channel per core: the control plane keeps the senders, the
/// data plane's [`ReplicaLink::notices`] takes the inboxes.
///
/// # Errors
///
/// An `eventfd` could not be made (out of file descriptors).
pub fn notice_channels(cores: usize) -> io::Result<(Vec<NoticeSender>, Vec<NoticeInbox>)> {
    let mut senders = Vec::with_capacity(cores);
    let mut inboxes = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = flume::unbounded();
        let bell = Arc::new(Doorbell::new()?);
        senders.push(NoticeSender {
            tx,
            bell: bell.clone(),
        });
        inboxes.push(NoticeInbox { rx, bell });
    }
    Ok((senders, inboxes))
}

/// A change waiting for its commit on the core that proposed it.
#[derive(Debug)]
struct PendingCommit {
    /// Delivered once committed.
    event: WaitEvent,
    key: crate::table::LeaseKey,
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
    Wake(crate::table::LeaseKey),
    /// A connection closed: drop its waiters (sent to every core it used).
    Cancel { core: u16, conn: u64 },
    /// An answer for a waiter (sent to the connection's core).
    Deliver(WaitEvent),
    /// Asks for this core's page of a `List` (sent to every other core).
    ListQuery(Box<list::Query>),
    /// A core's page of a `List` (sent to the core gathering it).
    ListPart { id: u64, part: crate::names::Part },
}

/// How [`Server::start`] waits for every core to listen before it gives
/// up (the node then exits non-zero and its service manager restarts it).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Server::stop`] waits for the cores to end before it leaves
/// them running (a core stuck where the stop cannot reach it; the process
/// is about to exit anyway).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting [`Server::start`] or [`Server::stop`] looks at the
/// core threads.
const THREAD_POLL: Duration = Duration::from_millis(5);
/// How often a parked watch re-reads its key: the longest a watcher hears
/// of a new grant late. A table read is a few nanoseconds; a few watchers
/// per fencing proxy cost nothing measurable.
pub const WATCH_POLL: Duration = Duration::from_millis(1);

/// Test hooks for [`Server::start_with_hooks`]; all off by default.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct StartHooks {
    /// Replaces [`START_TIMEOUT`].
    pub start_timeout: Option<Duration>,
    /// Replaces [`STOP_TIMEOUT`].
    pub stop_timeout: Option<Duration>,
    /// Core `n` (0 first) wedges before it listens: it ignores the
    /// shutdown flag until the flag given here is set, like a core stuck
    /// where nothing can reach it.
    pub wedge: Option<(usize, Arc<AtomicBool>)>,
    /// Core `n` ends at once, without a word, like a thread whose set-up
    /// failed before it could report.
    pub vanish: Option<usize>,
}

/// A running data plane.
pub struct Server {
    threads: Vec<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    /// Each core's doorbell: rung when the server stops.
    bells: Vec<Arc<Doorbell>>,
    /// Serves `GET /metrics` (its own thread, off the cores).
    admin: Option<palisade_host::admin::threaded::AdminThread>,
    stop_timeout: Duration,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    cores: usize,
    /// Each core's last heartbeat (monotonic ms).
    heartbeats: Arc<[AtomicU64]>,
    /// The CPUs the cores are pinned to, ascending.
    cpus: Vec<usize>,
}

/// What a core reports once it listens.
struct Listening {
    core: usize,
    /// The CPUs its thread is pinned to.
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

/// How many data-plane cores `cpus` starts on this machine, as
/// [`Server::start`] will place them.
pub fn core_count(cpus: &Cpus) -> io::Result<usize> {
    Ok(placement(cpus)?.len())
}

/// The CPU each core is pinned to, in core order. `Count(n)` spreads the
/// cores evenly over the CPUs this process may use (every other CPU for
/// half of them), so that sibling hyperthreads, usually numbered apart,
/// are the last to be paired.
fn placement(cpus: &Cpus) -> io::Result<Vec<usize>> {
    let allowed = palisade_host::affinity::allowed_cpus().map_err(io::Error::other)?;
    if allowed.is_empty() {
        return Err(io::Error::other(
            "the process may not run on any online CPU (affinity mask)",
        ));
    }
    let count = allowed.len();
    Ok(match cpus {
        Cpus::All => allowed,
        Cpus::Count(n) => {
            if *n > count {
                return Err(io::Error::other(format!(
                    "node.cores = {n} but this process may use only {count} CPUs"
                )));
            }
            (0..*n).map(|i| allowed[i * count / n]).collect()
        }
        Cpus::List(list) => {
            for &cpu in list {
                if !allowed.contains(&cpu) {
                    return Err(io::Error::other(format!(
                        "node.cores lists CPU {cpu}, which is offline or outside this process's affinity"
                    )));
                }
            }
            list.clone()
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
        let cores = placement.len();
        assert!(cores >= 1);
        if shared.stats.len() != cores {
            return Err(io::Error::other(format!(
                "{} stats blocks for {cores} cores: size them with core_count()",
                shared.stats.len()
            )));
        }
        if let Some(link) = &opts.replica {
            if link.notices.len() != cores {
                return Err(io::Error::other(format!(
                    "{} notice channels for {cores} cores: make them with notice_channels()",
                    link.notices.len()
                )));
            }
        }
        // Resolve port 0 once so that every core binds the same port.
        let (reservation, local_addr) = net::reserve(opts.listen)?;
        // Bound here, so a taken port fails the start with its name.
        let (admin_sock, admin_addr) = match opts.admin {
            Some(addr) => {
                // Without SO_REUSEPORT: a second process on the same port must
                // fail rather than take half the scrapes.
                let (sock, local) = palisade_host::admin::bind_listener(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("binding admin.listen {addr}: {e}"))
                })?;
                (Some(sock), Some(local))
            }
            None => (None, None),
        };
        let opts = ServerOptions {
            listen: local_addr,
            admin: admin_addr,
            ..opts
        };
        // Each core's doorbell: with replication, the one its notices ring.
        let bells: Vec<Arc<Doorbell>> = match &opts.replica {
            Some(link) => link.notices.iter().map(|n| n.bell.clone()).collect(),
            None => (0..cores)
                .map(|_| Doorbell::new().map(Arc::new))
                .collect::<io::Result<_>>()?,
        };
        let (inbox_txs, inbox_rxs): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| flume::unbounded::<CoreMsg>()).unzip();
        let peers: Arc<[core::Peer]> = inbox_txs
            .into_iter()
            .zip(&bells)
            .map(|(inbox, bell)| core::Peer {
                inbox,
                bell: bell.clone(),
            })
            .collect();
        let shutdown = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let heartbeats = heartbeat::slots(cores, monotonic_ms());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Listening, String>>();
        let start_timeout = hooks.start_timeout.unwrap_or(START_TIMEOUT);
        let stop_timeout = hooks.stop_timeout.unwrap_or(STOP_TIMEOUT);
        let mut server = Server {
            threads: Vec::with_capacity(cores),
            shutdown: shutdown.clone(),
            bells: bells.clone(),
            admin: None,
            stop_timeout,
            local_addr,
            admin_addr,
            cores,
            heartbeats: heartbeats.clone(),
            cpus: Vec::new(),
        };
        for (index, (cpu, inbox)) in placement.iter().copied().zip(inbox_rxs).enumerate() {
            let setup = core::Setup {
                shared: shared.clone(),
                opts: opts.clone(),
                index,
                cpu,
                peers: peers.clone(),
                inbox,
                connections: connections.clone(),
                heartbeats: heartbeats.clone(),
                shutdown: shutdown.clone(),
            };
            let hooks = hooks.clone();
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("palisade-core-{index}"))
                .spawn(move || core::run(setup, &hooks, &ready));
            match spawned {
                Ok(handle) => server.threads.push(handle),
                Err(e) => {
                    server.stop_within(stop_timeout);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("starting data-plane core {index}: {e}"),
                    ));
                }
            }
        }
        drop(ready_tx);
        let started = server
            .await_listening(&ready_rx, start_timeout)
            .map_err(io::Error::other);
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
        if let Some(sock) = admin_sock {
            let metrics = shared.clone();
            let pages = Arc::new(move |now_ms: u64| crate::metrics::render(&metrics, now_ms));
            match palisade_host::admin::threaded::start(sock, pages) {
                Ok(admin) => server.admin = Some(admin),
                Err(e) => {
                    server.stop_within(stop_timeout);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("starting the admin endpoint's thread: {e}"),
                    ));
                }
            }
        }
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
    /// core's thread read its own mask once it listened: what the node's
    /// other threads should stay off (see
    /// [`palisade_host::affinity::spare_cpus`]).
    #[must_use]
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Pins the server's own thread that is not a core (the admin
    /// endpoint's; the threads it starts per scrape inherit the mask) to
    /// `cpus`. Call once after [`Server::start`], with the CPUs the cores
    /// leave over. The cores keep theirs.
    ///
    /// # Errors
    ///
    /// The kernel refused the mask; the thread keeps its own.
    pub fn pin_helpers(
        &self,
        cpus: &[usize],
    ) -> Result<(), palisade_host::affinity::AffinityError> {
        match &self.admin {
            Some(admin) => palisade_host::affinity::pin_thread(admin.tid(), cpus),
            None => Ok(()),
        }
    }

    /// Each core's last heartbeat in monotonic ms, by core index, into
    /// `out` (cleared first). The watchdog calls it from the control loop.
    pub fn core_heartbeats_ms(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.heartbeats.iter().map(|b| b.load(Ordering::Relaxed)));
    }

    /// Waits until every core reported that it listens, a core failed,
    /// or `timeout` passed. Returns the CPUs the cores are pinned to.
    fn await_listening(
        &self,
        ready: &mpsc::Receiver<Result<Listening, String>>,
        timeout: Duration,
    ) -> Result<Vec<usize>, String> {
        let cores = self.cores;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = monotonic_ms().saturating_add(timeout_ms);
        let mut listening = 0;
        let mut reported = vec![false; cores];
        let mut cpus = Vec::with_capacity(cores);
        while listening < cores {
            let now_ms = monotonic_ms();
            if now_ms >= deadline_ms {
                return Err(format!(
                    "only {listening} of {cores} data-plane cores listened within {timeout:?}"
                ));
            }
            let wait = Duration::from_millis(deadline_ms - now_ms).min(THREAD_POLL);
            match ready.recv_timeout(wait) {
                Ok(Ok(Listening {
                    core,
                    cpus: core_cpus,
                })) => {
                    debug!(core, cpus = ?core_cpus, "core listening");
                    reported[core] = true;
                    cpus.extend(core_cpus);
                    listening += 1;
                }
                Ok(Err(message)) => return Err(message),
                Err(timeout_or_gone) => {
                    if timeout_or_gone == RecvTimeoutError::Disconnected {
                        std::thread::sleep(THREAD_POLL);
                    }
                    // A thread that ended without a word never will.
                    let silent_end = self
                        .threads
                        .iter()
                        .zip(&reported)
                        .any(|(thread, &reported)| !reported && thread.is_finished());
                    if silent_end {
                        return Err(format!(
                            "a data-plane core thread ended before it listened ({listening} of {cores} listening)"
                        ));
                    }
                }
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(cpus)
    }

    /// Stops every core and waits for them, at most [`STOP_TIMEOUT`]: a
    /// core that does not end by then is left running and logged.
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

    /// Sets the shutdown flag, rings every core and waits up to `timeout`
    /// for them to end. Returns how many did not.
    fn stop_within(&mut self, timeout: Duration) -> usize {
        self.shutdown.store(true, Ordering::SeqCst);
        for bell in &self.bells {
            bell.ring();
        }
        if let Some(mut admin) = self.admin.take() {
            admin.stop();
        }
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = monotonic_ms().saturating_add(timeout_ms);
        let left = loop {
            let running = self.threads.iter().filter(|h| !h.is_finished()).count();
            if running == 0 || monotonic_ms() >= deadline_ms {
                break running;
            }
            std::thread::sleep(THREAD_POLL);
        };
        for handle in std::mem::take(&mut self.threads) {
            if handle.is_finished() && handle.join().is_err() {
                warn!("a data-plane core ended with a panic");
            }
            // Otherwise dropping the handle detaches the thread.
        }
        left
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

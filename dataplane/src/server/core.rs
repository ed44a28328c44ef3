//! One core: its thread, its `epoll` loop, and what it does between
//! reads (cross-core messages, commits, wait-queue events, timers and
//! background work). The connections themselves are [`super::conn`]'s.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll;
use tracing::{debug, warn};

use super::conn::Client;
use super::{
    list, CoreMsg, Listening, PendingCommit, ServerOptions, StartHooks, UNCOMMITTED, WATCH_POLL,
};
use crate::leadership::LeadershipView;
use crate::metrics::Denial;
use crate::replica::{tag, tag_core, Command, Notice, Proposal};
use crate::service::{Commit, RequestService, WatchRequest};
use crate::table::LeaseKey;
use crate::waiters::{home_core, Origin, WaitEvent, WaitQueues, WaitRequest};
use palisade_host::clock::{monotonic_ms, monotonic_ns};
use palisade_host::doorbell::Doorbell;
use palisade_host::heartbeat;

/// The listener's epoll data.
pub(super) const LISTENER: u64 = u64::MAX;
/// The doorbell's epoll data.
pub(super) const BELL: u64 = u64::MAX - 1;
/// Events one `epoll_wait` returns at most (the rest wait for the next
/// turn, which takes them at once).
const EVENTS_MAX: usize = 256;
/// Cross-core messages and notice batches taken per turn at most: the
/// rest wait one turn (the loop does not sleep while any wait), so that a
/// flood of messages cannot starve the connections.
const MESSAGES_PER_TURN: usize = 1024;
/// Slots swept per turn while a sweep is under way: 32 KiB of slots, a few
/// microseconds. A sweep visits every slot of the core's share once per
/// `leases.sweep_interval`, so with 4 096-slot pieces (up to ~100 µs each,
/// cold) about one request in a hundred waited behind one, which showed
/// as a bump at p99 of the uncontended benchmark.
const SWEEP_CHUNK: usize = 512;
/// How often each core prunes its names for `List`.
const PRUNE_EVERY_MS: u64 = 100;
/// Names pruned per turn while a prune is under way (each a map step, two
/// key hashes and a table lookup: ~5 µs for the piece, like a sweep piece).
/// Pieces of 64 put a bump at p99 of the uncontended benchmark (about one
/// request in a hundred waited behind one): p99 at 20 000 arrivals/s 91–146
/// µs with 64, 68–77 with 16, 58–69 with no index at all, in alternating
/// rounds (`bench/results/epoll-dataplane/prune-chunk/`).
const PRUNE_CHUNK: usize = 16;
/// A turn this long (everything between two `epoll_wait`s) is logged: every
/// connection of the core waited that long (or the thread was descheduled).
const SLOW_TURN_MS: u64 = 50;

/// Another core as this one reaches it.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) inbox: flume::Sender<CoreMsg>,
    pub(super) bell: Arc<Doorbell>,
}

/// What a core thread starts from.
pub(super) struct Setup {
    pub(super) shared: Arc<RequestService>,
    pub(super) opts: ServerOptions,
    pub(super) index: usize,
    pub(super) cpu: usize,
    pub(super) peers: Arc<[Peer]>,
    pub(super) inbox: flume::Receiver<CoreMsg>,
    pub(super) connections: Arc<AtomicU64>,
    pub(super) heartbeats: Arc<[AtomicU64]>,
    pub(super) shutdown: Arc<AtomicBool>,
}

/// A core thread's body: pin, listen, report, serve until the shutdown
/// flag is set.
pub(super) fn run(
    setup: Setup,
    hooks: &StartHooks,
    ready: &mpsc::Sender<Result<Listening, String>>,
) {
    let index = setup.index;
    if hooks.vanish == Some(index) {
        warn!(core = index, "test hook: core thread ends");
        return;
    }
    if let Some((slot, release)) = &hooks.wedge {
        if *slot == index {
            warn!(core = index, "test hook: core wedged, deaf to shutdown");
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return;
        }
    }
    if let Err(e) = palisade_host::affinity::pin_current_thread(&[setup.cpu]) {
        let _ = ready.send(Err(format!(
            "core {index}: pinning to CPU {}: {e}",
            setup.cpu
        )));
        return;
    }
    let mut core = match Core::new(setup) {
        Ok(core) => core,
        Err(message) => {
            let _ = ready.send(Err(message));
            return;
        }
    };
    let cpus = match palisade_host::affinity::allowed_cpus() {
        Ok(cpus) => cpus,
        Err(e) => {
            let _ = ready.send(Err(format!("core {index}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(Listening { core: index, cpus }));
    if let Err(e) = core.serve() {
        // epoll itself failed: nothing this core can serve any more. The
        // heartbeat stops, and the watchdog restarts the node.
        warn!(core = index, error = %e, "data-plane core loop failed; the core stops");
    }
    debug!(core = index, "core stopped");
}

/// Background work a core does in pieces between its turns.
#[derive(Debug, Default)]
struct Background {
    /// Next sweep (monotonic ms).
    sweep_at_ms: u64,
    /// The sweep under way: the next slot, and the leases held so far.
    sweep: Option<(usize, u64)>,
    /// Next prune of the names index.
    prune_at_ms: u64,
    /// Names the prune under way has yet to examine.
    prune_left: usize,
}

/// Hashes a connection id, which the core numbers itself from 1 (no
/// client chooses it): a multiply by an odd constant is a bijection, so
/// consecutive ids land in distinct buckets, and its high bits are mixed
/// for the map's tag byte. (With SipHash, `hash_one` and SipHash's
/// `write` were about 1 % of the core's samples at 100 000 arrivals/s, one
/// connection; the connection is looked up four times a read.)
#[derive(Debug, Default)]
pub(super) struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached through a key type other than u64: fold the bytes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(FIBONACCI);
    }
}

/// 2^64 divided by the golden ratio, odd.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

/// One core's state. Single-threaded: only its own thread touches it.
pub(super) struct Core {
    pub(super) shared: Arc<RequestService>,
    pub(super) opts: ServerOptions,
    pub(super) index: usize,
    pub(super) cores: usize,
    peers: Arc<[Peer]>,
    inbox: flume::Receiver<CoreMsg>,
    notices: Option<flume::Receiver<Vec<Notice>>>,
    pub(super) epoll: OwnedFd,
    pub(super) listener: TcpListener,
    /// The listener is out of the epoll set until this time (monotonic
    /// ms) after accepts failed (out of file descriptors, say).
    pub(super) accept_paused_until_ms: Option<u64>,
    pub(super) accept_backoff: Duration,
    pub(super) accept_log: palisade_host::throttle::LogThrottle,
    waits: WaitQueues,
    pub(super) clients: HashMap<u64, Client, BuildHasherDefault<ConnIdHasher>>,
    /// Connections still in their handshake that have not said `Hello`,
    /// oldest first (see [`ServerOptions::unauthenticated_max`]).
    pub(super) unauthenticated: BTreeSet<u64>,
    /// Connections in their handshake that were challenged (said `Hello`),
    /// oldest first: evicted only when no silent one is left.
    pub(super) challenged: BTreeSet<u64>,
    /// This core's share of [`ServerOptions::unauthenticated_max`].
    pub(super) unauthenticated_max: usize,
    pub(super) next_conn: u64,
    pub(super) connections: Arc<AtomicU64>,
    /// Changes proposed by this core, by tag, until their notice.
    commits: HashMap<u64, PendingCommit>,
    next_tag: u64,
    /// Names for `List`, and the pages being gathered.
    pub(super) lists: list::Lists,
    /// Parked watches, re-read every [`WATCH_POLL`].
    watches: Vec<WatchRequest>,
    watch_at_ms: u64,
    /// Answers for this core's connections, handed over once the current
    /// step is done (so that no step finds a connection taken out).
    pub(super) delivered: Vec<WaitEvent>,
    /// Released keys whose waiters must hear of it.
    pub(super) wakes: Vec<LeaseKey>,
    /// The keys of the batch being served, looked up ahead (reused).
    pub(super) batch_keys: Vec<Option<LeaseKey>>,
    /// Connections with answers to write this turn.
    pub(super) dirty: Vec<u64>,
    /// Connection deadlines: (monotonic ms, connection). An entry is
    /// checked against the connection's own when it comes due.
    pub(super) timers: BinaryHeap<Reverse<(u64, u64)>>,
    background: Background,
    /// At most one line a second about slow turns.
    slow_turn_log: palisade_host::throttle::LogThrottle,
    /// Whether to poll before sleeping ([`super::spin`]).
    spin: super::spin::SpinPolicy,
    /// When the last turn that found work ended (monotonic ns).
    last_work_ns: u64,
    heartbeats: Arc<[AtomicU64]>,
    shutdown: Arc<AtomicBool>,
    bell: Arc<Doorbell>,
}

impl Core {
    fn new(setup: Setup) -> Result<Core, String> {
        let Setup {
            shared,
            opts,
            index,
            cpu: _,
            peers,
            inbox,
            connections,
            heartbeats,
            shutdown,
        } = setup;
        let cores = peers.len();
        let opts_busy_poll = opts.busy_poll;
        let listener = super::net::listener(opts.listen, opts.dscp)
            .map_err(|e| format!("core {index}: binding {}: {e}", opts.listen))?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| format!("core {index}: epoll_create: {e}"))?;
        let bell = peers[index].bell.clone();
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
        .and_then(|()| {
            epoll::add(
                &epoll,
                bell.fd(),
                epoll::EventData::new_u64(BELL),
                epoll::EventFlags::IN,
            )
        })
        .map_err(|e| format!("core {index}: epoll_ctl: {e}"))?;
        let notices = opts
            .replica
            .as_ref()
            .map(|link| link.notices[index].rx.clone());
        let waiters_per_core = (opts.waiters_max as usize).div_ceil(cores).max(1);
        let unauthenticated_max = (opts.unauthenticated_max as usize).div_ceil(cores).max(1);
        let now_ms = monotonic_ms();
        Ok(Core {
            shared,
            opts,
            index,
            cores,
            peers,
            inbox,
            notices,
            epoll,
            listener,
            accept_paused_until_ms: None,
            accept_backoff: super::conn::ACCEPT_BACKOFF_MIN,
            accept_log: palisade_host::throttle::LogThrottle::new(
                super::conn::ACCEPT_LOG_INTERVAL_MS,
            ),
            waits: WaitQueues::new(waiters_per_core),
            clients: HashMap::default(),
            unauthenticated: BTreeSet::new(),
            challenged: BTreeSet::new(),
            unauthenticated_max,
            next_conn: 1,
            connections,
            commits: HashMap::new(),
            next_tag: 1,
            lists: list::Lists::default(),
            watches: Vec::new(),
            watch_at_ms: 0,
            delivered: Vec::new(),
            wakes: Vec::new(),
            batch_keys: Vec::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            background: Background {
                sweep_at_ms: now_ms,
                prune_at_ms: now_ms + PRUNE_EVERY_MS,
                ..Background::default()
            },
            slow_turn_log: palisade_host::throttle::LogThrottle::new(1_000),
            spin: super::spin::SpinPolicy::new(
                u64::try_from(opts_busy_poll.as_nanos()).unwrap_or(u64::MAX),
                monotonic_ns(),
            ),
            last_work_ns: 0,
            heartbeats,
            shutdown,
            bell,
        })
    }

    pub(super) fn lead(&self) -> LeadershipView {
        self.shared.leadership.load()
    }

    /// The loop: until the shutdown flag is set.
    fn serve(&mut self) -> rustix::io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_MAX);
        let mut more = false;
        while !self.shutdown.load(Ordering::Relaxed) {
            let now_ms = monotonic_ms();
            self.heartbeats[self.index].store(now_ms, Ordering::Relaxed);
            heartbeat::stall_if_armed(self.index);
            // Near saturation, poll a while before sleeping (`spin.rs`).
            let polled = !more
                && self.spin.enabled()
                && match self.spin.poll_until(monotonic_ns(), self.last_work_ns) {
                    Some(until_ns) => self.poll_briefly(&mut events, until_ns)?,
                    None => false,
                };
            let slept = !more && !polled;
            if !polled {
                // Sleep only if nothing is queued: announce the sleep, then
                // look once more (see `palisade_host::doorbell`).
                let timeout_ms = if slept {
                    self.bell.sleep_begins();
                    if self.inbox.is_empty() && self.notices.as_ref().is_none_or(|n| n.is_empty()) {
                        self.next_wake_ms(now_ms)
                    } else {
                        0
                    }
                } else {
                    0
                };
                self.wait(&mut events, timeout_ms)?;
            }
            let rung = events.iter().any(|event| event.data.u64() == BELL);
            if slept {
                self.bell.awake(rung);
            }
            let turn_began_ns = monotonic_ns();
            let turn_began_ms = turn_began_ns / 1_000_000;
            // Only the busy-poll policy reads this (its inbox check is not free).
            let found_work = self.spin.enabled() && (!events.is_empty() || !self.inbox.is_empty());
            // Connections first, new ones last: a flood of connects must not
            // evict a connection whose `Hello` is already waiting to be read.
            let mut listener_ready = false;
            for event in &events {
                match event.data.u64() {
                    BELL => {}
                    LISTENER => listener_ready = true,
                    id => self.on_event(id, event.flags),
                }
                self.settle();
            }
            if listener_ready {
                self.accept();
                self.settle();
            }
            more = self.take_messages();
            let now_ms = monotonic_ms();
            self.run_timers(now_ms);
            let background_left = self.background_step(now_ms);
            more |= background_left;
            self.settle();
            self.flush_dirty();
            if background_left {
                // While the core is idle the pieces of a sweep or a prune
                // run back to back: milliseconds in all, and a thread
                // sharing this CPU (the control thread, whose log sync
                // every replicated grant waits for) would wait behind all
                // of them. Let it run between two pieces; with nothing
                // else runnable this returns at once.
                std::thread::yield_now();
            }
            more |= events.len() == EVENTS_MAX;
            let turn_ended_ns = monotonic_ns();
            if found_work {
                self.spin.worked(turn_began_ns, turn_ended_ns);
                self.last_work_ns = turn_ended_ns;
            }
            let turn_ms = (turn_ended_ns / 1_000_000).saturating_sub(turn_began_ms);
            if turn_ms >= SLOW_TURN_MS {
                if let Some(suppressed) = self.slow_turn_log.failed(turn_began_ms) {
                    warn!(
                        core = self.index,
                        turn_ms,
                        events = events.len(),
                        suppressed,
                        "a turn of the core's loop took long (its own work, or its thread waiting for the CPU): every connection on this core waited (more since the last line: suppressed)"
                    );
                }
            }
        }
        Ok(())
    }

    /// One `epoll_wait` of at most `timeout_ms` into `events`.
    fn wait(&self, events: &mut Vec<epoll::Event>, timeout_ms: u64) -> rustix::io::Result<()> {
        events.clear();
        let timeout = rustix::time::Timespec {
            tv_sec: (timeout_ms / 1000) as i64,
            tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64,
        };
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            Some(&timeout),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Polls (`epoll_wait` without sleeping) until something is ready or
    /// `until_ns` passes; whether something is. Between two polls the
    /// thread yields, so a thread sharing its CPU (the control thread)
    /// is not kept waiting by the polling.
    fn poll_briefly(
        &self,
        events: &mut Vec<epoll::Event>,
        until_ns: u64,
    ) -> rustix::io::Result<bool> {
        let began_ns = monotonic_ns();
        let found = loop {
            self.wait(events, 0)?;
            if !events.is_empty()
                || !self.inbox.is_empty()
                || self.notices.as_ref().is_some_and(|n| !n.is_empty())
            {
                break true;
            }
            if monotonic_ns() >= until_ns {
                break false;
            }
            std::thread::yield_now();
        };
        crate::metrics::bump(
            &self.shared.stats[self.index].busy_poll_ns,
            monotonic_ns().saturating_sub(began_ns),
        );
        Ok(found)
    }

    /// How long the loop may sleep: until its next deadline, and at most a
    /// heartbeat period (the watchdog reads the beat).
    fn next_wake_ms(&self, now_ms: u64) -> u64 {
        let mut at = now_ms + heartbeat::HEARTBEAT_PERIOD.as_millis() as u64;
        if let Some(next) = self.waits.poll_timeout() {
            at = at.min(next);
        }
        if let Some(Reverse((next, _))) = self.timers.peek() {
            at = at.min(*next);
        }
        if !self.watches.is_empty() {
            at = at.min(self.watch_at_ms);
        }
        if let Some(paused) = self.accept_paused_until_ms {
            at = at.min(paused);
        }
        at = at.min(self.background.sweep_at_ms);
        at = at.min(self.background.prune_at_ms);
        at.saturating_sub(now_ms)
    }

    /// Takes queued cross-core messages and notices, up to a bound each.
    /// Returns whether more are waiting.
    fn take_messages(&mut self) -> bool {
        let mut more = false;
        for taken in 0.. {
            if taken == MESSAGES_PER_TURN {
                more = true;
                break;
            }
            let Ok(msg) = self.inbox.try_recv() else {
                break;
            };
            self.on_message(msg);
            self.settle();
        }
        // Out of `self` while its batches are handled (they never reach it).
        if let Some(notices) = self.notices.take() {
            for taken in 0.. {
                if taken == MESSAGES_PER_TURN {
                    more = true;
                    break;
                }
                let Ok(batch) = notices.try_recv() else {
                    break;
                };
                self.on_notices(batch);
                self.settle();
            }
            self.notices = Some(notices);
        }
        more
    }

    /// Due wait-queue deadlines, connection deadlines and watches.
    fn run_timers(&mut self, now_ms: u64) {
        if self.waits.poll_timeout().is_some_and(|at| at <= now_ms) {
            let lead = self.lead();
            self.waits.handle_timeout(&self.shared.table, lead, now_ms);
            self.drain_waits();
            self.settle();
        }
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            self.on_timer(id, at, now_ms);
            self.settle();
        }
        if let Some(paused) = self.accept_paused_until_ms {
            if paused <= now_ms {
                self.resume_accepting();
            }
        }
        if !self.watches.is_empty() && self.watch_at_ms <= now_ms {
            self.watch_at_ms = now_ms + WATCH_POLL.as_millis() as u64;
            let shared = &self.shared;
            let clients = &self.clients;
            let delivered = &mut self.delivered;
            self.watches.retain(|watch| {
                if !clients.contains_key(&watch.origin.conn) {
                    return false;
                }
                match shared.watch_poll(watch, now_ms) {
                    Some(event) => {
                        delivered.push(event);
                        false
                    }
                    None => true,
                }
            });
            self.settle();
        }
    }

    /// One piece of the sweep or the prune, when due. Returns whether a
    /// piece is left for the next turn.
    fn background_step(&mut self, now_ms: u64) -> bool {
        let mut more = false;
        if self.background.sweep.is_none() && self.background.sweep_at_ms <= now_ms {
            self.background.sweep = Some((self.sweep_range().start, 0));
        }
        if let Some((start, held)) = self.background.sweep {
            let range = self.sweep_range();
            let end = (start + SWEEP_CHUNK).min(range.end);
            let reclaim_after_ms =
                u64::try_from(self.opts.reclaim_after.as_millis()).unwrap_or(u64::MAX);
            let stats = self
                .shared
                .table
                .sweep(start..end, now_ms, reclaim_after_ms);
            let core_stats = &self.shared.stats[self.index];
            crate::metrics::bump(&core_stats.expirations, stats.expired);
            let held = held + stats.held;
            if end >= range.end {
                core_stats.leases_held.store(held, Ordering::Relaxed);
                self.background.sweep = None;
                let interval =
                    u64::try_from(self.opts.sweep_interval.as_millis()).unwrap_or(u64::MAX);
                self.background.sweep_at_ms = now_ms.saturating_add(interval);
            } else {
                self.background.sweep = Some((end, held));
                more = true;
            }
        }
        if self.background.prune_left == 0 && self.background.prune_at_ms <= now_ms {
            // A fiftieth of the names (at least 1024) per round: every name is
            // looked at within about five seconds.
            self.background.prune_left = (self.lists.len() / 50).max(1024);
            self.background.prune_at_ms = now_ms + PRUNE_EVERY_MS;
        }
        if self.background.prune_left > 0 {
            let step = self.background.prune_left.min(PRUNE_CHUNK);
            self.lists.prune(&self.shared.table, now_ms, step);
            self.background.prune_left -= step;
            more |= self.background.prune_left > 0;
        }
        more
    }

    fn sweep_range(&self) -> std::ops::Range<usize> {
        let slots = self.shared.table.slot_count();
        let per_core = slots.div_ceil(self.cores);
        (self.index * per_core)..((self.index + 1) * per_core).min(slots)
    }

    /// Hands queued answers to their connections and tells waiters of
    /// releases, until neither is left (one may lead to the other).
    pub(super) fn settle(&mut self) {
        loop {
            if !self.wakes.is_empty() {
                for key in std::mem::take(&mut self.wakes) {
                    self.wake(key);
                }
                continue;
            }
            if !self.delivered.is_empty() {
                for event in std::mem::take(&mut self.delivered) {
                    self.hand_over(event);
                }
                continue;
            }
            break;
        }
    }

    /// Sends `msg` to core `to`; never blocks.
    pub(super) fn post(&self, to: usize, msg: CoreMsg) {
        debug_assert_ne!(to, self.index);
        let peer = &self.peers[to];
        if peer.inbox.send(msg).is_err() {
            warn!(core = self.index, to, "peer core is gone");
            return;
        }
        peer.bell.ring();
    }

    /// Applies a message addressed to this core.
    fn on_message(&mut self, msg: CoreMsg) {
        let now = monotonic_ms();
        match msg {
            CoreMsg::Enqueue(request) => {
                let lead = self.lead();
                self.waits
                    .handle_enqueue(&self.shared.table, lead, request, now);
            }
            CoreMsg::Wake(key) => {
                let lead = self.lead();
                self.waits.handle_wake(&self.shared.table, lead, key, now);
            }
            CoreMsg::Cancel { core, conn } => {
                let lead = self.lead();
                self.waits
                    .handle_cancel(&self.shared.table, lead, core, conn, now);
            }
            CoreMsg::Deliver(event) => self.delivered.push(event),
            CoreMsg::ListQuery(query) => self.on_list_query(*query),
            CoreMsg::ListPart { id, part } => self.on_list_part(id, part),
        }
        self.drain_waits();
    }

    /// Routes a waiter to its key's home core.
    pub(super) fn route_wait(&mut self, request: WaitRequest) {
        let home = home_core(request.key, self.cores);
        if home == self.index {
            self.on_message(CoreMsg::Enqueue(request));
        } else {
            self.post(home, CoreMsg::Enqueue(request));
        }
    }

    /// Parks a watch on this core: it is re-read every [`WATCH_POLL`]
    /// until it has its answer or its connection is gone.
    pub(super) fn watch(&mut self, watch: WatchRequest) {
        if self.watches.is_empty() {
            self.watch_at_ms = monotonic_ms() + WATCH_POLL.as_millis() as u64;
        }
        self.watches.push(watch);
    }

    /// Tells `key`'s home core that a lease with waiters was released.
    fn wake(&mut self, key: LeaseKey) {
        let home = home_core(key, self.cores);
        if home == self.index {
            self.on_message(CoreMsg::Wake(key));
        } else {
            self.post(home, CoreMsg::Wake(key));
        }
    }

    /// A connection with waits closed: every core may hold some of them.
    pub(super) fn cancel(&mut self, conn: u64) {
        let core = u16::try_from(self.index).expect("core count fits u16");
        for to in 0..self.cores {
            if to == self.index {
                self.on_message(CoreMsg::Cancel { core, conn });
            } else {
                self.post(to, CoreMsg::Cancel { core, conn });
            }
        }
    }

    /// Routes queue answers to their connections (replicated grants first
    /// go to the log).
    fn drain_waits(&mut self) {
        while let Some(mut event) = self.waits.poll_event() {
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
            let stats = &self.shared.stats[self.index];
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
        let stats = &self.shared.stats[self.index];
        stats
            .waiters
            .store(self.waits.len() as u64, Ordering::Relaxed);
        crate::metrics::bump(&stats.expirations, self.waits.take_expirations());
        if self.waits.take_new_epoch_request() {
            self.shared.leadership.request_new_epoch();
        }
    }

    /// Sends `command` to the control plane to be logged; `pending.event`
    /// is delivered once it committed.
    fn propose(&mut self, command: Command, epoch: u32, pending: PendingCommit) {
        let Some(link) = self.opts.replica.as_ref() else {
            unreachable!("changes are proposed only with replication");
        };
        let seq = self.next_tag;
        self.next_tag += 1;
        let tag = tag(self.index, seq);
        self.commits.insert(tag, pending);
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
    pub(super) fn commit(&mut self, origin: Origin, commit: Commit, arrived_ns: u64) {
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
            self.wakes.push(key);
        }
    }

    /// What became of this core's proposals: answer the committed ones,
    /// tell the others to retry (and take their fresh grants back).
    fn on_notices(&mut self, notices: Vec<Notice>) {
        let now = monotonic_ms();
        for notice in notices {
            debug_assert_eq!(tag_core(notice.tag), self.index);
            let Some(pending) = self.commits.remove(&notice.tag) else {
                continue;
            };
            let stats = &self.shared.stats[self.index];
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
                    self.wakes.push(pending.key);
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
    }

    /// Sends an answer to its connection's core.
    pub(super) fn route(&mut self, event: WaitEvent) {
        let to = usize::from(event.origin().core);
        if to == self.index {
            self.delivered.push(event);
        } else {
            self.post(to, CoreMsg::Deliver(event));
        }
    }

    /// Releases a grant whose holder will never hear of it (its
    /// connection is gone), so that no lease is held by nobody until it
    /// expires. With replication the log still holds the grant: the
    /// control plane sees the table no longer does and logs its end.
    pub(super) fn release_orphan(&mut self, key: LeaseKey, token: u64) {
        if let crate::table::TokenOutcome::Released { wake_waiters: true } =
            self.shared.table.release(key, token, monotonic_ms())
        {
            self.wakes.push(key);
        }
        debug!(
            core = self.index,
            "released a grant for a closed connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::ConnIdHasher;

    #[test]
    fn consecutive_connection_ids_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<ConnIdHasher>::default();
        let hashes: Vec<u64> = (1..=4096u64).map(|id| build.hash_one(id)).collect();
        // Low bits pick the bucket: 4096 ids, 4096 distinct buckets.
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert_eq!(buckets.len(), 4096);
        // The top seven bits are the tag compared first: all 128 used.
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
    }
}

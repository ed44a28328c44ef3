//! The proxy's I/O shell: one glommio executor that accepts NBD clients,
//! binds each to an export and a fencing token, and moves bytes between
//! the client and the export's backend, asking the export's [`Gate`] before
//! every write.
//!
//! It owns the order of events around a fence change:
//!
//! 1. a token above the fence is vouched for by the lease service (`Check`)
//!    when it answers, then made durable by the [`FenceStore`], and only then
//!    raises the in-memory fence and completes the handshake;
//! 2. a watch thread per export raises the fence the same way when the
//!    lease service issues a new token, before the new holder connects;
//! 3. every write-like command re-reads the durable fence into the gate and
//!    is refused with `EPERM` if its token is below it; a newer token's
//!    first write waits until older-token writes in flight have reached the
//!    backend (the gate's drain);
//! 4. after a start, and whenever the watch lost the lease service, the
//!    fence is *unconfirmed*: a write (or a handshake) under the fence's own
//!    token waits until the watch has learnt the current token from a
//!    serving leader (and raised the fence to it), at most
//!    `lease_service.timeout` after the fence became unconfirmed; after that
//!    `lease_service.require_check` decides (refuse, or admit and log).
//!
//! A connection pipelines: a reader task decodes requests and spawns one
//! task per request (up to `proxy.requests_in_flight_max` requests and
//! `proxy.in_flight_bytes_max` bytes in flight), and a writer task sends
//! their replies as they finish, by cookie, many per write. Admission at
//! the gate is synchronous (no `.await` between reading the fence and
//! counting the write), and a write stays counted until its backend call
//! returned: that is what keeps S3 with many writes in flight
//! (docs/ARCHITECTURE.md, "S3 with many writes in flight").
//!
//! It also bounds what clients can hold: `proxy.connections_max`
//! connections, a handshake deadline, idle timeouts (read-only connections
//! included), the in-flight bounds, and log lines about refused
//! connections and failed accepts at most once a second, with a count.
//!
//! It must never acknowledge a write whose token is below the durable
//! fence, never raise the in-memory fence before the store returned, and
//! never block the executor: lease-service calls and fence fsyncs run on
//! blocking threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, PoolPlacement};
use tracing::{debug, error, info, warn};

use palisade_dataplane::clock::monotonic_ms;

use crate::admission::{Admission, Confirmation, Durable, Step};
use crate::backend::{Backend, FileBackend, NbdUpstream};
use crate::config::{BackendSpec, Export, ProxyConfig};
use crate::duplex::{SharedStream, Signal};
use crate::fence::{Fence, FenceError, FenceStore};
use crate::lease::{LeaseLink, Verdict};
use crate::limits::LogEvery;
use crate::metrics::{ExportMetrics, PROCESS};
use crate::nbd::{
    self, transmission_flags as tf, Command, Errno, Event, ExportEntry, ExportInfo, Handshake,
    Incoming, OptionError, RepError, Request,
};
use crate::pool::BufPool;

/// How often a write waiting for older-token writes looks again. Drains
/// happen once per fence change, so a short poll costs nothing measurable.
const DRAIN_POLL: Duration = Duration::from_micros(200);
/// How often a write waiting for the fence to be confirmed looks again.
/// Confirmation is awaited after a start or a lost watch only.
const CONFIRM_POLL: Duration = Duration::from_millis(5);
/// Bytes read from a client at once while it transmits.
const READ_CHUNK: usize = 256 << 10;
/// Bytes read from a client at once during the handshake: options are
/// small, and the handshake buffers a partial one itself.
const HANDSHAKE_READ_CHUNK: usize = 4 << 10;
/// First pause after a failed accept; doubles up to [`ACCEPT_BACKOFF_MAX`]
/// while accepts keep failing (out of file descriptors, say).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between two failing accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Repetitive warnings (refused connections, failed accepts, writes
/// admitted without confirmation) are logged at most this often.
const LOG_INTERVAL_MS: u64 = 1_000;
/// First pause of the watch after it lost the lease service; doubles up to
/// [`WATCH_BACKOFF_MAX`].
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause of the watch between attempts (a waiting write cuts it
/// short).
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A reply batch buffer larger than this is not kept for the next batch.
const OUT_KEEP_MAX: usize = 4 << 20;
/// Threads for blocking calls (lease service, fence fsync).
const BLOCKING_THREADS: usize = 4;
/// glommio's registered io memory; root can lock it, as the data plane does.
const IO_MEMORY: usize = 512 << 10;

/// One export's fence as every thread sees it: the durable value, whether
/// the store said it cannot be trusted, and whether the lease service
/// confirmed it since the last start or lost watch.
#[derive(Debug)]
pub struct FenceCell {
    /// The durable fence: only ever raised after the store returned.
    fence: AtomicU64,
    /// Set when the store reported damage; writes are refused.
    damaged: AtomicBool,
    /// Why, for handshake refusals and logs.
    reason: Mutex<String>,
    /// Set by the watch once a serving leader told it the newest token and
    /// the fence is at least that; cleared when the watch loses the
    /// service. Only the watch sets it: it is the one that keeps the fence
    /// current while it stays set.
    confirmed: AtomicBool,
    /// Monotonic ms at which `confirmed` last went false (or the start).
    unconfirmed_since_ms: AtomicU64,
    /// The watch thread, woken early when a write waits for confirmation.
    watcher: Mutex<Option<std::thread::Thread>>,
    metrics: Arc<ExportMetrics>,
}

impl FenceCell {
    fn new(loaded: &Fence, metrics: Arc<ExportMetrics>) -> FenceCell {
        let cell = FenceCell {
            fence: AtomicU64::new(0),
            damaged: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            confirmed: AtomicBool::new(false),
            unconfirmed_since_ms: AtomicU64::new(monotonic_ms()),
            watcher: Mutex::new(None),
            metrics,
        };
        match loaded {
            Fence::Known(fence) => cell.raised(*fence),
            Fence::Damaged(damage) => cell.damage(damage.to_string()),
        }
        cell
    }

    /// The durable fence.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    /// Why writes are refused, if the fence state is damaged.
    #[must_use]
    pub fn damaged(&self) -> Option<String> {
        if self.damaged.load(Ordering::Acquire) {
            Some(self.reason.lock().expect("reason lock").clone())
        } else {
            None
        }
    }

    /// Whether the lease service confirmed the fence and the watch still
    /// follows it.
    #[must_use]
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Monotonic ms since which the fence is unconfirmed (meaningless while
    /// it is confirmed).
    #[must_use]
    pub fn unconfirmed_since_ms(&self) -> u64 {
        self.unconfirmed_since_ms.load(Ordering::Acquire)
    }

    /// The watch learnt the newest token from a serving leader and the
    /// durable fence is at least that. Returns whether it was unconfirmed.
    fn confirm(&self) -> bool {
        let was = self.confirmed.swap(true, Ordering::AcqRel);
        self.metrics.fence_confirmed.store(1, Ordering::Relaxed);
        !was
    }

    /// The watch lost the lease service at `now_ms`. Returns whether it
    /// was confirmed. The start of an unconfirmed spell is kept: repeated
    /// failures do not extend how long writes wait.
    fn unconfirm(&self, now_ms: u64) -> bool {
        let was = self.confirmed.swap(false, Ordering::AcqRel);
        if was {
            self.unconfirmed_since_ms.store(now_ms, Ordering::Release);
        }
        self.metrics.fence_confirmed.store(0, Ordering::Relaxed);
        was
    }

    /// Wakes the watch thread if it pauses between attempts, so that a
    /// waiting write gets its answer as soon as the service answers.
    fn nudge_watch(&self) {
        if let Some(thread) = self.watcher.lock().expect("watcher lock").as_ref() {
            thread.unpark();
        }
    }

    fn raised(&self, durable: u64) {
        let now = self.fence.fetch_max(durable, Ordering::AcqRel).max(durable);
        self.metrics.fence.store(now, Ordering::Relaxed);
    }

    fn damage(&self, reason: String) {
        *self.reason.lock().expect("reason lock") = reason;
        self.damaged.store(true, Ordering::Release);
        self.metrics.fence_damaged.store(1, Ordering::Relaxed);
    }
}

/// Makes `token` durable for `export`, then raises `cell`. Blocking: call
/// from a blocking thread.
fn raise_durably(
    store: &FenceStore,
    cell: &FenceCell,
    export: &str,
    token: u64,
) -> Result<u64, FenceError> {
    match store.raise(export, token) {
        Ok(durable) => {
            cell.raised(durable);
            Ok(durable)
        }
        Err(e) => {
            if let FenceError::Damaged { damage, .. } = &e {
                cell.damage(damage.to_string());
            }
            Err(e)
        }
    }
}

/// What every connection shares: exports, the fence store, the lease link,
/// the connection limits.
struct Exports {
    by_name: HashMap<String, Rc<ExportRt>>,
    names: Vec<String>,
    store: Arc<FenceStore>,
    link: LeaseLink,
    limits: Limits,
    /// Test hook: `PALISADE_PROXY_TEST_WRITE_DELAY=TOKEN:MS` holds writes
    /// under TOKEN for MS after the gate admitted them, so tests can have
    /// writes in flight when a newer holder arrives.
    write_delay: Option<(u64, Duration)>,
    nbd: nbd::Config,
    /// Large write payloads, reused (see [`crate::pool`]).
    pool: Rc<BufPool>,
}

/// Timeouts and policy the connections apply, from the config.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections_max: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    read_only_idle_timeout: Duration,
    /// How long after the fence became unconfirmed a write under its token
    /// waits for confirmation (`lease_service.timeout`).
    confirm_wait: Duration,
    /// `lease_service.require_check`.
    require_check: bool,
    /// `proxy.requests_in_flight_max`.
    requests_in_flight_max: usize,
    /// `proxy.in_flight_bytes_max`.
    in_flight_bytes_max: usize,
}

impl Limits {
    fn from_config(config: &ProxyConfig) -> Limits {
        Limits {
            connections_max: config.proxy.connections_max,
            handshake_timeout: config.proxy.handshake_timeout,
            idle_timeout: config.proxy.idle_timeout,
            read_only_idle_timeout: config.proxy.read_only_idle_timeout,
            confirm_wait: config.lease_service.timeout,
            require_check: config.lease_service.require_check,
            requests_in_flight_max: config.proxy.requests_in_flight_max,
            in_flight_bytes_max: usize::try_from(config.proxy.in_flight_bytes_max)
                .unwrap_or(usize::MAX),
        }
    }
}

/// One export inside the executor.
struct ExportRt {
    config: Export,
    backend: BackendSpec,
    /// Size of a file backend (prepared at start).
    file_size: Option<u64>,
    /// The file backend's export-wide handle (opened at start).
    shared_file: Option<Arc<std::fs::File>>,
    cell: Arc<FenceCell>,
    /// The order of writes around a fence change (S3).
    admission: RefCell<Admission>,
    /// Writes admitted without confirmation (`require_check = false`).
    unconfirmed_log: RefCell<LogEvery>,
}

impl ExportRt {
    fn metrics(&self) -> &ExportMetrics {
        &self.cell.metrics
    }
}

/// An export prepared by [`prepare`]: everything the executor needs.
pub struct Prepared {
    config: Export,
    backend: BackendSpec,
    file_size: Option<u64>,
    shared_file: Option<Arc<std::fs::File>>,
    cell: Arc<FenceCell>,
}

/// Loads each export's fence, creates missing file backends, and returns
/// the per-export state plus the metrics registry.
pub fn prepare(
    config: &ProxyConfig,
    store: &FenceStore,
) -> anyhow::Result<(Vec<Prepared>, crate::metrics::Registry)> {
    let mut prepared = Vec::new();
    let mut registry = Vec::new();
    for export in &config.exports {
        let backend = config.backend(export);
        let (file_size, shared_file) = match &backend {
            BackendSpec::File { path, size } => {
                let failed =
                    |e| anyhow::anyhow!("export {}: backend {}: {e}", export.name, path.display());
                let size = crate::backend::prepare_file(path, *size).map_err(failed)?;
                let shared = crate::backend::open_shared(path).map_err(failed)?;
                (Some(size), Some(shared))
            }
            BackendSpec::Nbd { .. } => (None, None),
        };
        let loaded = store.load(&export.name);
        match &loaded {
            Fence::Known(fence) => info!(export = %export.name, fence, "fence loaded"),
            Fence::Damaged(damage) => error!(
                export = %export.name,
                %damage,
                "fence state damaged: writes to this export are refused until `palisade-fencing-proxy repair {} TOKEN` (with TOKEN at least the highest token ever issued for resource {:?}: `palisade check RESOURCE 1 --json` reports it as last_token)",
                export.name,
                export.resource
            ),
        }
        let metrics = Arc::new(ExportMetrics::default());
        let cell = Arc::new(FenceCell::new(&loaded, metrics.clone()));
        registry.push((export.name.clone(), metrics));
        prepared.push(Prepared {
            config: export.clone(),
            backend,
            file_size,
            shared_file,
            cell,
        });
    }
    Ok((prepared, Arc::new(registry)))
}

/// The lease link described by the config.
pub fn lease_link(config: &ProxyConfig) -> anyhow::Result<LeaseLink> {
    let secret = match &config.lease_service.secret_file {
        Some(path) => {
            let path = config.resolve(path);
            let bytes = std::fs::read(&path).map_err(|e| {
                anyhow::anyhow!("lease_service.secret_file {}: {e}", path.display())
            })?;
            let trimmed = bytes.trim_ascii_end().to_vec();
            if trimmed.is_empty() {
                anyhow::bail!("lease_service.secret_file {} is empty", path.display());
            }
            Some(trimmed)
        }
        None => None,
    };
    Ok(LeaseLink::new(
        config.lease_service.endpoint.clone(),
        config.lease_service.timeout,
        config.lease_service.attempt_timeout(),
        secret,
    ))
}

/// Starts one watch thread per export: it confirms the fence with the
/// lease service (learning the newest token from a serving leader), then
/// raises it durably on every new grant, before the new holder's first
/// write. Threads run for the life of the process.
pub fn start_watches(
    config: &ProxyConfig,
    prepared: &[Prepared],
    store: &Arc<FenceStore>,
    link: &LeaseLink,
) {
    let policy = WatchPolicy {
        wait: config.lease_service.watch_wait,
        confirm_wait: config.lease_service.timeout,
        require_check: config.lease_service.require_check,
    };
    for export in prepared {
        let store = store.clone();
        let link = link.clone();
        let cell = export.cell.clone();
        let export_config = export.config.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{}", export_config.name))
            .spawn(move || watch_loop(&store, &link, &cell, &export_config, policy));
        match spawned {
            Ok(handle) => {
                *export.cell.watcher.lock().expect("watcher lock") = Some(handle.thread().clone());
            }
            Err(e) => {
                error!(export = %export.config.name, error = %e, "cannot start the watch thread; fences rise only at handshakes and stay unconfirmed");
            }
        }
    }
}

/// What a watch thread needs from the config.
#[derive(Debug, Clone, Copy)]
struct WatchPolicy {
    /// One watch call's wait.
    wait: Duration,
    /// `lease_service.timeout`, for the log.
    confirm_wait: Duration,
    /// `lease_service.require_check`, for the log.
    require_check: bool,
}

impl WatchPolicy {
    /// What happens to writes under the fence's token while unconfirmed.
    fn consequence(&self) -> String {
        let after = if self.require_check {
            "then refused (lease_service.require_check = true)"
        } else {
            "then admitted on the local fence alone (lease_service.require_check = false)"
        };
        format!(
            "writes under the fence's own token wait up to {} ms for the service, {after}",
            self.confirm_wait.as_millis()
        )
    }
}

fn watch_loop(
    store: &FenceStore,
    link: &LeaseLink,
    cell: &FenceCell,
    export: &Export,
    policy: WatchPolicy,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    // Whether the last attempt reached the service (for the log only).
    let mut reachable = true;
    loop {
        if cell.damaged().is_some() {
            // Nothing to raise until an operator repairs the store.
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        let failure = match link.connect(&export.tenant) {
            Ok(mut client) => {
                // The first call waits for nothing: a serving leader answers
                // at once with the newest token, which confirms the fence.
                // The client follows the leader; only a serving leader
                // answers a watch.
                let mut wait = Duration::ZERO;
                loop {
                    let after = cell.fence();
                    let watched = match client.watch(&export.resource, after, wait) {
                        Ok(watched) => watched,
                        Err(e) => break Some(e.to_string()),
                    };
                    if watched.last_token > after {
                        match raise_durably(store, cell, &export.name, watched.last_token) {
                            Ok(durable) => info!(
                                export = %export.name,
                                fence = durable,
                                "a new grant raised the fence"
                            ),
                            Err(e) => {
                                error!(export = %export.name, error = %e, "raising the fence for a new grant failed");
                                std::thread::sleep(Duration::from_secs(1));
                                break None;
                            }
                        }
                    }
                    if cell.confirm() {
                        info!(
                            export = %export.name,
                            fence = cell.fence(),
                            endpoint = %client.endpoint(),
                            "the lease service confirmed the fence; watching grants"
                        );
                    }
                    reachable = true;
                    backoff = WATCH_BACKOFF_MIN;
                    wait = policy.wait;
                }
            }
            Err(e) => Some(e.to_string()),
        };
        let was_confirmed = cell.unconfirm(monotonic_ms());
        let why = failure.unwrap_or_else(|| "the fence store failed".into());
        if was_confirmed || reachable {
            warn!(
                export = %export.name,
                error = %why,
                "lost the lease service: the fence is unconfirmed until it answers; {}",
                policy.consequence()
            );
            reachable = false;
        } else {
            debug!(export = %export.name, error = %why, "lease service still unreachable");
        }
        // A write waiting for confirmation unparks us early.
        std::thread::park_timeout(backoff);
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// Runs the NBD server on the calling thread until the process ends.
/// `ready` gets the bound address once clients can connect. The executor
/// stores its heartbeat in `beats[0]` (the watchdog reads it).
pub fn run(
    config: &ProxyConfig,
    prepared: Vec<Prepared>,
    store: Arc<FenceStore>,
    link: LeaseLink,
    beats: Arc<[AtomicU64]>,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> anyhow::Result<()> {
    assert_eq!(beats.len(), 1, "one executor, one heartbeat");
    let listen = config.proxy.listen;
    let limits = Limits::from_config(config);
    let write_delay = test_write_delay();
    let handle = LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("palisade-proxy")
        .io_memory(IO_MEMORY)
        .blocking_thread_pool_placement(PoolPlacement::Unbound(BLOCKING_THREADS))
        .spawn(move || async move {
            glommio::spawn_local(palisade_dataplane::server::heartbeat::beat(beats, 0)).detach();
            let mut by_name = HashMap::new();
            let mut names = Vec::new();
            for p in prepared {
                names.push(p.config.name.clone());
                by_name.insert(
                    p.config.name.clone(),
                    Rc::new(ExportRt {
                        admission: RefCell::new(Admission::new(
                            p.cell.fence(),
                            limits.require_check,
                        )),
                        config: p.config,
                        backend: p.backend,
                        file_size: p.file_size,
                        shared_file: p.shared_file,
                        cell: p.cell,
                        unconfirmed_log: RefCell::new(LogEvery::new(LOG_INTERVAL_MS)),
                    }),
                );
            }
            let exports = Rc::new(Exports {
                by_name,
                names,
                store,
                link,
                limits,
                write_delay,
                nbd: nbd::Config::default(),
                pool: Rc::new(BufPool::default()),
            });
            let listener = TcpListener::bind(listen)
                .map_err(|e| anyhow::anyhow!("listening for NBD on {listen}: {e}"))?;
            let local = listener
                .local_addr()
                .map_err(|e| anyhow::anyhow!("local address: {e}"))?;
            info!(
                %local,
                connections_max = limits.connections_max,
                handshake_timeout_ms = limits.handshake_timeout.as_millis(),
                idle_timeout_ms = limits.idle_timeout.as_millis(),
                read_only_idle_timeout_ms = limits.read_only_idle_timeout.as_millis(),
                "NBD on {local}"
            );
            ready(local);
            let live = Rc::new(std::cell::Cell::new(0usize));
            let refused_log = Rc::new(RefCell::new(LogEvery::new(LOG_INTERVAL_MS)));
            let accept_log = Rc::new(RefCell::new(LogEvery::new(LOG_INTERVAL_MS)));
            glommio::spawn_local(flush_logs(
                refused_log.clone(),
                accept_log.clone(),
                limits.connections_max,
            ))
            .detach();
            let mut accept_backoff = ACCEPT_BACKOFF_MIN;
            loop {
                let stream = match listener.accept().await {
                    Ok(stream) => {
                        accept_backoff = ACCEPT_BACKOFF_MIN;
                        stream
                    }
                    Err(e) => {
                        // Out of file descriptors, say: the connection
                        // stays queued and the next accept fails the same
                        // way at once, so wait, longer each time.
                        PROCESS.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(count) = accept_log.borrow_mut().hit(monotonic_ms()) {
                            warn!(
                                error = %e,
                                count,
                                backoff_ms = accept_backoff.as_millis(),
                                "accept failed ({count} since the last report); backing off"
                            );
                        }
                        glommio::timer::sleep(accept_backoff).await;
                        accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                if live.get() >= limits.connections_max {
                    PROCESS.connections_refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(count) = refused_log.borrow_mut().hit(monotonic_ms()) {
                        warn!(
                            max = limits.connections_max,
                            count,
                            "too many NBD clients: closed {count} new connection(s) since the last report (proxy.connections_max)"
                        );
                    }
                    drop(stream);
                    continue;
                }
                live.set(live.get() + 1);
                PROCESS.connections.fetch_add(1, Ordering::Relaxed);
                let exports = exports.clone();
                let live = live.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    match serve(stream, exports).await {
                        Ok(()) => debug!(?peer, "client left"),
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            PROCESS
                                .connections_timed_out
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(?peer, error = %e, "client timed out; closed");
                        }
                        Err(e) => debug!(?peer, error = %e, "client connection ended"),
                    }
                    live.set(live.get() - 1);
                    PROCESS.connections.fetch_sub(1, Ordering::Relaxed);
                })
                .detach();
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        })
        .map_err(|e| anyhow::anyhow!("starting the proxy executor: {e}"))?;
    handle
        .join()
        .map_err(|e| anyhow::anyhow!("proxy executor: {e}"))?
}

/// Reports, once an interval has passed, refusals and failed accepts the
/// rate limit held back, so the tail of a burst is logged too.
async fn flush_logs(
    refused_log: Rc<RefCell<LogEvery>>,
    accept_log: Rc<RefCell<LogEvery>>,
    connections_max: usize,
) {
    loop {
        glommio::timer::sleep(Duration::from_millis(LOG_INTERVAL_MS)).await;
        let now_ms = monotonic_ms();
        if let Some(count) = refused_log.borrow_mut().flush(now_ms) {
            warn!(
                max = connections_max,
                count,
                "too many NBD clients: closed {count} new connection(s) since the last report (proxy.connections_max)"
            );
        }
        if let Some(count) = accept_log.borrow_mut().flush(now_ms) {
            warn!(
                count,
                "accept failed ({count} since the last report); backing off"
            );
        }
    }
}

fn test_write_delay() -> Option<(u64, Duration)> {
    let text = std::env::var("PALISADE_PROXY_TEST_WRITE_DELAY").ok()?;
    let (token, ms) = text.split_once(':')?;
    let parsed = (token.parse().ok()?, Duration::from_millis(ms.parse().ok()?));
    warn!(
        token = parsed.0,
        ms = parsed.1.as_millis(),
        "test hook PALISADE_PROXY_TEST_WRITE_DELAY holds writes; never set it in production"
    );
    Some(parsed)
}

/// `EXPORT@TOKEN` → (`EXPORT`, token); `EXPORT` → (`EXPORT`, none).
fn split_name(name: &str) -> Result<(&str, Option<u64>), OptionError> {
    match name.rsplit_once('@') {
        None => Ok((name, None)),
        Some((export, token)) => match token.parse::<u64>() {
            Ok(token) if token > 0 => Ok((export, Some(token))),
            _ => Err(OptionError::new(
                RepError::Invalid,
                format!("{token:?} is not a fencing token: connect to EXPORT@TOKEN with the decimal token of your lease, or to EXPORT for read-only access"),
            )),
        },
    }
}

/// The client's binding after a successful `GO`.
struct Bound {
    export: Rc<ExportRt>,
    token: Option<u64>,
    backend: Backend,
}

async fn write_out(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Sets `stream`'s read timeout to what is left until `deadline_ms`; a
/// deadline that passed is a `TimedOut` error naming `what`.
fn read_until(stream: &TcpStream, deadline_ms: u64, what: &str) -> io::Result<()> {
    let left_ms = deadline_ms.saturating_sub(monotonic_ms());
    if left_ms == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(left_ms)))
        .map_err(|e| io::Error::other(e.to_string()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn serve(mut stream: TcpStream, exports: Rc<Exports>) -> io::Result<()> {
    let limits = exports.limits;
    // The whole handshake, not each read: a client trickling bytes gets no
    // more time than a silent one.
    let deadline_ms = monotonic_ms().saturating_add(millis(limits.handshake_timeout));
    stream
        .set_nodelay(true)
        .map_err(|e| io::Error::other(e.to_string()))?;
    stream
        .set_write_timeout(Some(limits.handshake_timeout))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut handshake = Handshake::new(exports.nbd);
    let mut out = Vec::new();
    // Small: thousands of connections may sit in the handshake at once.
    // Transmission allocates its own larger buffer.
    let mut buf = vec![0u8; HANDSHAKE_READ_CHUNK];
    handshake.poll_transmit(&mut out);
    write_out(&mut stream, &mut out).await?;
    let mut bound: Option<Bound> = None;
    loop {
        read_until(
            &stream,
            deadline_ms,
            "no complete NBD handshake within proxy.handshake_timeout",
        )?;
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        handshake.handle_input(&buf[..n]);
        let mut ready = false;
        while let Some(event) = handshake.poll_event() {
            match event {
                Event::Export { name, go } => {
                    let answer = select(&exports, &name, go).await;
                    let answer = match answer {
                        Ok((info, binding)) => {
                            if let Some(binding) = binding {
                                if let Some(old) = bound.replace(binding) {
                                    old.backend.close().await;
                                }
                            }
                            Ok(info)
                        }
                        Err(e) => Err(e),
                    };
                    handshake.answer_export(answer);
                }
                Event::List => {
                    let list = exports
                        .names
                        .iter()
                        .map(|name| {
                            let export = &exports.by_name[name];
                            ExportEntry {
                                name: name.clone(),
                                description: format!(
                                    "tenant {} resource {}; connect as {name}@TOKEN to write",
                                    export.config.tenant, export.config.resource
                                ),
                            }
                        })
                        .collect();
                    handshake.answer_list(Ok(list));
                }
                Event::Ready { .. } => ready = true,
                Event::Aborted => {
                    handshake.poll_transmit(&mut out);
                    write_out(&mut stream, &mut out).await?;
                    return Ok(());
                }
                Event::Failed(e) => {
                    handshake.poll_transmit(&mut out);
                    let _ = write_out(&mut stream, &mut out).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
        handshake.poll_transmit(&mut out);
        write_out(&mut stream, &mut out).await?;
        if ready {
            break;
        }
    }
    let Some(bound) = bound else {
        // Ready always follows an accepted GO / EXPORT_NAME.
        return Err(io::Error::other("handshake ended without an export"));
    };
    drop(buf);
    transmission(stream, handshake, bound, exports, out).await
}

/// Answers the selection of `name`; for `GO`, binds the connection.
async fn select(
    exports: &Exports,
    name: &str,
    go: bool,
) -> Result<(ExportInfo, Option<Bound>), OptionError> {
    let (export_name, token) = split_name(name)?;
    let Some(export) = exports.by_name.get(export_name) else {
        return Err(OptionError::new(
            RepError::Unknown,
            format!(
                "no export {export_name:?}; exports: {}",
                exports.names.join(", ")
            ),
        ));
    };
    if let Some(token) = token {
        if let Err(refusal) = bind_token(exports, export, token, go).await {
            export
                .metrics()
                .handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(export = %export.config.name, token, reason = %refusal.message, "handshake refused");
            return Err(refusal);
        }
    }
    let backend = if go || matches!(export.backend, BackendSpec::Nbd { .. }) {
        Some(open_backend(exports, export).await.map_err(|e| {
            error!(export = %export.config.name, error = %e, "backend unavailable");
            OptionError::new(
                RepError::Unknown,
                format!("export {export_name}: backend unavailable: {e}"),
            )
        })?)
    } else {
        None
    };
    let size = match (&backend, export.file_size) {
        (Some(b), _) => b.size(),
        (None, Some(size)) => size,
        (None, None) => unreachable!("nbd backends are opened above"),
    };
    let can_trim = backend.as_ref().is_none_or(Backend::can_trim);
    let mut flags = tf::SEND_FLUSH | tf::SEND_FUA;
    if can_trim {
        flags |= tf::SEND_TRIM | tf::SEND_WRITE_ZEROES;
    }
    if token.is_none() {
        flags |= tf::READ_ONLY;
    }
    if matches!(export.backend, BackendSpec::File { .. }) {
        // One file: a flush on any connection covers every connection's
        // completed writes.
        flags |= tf::CAN_MULTI_CONN;
    }
    let info = ExportInfo::new(size, flags);
    match backend {
        Some(backend) if go => Ok((
            info,
            Some(Bound {
                export: export.clone(),
                token,
                backend,
            }),
        )),
        Some(backend) => {
            backend.close().await;
            Ok((info, None))
        }
        None => Ok((info, None)),
    }
}

async fn open_backend(exports: &Exports, export: &ExportRt) -> io::Result<Backend> {
    let pool = exports.pool.clone();
    match &export.backend {
        BackendSpec::File { path, .. } => {
            let size = export.file_size.expect("file backends are prepared");
            let shared = export
                .shared_file
                .clone()
                .expect("file backends are prepared");
            Ok(Backend::File(
                FileBackend::open(path, size, shared, pool).await?,
            ))
        }
        BackendSpec::Nbd { addr, export: name } => {
            Ok(Backend::Nbd(NbdUpstream::connect(*addr, name, pool).await?))
        }
    }
}

/// Decides whether `token` may write to `export`; raises the durable fence
/// first when it is above it and `go` is set.
async fn bind_token(
    exports: &Exports,
    export: &Rc<ExportRt>,
    token: u64,
    go: bool,
) -> Result<(), OptionError> {
    if let Some(reason) = export.cell.damaged() {
        return Err(OptionError::new(
            RepError::Policy,
            format!(
                "export {} refuses writes: its fence state is damaged ({reason}); an operator must run `palisade-fencing-proxy repair`; connect without a token to read",
                export.config.name
            ),
        ));
    }
    let fence = export.cell.fence();
    if token < fence {
        return Err(stale(export, token, fence));
    }
    if token == fence && go {
        // The fence's own token: fine if the fence is current. After a
        // start or a lost watch, learn that first, so the holder a newer
        // grant superseded meanwhile is told so now.
        confirmed(exports, export, token)
            .await
            .map_err(|message| OptionError::new(RepError::Policy, message))?;
        let fence = export.cell.fence();
        if token < fence {
            return Err(stale(export, token, fence));
        }
        return Ok(());
    }
    if token == fence || !go {
        return Ok(());
    }
    // Above the fence: ask the lease service, then make it durable.
    let link = exports.link.clone();
    let (tenant, resource) = (export.config.tenant.clone(), export.config.resource.clone());
    let verdict = glommio::executor()
        .spawn_blocking(move || link.check(&tenant, &resource, token))
        .await;
    let raise_to = match verdict {
        Verdict::Current => token,
        Verdict::Stale { newest } => {
            // The service vouches for `newest`: raise to it (fencing the
            // stale holder sooner), then refuse.
            if newest > export.cell.fence() {
                let _ = durable_raise(exports, export, newest).await;
            }
            return Err(OptionError::new(
                RepError::Policy,
                format!(
                    "token {token} is not the current lease on {:?} (newest issued: {newest}); acquire again",
                    export.config.resource
                ),
            ));
        }
        Verdict::Unreachable(why) if exports.limits.require_check => {
            warn!(export = %export.config.name, token, error = %why, "lease service unreachable; refusing a token above the fence it cannot vouch for (lease_service.require_check = true)");
            return Err(OptionError::new(
                RepError::Policy,
                format!(
                    "the lease service could not vouch for token {token} ({why}) and export {} requires its confirmation; try again",
                    export.config.name
                ),
            ));
        }
        Verdict::Unreachable(why) => {
            // The local fence still holds: accepting a higher token can
            // only fence more writers, never fewer.
            warn!(export = %export.config.name, token, error = %why, "lease service unreachable; accepting a token above the fence on the local fence alone (lease_service.require_check = false)");
            token
        }
    };
    let durable = durable_raise(exports, export, raise_to)
        .await
        .map_err(|e| {
            OptionError::new(
                RepError::Unknown,
                format!("cannot record the fence durably: {e}"),
            )
        })?;
    if token < durable {
        // A newer grant raced us.
        return Err(stale(export, token, durable));
    }
    info!(export = %export.config.name, fence = durable, "fence raised by a new holder");
    Ok(())
}

fn stale(export: &ExportRt, token: u64, fence: u64) -> OptionError {
    OptionError::new(
        RepError::Policy,
        format!(
            "token {token} is stale: export {} is fenced at {fence}; acquire the lease on {:?} again",
            export.config.name, export.config.resource
        ),
    )
}

async fn durable_raise(exports: &Exports, export: &ExportRt, token: u64) -> Result<u64, String> {
    let store = exports.store.clone();
    let cell = export.cell.clone();
    let name = export.config.name.clone();
    glommio::executor()
        .spawn_blocking(move || raise_durably(&store, &cell, &name, token))
        .await
        .map_err(|e| {
            error!(export = %export.config.name, token, error = %e, "raising the fence failed");
            e.to_string()
        })
}

/// What a request holds while in flight, for the connection's bound: the
/// bytes of its payload or of its read data.
fn request_cost(request: &Request) -> usize {
    match request.command {
        Command::Read | Command::Write => request.length as usize,
        _ => 0,
    }
}

/// One connection in transmission: what its reader, its writer and its
/// request tasks share.
///
/// The reader decodes requests and spawns one task per request, up to the
/// in-flight bounds; each task runs its request against the backend (a
/// write asks the gate first) and puts its reply in the outbox; the writer
/// hands the outbox to the socket, many replies per write. Replies go out
/// in the order requests finish, each with its request's cookie.
struct Conn {
    exports: Rc<Exports>,
    export: Rc<ExportRt>,
    token: Option<u64>,
    backend: Backend,
    replies: nbd::ReplyEncoder,
    outbox: RefCell<Outbox>,
    /// Wakes the writer: replies wait in the outbox, or the reader is done.
    replies_ready: Signal,
    /// Wakes the reader: replies went out (room in flight), or the writer
    /// failed.
    room: Signal,
}

/// Replies waiting for the socket, and what the connection holds.
#[derive(Debug, Default)]
struct Outbox {
    /// Encoded replies, whole, in the order their requests finished.
    bytes: Vec<u8>,
    /// Requests whose replies are in `bytes`, and their cost.
    replies: usize,
    replies_cost: usize,
    /// Requests taken in and not yet answered on the socket (running, or
    /// their reply in `bytes`), and their cost: the in-flight bounds.
    in_flight: usize,
    in_flight_cost: usize,
    /// The reader stopped taking requests: the writer returns once every
    /// request in flight is answered.
    closing: bool,
    /// The writer could not write: the reader stops.
    failed: bool,
}

impl Conn {
    /// Whether a request costing `cost` may go in flight now. One request
    /// always may, whatever its size.
    fn has_room(&self, cost: usize) -> bool {
        let outbox = self.outbox.borrow();
        let limits = &self.exports.limits;
        outbox.in_flight == 0
            || (outbox.in_flight < limits.requests_in_flight_max
                && outbox.in_flight_cost + cost <= limits.in_flight_bytes_max)
    }

    /// Waits until a request costing `cost` may go in flight, then counts
    /// it in. `Err` if the writer failed (the client is gone).
    async fn take_in(&self, cost: usize) -> io::Result<()> {
        loop {
            if self.outbox.borrow().failed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "replies could not be written",
                ));
            }
            if self.has_room(cost) {
                let mut outbox = self.outbox.borrow_mut();
                outbox.in_flight += 1;
                outbox.in_flight_cost += cost;
                return Ok(());
            }
            self.room.wait().await;
        }
    }

    /// Queues the reply of a request taken in with `cost`.
    fn reply(&self, cost: usize, encode: impl FnOnce(&mut Vec<u8>, &nbd::ReplyEncoder)) {
        {
            let mut outbox = self.outbox.borrow_mut();
            assert!(
                outbox.replies < outbox.in_flight,
                "one reply per request taken in"
            );
            encode(&mut outbox.bytes, &self.replies);
            outbox.replies += 1;
            outbox.replies_cost += cost;
        }
        self.replies_ready.notify();
    }

    fn in_flight(&self) -> usize {
        self.outbox.borrow().in_flight
    }
}

async fn transmission(
    stream: TcpStream,
    handshake: Handshake,
    bound: Bound,
    exports: Rc<Exports>,
    out: Vec<u8>,
) -> io::Result<()> {
    let mut tx = handshake.into_transmission();
    info!(
        export = %bound.export.config.name,
        token = ?bound.token,
        "client bound"
    );
    // Anyone may open a read-only connection; a writer needs a token.
    let (idle, idle_key) = if bound.token.is_some() {
        (exports.limits.idle_timeout, "proxy.idle_timeout")
    } else {
        (
            exports.limits.read_only_idle_timeout,
            "proxy.read_only_idle_timeout",
        )
    };
    // A client that stops reading our replies is as idle as a silent one.
    stream
        .set_write_timeout(Some(idle))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let stream = SharedStream::new(stream);
    let conn = Rc::new(Conn {
        replies: tx.replies(),
        exports,
        export: bound.export,
        token: bound.token,
        backend: bound.backend,
        outbox: RefCell::new(Outbox {
            bytes: out,
            ..Outbox::default()
        }),
        replies_ready: Signal::default(),
        room: Signal::default(),
    });
    let writer = glommio::spawn_local(write_replies(conn.clone(), stream.clone()));
    let idle_reason = format!("no request for {} ms ({idle_key})", millis(idle));
    let read = read_requests(&conn, &mut tx, stream, millis(idle), &idle_reason).await;
    // Every request taken in is answered before the connection closes
    // (NBD wants that after a disconnect), and the backend closes only once
    // no request uses it.
    conn.outbox.borrow_mut().closing = true;
    conn.replies_ready.notify();
    let written = writer.await;
    // Every task queued its reply and ended, so this is the last handle;
    // if not, the backend closes when the last one goes (without a goodbye).
    if let Ok(conn) = Rc::try_unwrap(conn) {
        conn.backend.close().await;
    }
    read.and(written)
}

/// The reader: decodes requests, takes each in flight (waiting for room),
/// and spawns its task. Returns at a disconnect, the end of the stream, an
/// idle timeout or a fatal protocol error.
async fn read_requests(
    conn: &Rc<Conn>,
    tx: &mut nbd::Transmission,
    mut stream: SharedStream,
    idle_ms: u64,
    idle_reason: &str,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut active_ms = monotonic_ms();
    loop {
        while let Some(incoming) = tx.poll_request() {
            active_ms = monotonic_ms();
            match incoming {
                Incoming::Request(request) => {
                    let cost = request_cost(&request);
                    conn.take_in(cost).await?;
                    // The payload leaves the decoder's buffer here: one copy,
                    // which the backends pass on as it is.
                    let mut payload = conn.exports.pool.take(tx.payload().len());
                    payload.extend_from_slice(tx.payload());
                    glommio::spawn_local(execute(conn.clone(), request, payload)).detach();
                }
                Incoming::Refuse(refusal) => {
                    if refusal.request.command.writes() && refusal.error == Errno::Perm {
                        conn.export
                            .metrics()
                            .writes_fenced
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    conn.take_in(0).await?;
                    conn.reply(0, |out, replies| replies.refuse(out, &refusal));
                }
                Incoming::Disconnect => return Ok(()),
                Incoming::Fatal { error, reply } => {
                    if let Some(reply) = reply {
                        conn.take_in(0).await?;
                        conn.reply(0, |out, replies| replies.refuse(out, &reply));
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        error.to_string(),
                    ));
                }
            }
        }
        if conn.in_flight() > 0 {
            // Requests in flight: the client waits for us, not idle.
            active_ms = monotonic_ms();
        }
        // Idle since the last request, even if bytes trickle in.
        stream.with(|s| read_until(s, active_ms.saturating_add(idle_ms), idle_reason))?;
        let n = stream.read(&mut buf).await?;
        if conn.outbox.borrow().failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "replies could not be written",
            ));
        }
        if n == 0 {
            return Ok(());
        }
        tx.handle_input(&buf[..n]);
    }
}

/// The writer: hands queued replies to the socket, as many as are ready per
/// write, and frees their room in flight. Returns once the reader is done
/// and every request it took in is answered. After a failed write it
/// shuts the socket (so the reader stops) and drops later replies.
async fn write_replies(conn: Rc<Conn>, mut stream: SharedStream) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut failure = None;
    loop {
        let (count, cost, last) = {
            let mut outbox = conn.outbox.borrow_mut();
            std::mem::swap(&mut outbox.bytes, &mut batch);
            let count = std::mem::take(&mut outbox.replies);
            let cost = std::mem::take(&mut outbox.replies_cost);
            (count, cost, outbox.closing && outbox.in_flight == count)
        };
        if count == 0 && !last {
            conn.replies_ready.wait().await;
            continue;
        }
        if failure.is_none() {
            if let Err(e) = stream.write_all(&batch).await {
                conn.outbox.borrow_mut().failed = true;
                stream.shutdown().await;
                failure = Some(e);
            }
        }
        batch.clear();
        if batch.capacity() > OUT_KEEP_MAX {
            batch = Vec::new();
        }
        {
            let mut outbox = conn.outbox.borrow_mut();
            outbox.in_flight -= count;
            outbox.in_flight_cost -= cost;
        }
        conn.room.notify();
        if last {
            return failure.map_or(Ok(()), Err);
        }
    }
}

/// Carries out one request and queues its reply.
async fn execute(conn: Rc<Conn>, request: Request, payload: Vec<u8>) {
    let cost = request_cost(&request);
    let export = &conn.export;
    let cookie = request.cookie;
    match request.command {
        Command::Read => match conn.backend.read(request.offset, request.length).await {
            Ok(data) => {
                export.metrics().reads.fetch_add(1, Ordering::Relaxed);
                conn.reply(cost, |out, replies| {
                    replies.read(out, cookie, request.offset, &data);
                });
            }
            Err(e) => {
                warn!(export = %export.config.name, error = %e, "backend read failed");
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Io, &format!("read failed: {e}"));
                });
            }
        },
        Command::Flush => match conn.backend.flush().await {
            Ok(()) => conn.reply(cost, |out, replies| replies.ok(out, cookie)),
            Err(e) => {
                warn!(export = %export.config.name, error = %e, "backend flush failed");
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Io, &format!("flush failed: {e}"));
                });
            }
        },
        Command::Write | Command::Trim | Command::WriteZeroes => {
            let Some(token) = conn.token else {
                // The decoder refuses writes on a read-only export; this is
                // the belt to its braces.
                export
                    .metrics()
                    .writes_fenced
                    .fetch_add(1, Ordering::Relaxed);
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Perm, "read-only: no fencing token");
                });
                return;
            };
            if let Err(message) = admit(&conn.exports, export, token).await {
                export
                    .metrics()
                    .writes_fenced
                    .fetch_add(1, Ordering::Relaxed);
                debug!(export = %export.config.name, token, %message, "write fenced");
                conn.exports.pool.give(payload);
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Perm, &message);
                });
                return;
            }
            // Admitted: the gate counts this write in flight under `token`
            // until `done` below, and no newer token's write is admitted
            // meanwhile (see the gate).
            if let Some((delayed, wait)) = conn.exports.write_delay {
                if delayed == token {
                    glommio::timer::sleep(wait).await;
                }
            }
            let fua = request.fua();
            let result = match request.command {
                Command::Write => conn.backend.write(request.offset, payload, fua).await,
                Command::Trim => conn.backend.trim(request.offset, request.length, fua).await,
                _ => {
                    let no_hole = request.flags & nbd::command_flags::NO_HOLE != 0;
                    conn.backend
                        .write_zeroes(request.offset, request.length, no_hole, fua)
                        .await
                }
            };
            export.admission.borrow_mut().done(token);
            match result {
                Ok(()) => {
                    export
                        .metrics()
                        .writes_accepted
                        .fetch_add(1, Ordering::Relaxed);
                    conn.reply(cost, |out, replies| replies.ok(out, cookie));
                }
                Err(e) => {
                    warn!(export = %export.config.name, error = %e, "backend write failed");
                    conn.reply(cost, |out, replies| {
                        replies.error(out, cookie, Errno::Io, &format!("write failed: {e}"));
                    });
                }
            }
        }
        Command::Disc | Command::Other(_) => {
            // The decoder turns these into Disconnect and Refuse.
            conn.reply(cost, |out, replies| {
                replies.error(out, cookie, Errno::Inval, "unsupported command");
            });
        }
    }
}

/// The durable fence of `export` as a write or a handshake under `token`
/// sees it now. Reads the clock only while the fence is unconfirmed.
fn durable(exports: &Exports, export: &ExportRt) -> Durable {
    let cell = &export.cell;
    let confirmed = cell.confirmed();
    let waited_ms = if confirmed {
        0
    } else {
        monotonic_ms().saturating_sub(cell.unconfirmed_since_ms())
    };
    Durable {
        fence: cell.fence(),
        damaged: cell.damaged().is_some(),
        confirmation: Confirmation::judge(
            confirmed,
            waited_ms,
            millis(exports.limits.confirm_wait),
        ),
    }
}

/// Why a write or a handshake under `token` is refused after the lease
/// service stayed silent for `waited_ms` (`lease_service.require_check`).
fn unconfirmed_refusal(export: &ExportRt, token: u64, waited_ms: u64) -> String {
    format!(
        "the lease service has not confirmed the fence of export {} for {waited_ms} ms and the proxy requires it (lease_service.require_check = true): writes under token {token} are refused until it answers",
        export.config.name
    )
}

/// Logs (once a second, with a count) a write or handshake under `token`
/// admitted on the local fence alone.
fn log_unconfirmed(export: &ExportRt, token: u64, waited_ms: u64) {
    if let Some(count) = export.unconfirmed_log.borrow_mut().hit(monotonic_ms()) {
        warn!(
            export = %export.config.name,
            token,
            count,
            unconfirmed_ms = waited_ms,
            "lease service unreachable: admitted {count} write(s) or handshake(s) under the fence's own token on the local fence alone (lease_service.require_check = false)"
        );
    }
}

/// Waits until the lease service confirmed the fence of `export`, or
/// until `lease_service.timeout` after the fence became unconfirmed; `Ok`
/// means a handshake under `token` (the fence's own) may bind, `Err` is
/// why it is refused. Returns at once while confirmed, or for a token below
/// the fence (the caller refuses it).
///
/// Unconfirmed means: since the start, or since the watch lost the
/// service, no serving leader told the watch the newest token. A
/// handshake under the fence's token then waits for that answer: a newer
/// grant it brings raises the fence first, and the handshake is refused.
/// Past the wait, `lease_service.require_check` decides: refuse, or admit
/// on the local fence alone and log (once a second, with a count). Writes
/// follow the same rule through [`Admission`].
async fn confirmed(exports: &Exports, export: &ExportRt, token: u64) -> Result<(), String> {
    let mut nudged = false;
    loop {
        let now = durable(exports, export);
        if token < now.fence {
            return Ok(());
        }
        match now.confirmation {
            Confirmation::Confirmed => return Ok(()),
            Confirmation::Waiting { .. } => {
                if !nudged {
                    export.cell.nudge_watch();
                    nudged = true;
                }
                glommio::timer::sleep(CONFIRM_POLL).await;
            }
            Confirmation::Expired { waited_ms } if exports.limits.require_check => {
                return Err(unconfirmed_refusal(export, token, waited_ms));
            }
            Confirmation::Expired { waited_ms } => {
                log_unconfirmed(export, token, waited_ms);
                return Ok(());
            }
        }
    }
}

/// Waits until the export's [`Admission`] lets a write under `token` go;
/// `Err` is why it is fenced. On `Ok` the caller must call
/// `admission.done(token)` once the backend call returned.
///
/// This only awaits what the admission asks for: confirmation, a drain, a
/// durable raise on a blocking thread. Reading the durable fence and asking
/// the admission happen with no `.await` in between.
async fn admit(exports: &Exports, export: &ExportRt, token: u64) -> Result<(), String> {
    let mut nudged = false;
    loop {
        let step = export
            .admission
            .borrow_mut()
            .admit(token, durable(exports, export));
        match step {
            Step::Go { unconfirmed_ms } => {
                if let Some(waited_ms) = unconfirmed_ms {
                    log_unconfirmed(export, token, waited_ms);
                }
                return Ok(());
            }
            Step::Fenced { fence } => {
                return Err(format!(
                    "stale fencing token {token}: export {} is fenced at {fence}",
                    export.config.name
                ))
            }
            Step::Damaged => {
                let reason = export.cell.damaged().unwrap_or_default();
                return Err(format!("fence state damaged ({reason}): writes refused"));
            }
            Step::Unconfirmed { waited_ms } => {
                return Err(unconfirmed_refusal(export, token, waited_ms));
            }
            Step::AwaitConfirmation => {
                if !nudged {
                    export.cell.nudge_watch();
                    nudged = true;
                }
                glommio::timer::sleep(CONFIRM_POLL).await;
            }
            Step::DrainFirst => glommio::timer::sleep(DRAIN_POLL).await,
            Step::NeedsDurableRaise => {
                let raised = durable_raise(exports, export, token).await?;
                export.admission.borrow_mut().raised(token, raised);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_export_and_token() {
        assert_eq!(split_name("disk0").expect("plain"), ("disk0", None));
        assert_eq!(split_name("disk0@42").expect("token"), ("disk0", Some(42)));
        for bad in [
            "disk0@",
            "disk0@x",
            "disk0@0",
            "disk0@-1",
            "disk0@99999999999999999999",
        ] {
            let e = split_name(bad).expect_err(bad);
            assert_eq!(e.code, RepError::Invalid, "{bad}");
        }
    }
}

//! The proxy's I/O shell: one event-loop thread (a tokio current-thread
//! runtime with a `LocalSet`: mio's edge-triggered epoll, every task on
//! that thread) that accepts NBD clients, binds each to an export and a
//! fencing token, and moves bytes between the client and the export's
//! backend, asking the export's [`Admission`] before every write.
//!
//! It owns the order of events around a fence change:
//!
//! 1. a token above the fence is vouched for by the lease service (`Check`)
//!    when it answers, then made durable by the [`FenceStore`], and only then
//!    raises the in-memory fence and completes the handshake;
//! 2. a watch thread per export raises the fence the same way when the
//!    lease service issues a new token, before the new holder connects;
//! 3. every write-like command hands the durable fence it just read to the
//!    export's [`Admission`] (a plain type: the order of fence check,
//!    confirmation, gate raise, durable raise and drain lives there) and is
//!    refused with `EPERM` if its token is below it; a newer token's first
//!    write waits until older-token writes in flight have reached the
//!    backend (the drain);
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
//! never block the event loop: lease-service calls and fence fsyncs run on
//! the runtime's bounded blocking pool ([`BLOCKING_THREADS`] threads),
//! file-backend I/O on a pool of its own ([`FILE_IO_THREADS`]), so a hung
//! disk stalls only the file exports' requests. The loop stores a heartbeat every
//! [`HEARTBEAT_PERIOD`] for the service-manager watchdog; `/metrics` is
//! served by a plain thread of its own (`palisade_host::admin::threaded`),
//! so a scrape never takes the loop's time.
//!
//! Its parts: `fencing` (the [`FenceCell`] and the loop that awaits what
//! the admission asks of a write), `watch` (a thread per export following
//! the lease service), `handshake` (negotiation and binding a token),
//! `transmission` (the pipelined request loop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, info, warn};

use palisade_host::clock::monotonic_ms;
use palisade_host::heartbeat::{stall_if_armed, HEARTBEAT_PERIOD};

use crate::admission::{Admission, Confirmation, Durable, Step};
use crate::backend::{Backend, FileBackend, NbdUpstream};
use crate::config::{BackendSpec, Export, ProxyConfig};
use crate::duplex::{split, ReadHalf, Signal, WriteHalf};
use crate::failpoints::Failpoints;
use crate::fence::{Fence, FenceError, FenceStore};
use crate::lease::{LeaseLink, Verdict};
use crate::limits::LogEvery;
use crate::metrics::{self, ExportMetrics, PROCESS};
use crate::nbd::{
    self, transmission_flags as tf, Command, Errno, Event, ExportEntry, ExportInfo, Handshake,
    Incoming, OptionError, RepError, Request,
};
use crate::pool::BufPool;

mod fencing;
mod handshake;
mod transmission;
mod watch;

use fencing::raise_durably;
pub use fencing::FenceCell;
use handshake::serve;
pub use watch::start_watches;

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

/// Threads for blocking calls (lease service, fence fsync): at most this
/// many run at once, the rest queue.
pub const BLOCKING_THREADS: usize = 4;

/// Threads for file-backend I/O, a pool apart: a hung disk takes these,
/// never the event loop nor the threads lease checks and fence raises use.
/// Two, not four: buffered writes to one file take its inode lock in turn
/// anyway, and with 4 KiB random writes on 2 CPUs two threads did 1.15x
/// to 1.3x the writes/s of four at 4 and 16 in flight, at 2 to 5 us less
/// CPU per write (bench/results/proxy-tokio/file-io-threads.txt).
pub const FILE_IO_THREADS: usize = 2;

/// How long an idle blocking thread stays for the next call.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What every connection shares: exports, the fence store, the lease link,
/// the connection limits.
struct Exports {
    by_name: HashMap<String, Rc<ExportRt>>,
    names: Vec<String>,
    store: Arc<FenceStore>,
    link: LeaseLink,
    limits: Limits,
    /// Test hook (only with `--failpoints`, see [`crate::failpoints`]):
    /// writes under this token wait this long after admission, so tests
    /// can have writes in flight when a newer holder arrives.
    write_delay: Option<(u64, Duration)>,
    nbd: nbd::Config,
    /// Large write payloads, reused (see [`crate::pool`]).
    pool: Rc<BufPool>,
    /// Where file backends' calls run ([`crate::backend::file_io_pool`]).
    file_io: tokio::runtime::Handle,
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

/// One export inside the event loop.
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

/// An export prepared by [`prepare`]: everything the event loop needs.
pub struct Prepared {
    config: Export,
    backend: BackendSpec,
    file_size: Option<u64>,
    shared_file: Option<Arc<std::fs::File>>,
    cell: Arc<FenceCell>,
}

/// Why the proxy cannot start serving: what [`prepare`], [`lease_link`]
/// and [`run`] return. Each is the operator's to fix (a path, a secret,
/// an address) or the host's (threads, file descriptors).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An export's file backend could not be created or opened.
    #[error("export {export}: backend {}", path.display())]
    Backend {
        /// The export.
        export: String,
        /// Its backend file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// `lease_service.secret_file` could not be read.
    #[error("lease_service.secret_file {}", path.display())]
    SecretFile {
        /// The file, resolved against the config's directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// `lease_service.secret_file` holds nothing but trailing whitespace.
    #[error("lease_service.secret_file {} is empty", path.display())]
    EmptySecret {
        /// The file, resolved against the config's directory.
        path: PathBuf,
    },
    /// The NBD listener could not be bound (`proxy.listen`).
    #[error("listening for NBD on {addr}")]
    Listen {
        /// `proxy.listen`.
        addr: SocketAddr,
        /// What the socket layer said.
        #[source]
        source: io::Error,
    },
    /// The bound listener has no local address.
    #[error("local address")]
    LocalAddr(#[source] io::Error),
    /// The event loop's runtime or the metrics endpoint's thread could
    /// not be started (threads, file descriptors).
    #[error("{what}")]
    Executor {
        /// What could not be started.
        what: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Loads each export's fence, creates missing file backends, and returns
/// the per-export state plus the metrics registry.
pub fn prepare(
    config: &ProxyConfig,
    store: &FenceStore,
) -> Result<(Vec<Prepared>, crate::metrics::Registry), ServerError> {
    let mut prepared = Vec::new();
    let mut registry = Vec::new();
    for export in &config.exports {
        let backend = config.backend(export);
        let (file_size, shared_file) = match &backend {
            BackendSpec::File { path, size } => {
                let failed = |source| ServerError::Backend {
                    export: export.name.clone(),
                    path: path.clone(),
                    source,
                };
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
pub fn lease_link(config: &ProxyConfig) -> Result<LeaseLink, ServerError> {
    let secret = match &config.lease_service.secret_file {
        Some(path) => {
            let path = config.resolve(path);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(source) => return Err(ServerError::SecretFile { path, source }),
            };
            let trimmed = bytes.trim_ascii_end().to_vec();
            if trimmed.is_empty() {
                return Err(ServerError::EmptySecret { path });
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

/// Runs the NBD server on the calling thread until the process ends.
/// `ready` gets the bound address once clients can connect. The event loop
/// stores its heartbeat in `beats[0]` (the watchdog reads it).
/// `failpoints` are the armed test hooks ([`Failpoints::default`] in
/// production). `metrics` (if `proxy.metrics` is set) is served by a
/// thread of its own, started before `ready` is called.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &ProxyConfig,
    prepared: Vec<Prepared>,
    store: Arc<FenceStore>,
    link: LeaseLink,
    beats: Arc<[AtomicU64]>,
    metrics: Option<metrics::Endpoint>,
    failpoints: &Failpoints,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), ServerError> {
    assert_eq!(beats.len(), 1, "one event loop, one heartbeat");
    let listen = config.proxy.listen;
    let limits = Limits::from_config(config);
    let write_delay = failpoints.write_delay;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .thread_name("proxy-blocking")
        .build()
        .map_err(|source| ServerError::Executor {
            what: "starting the proxy's runtime",
            source,
        })?;
    let file_io =
        crate::backend::file_io_pool(FILE_IO_THREADS, BLOCKING_KEEP_ALIVE).map_err(|source| {
            ServerError::Executor {
                what: "starting the file I/O threads",
                source,
            }
        })?;
    // Kept until `run` returns: dropping it stops the endpoint.
    let _admin = match metrics {
        Some(endpoint) => Some(endpoint.start().map_err(|source| ServerError::Executor {
            what: "starting the metrics endpoint's thread",
            source,
        })?),
        None => None,
    };
    let mut by_name = HashMap::new();
    let mut names = Vec::new();
    for p in prepared {
        names.push(p.config.name.clone());
        by_name.insert(
            p.config.name.clone(),
            Rc::new(ExportRt {
                admission: RefCell::new(Admission::new(p.cell.fence(), limits.require_check)),
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
        file_io: file_io.handle().clone(),
    });
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        // Detached: it beats as long as the loop runs.
        drop(tokio::task::spawn_local(beat(beats, 0)));
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: listen,
                source,
            })?;
        let local = listener.local_addr().map_err(ServerError::LocalAddr)?;
        info!(
            %local,
            connections_max = limits.connections_max,
            handshake_timeout_ms = limits.handshake_timeout.as_millis(),
            idle_timeout_ms = limits.idle_timeout.as_millis(),
            read_only_idle_timeout_ms = limits.read_only_idle_timeout.as_millis(),
            "NBD on {local}"
        );
        ready(local);
        accept_loop(listener, exports).await;
        Ok(())
    })
}

/// The event loop's heartbeat in `slots[index]` (see
/// [`palisade_host::heartbeat`]): the time, stored every
/// [`HEARTBEAT_PERIOD`] while the loop runs tasks. A call that blocks the
/// loop stops it, and the watchdog stops vouching for the proxy.
async fn beat(slots: Arc<[AtomicU64]>, index: usize) {
    loop {
        slots[index].store(monotonic_ms(), Ordering::Relaxed);
        stall_if_armed(index);
        tokio::time::sleep(HEARTBEAT_PERIOD).await;
    }
}

/// Accepts clients for ever, each served by a task of its own, at most
/// `proxy.connections_max` at once.
async fn accept_loop(listener: TcpListener, exports: Rc<Exports>) {
    let limits = exports.limits;
    let live = Rc::new(std::cell::Cell::new(0usize));
    let refused_log = Rc::new(RefCell::new(LogEvery::new(LOG_INTERVAL_MS)));
    let accept_log = Rc::new(RefCell::new(LogEvery::new(LOG_INTERVAL_MS)));
    drop(tokio::task::spawn_local(flush_logs(
        refused_log.clone(),
        accept_log.clone(),
        limits.connections_max,
    )));
    let mut accept_backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                accept_backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                // Out of file descriptors, say: the connection stays queued
                // and the next accept fails the same way at once, so wait,
                // longer each time.
                PROCESS.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(count) = accept_log.borrow_mut().hit(monotonic_ms()) {
                    warn!(
                        error = %e,
                        count,
                        backoff_ms = accept_backoff.as_millis(),
                        "accept failed ({count} since the last report); backing off"
                    );
                }
                tokio::time::sleep(accept_backoff).await;
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
        // Detached: the task ends with its connection.
        drop(tokio::task::spawn_local(async move {
            match serve(stream, exports).await {
                Ok(()) => debug!(%peer, "client left"),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    PROCESS
                        .connections_timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, error = %e, "client timed out; closed");
                }
                Err(e) => debug!(%peer, error = %e, "client connection ended"),
            }
            live.set(live.get() - 1);
            PROCESS.connections.fetch_sub(1, Ordering::Relaxed);
        }));
    }
}

/// Reports, once an interval has passed, refusals and failed accepts the
/// rate limit held back, so the tail of a burst is logged too.
async fn flush_logs(
    refused_log: Rc<RefCell<LogEvery>>,
    accept_log: Rc<RefCell<LogEvery>>,
    connections_max: usize,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(LOG_INTERVAL_MS)).await;
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

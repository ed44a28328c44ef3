//! A live lease holder that keeps renewing across leader failover.
//!
//! The client library's `KeepAliveThread` renews on one connection to one
//! node; once that node is killed every retry fails on the dead
//! connection until the lease's validity runs out. Until the library
//! follows the leader across endpoints (in progress), the bench has its
//! own loop: renew every `every` (a third of the ttl by default); on an
//! error, drop the connection and try the next node, every 20 ms, until a
//! renewal succeeds, the server answers `stale`, or the lease's
//! `valid_until` (the client's conservative end of the lease) passes.
//! `Client::renew` itself follows redirects to the leader.
//!
//! A holder never re-acquires: a lease it lost stays lost and is reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_client::{
    random_holder, AcquireOptions, AcquireOutcome, Client, ConnectOptions, Lease, TokenOutcome,
};
use palisade_host::clock::boottime_ms;

use palisade_host::clock::monotonic_ns;

/// Pause between attempts on different nodes after a failed renewal.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Time allowed to connect to one node.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Time allowed for one renewal's answer (bounded by the validity left).
const RENEW_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a holder's lease ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LossKind {
    /// A renewal was answered `stale`.
    Stale {
        /// The server's current token (0: none).
        current_token: u64,
    },
    /// No renewal succeeded before the lease's validity ran out.
    Expired {
        /// The last error seen.
        last_error: String,
    },
}

/// A holder's lease loss.
#[derive(Clone, Debug)]
pub(crate) struct Loss {
    /// When it was noticed (monotonic ns).
    pub(crate) at_ns: u64,
    pub(crate) kind: LossKind,
}

/// What the main thread reads of a holder.
#[derive(Clone, Debug)]
pub(crate) struct HolderState {
    /// The lease as last renewed.
    pub(crate) lease: Lease,
    /// The token it was granted.
    pub(crate) first_token: u64,
    /// Send time (monotonic ns) of the last renewal that succeeded, or of
    /// the acquire.
    pub(crate) renewed_sent_ns: u64,
    /// When its answer was read (monotonic ns).
    pub(crate) renewed_at_ns: u64,
    /// Set once the lease is lost; the holder then stops.
    pub(crate) lost: Option<Loss>,
    /// A renewal answered with a token other than the one held.
    pub(crate) token_changed: bool,
    /// Renewal attempts that failed (connection, timeout, redirect loop,
    /// server error).
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
}

/// One live holder and its renewing thread.
pub(crate) struct Holder {
    state: Arc<Mutex<HolderState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connect(endpoint: &str, timeout: Duration) -> Result<Client, palisade_client::ClientError> {
    let mut options = ConnectOptions::new(endpoint, "default");
    options.connect_timeout = timeout;
    options.request_timeout = timeout.max(RENEW_TIMEOUT);
    options.identity.client_name = "palisade-bench failover holder".into();
    Client::connect(&options)
}

impl Holder {
    /// Acquires `resource` for `ttl` through `endpoints` (trying each in
    /// turn, following redirects, until `deadline_ns`) and starts renewing
    /// it every `every`, trying every endpoint on errors.
    pub(crate) fn start(
        endpoints: &[String],
        resource: &str,
        ttl: Duration,
        every: Duration,
        deadline_ns: u64,
    ) -> Result<Holder> {
        assert!(!endpoints.is_empty(), "a holder needs an endpoint");
        let options = AcquireOptions {
            ttl,
            holder: random_holder(),
            lock_delay: Duration::ZERO,
            wait: Duration::ZERO,
        };
        let mut last_error = String::new();
        let mut at = 0;
        let (lease, sent_ns) = loop {
            if monotonic_ns() > deadline_ns {
                bail!("could not acquire {resource}: {last_error}");
            }
            let endpoint = &endpoints[at % endpoints.len()];
            at += 1;
            let sent_ns = monotonic_ns();
            let outcome = connect(endpoint, CONNECT_TIMEOUT)
                .and_then(|mut client| client.acquire(resource, options));
            match outcome {
                Ok(AcquireOutcome::Granted(lease)) => break (lease, sent_ns),
                Ok(busy @ AcquireOutcome::Busy { .. }) => last_error = format!("{busy:?}"),
                Err(e) => last_error = format!("{endpoint}: {e}"),
            }
            std::thread::sleep(RETRY_PAUSE);
        };
        let state = Arc::new(Mutex::new(HolderState {
            first_token: lease.token,
            lease,
            renewed_sent_ns: sent_ns,
            renewed_at_ns: monotonic_ns(),
            lost: None,
            token_changed: false,
            errors: 0,
            last_error: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, endpoints) = (state.clone(), stop.clone(), endpoints.to_vec());
            std::thread::Builder::new()
                .name(format!("holder {resource}"))
                .spawn(move || renew_loop(&endpoints, &state, &stop, every))
                .context("starting a holder thread")?
        };
        Ok(Holder {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// A copy of the holder's state now.
    pub(crate) fn state(&self) -> HolderState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn update(state: &Mutex<HolderState>, f: impl FnOnce(&mut HolderState)) {
    f(&mut state.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Sleeps until `until_ms` (boottime) in short steps; false if stopped.
fn sleep_until(until_ms: u64, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = boottime_ms();
        if now >= until_ms {
            return true;
        }
        std::thread::sleep(Duration::from_millis((until_ms - now).clamp(1, 10)));
    }
}

fn renew_loop(
    endpoints: &[String],
    state: &Mutex<HolderState>,
    stop: &AtomicBool,
    every: Duration,
) {
    let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    let mut lease = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .lease
        .clone();
    let ttl = Duration::from_millis(u64::from(lease.ttl_ms));
    let mut client: Option<Client> = None;
    let mut at = 0usize;
    let mut last_error = String::from("none");
    loop {
        if !sleep_until(boottime_ms() + every_ms, stop) {
            return;
        }
        // One renewal, retried across the nodes until it is answered.
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = boottime_ms();
            if now >= lease.valid_until_ms {
                let kind = LossKind::Expired {
                    last_error: last_error.clone(),
                };
                update(state, |s| {
                    s.lost = Some(Loss {
                        at_ns: monotonic_ns(),
                        kind,
                    });
                });
                return;
            }
            let remaining = Duration::from_millis(lease.valid_until_ms - now);
            let endpoint = &endpoints[at % endpoints.len()];
            let connected = match client.take() {
                Some(c) => Ok(c),
                None => connect(endpoint, CONNECT_TIMEOUT.min(remaining)),
            };
            let error = match connected {
                Err(e) => format!("{endpoint}: {e}"),
                Ok(mut c) => {
                    c.set_request_timeout(
                        RENEW_TIMEOUT.min(remaining).max(Duration::from_millis(1)),
                    );
                    let sent_ns = monotonic_ns();
                    match c.renew(&lease.resource, lease.token, ttl, lease.holder) {
                        Ok(TokenOutcome::Renewed(renewed)) => {
                            let changed = renewed.token != lease.token;
                            lease = renewed;
                            update(state, |s| {
                                s.lease = lease.clone();
                                s.renewed_sent_ns = sent_ns;
                                s.renewed_at_ns = monotonic_ns();
                                s.token_changed |= changed;
                            });
                            client = Some(c);
                            break;
                        }
                        Ok(TokenOutcome::Stale { current_token, .. }) => {
                            update(state, |s| {
                                s.lost = Some(Loss {
                                    at_ns: monotonic_ns(),
                                    kind: LossKind::Stale { current_token },
                                });
                            });
                            return;
                        }
                        Ok(other) => format!("{}: unexpected answer {other:?}", c.endpoint()),
                        Err(e) => format!("{}: {e}", c.endpoint()),
                    }
                }
            };
            // Drop the connection and try the next node.
            at += 1;
            last_error = error;
            update(state, |s| {
                s.errors += 1;
                s.last_error = Some(last_error.clone());
            });
            std::thread::sleep(RETRY_PAUSE);
        }
    }
}

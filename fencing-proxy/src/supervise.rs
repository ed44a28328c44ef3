//! The proxy under a service manager: `READY=1` once the NBD listener is
//! bound (the fence store is opened before that), `STATUS=`, `WATCHDOG=1`
//! while the proxy's event loop beats, and `STOPPING=1` on `SIGTERM` or
//! `SIGINT`, all through [`palisade_host::notify::Notifier`].
//!
//! The watchdog thread only judges: it pings when the event loop's
//! heartbeat (a slot of [`palisade_host::heartbeat`], stored every 10 ms
//! by a task on the loop) is younger than the interval, and stays silent
//! while the loop is stuck, so systemd restarts the proxy. (The log lines
//! still say "executor": operators and tests match them.)
//!
//! It never touches fences or client traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_host::clock::monotonic_ms;
use palisade_host::notify::{watchdog_from_env, Notifier, NotifyError, Watchdog, WatchdogAction};
use tracing::{error, info, warn};

/// Why the proxy cannot talk to its service manager as asked.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` or `$WATCHDOG_PID` is malformed:
    /// the unit's (or whoever started the proxy's) to fix.
    #[error("the service manager's environment")]
    Environment(#[source] NotifyError),
    /// A thread (watchdog, signals) could not be started, or the signal
    /// handlers could not be installed: the host's resources.
    #[error("{what}")]
    Host {
        /// What could not be done.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// The proxy's conversation with its service manager; inert without
/// `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Supervision {
    notifier: Option<Arc<Notifier>>,
    watchdog: Option<Duration>,
}

impl Supervision {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC`, `$WATCHDOG_PID`. A
    /// malformed value is an error. (The stall test hook is armed by
    /// [`crate::failpoints::Failpoints::arm_stall`], with `--failpoints`.)
    pub fn from_env() -> Result<Supervision, SuperviseError> {
        let notifier = Notifier::from_env()
            .map_err(SuperviseError::Environment)?
            .map(Arc::new);
        let watchdog = watchdog_from_env()
            .map_err(SuperviseError::Environment)?
            .filter(|_| notifier.is_some());
        Ok(Supervision { notifier, watchdog })
    }

    /// What `server::run` calls once clients can connect.
    pub fn ready_callback(&self, exports: usize) -> impl FnOnce(SocketAddr) + Send + 'static {
        let notifier = self.notifier.clone();
        move |addr| {
            if let Some(notifier) = notifier {
                let status = format!("serving NBD on {addr}, {exports} export(s)");
                info!(status = %status, "notifying the service manager: ready");
                if let Err(e) = notifier.ready(&status) {
                    warn!(error = %e, "could not notify the service manager");
                }
            }
        }
    }

    /// Starts the watchdog thread if systemd asked for one; `beats` holds
    /// the event loop's heartbeat.
    pub fn start_watchdog(&self, beats: Arc<[AtomicU64]>) -> Result<(), SuperviseError> {
        let (Some(notifier), Some(interval)) = (self.notifier.clone(), self.watchdog) else {
            return Ok(());
        };
        info!(
            interval_ms = interval.as_millis(),
            "systemd watchdog: pinging at half the interval while the executor beats"
        );
        let poll = (interval / 4).min(Duration::from_millis(100));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut dog = Watchdog::new(interval);
                let mut last = Vec::with_capacity(beats.len());
                let mut failing = false;
                loop {
                    last.clear();
                    last.extend(beats.iter().map(|b| b.load(Ordering::Relaxed)));
                    match dog.poll(monotonic_ms(), &last) {
                        WatchdogAction::Idle => {}
                        WatchdogAction::Ping { recovered } => {
                            if recovered {
                                warn!("the executor beats again; watchdog pings resume");
                            }
                            match notifier.watchdog() {
                                Ok(()) => failing = false,
                                Err(e) if !failing => {
                                    failing = true;
                                    warn!(error = %e, "could not notify the service manager");
                                }
                                Err(_) => {}
                            }
                        }
                        WatchdogAction::Withhold {
                            age_ms,
                            first_report,
                            ..
                        } => {
                            if first_report {
                                error!(
                                    age_ms,
                                    "the proxy's executor has not run for {age_ms} ms: withholding the watchdog ping, so the service manager restarts the proxy"
                                );
                            }
                        }
                    }
                    std::thread::sleep(poll);
                }
            })
            .map_err(|source| SuperviseError::Host {
                what: "starting the watchdog thread",
                source,
            })?;
        Ok(())
    }

    /// Handles `SIGTERM` and `SIGINT`: sends `STOPPING=1` and exits 0.
    /// Nothing needs flushing: a fence is durable before it is used, and an
    /// unacknowledged write may be lost by any stop.
    pub fn stop_on_signals(&self) -> Result<(), SuperviseError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|source| {
                SuperviseError::Host {
                    what: "installing signal handlers",
                    source,
                }
            })?;
        let notifier = self.notifier.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    info!(signal, "stopping");
                    if let Some(notifier) = notifier {
                        if let Err(e) = notifier.stopping("stopping") {
                            warn!(error = %e, "could not notify the service manager");
                        }
                    }
                    std::process::exit(0);
                }
            })
            .map_err(|source| SuperviseError::Host {
                what: "starting the signal thread",
                source,
            })?;
        Ok(())
    }
}

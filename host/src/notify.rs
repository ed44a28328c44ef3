//! The service-manager side of Palisade's daemons: systemd's notify
//! protocol (`sd_notify`), written out by hand, and the decision of when a
//! watchdog ping may be sent.
//!
//! Both `palisade serve` and `palisade-fencing-proxy` use it, so the wire
//! format lives in one place:
//!
//! - [`Notifier`] sends state lines (`READY=1`, `STATUS=…`, `WATCHDOG=1`,
//!   `STOPPING=1`) as one datagram each to the unix socket named by
//!   `$NOTIFY_SOCKET`: a filesystem path, or an abstract address written
//!   with a leading `@`.
//! - [`watchdog_from_env`] reads `$WATCHDOG_USEC` and `$WATCHDOG_PID` the
//!   way `sd_watchdog_enabled` does: the watchdog is ours only if no pid is
//!   named or the named pid is this process.
//! - [`Watchdog`] is sans-IO: the caller hands it the time and the last
//!   heartbeat of every worker it must vouch for (the data plane's cores,
//!   the proxy's executor) and it answers [`WatchdogAction::Ping`] at half
//!   the interval only while every worker has beaten within the interval.
//!   A stalled worker makes it withhold pings, so systemd restarts the
//!   process; a timer that always says yes would hide exactly the failure
//!   the watchdog exists for.
//!
//! What it never does: read a clock, spawn a thread, or decide health on
//! its own (it only judges the heartbeats it is given); and it never fails
//! the caller's service when no service manager listens (no
//! `$NOTIFY_SOCKET`: [`Notifier::from_env`] returns `None`).
//!
//! ```
//! use palisade_host::notify::{Watchdog, WatchdogAction};
//! use std::time::Duration;
//! let mut dog = Watchdog::new(Duration::from_secs(10));
//! // Two workers that beat at 0 ms and 1 ms: healthy, first ping is due.
//! assert_eq!(dog.poll(1_000, &[0, 1]), WatchdogAction::Ping { recovered: false });
//! // Half the interval has not passed yet.
//! assert_eq!(dog.poll(2_000, &[1_500, 1_900]), WatchdogAction::Idle);
//! // Worker 1 last beat 11 s ago: no ping, and the stall is reported once.
//! assert_eq!(
//!     dog.poll(12_500, &[12_400, 1_500]),
//!     WatchdogAction::Withhold { worker: 1, age_ms: 11_000, first_report: true }
//! );
//! ```

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variable naming the service manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval in microseconds, set by systemd's `WatchdogSec=`.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// What went wrong talking to the service manager. Each variant says whose
/// fault it is.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is not an address this module can send to (the
    /// service manager's or the operator's environment is wrong).
    #[error("NOTIFY_SOCKET={value:?}: {why}")]
    BadAddress {
        /// The variable's value.
        value: String,
        /// Why it was refused.
        why: String,
    },
    /// `$WATCHDOG_USEC` is set but not a positive number of microseconds.
    #[error("WATCHDOG_USEC={value:?} is not a positive whole number of microseconds")]
    BadWatchdogUsec {
        /// The variable's value.
        value: String,
    },
    /// `$WATCHDOG_PID` is set but not a process id.
    #[error("WATCHDOG_PID={value:?} is not a process id")]
    BadWatchdogPid {
        /// The variable's value.
        value: String,
    },
    /// The datagram could not be sent (the manager went away, or the
    /// socket's buffer is full). Retryable; the service goes on.
    #[error("sending {state:?} to the notify socket {target}: {source}")]
    Send {
        /// The first line sent.
        state: String,
        /// The socket address as given.
        target: String,
        /// The OS error.
        source: io::Error,
    },
}

/// A connection to the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    target: String,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, or `None` when it is unset or
    /// empty (not started by a service manager that listens).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(None),
            Some(value) => match value.into_string() {
                Ok(text) => Notifier::connect(&text).map(Some),
                Err(value) => Err(NotifyError::BadAddress {
                    value: value.to_string_lossy().into_owned(),
                    why: "not valid UTF-8".to_string(),
                }),
            },
        }
    }

    /// A notifier sending to `address`: an absolute path, or `@name` for
    /// the abstract socket `name` (as systemd writes it).
    pub fn connect(address: &str) -> Result<Notifier, NotifyError> {
        let bad = |why: String| NotifyError::BadAddress {
            value: address.to_string(),
            why,
        };
        let addr = if let Some(name) = address.strip_prefix('@') {
            if name.is_empty() {
                return Err(bad("an abstract address needs a name after '@'".into()));
            }
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| bad(e.to_string()))?
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(address).map_err(|e| bad(e.to_string()))?
        } else {
            return Err(bad(
                "expected an absolute path or an abstract address starting with '@' (vsock: addresses are not supported)".into(),
            ));
        };
        let socket = UnixDatagram::unbound().map_err(|e| bad(format!("creating a socket: {e}")))?;
        Ok(Notifier {
            socket,
            addr,
            target: address.to_string(),
        })
    }

    /// Sends `lines` (each `KEY=VALUE`) as one datagram. Values must not
    /// hold a newline: [`status_line`] makes a safe `STATUS=` line.
    pub fn notify(&self, lines: &[&str]) -> Result<(), NotifyError> {
        assert!(!lines.is_empty(), "a notification has at least one line");
        for line in lines {
            assert!(line.contains('='), "a state line is KEY=VALUE: {line:?}");
            assert!(!line.contains('\n'), "a state line is one line: {line:?}");
        }
        let text = lines.join("\n");
        self.socket
            .send_to_addr(text.as_bytes(), &self.addr)
            .map_err(|source| NotifyError::Send {
                state: lines[0].to_string(),
                target: self.target.clone(),
                source,
            })?;
        Ok(())
    }

    /// `READY=1` with a status line: start-up is finished.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&["READY=1", &status_line(status)])
    }

    /// A `STATUS=` line alone (shown by `systemctl status`).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&[&status_line(status)])
    }

    /// `WATCHDOG=1`: the process is healthy. Only send it when a
    /// [`Watchdog`] said [`WatchdogAction::Ping`].
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify(&["WATCHDOG=1"])
    }

    /// `STOPPING=1` with a status line: shutdown has begun.
    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&["STOPPING=1", &status_line(status)])
    }
}

/// `STATUS=<text>` with newlines turned into spaces (a newline would start
/// another state line).
#[must_use]
pub fn status_line(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

/// The watchdog interval systemd expects pings within, from
/// `$WATCHDOG_USEC` and `$WATCHDOG_PID`; `None` when there is no watchdog
/// for this process.
pub fn watchdog_from_env() -> Result<Option<Duration>, NotifyError> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_from_env`] on given values: `usec` and `pid` are the
/// variables' values, `own_pid` this process's id. A watchdog named for
/// another process (a parent that exec'd us without clearing it) is not
/// ours.
pub fn parse_watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let micros = match usec.trim().parse::<u64>() {
        Ok(n) if n > 0 && n < u64::MAX => n,
        _ => {
            return Err(NotifyError::BadWatchdogUsec {
                value: usec.to_string(),
            })
        }
    };
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        match pid.trim().parse::<u32>() {
            Ok(p) if p > 0 => {
                if p != own_pid {
                    return Ok(None);
                }
            }
            _ => {
                return Err(NotifyError::BadWatchdogPid {
                    value: pid.to_string(),
                })
            }
        }
    }
    Ok(Some(Duration::from_micros(micros)))
}

/// What the caller of [`Watchdog::poll`] does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Send `WATCHDOG=1`. `recovered` is true on the first ping after a
    /// stall (log it).
    Ping {
        /// Pings had been withheld before this one.
        recovered: bool,
    },
    /// Nothing is due.
    Idle,
    /// Worker `worker` last beat `age_ms` ago, more than the interval: no
    /// ping. `first_report` is true once per stall, so the caller logs it
    /// once.
    Withhold {
        /// Index of the stalest worker (a data-plane core's index).
        worker: usize,
        /// Milliseconds since its last heartbeat.
        age_ms: u64,
        /// The first poll that found this stall.
        first_report: bool,
    },
}

/// Decides when a watchdog ping may go out. Sans-IO: time and heartbeats
/// come in as arguments.
#[derive(Debug, Clone)]
pub struct Watchdog {
    interval_ms: u64,
    /// When the next ping is due (0: at once).
    next_ping_ms: u64,
    /// Set while pings are withheld.
    stalled: bool,
}

impl Watchdog {
    /// A watchdog for systemd's `interval` (from [`watchdog_from_env`]).
    /// Pings go out every `interval / 2`; a worker is stalled when its
    /// heartbeat is older than `interval`.
    #[must_use]
    pub fn new(interval: Duration) -> Watchdog {
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(2);
        Watchdog {
            interval_ms,
            next_ping_ms: 0,
            stalled: false,
        }
    }

    /// The interval in milliseconds.
    #[must_use]
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Call often (at least every `interval / 4`) from the thread whose
    /// own liveness the ping also vouches for, with the monotonic time and
    /// the monotonic time of every worker's last heartbeat.
    pub fn poll(&mut self, now_ms: u64, beats_ms: &[u64]) -> WatchdogAction {
        let stalest = beats_ms
            .iter()
            .enumerate()
            .map(|(worker, &at)| (worker, now_ms.saturating_sub(at)))
            .max_by_key(|&(_, age)| age);
        if let Some((worker, age_ms)) = stalest {
            if age_ms > self.interval_ms {
                let first_report = !self.stalled;
                self.stalled = true;
                return WatchdogAction::Withhold {
                    worker,
                    age_ms,
                    first_report,
                };
            }
        }
        if now_ms < self.next_ping_ms {
            return WatchdogAction::Idle;
        }
        self.next_ping_ms = now_ms + self.interval_ms / 2;
        let recovered = self.stalled;
        self.stalled = false;
        WatchdogAction::Ping { recovered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram arrives");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn sends_each_state_as_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::connect(path.to_str().expect("utf-8 path")).expect("connect");
        notifier.ready("leader term 3").expect("ready");
        assert_eq!(receive(&manager), "READY=1\nSTATUS=leader term 3");
        notifier.watchdog().expect("watchdog");
        assert_eq!(receive(&manager), "WATCHDOG=1");
        notifier.status("two\nlines").expect("status");
        assert_eq!(receive(&manager), "STATUS=two lines");
        notifier.stopping("shutting down").expect("stopping");
        assert_eq!(receive(&manager), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn sends_to_an_abstract_address() {
        let name = format!("palisade-host-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let notifier = Notifier::connect(&format!("@{name}")).expect("connect");
        notifier.ready("follower of node 2").expect("ready");
        assert_eq!(receive(&manager), "READY=1\nSTATUS=follower of node 2");
    }

    #[test]
    fn a_missing_listener_is_an_error_the_caller_sees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nobody.sock");
        let notifier = Notifier::connect(path.to_str().expect("utf-8")).expect("connect");
        let err = notifier.watchdog().expect_err("nobody listens");
        assert!(err.to_string().contains("WATCHDOG=1"), "{err}");
        assert!(err.to_string().contains("nobody.sock"), "{err}");
    }

    #[test]
    fn refuses_addresses_it_cannot_use() {
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            let err = Notifier::connect(bad).expect_err(bad);
            assert!(err.to_string().contains("NOTIFY_SOCKET"), "{err}");
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(Notifier::connect(&long).is_err());
    }

    #[test]
    fn the_watchdog_is_ours_only_for_our_pid() {
        assert_eq!(parse_watchdog(None, None, 7).expect("unset"), None);
        assert_eq!(parse_watchdog(Some(""), None, 7).expect("empty"), None);
        assert_eq!(
            parse_watchdog(Some("2000000"), None, 7).expect("no pid"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_watchdog(Some("2000000"), Some("7"), 7).expect("our pid"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_watchdog(Some("2000000"), Some("8"), 7).expect("not ours"),
            None
        );
        for bad in ["0", "-1", "abc", "1.5"] {
            let err = parse_watchdog(Some(bad), None, 7).expect_err(bad);
            assert!(err.to_string().contains("WATCHDOG_USEC"), "{err}");
        }
        let err = parse_watchdog(Some("1000"), Some("x"), 7).expect_err("bad pid");
        assert!(err.to_string().contains("WATCHDOG_PID"), "{err}");
    }

    #[test]
    fn pings_at_half_the_interval_while_every_worker_beats() {
        let mut dog = Watchdog::new(Duration::from_millis(1_000));
        let mut pings = Vec::new();
        for now in (0..=3_000u64).step_by(50) {
            // Every worker beat 100 ms ago: healthy.
            let beats = [now.saturating_sub(100), now.saturating_sub(20)];
            if let WatchdogAction::Ping { recovered } = dog.poll(now, &beats) {
                assert!(!recovered);
                pings.push(now);
            }
        }
        assert_eq!(pings, vec![0, 500, 1_000, 1_500, 2_000, 2_500, 3_000]);
    }

    #[test]
    fn one_stalled_worker_stops_the_pings_until_it_beats_again() {
        let mut dog = Watchdog::new(Duration::from_millis(1_000));
        assert_eq!(
            dog.poll(10_000, &[9_990, 9_990]),
            WatchdogAction::Ping { recovered: false }
        );
        // Worker 1 stops at 9_990; the control loop keeps polling.
        let mut withheld = 0;
        for now in (10_050..=13_000u64).step_by(50) {
            match dog.poll(now, &[now, 9_990]) {
                WatchdogAction::Ping { .. } => assert!(now - 9_990 <= 1_000, "ping at {now}"),
                WatchdogAction::Withhold {
                    worker,
                    age_ms,
                    first_report,
                } => {
                    assert_eq!(worker, 1);
                    assert_eq!(age_ms, now - 9_990);
                    assert_eq!(first_report, withheld == 0);
                    withheld += 1;
                }
                WatchdogAction::Idle => {}
            }
        }
        assert!(withheld > 30);
        // It beats again: the next poll pings at once and says so.
        assert_eq!(
            dog.poll(13_050, &[13_050, 13_040]),
            WatchdogAction::Ping { recovered: true }
        );
    }

    #[test]
    fn no_workers_means_the_caller_vouches_alone() {
        let mut dog = Watchdog::new(Duration::from_millis(100));
        assert_eq!(dog.poll(5, &[]), WatchdogAction::Ping { recovered: false });
        assert_eq!(dog.poll(6, &[]), WatchdogAction::Idle);
        assert_eq!(dog.poll(55, &[]), WatchdogAction::Ping { recovered: false });
    }
}

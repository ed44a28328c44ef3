//! Holding a lease while something runs: the library guards ([`Hold`] on
//! threads, [`AsyncHold`] on tokio) and the sans-IO [`Supervisor`] that
//! `palisade hold` runs a child process with.
//!
//! A guard acquires, keeps the lease alive with the keepalive helpers (on
//! its own connection, following the leader) and reports a loss on its
//! channel and to an optional callback; releasing it (or dropping it)
//! gives the lease back.
//!
//! The [`Supervisor`] decides, from the lease's client-computed validity,
//! keepalive events, the child's exit and signals, when to stop the child:
//! SIGTERM once the validity comes within `kill_before` (or at once when
//! the lease is lost), SIGKILL `kill_after` later and in any case
//! [`KILL_MARGIN_MS`] before the validity ends, so the child never runs past
//! the lease's validity as the client computes it. The process shell
//! (`palisade hold`) only reads the clock, waits, and carries out its
//! [`Action`]s.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::Duration;

use crate::blocking::{AcquireOptions, Client, ConnectOptions};
use crate::keepalive::{keep_alive, KeepAlive, KeepAliveThread, LeaseEvent, LossReason};
use crate::lease::{AcquireOutcome, Lease, TokenOutcome};
use crate::{AsyncClient, ClientError};
use palisade_host::clock::boottime_ms;

/// `palisade hold` exit code: the lease was never granted (busy until
/// `--wait` ran out, or denied for now: grace period, waiter limit).
pub const EXIT_NOT_GRANTED: i32 = 121;
/// `palisade hold` exit code: the lease was lost while CMD ran; CMD was
/// stopped (or exited on its own after the loss).
pub const EXIT_LOST: i32 = 122;
/// `palisade hold` exit code: `palisade hold` itself failed (bad
/// arguments, no node reachable, the keepalive connection failed).
pub const EXIT_HOLD_ERROR: i32 = 123;
/// `palisade hold` exit code: CMD could not be run (not executable).
pub const EXIT_CANNOT_RUN: i32 = 126;
/// `palisade hold` exit code: CMD was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// SIGKILL goes out at the latest this long before the lease's validity
/// ends: the margin for the kernel to take the child down.
pub const KILL_MARGIN_MS: u64 = 5;

/// A signal the supervisor asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop, the lease is ending.
    Term,
    /// SIGKILL: the lease's validity is about to end.
    Kill,
    /// Pass on a signal `palisade hold` received (SIGINT or SIGTERM).
    Forward(i32),
}

/// Why the supervisor stops the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The validity came within `kill_before` without a renewal.
    ValidityEnding,
    /// The keepalive reported the lease lost.
    Lost(LossReason),
}

/// What the supervisor reports (one JSON line each with `--json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEvent {
    /// The lease was renewed; the child may run until its new validity.
    Renewed(Lease),
    /// The lease is lost (or its validity ran out while the child ran).
    Lost {
        /// Why.
        reason: StopReason,
    },
    /// A signal was sent to the child.
    Signalled {
        /// Which.
        signal: Signal,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Report this.
    Emit(HoldEvent),
    /// Send this signal to the child (its process group).
    Signal(Signal),
    /// The child is gone: stop renewing, release the lease unless it is
    /// known gone (`release`), then exit with `code`.
    Finish {
        /// Whether to send a release.
        release: bool,
        /// Exit code of `palisade hold`.
        code: i32,
    },
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signalled(i32),
}

impl ChildExit {
    /// The shell convention: the code, or 128 + the signal.
    #[must_use]
    pub fn code(self) -> i32 {
        match self {
            ChildExit::Code(code) => code,
            ChildExit::Signalled(signal) => 128 + signal,
        }
    }
}

/// Timing of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// SIGTERM once the validity is this close.
    pub kill_before_ms: u64,
    /// SIGKILL this long after SIGTERM (and never later than
    /// [`KILL_MARGIN_MS`] before the validity ends).
    pub kill_after_ms: u64,
}

impl SupervisorConfig {
    /// The defaults for a lease of `ttl_ms`: SIGTERM a tenth of the ttl
    /// before the validity ends, SIGKILL half of that later.
    #[must_use]
    pub fn for_ttl(ttl_ms: u64) -> SupervisorConfig {
        let kill_before_ms = (ttl_ms / 10).max(2 * KILL_MARGIN_MS);
        SupervisorConfig {
            kill_before_ms,
            kill_after_ms: kill_before_ms / 2,
        }
    }
}

/// The supervision of one child under one lease, sans-IO. Call the
/// `handle_*` methods as things happen, then drain [`Supervisor::poll_action`];
/// call [`Supervisor::handle_timeout`] at [`Supervisor::poll_timeout`].
/// Times are boot-time ms, the clock leases are computed on.
#[derive(Debug)]
pub struct Supervisor {
    config: SupervisorConfig,
    lease: Lease,
    /// When SIGTERM went out.
    term_at_ms: Option<u64>,
    kill_sent: bool,
    /// The lease is lost (or its validity ran out).
    lost: bool,
    /// The server said the lease is gone: no release needed.
    known_gone: bool,
    finished: bool,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// Supervises a child started under `lease`.
    #[must_use]
    pub fn new(config: SupervisorConfig, lease: Lease) -> Supervisor {
        assert!(config.kill_before_ms > 0, "kill_before must be positive");
        Supervisor {
            config,
            lease,
            term_at_ms: None,
            kill_sent: false,
            lost: false,
            known_gone: false,
            finished: false,
            actions: VecDeque::new(),
        }
    }

    /// The lease as last renewed.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Supervisor::handle_timeout`] must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.finished {
            return None;
        }
        match self.term_at_ms {
            None => Some(self.term_due_ms()),
            Some(_) if !self.kill_sent => Some(self.kill_due_ms()),
            // Killed: only the validity's end (to report the loss) is left.
            Some(_) if !self.lost => Some(self.lease.valid_until_ms),
            Some(_) => None,
        }
    }

    fn term_due_ms(&self) -> u64 {
        self.lease
            .valid_until_ms
            .saturating_sub(self.config.kill_before_ms)
    }

    fn kill_due_ms(&self) -> u64 {
        let latest = self.lease.valid_until_ms.saturating_sub(KILL_MARGIN_MS);
        match self.term_at_ms {
            Some(term_at_ms) => (term_at_ms + self.config.kill_after_ms).min(latest),
            None => latest,
        }
    }

    fn signal(&mut self, signal: Signal) {
        self.actions.push_back(Action::Signal(signal));
        self.actions
            .push_back(Action::Emit(HoldEvent::Signalled { signal }));
    }

    fn terminate(&mut self, now_ms: u64) {
        if self.term_at_ms.is_none() {
            self.term_at_ms = Some(now_ms);
            self.signal(Signal::Term);
        }
        self.handle_timeout(now_ms);
    }

    fn lose(&mut self, reason: StopReason) {
        if !self.lost {
            self.lost = true;
            self.actions
                .push_back(Action::Emit(HoldEvent::Lost { reason }));
        }
    }

    /// The keepalive renewed the lease.
    pub fn handle_renewed(&mut self, lease: Lease, now_ms: u64) {
        if self.finished || self.lost {
            return;
        }
        assert_eq!(lease.token, self.lease.token, "renewed the same lease");
        if lease.valid_until_ms > self.lease.valid_until_ms {
            self.lease = lease.clone();
        }
        self.actions
            .push_back(Action::Emit(HoldEvent::Renewed(lease)));
        self.handle_timeout(now_ms);
    }

    /// The keepalive reports the lease lost.
    pub fn handle_lost(&mut self, reason: LossReason, now_ms: u64) {
        if self.finished {
            return;
        }
        if matches!(reason, LossReason::Stale { .. }) {
            self.known_gone = true;
        }
        self.lose(StopReason::Lost(reason));
        self.terminate(now_ms);
    }

    /// `palisade hold` received SIGINT or SIGTERM: pass it on; the child's
    /// exit ends the hold as usual.
    pub fn handle_signal(&mut self, signal: i32) {
        if !self.finished {
            self.actions
                .push_back(Action::Signal(Signal::Forward(signal)));
        }
    }

    /// The clock reached [`Supervisor::poll_timeout`] (calling it early or
    /// late is harmless).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.finished {
            return;
        }
        if self.term_at_ms.is_none() && now_ms >= self.term_due_ms() {
            self.term_at_ms = Some(now_ms);
            self.signal(Signal::Term);
        }
        if self.term_at_ms.is_some() && !self.kill_sent && now_ms >= self.kill_due_ms() {
            self.kill_sent = true;
            self.signal(Signal::Kill);
        }
        if now_ms >= self.term_due_ms() && !self.lost {
            if now_ms >= self.lease.valid_until_ms {
                self.lose(StopReason::Lost(LossReason::Expired {
                    last_error: "the lease's validity ran out while CMD ran".into(),
                }));
            } else if self.kill_sent {
                self.lose(StopReason::ValidityEnding);
            }
        }
    }

    /// The child exited.
    pub fn handle_child_exit(&mut self, exit: ChildExit) {
        if self.finished {
            return;
        }
        // Stopped because the validity was ending: that is a loss too,
        // even if a late renewal arrived meanwhile.
        if self.term_at_ms.is_some() && !self.lost {
            self.lose(StopReason::ValidityEnding);
        }
        self.finished = true;
        let code = if self.lost { EXIT_LOST } else { exit.code() };
        self.actions.push_back(Action::Finish {
            release: !self.known_gone,
            code,
        });
    }
}

/// Reports a loss to the callback and on the channel.
type LossCallback = Box<dyn FnMut(&LeaseEvent) + Send>;

/// A lease held by a keepalive thread (blocking client). Loss is reported
/// on [`Hold::events`] and to the callback given to
/// [`Hold::acquire_with`]. [`Hold::release`] (or dropping the guard)
/// stops renewing and gives the lease back.
pub struct Hold {
    lease: Lease,
    client: Client,
    keepalive: Option<KeepAliveThread>,
    /// Renewals and the final loss, as the keepalive reports them.
    pub events: mpsc::Receiver<LeaseEvent>,
    forwarder: Option<std::thread::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("lease", &self.lease).finish()
    }
}

impl Hold {
    /// Acquires `resource` (waiting as `options` say) and keeps it alive.
    /// `Ok(Err(busy))` if it was not granted.
    pub fn acquire(
        connect: &ConnectOptions,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<Result<Hold, AcquireOutcome>, ClientError> {
        Hold::acquire_with(connect, resource, options, None)
    }

    /// [`Hold::acquire`], calling `on_event` from the keepalive's side for
    /// every renewal and for the loss.
    pub fn acquire_with(
        connect: &ConnectOptions,
        resource: &str,
        options: AcquireOptions,
        mut on_event: Option<LossCallback>,
    ) -> Result<Result<Hold, AcquireOutcome>, ClientError> {
        let mut client = Client::connect(connect)?;
        let lease = match client.acquire(resource, options)? {
            AcquireOutcome::Granted(lease) => lease,
            busy @ AcquireOutcome::Busy { .. } => return Ok(Err(busy)),
        };
        let renewer = match Client::connect(connect) {
            Ok(renewer) => renewer,
            Err(e) => {
                let _ = client.release(resource, lease.token);
                return Err(e);
            }
        };
        let mut keepalive = KeepAliveThread::spawn(renewer, lease.clone(), None);
        // Forward the keepalive's events, calling back on the way.
        let (tx, events) = mpsc::channel();
        let source = std::mem::replace(&mut keepalive.events, mpsc::channel().1);
        let forwarder = std::thread::spawn(move || {
            for event in source {
                if let Some(callback) = on_event.as_mut() {
                    callback(&event);
                }
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(Ok(Hold {
            lease,
            client,
            keepalive: Some(keepalive),
            events,
            forwarder: Some(forwarder),
            released: false,
        }))
    }

    /// The lease as granted (its token, and its first validity; renewals
    /// arrive on [`Hold::events`]).
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Stops renewing and releases the lease.
    pub fn release(mut self) -> Result<TokenOutcome, ClientError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<TokenOutcome, ClientError> {
        if let Some(mut keepalive) = self.keepalive.take() {
            keepalive.stop();
        }
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
        self.released = true;
        let resource = self.lease.resource.clone();
        self.client.release(&resource, self.lease.token)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.finish();
        }
    }
}

/// A lease kept alive by a tokio task. Loss is reported on
/// [`AsyncHold::events`] (and the latest lease on [`AsyncHold::current`]);
/// [`AsyncHold::release`] gives it back. Dropping it stops renewing and
/// sends the release from a background task.
#[derive(Debug)]
pub struct AsyncHold {
    client: AsyncClient,
    keepalive: Option<KeepAlive>,
    lease: Lease,
}

impl AsyncHold {
    /// Acquires `resource` through `client` and keeps it alive on the same
    /// client. `Ok(Err(busy))` if it was not granted.
    pub async fn acquire(
        client: &AsyncClient,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<Result<AsyncHold, AcquireOutcome>, ClientError> {
        let lease = match client.acquire(resource, options).await? {
            AcquireOutcome::Granted(lease) => lease,
            busy @ AcquireOutcome::Busy { .. } => return Ok(Err(busy)),
        };
        Ok(Ok(AsyncHold {
            client: client.clone(),
            keepalive: Some(keep_alive(client.clone(), lease.clone(), None)),
            lease,
        }))
    }

    /// The lease as granted.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Renewals and the final loss.
    pub fn events(&mut self) -> &mut tokio::sync::mpsc::UnboundedReceiver<LeaseEvent> {
        &mut self
            .keepalive
            .as_mut()
            .expect("kept alive until released")
            .events
    }

    /// The lease as last renewed.
    #[must_use]
    pub fn current(&self) -> Lease {
        self.keepalive
            .as_ref()
            .map_or_else(|| self.lease.clone(), |k| k.current.borrow().clone())
    }

    /// Stops renewing and releases the lease.
    pub async fn release(mut self) -> Result<TokenOutcome, ClientError> {
        self.keepalive = None;
        let (resource, token) = (self.lease.resource.clone(), self.lease.token);
        self.client.release(&resource, token).await
    }
}

impl Drop for AsyncHold {
    fn drop(&mut self) {
        if self.keepalive.take().is_some() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let client = self.client.clone();
                let (resource, token) = (self.lease.resource.clone(), self.lease.token);
                runtime.spawn(async move {
                    let _ = client.release(&resource, token).await;
                });
            }
        }
    }
}

/// Waits up to `timeout` for the loss event on a guard's channel,
/// skipping renewals.
pub fn wait_lost(events: &mpsc::Receiver<LeaseEvent>, timeout: Duration) -> Option<LossReason> {
    let deadline_ms = boottime_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let left = Duration::from_millis(deadline_ms.checked_sub(boottime_ms())?);
        match events.recv_timeout(left) {
            Ok(LeaseEvent::Lost { reason, .. }) => return Some(reason),
            Ok(LeaseEvent::Renewed(_)) => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(valid_until_ms: u64) -> Lease {
        Lease {
            resource: "disk0".into(),
            token: 7,
            ttl_ms: 1_000,
            holder: 1,
            valid_until_ms,
            waited_ms: 0,
        }
    }

    fn drain(s: &mut Supervisor) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn signals(actions: &[Action]) -> Vec<Signal> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    const CONFIG: SupervisorConfig = SupervisorConfig {
        kill_before_ms: 100,
        kill_after_ms: 50,
    };

    #[test]
    fn a_child_that_exits_releases_and_passes_its_status_on() {
        let mut s = Supervisor::new(CONFIG, lease(1_000));
        assert_eq!(s.poll_timeout(), Some(900));
        s.handle_renewed(lease(1_500), 400);
        assert_eq!(s.poll_timeout(), Some(1_400));
        s.handle_child_exit(ChildExit::Code(3));
        let actions = drain(&mut s);
        assert!(signals(&actions).is_empty());
        assert_eq!(
            actions.last(),
            Some(&Action::Finish {
                release: true,
                code: 3
            })
        );
        let mut s = Supervisor::new(CONFIG, lease(1_000));
        s.handle_child_exit(ChildExit::Signalled(15));
        assert!(matches!(
            drain(&mut s).last(),
            Some(Action::Finish { code: 143, .. })
        ));
    }

    #[test]
    fn without_renewals_the_child_is_killed_before_the_validity_ends() {
        let mut s = Supervisor::new(CONFIG, lease(1_000));
        s.handle_timeout(899);
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(900);
        assert_eq!(signals(&drain(&mut s)), [Signal::Term]);
        assert_eq!(s.poll_timeout(), Some(950));
        s.handle_timeout(950);
        let actions = drain(&mut s);
        assert_eq!(signals(&actions), [Signal::Kill]);
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Emit(HoldEvent::Lost {
                reason: StopReason::ValidityEnding
            })
        )));
        s.handle_child_exit(ChildExit::Signalled(9));
        assert_eq!(
            drain(&mut s),
            [Action::Finish {
                release: true,
                code: EXIT_LOST
            }]
        );
    }

    #[test]
    fn sigkill_never_comes_later_than_the_margin_before_the_validity() {
        let config = SupervisorConfig {
            kill_before_ms: 100,
            kill_after_ms: 10_000,
        };
        let mut s = Supervisor::new(config, lease(1_000));
        s.handle_timeout(900);
        assert_eq!(s.poll_timeout(), Some(1_000 - KILL_MARGIN_MS));
        // A late timer still kills at once.
        s.handle_timeout(1_200);
        let actions = drain(&mut s);
        assert_eq!(signals(&actions), [Signal::Term, Signal::Kill]);
    }

    #[test]
    fn a_stale_renewal_stops_the_child_and_skips_the_release() {
        let mut s = Supervisor::new(CONFIG, lease(1_000));
        s.handle_lost(LossReason::Stale { current_token: 9 }, 300);
        let actions = drain(&mut s);
        assert!(matches!(actions[0], Action::Emit(HoldEvent::Lost { .. })));
        assert_eq!(signals(&actions), [Signal::Term]);
        assert_eq!(s.poll_timeout(), Some(350));
        // A renewal answered late changes nothing.
        s.handle_renewed(lease(2_000), 310);
        assert!(drain(&mut s).is_empty());
        s.handle_child_exit(ChildExit::Code(0));
        assert_eq!(
            drain(&mut s),
            [Action::Finish {
                release: false,
                code: EXIT_LOST
            }]
        );
    }

    #[test]
    fn signals_are_forwarded_and_the_exit_still_releases() {
        let mut s = Supervisor::new(CONFIG, lease(1_000));
        s.handle_signal(2);
        assert_eq!(signals(&drain(&mut s)), [Signal::Forward(2)]);
        s.handle_child_exit(ChildExit::Signalled(2));
        assert_eq!(
            drain(&mut s),
            [Action::Finish {
                release: true,
                code: 130
            }]
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn defaults_follow_the_ttl() {
        assert_eq!(
            SupervisorConfig::for_ttl(10_000),
            SupervisorConfig {
                kill_before_ms: 1_000,
                kill_after_ms: 500
            }
        );
        assert_eq!(SupervisorConfig::for_ttl(50).kill_before_ms, 10);
    }
}

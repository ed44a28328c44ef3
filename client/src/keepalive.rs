//! Keeping a lease alive, and saying so loudly when it is lost.
//!
//! The helper renews at a fraction of the ttl. Every successful renewal
//! moves [`Lease::valid_until_ms`]. A renewal follows the leader across the
//! client's endpoint list until the lease's own validity ends
//! ([`crate::Client::renew_lease`]): during a leader election or after the
//! leader died it keeps asking the other nodes, and the new leader, which
//! kept the lease, renews it with the same token. Errors along the way
//! (broken connections, redirects, `Unavailable`, nodes that do not
//! answer) are not a loss. The helper reports [`LeaseEvent::Lost`] and
//! stops only when
//!
//! - a node answers `Stale`: the lease is gone ([`LossReason::Stale`]), or
//! - the lease's validity runs out without a renewal
//!   ([`LossReason::Expired`]); no renewal is ever waited on past
//!   `valid_until_ms`, so the report comes at that moment, not when a
//!   stuck call gives up.
//!
//! Applications must stop touching the resource on `Lost` (or once
//! `Lease::is_valid` is false, whichever comes first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::blocking::Client;
use crate::lease::{Lease, TokenOutcome};
use crate::{AsyncClient, ClientError};
use palisade_host::clock::boottime_ms;

/// What happened to a kept-alive lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Renewed; the lease carries its new validity.
    Renewed(Lease),
    /// The lease is gone. Stop using the resource.
    Lost {
        /// The lease as last known.
        lease: Lease,
        /// Why.
        reason: LossReason,
    },
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// The server says the token is no longer current.
    Stale {
        /// Current holder's token, 0 if none.
        current_token: u64,
    },
    /// Renewals failed until the lease's validity ran out.
    Expired {
        /// The last error seen.
        last_error: String,
    },
}

/// Renew every `ttl / RENEW_FRACTION`.
pub const RENEW_FRACTION: u32 = 3;
/// Shortest pause between retries after a failed renewal.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// Validity left on the client's clock.
fn remaining(lease: &Lease) -> Duration {
    Duration::from_millis(lease.valid_until_ms.saturating_sub(boottime_ms()))
}

/// When to renew next: a third of the ttl, but never later than halfway
/// through the remaining validity.
fn next_pause(lease: &Lease, every: Duration) -> Duration {
    let remaining = Duration::from_millis(lease.valid_until_ms.saturating_sub(boottime_ms()));
    every.min(remaining / 2)
}

fn retry_pause(lease: &Lease, every: Duration) -> Duration {
    (every / 4)
        .min(Duration::from_millis(500))
        .min(Duration::from_millis(
            lease.valid_until_ms.saturating_sub(boottime_ms()) / 2,
        ))
        .max(RETRY_PAUSE_MIN)
}

enum Step {
    Renewed(Lease),
    Lost(LossReason),
    Retry,
}

/// What a renewal's result means for the lease. Only `Stale` or the end of
/// validity lose it: any error while the lease is still valid is retried
/// (giving up on the first error during an election was Consul PR#912).
fn judge(lease: &Lease, result: Result<TokenOutcome, ClientError>) -> Step {
    match result {
        Ok(TokenOutcome::Renewed(renewed)) => Step::Renewed(renewed),
        Ok(TokenOutcome::Stale { current_token, .. }) => {
            Step::Lost(LossReason::Stale { current_token })
        }
        _ if lease.is_valid() => Step::Retry,
        Ok(other) => Step::Lost(LossReason::Expired {
            last_error: format!("unexpected renewal outcome {other:?}"),
        }),
        Err(e) => Step::Lost(LossReason::Expired {
            last_error: e.to_string(),
        }),
    }
}

/// A lease kept alive by a tokio task. Dropping it stops renewing (the
/// lease then simply expires).
#[derive(Debug)]
pub struct KeepAlive {
    /// Renewals and the final loss.
    pub events: tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
    /// The lease as last renewed.
    pub current: tokio::sync::watch::Receiver<Lease>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts renewing `lease` through `client` every `every` (default:
/// a third of its ttl), across leader changes, until it is lost.
#[must_use]
pub fn keep_alive(client: AsyncClient, lease: Lease, every: Option<Duration>) -> KeepAlive {
    let every = every.unwrap_or(Duration::from_millis(u64::from(
        lease.ttl_ms / RENEW_FRACTION,
    )));
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (current_tx, current) = tokio::sync::watch::channel(lease.clone());
    let task = tokio::spawn(async move {
        let mut lease = lease;
        let mut pause = next_pause(&lease, every);
        loop {
            tokio::time::sleep(pause).await;
            // renew_lease follows the leader until the lease's validity
            // ends; the timeout only guards that promise (a name lookup,
            // say, is not bounded by it).
            let result =
                match tokio::time::timeout(remaining(&lease), client.renew_lease(&lease)).await {
                    Ok(result) => result,
                    Err(_) => Err(ClientError::Timeout {
                        endpoint: client.endpoint(),
                        timeout_ms: 0,
                    }),
                };
            match judge(&lease, result) {
                Step::Renewed(renewed) => {
                    lease = renewed;
                    let _ = current_tx.send(lease.clone());
                    let _ = events_tx.send(LeaseEvent::Renewed(lease.clone()));
                    pause = next_pause(&lease, every);
                }
                Step::Retry => pause = retry_pause(&lease, every),
                Step::Lost(reason) => {
                    let _ = events_tx.send(LeaseEvent::Lost { lease, reason });
                    return;
                }
            }
        }
    });
    KeepAlive {
        events,
        current,
        task,
    }
}

/// A lease kept alive by a thread with its own blocking connection.
#[derive(Debug)]
pub struct KeepAliveThread {
    /// Renewals and the final loss.
    pub events: mpsc::Receiver<LeaseEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepAliveThread {
    /// Starts renewing `lease` on `client` (which the thread owns and
    /// fails over across its endpoint list).
    #[must_use]
    pub fn spawn(mut client: Client, lease: Lease, every: Option<Duration>) -> KeepAliveThread {
        let every = every.unwrap_or(Duration::from_millis(u64::from(
            lease.ttl_ms / RENEW_FRACTION,
        )));
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut lease = lease;
            let mut pause = next_pause(&lease, every);
            loop {
                // Sleep in short steps so that stop() is prompt.
                let wake_at = boottime_ms() + u64::try_from(pause.as_millis()).unwrap_or(0);
                while boottime_ms() < wake_at {
                    if stop_flag.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(
                        (wake_at - boottime_ms()).clamp(1, 20),
                    ));
                }
                // Follows the leader until the lease's validity ends and
                // never waits past it, so loss is reported at the deadline.
                let result = client.renew_lease(&lease);
                match judge(&lease, result) {
                    Step::Renewed(renewed) => {
                        lease = renewed;
                        let _ = tx.send(LeaseEvent::Renewed(lease.clone()));
                        pause = next_pause(&lease, every);
                    }
                    Step::Retry => pause = retry_pause(&lease, every),
                    Step::Lost(reason) => {
                        let _ = tx.send(LeaseEvent::Lost { lease, reason });
                        return;
                    }
                }
            }
        });
        KeepAliveThread {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops renewing and waits for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KeepAliveThread {
    fn drop(&mut self) {
        self.stop();
    }
}

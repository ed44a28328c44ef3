//! How a call follows the leader across nodes: the policy both clients
//! share, sans-IO (it reads no clock and touches no socket; the clients
//! pass `now_ms` in and carry out what it decides).
//!
//! A call has one deadline of its own (its request timeout, plus the wait
//! of a waiting acquire or watch; for a renewal, the lease's
//! `valid_until_ms`). Until it passes, the call keeps trying:
//!
//! - **`Redirect` to a leader** → connect there and send again at once (a
//!   redirected request was not carried out). Past
//!   [`REDIRECT_HOPS_FREE`] hops in a row without another answer, each hop
//!   waits a back-off pause first, so two nodes pointing at each other
//!   cannot spin.
//! - **`Redirect` without a leader** (an election is under way) → pause,
//!   then ask the next endpoint of the list (it may know more).
//! - **`Unavailable` / `NotLeader`** → pause for the server's
//!   `retry_after_ms` (at least [`BACKOFF_MIN`], at most [`BACKOFF_MAX`]),
//!   then send again on the same connection; a node that stopped leading
//!   then redirects.
//! - **I/O error, closed connection, or no answer within the per-attempt
//!   deadline** → the node failed: drop the connection and connect to the
//!   next endpoint of the list (round robin). Once every endpoint has
//!   failed in a row, each further attempt waits a back-off pause.
//! - **anything else** (bad argument, authentication, a protocol
//!   violation, a load error the caller must decide on) → returned at once.
//!
//! No pause ever reaches past the deadline: when the next attempt could
//! only start at or after it, the call ends with the last error instead.
//! Each attempt (connect and handshake, then the request) must finish
//! within the per-attempt deadline, `min(attempt_timeout, time left)`, so
//! one node that accepts connections and never answers costs a caller
//! about one `attempt_timeout`, not its whole deadline. (A renewal's
//! attempts also get at most a quarter of the ttl,
//! [`RENEW_ATTEMPT_FRACTION`], so a hung leader cannot eat a short lease.)
//! A request the server may hold for long (a waiting acquire, a watch) is
//! due after its wait plus one `attempt_timeout`; while it waits, a silent
//! connection is probed with a `Status` request every `attempt_timeout`,
//! and a probe unanswered for as long marks the node as hung.
//!
//! What retries rely on: a redirected or refused request was not carried
//! out; an acquire repeated with the same holder id returns the same token
//! if the first one was granted (a new leader keeps the grant); a renewal
//! with the same token is harmless; a release repeated after a lost answer
//! may find the lease gone, which the clients report as released (see
//! [`crate::Client::release`]). A waiting acquire re-sent after a failover
//! asks for the wait that is left and loses its place in the old leader's
//! queue.

use std::time::Duration;

use palisade_proto::ErrorCode;

use crate::ClientError;

/// Default per-attempt deadline ([`crate::ConnectOptions::attempt_timeout`]).
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// First back-off pause; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(25);
/// Longest pause between two attempts, whatever the server's
/// `retry_after_ms` says (a grace period can be minutes long; the caller's
/// deadline decides how long to keep asking).
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Redirects followed back to back without pausing.
pub const REDIRECT_HOPS_FREE: u32 = 3;
/// A renewal gives each attempt at most `ttl / RENEW_ATTEMPT_FRACTION`
/// (and at most the per-attempt deadline), so that one hung node leaves
/// most of a short lease's validity to the others.
pub const RENEW_ATTEMPT_FRACTION: u32 = 4;
/// The shortest per-attempt deadline a renewal gets, however short its ttl.
pub const RENEW_ATTEMPT_MIN: Duration = Duration::from_millis(20);
/// Attempts of one call at most, whatever its deadline (a bound on the
/// loop, not a policy: at [`BACKOFF_MAX`] per round it is over an hour).
pub const ATTEMPTS_MAX: u32 = 4096;

/// Whether `error` means "this node failed, try another": it could not be
/// reached, broke the connection, did not answer in time, or closed the
/// connection for load or slowness. The request may or may not have been
/// carried out.
pub(crate) fn is_node_failure(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Io { .. }
            | ClientError::Timeout { .. }
            | ClientError::Server {
                code: ErrorCode::TooManyConnections | ErrorCode::Timeout,
                ..
            }
    )
}

/// Whether the connection `error` came from is no use any more.
pub(crate) fn connection_is_dead(error: &ClientError) -> bool {
    match error {
        ClientError::Io { .. } | ClientError::Protocol(_) => true,
        ClientError::Server { code, .. } => code.closes_connection(),
        _ => false,
    }
}

/// The per-attempt deadline of a renewal for `ttl` (see
/// [`RENEW_ATTEMPT_FRACTION`]).
pub(crate) fn renew_attempt(attempt: Duration, ttl: Duration) -> Duration {
    attempt.min((ttl / RENEW_ATTEMPT_FRACTION).max(RENEW_ATTEMPT_MIN))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The endpoint list of a client and where it stands in it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    list: Vec<String>,
    /// Index of the endpoint to try after one that is not in the list
    /// (a redirect target) fails.
    cursor: usize,
}

/// Splits a comma-separated endpoint string into its non-empty entries.
pub(crate) fn split_endpoints(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Endpoints {
    /// The endpoints of a comma-separated list; an error if it names none.
    pub(crate) fn parse(text: &str) -> Result<Endpoints, ClientError> {
        let list = split_endpoints(text);
        if list.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "endpoint {text:?} names no node"
            )));
        }
        Ok(Endpoints { list, cursor: 0 })
    }

    pub(crate) fn list(&self) -> &[String] {
        &self.list
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// The endpoint to try once `failed` did not answer: the next one in
    /// the list, round robin.
    pub(crate) fn after(&mut self, failed: &str) -> String {
        if let Some(index) = self.list.iter().position(|e| e == failed) {
            self.cursor = (index + 1) % self.list.len();
        }
        let next = self.list[self.cursor].clone();
        assert!(self.cursor < self.list.len());
        next
    }
}

/// What one attempt of a call may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// Boot-time ms by which a request that does not wait must be answered.
    pub(crate) deadline_ms: u64,
    /// The call's own deadline.
    pub(crate) call_deadline_ms: u64,
    /// The per-attempt budget; also how long a waiting request's connection
    /// may stay silent before it is probed, and the probe answered.
    pub(crate) budget_ms: u64,
    /// An earlier attempt may have been carried out although its answer
    /// never came.
    pub(crate) maybe_delivered: bool,
}

impl Attempt {
    /// When the answer to a request sent at `now_ms` that the server may
    /// hold for `wait_ms` (a waiting acquire, a watch) is due: after the
    /// wait plus one budget, and never after the call's deadline. While it
    /// waits, the connection is probed for liveness instead.
    pub(crate) fn answer_due_ms(&self, now_ms: u64, wait_ms: u32) -> u64 {
        if wait_ms == 0 {
            return self.deadline_ms;
        }
        now_ms
            .saturating_add(u64::from(wait_ms))
            .saturating_add(self.budget_ms)
            .min(self.call_deadline_ms)
    }

    /// The wait to ask for at `now_ms` so that a waiting request ends when
    /// the caller's wait, which ends at `wait_end_ms`, does.
    pub(crate) fn wait_left_ms(now_ms: u64, wait_end_ms: u64) -> u32 {
        u32::try_from(wait_end_ms.saturating_sub(now_ms)).unwrap_or(u32::MAX)
    }
}

/// What the caller of [`Retry::handle_error`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send again on the same connection after the pause.
    Again {
        /// Pause first.
        pause_ms: u64,
    },
    /// Connect to the leader at `endpoint` after the pause and send there.
    Connect {
        /// The leader's client address.
        endpoint: String,
        /// Pause first.
        pause_ms: u64,
    },
    /// The node failed: drop its connection and, after the pause, connect
    /// to the next endpoint of the list.
    OtherNode {
        /// Pause first.
        pause_ms: u64,
    },
    /// Hand the error to the caller.
    GiveUp,
}

impl Next {
    /// The pause before the next attempt (0 for `GiveUp`).
    pub(crate) fn pause_ms(&self) -> u64 {
        match self {
            Next::Again { pause_ms }
            | Next::Connect { pause_ms, .. }
            | Next::OtherNode { pause_ms } => *pause_ms,
            Next::GiveUp => 0,
        }
    }
}

/// One call's progress across attempts.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    deadline_ms: u64,
    attempt_ms: u64,
    endpoint_count: u32,
    backoff_ms: u64,
    /// Redirects followed since the last other answer.
    hops: u32,
    /// Nodes that failed since the last answer.
    node_failures: u32,
    attempts: u32,
    maybe_delivered: bool,
}

impl Retry {
    /// A call that must end by `deadline_ms`; each
    /// attempt gets at most `attempt`.
    pub(crate) fn new(deadline_ms: u64, attempt: Duration, endpoint_count: usize) -> Retry {
        assert!(endpoint_count > 0, "a client has at least one endpoint");
        Retry {
            deadline_ms,
            attempt_ms: millis(attempt).max(1),
            endpoint_count: u32::try_from(endpoint_count).unwrap_or(u32::MAX),
            backoff_ms: millis(BACKOFF_MIN),
            hops: 0,
            node_failures: 0,
            attempts: 0,
            maybe_delivered: false,
        }
    }

    /// When the attempt starting at `now_ms` must be over: one
    /// `attempt_timeout` later, or the call's deadline if that is sooner.
    pub(crate) fn attempt_deadline_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.attempt_ms).min(self.deadline_ms)
    }

    /// The budget of an attempt starting at `now_ms`.
    pub(crate) fn attempt(&self, now_ms: u64) -> Attempt {
        Attempt {
            deadline_ms: self.attempt_deadline_ms(now_ms),
            call_deadline_ms: self.deadline_ms,
            budget_ms: self.attempt_ms,
            maybe_delivered: self.maybe_delivered,
        }
    }

    #[cfg(test)]
    /// Whether an earlier attempt may have reached a node and been carried
    /// out although its answer never came (an I/O error or timeout after
    /// the request was sent).
    pub(crate) fn maybe_delivered(&self) -> bool {
        self.maybe_delivered
    }

    fn backoff(&mut self) -> u64 {
        let pause = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(millis(BACKOFF_MAX));
        pause
    }

    /// Decides what follows `error` from the node at `endpoint`, which the
    /// attempt reached at `now_ms`. `sent` says whether the request may
    /// have left (false when connecting failed).
    pub(crate) fn handle_error(
        &mut self,
        now_ms: u64,
        error: &ClientError,
        endpoint: &str,
        sent: bool,
    ) -> Next {
        self.attempts += 1;
        let next = match error {
            error if is_node_failure(error) => {
                // Load or slowness closes the connection too: another node
                // may do better.
                self.maybe_delivered |= sent;
                self.node_failed()
            }
            ClientError::Redirect {
                endpoint: leader, ..
            } if !leader.is_empty() && leader != endpoint => {
                self.node_failures = 0;
                self.hops += 1;
                let pause_ms = if self.hops > REDIRECT_HOPS_FREE {
                    self.backoff()
                } else {
                    0
                };
                Next::Connect {
                    endpoint: leader.clone(),
                    pause_ms,
                }
            }
            ClientError::Redirect { .. } => {
                // No leader known here: an election is under way. Another
                // node may know more; with a single endpoint, ask it again.
                self.node_failures = 0;
                self.hops = 0;
                let pause_ms = self.backoff();
                if self.endpoint_count > 1 {
                    Next::OtherNode { pause_ms }
                } else {
                    Next::Again { pause_ms }
                }
            }
            ClientError::Server {
                code: ErrorCode::Unavailable | ErrorCode::NotLeader,
                retry_after_ms,
                ..
            } => {
                self.node_failures = 0;
                self.hops = 0;
                let pause_ms = if *retry_after_ms == 0 {
                    self.backoff()
                } else {
                    u64::from(*retry_after_ms).clamp(millis(BACKOFF_MIN), millis(BACKOFF_MAX))
                };
                Next::Again { pause_ms }
            }
            _ => Next::GiveUp,
        };
        if next == Next::GiveUp
            || self.attempts >= ATTEMPTS_MAX
            || now_ms.saturating_add(next.pause_ms()) >= self.deadline_ms
        {
            return Next::GiveUp;
        }
        next
    }

    fn node_failed(&mut self) -> Next {
        self.hops = 0;
        self.node_failures += 1;
        // The first pass over the list goes at once; after that, every
        // endpoint has failed in a row and a pause keeps the client from
        // hammering a cluster that is down.
        let pause_ms = if self.node_failures >= self.endpoint_count {
            self.backoff()
        } else {
            0
        };
        Next::OtherNode { pause_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> ClientError {
        ClientError::Io {
            endpoint: "a:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    fn unavailable(retry_after_ms: u32) -> ClientError {
        ClientError::Server {
            code: ErrorCode::Unavailable,
            retry_after_ms,
            message: String::new(),
        }
    }

    fn redirect(endpoint: &str) -> ClientError {
        ClientError::Redirect {
            leader_id: 2,
            endpoint: endpoint.into(),
        }
    }

    #[test]
    fn endpoint_lists_split_on_commas_and_rotate() {
        let mut endpoints = Endpoints::parse(" a:1, b:2,,c:3 ").expect("three");
        assert_eq!(endpoints.list(), ["a:1", "b:2", "c:3"]);
        assert_eq!(endpoints.after("a:1"), "b:2");
        assert_eq!(endpoints.after("c:3"), "a:1");
        // A redirect target outside the list: continue where we stood.
        assert_eq!(endpoints.after("leader:9"), "a:1");
        assert_eq!(endpoints.after("a:1"), "b:2");
        assert!(Endpoints::parse(" , ").is_err());
        assert_eq!(Endpoints::parse("x:1").expect("one").after("x:1"), "x:1");
    }

    #[test]
    fn attempts_get_the_per_attempt_budget_or_what_is_left() {
        let retry = Retry::new(5_000, Duration::from_secs(1), 3);
        assert_eq!(retry.attempt_deadline_ms(1_000), 2_000);
        assert_eq!(retry.attempt_deadline_ms(4_500), 5_000);
        assert_eq!(retry.attempt_deadline_ms(6_000), 5_000);
    }

    #[test]
    fn a_waiting_request_is_due_after_its_wait_and_one_budget() {
        let retry = Retry::new(20_000, Duration::from_secs(1), 1);
        let attempt = retry.attempt(1_000);
        assert_eq!(attempt.deadline_ms, 2_000);
        assert_eq!(attempt.answer_due_ms(1_000, 0), 2_000);
        assert_eq!(attempt.answer_due_ms(1_000, 5_000), 7_000);
        assert_eq!(attempt.answer_due_ms(1_000, 30_000), 20_000);
        assert_eq!(Attempt::wait_left_ms(1_000, 6_000), 5_000);
        assert_eq!(Attempt::wait_left_ms(7_000, 6_000), 0);
    }

    #[test]
    fn renewals_give_each_attempt_a_quarter_of_the_ttl_at_most() {
        let second = Duration::from_secs(1);
        assert_eq!(
            renew_attempt(second, Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            renew_attempt(second, Duration::from_millis(900)),
            Duration::from_millis(225)
        );
        assert_eq!(
            renew_attempt(second, Duration::from_millis(10)),
            RENEW_ATTEMPT_MIN
        );
        assert_eq!(
            renew_attempt(Duration::from_millis(5), Duration::from_secs(10)),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn a_failed_node_moves_on_at_once_then_backs_off_per_round() {
        let mut retry = Retry::new(60_000, Duration::from_secs(1), 3);
        assert_eq!(
            retry.handle_error(0, &io(), "a:1", false),
            Next::OtherNode { pause_ms: 0 }
        );
        assert_eq!(
            retry.handle_error(0, &io(), "b:1", false),
            Next::OtherNode { pause_ms: 0 }
        );
        assert!(!retry.maybe_delivered(), "connect failures deliver nothing");
        // All three failed in a row: pauses double up to the cap.
        let pauses: Vec<u64> = (0..8)
            .map(|_| retry.handle_error(0, &io(), "c:1", true).pause_ms())
            .collect();
        assert_eq!(pauses, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert!(retry.maybe_delivered());
    }

    #[test]
    fn redirects_are_followed_at_once_then_paced() {
        let mut retry = Retry::new(60_000, Duration::from_secs(1), 1);
        for _ in 0..REDIRECT_HOPS_FREE {
            assert_eq!(
                retry.handle_error(0, &redirect("b:2"), "a:1", true),
                Next::Connect {
                    endpoint: "b:2".into(),
                    pause_ms: 0
                }
            );
        }
        assert_eq!(
            retry
                .handle_error(0, &redirect("a:1"), "b:2", true)
                .pause_ms(),
            25
        );
        assert!(!retry.maybe_delivered(), "a redirect was not carried out");
    }

    #[test]
    fn no_leader_pauses_and_asks_another_node() {
        let mut many = Retry::new(60_000, Duration::from_secs(1), 3);
        assert_eq!(
            many.handle_error(0, &redirect(""), "a:1", true),
            Next::OtherNode { pause_ms: 25 }
        );
        // A redirect to the node itself is no leader either.
        assert_eq!(
            many.handle_error(0, &redirect("a:1"), "a:1", true),
            Next::OtherNode { pause_ms: 50 }
        );
        let mut one = Retry::new(60_000, Duration::from_secs(1), 1);
        assert_eq!(
            one.handle_error(0, &redirect(""), "a:1", true),
            Next::Again { pause_ms: 25 }
        );
    }

    #[test]
    fn unavailable_follows_the_hint_within_bounds() {
        let mut retry = Retry::new(60_000, Duration::from_secs(1), 1);
        assert_eq!(
            retry.handle_error(0, &unavailable(300), "a:1", true),
            Next::Again { pause_ms: 300 }
        );
        assert_eq!(
            retry.handle_error(0, &unavailable(3_000), "a:1", true),
            Next::Again { pause_ms: 1_000 }
        );
        assert_eq!(
            retry.handle_error(0, &unavailable(1), "a:1", true),
            Next::Again { pause_ms: 25 }
        );
        assert_eq!(
            retry.handle_error(0, &unavailable(0), "a:1", true),
            Next::Again { pause_ms: 25 }
        );
        let not_leader = ClientError::Server {
            code: ErrorCode::NotLeader,
            retry_after_ms: 0,
            message: String::new(),
        };
        assert_eq!(
            retry.handle_error(0, &not_leader, "a:1", true),
            Next::Again { pause_ms: 50 }
        );
    }

    #[test]
    fn no_pause_reaches_past_the_deadline() {
        let mut retry = Retry::new(1_000, Duration::from_secs(1), 1);
        assert_eq!(
            retry.handle_error(800, &unavailable(300), "a:1", true),
            Next::GiveUp
        );
        let mut retry = Retry::new(1_000, Duration::from_secs(1), 2);
        assert_eq!(
            retry.handle_error(999, &io(), "a:1", true),
            Next::OtherNode { pause_ms: 0 }
        );
        assert_eq!(retry.handle_error(1_000, &io(), "b:1", true), Next::GiveUp);
    }

    #[test]
    fn errors_the_caller_must_see_end_the_call() {
        let mut retry = Retry::new(60_000, Duration::from_secs(1), 3);
        for error in [
            ClientError::InvalidArgument("ttl".into()),
            ClientError::Auth("bad".into()),
            ClientError::Protocol("junk".into()),
            ClientError::Server {
                code: ErrorCode::TooManyWaiters,
                retry_after_ms: 0,
                message: String::new(),
            },
        ] {
            assert_eq!(retry.handle_error(0, &error, "a:1", true), Next::GiveUp);
        }
    }

    #[test]
    fn the_loop_is_bounded_even_without_a_deadline() {
        let mut retry = Retry::new(u64::MAX, Duration::from_secs(1), 1);
        let mut attempts = 0;
        while retry.handle_error(0, &unavailable(25), "a:1", true) != Next::GiveUp {
            attempts += 1;
        }
        assert_eq!(attempts, ATTEMPTS_MAX - 1);
    }
}

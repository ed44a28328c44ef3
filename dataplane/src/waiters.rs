//! FIFO wait queues, sans-IO. Every key has a home core
//! ([`home_core`]); all waiting for that key happens in the home core's
//! [`WaitQueues`], so order is one queue's order whatever core a request
//! arrived on.
//!
//! While a key has waiters its slot carries the WAITERS flag: fresh acquires
//! are refused (they would overtake the queue) and the key is not reclaimed.
//! The home core grants to the head when a release wakes it, when the lease
//! or its lock delay runs out (a retry timer), or when the grace period
//! ends; each waiter also has a deadline.
//!
//! The shell feeds `handle_*` and drains [`WaitQueues::poll_event`], then
//! sleeps until [`WaitQueues::poll_timeout`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use palisade_proto::ErrorCode;

use crate::leadership::{LeadershipView, NotGranting};
use crate::replica::LeaseName;
use crate::table::{AcquireMode, Acquired, Grant, LeaseKey, LeaseTable, TableError};

/// The core whose queue orders waiters for `key`.
#[must_use]
pub fn home_core(key: LeaseKey, cores: usize) -> usize {
    assert!(cores >= 1);
    // Low bits of the fingerprint (above the two kind bits); the table's
    // slot index uses the high half, so the two are independent.
    ((key.hash() >> 2) as u64 % cores as u64) as usize
}

/// Where a waiter's answer goes: a connection on some core, and the request
/// it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Core the connection lives on.
    pub core: u16,
    /// Connection id, unique on that core.
    pub conn: u64,
    /// Request id to answer.
    pub request_id: u64,
    /// Group from the request frame.
    pub group: u32,
    /// A queued acquire (counts against the connection's and the tenant's
    /// waiter limits until it is answered), not a commit or a watch.
    pub queued: bool,
}

/// A request to wait for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitRequest {
    /// Key to wait for.
    pub key: LeaseKey,
    /// The lease's name, when grants are replicated (the log names
    /// leases; the key is a per-process fingerprint).
    pub name: Option<Arc<LeaseName>>,
    /// What to grant when its turn comes.
    pub grant: Grant,
    /// Give up at this monotonic ms.
    pub deadline_ms: u64,
    /// When the request arrived (for `waited_ms`).
    pub enqueued_ms: u64,
    /// Where to answer.
    pub origin: Origin,
}

/// An answer for a waiter (or for a change that waited for its commit).
#[derive(Debug, Clone, PartialEq)]
pub enum WaitEvent {
    /// Its turn came: the lease is granted. With replication the grant is
    /// answered only once logged (the shell proposes it first).
    Granted {
        /// Where to answer.
        origin: Origin,
        /// The key (to release the lease if the connection is gone).
        key: LeaseKey,
        /// Fencing token.
        token: u64,
        /// Granted duration.
        ttl_ms: u32,
        /// Time spent waiting.
        waited_ms: u32,
        /// What the replicated log must record: the holder, the lock delay
        /// and the lease's name (`None` without replication).
        log: Option<GrantLog>,
    },
    /// The deadline passed first.
    TimedOut {
        /// Where to answer.
        origin: Origin,
        /// Token of the live lease, 0 if none.
        token: u64,
        /// Time until the key may become grantable.
        remaining_ms: u32,
        /// Time spent waiting.
        waited_ms: u32,
    },
    /// The wait could not continue.
    Failed {
        /// Where to answer.
        origin: Origin,
        /// Why.
        code: ErrorCode,
        /// Retry hint.
        retry_after_ms: u32,
        /// What to tell the client.
        message: &'static str,
    },
    /// A replicated change committed: its answer.
    Reply {
        /// Where to answer.
        origin: Origin,
        /// The answer.
        response: palisade_proto::Response,
    },
    /// A watch saw a newer token, or its wait ran out.
    Watched {
        /// Where to answer.
        origin: Origin,
        /// Token of the current unexpired lease, 0 if none.
        current_token: u64,
        /// Highest token issued for the key, 0 if none.
        last_token: u64,
        /// Whether `last_token` passed the watch's `after`.
        changed: bool,
    },
}

/// What a waiter's grant puts into the replicated log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantLog {
    /// The lease's name.
    pub name: Arc<LeaseName>,
    /// The holder id granted.
    pub holder: u64,
    /// The lease's ttl.
    pub ttl_ms: u32,
    /// Its lock delay.
    pub lock_delay_ms: u32,
}

impl WaitEvent {
    /// Where the answer goes.
    #[must_use]
    pub fn origin(&self) -> Origin {
        match self {
            WaitEvent::Granted { origin, .. }
            | WaitEvent::TimedOut { origin, .. }
            | WaitEvent::Failed { origin, .. }
            | WaitEvent::Reply { origin, .. }
            | WaitEvent::Watched { origin, .. } => *origin,
        }
    }
}

#[derive(Debug, Clone)]
struct Waiting {
    id: u64,
    request: WaitRequest,
}

/// One core's wait queues. Plain data: tests drive it directly.
#[derive(Debug)]
pub struct WaitQueues {
    queues: HashMap<LeaseKey, VecDeque<Waiting>>,
    deadlines: BTreeSet<(u64, u64)>,
    key_of: HashMap<u64, LeaseKey>,
    retries: BTreeSet<(u64, LeaseKey)>,
    retry_of: HashMap<LeaseKey, u64>,
    events: VecDeque<WaitEvent>,
    next_id: u64,
    waiters_max: usize,
    waiting: usize,
    new_epoch_wanted: bool,
    /// The epoch of the last StaleEpoch answer, to tell a lagging view from
    /// a sequence that ran past the epoch.
    stale_epoch_seen: Option<u32>,
    /// Grants to waiters that took over a lease which had run out
    /// unreleased (see [`WaitQueues::take_expirations`]).
    expirations: u64,
}

/// How soon to retry after a transient table condition.
const CONTENDED_RETRY_MS: u64 = 1;
const EXHAUSTED_RETRY_MS: u64 = 10;
const UNCONFIRMED_RETRY_MS: u64 = 10;

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl WaitQueues {
    /// Queues holding at most `waiters_max` waiters in total.
    #[must_use]
    pub fn new(waiters_max: usize) -> WaitQueues {
        WaitQueues {
            queues: HashMap::new(),
            deadlines: BTreeSet::new(),
            key_of: HashMap::new(),
            retries: BTreeSet::new(),
            retry_of: HashMap::new(),
            events: VecDeque::new(),
            next_id: 1,
            waiters_max,
            waiting: 0,
            new_epoch_wanted: false,
            stale_epoch_seen: None,
            expirations: 0,
        }
    }

    /// Expirations found by grants to waiters since the last call (each
    /// lease that ran out unreleased is counted once, here or by the
    /// sweeper). Call after handling, with the events.
    pub fn take_expirations(&mut self) -> u64 {
        std::mem::take(&mut self.expirations)
    }

    /// Waiters queued on this core.
    #[must_use]
    pub fn len(&self) -> usize {
        self.waiting
    }

    /// No waiters queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Queues a waiter (or answers at once if it can). Call on the key's
    /// home core.
    pub fn handle_enqueue(
        &mut self,
        table: &LeaseTable,
        lead: LeadershipView,
        request: WaitRequest,
        now_ms: u64,
    ) {
        if self.waiting >= self.waiters_max {
            self.events.push_back(WaitEvent::Failed {
                origin: request.origin,
                code: ErrorCode::TooManyWaiters,
                retry_after_ms: 100,
                message:
                    "the node holds waiters_max waiters; retry later or raise limits.waiters_max",
            });
            return;
        }
        let key = request.key;
        if let Err(err) = table.set_waiters(key, true, now_ms) {
            let (code, message) = match err {
                TableError::Full => (
                    ErrorCode::TableFull,
                    "lease table is full; raise leases.table_capacity",
                ),
                TableError::Contended
                | TableError::EpochExhausted
                | TableError::StaleEpoch
                | TableError::TenantQuota => {
                    (ErrorCode::Unavailable, "transient contention; retry")
                }
            };
            self.events.push_back(WaitEvent::Failed {
                origin: request.origin,
                code,
                retry_after_ms: 1,
                message,
            });
            self.clear_flag_if_idle(table, key, now_ms);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.deadlines.insert((request.deadline_ms, id));
        self.key_of.insert(id, key);
        self.queues
            .entry(key)
            .or_default()
            .push_back(Waiting { id, request });
        self.waiting += 1;
        self.try_head(table, lead, key, now_ms);
    }

    /// A release of `key` happened somewhere: try to grant the head.
    pub fn handle_wake(
        &mut self,
        table: &LeaseTable,
        lead: LeadershipView,
        key: LeaseKey,
        now_ms: u64,
    ) {
        if self.queues.contains_key(&key) {
            self.try_head(table, lead, key, now_ms);
        }
    }

    /// The connection `conn` on core `core` closed: drop its waiters.
    pub fn handle_cancel(
        &mut self,
        table: &LeaseTable,
        lead: LeadershipView,
        core: u16,
        conn: u64,
        now_ms: u64,
    ) {
        let mut touched = Vec::new();
        for (key, queue) in &mut self.queues {
            let before = queue.len();
            queue.retain(|w| {
                let gone = w.request.origin.core == core && w.request.origin.conn == conn;
                if gone {
                    self.deadlines.remove(&(w.request.deadline_ms, w.id));
                    self.key_of.remove(&w.id);
                }
                !gone
            });
            if queue.len() != before {
                self.waiting -= before - queue.len();
                touched.push(*key);
            }
        }
        for key in touched {
            self.try_head(table, lead, key, now_ms);
        }
    }

    /// Time passed: expire deadlines and run due retries.
    pub fn handle_timeout(&mut self, table: &LeaseTable, lead: LeadershipView, now_ms: u64) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let Some(key) = self.key_of.remove(&id) else {
                continue;
            };
            let queue = self.queues.get_mut(&key).expect("waiter's key has a queue");
            let position = queue
                .iter()
                .position(|w| w.id == id)
                .expect("waiter is in its key's queue");
            let waiter = queue.remove(position).expect("position is in range");
            self.waiting -= 1;
            let peek = table.peek(key, now_ms);
            self.events.push_back(WaitEvent::TimedOut {
                origin: waiter.request.origin,
                token: peek.token,
                remaining_ms: clamp_u32(peek.grantable_at_ms.saturating_sub(now_ms)),
                waited_ms: clamp_u32(now_ms.saturating_sub(waiter.request.enqueued_ms)),
            });
            self.try_head(table, lead, key, now_ms);
        }
        while let Some(&(at, key)) = self.retries.first() {
            if at > now_ms {
                break;
            }
            self.retries.pop_first();
            self.retry_of.remove(&key);
            self.try_head(table, lead, key, now_ms);
        }
    }

    /// The next answer to deliver. Call after every `handle_*` until `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<WaitEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let deadline = self.deadlines.first().map(|&(at, _)| at);
        let retry = self.retries.first().map(|&(at, _)| at);
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a grant found the epoch's sequence used up since last asked.
    pub fn take_new_epoch_request(&mut self) -> bool {
        std::mem::take(&mut self.new_epoch_wanted)
    }

    fn schedule_retry(&mut self, key: LeaseKey, at_ms: u64) {
        if let Some(old) = self.retry_of.insert(key, at_ms) {
            self.retries.remove(&(old, key));
        }
        self.retries.insert((at_ms, key));
    }

    fn cancel_retry(&mut self, key: LeaseKey) {
        if let Some(old) = self.retry_of.remove(&key) {
            self.retries.remove(&(old, key));
        }
    }

    fn clear_flag_if_idle(&mut self, table: &LeaseTable, key: LeaseKey, now_ms: u64) {
        if self.queues.get(&key).is_none_or(VecDeque::is_empty) {
            self.queues.remove(&key);
            self.cancel_retry(key);
            // Unmarking only finds and CASes; it cannot fail for want of room.
            let _ = table.set_waiters(key, false, now_ms);
        }
    }

    fn pop_head(&mut self, key: LeaseKey) -> Option<Waiting> {
        let waiter = self.queues.get_mut(&key)?.pop_front()?;
        self.deadlines
            .remove(&(waiter.request.deadline_ms, waiter.id));
        self.key_of.remove(&waiter.id);
        self.waiting -= 1;
        Some(waiter)
    }

    /// Grants to the head of `key`'s queue while it can, then arranges the
    /// next attempt.
    fn try_head(&mut self, table: &LeaseTable, lead: LeadershipView, key: LeaseKey, now_ms: u64) {
        loop {
            let Some(head) = self.queues.get(&key).and_then(|q| q.front()).cloned() else {
                self.clear_flag_if_idle(table, key, now_ms);
                return;
            };
            match lead.check_grant(now_ms) {
                Ok(()) => {}
                Err(NotGranting::Grace { until_ms }) => {
                    self.schedule_retry(key, until_ms);
                    return;
                }
                Err(NotGranting::Unconfirmed) => {
                    // A quorum may confirm the leadership again shortly; if
                    // not, the node stops leading and the queue fails over.
                    self.schedule_retry(key, now_ms + UNCONFIRMED_RETRY_MS);
                    return;
                }
                Err(NotGranting::NotLeader { .. }) => {
                    while let Some(waiter) = self.pop_head(key) {
                        self.events.push_back(WaitEvent::Failed {
                            origin: waiter.request.origin,
                            code: ErrorCode::NotLeader,
                            retry_after_ms: 0,
                            message: "this node stopped leading while the request waited",
                        });
                    }
                    self.clear_flag_if_idle(table, key, now_ms);
                    return;
                }
            }
            match table.acquire(
                key,
                head.request.grant,
                now_ms,
                lead.epoch,
                AcquireMode::WaiterHead,
            ) {
                Ok(Acquired::Granted {
                    token,
                    ttl_ms: lease_ttl_ms,
                    took_over_expired,
                    ..
                }) => {
                    self.expirations += u64::from(took_over_expired);
                    let waiter = self.pop_head(key).expect("head exists");
                    assert_eq!(waiter.id, head.id);
                    let grant = waiter.request.grant;
                    self.events.push_back(WaitEvent::Granted {
                        origin: waiter.request.origin,
                        key,
                        token,
                        ttl_ms: grant.ttl_ms,
                        waited_ms: clamp_u32(now_ms.saturating_sub(waiter.request.enqueued_ms)),
                        log: waiter.request.name.map(|name| GrantLog {
                            name,
                            holder: grant.holder,
                            ttl_ms: lease_ttl_ms,
                            lock_delay_ms: grant.lock_delay_ms,
                        }),
                    });
                    // Loop: the next head (if any) now waits on this grant.
                }
                Ok(Acquired::Busy {
                    grantable_at_ms, ..
                }) => {
                    self.schedule_retry(key, grantable_at_ms.max(now_ms + 1));
                    return;
                }
                Err(refusal @ (TableError::Full | TableError::TenantQuota)) => {
                    // The head's turn came but no new grant fits: the table
                    // is full, or (quotas refuse only new grants) its
                    // tenant holds its quota of leases elsewhere.
                    let (code, message) = if refusal == TableError::Full {
                        (
                            ErrorCode::TableFull,
                            "lease table is full; raise leases.table_capacity",
                        )
                    } else {
                        (
                            ErrorCode::TenantLeaseQuota,
                            "the tenant holds limits.tenant_leases_max leases on this node; release some and retry",
                        )
                    };
                    let waiter = self.pop_head(key).expect("head exists");
                    self.events.push_back(WaitEvent::Failed {
                        origin: waiter.request.origin,
                        code,
                        retry_after_ms: 100,
                        message,
                    });
                }
                Err(TableError::EpochExhausted) => {
                    self.new_epoch_wanted = true;
                    self.schedule_retry(key, now_ms + EXHAUSTED_RETRY_MS);
                    return;
                }
                Err(TableError::StaleEpoch) => {
                    // The next attempt reads a fresh Leadership word; if the
                    // epoch is still behind, the node needs a new one.
                    if self.stale_epoch_seen == Some(lead.epoch) {
                        self.new_epoch_wanted = true;
                    }
                    self.stale_epoch_seen = Some(lead.epoch);
                    self.schedule_retry(key, now_ms + EXHAUSTED_RETRY_MS);
                    return;
                }
                Err(TableError::Contended) => {
                    self.schedule_retry(key, now_ms + CONTENDED_RETRY_MS);
                    return;
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::table::{KeyHasher, TokenOutcome};
    use palisade_proto::Role;

    const LEAD: LeadershipView = LeadershipView::leading_forever(2, 1);

    fn origin(conn: u64) -> Origin {
        Origin {
            core: 0,
            conn,
            request_id: conn * 10,
            group: 0,
            queued: true,
        }
    }

    fn wait(key: LeaseKey, conn: u64, now: u64, deadline: u64) -> WaitRequest {
        WaitRequest {
            key,
            name: None,
            grant: Grant {
                holder: conn,
                ttl_ms: 1000,
                lock_delay_ms: 0,
            },
            deadline_ms: deadline,
            enqueued_ms: now,
            origin: origin(conn),
        }
    }

    fn setup() -> (LeaseTable, LeaseKey, u64) {
        let table = LeaseTable::new(16, KeyHasher::new([4; 16]));
        let key = table.hasher().key(0, b"disk0");
        let token = match table.acquire(
            key,
            Grant {
                holder: 99,
                ttl_ms: 500,
                lock_delay_ms: 0,
            },
            0,
            2,
            AcquireMode::Fair,
        ) {
            Ok(Acquired::Granted { token, .. }) => token,
            other => panic!("{other:?}"),
        };
        (table, key, token)
    }

    fn granted_conn(event: Option<WaitEvent>) -> (u64, u64) {
        match event {
            Some(WaitEvent::Granted { origin, token, .. }) => (origin.conn, token),
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn release_grants_waiters_in_fifo_order() {
        let (table, key, token) = setup();
        let mut q = WaitQueues::new(10);
        for conn in 1..=3 {
            q.handle_enqueue(&table, LEAD, wait(key, conn, 10, 10_000), 10);
        }
        assert_eq!(q.poll_event(), None);
        assert_eq!(q.len(), 3);
        // A fresh acquire may not jump the queue, even when the lease is free.
        assert_eq!(
            table.release(key, token, 20),
            TokenOutcome::Released { wake_waiters: true }
        );
        assert!(matches!(
            table.acquire(
                key,
                Grant {
                    holder: 50,
                    ttl_ms: 10,
                    lock_delay_ms: 0
                },
                21,
                2,
                AcquireMode::Fair
            ),
            Ok(Acquired::Busy { waiters: true, .. })
        ));
        q.handle_wake(&table, LEAD, key, 22);
        let (conn, first) = granted_conn(q.poll_event());
        assert_eq!(conn, 1);
        assert!(first > token);
        assert_eq!(q.poll_event(), None);
        assert!(matches!(
            table.release(key, first, 30),
            TokenOutcome::Released { wake_waiters: true }
        ));
        q.handle_wake(&table, LEAD, key, 31);
        let (conn, second) = granted_conn(q.poll_event());
        assert_eq!(conn, 2);
        assert!(second > first);
        assert!(matches!(
            table.release(key, second, 40),
            TokenOutcome::Released { .. }
        ));
        q.handle_wake(&table, LEAD, key, 41);
        let (conn, third) = granted_conn(q.poll_event());
        assert_eq!(conn, 3);
        assert!(q.is_empty());
        // The queue drained: the flag is gone and fair acquires work again.
        assert!(matches!(
            table.release(key, third, 50),
            TokenOutcome::Released {
                wake_waiters: false
            }
        ));
    }

    #[test]
    fn expiry_grants_the_head_via_the_retry_timer() {
        let (table, key, _token) = setup();
        let mut q = WaitQueues::new(10);
        q.handle_enqueue(&table, LEAD, wait(key, 1, 10, 10_000), 10);
        // Granted at 0 for 500 ms: it ends at 501 (EXPIRY_MARGIN_MS).
        assert_eq!(q.poll_timeout(), Some(501), "retry when the lease expires");
        q.handle_timeout(&table, LEAD, 500);
        assert_eq!(q.poll_event(), None);
        assert_eq!(q.take_expirations(), 0);
        q.handle_timeout(&table, LEAD, 501);
        let (conn, _) = granted_conn(q.poll_event());
        assert_eq!(conn, 1);
        assert_eq!(q.take_expirations(), 1, "the holder's lease ran out");
        assert_eq!(q.take_expirations(), 0, "taken");
    }

    #[test]
    fn deadline_answers_busy_and_next_in_line_moves_up() {
        let (table, key, token) = setup();
        let mut q = WaitQueues::new(10);
        q.handle_enqueue(&table, LEAD, wait(key, 1, 10, 100), 10);
        q.handle_enqueue(&table, LEAD, wait(key, 2, 20, 10_000), 20);
        assert_eq!(q.poll_timeout(), Some(100));
        q.handle_timeout(&table, LEAD, 100);
        match q.poll_event() {
            Some(WaitEvent::TimedOut {
                origin,
                token: holder,
                remaining_ms,
                waited_ms,
            }) => {
                assert_eq!(origin.conn, 1);
                assert_eq!(holder, token);
                assert_eq!(remaining_ms, 401);
                assert_eq!(waited_ms, 90);
            }
            other => panic!("{other:?}"),
        }
        table.release(key, token, 150);
        q.handle_wake(&table, LEAD, key, 150);
        let (conn, _) = granted_conn(q.poll_event());
        assert_eq!(conn, 2);
    }

    #[test]
    fn cancelled_connections_leave_the_queue() {
        let (table, key, token) = setup();
        let mut q = WaitQueues::new(10);
        q.handle_enqueue(&table, LEAD, wait(key, 1, 10, 10_000), 10);
        q.handle_enqueue(&table, LEAD, wait(key, 2, 10, 10_000), 10);
        q.handle_cancel(&table, LEAD, 0, 1, 20);
        assert_eq!(q.len(), 1);
        table.release(key, token, 30);
        q.handle_wake(&table, LEAD, key, 30);
        let (conn, _) = granted_conn(q.poll_event());
        assert_eq!(conn, 2);
        assert!(q.is_empty());
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn limit_and_grace_and_lost_leadership() {
        let (table, key, token) = setup();
        let mut q = WaitQueues::new(1);
        q.handle_enqueue(&table, LEAD, wait(key, 1, 10, 10_000), 10);
        q.handle_enqueue(&table, LEAD, wait(key, 2, 10, 10_000), 10);
        assert!(matches!(
            q.poll_event(),
            Some(WaitEvent::Failed { code: ErrorCode::TooManyWaiters, origin, .. }) if origin.conn == 2
        ));
        table.release(key, token, 20);
        let grace = LeadershipView {
            grants_from_ms: 1_000,
            ..LEAD
        };
        q.handle_wake(&table, grace, key, 20);
        assert_eq!(q.poll_event(), None, "no grant inside the grace period");
        assert_eq!(q.poll_timeout(), Some(1_000));
        let follower = LeadershipView {
            role: Role::Follower,
            ..LEAD
        };
        q.handle_timeout(&table, follower, 1_000);
        assert!(matches!(
            q.poll_event(),
            Some(WaitEvent::Failed {
                code: ErrorCode::NotLeader,
                ..
            })
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn home_core_is_stable_and_in_range() {
        let hasher = KeyHasher::new([1; 16]);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            let key = hasher.key(0, format!("r{i}").as_bytes());
            let core = home_core(key, 4);
            assert_eq!(core, home_core(key, 4));
            seen[core] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "spread: {seen:?}");
        assert_eq!(home_core(hasher.key(0, b"x"), 1), 0);
    }
}

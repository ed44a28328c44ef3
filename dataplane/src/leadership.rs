//! `Leadership`: the one word the control plane publishes and the data plane
//! reads once per request.
//!
//! ```text
//! epoch (32) | leader node id (16) | grants_from_ms (40) | grants_until_ms (40)
//! ```
//!
//! - `epoch`: the raft term this node leads in; high 32 bits of every token.
//! - `grants_from_ms`: end of the grace period after the node became leader
//!   (or restarted): no grant before it.
//! - `grants_until_ms`: how long a quorum has confirmed this node's
//!   leadership; the control plane pushes it forward on every confirmed
//!   heartbeat round. If the control plane stalls (an fsync that hangs, a
//!   paused process) it stops moving, and the data plane stops granting,
//!   renewing and answering checks when it passes — within one election
//!   timeout, before anyone else can have been elected.
//!
//! Times are monotonic milliseconds (40 bits: 34 years).

use std::sync::atomic::AtomicBool;

use crate::sync::{AtomicU128, Ordering};
use palisade_proto::Role;

/// Largest time the word can hold; means "no limit".
pub const TIME_MAX_MS: u64 = (1 << 40) - 1;

/// What the data plane needs to know to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipView {
    /// Epoch of the current leadership (high 32 bits of every token).
    pub epoch: u32,
    /// This node's role: leader if `leader_id` is this node.
    pub role: Role,
    /// Leader's node id as known here (0 = unknown).
    pub leader_id: u16,
    /// Monotonic ms from which grants are allowed (end of the grace period).
    pub grants_from_ms: u64,
    /// Monotonic ms until which a quorum has confirmed the leadership.
    pub grants_until_ms: u64,
}

/// Why a node may not serve a lease request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotGranting {
    /// Not the leader; `leader_id` says who is, if known.
    NotLeader {
        /// Leader's node id, 0 if unknown.
        leader_id: u16,
    },
    /// Leader, but inside the grace period until `until_ms`.
    Grace {
        /// Monotonic ms when grants resume.
        until_ms: u64,
    },
    /// Leader, but no quorum has confirmed it recently: it may have been
    /// deposed without knowing.
    Unconfirmed,
}

impl LeadershipView {
    /// `leader_id` leads `epoch`, with no grace period and a quorum
    /// confirmation that never runs out: what a harness without a control
    /// plane (tests, fuzzing, benches) publishes so every request is served.
    #[must_use]
    pub const fn leading_forever(epoch: u32, leader_id: u16) -> LeadershipView {
        LeadershipView {
            epoch,
            role: Role::Leader,
            leader_id,
            grants_from_ms: 0,
            grants_until_ms: TIME_MAX_MS,
        }
    }

    /// Whether a grant at `now_ms` is allowed (S2: confirmed leader, grace
    /// over).
    pub fn check_grant(&self, now_ms: u64) -> Result<(), NotGranting> {
        self.check_serve(now_ms)?;
        if now_ms < self.grants_from_ms {
            return Err(NotGranting::Grace {
                until_ms: self.grants_from_ms,
            });
        }
        Ok(())
    }

    /// Whether renew, release and check may be answered at `now_ms`: only
    /// a leader whose leadership a quorum confirmed recently vouches for
    /// its table (grace or not).
    pub fn check_serve(&self, now_ms: u64) -> Result<(), NotGranting> {
        if self.role != Role::Leader || self.epoch == 0 {
            return Err(NotGranting::NotLeader {
                leader_id: self.leader_id,
            });
        }
        if now_ms >= self.grants_until_ms {
            return Err(NotGranting::Unconfirmed);
        }
        Ok(())
    }

    fn pack(self) -> u128 {
        assert!(self.grants_from_ms <= TIME_MAX_MS);
        assert!(self.grants_until_ms <= TIME_MAX_MS);
        (u128::from(self.epoch) << 96)
            | (u128::from(self.leader_id) << 80)
            | (u128::from(self.grants_from_ms) << 40)
            | u128::from(self.grants_until_ms)
    }

    fn unpack(word: u128, self_id: u16) -> LeadershipView {
        let leader_id = (word >> 80) as u16;
        let role = if leader_id == 0 {
            Role::Candidate
        } else if leader_id == self_id {
            Role::Leader
        } else {
            Role::Follower
        };
        LeadershipView {
            epoch: (word >> 96) as u32,
            role,
            leader_id,
            grants_from_ms: ((word >> 40) as u64) & TIME_MAX_MS,
            grants_until_ms: (word as u64) & TIME_MAX_MS,
        }
    }
}

/// The published leadership word plus a request flag going the other way.
#[derive(Debug)]
pub struct Leadership {
    self_id: u16,
    word: AtomicU128,
    new_epoch_wanted: AtomicBool,
}

impl Leadership {
    /// Node `self_id`, knowing no leader and no epoch: nothing is granted
    /// until the control plane publishes.
    #[must_use]
    pub fn new(self_id: u16) -> Leadership {
        assert!(self_id != 0, "node ids start at 1");
        Leadership {
            self_id,
            word: AtomicU128::new(0),
            new_epoch_wanted: AtomicBool::new(false),
        }
    }

    /// This node's id.
    #[must_use]
    pub fn self_id(&self) -> u16 {
        self.self_id
    }

    /// One atomic read; call once per request.
    #[must_use]
    pub fn load(&self) -> LeadershipView {
        LeadershipView::unpack(self.word.load(Ordering::SeqCst), self.self_id)
    }

    /// Control plane only. Epochs never go backwards (S1). `view.role` is
    /// not stored: it follows from `leader_id`.
    pub fn publish(&self, view: LeadershipView) {
        let current = self.load();
        assert!(view.epoch >= current.epoch, "S1: the epoch never goes back");
        self.word.store(view.pack(), Ordering::SeqCst);
    }

    /// Data plane: a resource used up its epoch's sequence numbers; ask the
    /// control plane for a new epoch.
    pub fn request_new_epoch(&self) {
        self.new_epoch_wanted.store(true, Ordering::SeqCst);
    }

    /// Control plane: takes the pending request, if any.
    pub fn take_new_epoch_request(&self) -> bool {
        self.new_epoch_wanted.swap(false, Ordering::SeqCst)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn leader(epoch: u32, from: u64, until: u64) -> LeadershipView {
        LeadershipView {
            epoch,
            role: Role::Leader,
            leader_id: 3,
            grants_from_ms: from,
            grants_until_ms: until,
        }
    }

    #[test]
    fn round_trips_and_gates_grants() {
        let leadership = Leadership::new(3);
        assert!(leadership.load().check_grant(0).is_err());
        let view = leader(7, 5_000, 9_000);
        leadership.publish(view);
        assert_eq!(leadership.load(), view);
        assert_eq!(
            leadership.load().check_grant(4_999),
            Err(NotGranting::Grace { until_ms: 5_000 })
        );
        assert_eq!(leadership.load().check_serve(4_999), Ok(()));
        assert_eq!(leadership.load().check_grant(5_000), Ok(()));
        assert_eq!(leadership.load().check_grant(8_999), Ok(()));
        // The quorum confirmation ran out: no grants, renewals or checks.
        assert_eq!(
            leadership.load().check_grant(9_000),
            Err(NotGranting::Unconfirmed)
        );
        assert_eq!(
            leadership.load().check_serve(9_000),
            Err(NotGranting::Unconfirmed)
        );
    }

    #[test]
    fn role_follows_the_leader_id() {
        let leadership = Leadership::new(3);
        leadership.publish(LeadershipView {
            leader_id: 2,
            ..leader(8, 0, TIME_MAX_MS)
        });
        let view = leadership.load();
        assert_eq!(view.role, Role::Follower);
        assert_eq!(
            view.check_grant(10_000),
            Err(NotGranting::NotLeader { leader_id: 2 })
        );
        leadership.publish(LeadershipView {
            leader_id: 0,
            ..leader(9, 0, 0)
        });
        assert_eq!(leadership.load().role, Role::Candidate);
    }

    #[test]
    #[should_panic(expected = "S1")]
    fn epoch_cannot_go_back() {
        let leadership = Leadership::new(3);
        leadership.publish(leader(7, 0, 0));
        leadership.publish(leader(6, 0, 0));
    }

    #[test]
    fn new_epoch_requests_are_taken_once() {
        let leadership = Leadership::new(1);
        assert!(!leadership.take_new_epoch_request());
        leadership.request_new_epoch();
        assert!(leadership.take_new_epoch_request());
        assert!(!leadership.take_new_epoch_request());
    }
}

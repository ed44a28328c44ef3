//! `Leadership`: the one word the control plane publishes and the data plane
//! reads once per request.

use std::sync::atomic::AtomicBool;

use crate::sync::{AtomicU128, Ordering};
use palisade_proto::Role;

/// What the data plane needs to know to grant: the epoch tokens are minted
/// in, whether this node leads, and from when it may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipView {
    /// Epoch of this node's leadership (high 32 bits of every token).
    pub epoch: u32,
    /// Role of this node.
    pub role: Role,
    /// Leader's node id as known here (0 = unknown).
    pub leader_id: u16,
    /// Monotonic ms from which grants are allowed (end of the grace period).
    pub grants_from_ms: u64,
}

/// Why a node may not grant right now.
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
}

impl LeadershipView {
    /// Whether a grant at `now_ms` is allowed (S2: leader, grace over).
    pub fn check_grant(&self, now_ms: u64) -> Result<(), NotGranting> {
        if self.role != Role::Leader || self.epoch == 0 {
            return Err(NotGranting::NotLeader {
                leader_id: self.leader_id,
            });
        }
        if now_ms < self.grants_from_ms {
            return Err(NotGranting::Grace {
                until_ms: self.grants_from_ms,
            });
        }
        Ok(())
    }

    fn pack(self) -> u128 {
        let role = match self.role {
            Role::Leader => 1u128,
            Role::Follower => 2,
            Role::Candidate => 3,
        };
        (u128::from(self.epoch) << 96)
            | (u128::from(self.leader_id) << 80)
            | (role << 64)
            | u128::from(self.grants_from_ms)
    }

    fn unpack(word: u128) -> LeadershipView {
        let role = match (word >> 64) as u8 {
            1 => Role::Leader,
            2 => Role::Follower,
            _ => Role::Candidate,
        };
        LeadershipView {
            epoch: (word >> 96) as u32,
            role,
            leader_id: (word >> 80) as u16,
            grants_from_ms: word as u64,
        }
    }
}

/// The published leadership word plus a request flag going the other way.
#[derive(Debug)]
pub struct Leadership {
    word: AtomicU128,
    new_epoch_wanted: AtomicBool,
}

impl Leadership {
    /// Starts as a candidate with epoch 0: nothing is granted until the
    /// control plane publishes.
    #[must_use]
    pub fn new() -> Leadership {
        Leadership {
            word: AtomicU128::new(
                LeadershipView {
                    epoch: 0,
                    role: Role::Candidate,
                    leader_id: 0,
                    grants_from_ms: u64::MAX,
                }
                .pack(),
            ),
            new_epoch_wanted: AtomicBool::new(false),
        }
    }

    /// One atomic read; call once per request.
    #[must_use]
    pub fn load(&self) -> LeadershipView {
        LeadershipView::unpack(self.word.load(Ordering::SeqCst))
    }

    /// Control plane only. Epochs never go backwards (S1).
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

impl Default for Leadership {
    fn default() -> Self {
        Leadership::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_gates_grants() {
        let leadership = Leadership::new();
        assert!(leadership.load().check_grant(0).is_err());
        let view = LeadershipView {
            epoch: 7,
            role: Role::Leader,
            leader_id: 3,
            grants_from_ms: 5_000,
        };
        leadership.publish(view);
        assert_eq!(leadership.load(), view);
        assert_eq!(
            leadership.load().check_grant(4_999),
            Err(NotGranting::Grace { until_ms: 5_000 })
        );
        assert_eq!(leadership.load().check_grant(5_000), Ok(()));
        let follower = LeadershipView {
            role: Role::Follower,
            leader_id: 2,
            epoch: 8,
            ..view
        };
        leadership.publish(follower);
        assert_eq!(
            leadership.load().check_grant(10_000),
            Err(NotGranting::NotLeader { leader_id: 2 })
        );
    }

    #[test]
    #[should_panic(expected = "S1")]
    fn epoch_cannot_go_back() {
        let leadership = Leadership::new();
        let view = LeadershipView {
            epoch: 7,
            role: Role::Leader,
            leader_id: 1,
            grants_from_ms: 0,
        };
        leadership.publish(view);
        leadership.publish(LeadershipView { epoch: 6, ..view });
    }

    #[test]
    fn new_epoch_requests_are_taken_once() {
        let leadership = Leadership::new();
        assert!(!leadership.take_new_epoch_request());
        leadership.request_new_epoch();
        assert!(leadership.take_new_epoch_request());
        assert!(!leadership.take_new_epoch_request());
    }
}

//! Write admission for one export (sans-IO).
//!
//! Every write-like command (WRITE, TRIM, WRITE_ZEROES) asks the gate
//! before it touches the backend and tells it when it is done. The gate
//! enforces S3 and its ordering rule:
//!
//! - a write under a token below the fence is refused (`Fenced`), and
//!   nothing reaches the backend;
//! - a write under a token above every token in flight goes ahead;
//! - a write under a token while writes under *older* tokens are still in
//!   flight waits (`Drain`) until they finished: older-token writes that
//!   passed the fence before it rose reach the backend before the first
//!   newer-token write does.
//!
//! The gate holds the fence in memory only. The caller raises it after the
//! fence store made the new value durable, never before. The proxy asks it
//! through [`crate::admission::Admission`], which composes it with the
//! durable fence and the lease service's confirmation.

use std::collections::BTreeMap;

/// What a write may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead; call [`Gate::done`] with the same token afterwards.
    Go,
    /// The token is below the fence: refuse with EPERM.
    Fenced {
        /// The fence that refused it.
        fence: u64,
    },
    /// Older-token writes are still in flight: ask again when one finishes.
    Drain,
    /// The token is above the fence: make it durable, raise, ask again.
    Unraised,
}

/// One export's gate.
#[derive(Debug, Default)]
pub struct Gate {
    fence: u64,
    /// Writes in flight per token.
    inflight: BTreeMap<u64, u32>,
}

impl Gate {
    /// A gate at `fence`.
    #[must_use]
    pub fn new(fence: u64) -> Gate {
        Gate {
            fence,
            inflight: BTreeMap::new(),
        }
    }

    /// The fence.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Raises the fence to `token` (never lowers it). Call only once the
    /// value is durable.
    pub fn raise(&mut self, token: u64) {
        self.fence = self.fence.max(token);
    }

    /// Asks to write under `token`.
    pub fn admit(&mut self, token: u64) -> Admit {
        if token < self.fence {
            return Admit::Fenced { fence: self.fence };
        }
        if token > self.fence {
            return Admit::Unraised;
        }
        if self.inflight.range(..token).next().is_some() {
            return Admit::Drain;
        }
        *self.inflight.entry(token).or_insert(0) += 1;
        Admit::Go
    }

    /// A write admitted under `token` finished (successfully or not).
    /// Returns whether one was in flight under `token`.
    pub fn done(&mut self, token: u64) -> bool {
        let Some(count) = self.inflight.get_mut(&token) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.inflight.remove(&token);
        }
        true
    }

    /// Writes in flight, all tokens.
    #[must_use]
    pub fn inflight(&self) -> u32 {
        self.inflight.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stale_tokens_are_fenced_and_newer_ones_wait_for_older_writes() {
        let mut gate = Gate::new(5);
        assert_eq!(gate.admit(4), Admit::Fenced { fence: 5 });
        assert_eq!(gate.admit(6), Admit::Unraised);
        assert_eq!(gate.admit(5), Admit::Go);
        assert_eq!(gate.admit(5), Admit::Go);
        // B's token 7 raised the fence while two of A's writes are in
        // flight: A's next write is refused, B waits for A's two.
        gate.raise(7);
        assert_eq!(gate.admit(5), Admit::Fenced { fence: 7 });
        assert_eq!(gate.admit(7), Admit::Drain);
        gate.done(5);
        assert_eq!(gate.admit(7), Admit::Drain);
        gate.done(5);
        assert_eq!(gate.admit(7), Admit::Go);
        assert_eq!(gate.inflight(), 1);
        gate.raise(6);
        assert_eq!(gate.fence(), 7, "a fence never goes down");
    }

    proptest! {
        /// Whatever the interleaving: no write under a token below the
        /// fence at admission is admitted, and a newer-token write is
        /// never admitted while an older-token write is in flight.
        #[test]
        fn admission_is_ordered(ops in proptest::collection::vec((0u8..3, 1u64..6), 1..200)) {
            let mut gate = Gate::new(1);
            let mut running: Vec<u64> = Vec::new();
            for (op, token) in ops {
                match op {
                    0 => {
                        let fence = gate.fence();
                        match gate.admit(token) {
                            Admit::Go => {
                                prop_assert!(token >= fence);
                                prop_assert!(running.iter().all(|&t| t >= token));
                                running.push(token);
                            }
                            Admit::Fenced { .. } => prop_assert!(token < fence),
                            Admit::Drain => prop_assert!(running.iter().any(|&t| t < token)),
                            Admit::Unraised => prop_assert!(token > fence),
                        }
                    }
                    1 => gate.raise(token),
                    _ => {
                        if let Some(t) = running.pop() {
                            prop_assert!(gate.done(t));
                        }
                    }
                }
                prop_assert_eq!(gate.inflight() as usize, running.len());
            }
        }
    }
}

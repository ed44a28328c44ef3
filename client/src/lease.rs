//! Lease values handed to applications.

use crate::clock::boottime_ms;

/// A granted lease as the client sees it.
///
/// `valid_until_ms` is on the client's boot-time clock and is deliberately
/// earlier than the server's expiry: `send_time + ttl × (1 − max_drift)`.
/// The request left no earlier than `send_time`, so the server's interval
/// started later; shaving `max_drift` covers clocks that run at different
/// rates. Stop using the resource once [`Lease::is_valid`] turns false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Resource name.
    pub resource: String,
    /// Fencing token: pass it to every write at the resource.
    pub token: u64,
    /// Granted duration.
    pub ttl_ms: u32,
    /// Holder id the lease was acquired with.
    pub holder: u64,
    /// Boot-time ms after which the lease must be treated as lost.
    pub valid_until_ms: u64,
    /// How long the acquire waited in the server's queue.
    pub waited_ms: u32,
}

impl Lease {
    /// Whether the lease is still safe to use at boot-time `now_ms`.
    #[must_use]
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        now_ms < self.valid_until_ms
    }

    /// Whether the lease is still safe to use now.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.is_valid_at(boottime_ms())
    }

    /// Milliseconds of safe use left (0 once lost).
    #[must_use]
    pub fn remaining_ms(&self) -> u64 {
        self.valid_until_ms.saturating_sub(boottime_ms())
    }

    /// Epoch part of the token.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        palisade_proto::token_epoch(self.token)
    }
}

/// `send_ms + ttl × (1 − drift)`, rounded down.
#[must_use]
pub fn valid_until(send_ms: u64, ttl_ms: u32, max_drift_ppm: u32) -> u64 {
    let ppm = u64::from(max_drift_ppm.min(1_000_000));
    send_ms + u64::from(ttl_ms) * (1_000_000 - ppm) / 1_000_000
}

/// Result of an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Granted.
    Granted(Lease),
    /// Someone else holds it (or it is in lock delay, or waiters come first).
    Busy {
        /// Current holder's token, 0 if none.
        token: u64,
        /// Time until it may become grantable.
        remaining_ms: u32,
        /// Waiters are queued.
        waiters: bool,
        /// Time the request waited before giving up.
        waited_ms: u32,
    },
}

/// Result of renew, release and check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    /// Renewed: the lease with its new validity.
    Renewed(Lease),
    /// Released.
    Released,
    /// The token is the current lease.
    Current {
        /// Server-side time left.
        remaining_ms: u32,
    },
    /// The token is not (or no longer) the current lease.
    Stale {
        /// Current holder's token, 0 if none.
        current_token: u64,
        /// Highest token the server knows for the resource (0 if none).
        last_token: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_shortened_by_drift() {
        assert_eq!(valid_until(1_000, 10_000, 0), 11_000);
        assert_eq!(valid_until(1_000, 10_000, 10_000), 10_900);
        assert_eq!(valid_until(0, 1, 10_000), 0);
    }
}

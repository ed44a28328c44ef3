//! Lease values handed to applications.

use palisade_host::clock::boottime_ms;

/// A granted lease as the client sees it.
///
/// `valid_until_ms` is on the client's boot-time clock and is deliberately
/// earlier than the server's expiry: `send_time + ttl × (1 − max_drift) −
/// 1 ms`. The request left no earlier than `send_time`, so the server's
/// interval started later; shaving `max_drift` covers clocks that run at
/// different rates; the last millisecond covers the server's clock, which
/// counts in whole milliseconds (it starts a lease at the millisecond the
/// request arrived in, up to 1 ms before it arrived). Stop using the
/// resource once [`Lease::is_valid`] turns false.
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

/// The server's clock granularity: its lease table counts whole
/// milliseconds and starts a lease at the (floored) millisecond the request
/// arrived in, so its expiry can come up to this much before arrival + ttl.
pub const SERVER_CLOCK_GRANULARITY_MS: u64 = 1;

/// `send_ms + ttl × (1 − drift) − 1 ms` (`SERVER_CLOCK_GRANULARITY_MS`),
/// rounded down; never before `send_ms`.
#[must_use]
pub fn valid_until(send_ms: u64, ttl_ms: u32, max_drift_ppm: u32) -> u64 {
    shortened_end(send_ms, u64::from(ttl_ms), max_drift_ppm)
}

/// A `Granted` answer's validity: [`valid_until`] with the time the acquire
/// waited in the server's queue counted in, less one millisecond for the
/// server's whole-millisecond clock (`waited_ms` is the difference of two
/// rounded-down readings, so the wait lasted more than `waited_ms − 1`):
/// `send_ms + (ttl + waited − 1) × (1 − drift) − 1 ms`. The lease began no
/// earlier than the grant, which came that long after the request arrived,
/// which was after `send_ms`. Without the wait counted in, an acquire that
/// waited longer than its ttl would be invalid on arrival.
#[must_use]
pub fn granted_valid_until(send_ms: u64, ttl_ms: u32, waited_ms: u32, max_drift_ppm: u32) -> u64 {
    let waited = u64::from(waited_ms).saturating_sub(SERVER_CLOCK_GRANULARITY_MS);
    shortened_end(send_ms, u64::from(ttl_ms) + waited, max_drift_ppm)
}

fn shortened_end(send_ms: u64, span_ms: u64, max_drift_ppm: u32) -> u64 {
    let ppm = u64::from(max_drift_ppm.min(1_000_000));
    let shortened = span_ms * (1_000_000 - ppm) / 1_000_000;
    send_ms + shortened.saturating_sub(SERVER_CLOCK_GRANULARITY_MS)
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
    fn validity_is_shortened_by_drift_and_the_servers_millisecond() {
        assert_eq!(valid_until(1_000, 10_000, 0), 10_999);
        assert_eq!(valid_until(1_000, 10_000, 10_000), 10_899);
        assert_eq!(valid_until(0, 1, 10_000), 0);
        assert_eq!(valid_until(5, 1, 0), 5);
    }

    #[test]
    fn a_waited_grant_counts_its_wait_less_a_millisecond() {
        // No wait: the same as a renewal's.
        assert_eq!(granted_valid_until(1_000, 10_000, 0, 10_000), 10_899);
        assert_eq!(granted_valid_until(1_000, 10_000, 1, 10_000), 10_899);
        // Waited 20 s for a 3 s lease: valid 3 s after the grant, not
        // already over: 1 000 + (3 000 + 19 999) × 0.99 − 1.
        assert_eq!(granted_valid_until(1_000, 3_000, 20_000, 10_000), 23_768);
        assert!(granted_valid_until(1_000, 3_000, 20_000, 0) > 1_000 + 20_000);
        // Never before the server's expiry: it starts at the grant (more
        // than waited − 1 after send) and lasts the ttl.
        for (ttl, waited, ppm) in [(1, 1, 0), (10, 2, 0), (1_000, 5_000, 999_999)] {
            let server_end = 1_000 + u64::from(waited) - 1 + u64::from(ttl);
            assert!(granted_valid_until(1_000, ttl, waited, ppm) <= server_end);
        }
    }

    /// The case the cluster test `clocks_drifting_within_the_bound_keep_
    /// leases_apart` once hit (a 1 ms overlap): a leader whose clock runs
    /// 0.9 % fast, a 300 ms lease, and a request that arrives late in the
    /// server's millisecond while the client's clock had just ticked. The
    /// two clocks' millisecond boundaries are out of phase by any amount;
    /// in real time the server may regrant at `floor_server(arrival) + 300
    /// ms / 1.009`, and the client must have stopped by then even if the
    /// request arrived the instant it was sent.
    #[test]
    fn a_fast_server_clock_and_its_millisecond_cannot_overlap_the_client() {
        let ttl_ms = 300u32;
        let check = |valid: &dyn Fn(u64, u32, u32) -> u64| {
            for phase_us in (0..1000u64).step_by(10) {
                for send_us in (1000..3000u64).step_by(10) {
                    let arrival_us = send_us; // the earliest possible arrival
                    let server_floor_us = (arrival_us + phase_us) / 1000 * 1000 - phase_us;
                    let regrant_us = server_floor_us as f64 + f64::from(ttl_ms) * 1000.0 / 1.009;
                    let client_end_us = valid(send_us / 1000, ttl_ms, 10_000) as f64 * 1000.0;
                    if client_end_us > regrant_us {
                        return false;
                    }
                }
            }
            true
        };
        assert!(check(&valid_until));
        // Without the server's millisecond the overlap is there.
        let without = |send_ms: u64, ttl_ms: u32, ppm: u32| {
            send_ms + u64::from(ttl_ms) * u64::from(1_000_000 - ppm) / 1_000_000
        };
        assert!(!check(&without));
    }
}

//! The server's one clock: `CLOCK_MONOTONIC`, read through here so that
//! everything below the I/O shell takes time as an argument.
//!
//! Monotonic time stops while the machine is suspended. That is the safe
//! direction for a lease server: a suspended server's leases look longer,
//! never shorter, and its grace period lasts longer in real time.

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds on the monotonic clock.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).expect("monotonic clock is non-negative");
    let nanos = u64::try_from(ts.tv_nsec).expect("tv_nsec is within 0..1e9");
    secs * 1_000_000_000 + nanos
}

/// Milliseconds on the monotonic clock, the lease table's time base.
#[must_use]
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Milliseconds since the Unix epoch (for display only, never for leases).
#[must_use]
pub fn unix_ms() -> u64 {
    let ts = clock_gettime(ClockId::Realtime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(monotonic_ms() >= a / 1_000_000);
        assert!(unix_ms() > 1_600_000_000_000);
    }
}

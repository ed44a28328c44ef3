//! The client's clock: `CLOCK_BOOTTIME`, which keeps counting while the
//! machine is suspended. A lease's validity must be judged by time that
//! really passed: a laptop that slept through its lease must not wake up
//! believing it still holds it.

use rustix::time::{clock_gettime, ClockId};

/// Milliseconds on the boot-time clock.
#[must_use]
pub fn boottime_ms() -> u64 {
    let ts = clock_gettime(ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).expect("boot-time clock is non-negative");
    let nanos = u64::try_from(ts.tv_nsec).expect("tv_nsec is within 0..1e9");
    secs * 1000 + nanos / 1_000_000
}

/// Milliseconds since the Unix epoch, for display.
#[must_use]
pub fn unix_ms() -> u64 {
    let ts = clock_gettime(ClockId::Realtime);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

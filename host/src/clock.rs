//! The process's one clock: `CLOCK_MONOTONIC`, read through here so that
//! everything below the I/O shell takes time as an argument.
//!
//! `clippy.toml` disallows `Instant`, `Instant::now`, `SystemTime::now` and
//! `clock_gettime` everywhere else; this module alone allows them.
//!
//! Monotonic time stops while the machine is suspended. That is the safe
//! direction for a lease server: a suspended server's leases look longer,
//! never shorter, and its grace period lasts longer in real time.

use std::sync::atomic::{AtomicU64, Ordering};

use rustix::time::{clock_gettime, ClockId};

/// Clock rate in parts per million (1_000_000 = true rate). Only tests
/// change it, to run a node whose clock drifts.
static RATE_PPM: AtomicU64 = AtomicU64::new(1_000_000);
/// Raw reading at which a changed rate took effect, and the clock's
/// reading then (so that the clock stays continuous).
static RATE_BASE_NS: AtomicU64 = AtomicU64::new(0);
static RATE_OFFSET_NS: AtomicU64 = AtomicU64::new(0);

#[allow(clippy::disallowed_methods)] // the one reading of the monotonic clock
fn raw_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).expect("monotonic clock is non-negative");
    let nanos = u64::try_from(ts.tv_nsec).expect("tv_nsec is within 0..1e9");
    secs * 1_000_000_000 + nanos
}

/// Test hook: makes this process's clock run at `ppm` parts per million
/// of real time from now on (a node with clock rate drift). Call once, at
/// start, before any other thread reads the clock.
pub fn set_rate_ppm(ppm: u64) {
    assert!(ppm > 0, "a clock must advance");
    let now = monotonic_ns();
    RATE_BASE_NS.store(raw_ns(), Ordering::SeqCst);
    RATE_OFFSET_NS.store(now, Ordering::SeqCst);
    RATE_PPM.store(ppm, Ordering::SeqCst);
}

/// Nanoseconds on the monotonic clock.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let raw = raw_ns();
    let rate = RATE_PPM.load(Ordering::Relaxed);
    if rate == 1_000_000 {
        return raw;
    }
    let base = RATE_BASE_NS.load(Ordering::Relaxed);
    let offset = RATE_OFFSET_NS.load(Ordering::Relaxed);
    let elapsed = u128::from(raw.saturating_sub(base)) * u128::from(rate) / 1_000_000;
    offset + u64::try_from(elapsed).unwrap_or(u64::MAX)
}

/// Milliseconds on the monotonic clock, the lease table's time base.
#[must_use]
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Milliseconds on the boot-time clock (`CLOCK_BOOTTIME`), which keeps
/// counting while the machine is suspended: the clock a lease *holder*
/// judges its lease by, so that a laptop that slept through its lease does
/// not wake up believing it still holds it. (The server's leases use
/// [`monotonic_ms`], which stops in suspend: the safe direction there.)
#[must_use]
#[allow(clippy::disallowed_methods)] // the one reading of the boot-time clock
pub fn boottime_ms() -> u64 {
    let ts = clock_gettime(ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).expect("boot-time clock is non-negative");
    let nanos = u64::try_from(ts.tv_nsec).expect("tv_nsec is within 0..1e9");
    secs * 1000 + nanos / 1_000_000
}

/// Microseconds since the Unix epoch (for display and for matching log
/// timestamps, never for leases).
#[must_use]
#[allow(clippy::disallowed_methods)] // the one reading of the real-time clock
pub fn unix_us() -> u64 {
    let ts = clock_gettime(ClockId::Realtime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// Milliseconds since the Unix epoch (for display only, never for leases).
#[must_use]
pub fn unix_ms() -> u64 {
    unix_us() / 1_000
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
        assert!(unix_us() / 1_000 >= unix_ms() - 1_000);
        let boot = boottime_ms();
        assert!(boottime_ms() >= boot);
    }
}

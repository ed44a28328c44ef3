//! The bench's clock: monotonic nanoseconds, the one place `palisade-bench`
//! reads the time (moved here unchanged from `load.rs`).

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds on the monotonic clock.
pub(crate) fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

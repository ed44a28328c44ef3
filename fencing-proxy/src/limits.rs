//! Process limits the proxy sets or checks at start, and the rate limit of
//! its repetitive log lines.
//!
//! - [`ensure_nofile`]: compares `RLIMIT_NOFILE` with what
//!   `proxy.connections_max` needs ([`nofile_needed`]) and raises the soft
//!   limit up to the hard one; the caller warns if that is still short.
//! - [`tune_allocator`]: fixes glibc malloc's mmap threshold and bounds its
//!   arenas, so memory that a flood of connections used goes back to the
//!   system when they close (see the function for the measurement).
//! - [`LogEvery`]: lets one line through per interval and counts what it
//!   held back, for events a client can cause at will (refused connections,
//!   failing accepts).
//!
//! What this module never does: refuse to start. A short limit is a
//! warning; the proxy serves what it can.
//!
//! ```
//! use palisade_fencing_proxy::limits::LogEvery;
//! let mut refusals = LogEvery::new(1_000);
//! assert_eq!(refusals.hit(5_000), Some(1)); // the first is logged
//! assert_eq!(refusals.hit(5_100), None); // held back, counted
//! assert_eq!(refusals.hit(5_200), None);
//! assert_eq!(refusals.hit(6_000), Some(3)); // one line for three events
//! ```

/// One log line per `interval_ms` at most, with the number of events it
/// stands for. Sans-IO: the caller passes the time.
#[derive(Debug, Clone)]
pub struct LogEvery {
    interval_ms: u64,
    last_ms: Option<u64>,
    held: u64,
}

impl LogEvery {
    /// A limiter that lets one line through every `interval_ms`.
    #[must_use]
    pub fn new(interval_ms: u64) -> LogEvery {
        assert!(interval_ms > 0, "an interval of 0 limits nothing");
        LogEvery {
            interval_ms,
            last_ms: None,
            held: 0,
        }
    }

    /// Call once per event at `now_ms`. `Some(count)`: log now, for
    /// `count` events (this one and those held back since the last line);
    /// `None`: stay quiet, the event is counted for the next line.
    pub fn hit(&mut self, now_ms: u64) -> Option<u64> {
        self.held += 1;
        let due = self
            .last_ms
            .is_none_or(|last| now_ms >= last.saturating_add(self.interval_ms));
        if !due {
            return None;
        }
        self.last_ms = Some(now_ms);
        let count = self.held;
        self.held = 0;
        assert!(count > 0);
        Some(count)
    }

    /// Call periodically (about once per interval): `Some(count)` when
    /// events were held back and the interval since the last line has
    /// passed, so the tail of a burst is reported too; log it then.
    pub fn flush(&mut self, now_ms: u64) -> Option<u64> {
        if self.held == 0 {
            return None;
        }
        let due = self
            .last_ms
            .is_none_or(|last| now_ms >= last.saturating_add(self.interval_ms));
        if !due {
            return None;
        }
        self.last_ms = Some(now_ms);
        let count = self.held;
        self.held = 0;
        Some(count)
    }

    /// Events held back since the last line.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held
    }
}

/// File descriptors the proxy may hold besides its connections: the
/// listeners, fence files, the event loop's epoll and eventfd,
/// lease-service clients, logs.
pub const NOFILE_SPARE: u64 = 64;

/// File descriptors `connections_max` connections need: each has its
/// socket and its own backend handle (a file or an upstream socket).
#[must_use]
pub fn nofile_needed(connections_max: usize) -> u64 {
    (connections_max as u64)
        .saturating_mul(2)
        .saturating_add(NOFILE_SPARE)
}

/// What [`ensure_nofile`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nofile {
    /// The soft limit was high enough already.
    Enough {
        /// The soft limit.
        soft: u64,
    },
    /// The soft limit was raised to `now` (from `was`).
    Raised {
        /// The soft limit before.
        was: u64,
        /// The soft limit now.
        now: u64,
    },
    /// The soft limit is below what is needed and could not be raised far
    /// enough: about `usable` connections fit.
    Short {
        /// The soft limit now (raised as far as the hard limit allows).
        soft: u64,
        /// Descriptors needed.
        needed: u64,
        /// Connections that fit.
        usable: u64,
        /// Why it could not be raised further.
        why: &'static str,
    },
}

/// Compares `RLIMIT_NOFILE` with [`nofile_needed`] for `connections_max`
/// and raises the soft limit (up to the hard limit) if it is lower, with
/// [`palisade_host::rlimit::raise_nofile`]. Call
/// once at start, before the first connection.
#[must_use]
pub fn ensure_nofile(connections_max: usize) -> Nofile {
    use palisade_host::rlimit::{raise_nofile, Raise};
    let needed = nofile_needed(connections_max);
    match raise_nofile(needed) {
        // None is RLIM_INFINITY.
        Raise::Enough { soft } => Nofile::Enough {
            soft: soft.unwrap_or(u64::MAX),
        },
        Raise::Raised { from, to } => Nofile::Raised { was: from, now: to },
        Raise::Short { soft, hard, .. } => Nofile::Short {
            soft,
            needed,
            usable: soft.saturating_sub(NOFILE_SPARE) / 2,
            why: if hard.is_some_and(|hard| hard < needed) {
                "the hard limit is lower"
            } else {
                "setrlimit failed"
            },
        },
    }
}

/// Largest allocation glibc malloc serves from its heaps; larger ones get
/// their own mapping, returned to the system by `free`. 128 KiB is glibc's
/// own starting value; setting it explicitly stops glibc from raising it.
pub const MMAP_THRESHOLD: i32 = 128 << 10;
/// malloc arenas at most (glibc's default is 8 per core).
pub const ARENAS_MAX: i32 = 2;

/// Sets glibc malloc's mmap threshold to [`MMAP_THRESHOLD`] and its arena
/// count to at most [`ARENAS_MAX`]. Call first thing in `main`, before any
/// thread starts. Returns false where that is not possible (another C
/// library) or glibc refused.
///
/// Why: every connection allocates a read buffer above the threshold.
/// glibc raises its mmap threshold to the size of the first such block
/// freed, so from then on those buffers come from the event-loop thread's
/// arena, get zeroed (touched) when reused, and stay resident after the
/// connections close, since a free block in the middle of an arena heap is
/// never returned. Measured (release build) with 3 waves of 1 000
/// connections, two stalled in the handshake, then read-only clients that
/// finished it and idled: VmRSS 5 MiB at start, 265 MiB after all of them
/// closed, in four full 64 MiB arena heaps. With a fixed threshold (and
/// a 4 KiB handshake buffer) every such buffer is its own mapping, goes
/// back at `free`, and VmRSS ends at 16 MiB.
#[must_use]
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tunables; it is called
        // before any other thread exists, with parameters glibc documents
        // (M_MMAP_THRESHOLD takes bytes up to 32 MiB, M_ARENA_MAX a count).
        let threshold = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        // SAFETY: as above.
        let arenas = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS_MAX) };
        // mallopt returns 1 on success.
        threshold == 1 && arenas == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counts_every_event() {
        let mut log = LogEvery::new(1_000);
        let mut logged = 0;
        let mut lines = 0;
        // 10 000 events over 5 s: 6 lines at most (one at t=0 and one per
        // second after), and together they count every event but those
        // still held.
        for i in 0..10_000u64 {
            if let Some(count) = log.hit(i / 2) {
                lines += 1;
                logged += count;
            }
        }
        assert!(lines <= 6, "{lines} lines");
        assert_eq!(logged + log.held(), 10_000);
    }

    #[test]
    fn a_quiet_spell_logs_the_next_event_at_once() {
        let mut log = LogEvery::new(1_000);
        assert_eq!(log.hit(0), Some(1));
        assert_eq!(log.hit(999), None);
        assert_eq!(log.hit(60_000), Some(2));
        assert_eq!(log.hit(61_000), Some(1));
    }

    #[test]
    fn the_tail_of_a_burst_is_flushed_after_an_interval() {
        let mut log = LogEvery::new(1_000);
        assert_eq!(log.flush(0), None, "nothing held");
        assert_eq!(log.hit(0), Some(1));
        assert_eq!(log.hit(10), None);
        assert_eq!(log.hit(20), None);
        assert_eq!(log.flush(500), None, "too soon");
        assert_eq!(log.flush(1_000), Some(2));
        assert_eq!(log.flush(5_000), None);
        assert_eq!(log.hit(5_001), Some(1));
        assert_eq!(log.hit(5_002), None);
    }

    #[test]
    fn needs_two_descriptors_per_connection() {
        assert_eq!(nofile_needed(1024), 2048 + NOFILE_SPARE);
        assert_eq!(nofile_needed(usize::MAX), u64::MAX);
    }

    #[test]
    fn a_small_connection_limit_fits_the_current_limit() {
        // Every test process has at least 64 + 2 descriptors.
        assert!(matches!(
            ensure_nofile(1),
            Nofile::Enough { .. } | Nofile::Raised { .. }
        ));
    }
}

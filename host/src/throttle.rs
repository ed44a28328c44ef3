//! A log line at most once per interval for a failure that repeats (an
//! accept loop out of file descriptors fails as fast as it retries), with
//! the count of the failures the line stands for. Sans-IO: the caller
//! passes the time.
//!
//! ```
//! use palisade_host::throttle::LogThrottle;
//!
//! let mut log = LogThrottle::new(1_000);
//! assert_eq!(log.failed(5_000), Some(0)); // the first failure is logged
//! assert_eq!(log.failed(5_010), None); // then not for a second
//! assert_eq!(log.failed(5_500), None);
//! assert_eq!(log.failed(6_000), Some(2)); // standing for the two held back
//! ```

/// One line per interval, counting what it held back.
#[derive(Debug)]
pub struct LogThrottle {
    interval_ms: u64,
    logged_ms: Option<u64>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `interval_ms`.
    #[must_use]
    pub fn new(interval_ms: u64) -> LogThrottle {
        LogThrottle {
            interval_ms,
            logged_ms: None,
            suppressed: 0,
        }
    }

    /// A failure at `now_ms` (monotonic): `Some(held)` means log it now,
    /// `held` being the failures not logged since the last line.
    pub fn failed(&mut self, now_ms: u64) -> Option<u64> {
        match self.logged_ms {
            Some(at) if now_ms < at.saturating_add(self.interval_ms) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.logged_ms = Some(now_ms);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_is_one_line_per_interval_with_its_count() {
        let mut log = LogThrottle::new(1_000);
        let lines: Vec<(u64, u64)> = (0..3_000u64)
            .step_by(10)
            .filter_map(|t| log.failed(t).map(|held| (t, held)))
            .collect();
        assert_eq!(lines, vec![(0, 0), (1_000, 99), (2_000, 99)]);
    }
}

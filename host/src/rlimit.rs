//! The file-descriptor limit: compare the soft `RLIMIT_NOFILE` with what a
//! daemon needs and raise it towards the hard limit if it is short.
//!
//! Both daemons (`palisade serve` and `palisade-fencing-proxy`) call
//! [`raise_nofile`] once at start with their own count of descriptors
//! needed; each says in its own words (log lines, config keys) what the
//! [`Raise`] means for it.
//!
//! What it never does: lower a limit, touch the hard limit, or refuse to
//! start. A short limit is for the caller to report.
//!
//! ```
//! use palisade_host::rlimit::{raise_nofile, Raise};
//! // Every process has room for 16 descriptors.
//! assert!(matches!(raise_nofile(16), Raise::Enough { .. }));
//! ```

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What [`raise_nofile`] found and did. `None` limits are unlimited
/// (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raise {
    /// The soft limit already covered the need.
    Enough {
        /// The soft limit.
        soft: Option<u64>,
    },
    /// The soft limit was raised from `from` to `to`, which covers it.
    Raised {
        /// The old soft limit.
        from: u64,
        /// The new soft limit.
        to: u64,
    },
    /// The soft limit is still below the need: the hard limit is lower,
    /// or the kernel refused to raise it.
    Short {
        /// The soft limit before.
        from: u64,
        /// The soft limit now in force (`from` unless it was raised part of
        /// the way, to the hard limit).
        soft: u64,
        /// The hard limit.
        hard: Option<u64>,
    },
}

/// Raises the soft `RLIMIT_NOFILE` up to `needed` (at most to the hard
/// limit) if it is below `needed`. Call once at start, before the first
/// connection. Logs nothing.
pub fn raise_nofile(needed: u64) -> Raise {
    let limit = getrlimit(Resource::Nofile);
    decide(limit.current, limit.maximum, needed, |target| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .is_ok()
    })
}

/// The decision, sans-IO: `set(target)` sets the soft limit to `target`
/// and says whether it worked; it is called at most once, only to raise.
fn decide(
    soft: Option<u64>,
    hard: Option<u64>,
    needed: u64,
    set: impl FnOnce(u64) -> bool,
) -> Raise {
    let Some(soft) = soft.filter(|&soft| soft < needed) else {
        return Raise::Enough { soft };
    };
    let target = hard.map_or(needed, |hard| hard.min(needed));
    let raised = target > soft && set(target);
    let now = if raised { target } else { soft };
    assert!(now >= soft, "the soft limit is never lowered");
    if now >= needed {
        Raise::Raised {
            from: soft,
            to: now,
        }
    } else {
        Raise::Short {
            from: soft,
            soft: now,
            hard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_covered_need_changes_nothing() {
        let set = |_| panic!("no set");
        assert_eq!(
            decide(Some(1024), None, 1024, set),
            Raise::Enough { soft: Some(1024) }
        );
        assert_eq!(
            decide(None, None, u64::MAX, set),
            Raise::Enough { soft: None }
        );
        let before = getrlimit(Resource::Nofile);
        assert!(matches!(raise_nofile(16), Raise::Enough { .. }));
        assert_eq!(getrlimit(Resource::Nofile).current, before.current);
    }

    #[test]
    fn raises_to_the_need_when_the_hard_limit_allows() {
        let mut asked = None;
        let raise = decide(Some(1024), Some(1 << 20), 4096, |target| {
            asked = Some(target);
            true
        });
        assert_eq!(asked, Some(4096));
        assert_eq!(
            raise,
            Raise::Raised {
                from: 1024,
                to: 4096
            }
        );
        assert_eq!(
            decide(Some(1024), None, 4096, |_| true),
            Raise::Raised {
                from: 1024,
                to: 4096
            }
        );
    }

    #[test]
    fn a_low_hard_limit_raises_part_of_the_way() {
        assert_eq!(
            decide(Some(1024), Some(2048), 4096, |target| target == 2048),
            Raise::Short {
                from: 1024,
                soft: 2048,
                hard: Some(2048)
            }
        );
        // Already at the hard limit: nothing to set.
        assert_eq!(
            decide(Some(2048), Some(2048), 4096, |_| panic!("no set")),
            Raise::Short {
                from: 2048,
                soft: 2048,
                hard: Some(2048)
            }
        );
    }

    #[test]
    fn a_refused_raise_keeps_the_old_limit() {
        assert_eq!(
            decide(Some(1024), Some(1 << 20), 4096, |_| false),
            Raise::Short {
                from: 1024,
                soft: 1024,
                hard: Some(1 << 20)
            }
        );
    }
}

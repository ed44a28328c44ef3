//! The file-descriptor budget: at start, compare `RLIMIT_NOFILE` with what
//! the configured limits may open, raise the soft limit towards the hard
//! one if it is short, and warn if it is still short. A node that runs out
//! of descriptors fails accepts (EMFILE) and, worse, may fail to open its
//! log; better to say so at start than in a flood.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::{info, warn};

/// Descriptors the node holds besides client connections: the data
/// directory and its log files, listeners, the admin endpoint, eventfds,
/// the qdisc netlink socket and the like.
const FIXED_FDS: u64 = 64;
/// Per data-plane core: its io_uring instances, its listener, its eventfd.
const FDS_PER_CORE: u64 = 16;

/// How many descriptors a node with these limits may need at once: every
/// client connection (`connections_max`, which counts handshakes too),
/// room for the connections it refuses or evicts while they are answered
/// (`unauthenticated_max`), two per peer (a connection each way) and the
/// fixed set.
#[must_use]
pub fn needed(connections_max: u32, unauthenticated_max: u32, peers: usize, cores: usize) -> u64 {
    u64::from(connections_max)
        + u64::from(unauthenticated_max)
        + 2 * peers as u64
        + FIXED_FDS
        + FDS_PER_CORE * cores as u64
}

/// What [`ensure`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The soft limit already covers `needed` (`None`: unlimited).
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
    /// Even the hard limit (or what the kernel let us set) is below it.
    Short {
        /// The soft limit now in force.
        soft: u64,
        /// The hard limit.
        hard: Option<u64>,
    },
}

/// Raises the soft `RLIMIT_NOFILE` up to the hard limit if it is below
/// `needed`, and logs what it found: info when it raised it, a warning
/// when the limit stays short.
pub fn ensure(needed: u64) -> Budget {
    let limit = getrlimit(Resource::Nofile);
    let budget = match limit.current {
        None => Budget::Enough { soft: None },
        Some(soft) if soft >= needed => Budget::Enough { soft: Some(soft) },
        Some(soft) => {
            let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
            let raised = target > soft
                && setrlimit(
                    Resource::Nofile,
                    Rlimit {
                        current: Some(target),
                        maximum: limit.maximum,
                    },
                )
                .is_ok();
            let now = if raised { target } else { soft };
            if now >= needed {
                Budget::Raised {
                    from: soft,
                    to: now,
                }
            } else {
                if raised {
                    info!(
                        from = soft,
                        to = now,
                        "raised the soft RLIMIT_NOFILE to the hard limit"
                    );
                }
                Budget::Short {
                    soft: now,
                    hard: limit.maximum,
                }
            }
        }
    };
    match budget {
        Budget::Enough { .. } => {}
        Budget::Raised { from, to } => {
            info!(from, to, needed, "raised the soft RLIMIT_NOFILE to cover limits.connections_max");
        }
        Budget::Short { soft, hard } => warn!(
            soft,
            hard = hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
            needed,
            "RLIMIT_NOFILE is below what limits.connections_max needs: past {soft} open files accepts fail (EMFILE); raise LimitNOFILE (systemd) or ulimit -n, or lower limits.connections_max"
        ),
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_connections_peers_and_cores() {
        assert_eq!(needed(10_000, 128, 2, 2), 10_000 + 128 + 4 + 64 + 32);
    }

    #[test]
    fn a_covered_need_changes_nothing() {
        let before = getrlimit(Resource::Nofile);
        assert!(matches!(ensure(16), Budget::Enough { .. }));
        assert_eq!(getrlimit(Resource::Nofile).current, before.current);
    }
}

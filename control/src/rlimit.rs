//! The file-descriptor budget: at start, compare `RLIMIT_NOFILE` with what
//! the configured limits may open, raise the soft limit towards the hard
//! one if it is short, and warn if it is still short. A node that runs out
//! of descriptors fails accepts (EMFILE) and, worse, may fail to open its
//! log; better to say so at start than in a flood.

use palisade_host::rlimit::{raise_nofile, Raise};
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

/// Raises the soft `RLIMIT_NOFILE` up to the hard limit if it is below
/// `needed` ([`palisade_host::rlimit::raise_nofile`]), and logs what it
/// found: info when it raised it, a warning when the limit stays short.
pub fn ensure(needed: u64) -> Raise {
    let raise = raise_nofile(needed);
    match raise {
        Raise::Enough { .. } => {}
        Raise::Raised { from, to } => {
            info!(
                from,
                to, needed, "raised the soft RLIMIT_NOFILE to cover limits.connections_max"
            );
        }
        Raise::Short { from, soft, hard } => {
            if soft > from {
                info!(
                    from,
                    to = soft,
                    "raised the soft RLIMIT_NOFILE to the hard limit"
                );
            }
            warn!(
                soft,
                hard = hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
                needed,
                "RLIMIT_NOFILE is below what limits.connections_max needs: past {soft} open files accepts fail (EMFILE); raise LimitNOFILE (systemd) or ulimit -n, or lower limits.connections_max"
            );
        }
    }
    raise
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
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert!(matches!(ensure(16), Raise::Enough { .. }));
        let after = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(after.current, before.current);
    }
}

//! The Palisade control plane and the daemon that starts everything.
//!
//! It owns the raft log ([`raftlog::RaftLog`]), the sans-IO raft driver
//! that decides who leads and when it may grant ([`consensus::ControlCore`]),
//! the peer transport ([`transport::Transport`]), the priority qdisc tree
//! of `[qos]` ([`qos::TreePlan`]), and the `palisade`
//! binary; it publishes the `Leadership` word the data plane reads on every
//! request (epoch, leader, grants from/until). It is never on the
//! per-request path: the data plane reads one atomic word and never calls
//! in here.
//!
//! What it never does: touch the lease table's entries, or let the data
//! plane mint a token in an epoch that is not yet durable.
//!
//! Main types: [`node::Node`], [`consensus::ControlCore`], [`raftlog::RaftLog`].
//!
//! ```no_run
//! use palisade_control::node::{default_data_dir, Node};
//! let config = palisade_tuning::Config::builtin_default();
//! let mut node = Node::start(&config, default_data_dir())?;
//! println!("serving on {}", node.local_addr());
//! node.run_until(|| false)?;
//! # Ok::<(), palisade_control::node::NodeError>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod consensus;
pub mod datadir;
pub mod leases;
pub mod logging;
pub mod node;
pub mod qos;
pub mod raftlog;
pub mod rlimit;
pub mod supervise;
pub mod transport;

/// Drops `value` on a short-lived thread named `thread`, so that freeing it
/// (a file's blocks, a large map) does not pause the caller. Without a
/// thread (the process is out of them) it is dropped here: the same pause,
/// nothing lost.
pub(crate) fn drop_elsewhere<T: Send + 'static>(thread: &str, value: T) {
    let spawned = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || drop(value));
    drop(spawned);
}

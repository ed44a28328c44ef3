//! The Palisade data plane: the lock-free lease table, the wait queues, the
//! request service, and the thread-per-core server around them (a pinned
//! epoll loop per core).
//!
//! What it owns: [`table::LeaseTable`] (one array of cache-line slots shared
//! by every core; every lease operation is a compare-and-swap), the FIFO
//! [`waiters::WaitQueues`] of each key's home core, [`service::RequestService::handle`]
//! (one archived request in, one [`service::Outcome`] out, no I/O), the
//! [`leadership::Leadership`] word it reads once per request, and, with the
//! `server` feature, [`server::Server`]: the shell that moves bytes. Also
//! [`metrics`] (per-core counters and their Prometheus exposition, served
//! through `palisade_host::admin`), and [`replica`]: the replicated lease
//! state machine and the commands a leader logs (the control plane drives
//! raft; the data plane proposes and applies). Process plumbing (the clock,
//! DSCP marks, the admin endpoint's HTTP, core heartbeats) is
//! `palisade_host`'s.
//!
//! What it never does: import raft or touch persistence (the control plane
//! publishes the epoch it mints tokens in), take a mutex on a request path,
//! read the clock below the shell (time is an argument), or panic on input
//! from the wire.
//!
//! ```
//! use palisade_dataplane::table::{AcquireMode, Acquired, Grant, KeyHasher, LeaseTable, TokenOutcome};
//!
//! let table = LeaseTable::new(1024, KeyHasher::new([7; 16]));
//! let key = table.hasher().key(0, b"disk0");
//! let grant = Grant { holder: 42, ttl_ms: 10_000, lock_delay_ms: 0 };
//! let Ok(Acquired::Granted { token, .. }) = table.acquire(key, grant, 1_000, 1, AcquireMode::Fair) else {
//!     unreachable!()
//! };
//! assert_eq!(token, (1 << 32) | 1); // epoch 1, first grant
//! assert_eq!(table.release(key, token, 2_000), TokenOutcome::Released { wake_waiters: false });
//! ```
#![warn(missing_docs)]
// The only unsafe code is the socket shim in `server::net`, which allows it
// locally with a SAFETY comment on each block.
#![deny(unsafe_code)]

pub mod leadership;
pub mod metrics;
pub mod names;
pub mod quota;
pub mod replica;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
mod sync;
pub mod table;
pub mod waiters;

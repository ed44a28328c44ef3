//! Process plumbing for Palisade's daemons (`palisade serve` and
//! `palisade-fencing-proxy`): the things every process needs from its host
//! and that no lease logic should own.
//!
//! What it owns:
//! - [`affinity`]: the CPUs a thread may run on, the CPUs the data plane
//!   leaves over, and pinning the node's other threads to them.
//! - [`clock`]: the one place the process reads the clock
//!   (`CLOCK_MONOTONIC` for leases, the real-time clock for display), with
//!   the clock-rate test hook. `clippy.toml` disallows reading time
//!   anywhere else.
//! - [`doorbell`]: the `eventfd` other threads ring to wake a thread
//!   that waits in `poll()` (the control thread), rung only when that
//!   thread is about to sleep.
//! - [`mark`]: DSCP and `SO_PRIORITY` marks on a socket.
//! - [`memory`]: the huge-page and prefetch hints for a large table read
//!   at random.
//! - [`admin`]: the admin endpoint's HTTP/1.1, sans-IO, and the threads
//!   that serve a daemon's [`admin::Pages`] ([`admin::threaded`]).
//! - [`heartbeat`]: the per-loop heartbeat slots the service-manager
//!   watchdog reads, and the stall failpoint.
//! - [`durable`]: files and directories that survive a power cut (write,
//!   fsync, rename, fsync the directory) and the read-back of a file's
//!   prefix.
//! - [`notify`]: systemd's notify protocol and the watchdog decision.
//! - [`rlimit`]: raising the soft `RLIMIT_NOFILE` towards what a daemon
//!   needs.
//! - [`throttle`]: a repeating failure's log line at most once per
//!   interval, with the count it stands for (the accept loops).
//!
//! What it never does: know about leases, tokens, raft or NBD; panic on
//! input from the network; or pull in an async runtime (it is std, rustix
//! and socket2, light enough for the client library and bench).
//!
//! Main types: [`admin::Pages`], [`affinity::AffinityError`], [`heartbeat::slots`],
//! [`durable::DurableError`], [`notify::Notifier`], [`notify::Watchdog`].
//!
//! ```
//! use palisade_host::clock::monotonic_ms;
//! use palisade_host::durable;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("state");
//! durable::replace(&path, &durable::tmp_path(&path), b"epoch 7\n", 0o600)?;
//! let mut buf = [0u8; 64];
//! let len = durable::read_prefix(&path, &mut buf)?.expect("the file exists");
//! assert_eq!(&buf[..len], b"epoch 7\n");
//! assert!(monotonic_ms() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
// The only unsafe code is in `memory` (the `madvise` call and the prefetch
// instruction), allowed locally with a SAFETY comment on each block.
#![deny(unsafe_code)]

pub mod admin;
pub mod affinity;
pub mod clock;
pub mod doorbell;
pub mod durable;
pub mod heartbeat;
pub mod mark;
pub mod memory;
pub mod notify;
pub mod rlimit;
pub mod throttle;

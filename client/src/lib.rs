//! The Palisade client library and, behind the default `cli` feature, the
//! client half of the `palisade` command line (module `cli`).
//!
//! Two clients speak the same protocol: [`Client`], blocking on std
//! sockets, and [`AsyncClient`] on tokio (what applications run). Both
//! pipeline requests. Neither depends on glommio.
//!
//! A granted [`Lease`] carries `valid_until_ms`, computed on the boot-time
//! clock as `send_time + ttl × (1 − max_drift)`: the latest moment the
//! client may still assume it holds the lease. [`keep_alive`] (tokio) and
//! [`KeepAliveThread`] (threads) renew at a third of the ttl and report
//! [`LeaseEvent::Lost`] the moment the lease is gone.
//!
//! **Failover.** A client is given one endpoint or a list of them
//! (`"10.0.0.1:7400,10.0.0.2:7400,10.0.0.3:7400"`, or
//! [`ConnectOptions::for_endpoints`]). Every lease call follows the leader
//! until its own deadline (request timeout, plus the wait of a waiting
//! acquire; for [`Client::renew_lease`] and the keepalive helpers, the
//! lease's `valid_until_ms`): it follows redirects, waits out `Unavailable`
//! and `NotLeader` with capped back-off, and moves to the next endpoint
//! when a node breaks the connection or misses the per-attempt deadline
//! ([`ConnectOptions::attempt_timeout`], 1 s by default), so a hung node
//! costs about one attempt. Retried acquires keep their holder id (a grant
//! whose answer was lost comes back with the same token), waiting acquires
//! are queued again at the new leader with the wait that is left, and a
//! lease survives a leader change with its token. The keepalive helpers
//! report a loss only on `Stale` or when validity runs out, never on an
//! error during an election. The policy is in [`failover`].
//!
//! **Holding, watching, listing.** [`Hold`] (threads) and [`AsyncHold`]
//! (tokio) acquire and keep a lease alive, report its loss on a channel,
//! and release it when dropped; [`hold::Supervisor`] is the sans-IO logic
//! `palisade hold` stops its command with before the lease's validity
//! ends. [`Client::watch_events`] and [`AsyncClient::watch_stream`] follow
//! a resource's grants, releases and expiries ([`watch`]).
//! [`Client::list`] pages through the tenant's live leases.
//!
//! **Features.** `cli` (default) adds the module `cli`, the client commands of the
//! `palisade` binary, with clap, JSON output and the config crate's
//! duration parser. An application that only links the library builds
//! with `default-features = false` and pulls in none of those.
//!
//! What this crate never does: mint or compare tokens on its own authority,
//! or extend a lease's validity past what the server granted.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
//!
//! // Any node of the cluster will do; the client finds the leader.
//! let options = ConnectOptions::new("10.0.0.1:7400,10.0.0.2:7400,10.0.0.3:7400", "default");
//! let mut client = Client::connect(&options)?;
//! match client.acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))? {
//!     AcquireOutcome::Granted(lease) => {
//!         // Send lease.token with every write to disk0 while lease.is_valid().
//!         client.release("disk0", lease.token)?;
//!     }
//!     AcquireOutcome::Busy { token, remaining_ms, .. } => {
//!         println!("held by {token} for {remaining_ms} ms");
//!     }
//! }
//! # Ok::<(), palisade_client::ClientError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod asynchronous;
mod blocking;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
mod commands;
mod error;
pub mod failover;
pub mod handshake;
pub mod hold;
mod keepalive;
mod lease;
pub mod watch;

pub use asynchronous::{AsyncClient, WatchStream};
pub use blocking::{
    random_holder, AcquireOptions, Client, ConnectOptions, ListPage, WatchEvents, Watched,
};
pub use error::ClientError;
pub use handshake::{FramedHandshake, Handshake, Identity};
pub use hold::{AsyncHold, Hold};
pub use keepalive::{
    keep_alive, KeepAlive, KeepAliveThread, LeaseEvent, LossReason, RENEW_FRACTION,
};
pub use lease::{granted_valid_until, valid_until, AcquireOutcome, Lease, TokenOutcome};
pub use palisade_proto::ListedLease;
pub use watch::{WatchEvent, WatchKind};

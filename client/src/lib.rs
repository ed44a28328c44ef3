//! The Palisade client library and the client half of the CLI.
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
//! What this crate never does: mint or compare tokens on its own authority,
//! or extend a lease's validity past what the server granted.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
//!
//! let mut client = Client::connect(&ConnectOptions::new("127.0.0.1:7400", "default"))?;
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
pub mod cli;
pub mod clock;
mod error;
pub mod failover;
mod handshake;
mod keepalive;
mod lease;

pub use asynchronous::AsyncClient;
pub use blocking::{random_holder, AcquireOptions, Client, ConnectOptions, Watched};
pub use error::ClientError;
pub use handshake::Identity;
pub use keepalive::{
    keep_alive, KeepAlive, KeepAliveThread, LeaseEvent, LossReason, RENEW_FRACTION,
};
pub use lease::{valid_until, AcquireOutcome, Lease, TokenOutcome};

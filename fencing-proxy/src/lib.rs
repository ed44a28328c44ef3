//! The fencing proxy: an NBD server in front of storage that knows nothing
//! about leases, refusing writes from holders whose fencing token is below
//! the highest one it has seen for that export (S3).
//!
//! It owns: the NBD protocol (sans-IO, [`nbd`]), the durable per-export
//! fence ([`fence`]), the ordering of writes around a fence change
//! ([`admission`], a plain type over [`gate`]; the shell in [`server`]
//! only awaits what it asks for), the link to the lease service ([`lease`]),
//! the bounds on what clients can make it hold ([`limits`], [`config`]),
//! and the pieces that let one connection have many requests in flight
//! ([`duplex`], [`pool`], the multiplexed upstream in [`backend`], over
//! TCP or a Unix socket), and
//! its test hooks ([`failpoints`]).
//! It must never acknowledge a write under a token below the durable fence,
//! never raise a fence without making it durable first, and never guess a
//! fence it cannot read: an export whose fence state is damaged refuses
//! writes until an operator repairs it. It never arms a test hook unless
//! the binary was started with `--failpoints`. Its library boundaries
//! return documented error enums ([`config::ConfigError`],
//! [`server::ServerError`], [`supervise::SuperviseError`],
//! [`fence::FenceError`]); `anyhow` is for the binary only.

pub mod admission;
pub mod backend;
pub mod config;
pub mod duplex;
pub mod failpoints;
pub mod fence;
pub mod gate;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod nbd;
pub mod pool;
pub mod server;
pub mod supervise;

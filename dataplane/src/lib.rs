//! The Palisade data plane: the lock-free lease table and the glommio
//! thread-per-core server around it.
#![warn(missing_docs)]

pub mod clock;
pub mod leadership;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
mod sync;
pub mod table;
pub mod waiters;

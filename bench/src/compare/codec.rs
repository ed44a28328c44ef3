//! The contract between the compare engine and a system under test: a
//! sans-IO codec per connection.
//!
//! The engine owns the sockets, the clock, the arrival schedule and the
//! histograms; a codec only turns operations into bytes and bytes into
//! outcomes. It never reads a clock, sleeps or touches a socket, so every
//! system is driven by exactly the same loop and each codec is unit-tested
//! on byte strings.
//!
//! What the operations mean on each system is documented in the codec's
//! module and in the method section of every report `compare` writes
//! (`bench/results/compare/RESULTS.md`).

use anyhow::Result;

/// A lock the system granted, as that system identifies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// The fencing token the system issued (Palisade's token, etcd's
    /// create revision, ZooKeeper's czxid), 0 if it has none (Redis).
    pub token: u64,
    /// System-specific: the value a Redis lock was set to, the etcd lease
    /// the key is bound to. 0 if unused.
    pub aux: u64,
}

/// One request the engine wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Try to take resource `resource` for `holder`, without waiting.
    Acquire {
        /// Resource number; the codec names it in its own key space.
        resource: u64,
        /// A holder id unique to this attempt, never 0.
        holder: u64,
    },
    /// Give back a lock this connection was granted.
    Release {
        /// Resource number.
        resource: u64,
        /// What the grant returned.
        held: Held,
    },
    /// Extend a lock this connection holds by the configured ttl.
    Renew {
        /// Resource number.
        resource: u64,
        /// What the grant returned.
        held: Held,
    },
    /// Fencing check: is `held` still the current lock on `resource`?
    Check {
        /// Resource number.
        resource: u64,
        /// What the grant returned.
        held: Held,
    },
}

/// What the system answered to one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire: the lock is ours.
    Granted(Held),
    /// Acquire: someone else holds it.
    Busy,
    /// Release, Renew, or Check: done / still current.
    Done,
    /// Renew or Check: the lock is no longer ours.
    Stale,
    /// Any request: the server pushed back because this connection has
    /// too much pending (Palisade's `too_many_waiters` when its uncommitted
    /// changes reach `limits.pending_per_connection_max`): the load is past
    /// what it sustains, as when the generator's own cap is reached.
    Overloaded,
}

/// Settings every codec of a run shares.
#[derive(Clone)]
pub struct CodecConfig {
    /// Lease ttl in milliseconds.
    pub ttl_ms: u32,
    /// Tenant (Palisade) or key prefix namespace.
    pub tenant: String,
    /// Bytes of a request and its echo (echo codec only).
    pub echo_size: usize,
    /// The tenant's secret, for a Palisade tenant with a credential
    /// (`--secret-file` or `PALISADE_SECRET`); `None` for an open tenant.
    pub secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for CodecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecConfig")
            .field("ttl_ms", &self.ttl_ms)
            .field("tenant", &self.tenant)
            .field("echo_size", &self.echo_size)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A sans-IO client protocol for one connection.
///
/// Request ids are chosen by the engine and unique per connection; a codec
/// returns each id exactly once, with its outcome, in whatever order the
/// system answers. Any protocol error, error reply or unexpected message
/// is an `Err` that names the system and what it sent: the run stops
/// rather than count it as a fast answer.
pub trait Codec {
    /// Appends what must be sent right after connecting (a handshake, a
    /// session or lease set-up, a script load); may append nothing.
    fn start(&mut self, out: &mut Vec<u8>) -> Result<()>;
    /// Whether the handshake is complete and operations may be encoded.
    fn ready(&self) -> bool;
    /// Appends the request for `op`, tagged `id`.
    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()>;
    /// Parses complete replies from the front of `input`, pushing each
    /// `(id, outcome)` to `replies`; may append protocol housekeeping
    /// (acknowledgements, flow-control credit, the rest of a handshake) to
    /// `out`. Returns how many bytes of `input` it consumed; a partial
    /// reply is left for the next call.
    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        out: &mut Vec<u8>,
    ) -> Result<usize>;
}

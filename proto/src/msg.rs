//! Request and response messages. Clients build the owned types; servers read
//! the `Archived*` forms in place from the receive buffer.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ErrorCode;

/// Longest resource name, in bytes.
pub const RESOURCE_LEN_MAX: usize = 256;
/// Longest tenant name, in bytes.
pub const TENANT_LEN_MAX: usize = 64;
/// Longest client name sent at the handshake, in bytes.
pub const CLIENT_NAME_LEN_MAX: usize = 128;
/// Length of handshake nonces.
pub const NONCE_LEN: usize = 16;
/// Most leases one `List` answer carries; a larger `limit` is refused.
pub const LIST_LIMIT_MAX: u32 = 1000;

/// A client-to-server message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Request {
    /// First frame on every connection: names the tenant.
    Hello {
        /// Tenant this connection acts for (S5).
        tenant: String,
        /// Fresh random bytes; binds the credential proof to this session.
        client_nonce: [u8; NONCE_LEN],
        /// Free-form client identification for logs.
        client_name: String,
    },
    /// Answer to a `Challenge`: proof of the tenant secret (never the secret).
    Auth {
        /// SCRAM-style client proof, see [`crate::auth`].
        proof: [u8; 32],
    },
    /// Take the lease on `resource`, or wait up to `wait_ms` for it.
    Acquire {
        /// Resource name, 1..=[`RESOURCE_LEN_MAX`] bytes.
        resource: String,
        /// Caller-chosen holder id; acquiring again with the same id while
        /// holding returns the same token (safe retry). Must not be 0.
        holder: u64,
        /// Requested lease duration.
        ttl_ms: u32,
        /// After the lease expires without release, keep the resource
        /// ungrantable this long (0 = none).
        lock_delay_ms: u32,
        /// 0 = answer at once; otherwise queue (FIFO) up to this long.
        wait_ms: u32,
    },
    /// Extend a held lease to `ttl_ms` from now.
    Renew {
        /// Resource name.
        resource: String,
        /// The token the lease was granted with.
        token: u64,
        /// New duration from now.
        ttl_ms: u32,
    },
    /// Give a lease back.
    Release {
        /// Resource name.
        resource: String,
        /// The token the lease was granted with.
        token: u64,
    },
    /// Is `token` the current, unexpired lease on `resource`?
    Check {
        /// Resource name.
        resource: String,
        /// Token to check.
        token: u64,
    },
    /// Node status.
    Status,
    /// Long poll: answer once a token above `after` has been issued for
    /// `resource`, or when `wait_ms` has passed, whichever is first. A
    /// fencing proxy uses it to raise its fence as soon as a new holder is
    /// granted, before that holder's first write.
    Watch {
        /// Resource name.
        resource: String,
        /// Highest token the watcher knows of (0 = none).
        after: u64,
        /// Longest wait, at most 60 000 ms; 0 answers at once.
        wait_ms: u32,
    },
    /// One page of the caller's tenant's live leases, in resource-name
    /// (byte) order: those whose name starts with `prefix` and sorts after
    /// `after`.
    List {
        /// Only resources whose name starts with these bytes ("" = all).
        prefix: String,
        /// Cursor: only resources whose name sorts strictly after this
        /// ("" = from the start). Pass the previous page's `next_after`.
        after: String,
        /// Most leases wanted, 1..=[`LIST_LIMIT_MAX`]. The server may
        /// return fewer (its frame size bound), with `more` set.
        limit: u32,
    },
}

/// What the server says after a successful handshake.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Welcome {
    /// This node's id.
    pub node_id: u16,
    /// Current epoch of the node.
    pub epoch: u32,
    /// Longest ttl the node grants.
    pub max_ttl_ms: u32,
    /// Shortest ttl the node grants.
    pub min_ttl_ms: u32,
    /// Longest lock delay the node accepts.
    pub lock_delay_max_ms: u32,
    /// Clock rate drift bound in parts per million; clients shorten their
    /// view of a lease by this fraction.
    pub max_drift_ppm: u32,
    /// Proof that the server knows the tenant's server key (authenticated
    /// tenants only).
    pub server_signature: Option<[u8; 32]>,
}

/// Node status, as reported to `palisade status`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StatusInfo {
    /// This node's id.
    pub node_id: u16,
    /// Role of this node.
    pub role: Role,
    /// Current epoch (high 32 bits of every token granted now).
    pub epoch: u32,
    /// Leader's node id as far as this node knows (0 = unknown).
    pub leader_id: u16,
    /// Data-plane cores serving requests.
    pub cores: u16,
    /// Unexpired leases in the table.
    pub leases_held: u64,
    /// Requests answered since start, all cores.
    pub ops_served: u64,
    /// Open client connections.
    pub connections: u32,
    /// Requests queued waiting for a lease, all cores.
    pub waiters: u64,
    /// Wall-clock time (Unix ms) from which grants are allowed.
    pub grants_from_unix_ms: u64,
    /// Milliseconds left in the grace period (0 once grants are allowed).
    pub grace_remaining_ms: u64,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Configured table capacity (leases).
    pub table_capacity: u32,
    /// Cluster members: node id and client address.
    pub peers: Vec<Peer>,
    /// Server version string.
    pub version: String,
}

/// A cluster member as status reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Peer {
    /// Node id.
    pub id: u16,
    /// Client address.
    pub endpoint: String,
}

/// A live lease as `List` reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListedLease {
    /// Resource name.
    pub resource: String,
    /// The lease's fencing token.
    pub token: u64,
    /// Time left on the lease, on the leader's clock.
    pub remaining_ms: u32,
    /// Whether acquires are queued waiting for it.
    pub waiters: bool,
}

/// Role of a node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Role {
    /// Serves grants (after its grace period).
    Leader = 1,
    /// Redirects to the leader.
    Follower = 2,
    /// Campaigning; serves nothing.
    Candidate = 3,
}

impl Role {
    /// Lowercase name used in JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

/// A server-to-client message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Response {
    /// Handshake complete.
    Welcome(Welcome),
    /// The tenant needs a credential proof: answer with `Request::Auth`.
    Challenge {
        /// PBKDF2 salt of the tenant credential.
        salt: Vec<u8>,
        /// PBKDF2 iterations of the tenant credential.
        iterations: u32,
        /// Fresh server randomness for this session.
        server_nonce: [u8; NONCE_LEN],
    },
    /// The lease is yours.
    Granted {
        /// Fencing token: `epoch << 32 | seq`.
        token: u64,
        /// Duration granted, from when the server received the request.
        ttl_ms: u32,
        /// How long the request waited in the queue.
        waited_ms: u32,
    },
    /// Someone else holds the lease (or it is in its lock delay, or queued
    /// waiters come first).
    Busy {
        /// Current holder's token, 0 if none.
        token: u64,
        /// Time until the resource may become grantable (expiry plus lock
        /// delay), 0 if unknown.
        remaining_ms: u32,
        /// Whether waiters are queued.
        waiters: bool,
        /// How long the request waited before giving up.
        waited_ms: u32,
    },
    /// Lease extended.
    Renewed {
        /// The lease's token.
        token: u64,
        /// New duration from when the server received the request.
        ttl_ms: u32,
    },
    /// Lease given back.
    Released {
        /// The released token.
        token: u64,
    },
    /// The token is the current, unexpired lease.
    Current {
        /// The token checked.
        token: u64,
        /// Time left on the lease.
        remaining_ms: u32,
    },
    /// The token is not (or no longer) the current lease.
    Stale {
        /// Token of the current unexpired lease, 0 if none.
        current_token: u64,
        /// Highest token issued for the resource by this node's table, 0 if
        /// it knows of none.
        last_token: u64,
    },
    /// Node status.
    Status(StatusInfo),
    /// Answer to `Watch`.
    Watched {
        /// Token of the current unexpired lease, 0 if none.
        current_token: u64,
        /// Highest token this leader's table has issued for the resource,
        /// 0 if none.
        last_token: u64,
        /// Whether `last_token` is above the watch's `after` (false: the
        /// wait ran out).
        changed: bool,
    },
    /// This node does not lead: ask the leader instead. The request was not
    /// carried out, so retrying it there is safe.
    Redirect {
        /// Leader's node id, 0 if this node knows of none (retry shortly).
        leader_id: u16,
        /// Leader's client address (`host:port`), empty if unknown.
        endpoint: String,
    },
    /// The request or frame was refused.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// When a retry may succeed (0 = no hint).
        retry_after_ms: u32,
        /// Human-readable detail saying what to do.
        message: String,
    },
    /// Answer to `List`: one page of live leases in resource-name order.
    Listed {
        /// The leases, in resource-name (byte) order.
        leases: Vec<ListedLease>,
        /// Cursor for the next page: pass it as `after` (empty when `more`
        /// is false).
        next_after: String,
        /// Whether more leases may follow `next_after`.
        more: bool,
    },
}

/// Checks a resource name: 1..=[`RESOURCE_LEN_MAX`] bytes, no control
/// characters.
pub fn validate_resource(resource: &str) -> Result<(), &'static str> {
    if resource.is_empty() {
        return Err("resource name is empty");
    }
    if resource.len() > RESOURCE_LEN_MAX {
        return Err("resource name is longer than 256 bytes");
    }
    if resource.chars().any(char::is_control) {
        return Err("resource name contains control characters");
    }
    Ok(())
}

/// Checks a tenant name: 1..=[`TENANT_LEN_MAX`] bytes of `[A-Za-z0-9._-]`.
pub fn validate_tenant(tenant: &str) -> Result<(), &'static str> {
    if tenant.is_empty() || tenant.len() > TENANT_LEN_MAX {
        return Err("tenant name must be 1 to 64 bytes");
    }
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("tenant name may only contain A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// Epoch part of a fencing token.
#[must_use]
pub const fn token_epoch(token: u64) -> u32 {
    (token >> 32) as u32
}

/// Sequence part of a fencing token.
#[must_use]
pub const fn token_seq(token: u64) -> u32 {
    token as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert!(validate_resource("disk0").is_ok());
        assert!(validate_resource("jobs/2026/11/übung").is_ok());
        assert!(validate_resource("").is_err());
        assert!(validate_resource(&"x".repeat(256)).is_ok());
        assert!(validate_resource(&"x".repeat(257)).is_err());
        assert!(validate_resource("a\nb").is_err());
        assert!(validate_resource("a\0b").is_err());
    }

    #[test]
    fn tenant_names() {
        assert!(validate_tenant("default").is_ok());
        assert!(validate_tenant("team-a.prod_1").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("a b").is_err());
        assert!(validate_tenant(&"t".repeat(65)).is_err());
    }

    #[test]
    fn token_parts() {
        let token = (7u64 << 32) | 42;
        assert_eq!(token_epoch(token), 7);
        assert_eq!(token_seq(token), 42);
    }
}

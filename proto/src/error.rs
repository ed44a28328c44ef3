//! The closed set of error codes a server puts in an `Error` response.

use rkyv::{Archive, Deserialize, Serialize};

/// Why the server refused a frame or a request.
///
/// The set is closed: a peer that receives a discriminant it does not know
/// fails validation (bytecheck) rather than guessing. Every code is documented
/// in `docs/PROTOCOL.md` with who is at fault and whether a retry can help.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[rkyv(compare(PartialEq))]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame or its payload failed validation. Client bug; not retryable.
    Malformed = 1,
    /// The frame header names a protocol version this server does not speak.
    UnsupportedVersion = 2,
    /// The frame's payload is larger than the server's `frame_payload_max`.
    FrameTooLarge = 3,
    /// The handshake named a tenant the server does not know.
    UnknownTenant = 4,
    /// The tenant's credential proof did not verify.
    AuthFailed = 5,
    /// A lease request arrived before the handshake completed.
    NotAuthenticated = 6,
    /// A field is out of range: empty or overlong resource, ttl outside
    /// `[min_ttl, max_ttl]`, lock delay above `lock_delay_max`.
    InvalidArgument = 7,
    /// The lease table has no room for another resource. Operator must raise
    /// `leases.table_capacity`; retry after releases may help.
    TableFull = 8,
    /// The node holds `waiters_max` waiters, or the connection
    /// `pending_per_connection_max` pending requests.
    TooManyWaiters = 9,
    /// The node cannot grant right now (grace period after start, epoch
    /// rollover). Retry after `retry_after_ms`.
    Unavailable = 10,
    /// This node is not the leader; `message` carries the leader's address
    /// when known.
    NotLeader = 11,
    /// The node is at `connections_max`.
    TooManyConnections = 12,
    /// A frame did not complete within `frame_timeout`, or the handshake
    /// within `handshake_timeout`.
    Timeout = 13,
    /// A server-side failure that is not the client's fault.
    Internal = 14,
    /// The tenant holds `limits.tenant_leases_max` leases on this node.
    /// Retry after its leases are released or expire.
    TenantLeaseQuota = 15,
    /// The tenant has `limits.tenant_waiters_max` acquires queued on this
    /// node. Retry later.
    TenantWaiterQuota = 16,
    /// The tenant has `limits.tenant_connections_max` authenticated
    /// connections to this node (answers the handshake; closes).
    TenantConnectionQuota = 17,
    /// Too many failed credential proofs came from this source address
    /// lately; retry after `retry_after_ms` (answers `Hello`; closes).
    SlowDown = 18,
}

impl ErrorCode {
    /// Every code, in discriminant order (for docs and tests).
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownTenant,
        ErrorCode::AuthFailed,
        ErrorCode::NotAuthenticated,
        ErrorCode::InvalidArgument,
        ErrorCode::TableFull,
        ErrorCode::TooManyWaiters,
        ErrorCode::Unavailable,
        ErrorCode::NotLeader,
        ErrorCode::TooManyConnections,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::TenantLeaseQuota,
        ErrorCode::TenantWaiterQuota,
        ErrorCode::TenantConnectionQuota,
        ErrorCode::SlowDown,
    ];

    /// Stable snake_case name used in logs and JSON output.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownTenant => "unknown_tenant",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::TableFull => "table_full",
            ErrorCode::TooManyWaiters => "too_many_waiters",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::TenantLeaseQuota => "tenant_lease_quota",
            ErrorCode::TenantWaiterQuota => "tenant_waiter_quota",
            ErrorCode::TenantConnectionQuota => "tenant_connection_quota",
            ErrorCode::SlowDown => "slow_down",
        }
    }

    /// Whether the server closes the connection after sending this code.
    /// Frame-level and handshake failures close; request-level ones do not.
    #[must_use]
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed
                | ErrorCode::UnsupportedVersion
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnknownTenant
                | ErrorCode::AuthFailed
                | ErrorCode::NotAuthenticated
                | ErrorCode::TooManyConnections
                | ErrorCode::Timeout
                | ErrorCode::TenantConnectionQuota
                | ErrorCode::SlowDown
        )
    }
}

impl ArchivedErrorCode {
    /// The native code.
    #[must_use]
    pub fn to_native(&self) -> ErrorCode {
        match self {
            ArchivedErrorCode::Malformed => ErrorCode::Malformed,
            ArchivedErrorCode::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            ArchivedErrorCode::FrameTooLarge => ErrorCode::FrameTooLarge,
            ArchivedErrorCode::UnknownTenant => ErrorCode::UnknownTenant,
            ArchivedErrorCode::AuthFailed => ErrorCode::AuthFailed,
            ArchivedErrorCode::NotAuthenticated => ErrorCode::NotAuthenticated,
            ArchivedErrorCode::InvalidArgument => ErrorCode::InvalidArgument,
            ArchivedErrorCode::TableFull => ErrorCode::TableFull,
            ArchivedErrorCode::TooManyWaiters => ErrorCode::TooManyWaiters,
            ArchivedErrorCode::Unavailable => ErrorCode::Unavailable,
            ArchivedErrorCode::NotLeader => ErrorCode::NotLeader,
            ArchivedErrorCode::TooManyConnections => ErrorCode::TooManyConnections,
            ArchivedErrorCode::Timeout => ErrorCode::Timeout,
            ArchivedErrorCode::Internal => ErrorCode::Internal,
            ArchivedErrorCode::TenantLeaseQuota => ErrorCode::TenantLeaseQuota,
            ArchivedErrorCode::TenantWaiterQuota => ErrorCode::TenantWaiterQuota,
            ArchivedErrorCode::TenantConnectionQuota => ErrorCode::TenantConnectionQuota,
            ArchivedErrorCode::SlowDown => ErrorCode::SlowDown,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

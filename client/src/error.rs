//! The client library's one error type.

use palisade_proto::ErrorCode;

/// Why a client call failed. Lease outcomes (busy, stale) are not errors;
/// they come back as values.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be reached or the connection broke. Retryable.
    #[error("connection to {endpoint} failed: {source}")]
    Io {
        /// Endpoint in use.
        endpoint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not answer in time. Retryable.
    #[error("{}", timeout_message(endpoint, *timeout_ms))]
    Timeout {
        /// Endpoint in use.
        endpoint: String,
        /// The time waited for the answer; 0 when the request's time had
        /// run out before a wait for it could begin.
        timeout_ms: u64,
    },
    /// The node asked does not lead; `endpoint` is the leader's client
    /// address (empty if it knows of none). Clients follow it themselves.
    #[error("node is not the leader (leader {leader_id} at {endpoint:?})")]
    Redirect {
        /// Leader's node id, 0 if unknown.
        leader_id: u16,
        /// Leader's client address, empty if unknown.
        endpoint: String,
    },
    /// The server refused the request with an error code.
    #[error("server refused ({code}): {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// Retry hint from the server (0 = none).
        retry_after_ms: u32,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something this client cannot use. A bug on one side.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The handshake failed on the client side (bad secret file, server
    /// signature mismatch).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A local argument is invalid (empty resource, zero ttl).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// Whether retrying the same call later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Timeout { .. } | ClientError::Redirect { .. } => {
                true
            }
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::Unavailable
                    | ErrorCode::NotLeader
                    | ErrorCode::TooManyConnections
                    | ErrorCode::TooManyWaiters
                    | ErrorCode::TableFull
            ),
            _ => false,
        }
    }
}

/// What a [`ClientError::Timeout`] says: how long it waited, or, when it
/// could not wait at all, that the request's time was already spent
/// ("within 0 ms" read like a server that failed at once).
fn timeout_message(endpoint: &str, timeout_ms: u64) -> String {
    if timeout_ms == 0 {
        format!(
            "no answer from {endpoint}: the request's time (its timeout, plus any wait) ran out before an answer could come"
        )
    } else {
        format!("no answer from {endpoint} within {timeout_ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_says_how_long_it_waited_or_that_no_time_was_left() {
        let waited = ClientError::Timeout {
            endpoint: "10.0.0.1:7000".into(),
            timeout_ms: 250,
        };
        assert_eq!(
            waited.to_string(),
            "no answer from 10.0.0.1:7000 within 250 ms"
        );
        let spent = ClientError::Timeout {
            endpoint: "10.0.0.1:7000".into(),
            timeout_ms: 0,
        };
        let text = spent.to_string();
        assert!(!text.contains("0 ms"), "{text}");
        assert!(text.contains("ran out"), "{text}");
    }
}

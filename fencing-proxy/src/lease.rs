//! Talking to the lease service: vouching for a presented token (`Check`)
//! and watching a resource (`Watch`) so a new grant raises the fence before
//! the new holder writes.
//!
//! Every call goes through the client library with the whole endpoint list
//! and a per-attempt deadline ([`LeaseLink::options`]): it follows the
//! leader, and a node that accepts connections but never answers (stopped,
//! hung) costs one `attempt_timeout` before the next node is tried, so one
//! hung node never blinds the proxy while a quorum serves.
//!
//! Blocking calls on their own threads: the NBD event loop never waits on
//! the lease service except through `spawn_blocking`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_client::{Client, ClientError, ConnectOptions, TokenOutcome};

/// What the lease service says of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token is the live lease.
    Current,
    /// It is not; `newest` is the highest token the service vouches for
    /// (0 if none), which the fence may rise to.
    Stale {
        /// Highest token issued for the resource.
        newest: u64,
    },
    /// No answer; the reason for the log.
    Unreachable(String),
}

/// Connection details for the lease service, and the clients kept for
/// checks (one per tenant; cloning a link shares them).
#[derive(Debug, Clone)]
pub struct LeaseLink {
    /// Comma-separated endpoints, tried in this order.
    pub endpoints: String,
    /// Per-call timeout, across every node the call tries.
    pub timeout: Duration,
    /// Per-node, per-attempt deadline.
    pub attempt_timeout: Duration,
    /// Tenant secret, when the tenant needs one.
    pub secret: Option<Vec<u8>>,
    /// Idle check clients by tenant. A check takes its tenant's client out
    /// and puts it back when done, so checks never wait for each other.
    idle: Arc<Mutex<HashMap<String, Client>>>,
}

impl LeaseLink {
    /// A link to `endpoints` (comma-separated).
    #[must_use]
    pub fn new(
        endpoints: String,
        timeout: Duration,
        attempt_timeout: Duration,
        secret: Option<Vec<u8>>,
    ) -> LeaseLink {
        assert!(
            attempt_timeout > Duration::ZERO,
            "a zero deadline never answers"
        );
        LeaseLink {
            endpoints,
            timeout,
            attempt_timeout,
            secret,
            idle: Arc::default(),
        }
    }

    /// The client options for `tenant`: every endpoint, the call timeout
    /// and the per-attempt deadline.
    #[must_use]
    pub fn options(&self, tenant: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.endpoints.clone(), tenant.to_owned())
            .with_attempt_timeout(self.attempt_timeout);
        options.request_timeout = self.timeout;
        options.connect_timeout = self.attempt_timeout;
        options.identity.client_name =
            format!("palisade-fencing-proxy/{}", env!("CARGO_PKG_VERSION"));
        if let Some(secret) = &self.secret {
            options = options.with_secret(secret.clone());
        }
        options
    }

    /// Connects as `tenant` to the first node of the list that completes
    /// the handshake within the per-attempt deadline (blocking).
    pub fn connect(&self, tenant: &str) -> Result<Client, ClientError> {
        Client::connect(&self.options(tenant))
    }

    /// Asks whether `token` is the live lease on `resource` (blocking).
    #[must_use]
    pub fn check(&self, tenant: &str, resource: &str, token: u64) -> Verdict {
        let kept = self.idle.lock().expect("idle clients").remove(tenant);
        let client = match kept {
            Some(client) => Ok(client),
            None => self.connect(tenant),
        };
        let (outcome, client) = match client {
            Ok(mut client) => (client.check(resource, token), Some(client)),
            Err(e) => (Err(e), None),
        };
        if let (Ok(_), Some(client)) = (&outcome, client) {
            // A client that answered knows where the leader is: keep it.
            self.idle
                .lock()
                .expect("idle clients")
                .insert(tenant.to_owned(), client);
        }
        match outcome {
            Ok(TokenOutcome::Current { .. }) => Verdict::Current,
            Ok(TokenOutcome::Stale {
                current_token,
                last_token,
            }) => Verdict::Stale {
                newest: current_token.max(last_token),
            },
            Ok(other) => Verdict::Unreachable(format!("unexpected answer {other:?}")),
            Err(e) => Verdict::Unreachable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn options_carry_the_whole_list_and_the_attempt_deadline() {
        let link = LeaseLink::new(
            "a:1, b:2,c:3".into(),
            Duration::from_secs(2),
            Duration::from_millis(300),
            Some(b"s".to_vec()),
        );
        let options = link.options("t");
        assert_eq!(options.endpoints(), vec!["a:1", "b:2", "c:3"]);
        assert_eq!(options.attempt_timeout, Duration::from_millis(300));
        assert_eq!(options.request_timeout, Duration::from_secs(2));
        assert_eq!(options.identity.tenant, "t");
        assert_eq!(options.identity.secret.as_deref(), Some(&b"s"[..]));
    }

    #[test]
    fn a_node_that_never_answers_is_unreachable_within_the_call_timeout() {
        // Accepts (the kernel does) and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let link = LeaseLink::new(
            silent.local_addr().expect("addr").to_string(),
            Duration::from_millis(400),
            Duration::from_millis(100),
            None,
        );
        match link.check("default", "disk0", 7) {
            Verdict::Unreachable(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

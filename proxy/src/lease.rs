//! Talking to the lease service: vouching for a presented token (`Check`)
//! and watching a resource (`Watch`) so a new grant raises the fence before
//! the new holder writes.
//!
//! Blocking calls on their own threads: the NBD executor never waits on
//! the lease service except through `spawn_blocking`.

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

/// Connection details for the lease service.
#[derive(Debug, Clone)]
pub struct LeaseLink {
    /// Comma-separated endpoints.
    pub endpoints: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Tenant secret, when the tenant needs one.
    pub secret: Option<Vec<u8>>,
}

impl LeaseLink {
    /// Connects as `tenant` to the first endpoint that answers.
    pub fn connect(&self, tenant: &str) -> Result<Client, ClientError> {
        let mut last = None;
        for endpoint in self
            .endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let mut options = ConnectOptions::new(endpoint.to_owned(), tenant.to_owned());
            options.request_timeout = self.timeout;
            options.connect_timeout = self.timeout;
            options.identity.client_name =
                format!("palisade-fencing-proxy/{}", env!("CARGO_PKG_VERSION"));
            if let Some(secret) = &self.secret {
                options = options.with_secret(secret.clone());
            }
            match Client::connect(&options) {
                Ok(client) => return Ok(client),
                Err(e @ ClientError::Io { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| ClientError::InvalidArgument("no lease service endpoint".into())))
    }

    /// Asks whether `token` is the live lease on `resource` (blocking).
    #[must_use]
    pub fn check(&self, tenant: &str, resource: &str, token: u64) -> Verdict {
        let outcome = self
            .connect(tenant)
            .and_then(|mut client| client.check(resource, token));
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

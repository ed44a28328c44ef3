//! The client half of the handshake, shared by both clients.

use palisade_proto::auth::{auth_message, client_proof};
use palisade_proto::{Request, Response, Welcome, NONCE_LEN};

use crate::ClientError;

/// How a client identifies itself.
#[derive(Clone)]
pub struct Identity {
    /// Tenant name.
    pub tenant: String,
    /// Tenant secret, if the tenant needs a credential proof.
    pub secret: Option<Vec<u8>>,
    /// Free-form name for the server's logs.
    pub client_name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("tenant", &self.tenant)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// Handshake progress.
pub(crate) struct Handshake {
    identity: Identity,
    client_nonce: [u8; NONCE_LEN],
    expected_signature: Option<[u8; 32]>,
}

pub(crate) enum Step {
    Send(Request),
    Done(Welcome),
}

impl Handshake {
    pub(crate) fn start(identity: Identity) -> (Handshake, Request) {
        let mut client_nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut client_nonce).expect("the OS random source works");
        let hello = Request::Hello {
            tenant: identity.tenant.clone(),
            client_nonce,
            client_name: identity.client_name.clone(),
        };
        (
            Handshake {
                identity,
                client_nonce,
                expected_signature: None,
            },
            hello,
        )
    }

    pub(crate) fn on_response(&mut self, response: Response) -> Result<Step, ClientError> {
        match response {
            Response::Challenge {
                salt,
                iterations,
                server_nonce,
            } => {
                let Some(secret) = &self.identity.secret else {
                    return Err(ClientError::Auth(format!(
                        "tenant {:?} requires a credential: pass --secret-file or set PALISADE_SECRET",
                        self.identity.tenant
                    )));
                };
                if self.expected_signature.is_some() {
                    return Err(ClientError::Protocol("second challenge".into()));
                }
                // PBKDF2 runs as many rounds as the server names, on this
                // thread: a wrong or hostile endpoint must not make us burn
                // a core for an hour (found by the client_handshake fuzz
                // target). No credential this project writes or accepts
                // has more.
                let most = palisade_proto::auth::ITERATIONS_MAX;
                if iterations > most {
                    return Err(ClientError::Auth(format!(
                        "the server asks for {iterations} PBKDF2 iterations, more than any credential has ({most}); is this the right endpoint?"
                    )));
                }
                let message = auth_message(
                    &self.identity.tenant,
                    &self.client_nonce,
                    &server_nonce,
                    &salt,
                    iterations,
                );
                let (proof, signature) = client_proof(secret, &salt, iterations, &message);
                self.expected_signature = Some(signature);
                Ok(Step::Send(Request::Auth { proof }))
            }
            Response::Welcome(welcome) => {
                if self.identity.secret.is_some() && self.expected_signature.is_none() {
                    // We hold a secret, so the tenant has a credential: a
                    // server that does not ask for a proof is not the one
                    // holding it. Refuse rather than skip mutual auth.
                    return Err(ClientError::Auth(format!(
                        "the server accepted tenant {:?} without asking for its credential; refusing to continue (wrong endpoint, or the tenant has no credential there: drop --secret-file/PALISADE_SECRET)",
                        self.identity.tenant
                    )));
                }
                if let Some(expected) = self.expected_signature {
                    match welcome.server_signature {
                        Some(got) if palisade_proto::auth::constant_time_eq(&got, &expected) => {}
                        _ => {
                            return Err(ClientError::Auth(
                                "the server could not prove it holds this tenant's credential"
                                    .into(),
                            ))
                        }
                    }
                }
                Ok(Step::Done(welcome))
            }
            Response::Error {
                code,
                retry_after_ms,
                message,
            } => Err(ClientError::Server {
                code,
                retry_after_ms,
                message,
            }),
            other => Err(ClientError::Protocol(format!(
                "unexpected handshake response {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_with_absurd_iterations_is_refused_at_once() {
        let identity = Identity {
            tenant: "billing".into(),
            secret: Some(b"s3cret".to_vec()),
            client_name: "test".into(),
        };
        let (mut handshake, _hello) = Handshake::start(identity);
        let started = crate::clock::boottime_ms();
        let outcome = handshake.on_response(Response::Challenge {
            salt: vec![1; 16],
            iterations: u32::MAX,
            server_nonce: [2; palisade_proto::NONCE_LEN],
        });
        assert!(matches!(outcome, Err(ClientError::Auth(_))));
        assert!(
            crate::clock::boottime_ms() - started < 5_000,
            "no PBKDF2 was run"
        );
    }
}

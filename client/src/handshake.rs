//! The client half of the Palisade handshake, as a sans-IO state machine.
//!
//! A connection opens with `Hello` (tenant, a fresh client nonce, a name
//! for the server's logs). An open tenant is answered `Welcome`. A tenant
//! with a credential is answered `Challenge` (salt, PBKDF2 iterations,
//! server nonce); the client answers `Auth` with its proof, and the
//! server's `Welcome` must carry the signature that proves the server
//! holds the same credential (mutual authentication,
//! `docs/PROTOCOL.md`).
//!
//! Two levels, neither of which touches a socket or a clock:
//!
//! - [`Handshake`] works on messages: [`Handshake::start`] gives the
//!   `Hello` to send, [`Handshake::on_response`] takes each answer and says
//!   what to send next or that the handshake is done ([`Step`]). The
//!   blocking [`crate::Client`] and the tokio [`crate::AsyncClient`] drive
//!   it with their own request ids.
//! - [`FramedHandshake`] works on bytes: it writes the handshake's frames
//!   (tagged [`FramedHandshake::REQUEST_ID`]) and reads the server's, for
//!   a caller that owns its own socket loop (the load generators in
//!   `palisade-bench`). Bytes in, bytes out, then done or an error.
//!
//! [`read_secret`] finds a tenant's secret the way the `palisade` CLI does
//! (`--secret-file`, else `PALISADE_SECRET`), for tools that build an
//! [`Identity`]; it is the one function here that reads anything.
//!
//! What this module never does: read or write a socket, read a clock, or
//! accept a server that skips or fails the mutual proof when the client
//! holds a secret.
//!
//! ```
//! use palisade_client::handshake::{FramedHandshake, Progress};
//! use palisade_client::Identity;
//!
//! let identity = Identity {
//!     tenant: "default".into(),
//!     secret: None,
//!     client_name: "example".into(),
//! };
//! let mut to_server = Vec::new();
//! let mut handshake = FramedHandshake::start(identity, &mut to_server)?;
//! // Write `to_server` to the socket; feed what arrives to `receive`:
//! let from_server: &[u8] = &[]; // (nothing has arrived yet)
//! let (used, progress) = handshake.receive(from_server, &mut to_server)?;
//! assert_eq!((used, progress), (0, Progress::Pending));
//! # Ok::<(), palisade_client::ClientError>(())
//! ```

use palisade_proto::auth::{auth_message, client_proof};
use palisade_proto::frame::decode_frame;
use palisade_proto::{
    decode_response, encode_request, Decoded, FrameBuf, Request, Response, Welcome, NONCE_LEN,
};

use crate::blocking::RESPONSE_PAYLOAD_MAX;
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

/// The tenant secret from `secret_file` (its bytes, trailing whitespace
/// and newline trimmed), else from the environment variable
/// `PALISADE_SECRET`, else none (an open tenant).
///
/// # Errors
///
/// [`ClientError::InvalidArgument`] if the file cannot be read or is
/// empty.
pub fn read_secret(secret_file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, ClientError> {
    let Some(path) = secret_file else {
        return Ok(std::env::var_os("PALISADE_SECRET").map(|s| s.into_encoded_bytes()));
    };
    let bytes = std::fs::read(path).map_err(|e| {
        ClientError::InvalidArgument(format!("reading --secret-file {}: {e}", path.display()))
    })?;
    let trimmed = bytes.trim_ascii_end();
    if trimmed.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "--secret-file {} is empty",
            path.display()
        )));
    }
    Ok(Some(trimmed.to_vec()))
}

/// Largest request payload the handshake writes (a `Hello` with the
/// longest tenant and client name fits many times over).
const REQUEST_PAYLOAD_MAX: u32 = 1 << 14;

/// The handshake of one connection, on messages.
///
/// Start with [`Handshake::start`], send the `Hello` it returns, and pass
/// every answer to [`Handshake::on_response`] until it returns
/// [`Step::Done`] or an error. Any error ends the handshake: the
/// connection must be closed.
pub struct Handshake {
    identity: Identity,
    client_nonce: [u8; NONCE_LEN],
    expected_signature: Option<[u8; 32]>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("identity", &self.identity)
            .field("challenged", &self.expected_signature.is_some())
            .finish_non_exhaustive()
    }
}

/// What to do after an answer of the handshake.
#[derive(Debug)]
pub enum Step {
    /// Send this request and pass its answer to [`Handshake::on_response`].
    Send(Request),
    /// The handshake is complete; the server's parameters.
    Done(Welcome),
}

impl Handshake {
    /// Starts a handshake with a fresh random client nonce; returns it and
    /// the `Hello` to send.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails.
    #[must_use]
    pub fn start(identity: Identity) -> (Handshake, Request) {
        let mut client_nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut client_nonce).expect("the OS random source works");
        Handshake::with_nonce(identity, client_nonce)
    }

    /// Starts a handshake with the given client nonce (tests and replay
    /// tools; a real connection uses [`Handshake::start`], whose nonce is
    /// never reused).
    #[must_use]
    pub fn with_nonce(identity: Identity, client_nonce: [u8; NONCE_LEN]) -> (Handshake, Request) {
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

    /// Takes the server's answer to the last request sent.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] if the server answered with an error,
    /// [`ClientError::Auth`] if a credential is needed and missing, the
    /// challenge is implausible, or the server failed (or skipped) the
    /// mutual proof, and [`ClientError::Protocol`] for an answer that does
    /// not belong in a handshake.
    pub fn on_response(&mut self, response: Response) -> Result<Step, ClientError> {
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

/// How far a [`FramedHandshake`] got.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Waiting for more bytes from the server.
    Pending,
    /// The handshake is complete; the server's parameters. Bytes after the
    /// handshake's last frame were not consumed.
    Done(Welcome),
}

/// The handshake of one connection, on bytes: frames out, frames in.
///
/// [`FramedHandshake::start`] appends the `Hello` frame to the caller's
/// output; [`FramedHandshake::receive`] reads the server's frames from the
/// front of the caller's input, appends what must be sent next (the `Auth`
/// frame of a challenged tenant) and says when it is done. Every frame it
/// writes is tagged [`FramedHandshake::REQUEST_ID`]; the caller's own
/// requests must use other ids and must wait for [`Progress::Done`].
#[derive(Debug)]
pub struct FramedHandshake {
    handshake: Handshake,
    done: bool,
    frame: FrameBuf,
}

impl FramedHandshake {
    /// The request id of every frame of the handshake.
    pub const REQUEST_ID: u64 = 0;

    /// Starts a handshake (fresh nonce) and appends its `Hello` frame to
    /// `out`.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] if the tenant or client name does
    /// not fit in a request.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails.
    pub fn start(identity: Identity, out: &mut Vec<u8>) -> Result<FramedHandshake, ClientError> {
        let (handshake, hello) = Handshake::start(identity);
        let mut framed = FramedHandshake {
            handshake,
            done: false,
            frame: FrameBuf::new(),
        };
        framed.push(&hello, out)?;
        Ok(framed)
    }

    /// Whether the server's `Welcome` has been read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn push(&mut self, request: &Request, out: &mut Vec<u8>) -> Result<(), ClientError> {
        self.frame.clear();
        encode_request(
            &mut self.frame,
            Self::REQUEST_ID,
            0,
            REQUEST_PAYLOAD_MAX,
            request,
        )
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        out.extend_from_slice(&self.frame);
        Ok(())
    }

    /// Reads the server's frames at the front of `input` (any alignment,
    /// any split), appending what must be sent next to `out`. Returns how
    /// many bytes it consumed (a partial frame is left for the next call;
    /// nothing after the `Welcome` is consumed) and how far it got.
    ///
    /// # Errors
    ///
    /// As [`Handshake::on_response`], and [`ClientError::Protocol`] for a
    /// malformed frame, a frame with another request id, or bytes after
    /// the handshake was done.
    pub fn receive(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Progress), ClientError> {
        if self.done {
            return Err(ClientError::Protocol(
                "the handshake is already done".into(),
            ));
        }
        let protocol = |e: palisade_proto::FrameError| ClientError::Protocol(e.to_string());
        let mut at = 0;
        loop {
            // Frames are read in place only from an aligned buffer; the
            // caller's may not be, and a handshake is a few frames.
            self.frame.clear();
            self.frame.extend_from_slice(&input[at..]);
            let Decoded::Frame {
                header,
                payload,
                frame_len,
            } = decode_frame(&self.frame, RESPONSE_PAYLOAD_MAX).map_err(protocol)?
            else {
                return Ok((at, Progress::Pending));
            };
            if header.request_id != Self::REQUEST_ID {
                return Err(ClientError::Protocol(format!(
                    "the server answered request {} during the handshake",
                    header.request_id
                )));
            }
            let response = decode_response(payload).map_err(protocol)?;
            at += frame_len;
            match self.handshake.on_response(response)? {
                Step::Send(request) => self.push(&request, out)?,
                Step::Done(welcome) => {
                    self.done = true;
                    return Ok((at, Progress::Done(welcome)));
                }
            }
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
        let started = palisade_host::clock::boottime_ms();
        let outcome = handshake.on_response(Response::Challenge {
            salt: vec![1; 16],
            iterations: u32::MAX,
            server_nonce: [2; palisade_proto::NONCE_LEN],
        });
        assert!(matches!(outcome, Err(ClientError::Auth(_))));
        assert!(
            palisade_host::clock::boottime_ms() - started < 5_000,
            "no PBKDF2 was run"
        );
    }

    fn welcome(server_signature: Option<[u8; 32]>) -> Welcome {
        Welcome {
            node_id: 1,
            epoch: 3,
            max_ttl_ms: 60_000,
            min_ttl_ms: 1,
            lock_delay_max_ms: 0,
            max_drift_ppm: 0,
            server_signature,
        }
    }

    fn response_frame(id: u64, response: &Response) -> Vec<u8> {
        let mut frame = FrameBuf::new();
        palisade_proto::encode_response(&mut frame, id, 0, RESPONSE_PAYLOAD_MAX, response).unwrap();
        frame.to_vec()
    }

    /// The requests in `bytes`, which must be whole frames tagged 0.
    fn requests(bytes: &[u8]) -> Vec<Request> {
        let mut aligned = FrameBuf::new();
        aligned.extend_from_slice(bytes);
        let mut at = 0;
        let mut out = Vec::new();
        while at < aligned.len() {
            let Decoded::Frame {
                header,
                payload,
                frame_len,
            } = decode_frame(&aligned[at..], REQUEST_PAYLOAD_MAX).unwrap()
            else {
                panic!("a partial frame");
            };
            assert_eq!(header.request_id, FramedHandshake::REQUEST_ID);
            out.push(palisade_proto::decode_request(payload).unwrap());
            at += frame_len;
        }
        out
    }

    fn identity(secret: Option<&[u8]>) -> Identity {
        Identity {
            tenant: "billing".into(),
            secret: secret.map(<[u8]>::to_vec),
            client_name: "test".into(),
        }
    }

    /// Feeds `input` one byte at a time after an unaligned prefix.
    fn feed(
        handshake: &mut FramedHandshake,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Progress), ClientError> {
        let mut buffer = vec![0xAA];
        let mut used = 0;
        for &byte in input {
            buffer.push(byte);
            let (n, progress) = handshake.receive(&buffer[1 + used..], out)?;
            used += n;
            if progress != Progress::Pending {
                return Ok((used, progress));
            }
        }
        Ok((used, Progress::Pending))
    }

    #[test]
    fn an_open_tenant_is_welcomed_however_the_bytes_arrive() {
        let mut out = Vec::new();
        let mut handshake = FramedHandshake::start(identity(None), &mut out).unwrap();
        let hello = requests(&out);
        assert!(matches!(
            &hello[..],
            [Request::Hello { tenant, client_name, .. }] if tenant == "billing" && client_name == "test"
        ));
        out.clear();
        let mut input = response_frame(0, &Response::Welcome(welcome(None)));
        let welcome_len = input.len();
        input.extend_from_slice(b"next");
        let (used, progress) = feed(&mut handshake, &input, &mut out).unwrap();
        assert_eq!(used, welcome_len, "nothing after the Welcome is consumed");
        assert_eq!(progress, Progress::Done(welcome(None)));
        assert!(out.is_empty());
        assert!(handshake.is_done());
        assert!(handshake.receive(b"next", &mut out).is_err());
    }

    #[test]
    fn a_challenged_tenant_proves_its_secret_and_checks_the_server() {
        let secret = b"s3cret";
        let salt = vec![7u8; 16];
        let iterations = 1000;
        let stored = palisade_proto::auth::derive_stored(secret, &salt, iterations);
        for honest in [true, false] {
            let mut out = Vec::new();
            let mut handshake = FramedHandshake::start(identity(Some(secret)), &mut out).unwrap();
            let [Request::Hello { client_nonce, .. }] = &requests(&out)[..] else {
                panic!("no hello");
            };
            let server_nonce = [9u8; NONCE_LEN];
            let message = auth_message("billing", client_nonce, &server_nonce, &salt, iterations);
            out.clear();
            let challenge = response_frame(
                0,
                &Response::Challenge {
                    salt: salt.clone(),
                    iterations,
                    server_nonce,
                },
            );
            let (used, progress) = handshake.receive(&challenge, &mut out).unwrap();
            assert_eq!((used, progress), (challenge.len(), Progress::Pending));
            let [Request::Auth { proof }] = requests(&out)[..] else {
                panic!("no auth");
            };
            let signature = palisade_proto::auth::verify_proof(&stored, &message, &proof)
                .expect("the proof verifies");
            let sent = if honest { signature } else { [0; 32] };
            let done = response_frame(0, &Response::Welcome(welcome(Some(sent))));
            let outcome = handshake.receive(&done, &mut Vec::new());
            if honest {
                assert_eq!(
                    outcome.unwrap(),
                    (done.len(), Progress::Done(welcome(Some(signature))))
                );
            } else {
                assert!(matches!(outcome, Err(ClientError::Auth(_))));
            }
        }
    }

    #[test]
    fn a_secret_the_server_never_asks_for_or_a_missing_one_is_refused() {
        let mut out = Vec::new();
        let mut handshake = FramedHandshake::start(identity(Some(b"s")), &mut out).unwrap();
        let welcome = response_frame(0, &Response::Welcome(welcome(None)));
        assert!(matches!(
            handshake.receive(&welcome, &mut out),
            Err(ClientError::Auth(_))
        ));
        let mut handshake = FramedHandshake::start(identity(None), &mut out).unwrap();
        let challenge = response_frame(
            0,
            &Response::Challenge {
                salt: vec![1; 16],
                iterations: 1000,
                server_nonce: [2; NONCE_LEN],
            },
        );
        assert!(matches!(
            handshake.receive(&challenge, &mut out),
            Err(ClientError::Auth(_))
        ));
    }

    #[test]
    fn an_error_or_a_stray_frame_ends_the_handshake() {
        let mut out = Vec::new();
        let mut handshake = FramedHandshake::start(identity(None), &mut out).unwrap();
        let refused = response_frame(
            0,
            &Response::Error {
                code: palisade_proto::ErrorCode::AuthFailed,
                retry_after_ms: 0,
                message: "no".into(),
            },
        );
        assert!(matches!(
            handshake.receive(&refused, &mut out),
            Err(ClientError::Server { .. })
        ));
        let mut handshake = FramedHandshake::start(identity(None), &mut out).unwrap();
        let stray = response_frame(5, &Response::Welcome(welcome(None)));
        assert!(matches!(
            handshake.receive(&stray, &mut out),
            Err(ClientError::Protocol(_))
        ));
    }
}

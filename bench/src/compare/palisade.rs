//! Palisade's codec for the compare engine: the client protocol of
//! `docs/PROTOCOL.md`, frames tagged with the engine's request ids.
//!
//! | operation | request | outcome |
//! |---|---|---|
//! | acquire | `Acquire{resource "b<n>", holder, ttl, lock_delay 0, wait 0}` | `Granted{token}` → granted, `Busy` → busy |
//! | release | `Release{resource, token}` | `Released` |
//! | renew | `Renew{resource, token, ttl}` | `Renewed` → done, `Stale` → stale |
//! | check | `Check{resource, token}` (the fencing check) | `Current` → done, `Stale` → stale |
//!
//! Start-up is the client library's handshake ([`FramedHandshake`]):
//! `Hello`, and for a tenant with a credential the challenge and the
//! mutual proof; operations wait for its `Welcome`.

use anyhow::{bail, Context, Result};
use palisade_client::handshake::{FramedHandshake, Progress};
use palisade_client::Identity;
use palisade_proto::frame::decode_frame;
use palisade_proto::{
    access_response, encode_request, ArchivedResponse, Decoded, ErrorCode, FrameBuf, Request,
};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

/// Largest payload the bench accepts from a server.
const PAYLOAD_MAX: u32 = 1 << 16;
/// The handshake's request id (the engine's ids start at 1).
const HELLO_ID: u64 = FramedHandshake::REQUEST_ID;

/// Client side of Palisade's protocol for one connection.
pub(crate) struct PalisadeCodec {
    ttl_ms: u32,
    identity: Identity,
    /// Set by `start`; done once the server's `Welcome` was read.
    handshake: Option<FramedHandshake>,
    frame: FrameBuf,
    resource: String,
    /// Scratch space to realign a payload that arrives at an address not
    /// 8-aligned (the engine's buffer is aligned; this is a safety net).
    aligned: FrameBuf,
}

impl PalisadeCodec {
    pub(crate) fn new(config: &CodecConfig) -> PalisadeCodec {
        PalisadeCodec {
            ttl_ms: config.ttl_ms,
            identity: Identity {
                tenant: config.tenant.clone(),
                secret: config.secret.clone(),
                client_name: "palisade-bench".into(),
            },
            handshake: None,
            frame: FrameBuf::with_capacity(256),
            resource: String::with_capacity(24),
            aligned: FrameBuf::new(),
        }
    }

    fn name(&mut self, resource: u64) -> String {
        use std::fmt::Write as _;
        self.resource.clear();
        let _ = write!(self.resource, "b{resource}");
        self.resource.clone()
    }

    fn push(&mut self, id: u64, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        self.frame.clear();
        encode_request(&mut self.frame, id, 0, PAYLOAD_MAX, request)?;
        out.extend_from_slice(&self.frame);
        Ok(())
    }
}

impl Codec for PalisadeCodec {
    fn start(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let handshake =
            FramedHandshake::start(self.identity.clone(), out).context("Palisade handshake")?;
        self.handshake = Some(handshake);
        Ok(())
    }

    fn ready(&self) -> bool {
        self.handshake
            .as_ref()
            .is_some_and(FramedHandshake::is_done)
    }

    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()> {
        if id == HELLO_ID {
            bail!("request id {HELLO_ID} is the handshake's");
        }
        let request = match *op {
            Op::Acquire { resource, holder } => Request::Acquire {
                resource: self.name(resource),
                holder,
                ttl_ms: self.ttl_ms,
                lock_delay_ms: 0,
                wait_ms: 0,
            },
            Op::Release { resource, held } => Request::Release {
                resource: self.name(resource),
                token: held.token,
            },
            Op::Renew { resource, held } => Request::Renew {
                resource: self.name(resource),
                token: held.token,
                ttl_ms: self.ttl_ms,
            },
            Op::Check { resource, held } => Request::Check {
                resource: self.name(resource),
                token: held.token,
            },
        };
        self.push(id, &request, out)
    }

    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        let mut at = 0;
        if !self.ready() {
            let Some(handshake) = &mut self.handshake else {
                bail!("Palisade answered before the handshake was sent");
            };
            let (used, progress) = handshake
                .receive(input, out)
                .context("Palisade refused the handshake")?;
            at = used;
            if progress == Progress::Pending {
                return Ok(at);
            }
        }
        while let Decoded::Frame {
            header,
            payload,
            frame_len,
        } = decode_frame(&input[at..], PAYLOAD_MAX)?
        {
            let payload = if (payload.as_ptr() as usize) % 8 == 0 {
                payload
            } else {
                self.aligned.clear();
                self.aligned.extend_from_slice(payload);
                &self.aligned[..]
            };
            let response = access_response(payload)?;
            let id = header.request_id;
            let outcome = match response {
                ArchivedResponse::Granted { token, .. } => Outcome::Granted(Held {
                    token: token.to_native(),
                    aux: 0,
                }),
                ArchivedResponse::Busy { .. } => Outcome::Busy,
                ArchivedResponse::Released { .. }
                | ArchivedResponse::Renewed { .. }
                | ArchivedResponse::Current { .. } => Outcome::Done,
                ArchivedResponse::Stale { .. } => Outcome::Stale,
                ArchivedResponse::Error { code, .. } if *code == ErrorCode::TooManyWaiters => {
                    Outcome::Overloaded
                }
                other => bail!("Palisade answered request {id} with {other:?}"),
            };
            replies.push((id, outcome));
            at += frame_len;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::{encode_response, ErrorCode, Response, Welcome};

    type AlignedVec = FrameBuf;

    use super::*;

    /// A codec whose `Hello` was sent.
    fn codec() -> PalisadeCodec {
        let mut codec = PalisadeCodec::new(&CodecConfig {
            ttl_ms: 5000,
            tenant: "default".into(),
            echo_size: 64,
            secret: None,
        });
        let mut hello = Vec::new();
        codec.start(&mut hello).unwrap();
        assert!(!hello.is_empty() && !codec.ready());
        codec
    }

    fn welcome() -> Response {
        Response::Welcome(Welcome {
            node_id: 1,
            epoch: 7,
            max_ttl_ms: 60_000,
            min_ttl_ms: 1,
            lock_delay_max_ms: 0,
            max_drift_ppm: 0,
            server_signature: None,
        })
    }

    fn wire(responses: &[(u64, Response)]) -> AlignedVec {
        let mut frames = FrameBuf::new();
        for (id, response) in responses {
            encode_response(&mut frames, *id, 0, PAYLOAD_MAX, response).unwrap();
        }
        let mut out = AlignedVec::new();
        out.extend_from_slice(&frames);
        out
    }

    #[test]
    fn handshake_then_outcomes_however_the_bytes_arrive() {
        let bytes = wire(&[
            (0, welcome()),
            (
                3,
                Response::Granted {
                    token: (7 << 32) | 1,
                    ttl_ms: 5000,
                    waited_ms: 0,
                },
            ),
            (
                4,
                Response::Busy {
                    token: 9,
                    remaining_ms: 1,
                    waiters: false,
                    waited_ms: 0,
                },
            ),
            (5, Response::Released { token: 1 }),
            (
                6,
                Response::Stale {
                    current_token: 2,
                    last_token: 2,
                },
            ),
            (
                7,
                Response::Current {
                    token: 2,
                    remaining_ms: 10,
                },
            ),
            (
                8,
                Response::Renewed {
                    token: 2,
                    ttl_ms: 10,
                },
            ),
        ]);
        let expected = vec![
            (
                3,
                Outcome::Granted(Held {
                    token: (7 << 32) | 1,
                    aux: 0,
                }),
            ),
            (4, Outcome::Busy),
            (5, Outcome::Done),
            (6, Outcome::Stale),
            (7, Outcome::Done),
            (8, Outcome::Done),
        ];
        for split in 0..=bytes.len() {
            let mut c = codec();
            let mut replies = Vec::new();
            let mut out = Vec::new();
            // The engine keeps unconsumed bytes at the front of an aligned
            // buffer; model that.
            let mut buf = AlignedVec::new();
            buf.extend_from_slice(&bytes[..split]);
            let used = c.decode(&buf, &mut replies, &mut out).unwrap();
            let mut rest = AlignedVec::new();
            rest.extend_from_slice(&bytes[used..]);
            let more = c.decode(&rest, &mut replies, &mut out).unwrap();
            assert_eq!(used + more, bytes.len(), "split {split}");
            assert!(c.ready());
            assert_eq!(replies, expected, "split {split}");
        }
    }

    #[test]
    fn a_refused_handshake_or_an_error_reply_stops_the_run() {
        let refused = wire(&[(
            0,
            Response::Error {
                code: ErrorCode::AuthFailed,
                retry_after_ms: 0,
                message: "no".into(),
            },
        )]);
        let err = codec()
            .decode(&refused, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("refused the handshake"), "{err}");
        let error = wire(&[
            (0, welcome()),
            (
                5,
                Response::Error {
                    code: ErrorCode::Unavailable,
                    retry_after_ms: 0,
                    message: "grace".into(),
                },
            ),
        ]);
        let err = codec()
            .decode(&error, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("request 5"), "{err}");
        // Back-pressure on a connection is overload, not a broken server.
        let pushed_back = wire(&[
            (0, welcome()),
            (
                6,
                Response::Error {
                    code: ErrorCode::TooManyWaiters,
                    retry_after_ms: 100,
                    message: "pending".into(),
                },
            ),
        ]);
        let mut replies = Vec::new();
        codec()
            .decode(&pushed_back, &mut replies, &mut Vec::new())
            .expect("decoded");
        assert_eq!(replies, vec![(6, Outcome::Overloaded)]);
    }

    #[test]
    fn a_tenant_with_a_credential_answers_the_challenge_with_a_proof() {
        let mut c = PalisadeCodec::new(&CodecConfig {
            ttl_ms: 5000,
            tenant: "billing".into(),
            echo_size: 64,
            secret: Some(b"s3cret".to_vec()),
        });
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        out.clear();
        let challenge = wire(&[(
            0,
            Response::Challenge {
                salt: vec![1; 16],
                iterations: 1000,
                server_nonce: [2; palisade_proto::NONCE_LEN],
            },
        )]);
        let mut replies = Vec::new();
        let used = c.decode(&challenge, &mut replies, &mut out).unwrap();
        assert_eq!(used, challenge.len());
        assert!(replies.is_empty() && !c.ready());
        let mut sent = AlignedVec::new();
        sent.extend_from_slice(&out);
        let Decoded::Frame {
            header, payload, ..
        } = decode_frame(&sent, PAYLOAD_MAX).unwrap()
        else {
            panic!("no Auth frame");
        };
        assert_eq!(header.request_id, HELLO_ID);
        assert!(matches!(
            palisade_proto::decode_request(payload).unwrap(),
            Request::Auth { .. }
        ));
        // A Welcome without the server's proof is refused.
        let err = c
            .decode(&wire(&[(0, welcome())]), &mut replies, &mut out)
            .unwrap_err();
        assert!(format!("{err:#}").contains("credential"), "{err:#}");
    }

    #[test]
    fn requests_round_trip_through_the_server_decoder() {
        let mut c = codec();
        let mut out = Vec::new();
        let held = Held { token: 42, aux: 0 };
        c.encode(
            1,
            &Op::Acquire {
                resource: 17,
                holder: 5,
            },
            &mut out,
        )
        .unwrap();
        c.encode(2, &Op::Renew { resource: 17, held }, &mut out)
            .unwrap();
        let mut buf = AlignedVec::new();
        buf.extend_from_slice(&out);
        let Decoded::Frame {
            header,
            payload,
            frame_len,
        } = decode_frame(&buf, PAYLOAD_MAX).unwrap()
        else {
            panic!("no frame");
        };
        assert_eq!(header.request_id, 1);
        assert_eq!(
            palisade_proto::decode_request(payload).unwrap(),
            Request::Acquire {
                resource: "b17".into(),
                holder: 5,
                ttl_ms: 5000,
                lock_delay_ms: 0,
                wait_ms: 0
            }
        );
        let Decoded::Frame {
            header, payload, ..
        } = decode_frame(&buf[frame_len..], PAYLOAD_MAX).unwrap()
        else {
            panic!("no second frame");
        };
        assert_eq!(header.request_id, 2);
        assert_eq!(
            palisade_proto::decode_request(payload).unwrap(),
            Request::Renew {
                resource: "b17".into(),
                token: 42,
                ttl_ms: 5000
            }
        );
        assert!(c
            .encode(
                0,
                &Op::Acquire {
                    resource: 1,
                    holder: 1
                },
                &mut out
            )
            .is_err());
    }
}

//! The ZooKeeper codec: ZooKeeper's binary (jute) client protocol, by hand.
//!
//! Every packet is a 4-byte big-endian length and a jute record. One
//! connection is one ZooKeeper session; a lock is an ephemeral znode that
//! lives as long as the session does.
//!
//! Per operation, on znode `/l<resource>`:
//! - start: ConnectRequest (protocol 0, session timeout = ttl ms, new
//!   session, read-write); ready on the ConnectResponse. The server clamps
//!   the timeout to [2, 20] × tickTime (4 s to 40 s with the default
//!   tickTime 2000 the benchmark keeps); [`ZkCodec::session_timeout_ms`]
//!   gives the negotiated value.
//! - Acquire: create2 (op 15) of `/l<r>` with data `<holder>` (decimal),
//!   ACL world:anyone ALL, flags EPHEMERAL → ok → `Granted` with token =
//!   the node's czxid (create2 returns the Stat; plain create does not),
//!   aux = holder; NodeExists (-110) → `Busy`.
//! - Release: delete (op 2) of `/l<r>`, version -1 → ok → `Done`;
//!   NoNode (-101) → `Stale`. (Version -1 deletes whatever node is there:
//!   it does not check that the node is still ours, as ZooKeeper's own
//!   lock recipe does not either.)
//! - Renew: ping (xid -2, op 11): ZooKeeper keeps ephemeral nodes alive by
//!   session heartbeats → `Done`. Pings all share xid -2 and are answered
//!   in order, so they are matched through a FIFO.
//! - Check: exists (op 3) of `/l<r>`, no watch → Stat.czxid == token →
//!   `Done`; NoNode or another czxid → `Stale`.
//!
//! Replies carry the request's xid; the codec maps xids (positive i32)
//! to engine ids. Watch notifications (xid -1) are skipped (we set none).
//! It never touches a socket or a clock.

use std::collections::{HashMap, VecDeque};

use anyhow::{bail, Context, Result};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

/// ZooDefs.OpCode.
mod opcode {
    pub(super) const DELETE: i32 = 2;
    pub(super) const EXISTS: i32 = 3;
    pub(super) const PING: i32 = 11;
    pub(super) const CREATE2: i32 = 15;
}
/// KeeperException.Code.
mod code {
    pub(super) const OK: i32 = 0;
    pub(super) const NO_NODE: i32 = -101;
    pub(super) const NODE_EXISTS: i32 = -110;
}
const XID_WATCH: i32 = -1;
const XID_PING: i32 = -2;
/// CreateMode.EPHEMERAL.
const FLAGS_EPHEMERAL: i32 = 1;
/// ZooDefs.Perms.ALL.
const PERMS_ALL: i32 = 31;
/// Largest packet we accept (jute's default jute.maxbuffer is about 1 MiB).
const PACKET_LEN_MAX: usize = 1 << 20;
/// Bytes of a Stat record: 6 longs and 5 ints.
const STAT_LEN: usize = 6 * 8 + 5 * 4;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Acquire { holder: u64 },
    Release,
    Check { token: u64 },
}

/// One connection's ZooKeeper session.
pub(crate) struct ZkCodec {
    timeout_ms: i32,
    session_timeout_ms: Option<i32>,
    session_id: i64,
    started: bool,
    next_xid: i32,
    pending: HashMap<i32, (u64, Kind)>,
    pings: VecDeque<u64>,
}

impl ZkCodec {
    pub(crate) fn new(cfg: &CodecConfig) -> Result<Self> {
        let timeout_ms =
            i32::try_from(cfg.ttl_ms).context("zookeeper session timeout (ttl ms) exceeds i32")?;
        if timeout_ms <= 0 {
            bail!("zookeeper session timeout (ttl ms) must be positive");
        }
        Ok(Self {
            timeout_ms,
            session_timeout_ms: None,
            session_id: 0,
            started: false,
            next_xid: 1,
            pending: HashMap::new(),
            pings: VecDeque::new(),
        })
    }

    /// The session timeout the server granted (its clamp of the ttl), once
    /// connected.
    #[cfg_attr(not(test), allow(dead_code))] // used by the live tests
    pub(crate) fn session_timeout_ms(&self) -> Option<i32> {
        self.session_timeout_ms
    }

    /// The session id the server assigned, 0 before it answered.
    #[cfg_attr(not(test), allow(dead_code))] // used by the live tests
    pub(crate) fn session_id(&self) -> i64 {
        self.session_id
    }

    fn take_xid(&mut self) -> Result<i32> {
        let xid = self.next_xid;
        if self.pending.contains_key(&xid) {
            bail!("zookeeper codec: xid {xid} wrapped onto a request still outstanding");
        }
        self.next_xid = if xid == i32::MAX { 1 } else { xid + 1 };
        Ok(xid)
    }
}

/// Writes a length-prefixed packet whose body `body` appends.
fn packet(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = u32::try_from(out.len() - at - 4).expect("our packets are small");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}
/// jute `ustring` and `buffer`: i32 length then the bytes.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_i32(out, i32::try_from(b.len()).expect("our strings are small"));
    out.extend_from_slice(b);
}

fn path(resource: u64) -> String {
    format!("/l{resource}")
}

/// A bounds-checked reader over one packet.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let Some(s) = self.buf.get(self.at..self.at + n) else {
            bail!(
                "zookeeper packet of {} bytes ends inside {what}",
                self.buf.len()
            );
        };
        self.at += n;
        Ok(s)
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(&[]);
        }
        let Ok(len) = usize::try_from(len) else {
            bail!("zookeeper sent {what} of length {len}");
        };
        self.take(len, what)
    }
    /// Reads a Stat and returns its czxid (the first field).
    fn stat_czxid(&mut self) -> Result<i64> {
        let stat = self.take(STAT_LEN, "a Stat")?;
        Ok(i64::from_be_bytes(stat[..8].try_into().expect("8 bytes")))
    }
}

fn czxid_token(czxid: i64) -> Result<u64> {
    match u64::try_from(czxid) {
        Ok(t) if t > 0 => Ok(t),
        _ => bail!("zookeeper returned czxid {czxid}, not a positive zxid"),
    }
}

impl Codec for ZkCodec {
    fn start(&mut self, out: &mut Vec<u8>) -> Result<()> {
        assert!(!self.started, "start is called once");
        self.started = true;
        // ConnectRequest, then the readOnly flag the Java client appends.
        packet(out, |b| {
            put_i32(b, 0); // protocolVersion
            put_i64(b, 0); // lastZxidSeen
            put_i32(b, self.timeout_ms);
            put_i64(b, 0); // sessionId: new session
            put_bytes(b, &[0; 16]); // passwd
            b.push(0); // readOnly: false
        });
        Ok(())
    }

    fn ready(&self) -> bool {
        self.session_timeout_ms.is_some()
    }

    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()> {
        if !self.ready() {
            bail!("zookeeper codec: operation encoded before the session was established");
        }
        match *op {
            Op::Acquire { resource, holder } => {
                assert!(holder != 0, "holder ids are never 0");
                let xid = self.take_xid()?;
                packet(out, |b| {
                    put_i32(b, xid);
                    put_i32(b, opcode::CREATE2);
                    put_bytes(b, path(resource).as_bytes());
                    put_bytes(b, holder.to_string().as_bytes());
                    put_i32(b, 1); // one ACL
                    put_i32(b, PERMS_ALL);
                    put_bytes(b, b"world");
                    put_bytes(b, b"anyone");
                    put_i32(b, FLAGS_EPHEMERAL);
                });
                self.pending.insert(xid, (id, Kind::Acquire { holder }));
            }
            Op::Release { resource, .. } => {
                let xid = self.take_xid()?;
                packet(out, |b| {
                    put_i32(b, xid);
                    put_i32(b, opcode::DELETE);
                    put_bytes(b, path(resource).as_bytes());
                    put_i32(b, -1); // any version
                });
                self.pending.insert(xid, (id, Kind::Release));
            }
            Op::Renew { .. } => {
                packet(out, |b| {
                    put_i32(b, XID_PING);
                    put_i32(b, opcode::PING);
                });
                self.pings.push_back(id);
            }
            Op::Check { resource, held } => {
                let xid = self.take_xid()?;
                packet(out, |b| {
                    put_i32(b, xid);
                    put_i32(b, opcode::EXISTS);
                    put_bytes(b, path(resource).as_bytes());
                    b.push(0); // watch: false
                });
                self.pending
                    .insert(xid, (id, Kind::Check { token: held.token }));
            }
        }
        Ok(())
    }

    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        _out: &mut Vec<u8>,
    ) -> Result<usize> {
        let mut at = 0;
        loop {
            let Some(len) = input.get(at..at + 4) else {
                return Ok(at);
            };
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            if len > PACKET_LEN_MAX {
                bail!("zookeeper sent a packet of {len} bytes (limit {PACKET_LEN_MAX})");
            }
            let Some(body) = input.get(at + 4..at + 4 + len) else {
                return Ok(at);
            };
            self.handle_packet(body, replies)?;
            at += 4 + len;
        }
    }
}

impl ZkCodec {
    fn handle_packet(&mut self, body: &[u8], replies: &mut Vec<(u64, Outcome)>) -> Result<()> {
        let mut r = Reader { buf: body, at: 0 };
        if !self.started {
            bail!("zookeeper sent a packet before the codec connected");
        }
        if self.session_timeout_ms.is_none() {
            // ConnectResponse (+ readOnly byte, which we ignore).
            let _protocol = r.i32("ConnectResponse.protocolVersion")?;
            let timeout = r.i32("ConnectResponse.timeOut")?;
            let session = r.i64("ConnectResponse.sessionId")?;
            let _passwd = r.bytes("ConnectResponse.passwd")?;
            if timeout <= 0 || session == 0 {
                bail!("zookeeper refused the session (timeout {timeout}, session id {session:#x})");
            }
            self.session_timeout_ms = Some(timeout);
            self.session_id = session;
            return Ok(());
        }
        let xid = r.i32("ReplyHeader.xid")?;
        let _zxid = r.i64("ReplyHeader.zxid")?;
        let err = r.i32("ReplyHeader.err")?;
        match xid {
            XID_WATCH => return Ok(()),
            XID_PING => {
                let Some(id) = self.pings.pop_front() else {
                    bail!("zookeeper answered a ping nobody sent");
                };
                if err != code::OK {
                    bail!("zookeeper answered a ping with error {err}");
                }
                replies.push((id, Outcome::Done));
                return Ok(());
            }
            _ => {}
        }
        let Some((id, kind)) = self.pending.remove(&xid) else {
            bail!("zookeeper sent a reply for xid {xid}, which is not outstanding (err {err})");
        };
        let outcome = match (kind, err) {
            (Kind::Acquire { holder }, code::OK) => {
                let _path = r.bytes("Create2Response.path")?;
                let czxid = r.stat_czxid()?;
                Outcome::Granted(Held {
                    token: czxid_token(czxid)?,
                    aux: holder,
                })
            }
            (Kind::Acquire { .. }, code::NODE_EXISTS) => Outcome::Busy,
            (Kind::Release, code::OK) => Outcome::Done,
            (Kind::Release, code::NO_NODE) => Outcome::Stale,
            (Kind::Check { token }, code::OK) => {
                let czxid = r.stat_czxid()?;
                if u64::try_from(czxid) == Ok(token) {
                    Outcome::Done
                } else {
                    Outcome::Stale
                }
            }
            (Kind::Check { .. }, code::NO_NODE) => Outcome::Stale,
            (kind, err) => bail!("zookeeper answered {kind:?} (xid {xid}) with error code {err}"),
        };
        replies.push((id, outcome));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::peer_tests::decode_every_split;

    fn cfg() -> CodecConfig {
        CodecConfig {
            ttl_ms: 6000,
            tenant: "t".into(),
            echo_size: 0,
            secret: None,
        }
    }

    fn connect_response(timeout: i32, session: i64) -> Vec<u8> {
        let mut v = Vec::new();
        packet(&mut v, |b| {
            put_i32(b, 0);
            put_i32(b, timeout);
            put_i64(b, session);
            put_bytes(b, &[7; 16]);
            b.push(0);
        });
        v
    }

    fn stat(czxid: i64) -> Vec<u8> {
        let mut v = Vec::new();
        put_i64(&mut v, czxid);
        v.resize(STAT_LEN, 0);
        v
    }

    fn reply(xid: i32, err: i32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        packet(&mut v, |b| {
            put_i32(b, xid);
            put_i64(b, 99);
            put_i32(b, err);
            b.extend_from_slice(body);
        });
        v
    }

    fn ready_codec() -> ZkCodec {
        let mut c = ZkCodec::new(&cfg()).unwrap();
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        let resp = connect_response(6000, 0x1234);
        assert_eq!(
            c.decode(&resp, &mut Vec::new(), &mut out).unwrap(),
            resp.len()
        );
        assert!(c.ready());
        assert_eq!(c.session_timeout_ms(), Some(6000));
        assert_eq!(c.session_id(), 0x1234);
        c
    }

    #[test]
    fn connect_request_layout() {
        let mut c = ZkCodec::new(&cfg()).unwrap();
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        let mut want = vec![0, 0, 0, 45];
        want.extend_from_slice(&[0; 4]); // protocolVersion
        want.extend_from_slice(&[0; 8]); // lastZxidSeen
        want.extend_from_slice(&6000i32.to_be_bytes());
        want.extend_from_slice(&[0; 8]); // sessionId
        want.extend_from_slice(&16i32.to_be_bytes());
        want.extend_from_slice(&[0; 16]);
        want.push(0);
        assert_eq!(out, want);
        assert!(!c.ready());
    }

    #[test]
    fn request_layouts() {
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            5,
            &Op::Acquire {
                resource: 3,
                holder: 77,
            },
            &mut out,
        )
        .unwrap();
        let mut want = Vec::new();
        packet(&mut want, |b| {
            put_i32(b, 1);
            put_i32(b, 15);
            put_bytes(b, b"/l3");
            put_bytes(b, b"77");
            put_i32(b, 1);
            put_i32(b, 31);
            put_bytes(b, b"world");
            put_bytes(b, b"anyone");
            put_i32(b, 1);
        });
        assert_eq!(out, want);
        out.clear();
        let held = Held { token: 9, aux: 77 };
        c.encode(6, &Op::Release { resource: 3, held }, &mut out)
            .unwrap();
        assert_eq!(
            out,
            [
                &[0, 0, 0, 19, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3][..],
                b"/l3",
                &[0xff; 4]
            ]
            .concat()
        );
        out.clear();
        c.encode(7, &Op::Check { resource: 3, held }, &mut out)
            .unwrap();
        assert_eq!(
            out,
            [
                &[0, 0, 0, 16, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 3][..],
                b"/l3",
                &[0]
            ]
            .concat()
        );
        out.clear();
        c.encode(8, &Op::Renew { resource: 3, held }, &mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 8, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 11]);
    }

    #[test]
    fn decodes_every_outcome_at_every_split() {
        let held = Held {
            token: 0x500,
            aux: 77,
        };
        let ops = [
            Op::Acquire {
                resource: 3,
                holder: 77,
            }, // xid 1
            Op::Acquire {
                resource: 4,
                holder: 78,
            }, // xid 2
            Op::Renew { resource: 3, held }, // ping
            Op::Check { resource: 3, held }, // xid 3
            Op::Renew { resource: 3, held }, // ping
            Op::Check {
                resource: 3,
                held: Held { token: 1, aux: 77 },
            }, // xid 4
            Op::Release { resource: 3, held }, // xid 5
            Op::Check { resource: 3, held }, // xid 6
            Op::Release { resource: 3, held }, // xid 7
        ];
        let mut make = || {
            let mut c = ready_codec();
            let mut out = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                c.encode(100 + i as u64, op, &mut out).unwrap();
            }
            c
        };
        let mut create_body = Vec::new();
        put_bytes(&mut create_body, b"/l3");
        create_body.extend_from_slice(&stat(0x500));
        // Replies out of request order, a watch event in between.
        let stream = [
            reply(2, code::NODE_EXISTS, &[]),
            reply(1, code::OK, &create_body),
            reply(XID_PING, code::OK, &[]),
            reply(
                XID_WATCH,
                code::OK,
                &[0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, b'/'],
            ),
            reply(3, code::OK, &stat(0x500)),
            reply(XID_PING, code::OK, &[]),
            reply(4, code::OK, &stat(0x500)),
            reply(5, code::OK, &[]),
            reply(6, code::NO_NODE, &[]),
            reply(7, code::NO_NODE, &[]),
        ]
        .concat();
        let want = vec![
            (101, Outcome::Busy),
            (
                100,
                Outcome::Granted(Held {
                    token: 0x500,
                    aux: 77,
                }),
            ),
            (102, Outcome::Done),
            (103, Outcome::Done),
            (104, Outcome::Done),
            (105, Outcome::Stale),
            (106, Outcome::Done),
            (107, Outcome::Stale),
            (108, Outcome::Stale),
        ];
        decode_every_split(&mut make, &stream, &want);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = Vec::new();
        let mut c = ready_codec();
        let err = c
            .decode(&reply(9, 0, &[]), &mut Vec::new(), &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("xid 9"), "{err}");
        let mut c = ready_codec();
        assert!(c
            .decode(&reply(XID_PING, 0, &[]), &mut Vec::new(), &mut out)
            .is_err());
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Acquire {
                resource: 1,
                holder: 1,
            },
            &mut out,
        )
        .unwrap();
        let err = c
            .decode(&reply(1, -102, &[]), &mut Vec::new(), &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("-102"), "{err}");
        // A truncated Stat.
        let mut c = ready_codec();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        assert!(c
            .decode(&reply(1, 0, &[0; 10]), &mut Vec::new(), &mut out)
            .is_err());
        // A huge length.
        let mut c = ready_codec();
        assert!(c
            .decode(&[0x7f, 0, 0, 0], &mut Vec::new(), &mut out)
            .is_err());
        // An expired session answer.
        let mut c = ZkCodec::new(&cfg()).unwrap();
        c.start(&mut out).unwrap();
        assert!(c
            .decode(&connect_response(0, 0), &mut Vec::new(), &mut out)
            .is_err());
        // Operations before the session.
        let mut c = ZkCodec::new(&cfg()).unwrap();
        assert!(c
            .encode(
                1,
                &Op::Acquire {
                    resource: 1,
                    holder: 1
                },
                &mut out
            )
            .is_err());
    }
}

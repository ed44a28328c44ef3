//! Test support for the peer codecs, and their live tests: each real peer
//! is started with `peers.rs` and driven through its codec over a blocking
//! `TcpStream`. A live test skips, saying why, when the peer's binary is
//! absent (run `bench/install-peers.sh`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};
use super::peers::{Peer, PeerError, PeerKind};

/// Feeds `stream` to fresh codecs from `make`, split in two at every byte
/// boundary and also one byte at a time, buffering unconsumed bytes as the
/// engine does; each way must produce exactly `want`.
pub(crate) fn decode_every_split<C: Codec>(
    make: &mut impl FnMut() -> C,
    stream: &[u8],
    want: &[(u64, Outcome)],
) {
    for split in 0..=stream.len() {
        let got = feed(make(), [&stream[..split], &stream[split..]]);
        assert_eq!(got, want, "split at byte {split} of {}", stream.len());
    }
    let got = feed(make(), stream.chunks(1));
    assert_eq!(got, want, "one byte at a time");
}

fn feed<'a, C: Codec>(
    mut codec: C,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<(u64, Outcome)> {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let used = codec.decode(&buf, &mut replies, &mut out).expect("decode");
        assert!(used <= buf.len());
        buf.drain(..used);
    }
    assert!(buf.is_empty(), "{} bytes left unconsumed", buf.len());
    replies
}

/// One codec on one blocking connection.
pub(crate) struct Driver<C: Codec> {
    codec: C,
    sock: TcpStream,
    inbuf: Vec<u8>,
    replies: Vec<(u64, Outcome)>,
    next_id: u64,
}

impl<C: Codec> Driver<C> {
    /// Connects, sends the codec's start and reads until it is ready.
    pub(crate) fn connect(peer: &Peer, mut codec: C) -> Result<Self> {
        let sock = TcpStream::connect(peer.addr())
            .with_context(|| format!("connecting to {}", peer.addr()))?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        sock.set_nodelay(true)?;
        let mut out = Vec::new();
        codec.start(&mut out)?;
        let mut d = Self {
            codec,
            sock,
            inbuf: Vec::new(),
            replies: Vec::new(),
            next_id: 1,
        };
        d.sock.write_all(&out)?;
        while !d.codec.ready() {
            d.read_some()?;
        }
        if !d.replies.is_empty() {
            bail!(
                "codec produced replies during its handshake: {:?}",
                d.replies
            );
        }
        Ok(d)
    }

    fn read_some(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self
            .sock
            .read(&mut chunk)
            .context("reading from the peer")?;
        if n == 0 {
            bail!("peer closed the connection");
        }
        self.inbuf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let used = self
            .codec
            .decode(&self.inbuf, &mut self.replies, &mut out)?;
        self.inbuf.drain(..used);
        if !out.is_empty() {
            self.sock.write_all(&out)?;
        }
        Ok(())
    }

    /// Sends `op` and waits for its outcome.
    pub(crate) fn call(&mut self, op: Op) -> Result<Outcome> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        self.codec.encode(id, &op, &mut out)?;
        self.sock.write_all(&out)?;
        loop {
            if let Some(i) = self.replies.iter().position(|(rid, _)| *rid == id) {
                let (_, outcome) = self.replies.remove(i);
                if !self.replies.is_empty() {
                    bail!("unexpected replies {:?}", self.replies);
                }
                return Ok(outcome);
            }
            self.read_some()?;
        }
    }

    /// Sends all `ops` at once (pipelined) and returns their outcomes in
    /// the order of `ops`.
    pub(crate) fn pipeline(&mut self, ops: &[Op]) -> Result<Vec<Outcome>> {
        let first = self.next_id;
        let mut out = Vec::new();
        for op in ops {
            self.codec.encode(self.next_id, op, &mut out)?;
            self.next_id += 1;
        }
        self.sock.write_all(&out)?;
        while self.replies.len() < ops.len() {
            self.read_some()?;
        }
        let mut got = std::mem::take(&mut self.replies);
        got.sort_by_key(|(id, _)| *id);
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        let want_ids: Vec<u64> = (first..self.next_id).collect();
        assert_eq!(ids, want_ids, "each id answered exactly once");
        Ok(got.into_iter().map(|(_, o)| o).collect())
    }

    pub(crate) fn codec(&self) -> &C {
        &self.codec
    }
}

/// Operations pipelined on one connection by the live tests: enough bytes
/// to exceed HTTP/2's default 65,535-byte windows.
const PIPELINE_DEPTH: usize = 3_000;

pub(crate) fn live_cfg(ttl_ms: u32) -> CodecConfig {
    CodecConfig {
        ttl_ms,
        tenant: "bench".into(),
        echo_size: 0,
        secret: None,
    }
}

/// Starts `kind` on CPU 0, or prints why the test is skipped.
pub(crate) fn start_or_skip(kind: PeerKind) -> Option<Peer> {
    match Peer::start(kind, 0) {
        Ok(p) => Some(p),
        Err(e @ PeerError::Missing { .. }) => {
            eprintln!("SKIP live {kind:?} test: {e}");
            None
        }
        Err(e) => panic!("starting {kind:?}: {e}"),
    }
}

/// The scripted sequence every peer must pass: acquire → granted; another
/// holder on another connection → busy; check, renew → done; release →
/// done; check after release → stale; then the other connection gets it.
pub(crate) fn scripted_sequence<C: Codec>(
    peer: &Peer,
    mut make: impl FnMut() -> C,
) -> Result<Held> {
    let mut a = Driver::connect(peer, make())?;
    let mut b = Driver::connect(peer, make())?;
    let resource = 17;
    let Outcome::Granted(held) = a.call(Op::Acquire {
        resource,
        holder: 1001,
    })?
    else {
        bail!("first acquire was not granted");
    };
    assert_eq!(
        b.call(Op::Acquire {
            resource,
            holder: 2002
        })?,
        Outcome::Busy
    );
    assert_eq!(a.call(Op::Check { resource, held })?, Outcome::Done);
    assert_eq!(a.call(Op::Renew { resource, held })?, Outcome::Done);
    assert_eq!(a.call(Op::Check { resource, held })?, Outcome::Done);
    assert_eq!(a.call(Op::Release { resource, held })?, Outcome::Done);
    assert_eq!(a.call(Op::Check { resource, held })?, Outcome::Stale);
    let Outcome::Granted(held_b) = b.call(Op::Acquire {
        resource,
        holder: 2003,
    })?
    else {
        bail!("acquire after release was not granted");
    };
    // The first holder's grant is no longer current.
    assert_eq!(a.call(Op::Check { resource, held })?, Outcome::Stale);
    assert_eq!(
        b.call(Op::Check {
            resource,
            held: held_b
        })?,
        Outcome::Done
    );
    // Pipelined: several operations in flight on one connection.
    let got = a.pipeline(&[
        Op::Acquire {
            resource: 30,
            holder: 3001,
        },
        Op::Acquire {
            resource: 31,
            holder: 3002,
        },
        Op::Acquire {
            resource,
            holder: 3003,
        },
        Op::Check {
            resource,
            held: held_b,
        },
    ])?;
    assert!(matches!(got[0], Outcome::Granted(_)), "{got:?}");
    assert!(matches!(got[1], Outcome::Granted(_)), "{got:?}");
    assert_eq!(got[2], Outcome::Busy);
    assert_eq!(got[3], Outcome::Done);
    // Many in flight at once (flow control, HPACK state, xid and FIFO
    // bookkeeping under load).
    let many: Vec<Op> = (0..PIPELINE_DEPTH)
        .map(|i| match i % 3 {
            0 => Op::Renew {
                resource,
                held: held_b,
            },
            _ => Op::Check {
                resource,
                held: held_b,
            },
        })
        .collect();
    let got = b.pipeline(&many)?;
    assert!(got.iter().all(|o| *o == Outcome::Done), "{got:?}");
    assert_eq!(
        b.call(Op::Release {
            resource,
            held: held_b
        })?,
        Outcome::Done
    );
    Ok(held_b)
}

#[test]
fn live_redis_scripted_sequence() {
    let Some(peer) = start_or_skip(PeerKind::Redis) else {
        return;
    };
    let cfg = live_cfg(5_000);
    scripted_sequence(&peer, || super::redis::RedisCodec::new(&cfg)).unwrap();
}

#[test]
fn live_zookeeper_scripted_sequence() {
    let Some(peer) = start_or_skip(PeerKind::ZooKeeper) else {
        return;
    };
    // 6 s is inside ZooKeeper's [4 s, 40 s] clamp at tickTime 2000.
    let cfg = live_cfg(6_000);
    let held = scripted_sequence(&peer, || super::zk::ZkCodec::new(&cfg).unwrap()).unwrap();
    eprintln!("zookeeper: second holder token (czxid) {:#x}", held.token);
    assert!(held.token > 0, "czxid is the fencing token");
    // The server clamps the session timeout to [2, 20] × tickTime.
    let short = Driver::connect(&peer, super::zk::ZkCodec::new(&live_cfg(500)).unwrap()).unwrap();
    assert_eq!(short.codec().session_timeout_ms(), Some(4_000));
}

#[test]
fn dropping_a_peer_stops_it_and_removes_its_directory() {
    let Some(peer) = start_or_skip(PeerKind::Redis) else {
        return;
    };
    let pid = peer.pid();
    let dir = peer.dir().to_path_buf();
    let addr = peer.addr();
    assert!(dir.is_dir());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "Cpus_allowed_list:\t0"),
        "not pinned to CPU 0: {status}"
    );
    drop(peer);
    assert!(!dir.exists(), "{} still exists", dir.display());
    // Reaped, so no /proc entry (a zombie would still have one).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        TcpStream::connect(addr).is_err(),
        "something still listens on {addr}"
    );
}

#[test]
fn live_etcd_scripted_sequence() {
    let Some(peer) = start_or_skip(PeerKind::Etcd) else {
        return;
    };
    let cfg = live_cfg(5_000);
    let authority = peer.addr().to_string();
    let held = scripted_sequence(&peer, || super::etcd::EtcdCodec::new(&cfg, &authority)).unwrap();
    eprintln!(
        "etcd: second holder token (create revision) {}, lease {:#x}",
        held.token, held.aux
    );
    assert!(held.token > 0, "the create revision is the fencing token");
    let d = Driver::connect(&peer, super::etcd::EtcdCodec::new(&cfg, &authority)).unwrap();
    assert_eq!(d.codec().lease_ttl_s(), Some(5));
}

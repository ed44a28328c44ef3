//! The etcd codec: etcd v3's gRPC API over HTTP/2 cleartext (prior
//! knowledge), written by hand as a sans-IO state machine, locking the way
//! etcd's own `clientv3/concurrency` mutex does: a key bound to the
//! session's lease, created only if absent, with its create revision as
//! the fencing token.
//!
//! One connection is one session. Per operation, on key
//! `/palisade-bench/lock/<resource>`:
//! - start: HTTP/2 preface, SETTINGS (initial window 1 GiB, no push) and a
//!   connection WINDOW_UPDATE; `Lease/LeaseGrant` with TTL = ttl rounded up
//!   to whole seconds (etcd leases are in seconds; at least 1, and etcd
//!   raises it to its minimum TTL, 2 s with default timing —
//!   [`EtcdCodec::lease_ttl_s`] gives what etcd granted); and one
//!   `Lease/LeaseKeepAlive` bidi stream kept open for renewals. Ready once
//!   the lease is granted.
//! - Acquire: `KV/Txn` {compare create_revision(key) == 0; success
//!   put(key, holder, lease = session lease); failure range(key)} →
//!   succeeded → `Granted` {token = header.revision (the revision the put
//!   created: the key's create revision, the fencing token), aux = lease
//!   id}; not succeeded → `Busy`.
//! - Release: `KV/Txn` {compare create_revision(key) == token; success
//!   delete(key)} → succeeded → `Done`, else `Stale`.
//! - Renew: a `LeaseKeepAliveRequest` {ID = session lease} on the
//!   keepalive stream (answers come back in order on it) → TTL > 0 →
//!   `Done`, else `Stale`. It renews every key of the session.
//! - Check: `KV/Range` (key), linearizable (the default) →
//!   `kvs[0].create_revision == token` → `Done`, else `Stale`.
//!
//! The transport is [`http2`] (a sans-IO gRPC client connection over
//! HTTP/2 cleartext); the messages are encoded and decoded with
//! [`protobuf`], field numbers from etcd 3.4's `etcdserverpb/rpc.proto` and
//! `mvccpb/kv.proto`. This module maps the codec's operations onto calls
//! and the calls' answers onto outcomes.
//!
//! It never touches a socket or a clock.

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

mod http2;
mod protobuf;
#[cfg(test)]
mod tests;

use http2::{request_header_block, take_message, Connection, Event};
use protobuf as pb;

const PATH_TXN: &str = "/etcdserverpb.KV/Txn";
const PATH_RANGE: &str = "/etcdserverpb.KV/Range";
const PATH_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const PATH_KEEPALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// What a stream carries.
#[derive(Clone, Copy, Debug)]
enum StreamKind {
    Grant,
    KeepAlive,
    Acquire { id: u64 },
    Release { id: u64 },
    Check { id: u64, token: u64 },
}

/// One connection's etcd session.
pub(crate) struct EtcdCodec {
    lease_ttl_s: i64,
    granted_ttl_s: Option<i64>,
    lease: Option<i64>,
    started: bool,
    block_txn: Vec<u8>,
    block_range: Vec<u8>,
    block_grant: Vec<u8>,
    block_keepalive: Vec<u8>,
    conn: Connection<StreamKind>,
    keepalive_stream: u32,
    keepalive_ids: VecDeque<u64>,
    events: Vec<Event<StreamKind>>,
}

impl EtcdCodec {
    /// A codec for a connection to the etcd client URL at `authority`
    /// (host:port, sent as `:authority`).
    pub(crate) fn new(cfg: &CodecConfig, authority: &str) -> Self {
        assert!(cfg.ttl_ms > 0, "ttl must be positive");
        let lease_ttl_s = i64::from(cfg.ttl_ms.div_ceil(1000)).max(1);
        Self {
            lease_ttl_s,
            granted_ttl_s: None,
            lease: None,
            started: false,
            block_txn: request_header_block(PATH_TXN, authority),
            block_range: request_header_block(PATH_RANGE, authority),
            block_grant: request_header_block(PATH_GRANT, authority),
            block_keepalive: request_header_block(PATH_KEEPALIVE, authority),
            conn: Connection::new("etcd"),
            keepalive_stream: 0,
            keepalive_ids: VecDeque::new(),
            events: Vec::new(),
        }
    }

    /// The lease TTL etcd granted, in seconds, once ready.
    #[cfg_attr(not(test), allow(dead_code))] // used by the live tests
    pub(crate) fn lease_ttl_s(&self) -> Option<i64> {
        self.granted_ttl_s
    }

    /// The session lease id, once ready.
    #[cfg_attr(not(test), allow(dead_code))] // used by the live tests
    pub(crate) fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// Opens the stream of a call: its header block, then `message`.
    fn open_stream(
        &mut self,
        kind: StreamKind,
        message: Option<&[u8]>,
        end_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<u32> {
        let block = match kind {
            StreamKind::Grant => &self.block_grant,
            StreamKind::KeepAlive => &self.block_keepalive,
            StreamKind::Acquire { .. } | StreamKind::Release { .. } => &self.block_txn,
            StreamKind::Check { .. } => &self.block_range,
        };
        let streaming = matches!(kind, StreamKind::KeepAlive);
        self.conn
            .open_stream(kind, streaming, block, message, end_stream, out)
    }

    /// What a stream's event answers.
    fn on_event(
        &mut self,
        event: Event<StreamKind>,
        replies: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        match event {
            Event::Message {
                kind: StreamKind::KeepAlive,
                message,
            } => {
                let Some(id) = self.keepalive_ids.pop_front() else {
                    bail!("etcd sent a LeaseKeepAliveResponse nobody asked for");
                };
                replies.push((id, keepalive_outcome(&message)?));
                Ok(())
            }
            Event::Message { kind, .. } => {
                unreachable!("only the keepalive stream streams, not {kind:?}")
            }
            Event::Closed { kind, data } => self.finish_stream(kind, data, replies),
        }
    }

    /// A unary stream ended with grpc-status 0: its one message is the answer.
    fn finish_stream(
        &mut self,
        kind: StreamKind,
        mut data: Vec<u8>,
        replies: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        if let StreamKind::KeepAlive = kind {
            bail!("etcd closed the LeaseKeepAlive stream");
        }
        let Some(message) = take_message("etcd", &mut data)? else {
            bail!("etcd ended stream ({kind:?}) without a complete response message");
        };
        if !data.is_empty() {
            bail!("etcd sent more than one message on a unary stream ({kind:?})");
        }
        match kind {
            StreamKind::Grant => {
                let (lease, ttl) = lease_grant_response(&message)?;
                self.lease = Some(lease);
                self.granted_ttl_s = Some(ttl);
            }
            StreamKind::KeepAlive => unreachable!("handled above"),
            StreamKind::Acquire { id } => {
                let (succeeded, revision) = txn_response(&message)?;
                let outcome = if succeeded {
                    let token = u64::try_from(revision)
                        .ok()
                        .filter(|t| *t > 0)
                        .with_context(|| format!("etcd granted a lock at revision {revision}"))?;
                    let lease = self.lease.expect("operations are encoded only when ready");
                    Outcome::Granted(Held {
                        token,
                        aux: lease as u64,
                    })
                } else {
                    Outcome::Busy
                };
                replies.push((id, outcome));
            }
            StreamKind::Release { id } => {
                let (succeeded, _) = txn_response(&message)?;
                replies.push((
                    id,
                    if succeeded {
                        Outcome::Done
                    } else {
                        Outcome::Stale
                    },
                ));
            }
            StreamKind::Check { id, token } => {
                let current = range_create_revision(&message)?;
                let outcome = if current.is_some_and(|rev| u64::try_from(rev) == Ok(token)) {
                    Outcome::Done
                } else {
                    Outcome::Stale
                };
                replies.push((id, outcome));
            }
        }
        Ok(())
    }
}

fn key(resource: u64) -> Vec<u8> {
    format!("/palisade-bench/lock/{resource}").into_bytes()
}

impl Codec for EtcdCodec {
    fn start(&mut self, out: &mut Vec<u8>) -> Result<()> {
        assert!(!self.started, "start is called once");
        self.started = true;
        self.conn.start(out);
        let mut grant = Vec::new();
        pb::put_varint_field(&mut grant, 1, self.lease_ttl_s as u64); // TTL
        self.open_stream(StreamKind::Grant, Some(&grant), true, out)?;
        self.keepalive_stream = self.open_stream(StreamKind::KeepAlive, None, false, out)?;
        Ok(())
    }

    fn ready(&self) -> bool {
        self.lease.is_some()
    }

    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()> {
        let Some(lease) = self.lease else {
            bail!("etcd codec: operation encoded before the session lease was granted");
        };
        match *op {
            Op::Acquire { resource, holder } => {
                assert!(holder != 0, "holder ids are never 0");
                let k = key(resource);
                let mut put = Vec::new();
                pb::put_bytes_field(&mut put, 1, &k);
                pb::put_bytes_field(&mut put, 2, holder.to_string().as_bytes());
                pb::put_varint_field(&mut put, 3, lease as u64);
                let mut range = Vec::new();
                pb::put_bytes_field(&mut range, 1, &k);
                let mut txn = Vec::new();
                pb::put_bytes_field(&mut txn, 1, &compare_create_revision(&k, 0));
                pb::put_bytes_field(&mut txn, 2, &pb::message(2, &put)); // RequestOp.request_put
                pb::put_bytes_field(&mut txn, 3, &pb::message(1, &range)); // RequestOp.request_range
                self.open_stream(StreamKind::Acquire { id }, Some(&txn), true, out)?;
            }
            Op::Release { resource, held } => {
                let k = key(resource);
                let token = i64::try_from(held.token).context("etcd fencing token exceeds i64")?;
                let mut delete = Vec::new();
                pb::put_bytes_field(&mut delete, 1, &k);
                let mut txn = Vec::new();
                pb::put_bytes_field(&mut txn, 1, &compare_create_revision(&k, token));
                pb::put_bytes_field(&mut txn, 2, &pb::message(3, &delete)); // request_delete_range
                self.open_stream(StreamKind::Release { id }, Some(&txn), true, out)?;
            }
            Op::Renew { .. } => {
                let mut req = Vec::new();
                pb::put_varint_field(&mut req, 1, lease as u64); // ID
                self.keepalive_ids.push_back(id);
                self.conn
                    .send_message(self.keepalive_stream, &req, false, out)?;
            }
            Op::Check { resource, held } => {
                let mut range = Vec::new();
                pb::put_bytes_field(&mut range, 1, &key(resource));
                self.open_stream(
                    StreamKind::Check {
                        id,
                        token: held.token,
                    },
                    Some(&range),
                    true,
                    out,
                )?;
            }
        }
        Ok(())
    }

    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        if !self.started {
            bail!("etcd sent bytes before the codec started");
        }
        let mut at = 0;
        while let Some(used) = self.conn.next_frame(&input[at..], &mut self.events, out)? {
            at += used;
            let mut events = std::mem::take(&mut self.events);
            for event in events.drain(..) {
                self.on_event(event, replies)?;
            }
            self.events = events;
        }
        Ok(at)
    }
}

/// Compare{result EQUAL, target CREATE, key, create_revision = rev}.
fn compare_create_revision(key: &[u8], rev: i64) -> Vec<u8> {
    let mut c = Vec::new();
    pb::put_varint_field(&mut c, 1, 0); // result: EQUAL
    pb::put_varint_field(&mut c, 2, 1); // target: CREATE
    pb::put_bytes_field(&mut c, 3, key);
    pb::put_varint_field(&mut c, 5, rev as u64); // target_union.create_revision, always present
    c
}

/// LeaseGrantResponse{header=1, ID=2, TTL=3, error=4} → (ID, TTL).
fn lease_grant_response(m: &[u8]) -> Result<(i64, i64)> {
    let (mut id, mut ttl, mut error) = (0i64, 0i64, String::new());
    for field in pb::Fields::new(m) {
        match field? {
            (2, pb::Value::Varint(v)) => id = v as i64,
            (3, pb::Value::Varint(v)) => ttl = v as i64,
            (4, pb::Value::Len(b)) => error = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    if !error.is_empty() || id == 0 || ttl <= 0 {
        bail!("etcd refused the lease grant (ID {id}, TTL {ttl}, error {error:?})");
    }
    Ok((id, ttl))
}

/// LeaseKeepAliveResponse{header=1, ID=2, TTL=3}: TTL > 0 → Done.
fn keepalive_outcome(m: &[u8]) -> Result<Outcome> {
    let mut ttl = 0i64;
    for field in pb::Fields::new(m) {
        if let (3, pb::Value::Varint(v)) = field? {
            ttl = v as i64;
        }
    }
    Ok(if ttl > 0 {
        Outcome::Done
    } else {
        Outcome::Stale
    })
}

/// TxnResponse{header=1 (ResponseHeader.revision=3), succeeded=2}.
fn txn_response(m: &[u8]) -> Result<(bool, i64)> {
    let (mut succeeded, mut revision) = (false, 0i64);
    for field in pb::Fields::new(m) {
        match field? {
            (1, pb::Value::Len(header)) => {
                for f in pb::Fields::new(header) {
                    if let (3, pb::Value::Varint(v)) = f? {
                        revision = v as i64;
                    }
                }
            }
            (2, pb::Value::Varint(v)) => succeeded = v != 0,
            _ => {}
        }
    }
    Ok((succeeded, revision))
}

/// RangeResponse{kvs=2 (KeyValue.create_revision=2)}: the first key's
/// create revision, if there is a key.
fn range_create_revision(m: &[u8]) -> Result<Option<i64>> {
    for field in pb::Fields::new(m) {
        if let (2, pb::Value::Len(kv)) = field? {
            let mut rev = 0i64;
            for f in pb::Fields::new(kv) {
                if let (2, pb::Value::Varint(v)) = f? {
                    rev = v as i64;
                }
            }
            return Ok(Some(rev));
        }
    }
    Ok(None)
}

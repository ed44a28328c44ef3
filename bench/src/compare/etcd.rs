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
//!   kvs[0].create_revision == token → `Done`, else `Stale`.
//!
//! HTTP/2: requests are HEADERS (HPACK: static-table indexes and literals
//! without indexing, no Huffman) + DATA (gRPC 5-byte prefix + protobuf)
//! with END_STREAM on odd stream ids; SETTINGS and PING are acknowledged;
//! flow-control credit is returned as data arrives and our own DATA waits
//! for the server's window; CONTINUATION and padding are handled; GOAWAY,
//! RST_STREAM, a non-200 status or a grpc-status other than 0 are `Err`s
//! naming them. Responses are HPACK-decoded with `loona-hpack` (Huffman
//! and the dynamic table). Protobuf is encoded and decoded by hand; field
//! numbers are etcd 3.4's `etcdserverpb/rpc.proto` and `mvccpb/kv.proto`.
//!
//! It never touches a socket or a clock.

use std::collections::{HashMap, VecDeque};

use anyhow::{bail, Context, Result};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// Our SETTINGS_MAX_FRAME_SIZE: the default; we announce no other.
const FRAME_LEN_MAX: usize = 16_384;
/// The receive window we announce for the connection and every stream.
const RECV_WINDOW: u32 = 1 << 30;
/// HTTP/2's initial window before SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const WINDOW_MAX: i64 = (1 << 31) - 1;
/// Largest gRPC message we accept; our responses are a few hundred bytes.
const MESSAGE_LEN_MAX: usize = 1 << 20;
/// Bytes of header block we accept across CONTINUATIONs.
const HEADER_BLOCK_MAX: usize = 1 << 16;

mod frame {
    pub(super) const DATA: u8 = 0;
    pub(super) const HEADERS: u8 = 1;
    pub(super) const RST_STREAM: u8 = 3;
    pub(super) const SETTINGS: u8 = 4;
    pub(super) const PUSH_PROMISE: u8 = 5;
    pub(super) const PING: u8 = 6;
    pub(super) const GOAWAY: u8 = 7;
    pub(super) const WINDOW_UPDATE: u8 = 8;
    pub(super) const CONTINUATION: u8 = 9;
}
mod flag {
    pub(super) const END_STREAM: u8 = 0x1;
    pub(super) const ACK: u8 = 0x1;
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const PADDED: u8 = 0x8;
    pub(super) const PRIORITY: u8 = 0x20;
}
mod setting {
    pub(super) const ENABLE_PUSH: u16 = 0x2;
    pub(super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(super) const MAX_FRAME_SIZE: u16 = 0x5;
}

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

struct Stream {
    kind: StreamKind,
    /// How much DATA we may still send on it.
    send_window: i64,
    /// DATA received and not yet credited back.
    recv_unacked: u32,
    /// Received DATA not yet parsed into gRPC messages.
    data: Vec<u8>,
    got_headers: bool,
}

/// A DATA frame waiting for flow-control window.
struct QueuedData {
    stream: u32,
    payload: Vec<u8>,
    end_stream: bool,
}

/// A header block arriving in HEADERS + CONTINUATION frames.
struct HeaderBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// One connection's etcd session.
pub(crate) struct EtcdCodec {
    lease_ttl_s: i64,
    granted_ttl_s: Option<i64>,
    lease: Option<i64>,
    started: bool,
    got_server_settings: bool,
    block_txn: Vec<u8>,
    block_range: Vec<u8>,
    block_grant: Vec<u8>,
    block_keepalive: Vec<u8>,
    hpack: loona_hpack::Decoder<'static>,
    next_stream: u32,
    streams: HashMap<u32, Stream>,
    keepalive_stream: u32,
    keepalive_ids: VecDeque<u64>,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_streams: u32,
    queued: VecDeque<QueuedData>,
    conn_recv_unacked: u32,
    /// Credit is returned once this much is unacknowledged (half the
    /// window, so the server never stalls; smaller in tests).
    recv_credit_threshold: u32,
    partial_block: Option<HeaderBlock>,
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
            got_server_settings: false,
            block_txn: request_header_block(PATH_TXN, authority),
            block_range: request_header_block(PATH_RANGE, authority),
            block_grant: request_header_block(PATH_GRANT, authority),
            block_keepalive: request_header_block(PATH_KEEPALIVE, authority),
            hpack: loona_hpack::Decoder::new(),
            next_stream: 1,
            streams: HashMap::new(),
            keepalive_stream: 0,
            keepalive_ids: VecDeque::new(),
            conn_send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_streams: u32::MAX,
            queued: VecDeque::new(),
            conn_recv_unacked: 0,
            recv_credit_threshold: RECV_WINDOW / 2,
            partial_block: None,
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

    /// Opens a stream: HEADERS now, then `message` (if any) as one gRPC
    /// message in DATA, sent when the window allows.
    fn open_stream(
        &mut self,
        kind: StreamKind,
        message: Option<&[u8]>,
        end_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<u32> {
        let id = self.next_stream;
        if id > WINDOW_MAX as u32 {
            bail!("etcd connection used up its HTTP/2 stream ids; reconnect");
        }
        if self.streams.len() >= self.peer_max_streams as usize {
            bail!(
                "etcd allows {} concurrent streams per connection and all are in use",
                self.peer_max_streams
            );
        }
        self.next_stream += 2;
        let block = match kind {
            StreamKind::Grant => &self.block_grant,
            StreamKind::KeepAlive => &self.block_keepalive,
            StreamKind::Acquire { .. } | StreamKind::Release { .. } => &self.block_txn,
            StreamKind::Check { .. } => &self.block_range,
        };
        let flags = if message.is_none() && end_stream {
            flag::END_HEADERS | flag::END_STREAM
        } else {
            flag::END_HEADERS
        };
        put_frame(out, frame::HEADERS, flags, id, block);
        self.streams.insert(
            id,
            Stream {
                kind,
                send_window: self.peer_initial_window,
                recv_unacked: 0,
                data: Vec::new(),
                got_headers: false,
            },
        );
        if let Some(message) = message {
            self.send_message(id, message, end_stream, out)?;
        }
        Ok(id)
    }

    /// Queues one gRPC message on `stream` and sends what the windows allow.
    fn send_message(
        &mut self,
        stream: u32,
        message: &[u8],
        end_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let len = u32::try_from(message.len()).context("gRPC message too long")?;
        let mut payload = Vec::with_capacity(5 + message.len());
        payload.push(0); // not compressed
        payload.extend_from_slice(&len.to_be_bytes());
        payload.extend_from_slice(message);
        assert!(
            payload.len() <= FRAME_LEN_MAX,
            "our requests fit one DATA frame"
        );
        self.queued.push_back(QueuedData {
            stream,
            payload,
            end_stream,
        });
        self.flush_queued(out);
        Ok(())
    }

    /// Sends queued DATA, in order, while both windows allow.
    fn flush_queued(&mut self, out: &mut Vec<u8>) {
        while let Some(q) = self.queued.front() {
            let len = q.payload.len() as i64;
            let stream_window = self
                .streams
                .get(&q.stream)
                .map_or(i64::MAX, |s| s.send_window);
            if len > self.conn_send_window || len > stream_window {
                return;
            }
            let q = self.queued.pop_front().expect("front exists");
            self.conn_send_window -= len;
            if let Some(s) = self.streams.get_mut(&q.stream) {
                s.send_window -= len;
            }
            let flags = if q.end_stream { flag::END_STREAM } else { 0 };
            put_frame(out, frame::DATA, flags, q.stream, &q.payload);
        }
    }

    fn handle_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if !self.got_server_settings {
            if kind != frame::SETTINGS || flags & flag::ACK != 0 {
                bail!("etcd did not start with SETTINGS (got frame type {kind}): not an HTTP/2 server?");
            }
            self.got_server_settings = true;
        }
        if let Some(partial) = &self.partial_block {
            if kind != frame::CONTINUATION || stream != partial.stream {
                bail!("etcd sent frame type {kind} on stream {stream} inside a header block of stream {}", partial.stream);
            }
        }
        match kind {
            frame::DATA => self.handle_data(flags, stream, payload, replies, out),
            frame::HEADERS => {
                if stream == 0 {
                    bail!("etcd sent HEADERS on stream 0");
                }
                let mut body = unpad(flags, payload, "HEADERS")?;
                if flags & flag::PRIORITY != 0 {
                    body = body
                        .get(5..)
                        .context("etcd sent a HEADERS frame too short for its priority")?;
                }
                let block = HeaderBlock {
                    stream,
                    end_stream: flags & flag::END_STREAM != 0,
                    block: body.to_vec(),
                };
                if flags & flag::END_HEADERS != 0 {
                    self.handle_header_block(block, replies)
                } else {
                    self.partial_block = Some(block);
                    Ok(())
                }
            }
            frame::CONTINUATION => {
                let Some(mut block) = self.partial_block.take() else {
                    bail!("etcd sent CONTINUATION on stream {stream} outside a header block");
                };
                block.block.extend_from_slice(payload);
                if block.block.len() > HEADER_BLOCK_MAX {
                    bail!("etcd sent a header block over {HEADER_BLOCK_MAX} bytes");
                }
                if flags & flag::END_HEADERS != 0 {
                    self.handle_header_block(block, replies)
                } else {
                    self.partial_block = Some(block);
                    Ok(())
                }
            }
            frame::RST_STREAM => {
                let code = be_u32(payload).context("etcd sent a short RST_STREAM")?;
                let what = self.streams.get(&stream).map(|s| s.kind);
                bail!("etcd reset stream {stream} ({what:?}) with HTTP/2 error code {code:#x}");
            }
            frame::SETTINGS => self.handle_settings(flags, stream, payload, out),
            frame::PUSH_PROMISE => bail!("etcd sent PUSH_PROMISE although we disabled push"),
            frame::PING => {
                if payload.len() != 8 || stream != 0 {
                    bail!(
                        "etcd sent a malformed PING ({} bytes, stream {stream})",
                        payload.len()
                    );
                }
                if flags & flag::ACK == 0 {
                    put_frame(out, frame::PING, flag::ACK, 0, payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                let last = be_u32(payload).context("etcd sent a short GOAWAY")? & 0x7fff_ffff;
                let code =
                    be_u32(payload.get(4..).unwrap_or(&[])).context("etcd sent a short GOAWAY")?;
                let debug = String::from_utf8_lossy(payload.get(8..).unwrap_or(&[]));
                bail!("etcd sent GOAWAY (last stream {last}, error code {code:#x}, {debug:?})");
            }
            frame::WINDOW_UPDATE => {
                let inc = i64::from(
                    be_u32(payload).context("etcd sent a short WINDOW_UPDATE")? & 0x7fff_ffff,
                );
                if inc == 0 {
                    bail!("etcd sent a WINDOW_UPDATE of 0 on stream {stream}");
                }
                let window = if stream == 0 {
                    Some(&mut self.conn_send_window)
                } else {
                    self.streams.get_mut(&stream).map(|s| &mut s.send_window)
                };
                if let Some(w) = window {
                    *w += inc;
                    if *w > WINDOW_MAX {
                        bail!("etcd's WINDOW_UPDATE overflowed the window of stream {stream}");
                    }
                }
                self.flush_queued(out);
                Ok(())
            }
            // PRIORITY and unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn handle_settings(
        &mut self,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if stream != 0 {
            bail!("etcd sent SETTINGS on stream {stream}");
        }
        if flags & flag::ACK != 0 {
            if !payload.is_empty() {
                bail!("etcd sent a SETTINGS ACK with a payload");
            }
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            bail!(
                "etcd sent SETTINGS of {} bytes, not a multiple of 6",
                payload.len()
            );
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::MAX_CONCURRENT_STREAMS => self.peer_max_streams = value,
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > WINDOW_MAX {
                        bail!("etcd set an initial window of {value}");
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
                setting::MAX_FRAME_SIZE if !(16_384..=16_777_215).contains(&value) => {
                    bail!("etcd set a max frame size of {value}");
                }
                // Header table size limits our encoder's dynamic table, which
                // we do not use; the rest do not concern a client.
                _ => {}
            }
        }
        put_frame(out, frame::SETTINGS, flag::ACK, 0, &[]);
        self.flush_queued(out);
        Ok(())
    }

    fn handle_data(
        &mut self,
        flags: u8,
        stream: u32,
        payload: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if stream == 0 {
            bail!("etcd sent DATA on stream 0");
        }
        // All of the frame counts against flow control, padding included.
        let len = payload.len() as u32; // at most FRAME_LEN_MAX
        self.conn_recv_unacked += len;
        if self.conn_recv_unacked >= self.recv_credit_threshold {
            put_window_update(out, 0, self.conn_recv_unacked);
            self.conn_recv_unacked = 0;
        }
        let body = unpad(flags, payload, "DATA")?;
        let end_stream = flags & flag::END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&stream) else {
            bail!("etcd sent DATA on stream {stream}, which is not open");
        };
        if !s.got_headers {
            bail!("etcd sent DATA on stream {stream} before its response headers");
        }
        s.data.extend_from_slice(body);
        s.recv_unacked += len;
        if !end_stream && s.recv_unacked >= self.recv_credit_threshold {
            put_window_update(out, stream, s.recv_unacked);
            s.recv_unacked = 0;
        }
        if end_stream {
            bail!(
                "etcd ended stream {stream} ({:?}) without trailers (no grpc-status)",
                s.kind
            );
        }
        if matches!(s.kind, StreamKind::KeepAlive) {
            while let Some(message) = take_message(&mut s.data)? {
                let Some(id) = self.keepalive_ids.pop_front() else {
                    bail!("etcd sent a LeaseKeepAliveResponse nobody asked for");
                };
                replies.push((id, keepalive_outcome(&message)?));
            }
        }
        Ok(())
    }

    fn handle_header_block(
        &mut self,
        block: HeaderBlock,
        replies: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        // Decode every block, even for unknown streams, to keep the HPACK
        // dynamic table in step with the server's.
        let mut status = None;
        let mut grpc_status = None;
        let mut grpc_message = String::new();
        let mut content_type = None;
        self.hpack
            .decode_with_cb(&block.block, |name, value| match &*name {
                b":status" => status = Some(String::from_utf8_lossy(&value).into_owned()),
                b"grpc-status" => grpc_status = Some(String::from_utf8_lossy(&value).into_owned()),
                b"grpc-message" => grpc_message = String::from_utf8_lossy(&value).into_owned(),
                b"content-type" => {
                    content_type = Some(String::from_utf8_lossy(&value).into_owned())
                }
                _ => {}
            })
            .map_err(|e| anyhow::anyhow!("etcd sent a header block HPACK cannot decode: {e:?}"))?;
        let stream = block.stream;
        let Some(s) = self.streams.get_mut(&stream) else {
            bail!("etcd sent headers on stream {stream}, which is not open");
        };
        if !s.got_headers {
            s.got_headers = true;
            match status.as_deref() {
                Some("200") => {}
                other => bail!(
                    "etcd answered stream {stream} ({:?}) with :status {other:?}",
                    s.kind
                ),
            }
            if let Some(ct) = &content_type {
                if !ct.starts_with("application/grpc") {
                    bail!("etcd answered stream {stream} with content-type {ct:?}");
                }
            }
            if grpc_status.is_none() {
                if block.end_stream {
                    bail!("etcd ended stream {stream} without grpc-status");
                }
                return Ok(()); // response headers; DATA and trailers follow
            }
        }
        // Trailers (or a trailers-only response).
        if !block.end_stream {
            bail!("etcd sent a second header block on stream {stream} without END_STREAM");
        }
        let s = self.streams.remove(&stream).expect("looked up above");
        match grpc_status.as_deref() {
            Some("0") => {}
            Some(code) => bail!(
                "etcd answered stream {stream} ({:?}) with grpc-status {code}: {grpc_message}",
                s.kind
            ),
            None => bail!(
                "etcd ended stream {stream} ({:?}) without grpc-status",
                s.kind
            ),
        }
        self.finish_stream(s, replies)
    }

    /// A unary stream ended with grpc-status 0: its one message is the answer.
    fn finish_stream(&mut self, mut s: Stream, replies: &mut Vec<(u64, Outcome)>) -> Result<()> {
        if let StreamKind::KeepAlive = s.kind {
            bail!("etcd closed the LeaseKeepAlive stream");
        }
        let Some(message) = take_message(&mut s.data)? else {
            bail!(
                "etcd ended stream ({:?}) without a complete response message",
                s.kind
            );
        };
        if !s.data.is_empty() {
            bail!(
                "etcd sent more than one message on a unary stream ({:?})",
                s.kind
            );
        }
        match s.kind {
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
        out.extend_from_slice(PREFACE);
        let mut settings = Vec::new();
        for (id, value) in [
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, RECV_WINDOW),
        ] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        put_frame(out, frame::SETTINGS, 0, 0, &settings);
        // The connection window is not set by SETTINGS: raise it to match.
        put_window_update(out, 0, RECV_WINDOW - DEFAULT_WINDOW as u32);
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
                self.send_message(self.keepalive_stream, &req, false, out)?;
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
        while let Some(header) = input.get(at..at + FRAME_HEADER_LEN) {
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if len > FRAME_LEN_MAX {
                bail!("etcd sent a frame of {len} bytes, over our max frame size {FRAME_LEN_MAX}");
            }
            let Some(payload) = input.get(at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len)
            else {
                break;
            };
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            self.handle_frame(header[3], header[4], stream, payload, replies, out)?;
            at += FRAME_HEADER_LEN + len;
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

/// Takes one complete gRPC message off the front of `data`.
fn take_message(data: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let Some(prefix) = data.get(..5) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        bail!(
            "etcd sent a compressed gRPC message (flag {}) we did not ask for",
            prefix[0]
        );
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MESSAGE_LEN_MAX {
        bail!("etcd sent a gRPC message of {len} bytes");
    }
    if data.len() < 5 + len {
        return Ok(None);
    }
    let message = data[5..5 + len].to_vec();
    data.drain(..5 + len);
    Ok(Some(message))
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

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Strips the padding of a PADDED frame.
fn unpad<'a>(flags: u8, payload: &'a [u8], what: &str) -> Result<&'a [u8]> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        bail!("etcd sent a padded {what} frame with no pad length");
    };
    let Some(end) = rest.len().checked_sub(usize::from(pad)) else {
        bail!("etcd sent a {what} frame whose padding ({pad}) exceeds it");
    };
    Ok(&rest[..end])
}

fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    assert!(
        payload.len() <= FRAME_LEN_MAX,
        "frame within the default max size"
    );
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn put_window_update(out: &mut Vec<u8>, stream: u32, inc: u32) {
    assert!(
        inc > 0 && inc <= WINDOW_MAX as u32,
        "valid window increment"
    );
    put_frame(out, frame::WINDOW_UPDATE, 0, stream, &inc.to_be_bytes());
}

/// HPACK integer with an `n`-bit prefix, the first byte's high bits `high`.
fn hpack_int(out: &mut Vec<u8>, n: u8, high: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// The request header block for a gRPC call to `path`: static-table
/// indexes and literals without indexing, so it is the same every time.
fn request_header_block(path: &str, authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_int(&mut b, 7, 0x80, 3); // :method: POST (static 3)
    hpack_int(&mut b, 7, 0x80, 6); // :scheme: http (static 6)
    hpack_int(&mut b, 4, 0x00, 4); // :path (static name 4), literal value
    hpack_str(&mut b, path.as_bytes());
    hpack_int(&mut b, 4, 0x00, 1); // :authority (static name 1)
    hpack_str(&mut b, authority.as_bytes());
    hpack_int(&mut b, 4, 0x00, 31); // content-type (static name 31)
    hpack_str(&mut b, b"application/grpc");
    b.push(0x00); // te: new name, literal value
    hpack_str(&mut b, b"te");
    hpack_str(&mut b, b"trailers");
    b
}

/// The few protobuf wire-format pieces the etcd messages need.
mod pb {
    use anyhow::{bail, Result};

    pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field (int64 values are cast: negatives take 10 bytes).
    pub(super) fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        put_varint(out, u64::from(field) << 3);
        put_varint(out, v);
    }

    /// A length-delimited field (bytes, string or embedded message).
    pub(super) fn put_bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        put_varint(out, u64::from(field) << 3 | 2);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A message holding one embedded message in `field`.
    pub(super) fn message(field: u32, inner: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        put_bytes_field(&mut m, field, inner);
        m
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Value<'a> {
        Varint(u64),
        Len(&'a [u8]),
        Fixed64,
        Fixed32,
    }

    /// Iterates over the fields of a message.
    pub(super) struct Fields<'a> {
        buf: &'a [u8],
        at: usize,
        failed: bool,
    }

    impl<'a> Fields<'a> {
        pub(super) fn new(buf: &'a [u8]) -> Self {
            Self {
                buf,
                at: 0,
                failed: false,
            }
        }

        fn varint(&mut self) -> Result<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let Some(&b) = self.buf.get(self.at) else {
                    bail!("protobuf message ends inside a varint");
                };
                self.at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            bail!("protobuf varint longer than 10 bytes")
        }

        fn skip(&mut self, n: usize) -> Result<&'a [u8]> {
            let Some(s) = self.buf.get(self.at..self.at.saturating_add(n)) else {
                bail!("protobuf field of {n} bytes runs past its message");
            };
            self.at += n;
            Ok(s)
        }

        fn field(&mut self) -> Result<(u32, Value<'a>)> {
            let key = self.varint()?;
            let field = u32::try_from(key >> 3)
                .map_err(|_| anyhow::anyhow!("protobuf field number {}", key >> 3))?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.skip(8)?;
                    Value::Fixed64
                }
                2 => {
                    let len = usize::try_from(self.varint()?)?;
                    Value::Len(self.skip(len)?)
                }
                5 => {
                    self.skip(4)?;
                    Value::Fixed32
                }
                wt => bail!("protobuf wire type {wt} (field {field}) is not supported"),
            };
            Ok((field, value))
        }
    }

    impl<'a> Iterator for Fields<'a> {
        type Item = Result<(u32, Value<'a>)>;
        fn next(&mut self) -> Option<Self::Item> {
            if self.failed || self.at >= self.buf.len() {
                return None;
            }
            let r = self.field();
            self.failed = r.is_err();
            Some(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::peer_tests::decode_every_split;

    const LEASE: i64 = 0x694d_1a2b_3c4d;

    fn cfg(ttl_ms: u32) -> CodecConfig {
        CodecConfig {
            ttl_ms,
            tenant: "t".into(),
            echo_size: 0,
            secret: None,
        }
    }

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_frame(&mut v, kind, flags, stream, payload);
        v
    }

    /// Splits a byte string into frames: (type, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    fn grpc(message: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    /// `:status 200` and content-type added to the dynamic table (entry 62).
    const FIRST_RESPONSE_HEADERS: &[u8] = &[
        0x88, 0x5f, 16, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/',
        b'g', b'r', b'p', b'c',
    ];
    /// `:status 200` and content-type from the dynamic table.
    const RESPONSE_HEADERS: &[u8] = &[0x88, 0xbe];

    fn trailers(status: &str, message: &str) -> Vec<u8> {
        let mut b = vec![0x00];
        hpack_str(&mut b, b"grpc-status");
        hpack_str(&mut b, status.as_bytes());
        if !message.is_empty() {
            b.push(0x00);
            hpack_str(&mut b, b"grpc-message");
            hpack_str(&mut b, message.as_bytes());
        }
        b
    }

    /// A complete unary response on `stream`.
    fn unary(stream: u32, headers: &[u8], message: &[u8]) -> Vec<u8> {
        [
            frame_bytes(frame::HEADERS, flag::END_HEADERS, stream, headers),
            frame_bytes(frame::DATA, 0, stream, &grpc(message)),
            frame_bytes(
                frame::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                stream,
                &trailers("0", ""),
            ),
        ]
        .concat()
    }

    fn header(revision: i64) -> Vec<u8> {
        let mut h = Vec::new();
        pb::put_varint_field(&mut h, 1, 0xc1);
        pb::put_varint_field(&mut h, 3, revision as u64);
        h
    }

    fn txn_reply(succeeded: bool, revision: i64) -> Vec<u8> {
        let mut m = Vec::new();
        pb::put_bytes_field(&mut m, 1, &header(revision));
        if succeeded {
            pb::put_varint_field(&mut m, 2, 1);
        }
        m
    }

    fn range_reply(create_revision: Option<i64>) -> Vec<u8> {
        let mut m = Vec::new();
        pb::put_bytes_field(&mut m, 1, &header(50));
        if let Some(rev) = create_revision {
            let mut kv = Vec::new();
            pb::put_bytes_field(&mut kv, 1, b"/palisade-bench/lock/1");
            pb::put_varint_field(&mut kv, 2, rev as u64);
            pb::put_varint_field(&mut kv, 3, rev as u64);
            pb::put_bytes_field(&mut kv, 5, b"77");
            pb::put_bytes_field(&mut m, 2, &kv);
            pb::put_varint_field(&mut m, 4, 1);
        }
        m
    }

    fn keepalive_reply(ttl: i64) -> Vec<u8> {
        let mut m = Vec::new();
        pb::put_bytes_field(&mut m, 1, &header(50));
        pb::put_varint_field(&mut m, 2, LEASE as u64);
        pb::put_varint_field(&mut m, 3, ttl as u64);
        m
    }

    fn server_start(settings: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        let mut grant = Vec::new();
        pb::put_bytes_field(&mut grant, 1, &header(1));
        pb::put_varint_field(&mut grant, 2, LEASE as u64);
        pb::put_varint_field(&mut grant, 3, 5);
        [
            frame_bytes(frame::SETTINGS, 0, 0, &p),
            frame_bytes(frame::SETTINGS, flag::ACK, 0, &[]),
            unary(1, FIRST_RESPONSE_HEADERS, &grant),
        ]
        .concat()
    }

    fn ready_codec_with(settings: &[(u16, u32)]) -> (EtcdCodec, Vec<u8>) {
        let mut c = EtcdCodec::new(&cfg(4_500), "127.0.0.1:2379");
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        out.clear();
        let input = server_start(settings);
        let mut replies = Vec::new();
        assert_eq!(
            c.decode(&input, &mut replies, &mut out).unwrap(),
            input.len()
        );
        assert!(replies.is_empty());
        assert!(c.ready());
        assert_eq!(c.lease(), Some(LEASE));
        assert_eq!(c.lease_ttl_s(), Some(5));
        (c, out)
    }

    fn ready_codec() -> EtcdCodec {
        ready_codec_with(&[(setting::MAX_CONCURRENT_STREAMS, 1000)]).0
    }

    #[test]
    fn start_sends_preface_settings_grant_and_keepalive_stream() {
        let mut c = EtcdCodec::new(&cfg(4_500), "127.0.0.1:2379");
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        assert!(out.starts_with(PREFACE));
        let f = frames(&out[PREFACE.len()..]);
        assert_eq!(f.len(), 5, "{f:?}");
        assert_eq!((f[0].0, f[0].2), (frame::SETTINGS, 0));
        assert_eq!(f[0].3, [0, 2, 0, 0, 0, 0, 0, 4, 0x40, 0, 0, 0]);
        assert_eq!((f[1].0, f[1].2), (frame::WINDOW_UPDATE, 0));
        assert_eq!(f[1].3, (RECV_WINDOW - 65_535).to_be_bytes());
        assert_eq!(
            (f[2].0, f[2].1, f[2].2),
            (frame::HEADERS, flag::END_HEADERS, 1)
        );
        // LeaseGrantRequest{TTL: 5}: 4.5 s rounds up to whole seconds.
        assert_eq!((f[3].0, f[3].1, f[3].2), (frame::DATA, flag::END_STREAM, 1));
        assert_eq!(f[3].3, grpc(&[0x08, 5]));
        // The keepalive stream stays open for our requests.
        assert_eq!(
            (f[4].0, f[4].1, f[4].2),
            (frame::HEADERS, flag::END_HEADERS, 3)
        );
        assert!(!c.ready());
        let err = c
            .encode(
                1,
                &Op::Acquire {
                    resource: 1,
                    holder: 1,
                },
                &mut out,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("before the session lease"),
            "{err}"
        );
    }

    #[test]
    fn lease_ttl_is_whole_seconds_at_least_one() {
        let first_data = |ttl_ms| {
            let mut c = EtcdCodec::new(&cfg(ttl_ms), "a");
            let mut out = Vec::new();
            c.start(&mut out).unwrap();
            frames(&out[PREFACE.len()..])[3].3.clone()
        };
        assert_eq!(first_data(1), grpc(&[0x08, 1]));
        assert_eq!(first_data(1000), grpc(&[0x08, 1]));
        assert_eq!(first_data(1001), grpc(&[0x08, 2]));
    }

    #[test]
    fn request_headers_decode_to_a_grpc_call() {
        let block = request_header_block(PATH_TXN, "127.0.0.1:2379");
        let got = loona_hpack::Decoder::new().decode(&block).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Txn"),
            (":authority", "127.0.0.1:2379"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(got, want);
        // Long values use HPACK's multi-byte integers.
        let long = "x".repeat(300);
        let block = request_header_block(PATH_RANGE, &long);
        let got = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(got[3].1, long.as_bytes());
    }

    #[test]
    fn protobuf_varints_and_requests() {
        let mut v = Vec::new();
        pb::put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        pb::put_varint_field(&mut v, 3, -1i64 as u64);
        assert_eq!(v.len(), 11);
        let (field, value) = pb::Fields::new(&v).next().unwrap().unwrap();
        assert_eq!((field, value), (3, pb::Value::Varint(u64::MAX)));
        // Acquire's TxnRequest, decoded field by field.
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            9,
            &Op::Acquire {
                resource: 1,
                holder: 77,
            },
            &mut out,
        )
        .unwrap();
        let f = frames(&out);
        assert_eq!((f[0].0, f[0].2), (frame::HEADERS, 5));
        assert_eq!((f[1].0, f[1].1, f[1].2), (frame::DATA, flag::END_STREAM, 5));
        let txn = &f[1].3[5..];
        let fields: Vec<_> = pb::Fields::new(txn).map(Result::unwrap).collect();
        assert_eq!(fields.len(), 3);
        let pb::Value::Len(compare) = fields[0].1 else {
            panic!()
        };
        let compare: Vec<_> = pb::Fields::new(compare).map(Result::unwrap).collect();
        assert_eq!(
            compare,
            vec![
                (1, pb::Value::Varint(0)),
                (2, pb::Value::Varint(1)),
                (3, pb::Value::Len(b"/palisade-bench/lock/1")),
                (5, pb::Value::Varint(0)),
            ]
        );
        let pb::Value::Len(success) = fields[1].1 else {
            panic!()
        };
        let (op, pb::Value::Len(put)) = pb::Fields::new(success).next().unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(op, 2, "RequestOp.request_put");
        let put: Vec<_> = pb::Fields::new(put).map(Result::unwrap).collect();
        assert_eq!(
            put,
            vec![
                (1, pb::Value::Len(b"/palisade-bench/lock/1")),
                (2, pb::Value::Len(b"77")),
                (3, pb::Value::Varint(LEASE as u64)),
            ]
        );
        let pb::Value::Len(failure) = fields[2].1 else {
            panic!()
        };
        assert_eq!(
            pb::Fields::new(failure).next().unwrap().unwrap().0,
            1,
            "RequestOp.request_range"
        );
        // Malformed protobuf is an error, not a panic.
        assert!(pb::Fields::new(&[0x0a, 5, 1]).next().unwrap().is_err());
        assert!(pb::Fields::new(&[0x08]).next().unwrap().is_err());
        assert!(pb::Fields::new(&[0x0b]).next().unwrap().is_err());
    }

    #[test]
    fn acknowledges_settings_and_ping() {
        let (mut c, out) = ready_codec_with(&[]);
        let f = frames(&out);
        assert_eq!(f, vec![(frame::SETTINGS, flag::ACK, 0, vec![])]);
        let mut out = Vec::new();
        let ping = frame_bytes(frame::PING, 0, 0, b"12345678");
        let pong = frame_bytes(frame::PING, flag::ACK, 0, b"12345678");
        c.decode(&[ping, pong].concat(), &mut Vec::new(), &mut out)
            .unwrap();
        assert_eq!(
            frames(&out),
            vec![(frame::PING, flag::ACK, 0, b"12345678".to_vec())]
        );
    }

    #[test]
    fn decodes_every_outcome_at_every_split() {
        let held = Held {
            token: 40,
            aux: LEASE as u64,
        };
        let ops = [
            Op::Acquire {
                resource: 1,
                holder: 77,
            }, // stream 5
            Op::Acquire {
                resource: 2,
                holder: 78,
            }, // stream 7
            Op::Check { resource: 1, held }, // stream 9
            Op::Check {
                resource: 1,
                held: Held { token: 39, aux: 0 },
            }, // stream 11
            Op::Renew { resource: 1, held }, // keepalive (3)
            Op::Release { resource: 1, held }, // stream 13
            Op::Renew { resource: 1, held }, // keepalive (3)
            Op::Release { resource: 1, held }, // stream 15
            Op::Check { resource: 1, held }, // stream 17
        ];
        let mut make = || {
            let mut c = ready_codec();
            let mut out = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                c.encode(100 + i as u64, op, &mut out).unwrap();
            }
            c
        };
        // Stream 7's trailers split into HEADERS + CONTINUATION; stream 9's
        // DATA padded; a PING, a WINDOW_UPDATE and a PRIORITY in between.
        let trailers7 = trailers("0", "");
        let mut padded = vec![3];
        padded.extend_from_slice(&grpc(&range_reply(Some(40))));
        padded.extend_from_slice(&[0, 0, 0]);
        let stream = [
            unary(5, RESPONSE_HEADERS, &txn_reply(true, 40)),
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 7, RESPONSE_HEADERS),
            frame_bytes(frame::DATA, 0, 7, &grpc(&txn_reply(false, 40))),
            frame_bytes(frame::PING, 0, 0, b"abcdefgh"),
            frame_bytes(frame::HEADERS, flag::END_STREAM, 7, &trailers7[..5]),
            frame_bytes(frame::CONTINUATION, 0, 7, &trailers7[5..9]),
            frame_bytes(frame::CONTINUATION, flag::END_HEADERS, 7, &trailers7[9..]),
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 9, RESPONSE_HEADERS),
            frame_bytes(frame::DATA, flag::PADDED, 9, &padded),
            frame_bytes(
                frame::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                9,
                &trailers("0", ""),
            ),
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 3, RESPONSE_HEADERS),
            frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(5))),
            frame_bytes(frame::WINDOW_UPDATE, 0, 0, &100u32.to_be_bytes()),
            frame_bytes(2, 0, 11, &[0, 0, 0, 0, 16]), // PRIORITY: ignored
            unary(11, RESPONSE_HEADERS, &range_reply(Some(40))),
            unary(13, RESPONSE_HEADERS, &txn_reply(true, 41)),
            // The second keepalive answer arrives in two DATA frames.
            frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(-1))[..4]),
            frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(-1))[4..]),
            unary(15, RESPONSE_HEADERS, &txn_reply(false, 41)),
            unary(17, RESPONSE_HEADERS, &range_reply(None)),
        ]
        .concat();
        let want = vec![
            (
                100,
                Outcome::Granted(Held {
                    token: 40,
                    aux: LEASE as u64,
                }),
            ),
            (101, Outcome::Busy),
            (102, Outcome::Done),
            (104, Outcome::Done),
            (103, Outcome::Stale),
            (105, Outcome::Done),
            (106, Outcome::Stale),
            (107, Outcome::Stale),
            (108, Outcome::Stale),
        ];
        decode_every_split(&mut make, &stream, &want);
    }

    #[test]
    fn huffman_coded_headers_are_decoded() {
        // RFC 7541 C.6.1: a Huffman-coded response header block, whose
        // `:status 302` the codec must read (and refuse).
        let block: &[u8] = &[
            0x48, 0x82, 0x64, 0x02, 0x58, 0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b, 0x61, 0x96, 0xd0,
            0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81,
            0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff, 0x6e, 0x91, 0x9d, 0x29, 0xad, 0x17, 0x18,
            0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae, 0x43, 0xd3,
        ];
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        let input = frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, block);
        let err = c.decode(&input, &mut Vec::new(), &mut out).unwrap_err();
        assert!(err.to_string().contains("\"302\""), "{err}");
    }

    #[test]
    fn our_data_waits_for_the_servers_window() {
        // A stream window of 10 bytes: the request's DATA must wait.
        let (mut c, _) = ready_codec_with(&[(setting::INITIAL_WINDOW_SIZE, 10)]);
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        let f = frames(&out);
        assert_eq!(f.len(), 1, "HEADERS only: {f:?}");
        assert_eq!(f[0].0, frame::HEADERS);
        out.clear();
        let update = frame_bytes(frame::WINDOW_UPDATE, 0, 5, &100u32.to_be_bytes());
        c.decode(&update, &mut Vec::new(), &mut out).unwrap();
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].0, f[0].1, f[0].2), (frame::DATA, flag::END_STREAM, 5));

        // The connection window (65,535 until the server raises it).
        let (mut c, _) = ready_codec_with(&[]);
        let mut out = Vec::new();
        let mut id = 0;
        let mut sent = 0usize;
        loop {
            id += 1;
            let before = out.len();
            c.encode(
                id,
                &Op::Check {
                    resource: 1,
                    held: Held::default(),
                },
                &mut out,
            )
            .unwrap();
            let new = frames(&out[before..]);
            if new.len() == 1 {
                break; // DATA held back
            }
            sent += new[1].3.len();
        }
        // 12 bytes went with the lease grant, 65,535 in all.
        assert!(
            sent + 12 <= 65_535 && sent + 12 + 40 > 65_535,
            "sent {sent}"
        );
        out.clear();
        let update = frame_bytes(frame::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        c.decode(&update, &mut Vec::new(), &mut out).unwrap();
        let f = frames(&out);
        assert!(
            !f.is_empty() && f.iter().all(|f| f.0 == frame::DATA),
            "{f:?}"
        );
        assert_eq!(
            f[0].2,
            2 * id as u32 + 3,
            "the held-back request goes first"
        );
    }

    #[test]
    fn credit_is_returned_as_data_arrives() {
        let mut c = ready_codec();
        c.recv_credit_threshold = 50;
        let mut out = Vec::new();
        let held = Held::default();
        for id in 0..4 {
            c.encode(id, &Op::Renew { resource: 1, held }, &mut out)
                .unwrap();
        }
        out.clear();
        let reply = frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(5)));
        let n = reply.len() as u32 - 9;
        let input = [
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 3, RESPONSE_HEADERS),
            reply.clone(),
            reply.clone(),
            reply.clone(),
            reply,
        ]
        .concat();
        let mut replies = Vec::new();
        c.decode(&input, &mut replies, &mut out).unwrap();
        assert_eq!(replies.len(), 4);
        let updates: Vec<_> = frames(&out)
            .into_iter()
            .filter(|f| f.0 == frame::WINDOW_UPDATE)
            .map(|f| (f.2, u32::from_be_bytes(f.3.try_into().unwrap())))
            .collect();
        let credited = |stream| {
            updates
                .iter()
                .filter(|u| u.0 == stream)
                .map(|u| u.1)
                .sum::<u32>()
        };
        // Every byte is credited once the threshold is crossed: the
        // replies are n bytes each, so whole multiples of the threshold.
        let per_credit = n * 50_u32.div_ceil(n);
        assert_eq!(credited(0), 4 * n / per_credit * per_credit, "{updates:?}");
        assert_eq!(credited(3), credited(0), "{updates:?}");
        assert!(credited(0) > 0);
    }

    #[test]
    fn server_errors_are_errors_naming_them() {
        let expect_err = |input: Vec<u8>, needle: &str| {
            let mut c = ready_codec();
            let mut out = Vec::new();
            c.encode(
                1,
                &Op::Check {
                    resource: 1,
                    held: Held::default(),
                },
                &mut out,
            )
            .unwrap();
            let err = c
                .decode(&input, &mut Vec::new(), &mut out)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        };
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0xbu32.to_be_bytes());
        goaway.extend_from_slice(b"too_many_pings");
        expect_err(
            frame_bytes(frame::GOAWAY, 0, 0, &goaway),
            "GOAWAY (last stream 5, error code 0xb, \"too_many_pings\")",
        );
        expect_err(
            frame_bytes(frame::RST_STREAM, 0, 5, &8u32.to_be_bytes()),
            "reset stream 5",
        );
        let mut headers = RESPONSE_HEADERS.to_vec();
        headers.extend_from_slice(&trailers("9", "etcdserver: too many requests"));
        expect_err(
            frame_bytes(
                frame::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                5,
                &headers,
            ),
            "grpc-status 9: etcdserver: too many requests",
        );
        expect_err(
            frame_bytes(frame::DATA, 0, 77, &grpc(&[])),
            "stream 77, which is not open",
        );
        expect_err(
            frame_bytes(frame::PUSH_PROMISE, 0, 5, &[0; 4]),
            "PUSH_PROMISE",
        );
        expect_err(
            [
                frame_bytes(frame::HEADERS, 0, 5, RESPONSE_HEADERS),
                frame_bytes(frame::DATA, 0, 5, &[]),
            ]
            .concat(),
            "inside a header block",
        );
        let mut big = vec![0, 0x40, 1, frame::DATA, 0, 0, 0, 0, 5];
        big.resize(9 + 16_385, 0);
        expect_err(big, "over our max frame size");
        expect_err(
            frame_bytes(frame::DATA, flag::PADDED, 5, &[9, 1, 2]),
            "padding",
        );
        expect_err(
            [
                frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, RESPONSE_HEADERS),
                frame_bytes(frame::DATA, 0, 5, &[1, 0, 0, 0, 0]),
                frame_bytes(
                    frame::HEADERS,
                    flag::END_HEADERS | flag::END_STREAM,
                    5,
                    &trailers("0", ""),
                ),
            ]
            .concat(),
            "compressed",
        );
        expect_err(
            [
                frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, RESPONSE_HEADERS),
                frame_bytes(
                    frame::HEADERS,
                    flag::END_HEADERS | flag::END_STREAM,
                    5,
                    &trailers("0", ""),
                ),
            ]
            .concat(),
            "without a complete response message",
        );
        // Not an HTTP/2 server at all.
        let mut c = EtcdCodec::new(&cfg(1000), "a");
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        let err = c
            .decode(
                b"HTTP/1.1 400 Bad Request\r\n\r\n",
                &mut Vec::new(),
                &mut out,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("SETTINGS") || err.to_string().contains("frame"),
            "{err}"
        );
        // A refused lease grant.
        let mut c = EtcdCodec::new(&cfg(1000), "a");
        c.start(&mut out).unwrap();
        let mut grant = Vec::new();
        pb::put_bytes_field(&mut grant, 4, b"lease too short");
        let input = [
            frame_bytes(frame::SETTINGS, 0, 0, &[]),
            unary(1, FIRST_RESPONSE_HEADERS, &grant),
        ]
        .concat();
        let err = c.decode(&input, &mut Vec::new(), &mut out).unwrap_err();
        assert!(err.to_string().contains("lease too short"), "{err}");
    }
}

//! A sans-IO gRPC client connection over HTTP/2 cleartext (prior
//! knowledge): the transport under the etcd codec.
//!
//! Requests are HEADERS (HPACK: static-table indexes and literals without
//! indexing, no Huffman; [`request_header_block`]) + DATA (gRPC 5-byte
//! prefix + message) with END_STREAM on odd stream ids; SETTINGS and PING
//! are acknowledged; flow-control credit is returned as data arrives and
//! our own DATA waits for the server's window; CONTINUATION and padding
//! are handled; GOAWAY, RST_STREAM, a non-200 status or a grpc-status
//! other than 0 are `Err`s naming them. Responses are HPACK-decoded with
//! `loona-hpack` (Huffman and the dynamic table).
//!
//! A [`Connection`] tags each stream with a caller's `K` and reports what
//! happens to it as [`Event`]s: each message of a streaming call as it
//! arrives, and the data of any call when it ends with grpc-status 0. What
//! the messages mean is the caller's business. It never touches a socket
//! or a clock.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;

use anyhow::{bail, Context, Result};

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// Our SETTINGS_MAX_FRAME_SIZE: the default; we announce no other.
pub(crate) const FRAME_LEN_MAX: usize = 16_384;
/// The receive window we announce for the connection and every stream.
pub(crate) const RECV_WINDOW: u32 = 1 << 30;
/// HTTP/2's initial window before SETTINGS say otherwise.
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;
pub(crate) const WINDOW_MAX: i64 = (1 << 31) - 1;
/// Largest gRPC message we accept; our responses are a few hundred bytes.
const MESSAGE_LEN_MAX: usize = 1 << 20;
/// Bytes of header block we accept across CONTINUATIONs.
const HEADER_BLOCK_MAX: usize = 1 << 16;

/// Frame types.
pub(crate) mod frame {
    pub(crate) const DATA: u8 = 0;
    pub(crate) const HEADERS: u8 = 1;
    pub(crate) const RST_STREAM: u8 = 3;
    pub(crate) const SETTINGS: u8 = 4;
    pub(crate) const PUSH_PROMISE: u8 = 5;
    pub(crate) const PING: u8 = 6;
    pub(crate) const GOAWAY: u8 = 7;
    pub(crate) const WINDOW_UPDATE: u8 = 8;
    pub(crate) const CONTINUATION: u8 = 9;
}
/// Frame flags.
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}
/// SETTINGS identifiers.
pub(crate) mod setting {
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
}

struct Stream<K> {
    kind: K,
    /// Streaming call: its messages are reported as they arrive.
    streaming: bool,
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

/// What happened on a stream.
#[derive(Debug)]
pub(crate) enum Event<K> {
    /// One whole gRPC message of a streaming call.
    Message {
        /// The stream's tag.
        kind: K,
        /// The message, without its gRPC prefix.
        message: Vec<u8>,
    },
    /// A call ended with grpc-status 0.
    Closed {
        /// The stream's tag.
        kind: K,
        /// Its DATA not yet reported (gRPC-framed; see [`take_message`]).
        data: Vec<u8>,
    },
}

/// One HTTP/2 connection's client state; `peer` names the server in
/// errors.
pub(crate) struct Connection<K> {
    peer: &'static str,
    got_server_settings: bool,
    hpack: loona_hpack::Decoder<'static>,
    next_stream: u32,
    streams: HashMap<u32, Stream<K>>,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_streams: u32,
    queued: VecDeque<QueuedData>,
    conn_recv_unacked: u32,
    /// Credit is returned once this much is unacknowledged (half the
    /// window, so the server never stalls; smaller in tests).
    pub(crate) recv_credit_threshold: u32,
    partial_block: Option<HeaderBlock>,
}

impl<K: Copy + Debug> Connection<K> {
    pub(crate) fn new(peer: &'static str) -> Self {
        Self {
            peer,
            got_server_settings: false,
            hpack: loona_hpack::Decoder::new(),
            next_stream: 1,
            streams: HashMap::new(),
            conn_send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_streams: u32::MAX,
            queued: VecDeque::new(),
            conn_recv_unacked: 0,
            recv_credit_threshold: RECV_WINDOW / 2,
            partial_block: None,
        }
    }

    /// Appends the connection preface: the magic, our SETTINGS (no push,
    /// a large initial window) and the matching connection WINDOW_UPDATE.
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) {
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
    }

    /// Opens a stream tagged `kind`: HEADERS (`block`) now, then `message`
    /// (if any) as one gRPC message in DATA, sent when the window allows.
    /// A `streaming` call reports each message as it arrives.
    pub(crate) fn open_stream(
        &mut self,
        kind: K,
        streaming: bool,
        block: &[u8],
        message: Option<&[u8]>,
        end_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<u32> {
        let peer = self.peer;
        let id = self.next_stream;
        if id > WINDOW_MAX as u32 {
            bail!("{peer} connection used up its HTTP/2 stream ids; reconnect");
        }
        if self.streams.len() >= self.peer_max_streams as usize {
            bail!(
                "{peer} allows {} concurrent streams per connection and all are in use",
                self.peer_max_streams
            );
        }
        self.next_stream += 2;
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
                streaming,
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
    pub(crate) fn send_message(
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

    /// Handles the one frame at the front of `input`, if it is complete:
    /// pushes what happened to `events`, appends acknowledgements and
    /// credit to `out`, and returns the frame's length (`None`: incomplete,
    /// nothing consumed).
    pub(crate) fn next_frame(
        &mut self,
        input: &[u8],
        events: &mut Vec<Event<K>>,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>> {
        let Some(header) = input.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if len > FRAME_LEN_MAX {
            bail!(
                "{} sent a frame of {len} bytes, over our max frame size {FRAME_LEN_MAX}",
                self.peer
            );
        }
        let Some(payload) = input.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        self.handle_frame(header[3], header[4], stream, payload, events, out)?;
        Ok(Some(FRAME_HEADER_LEN + len))
    }

    fn handle_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        events: &mut Vec<Event<K>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let peer = self.peer;
        if !self.got_server_settings {
            if kind != frame::SETTINGS || flags & flag::ACK != 0 {
                bail!("{peer} did not start with SETTINGS (got frame type {kind}): not an HTTP/2 server?");
            }
            self.got_server_settings = true;
        }
        if let Some(partial) = &self.partial_block {
            if kind != frame::CONTINUATION || stream != partial.stream {
                bail!("{peer} sent frame type {kind} on stream {stream} inside a header block of stream {}", partial.stream);
            }
        }
        match kind {
            frame::DATA => self.handle_data(flags, stream, payload, events, out),
            frame::HEADERS => {
                if stream == 0 {
                    bail!("{peer} sent HEADERS on stream 0");
                }
                let mut body = unpad(peer, flags, payload, "HEADERS")?;
                if flags & flag::PRIORITY != 0 {
                    body = body.get(5..).with_context(|| {
                        format!("{peer} sent a HEADERS frame too short for its priority")
                    })?;
                }
                let block = HeaderBlock {
                    stream,
                    end_stream: flags & flag::END_STREAM != 0,
                    block: body.to_vec(),
                };
                if flags & flag::END_HEADERS != 0 {
                    self.handle_header_block(block, events)
                } else {
                    self.partial_block = Some(block);
                    Ok(())
                }
            }
            frame::CONTINUATION => {
                let Some(mut block) = self.partial_block.take() else {
                    bail!("{peer} sent CONTINUATION on stream {stream} outside a header block");
                };
                block.block.extend_from_slice(payload);
                if block.block.len() > HEADER_BLOCK_MAX {
                    bail!("{peer} sent a header block over {HEADER_BLOCK_MAX} bytes");
                }
                if flags & flag::END_HEADERS != 0 {
                    self.handle_header_block(block, events)
                } else {
                    self.partial_block = Some(block);
                    Ok(())
                }
            }
            frame::RST_STREAM => {
                let code =
                    be_u32(payload).with_context(|| format!("{peer} sent a short RST_STREAM"))?;
                let what = self.streams.get(&stream).map(|s| s.kind);
                bail!("{peer} reset stream {stream} ({what:?}) with HTTP/2 error code {code:#x}");
            }
            frame::SETTINGS => self.handle_settings(flags, stream, payload, out),
            frame::PUSH_PROMISE => bail!("{peer} sent PUSH_PROMISE although we disabled push"),
            frame::PING => {
                if payload.len() != 8 || stream != 0 {
                    bail!(
                        "{peer} sent a malformed PING ({} bytes, stream {stream})",
                        payload.len()
                    );
                }
                if flags & flag::ACK == 0 {
                    put_frame(out, frame::PING, flag::ACK, 0, payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                let short = || format!("{peer} sent a short GOAWAY");
                let last = be_u32(payload).with_context(short)? & 0x7fff_ffff;
                let code = be_u32(payload.get(4..).unwrap_or(&[])).with_context(short)?;
                let debug = String::from_utf8_lossy(payload.get(8..).unwrap_or(&[]));
                bail!("{peer} sent GOAWAY (last stream {last}, error code {code:#x}, {debug:?})");
            }
            frame::WINDOW_UPDATE => {
                let inc = i64::from(
                    be_u32(payload)
                        .with_context(|| format!("{peer} sent a short WINDOW_UPDATE"))?
                        & 0x7fff_ffff,
                );
                if inc == 0 {
                    bail!("{peer} sent a WINDOW_UPDATE of 0 on stream {stream}");
                }
                let window = if stream == 0 {
                    Some(&mut self.conn_send_window)
                } else {
                    self.streams.get_mut(&stream).map(|s| &mut s.send_window)
                };
                if let Some(w) = window {
                    *w += inc;
                    if *w > WINDOW_MAX {
                        bail!("{peer}'s WINDOW_UPDATE overflowed the window of stream {stream}");
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
        let peer = self.peer;
        if stream != 0 {
            bail!("{peer} sent SETTINGS on stream {stream}");
        }
        if flags & flag::ACK != 0 {
            if !payload.is_empty() {
                bail!("{peer} sent a SETTINGS ACK with a payload");
            }
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            bail!(
                "{peer} sent SETTINGS of {} bytes, not a multiple of 6",
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
                        bail!("{peer} set an initial window of {value}");
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
                setting::MAX_FRAME_SIZE if !(16_384..=16_777_215).contains(&value) => {
                    bail!("{peer} set a max frame size of {value}");
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
        events: &mut Vec<Event<K>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let peer = self.peer;
        if stream == 0 {
            bail!("{peer} sent DATA on stream 0");
        }
        // All of the frame counts against flow control, padding included.
        let len = payload.len() as u32; // at most FRAME_LEN_MAX
        self.conn_recv_unacked += len;
        if self.conn_recv_unacked >= self.recv_credit_threshold {
            put_window_update(out, 0, self.conn_recv_unacked);
            self.conn_recv_unacked = 0;
        }
        let body = unpad(peer, flags, payload, "DATA")?;
        let end_stream = flags & flag::END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&stream) else {
            bail!("{peer} sent DATA on stream {stream}, which is not open");
        };
        if !s.got_headers {
            bail!("{peer} sent DATA on stream {stream} before its response headers");
        }
        s.data.extend_from_slice(body);
        s.recv_unacked += len;
        if !end_stream && s.recv_unacked >= self.recv_credit_threshold {
            put_window_update(out, stream, s.recv_unacked);
            s.recv_unacked = 0;
        }
        if end_stream {
            bail!(
                "{peer} ended stream {stream} ({:?}) without trailers (no grpc-status)",
                s.kind
            );
        }
        if s.streaming {
            while let Some(message) = take_message(peer, &mut s.data)? {
                events.push(Event::Message {
                    kind: s.kind,
                    message,
                });
            }
        }
        Ok(())
    }

    fn handle_header_block(
        &mut self,
        block: HeaderBlock,
        events: &mut Vec<Event<K>>,
    ) -> Result<()> {
        let peer = self.peer;
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
            .map_err(|e| {
                anyhow::anyhow!("{peer} sent a header block HPACK cannot decode: {e:?}")
            })?;
        let stream = block.stream;
        let Some(s) = self.streams.get_mut(&stream) else {
            bail!("{peer} sent headers on stream {stream}, which is not open");
        };
        if !s.got_headers {
            s.got_headers = true;
            match status.as_deref() {
                Some("200") => {}
                other => bail!(
                    "{peer} answered stream {stream} ({:?}) with :status {other:?}",
                    s.kind
                ),
            }
            if let Some(ct) = &content_type {
                if !ct.starts_with("application/grpc") {
                    bail!("{peer} answered stream {stream} with content-type {ct:?}");
                }
            }
            if grpc_status.is_none() {
                if block.end_stream {
                    bail!("{peer} ended stream {stream} without grpc-status");
                }
                return Ok(()); // response headers; DATA and trailers follow
            }
        }
        // Trailers (or a trailers-only response).
        if !block.end_stream {
            bail!("{peer} sent a second header block on stream {stream} without END_STREAM");
        }
        let s = self.streams.remove(&stream).expect("looked up above");
        match grpc_status.as_deref() {
            Some("0") => {}
            Some(code) => bail!(
                "{peer} answered stream {stream} ({:?}) with grpc-status {code}: {grpc_message}",
                s.kind
            ),
            None => bail!(
                "{peer} ended stream {stream} ({:?}) without grpc-status",
                s.kind
            ),
        }
        events.push(Event::Closed {
            kind: s.kind,
            data: s.data,
        });
        Ok(())
    }
}

/// Takes one complete gRPC message off the front of `data`.
pub(crate) fn take_message(peer: &str, data: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let Some(prefix) = data.get(..5) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        bail!(
            "{peer} sent a compressed gRPC message (flag {}) we did not ask for",
            prefix[0]
        );
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MESSAGE_LEN_MAX {
        bail!("{peer} sent a gRPC message of {len} bytes");
    }
    if data.len() < 5 + len {
        return Ok(None);
    }
    let message = data[5..5 + len].to_vec();
    data.drain(..5 + len);
    Ok(Some(message))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Strips the padding of a PADDED frame.
fn unpad<'a>(peer: &str, flags: u8, payload: &'a [u8], what: &str) -> Result<&'a [u8]> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        bail!("{peer} sent a padded {what} frame with no pad length");
    };
    let Some(end) = rest.len().checked_sub(usize::from(pad)) else {
        bail!("{peer} sent a {what} frame whose padding ({pad}) exceeds it");
    };
    Ok(&rest[..end])
}

pub(crate) fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
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
pub(crate) fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// The request header block for a gRPC call to `path`: static-table
/// indexes and literals without indexing, so it is the same every time.
pub(crate) fn request_header_block(path: &str, authority: &str) -> Vec<u8> {
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

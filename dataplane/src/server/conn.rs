//! Client connections on a core: accept, read frames into an aligned
//! buffer and answer each from the archived bytes in place, write each
//! connection's answers with one `write` per turn, and close on a
//! deadline, an error or the client's end.
//!
//! Back-pressure: a connection whose answers could not all be written
//! stops being read (its epoll interest becomes `OUT` only) until they
//! are, and is closed once they stay unwritten for
//! `limits.write_stall_timeout`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_proto::frame::padded_len;
use palisade_proto::{
    access_request, encode_response, Decoded, ErrorCode, FrameBuf, FrameError, FrameKind, RecvBuf,
    Response, HEADER_LEN, NONCE_LEN,
};
use rustix::event::epoll;
use tracing::{debug, warn};

use super::core::Core;
use crate::metrics::Closed;
use crate::service::{Conn, Outcome, Phase, RequestMeta};
use crate::table::LeaseKey;
use crate::waiters::WaitEvent;
use palisade_host::clock::{monotonic_ms, monotonic_ns};

/// Receive buffer a connection starts with; it grows up to one maximal frame.
const RECV_BUF_INITIAL: usize = 4096;
/// Largest a connection's receive buffer grows to while its reads fill it
/// (a pipelining client's burst taken in one read, as Redis and the epoll
/// echo read 64 KiB); it returns to [`RECV_BUF_INITIAL`] once quiet. Never
/// past one maximal frame (`limits.frame_payload_max`, 16 KiB by default),
/// the bound a connection's buffer always had.
const READ_BURST_MAX: usize = 64 << 10;
/// Frames of one connection's batch whose keys are computed and whose
/// slots are prefetched before the batch is served ([`Core::look_ahead`]):
/// enough to overlap a batch's cache misses, few enough that the first
/// slots are still cached when their requests are served.
const LOOK_AHEAD_MAX: usize = 32;
/// Connections accepted per turn at most (and at most half the core's share
/// of `limits.unauthenticated_max`): the rest wait one turn, so a flood of
/// connects cannot starve the connections already open.
const ACCEPTS_PER_TURN: usize = 64;
/// Pause after a failed accept (out of file descriptors, say), doubled on
/// each failure in a row up to [`ACCEPT_BACKOFF_MAX`]: the listener stays
/// readable while the backlog holds connections, so retrying at once would
/// spin.
pub(super) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one log line per core per this long about failed accepts; the
/// line counts the failures it stands for.
pub(super) const ACCEPT_LOG_INTERVAL_MS: u64 = 1_000;

/// Which deadline a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Handshake,
    Frame,
    Idle,
    WriteStall,
}

impl Deadline {
    fn closed(self) -> Closed {
        match self {
            Deadline::Handshake => Closed::HandshakeTimeout,
            Deadline::Frame => Closed::FrameTimeout,
            Deadline::Idle => Closed::Idle,
            Deadline::WriteStall => Closed::WriteStall,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Deadline::Handshake => {
                "the handshake did not complete within limits.handshake_timeout; closing"
            }
            Deadline::Frame => "a frame did not complete within limits.frame_timeout; closing",
            Deadline::Idle => {
                "the connection was idle for limits.idle_timeout; closing (reconnect to go on)"
            }
            Deadline::WriteStall => {
                "replies could not be written within limits.write_stall_timeout; closing"
            }
        }
    }
}

/// One client connection's state on its core.
pub(super) struct Client {
    stream: TcpStream,
    conn: Conn,
    rx: RecvBuf,
    /// Answers not yet written: `out[sent..]` is left.
    out: FrameBuf,
    sent: usize,
    /// Grants whose answer is in `out`, with the offset where the answer
    /// ends: released if the connection closes before they are written.
    unsent_grants: Vec<(LeaseKey, u64, usize)>,
    /// When the frame now half-read started to arrive.
    partial_since_ms: Option<u64>,
    /// Last byte from the client or answer to it: the idle clock.
    heard_ms: u64,
    handshake_deadline_ms: u64,
    /// Since when `out` could not be written in full.
    blocked_since_ms: Option<u64>,
    /// The epoll interest is `OUT` (answers wait to be written), not `IN`.
    writing: bool,
    /// In this turn's list of connections to write.
    dirty: bool,
    /// Its last answer is in `out`: close once written, read no more.
    closing: bool,
    /// The deadline entry in the core's timers (an earlier deadline adds
    /// another entry; a later one waits for this one to come due).
    timer_ms: Option<u64>,
    /// Requests answered in this turn, and when the first of them arrived
    /// (monotonic ns): recorded once the answers are written.
    answered: u64,
    arrived_ns: u64,
}

impl Client {
    /// The connection's earliest deadline.
    fn deadline(&self, opts: &super::ServerOptions) -> Option<(u64, Deadline)> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(since) = self.blocked_since_ms {
            return Some((
                since.saturating_add(millis(opts.write_stall_timeout)),
                Deadline::WriteStall,
            ));
        }
        if self.closing {
            return None;
        }
        let ready = matches!(self.conn.phase, Phase::Ready { .. });
        let deadlines = [
            self.partial_since_ms.map(|since| {
                (
                    since.saturating_add(millis(opts.frame_timeout)),
                    Deadline::Frame,
                )
            }),
            (!ready).then_some((self.handshake_deadline_ms, Deadline::Handshake)),
            // Idle: authenticated, nothing half-read and nothing pending
            // (a waiting acquire or a watch is the server's turn).
            (ready && self.partial_since_ms.is_none() && self.conn.pending == 0).then(|| {
                (
                    self.heard_ms.saturating_add(millis(opts.idle_timeout)),
                    Deadline::Idle,
                )
            }),
        ];
        deadlines.into_iter().flatten().min_by_key(|&(at, _)| at)
    }
}

impl Core {
    /// Accepts what the listener holds, up to [`ACCEPTS_PER_TURN`].
    pub(super) fn accept(&mut self) {
        // Fewer than the core's share of unfinished handshakes per turn: a
        // connection accepted in one turn has its first bytes read in the
        // next before more connections arrive than could evict it.
        let accepts = ACCEPTS_PER_TURN.min(self.unauthenticated_max.div_ceil(2));
        for _ in 0..accepts {
            let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
            match rustix::net::accept_with(&self.listener, flags) {
                Ok(fd) => {
                    self.accept_backoff = ACCEPT_BACKOFF_MIN;
                    self.adopt(TcpStream::from(fd));
                }
                Err(rustix::io::Errno::AGAIN) => return,
                // A connection reset while it waited in the backlog.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => {}
                Err(e) => {
                    // Out of file descriptors and the like: the listener
                    // stays readable, so take it out of the set for a while.
                    let now_ms = monotonic_ms();
                    if let Some(suppressed) = self.accept_log.failed(now_ms) {
                        warn!(
                            core = self.index,
                            error = %e,
                            suppressed,
                            backoff_ms = self.accept_backoff.as_millis() as u64,
                            "accept failed (more failures since the last line: suppressed); if out of file descriptors, raise LimitNOFILE or lower limits.connections_max"
                        );
                    }
                    if epoll::delete(&self.epoll, &self.listener).is_ok() {
                        let backoff = self.accept_backoff.as_millis() as u64;
                        self.accept_paused_until_ms = Some(now_ms + backoff);
                        self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                    return;
                }
            }
        }
    }

    /// Puts the listener back into the epoll set after a pause.
    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused_until_ms = None;
        if let Err(e) = epoll::add(
            &self.epoll,
            &self.listener,
            epoll::EventData::new_u64(super::core::LISTENER),
            epoll::EventFlags::IN,
        ) {
            warn!(core = self.index, error = %e, "could not resume accepting; retrying");
            self.accept_paused_until_ms =
                Some(monotonic_ms() + ACCEPT_BACKOFF_MAX.as_millis() as u64);
        }
    }

    /// Takes a freshly accepted connection in (or refuses it at the
    /// connection limit).
    fn adopt(&mut self, stream: TcpStream) {
        let open = self.connections.fetch_add(1, Ordering::SeqCst);
        let stats = &self.shared.stats[self.index];
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let gone = |core: &Core| {
            core.connections.fetch_sub(1, Ordering::SeqCst);
            core.shared.stats[core.index]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        };
        if open >= u64::from(self.opts.connections_max) {
            self.refuse(stream);
            gone(self);
            return;
        }
        let ipv6 = self.opts.listen.is_ipv6();
        if let Err(e) = super::net::prepare_stream(stream.as_raw_fd(), ipv6, self.opts.dscp) {
            debug!(core = self.index, error = %e, "a new connection failed its set-up; closed");
            gone(self);
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN,
        ) {
            warn!(core = self.index, error = %e, "could not watch a new connection; closed");
            gone(self);
            return;
        }
        let core = u16::try_from(self.index).expect("core count fits u16");
        let mut conn = Conn::new(core, id);
        conn.peer = stream.peer_addr().ok().map(|addr| addr.ip());
        let payload_max = self.opts.frame_payload_max;
        let frame_max = HEADER_LEN + padded_len(payload_max as usize);
        let now_ms = monotonic_ms();
        let handshake_ms =
            u64::try_from(self.opts.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
        self.clients.insert(
            id,
            Client {
                stream,
                conn,
                rx: RecvBuf::new(
                    RECV_BUF_INITIAL.min(frame_max),
                    frame_max.max(RECV_BUF_INITIAL),
                ),
                out: FrameBuf::new(),
                sent: 0,
                unsent_grants: Vec::new(),
                partial_since_ms: None,
                heard_ms: now_ms,
                handshake_deadline_ms: now_ms.saturating_add(handshake_ms),
                blocked_since_ms: None,
                writing: false,
                dirty: false,
                closing: false,
                timer_ms: None,
                answered: 0,
                arrived_ns: 0,
            },
        );
        self.schedule(id);
        self.register_unauthenticated(id);
        // A client sends its `Hello` right after its connect: read it now,
        // while the connection is the newest of the unfinished handshakes.
        self.read(id);
    }

    /// Answers a connection over the limit and closes it.
    fn refuse(&mut self, mut stream: TcpStream) {
        self.shared.stats[self.index].close(Closed::ConnectionsMax);
        let mut out = FrameBuf::new();
        let response = Response::Error {
            code: ErrorCode::TooManyConnections,
            retry_after_ms: 100,
            message: "the node is at limits.connections_max; retry later".into(),
        };
        if encode_response(&mut out, 0, 0, self.opts.frame_payload_max, &response).is_ok() {
            // A fresh socket's send buffer takes it; if not, the close says it.
            let _ = stream.write(&out);
        }
    }

    /// Registers connection `id` as unauthenticated; if that makes more
    /// than this core's share, the oldest unauthenticated connection is
    /// closed: the oldest that has not said `Hello` (other than `id`), or
    /// if none is left, the oldest challenged one. Refusing the newest instead would let a
    /// flood that keeps its connections open hold every slot; evicting the
    /// oldest means a client that completes its handshake promptly gets
    /// through, and a flood only shortens the time a slow handshake may
    /// take. Silent connections go first: a client that is mid-handshake
    /// has shown it speaks the protocol, and a flood of silent connects
    /// (the cheapest there is) cannot evict it however fast it connects.
    fn register_unauthenticated(&mut self, id: u64) {
        self.unauthenticated.insert(id);
        while self.unauthenticated.len() + self.challenged.len() > self.unauthenticated_max {
            // Never the newcomer itself: refusing the newest would hand the
            // slots to whoever holds them (a flood that says `Hello` and
            // stalls would lock everyone out until its handshakes time out).
            let silent = self.unauthenticated.first().copied().filter(|&c| c != id);
            let oldest = match silent {
                Some(oldest) => self.unauthenticated.take(&oldest),
                None => self.challenged.pop_first(),
            };
            let Some(oldest) = oldest else {
                break;
            };
            debug!(
                core = self.index,
                conn = oldest,
                "evicting the oldest unfinished handshake"
            );
            self.shared.stats[self.index].close(Closed::Evicted);
            let response = Response::Error {
                code: ErrorCode::TooManyConnections,
                retry_after_ms: 0,
                message: "closed to make room: limits.unauthenticated_max connections were in their handshake and this was the oldest; reconnect and complete the handshake promptly".into(),
            };
            self.finish(oldest, 0, 0, &response);
        }
    }

    /// A connection's epoll event.
    pub(super) fn on_event(&mut self, id: u64, flags: epoll::EventFlags) {
        let Some(client) = self.clients.get(&id) else {
            // Closed earlier in this turn.
            return;
        };
        if client.writing {
            if flags.intersects(
                epoll::EventFlags::OUT | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
            ) {
                self.flush(id);
            }
        } else if !client.closing {
            self.read(id);
        }
    }

    /// Reads once from a readable connection and answers what it holds.
    fn read(&mut self, id: u64) {
        // Out of the map while its requests are served: everything that
        // reaches a connection meanwhile waits in `delivered`.
        let Some(mut client) = self.clients.remove(&id) else {
            return;
        };
        let spare = client.rx.spare();
        let offered = spare.len();
        let read = client.stream.read(spare);
        let n = match read {
            Ok(0) => {
                self.clients.insert(id, client);
                if self.clients[&id].rx.buffered() > 0 {
                    let response = frame_error_response(&FrameError::Truncated);
                    self.finish(id, 0, 0, &response);
                } else {
                    self.close(id);
                }
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                self.clients.insert(id, client);
                return;
            }
            Err(e) => {
                debug!(core = self.index, conn = id, error = %e, "connection ended");
                self.clients.insert(id, client);
                self.close(id);
                return;
            }
        };
        client.rx.filled(n);
        let close = self.serve_frames(&mut client);
        client.rx.adapt(n, offered, READ_BURST_MAX);
        self.clients.insert(id, client);
        if close {
            self.finish_written(id);
        } else {
            self.mark_dirty(id);
            self.schedule(id);
        }
    }

    /// Computes the key of each lease request among the whole frames in
    /// the connection's buffer (at most [`LOOK_AHEAD_MAX`]) into `keys`,
    /// one entry a frame, and prefetches each key's table slot: a batch's
    /// cache misses then overlap instead of coming one request at a time
    /// (100 000 random resources do not fit the cache; at 470 000
    /// arrivals/s the table's miss was 8 % of the core).
    fn look_ahead(&self, client: &Client, keys: &mut Vec<Option<LeaseKey>>) {
        keys.clear();
        let mut offset = 0;
        while keys.len() < LOOK_AHEAD_MAX {
            let Ok(Decoded::Frame {
                header,
                payload,
                frame_len,
            }) = client.rx.frame_at(offset, self.opts.frame_payload_max)
            else {
                break;
            };
            offset += frame_len;
            let request = (header.kind == FrameKind::Request)
                .then(|| access_request(payload).ok())
                .flatten();
            let mut key = None;
            if let Some(request) = request {
                key = self.shared.lease_key(&client.conn, request);
                if let Some(key) = key {
                    self.shared.table.prefetch(key);
                    self.lists.prefetch(request, key);
                }
            }
            keys.push(key);
        }
    }

    /// Answers every whole frame in the connection's buffer. Returns
    /// whether the connection must close once its answers are out.
    fn serve_frames(&mut self, client: &mut Client) -> bool {
        // Read the clock after the bytes arrived: a lease's server
        // interval then starts no earlier than the client sent it.
        let arrived_ns = monotonic_ns();
        let now_ms = arrived_ns / 1_000_000;
        client.heard_ms = now_ms;
        let payload_max = self.opts.frame_payload_max;
        let mut served = 0u64;
        // Requests answered in this batch (not those left waiting).
        let mut answered = 0u64;
        let mut close = false;
        let mut waits = Vec::new();
        let mut keys = std::mem::take(&mut self.batch_keys);
        self.look_ahead(client, &mut keys);
        let conn = &mut client.conn;
        let out = &mut client.out;
        let mut index = 0;
        loop {
            let key = keys.get(index).copied().flatten();
            index += 1;
            let (outcome, frame_len, meta) = match client.rx.next_frame(payload_max) {
                Ok(Decoded::Incomplete { .. }) => break,
                Err(err) => {
                    respond(payload_max, out, 0, 0, &frame_error_response(&err));
                    close = true;
                    break;
                }
                Ok(Decoded::Frame {
                    header,
                    payload,
                    frame_len,
                }) => {
                    let meta = RequestMeta {
                        request_id: header.request_id,
                        group: header.group,
                    };
                    if header.kind != FrameKind::Request {
                        let err = frame_error_response(&FrameError::BadKind { got: 2 });
                        respond(payload_max, out, header.request_id, header.group, &err);
                        close = true;
                        break;
                    }
                    match access_request(payload) {
                        Ok(request) => {
                            let outcome = self.shared.handle_keyed(
                                conn,
                                meta,
                                request,
                                now_ms,
                                &mut random_nonce,
                                key,
                            );
                            self.lists
                                .note_request(&self.shared.table, conn, request, now_ms, key);
                            (outcome, frame_len, meta)
                        }
                        Err(err) => {
                            let response = frame_error_response(&err);
                            respond(payload_max, out, meta.request_id, meta.group, &response);
                            close = true;
                            break;
                        }
                    }
                }
            };
            client.rx.consume(frame_len);
            served += 1;
            answered += u64::from(matches!(
                outcome,
                Outcome::Reply(_) | Outcome::ReplyAndWake(..) | Outcome::ReplyAndClose(_)
            ));
            match outcome {
                Outcome::Reply(response) => {
                    respond(payload_max, out, meta.request_id, meta.group, &response);
                }
                Outcome::ReplyAndWake(response, key) => {
                    respond(payload_max, out, meta.request_id, meta.group, &response);
                    self.wakes.push(key);
                }
                Outcome::ReplyAndClose(response) => {
                    respond(payload_max, out, meta.request_id, meta.group, &response);
                    close = true;
                    break;
                }
                Outcome::Wait(request) => waits.push(request),
                Outcome::Watch(watch) => self.watch(watch),
                Outcome::List(list) => self.list(*list),
                Outcome::Commit(commit) => {
                    let origin = crate::waiters::Origin {
                        core: conn.core,
                        conn: conn.id,
                        request_id: meta.request_id,
                        group: meta.group,
                        queued: false,
                    };
                    self.commit(origin, *commit, arrived_ns);
                }
            }
        }
        self.batch_keys = keys;
        self.shared.stats[self.index].bump_ops(served);
        match conn.phase {
            Phase::Ready { .. } => {
                self.unauthenticated.remove(&conn.id);
                self.challenged.remove(&conn.id);
            }
            Phase::AwaitAuth { .. } => {
                if self.unauthenticated.remove(&conn.id) {
                    self.challenged.insert(conn.id);
                }
            }
            Phase::AwaitHello => {}
        }
        // A frame timeout measures how long one frame takes to arrive:
        // restart the clock whenever a frame completed.
        client.partial_since_ms = match (client.rx.buffered() > 0, served > 0) {
            (false, _) => None,
            (true, true) => Some(now_ms),
            (true, false) => Some(client.partial_since_ms.unwrap_or(now_ms)),
        };
        for request in waits {
            self.route_wait(request);
        }
        if answered > 0 {
            if client.answered == 0 {
                client.arrived_ns = arrived_ns;
            }
            client.answered += answered;
        }
        close
    }

    /// Hands an answer to its connection on this core. A grant for a
    /// connection that is gone (or closing) is released at once.
    pub(super) fn hand_over(&mut self, event: WaitEvent) {
        let origin = event.origin();
        let payload_max = self.opts.frame_payload_max;
        let Some(client) = self
            .clients
            .get_mut(&origin.conn)
            .filter(|client| !client.closing)
        else {
            if let WaitEvent::Granted { key, token, .. } = event {
                self.release_orphan(key, token);
            }
            return;
        };
        client.conn.pending = client.conn.pending.saturating_sub(1);
        self.shared.answered(&mut client.conn, &origin);
        // The idle clock restarts when the last pending answer goes out: a
        // watch answered after a minute must leave its client time to
        // watch again.
        client.heard_ms = monotonic_ms();
        let grant = match &event {
            WaitEvent::Granted { key, token, .. } => Some((*key, *token)),
            _ => None,
        };
        let (request_id, group, response) = event_response(event);
        respond(payload_max, &mut client.out, request_id, group, &response);
        if let Some((key, token)) = grant {
            client.unsent_grants.push((key, token, client.out.len()));
        }
        self.mark_dirty(origin.conn);
        self.schedule(origin.conn);
    }

    fn mark_dirty(&mut self, id: u64) {
        if let Some(client) = self.clients.get_mut(&id) {
            if !client.dirty && client.out.len() > client.sent {
                client.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Writes every connection with new answers.
    pub(super) fn flush_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(client) = self.clients.get_mut(&id) {
                client.dirty = false;
                if !client.writing {
                    self.flush(id);
                }
            }
        }
    }

    /// Writes what the connection has left; switches it to waiting for
    /// `OUT` if the socket takes less, closes it if it was closing and
    /// everything is out.
    fn flush(&mut self, id: u64) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        while client.sent < client.out.len() {
            match client.stream.write(&client.out[client.sent..]) {
                Ok(0) => {
                    failed = Some(io::Error::from(ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => client.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            debug!(core = self.index, conn = id, error = %e, "connection ended");
            self.close(id);
            return;
        }
        let sent = client.sent;
        client.unsent_grants.retain(|&(_, _, end)| end > sent);
        if client.answered > 0 && sent == client.out.len() {
            self.shared.stats[self.index].latency.record(
                monotonic_ns().saturating_sub(client.arrived_ns),
                client.answered,
            );
            client.answered = 0;
        }
        let interest = if sent == client.out.len() {
            client.out.clear();
            client.sent = 0;
            client.blocked_since_ms = None;
            if client.closing {
                self.close(id);
                return;
            }
            client.writing.then_some(epoll::EventFlags::IN)
        } else {
            client.blocked_since_ms.get_or_insert_with(monotonic_ms);
            (!client.writing).then_some(epoll::EventFlags::OUT)
        };
        if let Some(interest) = interest {
            client.writing = interest == epoll::EventFlags::OUT;
            if let Err(e) = epoll::modify(
                &self.epoll,
                &client.stream,
                epoll::EventData::new_u64(id),
                interest,
            ) {
                warn!(core = self.index, conn = id, error = %e, "could not change a connection's interest; closing it");
                self.close(id);
                return;
            }
        }
        self.schedule(id);
    }

    /// Queues `response` as the connection's last answer; it closes once
    /// that is written (or its write stalls).
    fn finish(&mut self, id: u64, request_id: u64, group: u32, response: &Response) {
        let payload_max = self.opts.frame_payload_max;
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        respond(payload_max, &mut client.out, request_id, group, response);
        self.finish_written(id);
    }

    /// The connection's last answer is in its buffer: close once written.
    fn finish_written(&mut self, id: u64) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.closing = true;
        self.unauthenticated.remove(&id);
        self.challenged.remove(&id);
        if !client.writing {
            self.flush(id);
        }
    }

    /// Enters the connection's earliest deadline in the timers, unless an
    /// entry at or before it is there already.
    pub(super) fn schedule(&mut self, id: u64) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let Some((at, _)) = client.deadline(&self.opts) else {
            return;
        };
        if client.timer_ms.is_some_and(|timer| timer <= at) {
            return;
        }
        client.timer_ms = Some(at);
        self.timers.push(std::cmp::Reverse((at, id)));
    }

    /// A timer entry of connection `id` for `at` came due.
    pub(super) fn on_timer(&mut self, id: u64, at: u64, now_ms: u64) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.timer_ms != Some(at) {
            // Superseded by an earlier entry that already ran.
            return;
        }
        client.timer_ms = None;
        match client.deadline(&self.opts) {
            Some((due, which)) if due <= now_ms => {
                debug!(core = self.index, conn = id, deadline = ?which, "connection timed out");
                self.shared.stats[self.index].close(which.closed());
                if which == Deadline::WriteStall {
                    self.close(id);
                    return;
                }
                let response = Response::Error {
                    code: ErrorCode::Timeout,
                    retry_after_ms: 0,
                    message: which.message().into(),
                };
                self.finish(id, 0, 0, &response);
            }
            // Moved later meanwhile (traffic came): wait for the new one.
            _ => self.schedule(id),
        }
    }

    /// Closes connection `id`: gives back its quota, cancels its waits
    /// and releases the grants it never heard of.
    pub(super) fn close(&mut self, id: u64) {
        let Some(mut client) = self.clients.remove(&id) else {
            return;
        };
        self.unauthenticated.remove(&id);
        self.challenged.remove(&id);
        self.shared.closed(&mut client.conn);
        if client.conn.pending > 0 {
            self.cancel(id);
        }
        for (key, token, _) in std::mem::take(&mut client.unsent_grants) {
            self.release_orphan(key, token);
        }
        self.connections.fetch_sub(1, Ordering::SeqCst);
        self.shared.stats[self.index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        // Dropping the stream closes it, which takes it out of the epoll set.
    }
}

fn frame_error_response(err: &FrameError) -> Response {
    let code = match err {
        FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::BadKind { .. }
        | FrameError::ReservedNotZero
        | FrameError::EmptyPayload
        | FrameError::Invalid
        | FrameError::Truncated => ErrorCode::Malformed,
    };
    Response::Error {
        code,
        retry_after_ms: 0,
        message: format!("{err}; closing the connection"),
    }
}

fn event_response(event: WaitEvent) -> (u64, u32, Response) {
    match event {
        WaitEvent::Granted {
            origin,
            token,
            ttl_ms,
            waited_ms,
            ..
        } => (
            origin.request_id,
            origin.group,
            Response::Granted {
                token,
                ttl_ms,
                waited_ms,
            },
        ),
        WaitEvent::TimedOut {
            origin,
            token,
            remaining_ms,
            waited_ms,
        } => (
            origin.request_id,
            origin.group,
            Response::Busy {
                token,
                remaining_ms,
                waiters: true,
                waited_ms,
            },
        ),
        WaitEvent::Reply { origin, response } => (origin.request_id, origin.group, response),
        WaitEvent::Watched {
            origin,
            current_token,
            last_token,
            changed,
        } => (
            origin.request_id,
            origin.group,
            Response::Watched {
                current_token,
                last_token,
                changed,
            },
        ),
        WaitEvent::Failed {
            origin,
            code,
            retry_after_ms,
            message,
        } => (
            origin.request_id,
            origin.group,
            Response::Error {
                code,
                retry_after_ms,
                message: message.to_string(),
            },
        ),
    }
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    // The kernel's CSPRNG does not fail once the system has booted; a
    // failure here is an environment defect worth crashing on.
    rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    nonce
}

/// Appends one response frame. Encoding our own responses cannot fail short
/// of a bug; if it ever does, answer with a bare internal error.
fn respond(payload_max: u32, out: &mut FrameBuf, request_id: u64, group: u32, response: &Response) {
    let limit = payload_max.max(1024);
    if let Err(e) = encode_response(out, request_id, group, limit, response) {
        warn!(error = %e, "could not encode a response");
        let fallback = Response::Error {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
            message: String::new(),
        };
        encode_response(out, request_id, group, limit, &fallback)
            .expect("a bare error response always fits");
    }
}

//! Peer transport: raft messages between nodes over TCP.
//!
//! One outbound connection per peer. The sender (the control thread)
//! writes its messages itself, without blocking: it queues their frames on
//! the peer's backlog and writes as much of the backlog as the socket
//! takes, several frames per `writev`, so a raft round costs no hand-off
//! to another thread. The peer's *link thread* dials and handshakes,
//! reconnects with exponential backoff, and writes what the socket did not
//! take (waiting until it is writable); messages are dropped while a peer
//! is unreachable or its backlog is full (raft retransmits what matters),
//! and a link that makes no progress for `IO_TIMEOUT` is redialed.
//! A link the peer closed (it restarted, or closed an idle link) is noticed
//! before the next write and within `LINK_CHECK` when idle, and redialed
//! at once, with the frame that had not gone out whole sent first again: a
//! write into a closed link is accepted by the kernel and lost, and raft
//! does not retransmit vote responses, so one such loss cost an election a
//! whole timeout. A peer that dials in (it just started) wakes our link
//! thread to it out of its back-off.
//! Inbound links are read by the control thread itself: a short-lived
//! thread per inbound connection does the handshake (blocking, with a
//! deadline) and then hands the socket over; the control thread waits in
//! one `poll()` on every adopted link and its doorbell
//! (`palisade_host::doorbell`, rung by the data plane's proposals and by a
//! hand-over) and reads what arrived in [`Transport::receive`], so an
//! inbound raft message reaches raft without a hand-off between threads.
//! At most `max` messages are taken per call, starting at another link
//! each time; the rest waits in the socket (TCP pushes back on the
//! sender) rather than being dropped. Sockets carry a DSCP
//! (`qos.peer_dscp`, CS6 by default)
//! and its `SO_PRIORITY` (see `palisade_host::mark`), `TCP_NODELAY`
//! and TCP keepalive;
//! outbound sockets are bound to this node's peer address, so a peer sees
//! them come from the address its config names.
//!
//! ```text
//! frame     = len: u32 LE | payload[len]            (len <= FRAME_MAX)
//! hello     = "PLSDPEER" | version: u8 = 2 | from: u16 LE | to: u16 LE
//!             | nonce_d[16] | cluster name          (dialer -> acceptor)
//! challenge = nonce_a[16] | HMAC(K, "palisade-peer v2 acceptor" | hello | nonce_a)
//! proof     = HMAC(K, "palisade-peer v2 dialer" | hello | nonce_a)
//! then      = one protobuf raft Message per frame   (dialer -> acceptor)
//! ```
//!
//! A *probe link* (`palisade tune`) has the same handshake with the magic
//! `"PLSDPING"`, which the MACs cover. After it the dialer sends
//! `ping = "PING" | seq: u64 LE` frames one at a time and the acceptor
//! answers each at once with `pong = "PONG" | seq`; nothing else is
//! accepted on it. A probe link never carries raft messages and never
//! retires a raft link; it counts against the inbound cap, closes when
//! idle, and carries at most [`PINGS_PER_LINK_MAX`] pings.
//!
//! K is the cluster secret (`cluster.secret_file`), HMAC-SHA256; both sides
//! prove they hold it with fresh nonces, so a recorded handshake cannot be
//! replayed. Without a secret K is empty: the exchange then only checks
//! cluster name and ids, and the peer port must be on a trusted network.
//!
//! Bad input (a wrong magic, version, cluster, node id, source address or
//! proof, a handshake slower than [`HANDSHAKE_DEADLINE`], an oversized or
//! undecodable frame, a message whose `from`/`to` do not match the
//! handshake) closes that connection and is logged; the node keeps going.
//! Inbound connections are capped, idle ones are closed after
//! [`IDLE_MAX`], and a newer connection from the same peer retires the
//! older one.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use protobuf::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tracing::{debug, info, warn};

use palisade_host::clock::monotonic_ms;
use palisade_host::doorbell::{poll_for, Doorbell};
use palisade_host::throttle::LogThrottle;
use rustix::event::{PollFd, PollFlags};

const MAGIC: &[u8; 8] = b"PLSDPEER";
/// The magic of a probe link's hello.
const PROBE_MAGIC: &[u8; 8] = b"PLSDPING";
const PING: &[u8; 4] = b"PING";
const PONG: &[u8; 4] = b"PONG";
/// A ping or pong frame: tag and sequence number.
const PING_LEN: usize = 4 + 8;
/// Pings one probe link answers before it is closed.
pub const PINGS_PER_LINK_MAX: u64 = 100_000;
const VERSION: u8 = 2;
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Largest hello: magic, version, ids, nonce and a 64-byte cluster name.
const HELLO_MAX: usize = 128;
/// Largest frame accepted. raft sends at most 1 MiB of entries per message
/// (`max_size_per_msg`), but a snapshot carries the whole replicated lease
/// state (up to `LEASE_STATE_LEN_MAX`, 512 MiB) besides raft's metadata.
/// Peers are authenticated before any frame is read, and a frame's buffer
/// grows with the bytes that arrive, not with the length it announces.
pub const FRAME_MAX: usize = palisade_dataplane::replica::LEASE_STATE_LEN_MAX + (1 << 20);
/// Frames queued for a peer before new ones are dropped.
const BACKLOG_FRAMES_MAX: usize = 4096;
/// Bytes queued for a peer before new frames are dropped. One frame
/// larger than this (a snapshot) is queued on top of the rest when no other
/// such frame is.
const BACKLOG_BYTES_MAX: usize = 16 << 20;
/// Frames handed to one `writev` at most.
const WRITEV_FRAMES_MAX: usize = 64;
/// DSCP of peer connections unless configured: class selector 6 (network
/// control), as `qos.peer_dscp` defaults to.
pub const PEER_DSCP_DEFAULT: u8 = 48;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// How often an idle outbound link is checked for a close by the peer.
const LINK_CHECK: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for the whole handshake, however the bytes trickle in.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
/// An inbound link that carries nothing for this long is closed; its
/// dialer reconnects when it has something to say.
pub const IDLE_MAX: Duration = Duration::from_secs(60);
/// How often a probe link's reader blocked on an idle link looks at its
/// flags.
const READER_POLL: Duration = Duration::from_millis(500);
/// Bytes an adopted inbound link reads at once (at least).
const READ_CHUNK: usize = 64 << 10;
/// Inbound connections (handshaking or not) at once: a few per member.
fn inbound_max(members: usize) -> usize {
    8 + 2 * members
}

type HmacSha256 = Hmac<Sha256>;

/// The running transport.
#[derive(Debug)]
pub struct Transport {
    peers: HashMap<u64, Arc<PeerOut>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    /// Outbound links up.
    connected: Arc<AtomicUsize>,
    self_id: u16,
    /// Inbound raft links, read by [`Transport::receive`].
    inbound: Vec<InLink>,
    /// The link [`Transport::receive`] read first last time.
    first: usize,
    /// Where handshake threads leave the links they authenticated.
    handover: Arc<Handover>,
}

/// An authenticated inbound raft link, read by the control thread.
#[derive(Debug)]
struct InLink {
    from: u16,
    remote: SocketAddr,
    /// Non-blocking.
    stream: TcpStream,
    /// Holds whatever the handshake read past the proof.
    frames: FrameReader,
    heard_ms: u64,
    /// Counts against the inbound cap while the link lives.
    _slot: Slot,
}

/// Inbound links whose handshake is done, waiting for the control thread
/// to adopt them.
#[derive(Debug)]
struct Handover {
    links: Mutex<Vec<InLink>>,
    /// Set with every hand-over, so the control thread looks at `links`
    /// (a lock) only when there is something there.
    waiting: AtomicBool,
    doorbell: Arc<Doorbell>,
}

impl Handover {
    fn hand(&self, link: InLink) {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(link);
        self.waiting.store(true, Ordering::SeqCst);
        self.doorbell.ring();
    }

    fn take(&self) -> Vec<InLink> {
        if !self.waiting.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.links.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One peer's outbound side: shared by the sender, which queues frames
/// and writes what the socket takes at once, and the peer's link thread,
/// which dials, writes the rest when the socket is writable, and redials.
/// Neither blocks while it holds `state`: the socket is non-blocking.
#[derive(Debug)]
struct PeerOut {
    state: Mutex<OutState>,
    /// Wakes the link thread: a backlog the socket did not take, a link
    /// that failed, the peer dialed us, or the transport stops.
    wake: SyncSender<()>,
}

/// The part of [`PeerOut`] behind its lock.
#[derive(Debug, Default)]
struct OutState {
    /// The link, once dialed and handshaken; non-blocking.
    link: Option<TcpStream>,
    /// The link failed (a write error, or the peer closed it): the link
    /// thread redials.
    failed: bool,
    /// The link thread is backing off after a failed dial: new frames are
    /// dropped (they would be stale by the time a link is up).
    backing_off: bool,
    /// Whole frames not yet written, oldest first.
    frames: VecDeque<Vec<u8>>,
    /// Their bytes, except [`OutState::big`]'s.
    bytes: usize,
    /// Bytes of the one queued frame larger than `BACKLOG_BYTES_MAX` (a
    /// snapshot), or 0: it does not crowd out the small frames.
    big: usize,
    /// Bytes of the first frame already written on `link`; a new link
    /// sends that frame whole again.
    written: usize,
}

impl OutState {
    /// Queues a frame; gives it back when the backlog is full or the peer
    /// unreachable.
    fn queue(&mut self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        // One frame beyond the byte cap (a snapshot) is queued on its own
        // account; a second is dropped while the first waits.
        let big = frame.len() > BACKLOG_BYTES_MAX;
        let full = if big {
            self.big > 0
        } else {
            self.bytes + frame.len() > BACKLOG_BYTES_MAX
        };
        if self.backing_off || self.frames.len() >= BACKLOG_FRAMES_MAX || full {
            return Err(frame);
        }
        if big {
            self.big = frame.len();
        } else {
            self.bytes += frame.len();
        }
        self.frames.push_back(frame);
        Ok(())
    }

    /// Takes a new link and writes the backlog on it.
    fn install(&mut self, link: TcpStream) {
        self.link = Some(link);
        self.failed = false;
        self.written = 0;
        if self.flush().is_err() {
            self.failed = true;
        }
    }

    /// Gives up the link; the frame it cut short goes whole on the next.
    fn take_link(&mut self) -> Option<TcpStream> {
        self.failed = false;
        self.written = 0;
        self.link.take()
    }

    /// Drops every queued frame.
    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.big = 0;
        self.written = 0;
    }

    /// Writes queued frames until all are written (`Ok(true)`) or the
    /// socket takes no more (`Ok(false)`). No link: `Ok(false)`.
    fn flush(&mut self) -> io::Result<bool> {
        let Some(link) = self.link.as_mut() else {
            return Ok(false);
        };
        while !self.frames.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .frames
                .iter()
                .take(WRITEV_FRAMES_MAX)
                .enumerate()
                .map(|(i, frame)| {
                    IoSlice::new(if i == 0 {
                        &frame[self.written..]
                    } else {
                        frame
                    })
                })
                .collect();
            let mut n = match link.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 {
                let left = self.frames[0].len() - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                let frame = self.frames.pop_front().expect("a frame was written");
                if frame.len() > BACKLOG_BYTES_MAX {
                    self.big = 0;
                } else {
                    self.bytes -= frame.len();
                }
                self.written = 0;
            }
        }
        Ok(true)
    }
}

impl PeerOut {
    fn new() -> (Arc<PeerOut>, Receiver<()>) {
        let (wake, woken) = mpsc::sync_channel(1);
        let out = PeerOut {
            state: Mutex::new(OutState::default()),
            wake,
        };
        (Arc::new(out), woken)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the link thread (a wake already pending is enough).
    fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Queues `frames` and writes what the socket takes now; the link
    /// thread is woken for the rest, or when the link turns out closed.
    fn send(&self, peer: u64, frames: Vec<Vec<u8>>) {
        let mut state = self.lock();
        let mut dropped = 0usize;
        for frame in frames {
            let Err(frame) = state.queue(frame) else {
                continue;
            };
            // Full: write what the socket takes, then try again.
            if !state.failed && state.flush().is_err() {
                state.failed = true;
            }
            if state.queue(frame).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            debug!(
                peer,
                dropped, "messages dropped: the peer is unreachable or its backlog is full"
            );
        }
        let wake = match state.link.as_ref() {
            // Dialing (it writes the backlog once up) or backing off.
            None => false,
            Some(_) if state.failed => false,
            Some(link) if link_closed(link) => {
                state.failed = true;
                true
            }
            Some(_) => match state.flush() {
                Ok(done) => !done,
                Err(e) => {
                    debug!(peer, error = %e, "peer link write failed");
                    state.failed = true;
                    true
                }
            },
        };
        drop(state);
        if wake {
            self.wake();
        }
    }
}

impl InLink {
    /// Reads once if `poll` found the link `readable`, then appends the
    /// whole frames it holds to `out`, as messages, until `out` holds
    /// `max`. An error closes the link.
    fn read_ready(
        &mut self,
        readable: bool,
        self_id: u16,
        now_ms: u64,
        out: &mut Vec<Message>,
        max: usize,
    ) -> io::Result<()> {
        if readable {
            match self.frames.read_from(&mut self.stream, READ_CHUNK) {
                Ok(_) => self.heard_ms = now_ms,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        while out.len() < max {
            let Some(frame) = self.frames.take(FRAME_MAX)? else {
                break;
            };
            let message = Message::parse_from_bytes(&frame)
                .map_err(|e| invalid(format!("bad message: {e}")))?;
            if message.from != u64::from(self.from) || message.to != u64::from(self_id) {
                return Err(invalid(format!(
                    "message from {} to {} on a link from {}",
                    message.from, message.to, self.from
                )));
            }
            out.push(message);
        }
        Ok(())
    }
}

/// Link threads by peer id, for the accept loop's wake-up when a peer
/// dials in.
type Wakers = HashMap<u16, Arc<PeerOut>>;

/// What both directions of the handshake need to know.
#[derive(Clone)]
struct Identity {
    self_id: u16,
    cluster: String,
    /// The cluster secret; empty when none is configured.
    secret: Arc<[u8]>,
    /// DSCP of every peer socket, both directions.
    peer_dscp: u8,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("self_id", &self.self_id)
            .field("cluster", &self.cluster)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// Sets the DSCP mark and priority (before `connect` on outbound sockets,
/// so the SYN carries it too). A failure costs only priority: logged.
fn mark_dscp(sock: &SockRef<'_>, ipv6: bool, dscp: u8) {
    if let Err(e) = palisade_host::mark::mark(sock, ipv6, dscp) {
        warn!(dscp, error = %e, "could not mark a peer socket");
    }
}

/// `TCP_NODELAY` and keepalive, on every peer socket once connected.
fn link_options(stream: &TcpStream) {
    let sock = SockRef::from(stream);
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
}

fn hello_bytes(
    magic: &[u8; 8],
    cluster: &str,
    from: u16,
    to: u16,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(cluster.as_bytes());
    out
}

fn mac(secret: &[u8], label: &str, hello: &[u8], nonce: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label.as_bytes());
    mac.update(hello);
    mac.update(nonce);
    mac
}

const LABEL_ACCEPTOR: &str = "palisade-peer v2 acceptor";
const LABEL_DIALER: &str = "palisade-peer v2 dialer";

fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(format!("random source: {e}")))?;
    Ok(nonce)
}

/// `payload` as a frame: its length, then itself.
fn frame(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    stream.write_all(&frame(payload)?)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reassembles length-prefixed frames from a socket whose reads may time
/// out (or would block) part-way through a frame. Frames are taken from
/// `start`; the unread rest moves to the front only before the next read.
#[derive(Debug)]
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; 4096],
            start: 0,
            filled: 0,
        }
    }

    /// The length the next frame's header announces, once it was read.
    fn next_len(&self) -> Option<usize> {
        let header = self.buf.get(self.start..self.start + 4)?;
        (self.filled - self.start >= 4)
            .then(|| u32::from_le_bytes(header.try_into().expect("4 bytes")) as usize)
    }

    /// A whole frame from what was read, if there is one.
    fn take(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let have = self.filled - self.start;
        let Some(len) = self.next_len() else {
            return Ok(None);
        };
        if len > max {
            return Err(invalid(format!("frame of {len} bytes exceeds {max}")));
        }
        if have < 4 + len {
            return Ok(None);
        }
        let frame = self.buf[self.start + 4..self.start + 4 + len].to_vec();
        self.start += 4 + len;
        if self.start == self.filled {
            (self.start, self.filled) = (0, 0);
            // A snapshot's buffer is not kept for the small frames after it.
            if self.buf.len() > BACKLOG_BYTES_MAX {
                self.buf = Vec::new();
            }
        }
        Ok(Some(frame))
    }

    /// Whether a whole frame waits in the buffer (`take` would give it
    /// or fail on it).
    fn has_frame(&self) -> bool {
        self.next_len()
            .is_some_and(|len| self.filled - self.start >= 4 + len)
    }

    /// One `read` into the buffer, made room for first (at least `chunk`
    /// bytes free, and the whole of a frame whose header came). End of
    /// stream is an error: a peer link never ends cleanly mid-protocol.
    fn read_from(&mut self, stream: &mut TcpStream, chunk: usize) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let mut want = self.filled + chunk;
        // A longer frame is refused by `take`, not buffered. A long one is
        // made room for as it arrives (the buffer at most doubles a read),
        // not all at once from the length it announces.
        if let Some(len) = self.next_len().filter(|&len| len <= FRAME_MAX) {
            want = want.max((4 + len).min(self.buf.len().max(chunk) * 2));
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        match stream.read(&mut self.buf[self.filled..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.filled += n;
                Ok(n)
            }
        }
    }

    /// The next frame, or `None` when a read timed out first.
    fn next(&mut self, stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = self.take(max)? {
                return Ok(Some(frame));
            }
            match self.read_from(stream, 4096) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame before `deadline_ms` (monotonic), however slowly its
    /// bytes arrive.
    fn next_by(
        &mut self,
        stream: &mut TcpStream,
        max: usize,
        deadline_ms: u64,
    ) -> io::Result<Vec<u8>> {
        loop {
            let left = deadline_ms.saturating_sub(monotonic_ms());
            if left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake not finished in time",
                ));
            }
            stream.set_read_timeout(Some(Duration::from_millis(left)))?;
            if let Some(frame) = self.next(stream, max)? {
                return Ok(frame);
            }
        }
    }
}

impl Transport {
    /// Listens on `listen` and connects to every peer in `peers` (id,
    /// address; this node excluded). Received messages are read by
    /// [`Transport::receive`]; a link authenticated while the caller
    /// sleeps there rings `doorbell`. `secret` is the cluster secret
    /// (empty: none). Peer sockets carry [`PEER_DSCP_DEFAULT`];
    /// [`Transport::start_with_dscp`] chooses.
    pub fn start(
        self_id: u16,
        cluster: &str,
        secret: &[u8],
        listen: SocketAddr,
        peers: &[(u16, SocketAddr)],
        doorbell: Arc<Doorbell>,
    ) -> io::Result<Transport> {
        let dscp = PEER_DSCP_DEFAULT;
        Transport::start_with_dscp(self_id, cluster, secret, listen, peers, doorbell, dscp)
    }

    /// [`Transport::start`] with peer sockets marked with `peer_dscp`
    /// (`qos.peer_dscp`), inbound and outbound.
    pub fn start_with_dscp(
        self_id: u16,
        cluster: &str,
        secret: &[u8],
        listen: SocketAddr,
        peers: &[(u16, SocketAddr)],
        doorbell: Arc<Doorbell>,
        peer_dscp: u8,
    ) -> io::Result<Transport> {
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let identity = Identity {
            self_id,
            cluster: cluster.to_string(),
            secret: Arc::from(secret),
            peer_dscp,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let handover = Arc::new(Handover {
            links: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
            doorbell,
        });
        let mut threads = Vec::new();
        let outs: Vec<_> = peers.iter().map(|_| PeerOut::new()).collect();
        let wakers: Wakers = peers
            .iter()
            .zip(&outs)
            .map(|(&(peer, _), (out, _))| (peer, out.clone()))
            .collect();
        {
            let stop = stop.clone();
            let identity = identity.clone();
            let known = peers.to_vec();
            let handover = handover.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("palisade-peer-accept".into())
                    .spawn(move || {
                        accept_loop(&listener, &identity, &known, &handover, &wakers, &stop);
                    })?,
            );
        }
        let bind_ip = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
        let mut by_id = HashMap::new();
        let connected = Arc::new(AtomicUsize::new(0));
        for (&(peer, addr), (out, woken)) in peers.iter().zip(outs) {
            by_id.insert(u64::from(peer), out.clone());
            let stop = stop.clone();
            let identity = identity.clone();
            let connected = connected.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("palisade-peer-{peer}"))
                    .spawn(move || {
                        let link = OutLink {
                            identity: &identity,
                            peer,
                            addr,
                            bind_ip,
                        };
                        link.run(&out, &woken, &stop, &connected);
                    })?,
            );
        }
        info!(
            listen = %local_addr,
            peers = peers.len(),
            authenticated = !secret.is_empty(),
            "peer transport started"
        );
        Ok(Transport {
            peers: by_id,
            stop,
            threads,
            local_addr,
            connected,
            self_id,
            inbound: Vec::new(),
            first: 0,
            handover,
        })
    }

    /// Waits up to `wait` for inbound raft messages or a ring of the
    /// doorbell, then reads every link `poll` found readable and appends
    /// their messages to `out`, `max` at most (the rest stays in the
    /// socket). Returns whether the doorbell rang (pass it to
    /// [`Doorbell::awake`]). Call it between [`Doorbell::sleep_begins`]
    /// and [`Doorbell::awake`]; with `wait` zero it does not sleep.
    ///
    /// A link that fails, sends a bad frame or a message that does not
    /// match its handshake, or idles past [`IDLE_MAX`] is closed and
    /// logged (its dialer reconnects); a newer link from the same peer
    /// replaces the older one.
    pub fn receive(&mut self, wait: Duration, out: &mut Vec<Message>, max: usize) -> bool {
        for link in self.handover.take() {
            if let Some(old) = self.inbound.iter().position(|l| l.from == link.from) {
                debug!(
                    from = link.from,
                    "a newer link from the same peer took over"
                );
                self.inbound.swap_remove(old);
            }
            self.inbound.push(link);
        }
        let buffered = self.inbound.iter().any(|l| l.frames.has_frame());
        let wait = if buffered { Duration::ZERO } else { wait };
        let mut readable = vec![false; self.inbound.len()];
        let rung = {
            let mut fds = Vec::with_capacity(1 + self.inbound.len());
            fds.push(PollFd::from_borrowed_fd(
                self.handover.doorbell.fd(),
                PollFlags::IN,
            ));
            for link in &self.inbound {
                fds.push(PollFd::new(&link.stream, PollFlags::IN));
            }
            poll_for(&mut fds, wait);
            for (flag, fd) in readable.iter_mut().zip(&fds[1..]) {
                *flag = !fd.revents().is_empty();
            }
            fds[0].revents().contains(PollFlags::IN)
        };
        let now = monotonic_ms();
        let count = self.inbound.len();
        // Each call starts at the next link, so a link that alone fills
        // `max` cannot keep the others unread.
        self.first = if count == 0 {
            0
        } else {
            (self.first + 1) % count
        };
        let mut failed = Vec::new();
        for k in 0..count {
            let i = (self.first + k) % count;
            let link = &mut self.inbound[i];
            let result = if out.len() >= max {
                Ok(())
            } else {
                link.read_ready(readable[i], self.self_id, now, out, max)
            };
            let idle = now.saturating_sub(link.heard_ms) > IDLE_MAX.as_millis() as u64;
            match result {
                Err(e) => failed.push((i, e)),
                Ok(()) if idle => failed.push((i, invalid("idle".into()))),
                Ok(()) => {}
            }
        }
        // Highest index first, so the indices left stay valid.
        failed.sort_unstable_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in failed {
            let link = self.inbound.swap_remove(i);
            info!(from = link.from, remote = %link.remote, error = %e, "peer disconnected (inbound)");
        }
        rung
    }

    /// Inbound raft links adopted and open.
    #[must_use]
    pub fn inbound_links(&self) -> usize {
        self.inbound.len()
    }

    /// Peers whose outbound link is up (handshake done, last write good).
    #[must_use]
    pub fn peers_connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// The address peers connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends messages to their peers from the calling thread, without
    /// blocking: what a socket does not take at once is written by the
    /// peer's link thread. Drops messages for a peer that is unreachable
    /// or whose backlog is full (raft retransmits).
    pub fn send(&self, messages: Vec<Message>) {
        let mut frames: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        for message in messages {
            let to = message.to;
            if !self.peers.contains_key(&to) {
                debug!(to, "message for an unknown peer dropped");
                continue;
            }
            let frame = match message
                .write_to_bytes()
                .map_err(io::Error::other)
                .and_then(|b| frame(&b))
            {
                Ok(frame) => frame,
                Err(e) => {
                    warn!(to, error = %e, "could not encode a raft message");
                    continue;
                }
            };
            match frames.iter_mut().find(|(peer, _)| *peer == to) {
                Some((_, queued)) => queued.push(frame),
                None => frames.push((to, vec![frame])),
            }
        }
        for (peer, queued) in frames {
            if let Some(out) = self.peers.get(&peer) {
                out.send(peer, queued);
            }
        }
    }

    /// Stops every thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for out in self.peers.values() {
            out.wake();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Transport {
    /// A transport dropped without [`Transport::stop`] still ends its
    /// threads (without waiting for them).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for out in self.peers.values() {
            out.wake();
        }
    }
}

/// Counts a live inbound connection; uncounts it when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    identity: &Identity,
    known: &[(u16, SocketAddr)],
    handover: &Arc<Handover>,
    wakers: &Wakers,
    stop: &Arc<AtomicBool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let max = inbound_max(known.len() + 1);
    let mut refused_at_ms = 0;
    let mut accept_log = LogThrottle::new(1_000);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                if live.fetch_add(1, Ordering::SeqCst) >= max {
                    live.fetch_sub(1, Ordering::SeqCst);
                    drop(stream);
                    let now = monotonic_ms();
                    if now >= refused_at_ms + 1_000 {
                        refused_at_ms = now;
                        warn!(%from, max, "too many inbound peer connections; refusing");
                    }
                    continue;
                }
                let slot = Slot(live.clone());
                let handover = handover.clone();
                let identity = identity.clone();
                let known = known.to_vec();
                let stop = stop.clone();
                let wakers = wakers.clone();
                let spawned = std::thread::Builder::new()
                    .name("palisade-peer-in".into())
                    .spawn(move || {
                        let link = Link {
                            identity: &identity,
                            known: &known,
                            wakers: &wakers,
                            stop: &stop,
                        };
                        if let Err(e) = link.accept(stream, from, slot, &handover) {
                            info!(%from, error = %e, "peer disconnected (inbound)");
                        }
                    });
                if let Err(e) = spawned {
                    warn!(error = %e, "could not start a peer reader");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                // Out of file descriptors, say: it fails as fast as it is
                // retried, so log once a second.
                if let Some(suppressed) = accept_log.failed(monotonic_ms()) {
                    warn!(error = %e, suppressed, "peer accept failed (more failures since the last line: suppressed)");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What an inbound reader checks against.
struct Link<'a> {
    identity: &'a Identity,
    known: &'a [(u16, SocketAddr)],
    wakers: &'a Wakers,
    stop: &'a AtomicBool,
}

impl Link<'_> {
    /// Handshakes as the acceptor, then hands a raft link over to the
    /// control thread (or answers a probe link's pings itself).
    fn accept(
        &self,
        mut stream: TcpStream,
        remote: SocketAddr,
        slot: Slot,
        handover: &Handover,
    ) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        let ipv6 = stream.local_addr()?.is_ipv6();
        mark_dscp(&SockRef::from(&stream), ipv6, self.identity.peer_dscp);
        link_options(&stream);
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let deadline = monotonic_ms() + HANDSHAKE_DEADLINE.as_millis() as u64;
        let mut frames = FrameReader::new();
        let hello = frames.next_by(&mut stream, HELLO_MAX, deadline)?;
        let (from, probe) = self.check_hello(&hello, remote.ip())?;

        let nonce_a = nonce()?;
        let mut challenge = nonce_a.to_vec();
        challenge.extend_from_slice(
            &mac(&self.identity.secret, LABEL_ACCEPTOR, &hello, &nonce_a)
                .finalize()
                .into_bytes(),
        );
        write_frame(&mut stream, &challenge)?;
        let proof = frames.next_by(&mut stream, MAC_LEN, deadline)?;
        if mac(&self.identity.secret, LABEL_DIALER, &hello, &nonce_a)
            .verify_slice(&proof)
            .is_err()
        {
            warn!(
                from,
                %remote,
                "refused a peer whose proof is wrong: the cluster secrets differ (or only one side has one)"
            );
            return Err(invalid("wrong proof".into()));
        }
        if probe {
            debug!(from, %remote, "probe link up");
            return self.answer_pings(&mut stream, &mut frames);
        }
        info!(from, %remote, "peer connected (inbound)");
        if let Some(out) = self.wakers.get(&from) {
            // Out of a back-off, or to check the link it has: it may be
            // one the peer's previous run left behind.
            out.wake();
        }
        stream.set_read_timeout(None)?;
        stream.set_nonblocking(true)?;
        handover.hand(InLink {
            from,
            remote,
            stream,
            frames,
            heard_ms: monotonic_ms(),
            _slot: slot,
        });
        Ok(())
    }

    /// Answers each ping on a probe link with its pong until the dialer
    /// closes, the link idles, the node stops or the ping cap is reached.
    fn answer_pings(&self, stream: &mut TcpStream, frames: &mut FrameReader) -> io::Result<()> {
        stream.set_read_timeout(Some(READER_POLL))?;
        let mut heard_ms = monotonic_ms();
        let mut answered = 0u64;
        while !self.stop.load(Ordering::SeqCst) && answered < PINGS_PER_LINK_MAX {
            let Some(frame) = frames.next(stream, PING_LEN)? else {
                if monotonic_ms().saturating_sub(heard_ms) > IDLE_MAX.as_millis() as u64 {
                    return Err(invalid("idle".into()));
                }
                continue;
            };
            heard_ms = monotonic_ms();
            if frame.len() != PING_LEN || &frame[..PING.len()] != PING {
                return Err(invalid("a probe link carries only pings".into()));
            }
            let mut pong = PONG.to_vec();
            pong.extend_from_slice(&frame[PING.len()..]);
            write_frame(stream, &pong)?;
            answered += 1;
        }
        Ok(())
    }

    /// Checks a hello; returns the peer's id and whether it opens a probe
    /// link.
    fn check_hello(&self, hello: &[u8], remote: IpAddr) -> io::Result<(u16, bool)> {
        let fixed = MAGIC.len() + 1 + 4 + NONCE_LEN;
        if hello.len() < fixed {
            return Err(invalid("not a palisade peer".into()));
        }
        let probe = match &hello[..MAGIC.len()] {
            magic if magic == MAGIC => false,
            magic if magic == PROBE_MAGIC => true,
            _ => return Err(invalid("not a palisade peer".into())),
        };
        let version = hello[MAGIC.len()];
        if version != VERSION {
            warn!(version, "refused a peer speaking another transport version");
            return Err(invalid(format!("peer speaks version {version}")));
        }
        let at = MAGIC.len() + 1;
        let from = u16::from_le_bytes([hello[at], hello[at + 1]]);
        let to = u16::from_le_bytes([hello[at + 2], hello[at + 3]]);
        let their_cluster = String::from_utf8_lossy(&hello[fixed..]);
        if their_cluster != self.identity.cluster {
            warn!(from, cluster = %their_cluster, "refused a peer of another cluster");
            return Err(invalid(format!("cluster {their_cluster:?} is not ours")));
        }
        let Some(&(_, configured)) = self.known.iter().find(|(id, _)| *id == from) else {
            warn!(from, "refused a peer that is not a member");
            return Err(invalid(format!("{from} is not a member")));
        };
        if to != self.identity.self_id {
            warn!(from, to, "refused a peer talking to another node");
            return Err(invalid(format!("handshake from {from} to {to}")));
        }
        let expected = configured.ip();
        if !expected.is_unspecified() && expected != remote {
            warn!(from, %remote, %expected, "refused a peer connecting from an address its config does not name");
            return Err(invalid(format!("{from} connected from {remote}")));
        }
        Ok((from, probe))
    }
}

/// Connects to `addr`, from `bind_ip` when given, marked with `dscp`.
fn dial(addr: SocketAddr, bind_ip: Option<IpAddr>, dscp: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    mark_dscp(&SockRef::from(&socket), addr.is_ipv6(), dscp);
    if let Some(ip) = bind_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

/// Handshakes as the dialer: sends the hello, checks the acceptor's proof,
/// sends ours.
fn handshake(
    stream: &mut TcpStream,
    identity: &Identity,
    peer: u16,
    magic: &[u8; 8],
) -> io::Result<()> {
    let hello = hello_bytes(magic, &identity.cluster, identity.self_id, peer, &nonce()?);
    write_frame(stream, &hello)?;
    let deadline = monotonic_ms() + HANDSHAKE_DEADLINE.as_millis() as u64;
    let challenge = FrameReader::new().next_by(stream, NONCE_LEN + MAC_LEN, deadline)?;
    if challenge.len() != NONCE_LEN + MAC_LEN {
        return Err(invalid("short challenge".into()));
    }
    let (nonce_a, their_mac) = challenge.split_at(NONCE_LEN);
    if mac(&identity.secret, LABEL_ACCEPTOR, &hello, nonce_a)
        .verify_slice(their_mac)
        .is_err()
    {
        return Err(invalid(
            "the peer's proof is wrong: the cluster secrets differ (or only one side has one)"
                .into(),
        ));
    }
    let proof = mac(&identity.secret, LABEL_DIALER, &hello, nonce_a)
        .finalize()
        .into_bytes();
    write_frame(stream, &proof)
}

/// Counts one link in `connected` while it lives.
struct Up<'a>(&'a AtomicUsize);

impl<'a> Up<'a> {
    fn new(connected: &'a AtomicUsize) -> Up<'a> {
        connected.fetch_add(1, Ordering::Relaxed);
        Up(connected)
    }
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the peer closed (or reset) this outbound link. The acceptor
/// never writes on a raft link after the handshake, so anything readable
/// means the link is gone.
fn link_closed(stream: &TcpStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(
        stream,
        PollFlags::IN | PollFlags::RDHUP | PollFlags::PRI,
    )];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&now)) {
        Ok(0) => false,
        Ok(_) => !fds[0].revents().is_empty(),
        Err(rustix::io::Errno::INTR) => false,
        Err(_) => true,
    }
}

/// Waits out a back-off, but only until the peer shows it is up (it
/// dialed us). Returns false when the transport is gone.
fn back_off(woken: &Receiver<()>, backoff: Duration, stop: &AtomicBool) -> bool {
    match woken.recv_timeout(backoff) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => !stop.load(Ordering::SeqCst),
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
    }
}

/// Whether `stream` can take bytes within `wait` (or has an error or a
/// close to report, which the next write or check finds).
fn writable_within(stream: &TcpStream, wait: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(stream, PollFlags::OUT)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: i64::try_from(wait.as_nanos())
            .unwrap_or(i64::MAX)
            .min(999_999_999),
    };
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// A peer's link thread: what it dials and as whom.
struct OutLink<'a> {
    identity: &'a Identity,
    peer: u16,
    addr: SocketAddr,
    bind_ip: Option<IpAddr>,
}

impl OutLink<'_> {
    /// Dials (with back-off), hands the link to `out`, writes what its
    /// sender could not, notices a closed or stuck link and redials, until
    /// `stop`.
    fn run(&self, out: &PeerOut, woken: &Receiver<()>, stop: &AtomicBool, links_up: &AtomicUsize) {
        let (peer, addr) = (self.peer, self.addr);
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        while !stop.load(Ordering::SeqCst) {
            out.lock().backing_off = false;
            let connected = self.dial();
            let (stream, watch) = match connected {
                Ok(pair) => pair,
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData && !warned {
                        warn!(peer, %addr, error = %e, "peer handshake refused");
                        warned = true;
                    } else {
                        debug!(peer, %addr, error = %e, "peer unreachable");
                    }
                    {
                        let mut state = out.lock();
                        state.clear();
                        state.backing_off = true;
                    }
                    if !back_off(woken, backoff, stop) {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            warned = false;
            info!(peer, %addr, "peer connected (outbound)");
            let up = Up::new(links_up);
            out.lock().install(stream);
            let why = self.serve(out, woken, stop, &watch);
            drop(up);
            drop(out.lock().take_link());
            // Wake-ups meant for the link just closed.
            while woken.try_recv().is_ok() {}
            match why {
                None => return,
                Some(why) => info!(peer, %addr, why, "peer link lost (outbound); reconnecting"),
            }
        }
    }

    /// Dials and handshakes; the link non-blocking, and a handle on the same
    /// socket for this thread's checks.
    fn dial(&self) -> io::Result<(TcpStream, TcpStream)> {
        let mut stream = dial(self.addr, self.bind_ip, self.identity.peer_dscp)?;
        link_options(&stream);
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        handshake(&mut stream, self.identity, self.peer, MAGIC)?;
        stream.set_nonblocking(true)?;
        let watch = stream.try_clone()?;
        Ok((stream, watch))
    }

    /// Keeps an established link: writes the backlog the sender left when
    /// the socket is writable, checks an idle link every `LINK_CHECK`.
    /// Returns why the link is done, or `None` when the transport stops.
    fn serve(
        &self,
        out: &PeerOut,
        woken: &Receiver<()>,
        stop: &AtomicBool,
        watch: &TcpStream,
    ) -> Option<&'static str> {
        // Since when queued frames have waited without a byte going out.
        let mut stuck_since_ms: Option<u64> = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            let (failed, pending) = {
                let state = out.lock();
                (state.failed, !state.frames.is_empty())
            };
            if failed {
                return Some("closed by the peer, or a write failed");
            }
            if pending {
                writable_within(watch, LINK_CHECK);
                let mut state = out.lock();
                let before = (state.frames.len(), state.written);
                if link_closed(watch) {
                    state.failed = true;
                    continue;
                }
                match state.flush() {
                    Ok(true) => stuck_since_ms = None,
                    Ok(false) if (state.frames.len(), state.written) != before => {
                        stuck_since_ms = None;
                    }
                    Ok(false) => {
                        let now = monotonic_ms();
                        let since = *stuck_since_ms.get_or_insert(now);
                        if now.saturating_sub(since) > IO_TIMEOUT.as_millis() as u64 {
                            return Some("the peer took nothing for IO_TIMEOUT");
                        }
                    }
                    Err(_) => state.failed = true,
                }
                continue;
            }
            stuck_since_ms = None;
            match woken.recv_timeout(LINK_CHECK) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
            if link_closed(watch) {
                out.lock().failed = true;
            }
        }
    }
}

/// Measures round-trip times to peers over the peer transport itself: the
/// same dial (from this node's peer address), DSCP mark, authenticated
/// handshake and checks as a raft link, on a probe link. Used by
/// `palisade tune`; it needs no running node on this host.
#[derive(Debug)]
pub struct Prober {
    identity: Identity,
    bind_ip: Option<IpAddr>,
}

impl Prober {
    /// A prober speaking as node `self_id` of `cluster` with the cluster
    /// `secret` (empty: none), dialing from `bind_ip` (this node's peer
    /// address; `None` for any).
    #[must_use]
    pub fn new(self_id: u16, cluster: &str, secret: &[u8], bind_ip: Option<IpAddr>) -> Prober {
        Prober {
            identity: Identity {
                self_id,
                cluster: cluster.to_string(),
                secret: Arc::from(secret),
                peer_dscp: PEER_DSCP_DEFAULT,
            },
            bind_ip: bind_ip.filter(|ip| !ip.is_unspecified()),
        }
    }

    /// Opens a probe link to `peer` at `addr` and sends `count` pings one at
    /// a time, `gap` apart; returns each round trip (ping written to pong
    /// read, monotonic clock).
    ///
    /// # Errors
    ///
    /// Connecting, the handshake (`InvalidData` when the peer refuses us or
    /// its proof is wrong), a pong slower than 2 s, or a pong that does not
    /// answer the ping just sent.
    pub fn rtts(
        &self,
        peer: u16,
        addr: SocketAddr,
        count: usize,
        gap: Duration,
    ) -> io::Result<Vec<Duration>> {
        let mut stream = dial(addr, self.bind_ip, self.identity.peer_dscp)?;
        link_options(&stream);
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        handshake(&mut stream, &self.identity, peer, PROBE_MAGIC)?;
        let mut frames = FrameReader::new();
        let mut rtts = Vec::with_capacity(count);
        for seq in 0..count as u64 {
            if seq > 0 {
                std::thread::sleep(gap);
            }
            let mut ping = PING.to_vec();
            ping.extend_from_slice(&seq.to_le_bytes());
            let sent_ns = palisade_host::clock::monotonic_ns();
            write_frame(&mut stream, &ping)?;
            let deadline = monotonic_ms() + IO_TIMEOUT.as_millis() as u64;
            let pong = frames
                .next_by(&mut stream, PING_LEN, deadline)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::TimedOut => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no pong to ping {seq} within {}s", IO_TIMEOUT.as_secs()),
                    ),
                    _ => e,
                })?;
            let received_ns = palisade_host::clock::monotonic_ns();
            let mut expected = PONG.to_vec();
            expected.extend_from_slice(&seq.to_le_bytes());
            if pong != expected {
                return Err(invalid(format!("pong does not answer ping {seq}")));
            }
            rtts.push(Duration::from_nanos(received_ns.saturating_sub(sent_ns)));
        }
        Ok(rtts)
    }
}

#[cfg(test)]
mod tests {
    //! Probe links on real loopback sockets: answered by a running
    //! transport, refused like raft links on a bad handshake, closed on
    //! anything but a ping, and never retiring the member's raft link.

    use super::*;
    use raft::eraftpb::MessageType;

    const SECRET: &[u8] = b"a cluster secret of some length";

    fn doorbell() -> Arc<Doorbell> {
        Arc::new(Doorbell::new().expect("eventfd"))
    }

    /// Node 2's transport, knowing node 1 on loopback.
    fn node2() -> Transport {
        let one: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        Transport::start(
            2,
            "test",
            SECRET,
            "127.0.0.1:0".parse().expect("addr"),
            &[(1, one)],
            doorbell(),
        )
        .expect("start")
    }

    /// Node 1, linked to `two` (node 2), once its link is up.
    fn node1_connected_to(two: &Transport) -> Transport {
        let one = Transport::start(
            1,
            "test",
            SECRET,
            "127.0.0.1:0".parse().expect("addr"),
            &[(2, two.local_addr())],
            doorbell(),
        )
        .expect("start");
        wait_connected(&one);
        one
    }

    /// The next message `transport` receives (read as the control thread
    /// does), failing after 10 s; `pending` keeps what one read brought
    /// beyond it.
    fn next_message(transport: &mut Transport, pending: &mut VecDeque<Message>) -> Message {
        let deadline = monotonic_ms() + 10_000;
        let mut out = Vec::new();
        while pending.is_empty() {
            assert!(monotonic_ms() < deadline, "no message within 10 s");
            transport.receive(Duration::from_millis(50), &mut out, usize::MAX);
            pending.extend(out.drain(..));
        }
        pending.pop_front().expect("not empty")
    }

    /// Node 1 as its transport would present itself.
    fn node1() -> Identity {
        Identity {
            self_id: 1,
            cluster: "test".into(),
            secret: Arc::from(SECRET),
            peer_dscp: PEER_DSCP_DEFAULT,
        }
    }

    fn loopback() -> Option<IpAddr> {
        Some("127.0.0.1".parse().expect("ip"))
    }

    #[test]
    fn a_member_with_the_secret_gets_every_ping_answered() {
        let transport = node2();
        let prober = Prober::new(1, "test", SECRET, loopback());
        let rtts = prober
            .rtts(2, transport.local_addr(), 20, Duration::ZERO)
            .expect("pings answered");
        assert_eq!(rtts.len(), 20);
        assert!(rtts.iter().all(|rtt| *rtt > Duration::ZERO));
        transport.stop();
    }

    #[test]
    fn probes_pass_the_same_checks_as_raft_links() {
        let transport = node2();
        let addr = transport.local_addr();
        let refusals = [
            Prober::new(1, "test", b"another secret, just as long", loopback()),
            Prober::new(1, "test", b"", loopback()),
            Prober::new(1, "other-cluster", SECRET, loopback()),
            Prober::new(3, "test", SECRET, loopback()), // not a member
            Prober::new(1, "test", SECRET, Some("127.0.0.2".parse().expect("ip"))), // wrong address
        ];
        for prober in refusals {
            let result = prober.rtts(2, addr, 1, Duration::ZERO);
            assert!(result.is_err(), "{prober:?} was answered");
        }
        // Addressed to another node id.
        let prober = Prober::new(1, "test", SECRET, loopback());
        assert!(prober.rtts(5, addr, 1, Duration::ZERO).is_err());
        transport.stop();
    }

    #[test]
    fn anything_but_a_ping_closes_a_probe_link() {
        let transport = node2();
        let identity = node1();
        for bad in [b"PONG00000000".to_vec(), b"PING".to_vec(), vec![0u8; 12]] {
            let mut stream =
                dial(transport.local_addr(), loopback(), PEER_DSCP_DEFAULT).expect("dial");
            handshake(&mut stream, &identity, 2, PROBE_MAGIC).expect("handshake");
            write_frame(&mut stream, &bad).expect("write");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            // The acceptor closes without answering.
            assert_eq!(stream.read(&mut buf).expect("read"), 0, "{bad:?}");
        }
        transport.stop();
    }

    #[test]
    fn a_probe_never_retires_the_raft_link() {
        let mut transport = node2();
        let identity = node1();
        let mut raft_link =
            dial(transport.local_addr(), loopback(), PEER_DSCP_DEFAULT).expect("dial");
        handshake(&mut raft_link, &identity, 2, MAGIC).expect("handshake");
        let prober = Prober::new(1, "test", SECRET, loopback());
        prober
            .rtts(2, transport.local_addr(), 3, Duration::ZERO)
            .expect("pings");
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 1;
        message.to = 2;
        write_frame(&mut raft_link, &message.write_to_bytes().expect("encode")).expect("write");
        let got = next_message(&mut transport, &mut VecDeque::new());
        assert_eq!((got.from, got.to), (1, 2));
        assert_eq!(transport.inbound_links(), 1, "the probe was never adopted");
        transport.stop();
    }

    /// A raft link dialed to `transport` as node 1, handshake done.
    fn raft_link_to(transport: &Transport) -> TcpStream {
        let mut link = dial(transport.local_addr(), loopback(), PEER_DSCP_DEFAULT).expect("dial");
        handshake(&mut link, &node1(), 2, MAGIC).expect("handshake");
        link
    }

    /// Whether the acceptor closed `link` (a read sees the end, not data).
    fn closed_by_acceptor(link: &mut TcpStream) -> bool {
        link.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        matches!(link.read(&mut buf), Ok(0))
    }

    #[test]
    fn a_link_handed_over_while_the_control_thread_sleeps_wakes_it() {
        let bell = doorbell();
        let one: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut transport = Transport::start(
            2,
            "test",
            SECRET,
            "127.0.0.1:0".parse().expect("addr"),
            &[(1, one)],
            bell.clone(),
        )
        .expect("start");
        let addr = transport.local_addr();
        let dialer = std::thread::spawn(move || {
            let mut link = dial(addr, loopback(), PEER_DSCP_DEFAULT).expect("dial");
            handshake(&mut link, &node1(), 2, MAGIC).expect("handshake");
            write_frame(
                &mut link,
                &heartbeat(1, 2, 5).write_to_bytes().expect("encode"),
            )
            .expect("write");
            link
        });
        // Asleep with nothing adopted: only the hand-over's ring can end
        // this wait before its (long) timeout.
        bell.sleep_begins();
        let mut out = Vec::new();
        let rung = transport.receive(Duration::from_secs(60), &mut out, usize::MAX);
        bell.awake(rung);
        assert!(rung, "the hand-over rang the doorbell");
        let got = next_message(&mut transport, &mut out.into_iter().collect());
        assert_eq!(got.commit, 5);
        drop(dialer.join().expect("dialer"));
        transport.stop();
    }

    #[test]
    fn a_link_that_fills_every_turn_does_not_keep_another_unread() {
        let one: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let three: SocketAddr = "127.0.0.1:10".parse().expect("addr");
        let mut transport = Transport::start(
            2,
            "test",
            SECRET,
            "127.0.0.1:0".parse().expect("addr"),
            &[(1, one), (3, three)],
            doorbell(),
        )
        .expect("start");
        let mut out = Vec::new();
        let deadline = monotonic_ms() + 10_000;
        let adopt = |transport: &mut Transport, links: usize| {
            while transport.inbound_links() < links {
                assert!(monotonic_ms() < deadline, "links not adopted");
                transport.receive(Duration::from_millis(10), &mut Vec::new(), 0);
            }
        };
        // The busy link first: the one a fixed order would always read first.
        let mut busy = raft_link_to(&transport);
        adopt(&mut transport, 1);
        let mut quiet = dial(transport.local_addr(), loopback(), PEER_DSCP_DEFAULT).expect("dial");
        let mut node3 = node1();
        node3.self_id = 3;
        handshake(&mut quiet, &node3, 2, MAGIC).expect("handshake");
        // Not held back by Nagle behind the unacknowledged proof.
        quiet.set_nodelay(true).expect("nodelay");
        adopt(&mut transport, 2);
        let mut frames = Vec::new();
        for commit in 1..=2_000 {
            frames.extend_from_slice(
                &frame(&heartbeat(1, 2, commit).write_to_bytes().expect("encode")).expect("frame"),
            );
        }
        busy.write_all(&frames).expect("write");
        write_frame(
            &mut quiet,
            &heartbeat(3, 2, 0).write_to_bytes().expect("encode"),
        )
        .expect("write");
        // Ten messages per turn: the busy link alone could fill 200 turns.
        let mut before = 0;
        loop {
            assert!(monotonic_ms() < deadline, "node 3's message never read");
            out.clear();
            transport.receive(Duration::from_millis(10), &mut out, 10);
            if let Some(at) = out.iter().position(|m| m.from == 3) {
                before += at;
                break;
            }
            before += out.len();
        }
        assert!(
            before <= 20,
            "{before} of node 1's messages were read before node 3's one"
        );
        transport.stop();
    }

    #[test]
    fn a_newer_link_from_the_same_peer_replaces_the_older() {
        let mut transport = node2();
        let mut pending = VecDeque::new();
        let mut old = raft_link_to(&transport);
        write_frame(
            &mut old,
            &heartbeat(1, 2, 1).write_to_bytes().expect("encode"),
        )
        .expect("write");
        assert_eq!(next_message(&mut transport, &mut pending).commit, 1);
        let mut new = raft_link_to(&transport);
        write_frame(
            &mut new,
            &heartbeat(1, 2, 2).write_to_bytes().expect("encode"),
        )
        .expect("write");
        assert_eq!(next_message(&mut transport, &mut pending).commit, 2);
        assert_eq!(transport.inbound_links(), 1);
        assert!(closed_by_acceptor(&mut old), "the older link is closed");
        transport.stop();
    }

    #[test]
    fn a_message_that_does_not_match_its_link_closes_only_that_link() {
        let mut transport = node2();
        let mut pending = VecDeque::new();
        let mut bad = raft_link_to(&transport);
        // Node 1's link carrying a message that claims to be from node 3.
        write_frame(
            &mut bad,
            &heartbeat(3, 2, 1).write_to_bytes().expect("encode"),
        )
        .expect("write");
        bad.set_nonblocking(true).expect("non-blocking");
        let deadline = monotonic_ms() + 10_000;
        let mut out = Vec::new();
        loop {
            transport.receive(Duration::from_millis(50), &mut out, usize::MAX);
            assert!(out.is_empty(), "a mismatched message was delivered");
            let mut byte = [0u8; 1];
            if matches!(bad.read(&mut byte), Ok(0)) {
                break;
            }
            assert!(monotonic_ms() < deadline, "the link was never closed");
        }
        assert_eq!(transport.inbound_links(), 0);
        // A good link still works.
        let mut good = raft_link_to(&transport);
        write_frame(
            &mut good,
            &heartbeat(1, 2, 9).write_to_bytes().expect("encode"),
        )
        .expect("write");
        assert_eq!(next_message(&mut transport, &mut pending).commit, 9);
        transport.stop();
    }

    /// A heartbeat from `from` to `to`, tagged with `commit`.
    fn heartbeat(from: u64, to: u64, commit: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = from;
        message.to = to;
        message.commit = commit;
        message
    }

    fn start_node(id: u16, listen: SocketAddr, peer: (u16, SocketAddr)) -> Transport {
        Transport::start(id, "test", SECRET, listen, &[peer], doorbell()).expect("start")
    }

    /// Waits until `transport` has its outbound link up (messages queued
    /// while a writer backs off are dropped by design).
    fn wait_connected(transport: &Transport) {
        for _ in 0..1_000 {
            if transport.peers_connected() == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no outbound link within 10 s");
    }

    #[test]
    fn the_first_message_after_a_peer_restarts_reaches_it() {
        // Node 1 at a fixed port, restarted; node 2 keeps running. The link
        // node 2 dialed to node 1's first run is closed by then: a message
        // written into it would be accepted by the kernel and lost (raft
        // does not retransmit vote responses).
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let one: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut two = start_node(2, "127.0.0.1:0".parse().expect("addr"), (1, one));
        let two_addr = two.local_addr();
        let mut first_run = start_node(1, one, (2, two_addr));
        wait_connected(&two);
        two.send(vec![heartbeat(2, 1, 1)]);
        let got = next_message(&mut first_run, &mut VecDeque::new());
        assert_eq!(got.commit, 1);
        // Stopping closes the inbound links it adopted, as a process that
        // exits does.
        first_run.stop();
        let mut second_run = start_node(1, one, (2, two_addr));
        wait_connected(&second_run);
        // Node 1's second run dials node 2: a link the other way is up.
        second_run.send(vec![heartbeat(1, 2, 7)]);
        let got = next_message(&mut two, &mut VecDeque::new());
        assert_eq!(got.commit, 7);
        // One message from node 2, once: it must arrive.
        two.send(vec![heartbeat(2, 1, 2)]);
        let got = next_message(&mut second_run, &mut VecDeque::new());
        assert_eq!(got.commit, 2);
        second_run.stop();
        two.stop();
    }

    /// A connected pair of loopback TCP sockets: (ours, the peer's).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (theirs, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        (ours, theirs)
    }

    /// Reads from `stream` until `len` bytes came.
    fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = vec![0u8; len];
        stream.read_exact(&mut got).expect("the bytes arrive");
        got
    }

    #[test]
    fn a_backlog_the_socket_did_not_take_goes_out_whole_and_in_order() {
        let (ours, mut theirs) = socket_pair();
        let mut state = OutState {
            link: Some(ours),
            ..OutState::default()
        };
        // Frames of distinct bytes until the socket buffers are full (the
        // peer reads nothing yet), then some more.
        let mut expected = Vec::new();
        let mut n = 0u32;
        loop {
            let payload = vec![u8::try_from(n % 251).expect("small"); 1000 + (n as usize % 7)];
            let frame = frame(&payload).expect("frame");
            expected.extend_from_slice(&frame);
            assert!(state.queue(frame).is_ok());
            n += 1;
            if !state.flush().expect("writes") {
                break;
            }
        }
        for _ in 0..10 {
            let frame = frame(&[0xab; 3000]).expect("frame");
            expected.extend_from_slice(&frame);
            assert!(state.queue(frame).is_ok());
        }
        assert!(state.bytes > 0, "the socket was full, so bytes wait");
        // The peer reads; every flush writes what it can, in order.
        let reader =
            std::thread::spawn(move || read_exactly(&mut theirs, expected.len()) == expected);
        while !state.flush().expect("writes") {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!((state.frames.len(), state.bytes, state.written), (0, 0, 0));
        assert!(
            reader.join().expect("reader"),
            "the bytes differ from the frames queued"
        );
    }

    #[test]
    fn a_frame_cut_short_goes_whole_on_the_next_link() {
        let first = frame(b"first frame").expect("frame");
        let second = frame(b"second").expect("frame");
        let (old_link, _) = socket_pair();
        let (new_link, mut theirs) = socket_pair();
        let mut state = OutState::default();
        state.install(old_link);
        state.failed = true; // Nothing goes out on it.
        assert!(state.queue(first.clone()).is_ok());
        assert!(state.queue(second.clone()).is_ok());
        // As if 5 bytes of the first frame went out before the link failed.
        state.written = 5;
        assert!(state.take_link().is_some());
        state.install(new_link);
        assert!(!state.failed);
        let mut expected = first;
        expected.extend_from_slice(&second);
        assert_eq!(read_exactly(&mut theirs, expected.len()), expected);
        assert_eq!((state.frames.len(), state.bytes), (0, 0));
    }

    #[test]
    fn an_unreachable_peer_queues_nothing_and_a_full_backlog_drops_new_frames() {
        let mut state = OutState {
            backing_off: true,
            ..OutState::default()
        };
        assert!(
            state.queue(vec![0; 8]).is_err(),
            "dropped while backing off"
        );
        state.backing_off = false;
        for _ in 0..BACKLOG_FRAMES_MAX {
            assert!(state.queue(vec![0; 8]).is_ok());
        }
        assert!(
            state.queue(vec![0; 8]).is_err(),
            "dropped beyond the frame cap"
        );
        state.clear();
        assert!(state.queue(vec![0; BACKLOG_BYTES_MAX]).is_ok());
        assert!(
            state.queue(vec![0; 1]).is_err(),
            "dropped beyond the byte cap"
        );
        // A snapshot's frame is larger than the cap: one is queued beside
        // the small frames, a second is dropped until the first is gone.
        state.clear();
        assert!(state.queue(vec![0; 1024]).is_ok());
        assert!(state.queue(vec![0; BACKLOG_BYTES_MAX + 1]).is_ok());
        assert!(state.queue(vec![0; BACKLOG_BYTES_MAX + 1]).is_err());
        assert!(state.queue(vec![0; 1024]).is_ok(), "small frames still fit");
        state.clear();
        assert!(state.queue(vec![0; BACKLOG_BYTES_MAX + 1]).is_ok());
    }

    #[test]
    fn thousands_of_messages_sent_at_once_all_arrive_in_order() {
        // Far more than a socket holds: the sender writes what the socket
        // takes, the link thread the rest, and none is dropped or reordered.
        let mut two = node2();
        let one = node1_connected_to(&two);
        // 8 MiB in one call: more than the socket takes at once, within
        // the backlog's caps.
        let count = BACKLOG_FRAMES_MAX as u64 - 96;
        let mut messages = Vec::new();
        for commit in 1..=count {
            let mut message = heartbeat(1, 2, commit);
            message.context = vec![7; 2048].into();
            messages.push(message);
        }
        one.send(messages);
        let mut pending = VecDeque::new();
        for commit in 1..=count {
            let got = next_message(&mut two, &mut pending);
            assert_eq!(got.commit, commit, "in the order sent");
        }
        one.stop();
        two.stop();
    }

    #[test]
    fn a_snapshot_larger_than_the_backlog_arrives_between_small_messages() {
        // A lease state of 40 MiB: over the old 4 MiB frame limit and the
        // 16 MiB backlog cap, which dropped or refused it, so a follower
        // behind the leader's compaction never caught up.
        let mut two = node2();
        let one = node1_connected_to(&two);
        let mut snapshot = Message::default();
        snapshot.set_msg_type(MessageType::MsgSnapshot);
        snapshot.from = 1;
        snapshot.to = 2;
        let data: Vec<u8> = (0..40usize << 20).map(|i| (i % 251) as u8).collect();
        snapshot.mut_snapshot().data = data.clone().into();
        snapshot.mut_snapshot().mut_metadata().index = 77;
        one.send(vec![heartbeat(1, 2, 1), snapshot, heartbeat(1, 2, 2)]);
        let mut pending = VecDeque::new();
        assert_eq!(next_message(&mut two, &mut pending).commit, 1);
        let got = next_message(&mut two, &mut pending);
        assert_eq!(got.get_msg_type(), MessageType::MsgSnapshot);
        assert_eq!(got.get_snapshot().get_metadata().index, 77);
        assert!(got.get_snapshot().data == data, "the state arrives whole");
        assert_eq!(next_message(&mut two, &mut pending).commit, 2);
        one.stop();
        two.stop();
    }
}

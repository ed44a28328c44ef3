//! Peer transport: raft messages between nodes over TCP.
//!
//! One outbound connection per peer, written by its own thread from a
//! bounded queue; it reconnects with exponential backoff and drops
//! messages while a peer is unreachable (raft retransmits what matters).
//! A link the peer closed (it restarted, or closed an idle link) is noticed
//! before the next write and within `LINK_CHECK` when idle, and redialed
//! at once: a write into a closed link is accepted by the kernel and lost,
//! and raft does not retransmit vote responses, so one such loss cost an
//! election a whole timeout. A peer that dials in (it just started) wakes
//! our writer to it out of its back-off.
//! One thread per inbound connection reads frames into the control
//! thread's inbox. Sockets carry a DSCP (`qos.peer_dscp`, CS6 by default)
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

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use protobuf::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tracing::{debug, info, warn};

use palisade_host::clock::monotonic_ms;

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
/// (`max_size_per_msg`) and snapshots carry membership only.
pub const FRAME_MAX: usize = 4 << 20;
/// Messages queued per peer before new ones are dropped.
const OUTBOX_MAX: usize = 4096;
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
/// How often a reader blocked on an idle link looks at its flags.
const READER_POLL: Duration = Duration::from_millis(500);
/// Inbound connections (handshaking or not) at once: a few per member.
fn inbound_max(members: usize) -> usize {
    8 + 2 * members
}

type HmacSha256 = Hmac<Sha256>;

/// The running transport.
#[derive(Debug)]
pub struct Transport {
    outboxes: HashMap<u64, SyncSender<Outgoing>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    /// Outbound links up.
    connected: Arc<AtomicUsize>,
}

/// What a peer's writer thread is handed.
#[derive(Debug)]
enum Outgoing {
    /// A raft message for the peer.
    Message(Message),
    /// The peer just opened an authenticated link to us, so it is up: dial
    /// now if backing off, and check the link we have (it may be one the
    /// peer's previous run left behind).
    PeerUp,
}

/// Writer queues by peer id, for the accept loop's [`Outgoing::PeerUp`].
type Wakers = HashMap<u16, SyncSender<Outgoing>>;

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

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reassembles length-prefixed frames from a socket whose reads may time
/// out part-way through a frame.
#[derive(Debug)]
struct FrameReader {
    buf: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; 4096],
            filled: 0,
        }
    }

    /// The next frame, or `None` when a read timed out first.
    fn next(&mut self, stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.filled >= 4 {
                let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > max {
                    return Err(invalid(format!("frame of {len} bytes exceeds {max}")));
                }
                let end = 4 + len;
                if self.filled >= end {
                    let frame = self.buf[4..end].to_vec();
                    self.buf.copy_within(end..self.filled, 0);
                    self.filled -= end;
                    return Ok(Some(frame));
                }
                if self.buf.len() < end {
                    self.buf.resize(end, 0);
                }
            }
            match stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.filled += n,
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
    /// address; this node excluded). Received messages go to `inbox`.
    /// `secret` is the cluster secret (empty: none). Peer sockets carry
    /// [`PEER_DSCP_DEFAULT`]; [`Transport::start_with_dscp`] chooses.
    pub fn start(
        self_id: u16,
        cluster: &str,
        secret: &[u8],
        listen: SocketAddr,
        peers: &[(u16, SocketAddr)],
        inbox: flume::Sender<Message>,
    ) -> io::Result<Transport> {
        let dscp = PEER_DSCP_DEFAULT;
        Transport::start_with_dscp(self_id, cluster, secret, listen, peers, inbox, dscp)
    }

    /// [`Transport::start`] with peer sockets marked with `peer_dscp`
    /// (`qos.peer_dscp`), inbound and outbound.
    pub fn start_with_dscp(
        self_id: u16,
        cluster: &str,
        secret: &[u8],
        listen: SocketAddr,
        peers: &[(u16, SocketAddr)],
        inbox: flume::Sender<Message>,
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
        let mut threads = Vec::new();
        let queues: Vec<_> = peers
            .iter()
            .map(|_| mpsc::sync_channel(OUTBOX_MAX))
            .collect();
        let wakers: Wakers = peers
            .iter()
            .zip(&queues)
            .map(|(&(peer, _), (tx, _))| (peer, tx.clone()))
            .collect();
        {
            let stop = stop.clone();
            let identity = identity.clone();
            let known = peers.to_vec();
            threads.push(
                std::thread::Builder::new()
                    .name("palisade-peer-accept".into())
                    .spawn(move || {
                        accept_loop(&listener, &identity, &known, &inbox, &wakers, &stop);
                    })?,
            );
        }
        let bind_ip = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
        let mut outboxes = HashMap::new();
        let connected = Arc::new(AtomicUsize::new(0));
        for (&(peer, addr), (tx, rx)) in peers.iter().zip(queues) {
            outboxes.insert(u64::from(peer), tx);
            let stop = stop.clone();
            let identity = identity.clone();
            let connected = connected.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("palisade-peer-{peer}"))
                    .spawn(move || {
                        writer_loop(&identity, peer, addr, bind_ip, &rx, &stop, &connected);
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
            outboxes,
            stop,
            threads,
            local_addr,
            connected,
        })
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

    /// Queues messages for their peers; drops them when a peer's queue is
    /// full (the peer is slow or unreachable; raft retransmits).
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            let Some(outbox) = self.outboxes.get(&message.to) else {
                debug!(to = message.to, "message for an unknown peer dropped");
                continue;
            };
            match outbox.try_send(Outgoing::Message(message)) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => warn!("a peer writer thread is gone"),
            }
        }
    }

    /// Stops every thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.outboxes.clear(); // Writers see their queue close.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Per-peer generation of the newest authenticated inbound link.
type Generations = Arc<Mutex<HashMap<u16, u64>>>;

/// Counts a live inbound connection; uncounts it when dropped.
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
    inbox: &flume::Sender<Message>,
    wakers: &Wakers,
    stop: &Arc<AtomicBool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let max = inbound_max(known.len() + 1);
    let generations: Generations = Arc::default();
    let mut refused_at_ms = 0;
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
                let inbox = inbox.clone();
                let identity = identity.clone();
                let known = known.to_vec();
                let stop = stop.clone();
                let generations = generations.clone();
                let wakers = wakers.clone();
                let spawned = std::thread::Builder::new()
                    .name("palisade-peer-in".into())
                    .spawn(move || {
                        let _slot = slot;
                        let link = Link {
                            identity: &identity,
                            known: &known,
                            generations: &generations,
                            wakers: &wakers,
                            stop: &stop,
                        };
                        if let Err(e) = link.read(stream, from, &inbox) {
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
                warn!(error = %e, "peer accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What an inbound reader checks against.
struct Link<'a> {
    identity: &'a Identity,
    known: &'a [(u16, SocketAddr)],
    generations: &'a Generations,
    wakers: &'a Wakers,
    stop: &'a AtomicBool,
}

impl Link<'_> {
    /// Handshakes as the acceptor, then reads messages into `inbox`.
    fn read(
        &self,
        mut stream: TcpStream,
        remote: SocketAddr,
        inbox: &flume::Sender<Message>,
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
        let generation = {
            let mut generations = self.generations.lock().expect("not poisoned");
            let generation = generations.entry(from).or_insert(0);
            *generation += 1;
            *generation
        };
        info!(from, %remote, "peer connected (inbound)");
        if let Some(waker) = self.wakers.get(&from) {
            // Full: the writer is busy writing, and a dead link shows then.
            let _ = waker.try_send(Outgoing::PeerUp);
        }

        stream.set_read_timeout(Some(READER_POLL))?;
        let mut heard_ms = monotonic_ms();
        while !self.stop.load(Ordering::SeqCst) {
            let Some(frame) = frames.next(&mut stream, FRAME_MAX)? else {
                let current =
                    self.generations.lock().expect("not poisoned").get(&from) == Some(&generation);
                if !current {
                    return Err(invalid("a newer link from the same peer took over".into()));
                }
                if monotonic_ms().saturating_sub(heard_ms) > IDLE_MAX.as_millis() as u64 {
                    return Err(invalid("idle".into()));
                }
                continue;
            };
            heard_ms = monotonic_ms();
            let message = Message::parse_from_bytes(&frame)
                .map_err(|e| invalid(format!("bad message: {e}")))?;
            if message.from != u64::from(from) || message.to != u64::from(self.identity.self_id) {
                return Err(invalid(format!(
                    "message from {} to {} on a link from {from}",
                    message.from, message.to
                )));
            }
            match inbox.try_send(message) {
                Ok(()) | Err(flume::TrySendError::Full(_)) => {}
                Err(flume::TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
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

/// Waits out a back-off, dropping the messages queued meanwhile (they are
/// stale by the time a link is up), but only until the peer shows it is up
/// (it dialed us). Returns false when the transport is gone.
fn back_off(outbox: &Receiver<Outgoing>, backoff: Duration, stop: &AtomicBool) -> bool {
    let until_ms = monotonic_ms() + backoff.as_millis() as u64;
    loop {
        let left_ms = until_ms.saturating_sub(monotonic_ms());
        if left_ms == 0 || stop.load(Ordering::SeqCst) {
            return !stop.load(Ordering::SeqCst);
        }
        match outbox.recv_timeout(Duration::from_millis(left_ms)) {
            Ok(Outgoing::Message(_)) => {}
            Ok(Outgoing::PeerUp) | Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

fn writer_loop(
    identity: &Identity,
    peer: u16,
    addr: SocketAddr,
    bind_ip: Option<IpAddr>,
    outbox: &Receiver<Outgoing>,
    stop: &AtomicBool,
    links_up: &AtomicUsize,
) {
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    // A frame taken from the queue when the link turned out to be closed:
    // it goes first on the next link (a vote response must not be lost).
    let mut carried: Option<Vec<u8>> = None;
    while !stop.load(Ordering::SeqCst) {
        let connected = dial(addr, bind_ip, identity.peer_dscp).and_then(|mut stream| {
            link_options(&stream);
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            handshake(&mut stream, identity, peer, MAGIC)?;
            Ok(stream)
        });
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData && !warned {
                    warn!(peer, %addr, error = %e, "peer handshake refused");
                    warned = true;
                } else {
                    debug!(peer, %addr, error = %e, "peer unreachable");
                }
                carried = None;
                if !back_off(outbox, backoff, stop) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        warned = false;
        info!(peer, %addr, "peer connected (outbound)");
        let _up = Up::new(links_up);
        loop {
            let bytes = match carried.take() {
                Some(bytes) => bytes,
                None => match outbox.recv_timeout(LINK_CHECK) {
                    Ok(Outgoing::Message(message)) => match message.write_to_bytes() {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            warn!(peer, error = %e, "could not encode a raft message");
                            continue;
                        }
                    },
                    Ok(Outgoing::PeerUp) | Err(mpsc::RecvTimeoutError::Timeout) => {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if link_closed(&stream) {
                            info!(peer, %addr, "peer closed the link (outbound); reconnecting");
                            break;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            if link_closed(&stream) {
                info!(peer, %addr, "peer closed the link (outbound); reconnecting");
                carried = Some(bytes);
                break;
            }
            if let Err(e) = write_frame(&mut stream, &bytes) {
                info!(peer, %addr, error = %e, "peer disconnected (outbound); reconnecting");
                carried = Some(bytes);
                break;
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

    /// Node 2's transport, knowing node 1 on loopback; its inbox.
    fn node2() -> (Transport, flume::Receiver<Message>) {
        let (tx, rx) = flume::bounded(64);
        let one: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let transport = Transport::start(
            2,
            "test",
            SECRET,
            "127.0.0.1:0".parse().expect("addr"),
            &[(1, one)],
            tx,
        )
        .expect("start");
        (transport, rx)
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
        let (transport, _inbox) = node2();
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
        let (transport, _inbox) = node2();
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
        let (transport, _inbox) = node2();
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
        let (transport, inbox) = node2();
        let identity = node1();
        let mut raft_link =
            dial(transport.local_addr(), loopback(), PEER_DSCP_DEFAULT).expect("dial");
        handshake(&mut raft_link, &identity, 2, MAGIC).expect("handshake");
        let prober = Prober::new(1, "test", SECRET, loopback());
        prober
            .rtts(2, transport.local_addr(), 3, Duration::ZERO)
            .expect("pings");
        // A retired reader notices at its next poll (READER_POLL); wait past it.
        std::thread::sleep(READER_POLL * 2);
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 1;
        message.to = 2;
        write_frame(&mut raft_link, &message.write_to_bytes().expect("encode")).expect("write");
        let got = inbox
            .recv_timeout(Duration::from_secs(10))
            .expect("the raft link still delivers");
        assert_eq!((got.from, got.to), (1, 2));
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

    fn start_node(
        id: u16,
        listen: SocketAddr,
        peer: (u16, SocketAddr),
    ) -> (Transport, flume::Receiver<Message>) {
        let (tx, rx) = flume::bounded(64);
        let transport = Transport::start(id, "test", SECRET, listen, &[peer], tx).expect("start");
        (transport, rx)
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
        let (two, inbox_two) = start_node(2, "127.0.0.1:0".parse().expect("addr"), (1, one));
        let two_addr = two.local_addr();
        let (first_run, inbox) = start_node(1, one, (2, two_addr));
        wait_connected(&two);
        two.send(vec![heartbeat(2, 1, 1)]);
        let got = inbox
            .recv_timeout(Duration::from_secs(10))
            .expect("delivered to the first run");
        assert_eq!(got.commit, 1);
        first_run.stop();
        drop(inbox);
        // Its readers notice the stop within READER_POLL and close their
        // sockets, as a process that exits does at once.
        std::thread::sleep(READER_POLL * 2);
        let (second_run, inbox) = start_node(1, one, (2, two_addr));
        wait_connected(&second_run);
        // Node 1's second run dials node 2: a link the other way is up.
        second_run.send(vec![heartbeat(1, 2, 7)]);
        let got = inbox_two
            .recv_timeout(Duration::from_secs(10))
            .expect("the second run reaches node 2");
        assert_eq!(got.commit, 7);
        // One message from node 2, once: it must arrive.
        two.send(vec![heartbeat(2, 1, 2)]);
        let got = inbox
            .recv_timeout(Duration::from_secs(10))
            .expect("the first message after the restart is delivered");
        assert_eq!(got.commit, 2);
        second_run.stop();
        two.stop();
    }
}

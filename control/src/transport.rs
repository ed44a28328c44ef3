//! Peer transport: raft messages between nodes over TCP.
//!
//! One outbound connection per peer, written by its own thread from a
//! bounded queue; it reconnects with exponential backoff and drops
//! messages while a peer is unreachable (raft retransmits what matters).
//! One thread per inbound connection reads frames into the control
//! thread's inbox. Sockets carry DSCP CS6 and `TCP_NODELAY`.
//!
//! ```text
//! frame     = len: u32 LE | payload[len]          (len <= 16 MiB)
//! handshake = "PLSDPEER" | version: u8 | from: u16 LE | to: u16 LE | cluster name
//! then      = one protobuf raft Message per frame
//! ```
//!
//! Bad input (a wrong magic, version, cluster, node id, an oversized or
//! undecodable frame, a message whose `from`/`to` do not match the
//! handshake) closes that connection and is logged; the node keeps going.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use socket2::SockRef;
use tracing::{debug, info, warn};

const MAGIC: &[u8; 8] = b"PLSDPEER";
const VERSION: u8 = 1;
/// Largest frame accepted (snapshots here are small: membership only).
pub const FRAME_MAX: usize = 16 << 20;
/// Messages queued per peer before new ones are dropped.
const OUTBOX_MAX: usize = 4096;
/// DSCP class selector 6 (network control), in the TOS byte.
const TOS_CS6: u32 = 48 << 2;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The running transport.
#[derive(Debug)]
pub struct Transport {
    outboxes: HashMap<u64, SyncSender<Message>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

fn mark(stream: &TcpStream, ipv6: bool) {
    let sock = SockRef::from(stream);
    let _ = if ipv6 {
        sock.set_tclass_v6(TOS_CS6)
    } else {
        sock.set_tos_v4(TOS_CS6)
    };
    let _ = stream.set_nodelay(true);
}

fn handshake_bytes(cluster: &str, from: u16, to: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {FRAME_MAX}"),
        ));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

impl Transport {
    /// Listens on `listen` and connects to every peer in `peers` (id,
    /// address; this node excluded). Received messages go to `inbox`.
    pub fn start(
        self_id: u16,
        cluster: &str,
        listen: SocketAddr,
        peers: &[(u16, SocketAddr)],
        inbox: SyncSender<Message>,
    ) -> io::Result<Transport> {
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let known: Vec<u16> = peers.iter().map(|(id, _)| *id).collect();
        {
            let stop = stop.clone();
            let cluster = cluster.to_string();
            threads.push(
                std::thread::Builder::new()
                    .name("palisade-peer-accept".into())
                    .spawn(move || accept_loop(listener, self_id, cluster, known, inbox, stop))?,
            );
        }
        let mut outboxes = HashMap::new();
        for &(peer, addr) in peers {
            let (tx, rx) = mpsc::sync_channel(OUTBOX_MAX);
            outboxes.insert(u64::from(peer), tx);
            let stop = stop.clone();
            let hello = handshake_bytes(cluster, self_id, peer);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("palisade-peer-{peer}"))
                    .spawn(move || writer_loop(peer, addr, hello, rx, stop))?,
            );
        }
        info!(listen = %local_addr, peers = peers.len(), "peer transport started");
        Ok(Transport {
            outboxes,
            stop,
            threads,
            local_addr,
        })
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
            match outbox.try_send(message) {
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

fn accept_loop(
    listener: TcpListener,
    self_id: u16,
    cluster: String,
    known: Vec<u16>,
    inbox: SyncSender<Message>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                let inbox = inbox.clone();
                let cluster = cluster.clone();
                let known = known.clone();
                let stop = stop.clone();
                let spawned = std::thread::Builder::new()
                    .name("palisade-peer-in".into())
                    .spawn(move || {
                        if let Err(e) = reader(stream, self_id, &cluster, &known, &inbox, &stop) {
                            debug!(%from, error = %e, "peer connection closed");
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

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn reader(
    mut stream: TcpStream,
    self_id: u16,
    cluster: &str,
    known: &[u16],
    inbox: &SyncSender<Message>,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let ipv6 = stream.local_addr()?.is_ipv6();
    mark(&stream, ipv6);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let hello = read_frame(&mut stream)?;
    if hello.len() < MAGIC.len() + 5 || &hello[..MAGIC.len()] != MAGIC {
        return Err(invalid("not a palisade peer".into()));
    }
    let version = hello[MAGIC.len()];
    if version != VERSION {
        return Err(invalid(format!("peer speaks version {version}")));
    }
    let from = u16::from_le_bytes([hello[MAGIC.len() + 1], hello[MAGIC.len() + 2]]);
    let to = u16::from_le_bytes([hello[MAGIC.len() + 3], hello[MAGIC.len() + 4]]);
    let their_cluster = String::from_utf8_lossy(&hello[MAGIC.len() + 5..]);
    if their_cluster != cluster {
        warn!(from, cluster = %their_cluster, "refused a peer of another cluster");
        return Err(invalid(format!("cluster {their_cluster:?} is not ours")));
    }
    if to != self_id || !known.contains(&from) {
        warn!(
            from,
            to, "refused a peer that is not a member or not talking to this node"
        );
        return Err(invalid(format!("handshake from {from} to {to}")));
    }
    // Idle links are normal between heartbeats; only a broken one ends.
    stream.set_read_timeout(None)?;
    while !stop.load(Ordering::SeqCst) {
        let frame = read_frame(&mut stream)?;
        let message =
            Message::parse_from_bytes(&frame).map_err(|e| invalid(format!("bad message: {e}")))?;
        if message.from != u64::from(from) || message.to != u64::from(self_id) {
            return Err(invalid(format!(
                "message from {} to {} on a link from {from}",
                message.from, message.to
            )));
        }
        match inbox.try_send(message) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
    }
    Ok(())
}

fn writer_loop(
    peer: u16,
    addr: SocketAddr,
    hello: Vec<u8>,
    outbox: Receiver<Message>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::SeqCst) {
        let mut stream = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(peer, %addr, error = %e, "peer unreachable");
                // Messages queued meanwhile are stale; drop them.
                while outbox.try_recv().is_ok() {}
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        mark(&stream, addr.is_ipv6());
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if write_frame(&mut stream, &hello).is_err() {
            std::thread::sleep(backoff);
            continue;
        }
        backoff = BACKOFF_MIN;
        loop {
            let message = match outbox.recv_timeout(Duration::from_millis(100)) {
                Ok(message) => message,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let bytes = match message.write_to_bytes() {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(peer, error = %e, "could not encode a raft message");
                    continue;
                }
            };
            if let Err(e) = write_frame(&mut stream, &bytes) {
                debug!(peer, error = %e, "peer connection broke; reconnecting");
                break;
            }
        }
    }
}

//! Many NBD requests in flight per connection: replies come back by
//! cookie, in any order, with the right data; and S3 holds while an old
//! holder has many writes in flight when a newer token arrives.
//!
//! The upstream here is a fake NBD server in this process (built on the
//! proxy's own sans-IO [`nbd`] state machine): it logs every write in the
//! order it arrives — "reaching the backend" — holds each batch of
//! requests a moment, and answers a batch in reverse order, so the proxy
//! sees out-of-order replies upstream and passes them on out of order.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{have, nbd_go, sleep_ms, Lease, Proxy, ProxySetup, QemuNbd};
use palisade_fencing_proxy::nbd::{
    self, transmission_flags as tf, Command, Event, ExportInfo, Handshake, Incoming,
};

const DISK_BYTES: usize = 8 << 20;
const BLOCK: usize = 4096;

/// What the fake upstream saw.
#[derive(Default)]
struct Seen {
    /// Every write in arrival order: the tag in its first 8 bytes.
    writes: Mutex<Vec<u64>>,
    /// Most requests that arrived together on one connection, unanswered.
    batch_max: AtomicUsize,
}

/// A fake upstream NBD server on a free port.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    fn start(reply_delay: Duration) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let disk = Arc::new(Mutex::new(vec![0u8; DISK_BYTES]));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (disk, seen) = (disk.clone(), seen2.clone());
                std::thread::spawn(move || fake_connection(stream, &disk, &seen, reply_delay));
            }
        });
        FakeUpstream { addr, seen, stop }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn fake_connection(
    mut stream: TcpStream,
    disk: &Mutex<Vec<u8>>,
    seen: &Seen,
    reply_delay: Duration,
) {
    let mut handshake = Handshake::new(nbd::Config::default());
    let mut out = Vec::new();
    handshake.poll_transmit(&mut out);
    if stream.write_all(&out).is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        handshake.handle_input(&buf[..n]);
        let mut ready = false;
        while let Some(event) = handshake.poll_event() {
            match event {
                Event::Export { .. } => {
                    let flags = tf::SEND_FLUSH | tf::SEND_FUA | tf::SEND_TRIM;
                    handshake.answer_export(Ok(ExportInfo::new(DISK_BYTES as u64, flags)));
                }
                Event::List => handshake.answer_list(Ok(Vec::new())),
                Event::Ready { .. } => ready = true,
                Event::Aborted | Event::Failed(_) => return,
            }
        }
        out.clear();
        handshake.poll_transmit(&mut out);
        if stream.write_all(&out).is_err() {
            return;
        }
        if ready {
            break;
        }
    }
    let mut tx = handshake.into_transmission();
    let replies = tx.replies();
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        tx.handle_input(&buf[..n]);
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut closing = false;
        while let Some(incoming) = tx.poll_request() {
            let mut reply = Vec::new();
            match incoming {
                Incoming::Request(r) => {
                    let at = usize::try_from(r.offset).expect("offset");
                    let len = r.length as usize;
                    match r.command {
                        Command::Write => {
                            let payload = tx.payload();
                            // It reached the backend now.
                            let tag = u64::from_be_bytes(payload[..8].try_into().expect("8"));
                            seen.writes.lock().expect("log").push(tag);
                            disk.lock().expect("disk")[at..at + len].copy_from_slice(payload);
                            replies.ok(&mut reply, r.cookie);
                        }
                        Command::Read => {
                            let data = disk.lock().expect("disk")[at..at + len].to_vec();
                            replies.read(&mut reply, r.cookie, r.offset, &data);
                        }
                        _ => replies.ok(&mut reply, r.cookie),
                    }
                }
                Incoming::Refuse(refusal) => replies.refuse(&mut reply, &refusal),
                Incoming::Disconnect => closing = true,
                Incoming::Fatal { .. } => return,
            }
            if !reply.is_empty() {
                batch.push(reply);
            }
        }
        seen.batch_max.fetch_max(batch.len(), Ordering::Relaxed);
        if !batch.is_empty() {
            std::thread::sleep(reply_delay);
        }
        // Out of order: the last request of the batch is answered first.
        out.clear();
        for reply in batch.iter().rev() {
            out.extend_from_slice(reply);
        }
        if stream.write_all(&out).is_err() || closing {
            return;
        }
    }
}

/// A request the raw client has in flight.
struct Sent {
    command: u16,
    offset: u64,
    len: u32,
}

/// A raw NBD client (simple replies) with any number of requests in flight.
struct Pipe {
    stream: TcpStream,
    next_cookie: u64,
    in_flight: HashMap<u64, Sent>,
    /// Cookies in the order they were sent, and in the order answered.
    sent_order: Vec<u64>,
    answered_order: Vec<u64>,
}

/// A reply: cookie, NBD error, the request, read data.
struct Reply {
    cookie: u64,
    error: u32,
    sent: Sent,
    data: Vec<u8>,
}

impl Pipe {
    fn open(addr: SocketAddr, name: &str) -> Pipe {
        let stream = nbd_go(addr, name).expect("handshake");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Pipe {
            stream,
            next_cookie: 0x1000,
            in_flight: HashMap::new(),
            sent_order: Vec::new(),
            answered_order: Vec::new(),
        }
    }

    fn send(&mut self, command: u16, offset: u64, len: u32, data: &[u8]) -> u64 {
        // Cookies that are not small counters: a proxy that mixed them up
        // would be caught.
        let cookie = self.next_cookie.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.next_cookie += 1;
        let mut request = Vec::with_capacity(28 + data.len());
        request.extend_from_slice(&nbd::wire::REQUEST_MAGIC.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&command.to_be_bytes());
        request.extend_from_slice(&cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&len.to_be_bytes());
        request.extend_from_slice(data);
        self.stream.write_all(&request).expect("send");
        let fresh = self.in_flight.insert(
            cookie,
            Sent {
                command,
                offset,
                len,
            },
        );
        assert!(fresh.is_none());
        self.sent_order.push(cookie);
        cookie
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u64 {
        self.send(
            nbd::wire::CMD_WRITE,
            offset,
            u32::try_from(data.len()).expect("len"),
            data,
        )
    }

    fn read(&mut self, offset: u64, len: u32) -> u64 {
        self.send(nbd::wire::CMD_READ, offset, len, &[])
    }

    /// The next reply; panics on a cookie that is not in flight.
    fn reply(&mut self) -> Reply {
        let mut head = [0u8; 16];
        self.stream.read_exact(&mut head).expect("reply header");
        let magic = u32::from_be_bytes(head[0..4].try_into().expect("4"));
        assert_eq!(magic, nbd::wire::SIMPLE_REPLY_MAGIC, "simple reply magic");
        let error = u32::from_be_bytes(head[4..8].try_into().expect("4"));
        let cookie = u64::from_be_bytes(head[8..16].try_into().expect("8"));
        let sent = self
            .in_flight
            .remove(&cookie)
            .unwrap_or_else(|| panic!("a reply for cookie {cookie:#x}, which is not in flight"));
        let mut data = Vec::new();
        if error == 0 && sent.command == nbd::wire::CMD_READ {
            data = vec![0u8; sent.len as usize];
            self.stream.read_exact(&mut data).expect("read data");
        }
        self.answered_order.push(cookie);
        Reply {
            cookie,
            error,
            sent,
            data,
        }
    }

    fn disconnect(mut self) {
        let _ = self.send(nbd::wire::CMD_DISC, 0, 0, &[]);
    }
}

/// Block `i`'s contents in generation `generation`: tag first, then a
/// pattern of both.
fn block(tag: u64, i: u64, generation: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    data[..8].copy_from_slice(&tag.to_be_bytes());
    for (j, b) in data[8..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (j as u8) ^ (generation as u8).wrapping_mul(7);
    }
    data
}

/// Writes `blocks` distinct blocks with `depth` in flight, then reads and
/// overwrites them mixed, then reads them all back, `depth` in flight,
/// checking every reply by cookie. Returns whether any reply came back out
/// of order.
fn pipelined_round_trip(addr: SocketAddr, name: &str, depth: usize, blocks: u64) -> bool {
    let mut pipe = Pipe::open(addr, name);
    // Generation 1 everywhere.
    let mut next = 0;
    while next < blocks || !pipe.in_flight.is_empty() {
        while next < blocks && pipe.in_flight.len() < depth {
            pipe.write(next * BLOCK as u64, &block(1, next, 1));
            next += 1;
        }
        let reply = pipe.reply();
        assert_eq!(reply.error, 0, "write {:#x} failed", reply.cookie);
    }
    // Mixed: odd blocks are rewritten (generation 2) while even ones are
    // read; a read in flight never overlaps a write in flight.
    let mut next = 0;
    while next < blocks || !pipe.in_flight.is_empty() {
        while next < blocks && pipe.in_flight.len() < depth {
            if next % 2 == 1 {
                pipe.write(next * BLOCK as u64, &block(1, next, 2));
            } else {
                pipe.read(next * BLOCK as u64, BLOCK as u32);
            }
            next += 1;
        }
        let reply = pipe.reply();
        assert_eq!(reply.error, 0, "request {:#x} failed", reply.cookie);
        if reply.sent.command == nbd::wire::CMD_READ {
            let i = reply.sent.offset / BLOCK as u64;
            assert!(reply.data == block(1, i, 1), "block {i}: wrong data");
        }
    }
    // Everything back, with reads of two sizes.
    let mut next = 0;
    while next < blocks || !pipe.in_flight.is_empty() {
        while next < blocks && pipe.in_flight.len() < depth {
            if next % 3 == 0 && next + 1 < blocks {
                pipe.read(next * BLOCK as u64, 2 * BLOCK as u32);
                next += 2;
            } else {
                pipe.read(next * BLOCK as u64, BLOCK as u32);
                next += 1;
            }
        }
        let reply = pipe.reply();
        assert_eq!(reply.error, 0, "read {:#x} failed", reply.cookie);
        let first = reply.sent.offset / BLOCK as u64;
        for (k, chunk) in reply.data.chunks(BLOCK).enumerate() {
            let i = first + k as u64;
            let generation = 1 + i % 2;
            assert!(
                chunk == block(1, i, generation).as_slice(),
                "block {i}: wrong data (cookie {:#x})",
                reply.cookie
            );
        }
    }
    let out_of_order = pipe.sent_order != pipe.answered_order;
    pipe.disconnect();
    out_of_order
}

#[test]
fn many_requests_in_flight_get_their_own_replies_out_of_order_upstream() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let upstream = FakeUpstream::start(Duration::from_millis(1));
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = format!("nbd = \"{}\"\nnbd_export = \"up\"\n", upstream.addr);
    setup.proxy_extra = "requests_in_flight_max = 32\n".into();
    let _proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    let out_of_order = pipelined_round_trip(setup.listen, &format!("disk0@{token}"), 32, 512);
    assert!(
        out_of_order,
        "the upstream answers batches in reverse: some replies must come back out of order"
    );
    assert!(
        upstream.seen.batch_max.load(Ordering::Relaxed) > 1,
        "the proxy never had two requests in flight upstream"
    );
}

/// The same round trip through a real `qemu-nbd` on a Unix socket: the
/// multiplexer over the other transport, against a server that answers
/// as it likes.
#[test]
fn many_requests_in_flight_get_their_own_replies_from_qemu_nbd_on_a_unix_socket() {
    if !have("qemu-nbd") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let image = tmp.path().join("upstream.img");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(DISK_BYTES as u64)
        .expect("size");
    let upstream = QemuNbd::start_unix(&image, "up", &tmp.path().join("up.sock"));
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = upstream.backend_lines();
    setup.proxy_extra = "requests_in_flight_max = 32\n".into();
    let _proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    pipelined_round_trip(setup.listen, &format!("disk0@{token}"), 32, 1024);
}

#[test]
fn many_requests_in_flight_get_their_own_replies_from_a_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    let _proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    pipelined_round_trip(setup.listen, &format!("disk0@{token}"), 64, 1024);
}

#[test]
fn a_client_beyond_the_in_flight_bound_waits_and_is_answered() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let upstream = FakeUpstream::start(Duration::from_millis(2));
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = format!("nbd = \"{}\"\nnbd_export = \"up\"\n", upstream.addr);
    setup.proxy_extra = "requests_in_flight_max = 4\n".into();
    let _proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    // 64 in flight from the client's side, 4 at most inside the proxy.
    pipelined_round_trip(setup.listen, &format!("disk0@{token}"), 64, 256);
    let batch_max = upstream.seen.batch_max.load(Ordering::Relaxed);
    assert!(
        batch_max <= 4,
        "the upstream saw {batch_max} requests at once, above requests_in_flight_max"
    );
}

/// What an old holder's pipelined writer saw.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    fenced: usize,
}

/// Keeps `depth` writes tagged `tag` in flight until `fenced_enough`
/// writes were refused with EPERM, `total` were sent, or 20 s passed;
/// every reply must answer a write in flight.
fn keep_writing(
    addr: SocketAddr,
    name: &str,
    tag: u64,
    depth: usize,
    fenced_enough: usize,
    total: u64,
) -> Outcome {
    let mut pipe = Pipe::open(addr, name);
    let mut outcome = Outcome::default();
    let mut i = 0u64;
    let deadline = common::now_ms() + 20_000;
    loop {
        let stopping = outcome.fenced >= fenced_enough || i >= total || common::now_ms() > deadline;
        while !stopping && pipe.in_flight.len() < depth {
            let b = i % 512;
            pipe.write(b * BLOCK as u64, &block(tag, b, 0));
            i += 1;
        }
        if pipe.in_flight.is_empty() {
            break;
        }
        let reply = pipe.reply();
        match reply.error {
            0 => outcome.ok += 1,
            1 => outcome.fenced += 1, // EPERM
            other => panic!("write failed with NBD error {other}"),
        }
    }
    pipe.disconnect();
    outcome
}

#[test]
fn no_older_token_write_reaches_the_backend_after_the_first_newer_one_with_many_in_flight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let upstream = FakeUpstream::start(Duration::from_millis(1));
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = format!("nbd = \"{}\"\nnbd_export = \"up\"\n", upstream.addr);
    setup.proxy_extra = "requests_in_flight_max = 64\n".into();
    let t1 = lease.acquire("disk0", "1s");
    // A's writes wait 3 ms between the gate and the backend: at any
    // moment dozens of them are admitted and not yet there.
    let _proxy = Proxy::start(
        &setup,
        &[("PALISADE_PROXY_TEST_WRITE_DELAY", format!("{t1}:3"))],
    );
    let listen = setup.listen;
    let a = std::thread::spawn(move || {
        keep_writing(listen, &format!("disk0@{t1}"), t1, 64, 256, u64::MAX)
    });
    // A writes past its ttl; then B gets the lease and writes, 64 in
    // flight too, while A is still sending.
    sleep_ms(1_300);
    let t2 = lease.acquire("disk0", "30s");
    assert!(t2 > t1);
    let b = keep_writing(setup.listen, &format!("disk0@{t2}"), t2, 64, 1, 2_000);
    let a = a.join().expect("A");
    assert_eq!(b.fenced, 0, "B's writes are current: {b:?}");
    assert!(b.ok > 0, "{b:?}");
    assert!(
        a.ok > 0 && a.fenced >= 256,
        "A wrote, then was fenced: {a:?}"
    );
    let writes = upstream.seen.writes.lock().expect("log").clone();
    let first_new = writes
        .iter()
        .position(|&tag| tag == t2)
        .expect("B's writes reached the backend");
    let late_old = writes[first_new..].iter().filter(|&&tag| tag == t1).count();
    assert_eq!(
        late_old, 0,
        "S3: {late_old} write(s) under token {t1} reached the backend after the first under {t2}"
    );
    let a_reached = writes.iter().filter(|&&tag| tag == t1).count();
    assert_eq!(
        a_reached, a.ok,
        "every acknowledged write of A reached the backend, no other"
    );
    assert!(
        upstream.seen.batch_max.load(Ordering::Relaxed) > 1,
        "writes were pipelined upstream"
    );
}

#[test]
fn large_writes_in_flight_reach_the_upstream_whole() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let upstream = FakeUpstream::start(Duration::from_millis(1));
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = format!("nbd = \"{}\"\nnbd_export = \"up\"\n", upstream.addr);
    let _proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    let mut pipe = Pipe::open(setup.listen, &format!("disk0@{token}"));
    // 24 writes of 256 KiB (above the pool's threshold: sent upstream
    // without a copy) mixed with small ones, 8 in flight, then read back.
    const BIG: usize = 256 << 10;
    let content = |i: usize, len: usize| -> Vec<u8> {
        (0..len)
            .map(|j| (i as u8).wrapping_mul(13) ^ (j % 251) as u8)
            .collect()
    };
    let len_of = |i: usize| if i % 3 == 2 { BLOCK } else { BIG };
    let mut next = 0;
    while next < 24 || !pipe.in_flight.is_empty() {
        while next < 24 && pipe.in_flight.len() < 8 {
            pipe.write((next * BIG) as u64, &content(next, len_of(next)));
            next += 1;
        }
        assert_eq!(pipe.reply().error, 0);
    }
    let mut next = 0;
    while next < 24 || !pipe.in_flight.is_empty() {
        while next < 24 && pipe.in_flight.len() < 8 {
            pipe.read((next * BIG) as u64, len_of(next) as u32);
            next += 1;
        }
        let reply = pipe.reply();
        assert_eq!(reply.error, 0);
        let i = usize::try_from(reply.sent.offset).expect("offset") / BIG;
        assert!(
            reply.data == content(i, len_of(i)),
            "write {i} came back wrong"
        );
    }
    pipe.disconnect();
}

//! Issue 16, the node's part: cheap attacks and ordinary hangs must not
//! lock out a legitimate client. Each test drives one attack with real
//! sockets against a real `palisade serve` and shows the legitimate client
//! still served. Latencies are measured and printed (`--nocapture`), never
//! asserted.
//!
//! `PALISADE_SERVE_BIN=/path/to/palisade` runs the same attacks against
//! another build (a release build, to measure); with `PALISADE_OLD_BUILD=1`
//! too, the configs leave out the keys an older build does not know, and
//! the assertions then say where the old build fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{sleep_ms, Server, BIN};
use palisade_client::{
    AcquireOptions, AcquireOutcome, Client, ClientError, ConnectOptions, KeepAliveThread,
    LeaseEvent,
};
use palisade_proto::{
    decode_response, encode_request, Decoded, ErrorCode, FrameBuf, RecvBuf, Request, Response,
};

/// A point on the monotonic clock (the clock helpers, not `Instant`: see
/// clippy.toml).
#[derive(Debug, Clone, Copy)]
struct Instant(u64);

impl Instant {
    fn now() -> Instant {
        Instant(palisade_host::clock::monotonic_ns())
    }
    fn elapsed(self) -> Duration {
        Duration::from_nanos(palisade_host::clock::monotonic_ns().saturating_sub(self.0))
    }
    fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl PartialEq for Instant {
    fn eq(&self, other: &Instant) -> bool {
        self.0 == other.0
    }
}

impl PartialOrd for Instant {
    fn partial_cmp(&self, other: &Instant) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(&other.0)
    }
}

fn frame(request_id: u64, request: &Request) -> Vec<u8> {
    let mut out = FrameBuf::new();
    encode_request(&mut out, request_id, 0, 1 << 16, request).expect("encodes");
    out.to_vec()
}

fn hello(tenant: &str) -> Request {
    Request::Hello {
        tenant: tenant.into(),
        client_nonce: [3; 16],
        client_name: "hostile-test".into(),
    }
}

/// A raw protocol connection: send frames, read whole responses.
struct Raw {
    stream: TcpStream,
    rx: RecvBuf,
}

/// What a read from a [`Raw`] connection came to.
#[derive(Debug)]
enum Heard {
    Frame(u64, Response),
    Closed,
    Silent,
}

impl Raw {
    fn connect(endpoint: &str) -> Raw {
        let stream = TcpStream::connect(endpoint).expect("connect");
        Raw::from(stream)
    }

    fn from(stream: TcpStream) -> Raw {
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            rx: RecvBuf::new(4096, 1 << 20),
        }
    }

    fn send(&mut self, request_id: u64, request: &Request) {
        self.stream
            .write_all(&frame(request_id, request))
            .expect("send");
    }

    /// The next response, or what happened instead within `timeout`.
    fn hear(&mut self, timeout: Duration) -> Heard {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Decoded::Frame {
                header,
                payload,
                frame_len,
            }) = self.rx.next_frame(1 << 20)
            {
                let response = decode_response(payload).expect("server frames are valid");
                let id = header.request_id;
                self.rx.consume(frame_len);
                return Heard::Frame(id, response);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Heard::Silent;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.stream.read(self.rx.spare()) {
                Ok(0) => return Heard::Closed,
                Ok(n) => self.rx.filled(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Heard::Closed,
            }
        }
    }

    /// Reads until the server closes; returns the error codes heard.
    fn codes_until_closed(&mut self, timeout: Duration) -> (Vec<ErrorCode>, bool) {
        let deadline = Instant::now() + timeout;
        let mut codes = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.hear(left) {
                Heard::Frame(_, Response::Error { code, .. }) => codes.push(code),
                Heard::Frame(..) => {}
                Heard::Closed => return (codes, true),
                Heard::Silent => return (codes, false),
            }
        }
    }

    fn handshake(endpoint: &str) -> Raw {
        let mut raw = Raw::connect(endpoint);
        raw.send(1, &hello("default"));
        match raw.hear(Duration::from_secs(10)) {
            Heard::Frame(1, Response::Welcome(_)) => raw,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

/// `keys` (config lines for keys this change added), or nothing when the
/// attacks run against a build from before it (`PALISADE_OLD_BUILD` set,
/// with `PALISADE_SERVE_BIN`), which would refuse keys it does not know.
fn new_keys(keys: &str) -> &str {
    if std::env::var_os("PALISADE_OLD_BUILD").is_some() {
        ""
    } else {
        keys
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sorted samples' percentile.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// The value of `palisade_connections_closed_total{reason=...}` on the
/// node's admin endpoint (0 for a build without it).
fn closed_total(server: &Server, reason: &str) -> u64 {
    let addr = server.ready["admin"].as_str().expect("admin address");
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: palisade\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let series = format!("palisade_connections_closed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

fn status_connections(endpoint: &str) -> u32 {
    let mut client = Client::connect(&ConnectOptions::new(endpoint, "default")).expect("connect");
    client.status().expect("status").connections
}

#[test]
fn a_flood_of_silent_connections_does_not_lock_out_clients() {
    // connections_max below the flood, as in the issue (10 100 against
    // 10 000), scaled down to what a test may open.
    let flood: usize = std::env::var("PALISADE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let server = Server::start("[limits]\nconnections_max = 2000\n");
    let endpoint = server.endpoint.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let closed_by_server = Arc::new(AtomicU64::new(0));
    // The attacker: keeps `flood` silent connections open, re-opening each
    // one the server closes.
    let attacker = {
        let (endpoint, stop, opened, closed_by_server) = (
            endpoint.clone(),
            stop.clone(),
            opened.clone(),
            closed_by_server.clone(),
        );
        std::thread::spawn(move || {
            let mut socks: Vec<TcpStream> = Vec::with_capacity(flood);
            while !stop.load(Ordering::SeqCst) {
                while socks.len() < flood && !stop.load(Ordering::SeqCst) {
                    match TcpStream::connect(&endpoint) {
                        Ok(s) => {
                            s.set_nonblocking(true).expect("nonblocking");
                            socks.push(s);
                            opened.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => sleep_ms(1),
                    }
                }
                // Drop the ones the server closed (EOF or reset).
                let mut buf = [0u8; 256];
                socks.retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => {
                        closed_by_server.fetch_add(1, Ordering::SeqCst);
                        false
                    }
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                    Err(_) => {
                        closed_by_server.fetch_add(1, Ordering::SeqCst);
                        false
                    }
                });
                sleep_ms(5);
            }
        })
    };
    // Let the flood build up.
    let build_up = Instant::now();
    while opened.load(Ordering::SeqCst) < flood as u64
        && build_up.elapsed() < Duration::from_secs(20)
    {
        sleep_ms(10);
    }
    let mut handshakes = Vec::new();
    let mut acquires = Vec::new();
    let mut failures = Vec::new();
    for round in 0..20 {
        let t0 = Instant::now();
        let options = ConnectOptions::new(endpoint.clone(), "default");
        match Client::connect(&options) {
            Ok(mut client) => {
                handshakes.push(t0.elapsed());
                let t1 = Instant::now();
                match client.acquire(
                    &format!("during-flood-{round}"),
                    AcquireOptions::new(Duration::from_secs(5)),
                ) {
                    Ok(AcquireOutcome::Granted(_)) => acquires.push(t1.elapsed()),
                    other => failures.push(format!("acquire: {other:?}")),
                }
            }
            Err(e) => failures.push(format!("connect: {e}")),
        }
        sleep_ms(100);
    }
    stop.store(true, Ordering::SeqCst);
    attacker.join().expect("attacker");
    let evicted = closed_total(&server, "evicted");
    let timed_out = closed_total(&server, "handshake_timeout");
    let refused = closed_total(&server, "connections_max");
    eprintln!(
        "node's count of closed connections: {evicted} evicted, {timed_out} handshake timeouts, {refused} refused at connections_max"
    );
    handshakes.sort();
    acquires.sort();
    eprintln!(
        "FIGURE silent flood ({flood} connections, connections_max 2000): {} of 20 clients served; connect+handshake p50 {:.2} ms, max {:.2} ms; acquire p50 {:.2} ms; attacker opened {} connections, the server closed {}; failures: {:?}",
        handshakes.len(),
        millis(percentile(&handshakes, 0.5)),
        millis(percentile(&handshakes, 1.0)),
        millis(percentile(&acquires, 0.5)),
        opened.load(Ordering::SeqCst),
        closed_by_server.load(Ordering::SeqCst),
        failures.first()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn an_idle_connection_is_closed_and_the_client_reconnects() {
    let server = Server::start(&format!(
        "[limits]\n{}",
        new_keys("idle_timeout = \"1s\"\n")
    ));
    // A raw connection that says nothing after its handshake.
    let mut idle = Raw::handshake(&server.endpoint);
    let t0 = Instant::now();
    let (codes, closed) = idle.codes_until_closed(Duration::from_secs(10));
    eprintln!(
        "FIGURE idle authenticated connection closed after {:.0} ms (idle_timeout 1 s): {codes:?}",
        millis(t0.elapsed())
    );
    assert!(closed, "an idle connection is closed");
    assert_eq!(codes, [ErrorCode::Timeout]);
    assert_eq!(closed_total(&server, "idle"), 1);

    // A connection that renews a lease every 300 ms is never idle.
    let mut holder = Raw::handshake(&server.endpoint);
    holder.send(
        2,
        &Request::Acquire {
            resource: "held".into(),
            holder: 7,
            ttl_ms: 900,
            lock_delay_ms: 0,
            wait_ms: 0,
        },
    );
    let token = match holder.hear(Duration::from_secs(5)) {
        Heard::Frame(2, Response::Granted { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    for id in 3..13 {
        sleep_ms(300);
        holder.send(
            id,
            &Request::Renew {
                resource: "held".into(),
                token,
                ttl_ms: 900,
            },
        );
        match holder.hear(Duration::from_secs(5)) {
            Heard::Frame(got, Response::Renewed { .. }) if got == id => {}
            other => panic!("renewal {id}: {other:?}"),
        }
    }

    // A long wait is not idleness, and the idle clock restarts when its
    // answer goes out: the client has time to ask again.
    let mut waiter = Raw::handshake(&server.endpoint);
    waiter.send(
        20,
        &Request::Acquire {
            resource: "held".into(),
            holder: 8,
            ttl_ms: 900,
            lock_delay_ms: 0,
            wait_ms: 1_500,
        },
    );
    holder.send(
        21,
        &Request::Renew {
            resource: "held".into(),
            token,
            ttl_ms: 900,
        },
    );
    let renew_every = std::thread::spawn(move || {
        // Keep the lease held through the wait.
        for id in 22..30 {
            match holder.hear(Duration::from_secs(5)) {
                Heard::Frame(_, Response::Renewed { .. }) => {}
                other => panic!("renewal: {other:?}"),
            }
            sleep_ms(250);
            holder.send(
                id,
                &Request::Renew {
                    resource: "held".into(),
                    token,
                    ttl_ms: 900,
                },
            );
        }
    });
    match waiter.hear(Duration::from_secs(5)) {
        Heard::Frame(20, Response::Busy { .. }) => {}
        other => panic!("the wait ends Busy at its deadline: {other:?}"),
    }
    sleep_ms(500);
    waiter.send(31, &Request::Status);
    match waiter.hear(Duration::from_secs(5)) {
        Heard::Frame(31, Response::Status(_)) => {}
        other => panic!("the connection is still open after its wait: {other:?}"),
    }
    renew_every.join().expect("holder");

    // The client library: a call after the server closed the connection
    // for idleness reconnects and succeeds.
    let mut client =
        Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("connect");
    client.status().expect("status");
    sleep_ms(1_600);
    let t0 = Instant::now();
    let outcome = client
        .acquire("after-idle", AcquireOptions::new(Duration::from_secs(5)))
        .expect("the client reconnects transparently");
    assert!(matches!(outcome, AcquireOutcome::Granted(_)), "{outcome:?}");
    eprintln!(
        "FIGURE acquire on a connection the server closed for idleness: {:.2} ms (includes the reconnect)",
        millis(t0.elapsed())
    );

    // The keep-alive helper holds a lease across several idle timeouts.
    let mut client =
        Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("connect");
    let AcquireOutcome::Granted(lease) = client
        .acquire("kept", AcquireOptions::new(Duration::from_millis(900)))
        .expect("acquire")
    else {
        panic!("free resource");
    };
    let keeper = KeepAliveThread::spawn(client, lease, None);
    let started = Instant::now();
    let mut renewed = 0;
    while started.elapsed() < Duration::from_secs(3) {
        match keeper.events.recv_timeout(Duration::from_millis(100)) {
            Ok(LeaseEvent::Renewed(_)) => renewed += 1,
            Ok(LeaseEvent::Lost { reason, .. }) => panic!("lost the lease: {reason:?}"),
            Err(_) => {}
        }
    }
    assert!(renewed >= 5, "renewed {renewed} times in 3 s");
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    let server = Server::start(&format!(
        "[limits]\n{}",
        new_keys("write_stall_timeout = \"500ms\"\n")
    ));
    let endpoint = server.endpoint.clone();
    let stuck = {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        // A small receive window fills sooner; the server's own send
        // buffer still grows as the kernel lets it.
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let addr: SocketAddr = endpoint.parse().expect("addr");
        sock.connect(&addr.into()).expect("connect");
        let mut raw = Raw::from(sock.into());
        raw.send(1, &hello("default"));
        assert!(matches!(
            raw.hear(Duration::from_secs(5)),
            Heard::Frame(1, Response::Welcome(_))
        ));
        raw
    };
    // Send Status requests and never read the answers, until the server
    // stops taking requests (its writes are blocked) or closes.
    let writer = stuck.stream.try_clone().expect("clone");
    let start = Instant::now();
    let sent = std::thread::spawn(move || {
        let mut writer = writer;
        writer
            .set_write_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let batch: Vec<u8> = (0..64)
            .flat_map(|i| frame(100 + i, &Request::Status))
            .collect();
        let mut bytes = 0u64;
        let mut blocked_since: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut reset = false;
        let mut last_ok = Instant::now();
        while Instant::now() < deadline {
            match writer.write(&batch) {
                Ok(n) => {
                    bytes += n as u64;
                    blocked_since = None;
                    last_ok = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Blocked long enough for everything to be stuck.
                    if blocked_since.get_or_insert_with(Instant::now).elapsed()
                        > Duration::from_secs(1)
                    {
                        break;
                    }
                }
                Err(_) => {
                    reset = true; // by the server
                    break;
                }
            }
        }
        (bytes, blocked_since.unwrap_or(last_ok), reset)
    });
    let (bytes, blocked_since, reset) = sent.join().expect("writer");
    eprintln!(
        "stuck client: wrote {bytes} bytes of requests in {:.0} ms; {}",
        millis(start.elapsed()),
        if reset {
            "then the server reset the connection".to_owned()
        } else {
            "then its writes blocked".to_owned()
        }
    );
    // Others are served meanwhile, and the stuck connection goes away.
    let mut dropped_after = None;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(30) {
        if status_connections(&endpoint) == 1 {
            dropped_after = Some(blocked_since.elapsed());
            break;
        }
        sleep_ms(100);
    }
    eprintln!(
        "FIGURE client that stopped reading: dropped {} after its last write went through (write_stall_timeout 500 ms; the server's writes stalled somewhat earlier)",
        dropped_after.map_or_else(|| "NOT within 30 s".to_owned(), |d| format!("{:.0} ms", millis(d)))
    );
    assert!(
        dropped_after.is_some(),
        "the stuck connection is still open"
    );
    assert_eq!(closed_total(&server, "write_stall"), 1);
    drop(stuck);
}

fn server_code(result: Result<AcquireOutcome, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(ClientError::Server { code, .. }) => Some(code),
        _ => None,
    }
}

#[test]
fn tenant_quotas_and_wait_max_refuse_with_their_own_codes() {
    let server = Server::start(
        "[limits]\ntenant_leases_max = 3\ntenant_waiters_max = 2\ntenant_connections_max = 3\n\
         waiters_per_connection_max = 1\nwait_max = \"2s\"\n\n\
         [[tenants]]\nname = \"default\"\n\n[[tenants]]\nname = \"other\"\n",
    );
    let ep = server.endpoint.clone();
    let connect = |tenant: &str| Client::connect(&ConnectOptions::new(ep.clone(), tenant));
    let mut a = connect("default").expect("connect");
    for i in 0..3 {
        let outcome = a
            .acquire(
                &format!("r{i}"),
                AcquireOptions::new(Duration::from_secs(30)),
            )
            .expect("within quota");
        assert!(matches!(outcome, AcquireOutcome::Granted(_)));
    }
    assert_eq!(
        server_code(a.acquire("r3", AcquireOptions::new(Duration::from_secs(30)))),
        Some(ErrorCode::TenantLeaseQuota)
    );
    // Another tenant has its own quota.
    let mut other = connect("other").expect("connect");
    assert!(matches!(
        other.acquire("r3", AcquireOptions::new(Duration::from_secs(30))),
        Ok(AcquireOutcome::Granted(_))
    ));
    // wait_ms above wait_max.
    let mut long_wait = AcquireOptions::new(Duration::from_secs(30));
    long_wait.wait = Duration::from_secs(3);
    assert_eq!(
        server_code(a.acquire("r0", long_wait)),
        Some(ErrorCode::InvalidArgument)
    );
    // Waiters: one per connection, two per tenant. Raw connections, so
    // that the waits stay queued while we look.
    let wait_for = |raw: &mut Raw, id: u64, resource: &str| {
        raw.send(
            id,
            &Request::Acquire {
                resource: resource.into(),
                holder: id,
                ttl_ms: 1_000,
                lock_delay_ms: 0,
                wait_ms: 1_500,
            },
        );
    };
    let mut w1 = Raw::handshake(&ep);
    wait_for(&mut w1, 2, "r0");
    wait_for(&mut w1, 3, "r1");
    match w1.hear(Duration::from_secs(1)) {
        Heard::Frame(3, Response::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::TooManyWaiters, "per-connection cap");
        }
        other => panic!("{other:?}"),
    }
    // Connection quota: a, other's is another tenant, w1, and one more.
    let mut w2 = Raw::handshake(&ep);
    let mut refused = Raw::connect(&ep);
    refused.send(1, &hello("default"));
    let (codes, closed) = refused.codes_until_closed(Duration::from_secs(5));
    assert_eq!(codes, [ErrorCode::TenantConnectionQuota]);
    assert!(closed);
    wait_for(&mut w2, 4, "r1");
    drop(a);
    sleep_ms(200);
    let mut w3 = Raw::handshake(&ep);
    wait_for(&mut w3, 5, "r2");
    match w3.hear(Duration::from_secs(1)) {
        Heard::Frame(5, Response::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::TenantWaiterQuota);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_proofs_are_slowed_down_per_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("billing.secret");
    std::fs::write(&secret, "correct horse battery staple\n").expect("write");
    let output = std::process::Command::new(BIN)
        .args(["tenant-credential", "--secret-file"])
        .arg(&secret)
        .output()
        .expect("tenant-credential");
    let credential = String::from_utf8(output.stdout).expect("utf8");
    let server = Server::start(&format!(
        "[[tenants]]\nname = \"default\"\n\n[[tenants]]\nname = \"billing\"\n{credential}"
    ));
    let endpoint = server.endpoint.clone();
    let failed = Arc::new(AtomicU64::new(0));
    let slowed = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs(3);
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let (endpoint, failed, slowed) = (endpoint.clone(), failed.clone(), slowed.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < run_for {
                    let mut raw = Raw::connect(&endpoint);
                    raw.send(1, &hello("billing"));
                    match raw.hear(Duration::from_secs(5)) {
                        Heard::Frame(1, Response::Challenge { .. }) => {}
                        Heard::Frame(1, Response::Error { code, .. }) => {
                            assert_eq!(code, ErrorCode::SlowDown);
                            slowed.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        other => panic!("{other:?}"),
                    }
                    raw.send(2, &Request::Auth { proof: [0; 32] });
                    match raw.hear(Duration::from_secs(5)) {
                        Heard::Frame(2, Response::Error { code, .. }) => {
                            let counter = match code {
                                ErrorCode::AuthFailed => &failed,
                                ErrorCode::SlowDown => &slowed,
                                other => panic!("{other:?}"),
                            };
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().expect("attacker");
    }
    let failed = failed.load(Ordering::SeqCst);
    let slowed = slowed.load(Ordering::SeqCst);
    eprintln!(
        "FIGURE wrong proofs from 8 connections for {:.0} s: {failed} verified and failed ({:.1}/s), {slowed} refused with slow_down (at Hello, or at Auth before the proof was checked)",
        run_for.as_secs_f64(),
        failed as f64 / run_for.as_secs_f64()
    );
    // A burst of 10 and one a second after it, with room for the clock.
    assert!(
        failed <= 10 + 1 + run_for.as_secs() + 2,
        "{failed} failed proofs"
    );
    // Another source address is not slowed down.
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    let source: SocketAddr = "127.0.0.2:0".parse().expect("addr");
    if sock.bind(&source.into()).is_err() {
        println!("SKIP the second source: cannot bind 127.0.0.2");
        return;
    }
    let addr: SocketAddr = endpoint.parse().expect("addr");
    sock.connect(&addr.into()).expect("connect");
    let mut raw = Raw::from(sock.into());
    raw.send(1, &hello("billing"));
    assert!(matches!(
        raw.hear(Duration::from_secs(5)),
        Heard::Frame(1, Response::Challenge { .. })
    ));
}

/// `prlimit` runs the node with a low descriptor limit, or the test is
/// skipped.
fn prlimit() -> Option<&'static str> {
    let ok = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIP: no prlimit here");
    }
    ok.then_some("prlimit")
}

#[test]
fn a_low_descriptor_limit_is_warned_about_at_start() {
    let Some(prlimit) = prlimit() else { return };
    let server = Server::start_under("", &[prlimit, "--nofile=512:512", "--"]);
    let log = server.log_text();
    assert!(
        log.contains("RLIMIT_NOFILE is below what limits.connections_max needs"),
        "{log}"
    );
    // A soft limit below a high enough hard one is raised instead.
    let server = Server::start_under(
        "[limits]\nconnections_max = 1000\n",
        &[prlimit, "--nofile=256:4096", "--"],
    );
    let log = server.log_text();
    assert!(log.contains("raised the soft RLIMIT_NOFILE"), "{log}");
    assert!(!log.contains("RLIMIT_NOFILE is below"), "{log}");
}

#[test]
fn accept_failures_back_off_and_log_at_most_once_a_second() {
    let Some(prlimit) = prlimit() else { return };
    let server = Server::start_under("", &[prlimit, "--nofile=96:96", "--"]);
    let endpoint = server.endpoint.clone();
    // Hold more connections than the node has descriptors for; the rest
    // wait in the backlog and every accept fails with EMFILE.
    let mut socks = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(&endpoint) {
            socks.push(s);
        }
    }
    let watch = Duration::from_secs(4);
    sleep_ms(watch.as_millis() as u64);
    let log = server.log_text();
    let lines = log.matches("accept failed").count();
    eprintln!(
        "FIGURE accept failing with EMFILE for {:.0} s: {lines} log lines",
        watch.as_secs_f64()
    );
    assert!(lines >= 1, "the failure is logged: {log}");
    // One line per second per core at most (two cores here, plus the
    // first second's line).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        lines as u64 <= (watch.as_secs() + 2) * cores as u64,
        "{lines} lines"
    );
    drop(socks);
}

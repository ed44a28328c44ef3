//! The handshake budget on a real server over loopback: when a core's
//! share of `limits.unauthenticated_max` is full, the oldest connection
//! that has not said `Hello` makes room, and one that was challenged is
//! evicted only when no silent one is left.
#![cfg(feature = "server")]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use palisade_dataplane::server::{Cpus, Server, ServerOptions};
use palisade_proto::{encode_request, FrameBuf, Request};

mod common;
use common::{options, shared_with};

/// One core, room for two unfinished handshakes.
fn server() -> Server {
    let credential = palisade_proto::auth::derive_stored(b"secret", b"salt", 4096);
    let opts = ServerOptions {
        cpus: Cpus::Count(1),
        unauthenticated_max: 2,
        ..options()
    };
    Server::start(shared_with(1, Some(credential)), opts).expect("start")
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.local_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Sends `Hello` and reads the `Challenge` (some bytes).
fn hello(stream: &mut TcpStream) {
    let mut out = FrameBuf::new();
    let request = Request::Hello {
        tenant: "default".into(),
        client_nonce: [7; palisade_proto::NONCE_LEN],
        client_name: "test".into(),
    };
    encode_request(&mut out, 1, 0, 64 << 10, &request).expect("encode");
    stream.write_all(&out).expect("send hello");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("challenge");
    assert!(n > 0, "the server closed instead of challenging");
}

/// Whether the server closed `stream` (an eviction answers, then closes).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // The eviction's answer: the close follows.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => return true,
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Whether the server has left `stream` open (nothing to read within a
/// short look).
fn still_open(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let open = match stream.read(&mut buf) {
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        Ok(_) => false,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    open
}

#[test]
fn a_silent_flood_evicts_silent_connections_before_a_challenged_one() {
    let server = server();
    let mut silent = connect(&server);
    let mut challenged = connect(&server);
    hello(&mut challenged);
    // Full: both slots taken. Each new connection evicts the oldest
    // silent one: first `silent`, then each newcomer in turn.
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        flood.push(connect(&server));
        // Let the core accept it before the next one arrives.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        closed_by_server(&mut silent),
        "the oldest silent connection made room"
    );
    for stream in &mut flood[..7] {
        assert!(
            closed_by_server(stream),
            "older silent connections made room"
        );
    }
    assert!(
        still_open(&mut challenged),
        "the challenged connection was evicted while silent ones were left"
    );
    assert!(still_open(&mut flood[7]), "the newest connection stays");
}

#[test]
fn challenged_connections_make_room_when_no_silent_one_is_left() {
    let server = server();
    let mut first = connect(&server);
    hello(&mut first);
    let mut second = connect(&server);
    hello(&mut second);
    let mut third = connect(&server);
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        closed_by_server(&mut first),
        "the oldest challenged connection made room"
    );
    assert!(still_open(&mut second));
    assert!(still_open(&mut third));
}

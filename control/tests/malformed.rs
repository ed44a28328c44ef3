//! Bad input gets an error reply and a clean close, and the node keeps
//! serving everyone else: a flood of malformed frames runs while a
//! well-formed client keeps acquiring and releasing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions, TokenOutcome};
use palisade_proto::frame::{FrameHeader, FrameKind, HEADER_LEN};
use palisade_proto::{
    decode_response, encode_request, Decoded, ErrorCode, FrameBuf, RecvBuf, Request, Response,
};

fn hello(tenant: &str) -> Request {
    Request::Hello {
        tenant: tenant.into(),
        client_nonce: [0; 16],
        client_name: "malformed-test".into(),
    }
}

fn frame(request: &Request) -> Vec<u8> {
    let mut out = FrameBuf::new();
    encode_request(&mut out, 9, 0, 1 << 16, request).expect("encodes");
    out.to_vec()
}

/// Sends `bytes` (optionally half-closing), then reads every response until
/// the server closes. Returns the error codes received and whether the
/// server closed the connection.
fn exchange(endpoint: &str, bytes: &[u8], half_close: bool) -> (Vec<ErrorCode>, bool) {
    let mut stream = TcpStream::connect(endpoint).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The peer may close while we still write garbage: that is fine.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut rx = RecvBuf::new(4096, 1 << 20);
    let mut codes = Vec::new();
    loop {
        let n = match stream.read(rx.spare()) {
            Ok(0) => return (codes, true),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (codes, true),
            Err(_) => return (codes, false),
        };
        rx.filled(n);
        while let Ok(Decoded::Frame {
            payload, frame_len, ..
        }) = rx.next_frame(1 << 20)
        {
            if let Response::Error { code, .. } =
                decode_response(payload).expect("server frames are valid")
            {
                codes.push(code);
            }
            rx.consume(frame_len);
        }
    }
}

fn raw_header(payload_len: u32, version: u8, kind: u8) -> Vec<u8> {
    let mut head = [0u8; HEADER_LEN];
    FrameHeader {
        payload_len,
        kind: FrameKind::Request,
        request_id: 1,
        group: 0,
    }
    .write(&mut head);
    head[4] = version;
    head[5] = kind;
    head.to_vec()
}

#[test]
fn each_kind_of_bad_input_gets_its_error_and_a_close() {
    let server = Server::start("");
    let ep = server.endpoint.as_str();

    let (codes, closed) = exchange(ep, &[0xde; 64], false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::UnsupportedVersion], "garbage");

    let (codes, closed) = exchange(ep, &raw_header(64, 9, 1), false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::UnsupportedVersion], "wrong version");

    let (codes, closed) = exchange(ep, &raw_header(1 << 30, 1, 1), false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::FrameTooLarge], "oversized");

    let mut bad_payload = raw_header(32, 1, 1);
    bad_payload.extend_from_slice(&[0xff; 32]);
    let (codes, closed) = exchange(ep, &bad_payload, false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::Malformed], "payload fails validation");

    let full = frame(&hello("default"));
    let (codes, closed) = exchange(ep, &full[..full.len() - 5], true);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::Malformed], "truncated frame then EOF");

    let (codes, closed) = exchange(ep, &frame(&hello("nobody")), false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::UnknownTenant]);

    let (codes, closed) = exchange(ep, &frame(&Request::Status), false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::NotAuthenticated], "request before hello");

    // Two good frames then garbage: the good ones are answered first.
    let mut mixed = frame(&hello("default"));
    mixed.extend(frame(&Request::Status));
    mixed.extend_from_slice(&[7; 40]);
    let (codes, closed) = exchange(ep, &mixed, false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::UnsupportedVersion]);
}

#[test]
fn slow_or_silent_peers_are_timed_out() {
    let server =
        Server::start("[limits]\nhandshake_timeout = \"300ms\"\nframe_timeout = \"300ms\"\n");
    // Connects and says nothing.
    let (codes, closed) = exchange(&server.endpoint, &[], false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::Timeout]);
    // Starts a frame and never finishes it.
    let partial = frame(&hello("default"));
    let (codes, closed) = exchange(&server.endpoint, &partial[..10], false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::Timeout]);
}

#[test]
fn a_flood_of_malformed_frames_does_not_disturb_good_clients() {
    let mut server = Server::start("");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let good = {
        let endpoint = server.endpoint.clone();
        let stop = stop.clone();
        let served = served.clone();
        std::thread::spawn(move || {
            let mut client =
                Client::connect(&ConnectOptions::new(endpoint, "default")).expect("connect");
            while !stop.load(Ordering::SeqCst) {
                let outcome = client
                    .acquire("steady", AcquireOptions::new(Duration::from_secs(5)))
                    .expect("a well-formed client is always served");
                let AcquireOutcome::Granted(lease) = outcome else {
                    panic!("nobody else holds it: {outcome:?}");
                };
                assert_eq!(
                    client.release("steady", lease.token).expect("release"),
                    TokenOutcome::Released
                );
                served.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let attackers: Vec<_> = (0..4u8)
        .map(|seed| {
            let endpoint = server.endpoint.clone();
            std::thread::spawn(move || {
                let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for round in 0..60 {
                    let mut bytes = match round % 4 {
                        0 => frame(&hello("default")),
                        1 => raw_header((next() % 4096) as u32, 1, 1),
                        2 => raw_header(16, (next() % 256) as u8, (next() % 4) as u8),
                        _ => Vec::new(),
                    };
                    let garbage = (next() % 200) as usize;
                    bytes.extend((0..garbage).map(|_| next() as u8));
                    let (codes, _) = exchange(&endpoint, &bytes, true);
                    assert!(codes.len() <= 2, "{codes:?}");
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().expect("attacker thread");
    }
    stop.store(true, Ordering::SeqCst);
    good.join().expect("good client");
    assert!(served.load(Ordering::SeqCst) > 0);
    assert!(server.alive(), "the node survived: {}", server.log_text());
    let (code, status) = server.cli(&["status"]);
    assert_eq!(code, 0, "{status}");
}

#[test]
fn connection_limit_refuses_with_an_error() {
    let server = Server::start("[limits]\nconnections_max = 2\n");
    let a = Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("a");
    let b = Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("b");
    let (codes, closed) = exchange(&server.endpoint, &frame(&hello("default")), false);
    assert!(closed);
    assert_eq!(codes, [ErrorCode::TooManyConnections]);
    drop((a, b));
    // Room again once they are gone.
    for _ in 0..100 {
        if Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the limit was not released when connections closed");
}

#[test]
fn a_steady_pipeliner_is_not_mistaken_for_a_slow_one() {
    // Every read ends inside a frame, but each frame completes quickly:
    // the frame timeout must measure one frame, not the connection.
    let server = Server::start("[limits]\nframe_timeout = \"300ms\"\n");
    let mut stream = TcpStream::connect(&server.endpoint).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(&frame(&hello("default"))).expect("hello");
    let mut rx = RecvBuf::new(4096, 1 << 20);
    let mut answers = 0;
    let read_answers = |stream: &mut TcpStream, rx: &mut RecvBuf, want: usize| -> usize {
        let mut got = 0;
        while got < want {
            let n = stream.read(rx.spare()).expect("read");
            assert!(n > 0, "server closed the connection");
            rx.filled(n);
            while let Ok(Decoded::Frame {
                payload, frame_len, ..
            }) = rx.next_frame(1 << 20)
            {
                let response = decode_response(payload).expect("valid");
                assert!(!matches!(response, Response::Error { .. }), "{response:?}");
                rx.consume(frame_len);
                got += 1;
            }
        }
        got
    };
    answers += read_answers(&mut stream, &mut rx, 1);
    let mut bytes = Vec::new();
    for i in 0..40u64 {
        bytes.extend(frame(&Request::Check {
            resource: format!("r{i}"),
            token: i,
        }));
    }
    // Chunks of 1.5 frames every 40 ms: 40 frames take ~1.1 s, far longer
    // than the 300 ms frame timeout, yet no single frame takes longer than
    // about 80 ms to arrive.
    let chunk = frame(&Request::Check {
        resource: "r0".into(),
        token: 0,
    })
    .len()
        * 3
        / 2
        + 1;
    for piece in bytes.chunks(chunk) {
        stream.write_all(piece).expect("write");
        std::thread::sleep(Duration::from_millis(40));
    }
    answers += read_answers(&mut stream, &mut rx, 40);
    assert_eq!(answers, 41);
}

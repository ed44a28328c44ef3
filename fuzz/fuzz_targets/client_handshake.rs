//! The client's handshake (client/src/handshake.rs) and its receive path
//! (frames, `decode_response`, request-id matching in blocking.rs), driven
//! through the public `palisade_client::Client::connect` against a fake
//! server on loopback that answers with the fuzzer's bytes.
//!
//! The handshake state machine is public now (`FramedHandshake`) and
//! could be driven without a socket; this target keeps the loopback
//! connection because it also covers the receive path around it (frame
//! reads, request-id matching) that a sans-IO drive would skip.
//!
//! Input: one byte choosing the identity (bit 0: with a tenant secret),
//! then the byte stream the server sends (all of it at once, then it shuts
//! its write side; the client's own frames are read and dropped).
//!
//! Asserts (docs/DESIGN.md S5, client/src/handshake.rs):
//! - no panic, no hang: the call returns within its attempt timeout
//!   whatever the server sends (libFuzzer's -timeout catches a hang);
//! - with a secret, `connect` never succeeds: a server that cannot prove
//!   it holds the tenant's credential (its signature covers the client's
//!   fresh random nonce, which these bytes cannot know) is refused, and a
//!   server that skips the challenge is refused;
//! - without a secret, `connect` succeeds only if the server sent a
//!   `Welcome` frame, and the client then reports that `Welcome`.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_client::{Client, ConnectOptions};
use palisade_proto::{decode_response, Decoded, FrameBuf, FrameKind, Response, Welcome};

/// The client's response limit (client/src/blocking.rs, not exported).
const RESPONSE_PAYLOAD_MAX: u32 = 1 << 16;

struct Server {
    addr: SocketAddr,
    script: Mutex<SyncSender<Vec<u8>>>,
}

fn serve(listener: TcpListener, scripts: Receiver<Vec<u8>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let script = scripts.recv().unwrap_or_default();
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(&script);
        let _ = stream.shutdown(Shutdown::Write);
        // Read (and drop) what the client sends until it closes, so that
        // closing never resets a connection with unread data.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // libFuzzer's main is not Rust's: SIGPIPE is not ignored yet, and
        // the client writes to servers that may have closed.
        // SAFETY: setting a signal disposition to SIG_IGN at start-up,
        // before any other thread of this harness exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || serve(listener, rx));
        Server {
            addr,
            script: Mutex::new(tx),
        }
    })
}

/// The response frames in `script`, as far as they decode.
fn responses(script: &[u8]) -> Vec<Response> {
    let mut buf = FrameBuf::new();
    buf.extend_from_slice(script);
    let mut out = Vec::new();
    let mut offset = 0;
    while let Ok(Decoded::Frame {
        header,
        payload,
        frame_len,
    }) = palisade_proto::frame::decode_frame(&buf[offset..], RESPONSE_PAYLOAD_MAX)
    {
        if header.kind != FrameKind::Response {
            break;
        }
        match decode_response(payload) {
            Ok(response) => out.push(response),
            Err(_) => break,
        }
        offset += frame_len;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, script)) = data.split_first() else {
        return;
    };
    let with_secret = choice & 1 == 1;
    let sent = responses(script);
    let server = server();
    let mut options = ConnectOptions::new(server.addr.to_string(), "default")
        .with_attempt_timeout(Duration::from_millis(500));
    options.request_timeout = Duration::from_millis(500);
    options.connect_timeout = Duration::from_millis(500);
    if with_secret {
        options = options.with_secret(b"fuzz-secret".to_vec());
    }
    server
        .script
        .lock()
        .expect("not poisoned")
        .send(script.to_vec())
        .expect("the server thread runs");
    match Client::connect(&options) {
        Ok(client) => {
            assert!(
                !with_secret,
                "connected with a secret to a server that proved nothing"
            );
            let welcomes: Vec<&Welcome> = sent
                .iter()
                .filter_map(|r| match r {
                    Response::Welcome(w) => Some(w),
                    _ => None,
                })
                .collect();
            assert!(
                welcomes.iter().any(|w| *w == client.welcome()),
                "connected, but the server sent no such Welcome"
            );
        }
        Err(_) => {}
    }
});

//! The plain echo loops (`uring`, `epoll`) over real loopback sockets:
//! many connections, frames split at every byte, large bursts that need
//! short sends and many provided buffers, and clients that close mid
//! message or without reading. Each server runs on a thread of its own
//! that the test leaves running (the loops serve until the process ends).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::echo::{EchoRuntime, EchoStats};
use palisade_host::clock::monotonic_ns;

fn start(runtime: EchoRuntime, wait_past_sends: bool) -> (SocketAddr, Arc<EchoStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(EchoStats::default());
    let (tx, rx) = mpsc::channel();
    let thread_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name(format!("echo-{runtime:?}"))
        .spawn(move || {
            let announce = |about: &str| tx.send(about.to_string()).unwrap();
            let result = match runtime {
                EchoRuntime::Uring => {
                    super::uring_echo::run(listener, &thread_stats, wait_past_sends, announce)
                }
                EchoRuntime::Epoll => super::epoll_echo::run(listener, &thread_stats, announce),
                EchoRuntime::Glommio => unreachable!("not a plain loop"),
            };
            panic!("the {runtime:?} echo loop ended: {result:?}");
        })
        .unwrap();
    let about = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    eprintln!("{about}");
    (addr, stats)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn message(conn: usize, i: usize) -> Vec<u8> {
    let mut m = vec![0u8; 64];
    m[..8].copy_from_slice(&(conn as u64).to_le_bytes());
    m[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    m[16] = 1;
    m
}

/// Waits until the server's open connections fall to `n`.
fn wait_open(stats: &EchoStats, n: usize) {
    let until = monotonic_ns() + 10_000_000_000;
    while stats.connections_open.load(Ordering::Relaxed) != n {
        assert!(
            monotonic_ns() < until,
            "{} connections still open, expected {n}",
            stats.connections_open.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn round_trips(runtime: EchoRuntime, wait_past_sends: bool) {
    let (addr, stats) = start(runtime, wait_past_sends);
    // Many connections at once, each with pipelined messages.
    let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
    for round in 0..20 {
        for (c, stream) in conns.iter_mut().enumerate() {
            let mut wire = Vec::new();
            for i in 0..4 {
                wire.extend(message(c, round * 4 + i));
            }
            stream.write_all(&wire).unwrap();
        }
        for (c, stream) in conns.iter_mut().enumerate() {
            let mut back = vec![0u8; 4 * 64];
            stream.read_exact(&mut back).unwrap();
            for i in 0..4 {
                assert_eq!(&back[i * 64..(i + 1) * 64], &message(c, round * 4 + i)[..]);
            }
        }
    }
    wait_open(&stats, 64);
    drop(conns);
    wait_open(&stats, 0);

    // A frame split at every byte: the echo follows the bytes.
    let mut stream = connect(addr);
    let m = message(7, 7);
    for byte in &m {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut back = vec![0u8; m.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, m);

    // 4 MiB in one burst while reading: more than the provided buffers
    // and the socket buffers hold, so receives run the buffers dry and
    // sends come up short.
    let burst: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = burst.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; burst.len()];
    stream.read_exact(&mut back).unwrap();
    writing.join().unwrap();
    assert!(back == burst, "the burst came back changed");

    // Clients that go away mid message: half a frame then close; a burst
    // never read, then close (the server's send fails or stalls); a half
    // close with data still to echo (the echo still arrives).
    let mut half = connect(addr);
    half.write_all(&m[..30]).unwrap();
    drop(half);
    let mut rude = connect(addr);
    rude.write_all(&burst).unwrap();
    drop(rude);
    let mut polite = connect(addr);
    polite.write_all(&m[..40]).unwrap();
    polite.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    polite.read_to_end(&mut back).unwrap();
    assert_eq!(back, &m[..40]);
    drop(polite);
    drop(stream);
    wait_open(&stats, 0);

    // Still serving.
    let mut again = connect(addr);
    again.write_all(&m).unwrap();
    let mut back = vec![0u8; m.len()];
    again.read_exact(&mut back).unwrap();
    assert_eq!(back, m);
    drop(again);
    wait_open(&stats, 0);
}

#[test]
fn uring_echo_round_trips_over_loopback() {
    round_trips(EchoRuntime::Uring, false);
}

#[test]
fn uring_echo_waiting_past_its_sends_round_trips_over_loopback() {
    round_trips(EchoRuntime::Uring, true);
}

#[test]
fn epoll_echo_round_trips_over_loopback() {
    round_trips(EchoRuntime::Epoll, false);
}

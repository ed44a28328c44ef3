//! The proxy under a service manager, played by the test with a unix
//! datagram socket named by `NOTIFY_SOCKET`: READY=1 once NBD clients can
//! connect, WATCHDOG=1 while the executor runs and none while it is stuck
//! (test hook), STOPPING=1 and exit 0 on SIGTERM. No lease service runs:
//! the proxy starts without one.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{now_ms, sleep_ms, Proxy, ProxySetup};

const WATCHDOG_MS: u64 = 1_000;

fn collect(socket: &UnixDatagram, ms: u64) -> Vec<String> {
    let deadline = now_ms() + ms;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while now_ms() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn pings(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.as_str() == "WATCHDOG=1")
        .count()
}

#[test]
fn ready_watchdog_and_stopping_follow_the_executor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stall = tmp.path().join("stall");
    let setup = ProxySetup::file(tmp.path(), "127.0.0.1:1");
    // Proxy::start returns once the NBD greeting arrives.
    let mut proxy = Proxy::start(
        &setup,
        &[
            (
                "NOTIFY_SOCKET",
                socket_path.to_str().expect("utf-8").to_string(),
            ),
            ("WATCHDOG_USEC", (WATCHDOG_MS * 1_000).to_string()),
            (
                "PALISADE_PROXY_TEST_STALL_FILE",
                stall.to_str().expect("utf-8").to_string(),
            ),
        ],
    );
    let first = collect(&socket, 4 * WATCHDOG_MS);
    let ready = first
        .iter()
        .position(|m| m.starts_with("READY=1\n"))
        .unwrap_or_else(|| panic!("no READY=1: {first:?}\n{}", proxy.log_text()));
    assert_eq!(
        first[ready],
        format!(
            "READY=1\nSTATUS=serving NBD on {}, 1 export(s)",
            setup.listen
        )
    );
    assert!(pings(&first) >= 4, "{first:?}");

    std::fs::write(&stall, "").expect("arm the stall");
    let deadline = now_ms() + 10_000;
    while !proxy.log_text().contains("stalling this core's thread") {
        assert!(now_ms() < deadline, "no stall: {}", proxy.log_text());
        sleep_ms(20);
    }
    // A stuck executor: no NBD greeting, and after one interval no pings.
    let mut stream = TcpStream::connect(setup.listen).expect("the kernel accepts");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut greeting = [0u8; 8];
    assert!(
        stream.read_exact(&mut greeting).is_err(),
        "a stuck executor greeted"
    );
    let _ = collect(&socket, WATCHDOG_MS + 200);
    let stalled = collect(&socket, 3 * WATCHDOG_MS);
    assert_eq!(pings(&stalled), 0, "pinged while stuck: {stalled:?}");
    assert!(
        proxy.log_text().contains("executor has not run"),
        "{}",
        proxy.log_text()
    );

    std::fs::remove_file(&stall).expect("disarm");
    let resumed = collect(&socket, 2 * WATCHDOG_MS);
    assert!(pings(&resumed) >= 1, "{resumed:?}");

    let status = proxy.terminate();
    assert!(status.success(), "{status}: {}", proxy.log_text());
    let last = collect(&socket, 500);
    assert!(
        last.iter().any(|m| m == "STOPPING=1\nSTATUS=stopping"),
        "{last:?}"
    );
}

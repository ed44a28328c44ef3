//! Helpers that the integration tests of several Palisade crates share
//! (control's cluster and `hold` tests, the fencing proxy's tests): what
//! it takes to run the real daemons on loopback and misbehave between
//! them.
//!
//! What it owns:
//! - [`free_port`], [`free_addr`], [`sleep_ms`]: loopback ports and pauses.
//! - [`link`]: a TCP relay for one directed link that a test can cut
//!   ([`link::LinkState::blocked`]) or slow down, and the [`link::Mesh`]
//!   of a cluster's relays that isolates or mutes one node.
//! - [`have`]: whether a tool (qemu-utils) is installed, saying why a
//!   test skips when it is not.
//! - [`sibling_bin`]: another package's binary of this build, built first
//!   when the calling package's tests run alone.
//! - [`wait_for_nbd_greeting`]: waits until a fencing proxy answers.
//! - [`qemu_io`]: one `qemu-io` run and whether its commands succeeded.
//! - [`read_log`]: a child's log file, or nothing.
//!
//! What it must never do: be a normal dependency of a shipped crate (it is
//! a `[dev-dependencies]` entry only, and `publish = false`), or depend on
//! a Palisade crate (it is std only, so every crate's tests can use it).
//!
//! ```
//! let port = palisade_testkit::free_port();
//! assert!(port > 0);
//! ```

pub mod link;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Sleeps `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The lowest port [`free_addr`] hands out.
const LISTEN_PORTS_FROM: u32 = 10_000;

/// A free loopback address: a port nothing listens on right now, taken
/// from below the kernel's ephemeral range.
///
/// Binding port 0 and closing it (what this did before) races with every
/// outbound `connect` on the machine: the kernel hands the same ephemeral
/// range to connecting sockets, so between the test picking the port and
/// the daemon binding it, a relay or client dialling somewhere could take
/// it ("Address already in use", a CI failure). Ports below
/// `ip_local_port_range` are never handed out implicitly; a per-process
/// cursor (started at a pid-derived offset) keeps this process's tests and
/// another test binary from taking the same one.
#[must_use]
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let below = ephemeral_low().unwrap_or(32_768);
    if below > LISTEN_PORTS_FROM + 1_000 {
        let span = below - LISTEN_PORTS_FROM;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LISTEN_PORTS_FROM + (start + k) % span;
            let port = u16::try_from(port).expect("below the ephemeral range");
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr().expect("addr");
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_low() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// The value of one series (`name` with its labels, as the exposition
/// spells it) that the admin endpoint at `admin` serves, as text; `None`
/// when the endpoint does not answer or has no such series.
#[must_use]
pub fn metric_sample(admin: &str, series: &str) -> Option<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect(admin).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.trim().to_string())
    })
}

/// A free loopback port (see [`free_addr`]).
#[must_use]
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Whether `tool --version` runs; prints why a test skips when it does
/// not (all the tools asked for are qemu-utils').
#[must_use]
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {tool} is not installed (Debian: apt-get install qemu-utils); scripts/test.sh installs it when run as root");
    }
    ok
}

/// Binary `bin` of package `package`, in the same target folder as `own`
/// (a binary of this build, `env!("CARGO_BIN_EXE_…")`); built first (with
/// `--release` when `own` is not a debug build) if it is not there, which
/// happens when the calling package's tests run alone.
#[must_use]
pub fn sibling_bin(own: &str, package: &str, bin: &str) -> PathBuf {
    let path = Path::new(own).with_file_name(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", package, "--bin", bin]);
        if !own.contains("/debug/") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building {bin} failed");
    }
    path
}

/// The text of the log file at `path`; empty if there is none (yet).
#[must_use]
pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// One-shot `qemu-io ARGS -c CMD...`: (success, stdout + stderr).
/// qemu-io exits 0 even when a command fails; failures print a reason
/// (`… failed`, including `Pattern verification failed` and `write failed:
/// Operation not permitted`, or `can't open`), which counts as failing.
#[must_use]
pub fn qemu_io(args: &[&str], commands: &[&str]) -> (bool, String) {
    let mut command = Command::new("qemu-io");
    command.args(args);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = command.output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let failed = !output.status.success()
        || text.contains("failed")
        || text.contains("can't open")
        || text.contains("not permitted");
    (!failed, text)
}

/// Waits (up to about 30 s) until the fencing proxy `child` listening on
/// `listen` sends the NBD greeting. Panics with `log()` if it exits or
/// does not answer in time.
pub fn wait_for_nbd_greeting(listen: SocketAddr, child: &mut Child, log: impl Fn() -> String) {
    for _ in 0..1500 {
        if let Ok(mut stream) = TcpStream::connect(listen) {
            let mut greeting = [0u8; 8];
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            if stream.read_exact(&mut greeting).is_ok() && &greeting == b"NBDMAGIC" {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("proxy exited with {status}: {}", log());
        }
        sleep_ms(20);
    }
    panic!("proxy did not start: {}", log());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_addr();
        assert!(addr.ip().is_loopback());
        TcpListener::bind(addr).expect("still free");
    }

    #[test]
    fn free_ports_stay_out_of_the_ephemeral_range_and_differ() {
        let low = ephemeral_low().expect("linux has the range");
        let ports: Vec<u16> = (0..64).map(|_| free_port()).collect();
        for &port in &ports {
            assert!(
                u32::from(port) < low,
                "port {port} is in the ephemeral range"
            );
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice");
    }

    #[test]
    fn a_missing_log_reads_empty() {
        assert_eq!(read_log(Path::new("/nonexistent/palisade.log")), "");
    }

    #[test]
    fn a_missing_tool_is_not_had() {
        assert!(!have("palisade-no-such-tool"));
    }
}

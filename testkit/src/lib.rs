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
use std::time::Duration;

/// Sleeps `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A free loopback address (bind port 0, read it, close).
#[must_use]
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// A free loopback port (bind 0, read it, close).
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
    fn a_missing_log_reads_empty() {
        assert_eq!(read_log(Path::new("/nonexistent/palisade.log")), "");
    }

    #[test]
    fn a_missing_tool_is_not_had() {
        assert!(!have("palisade-no-such-tool"));
    }
}

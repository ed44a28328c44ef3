//! `palisade hold disk0 -- qemu-io ... nbd://proxy/disk0@{token}`: a real
//! `qemu-io` writes through the real fencing proxy under `hold`. The node
//! is frozen (SIGSTOP) so the lease is lost: `hold` kills the writer before
//! the lease's validity ends, the next holder's token is greater, the old
//! token's writes are refused, and the disk holds only what was written
//! under valid leases. Skips (passing) without qemu-utils.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::hold::{events, granted, valid_until, Running, SHORT};
use common::{Server, BIN};
use palisade_testkit::{free_addr, have, read_log, sibling_bin, wait_for_nbd_greeting};

const BLOCK: u64 = 4096;

/// The fencing proxy of this build, next to `palisade` (built first when
/// this package's tests run alone).
fn proxy_bin() -> PathBuf {
    sibling_bin(BIN, "palisade-fencing-proxy", "palisade-fencing-proxy")
}

/// The proxy with one 64 MiB file-backed export `disk0` fenced by
/// resource `disk0` of `lease_endpoint`; killed on drop.
struct Proxy {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn start(dir: &Path, lease_endpoint: &str) -> Proxy {
        let listen = free_addr();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"{listen}\"\nmetrics = \"{}\"\nstate_dir = \"state\"\n\n[lease_service]\nendpoint = \"{lease_endpoint}\"\ntimeout = \"1s\"\n\n[[exports]]\nname = \"disk0\"\ntenant = \"default\"\nresource = \"disk0\"\nfile = \"disk0.img\"\nsize = \"64MiB\"\n",
                free_addr()
            ),
        )
        .expect("proxy config");
        let log = dir.join("proxy.log");
        let child = Command::new(proxy_bin())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn the proxy");
        let mut proxy = Proxy { child, listen, log };
        // Ready once it sends the NBD greeting.
        let log = proxy.log.clone();
        wait_for_nbd_greeting(listen, &mut proxy.child, || read_log(&log));
        proxy
    }

    fn log_text(&self) -> String {
        read_log(&self.log)
    }

    fn url(&self, token: Option<u64>) -> String {
        match token {
            Some(token) => format!("nbd://{}/disk0@{token}", self.listen),
            None => format!("nbd://{}/disk0", self.listen),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qemu-io -f raw [-r] URL -c COMMAND`: (succeeded, output).
fn qemu_io(url: &str, read_only: bool, command: &str) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    args.push(url);
    palisade_testkit::qemu_io(&args, &[command])
}

#[test]
fn a_writer_under_hold_is_stopped_before_its_lease_ends_and_the_disk_holds_only_fenced_writes() {
    if !(have("qemu-io") && have("qemu-img") && have("qemu-nbd")) {
        return;
    }
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(dir.path(), &server.endpoint);
    let stamps = dir.path().join("stamps");

    // Holder A writes 0xaa to block 0, 1, 2, ... one qemu-io per block,
    // and logs the wall clock after each write qemu-io reports done.
    let script = r#"i=0
while :; do
  out=$(qemu-io -f raw "URL" -c "write -P 0xaa $((i * 4096)) 4k" 2>&1)
  case "$out" in
    *"wrote 4096/4096"*) date +%s%3N >> STAMPS; i=$((i + 1)) ;;
  esac
done"#
        .replace("URL", &proxy.url(None).replace("/disk0", "/disk0@{token}"))
        .replace("STAMPS", stamps.to_str().expect("utf8"));
    let mut a_hold = Running::start("disk0", &SHORT, &server.endpoint, &["sh", "-c", &script]);
    a_hold.wait_for("renewed");
    assert!(
        std::fs::read_to_string(&stamps).is_ok_and(|s| !s.is_empty()),
        "A wrote through the proxy: {}",
        proxy.log_text()
    );

    // Freeze the node: A's lease is lost.
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let (status, seen) = a_hold.finish();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(status, Some(122), "{seen:?}");
    let a = granted(&seen);
    let valid_until = valid_until(&seen);
    let written: Vec<u64> = std::fs::read_to_string(&stamps)
        .expect("stamps")
        .lines()
        .map(|l| l.trim().parse().expect("a timestamp"))
        .collect();
    let n = written.len() as u64;
    eprintln!(
        "A wrote {n} blocks, the last at {:?}, validity {valid_until}",
        written.last()
    );
    assert!(
        written.iter().all(|&at| at <= valid_until),
        "A finished a write after its lease's validity {valid_until}: {written:?}"
    );

    // B gets the lease with a greater token and writes 0xbb to block 0.
    let b_script = format!(
        "qemu-io -f raw \"{}\" -c \"write -P 0xbb 0 4k\" | grep -q 'wrote 4096/4096'",
        proxy.url(None).replace("/disk0", "/disk0@{token}")
    );
    let b = common::hold::run(
        "disk0",
        &["--ttl", "5s", "--wait", "10s"],
        &server.endpoint,
        &["sh", "-c", &b_script],
    );
    let b_events = events(&b.stderr);
    assert_eq!(b.status.code(), Some(0), "B's write: {b_events:?}");
    let b_token = granted(&b_events);
    assert!(b_token > a, "S1: {b_token} > {a}");

    // A's token is fenced now.
    let (ok, out) = qemu_io(&proxy.url(Some(a)), false, "write -P 0xcc 0 4k");
    assert!(!ok, "a write with the old token went through: {out}");

    // The disk: B's block 0, A's blocks 1..n, and nothing A did not log
    // beyond the one write that may have been in flight when it was killed.
    let url = proxy.url(None);
    let (ok, out) = qemu_io(&url, true, "read -P 0xbb 0 4k");
    assert!(ok, "block 0 holds B's write: {out}");
    if n > 1 {
        let (ok, out) = qemu_io(
            &url,
            true,
            &format!("read -P 0xaa {BLOCK} {}", (n - 1) * BLOCK),
        );
        assert!(ok, "blocks 1..{n} hold A's logged writes: {out}");
    }
    let (ok, out) = qemu_io(
        &url,
        true,
        &format!("read -P 0 {} {}", (n + 1) * BLOCK, 64 * BLOCK),
    );
    assert!(
        ok,
        "nothing beyond A's last write and the one in flight: {out}"
    );
    drop(server);
}

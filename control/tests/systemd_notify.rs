//! `palisade serve` under a service manager, played by the test: a unix
//! datagram socket named by `NOTIFY_SOCKET`, as systemd binds one.
//!
//! - READY=1 comes only once the node serves: a member of a two-node
//!   cluster started alone (no quorum, no leader) never sends it; it sends
//!   it once the second member joins and a leader is elected, and at that
//!   moment `palisade status` shows it leading or following a known leader.
//! - WATCHDOG=1 keeps arriving while every data-plane core runs, and stops
//!   while one core is stalled (test failpoint: core 1 blocks its thread),
//!   then resumes when it runs again. A watchdog that pinged on a timer
//!   fails this test.
//! - WATCHDOG_PID naming another process turns the watchdog off.
//! - SIGTERM sends STOPPING=1.

mod cluster;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{free_port, sleep_ms, BIN, CLUSTER_SECRET};
use palisade_host::clock::boottime_ms;
use serde_json::Value;

/// The service manager's end: a bound datagram socket.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(dir: &Path, name: &str) -> Manager {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        Manager { socket, path }
    }

    /// Every datagram that arrives within `ms`.
    fn collect(&self, ms: u64) -> Vec<String> {
        let deadline = boottime_ms() + ms;
        let mut got = Vec::new();
        while boottime_ms() < deadline {
            if let Some(message) = self.try_recv() {
                got.push(message);
            }
        }
        got
    }

    fn try_recv(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8")),
            Err(_) => None,
        }
    }

    /// Waits up to `ms` for a datagram containing `line`; returns it and
    /// everything that came before it.
    fn wait_for(&self, line: &str, ms: u64) -> (String, Vec<String>) {
        let deadline = boottime_ms() + ms;
        let mut before = Vec::new();
        while boottime_ms() < deadline {
            if let Some(message) = self.try_recv() {
                if message.lines().any(|l| l == line) {
                    return (message, before);
                }
                before.push(message);
            }
        }
        panic!("no {line:?} within {ms} ms; got {before:?}");
    }
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

struct Node {
    child: Child,
    log: PathBuf,
    client: String,
}

impl Node {
    fn spawn(config: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Node {
        let text = std::fs::read_to_string(config).expect("config");
        let client = text
            .lines()
            .find_map(|l| l.strip_prefix("client = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("the config's first client address is this node's")
            .to_string();
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--failpoints",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn palisade serve");
        Node {
            child,
            log: log.to_path_buf(),
            client,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let output = Command::new(BIN)
            .args([
                "status",
                "--json",
                "--timeout",
                "2s",
                "--endpoint",
                &self.client,
            ])
            .output()
            .expect("run palisade status");
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process by pid.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0);
        self.child.wait().expect("wait")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two-member cluster configs in `dir`: node{1,2}.toml.
fn two_node_configs(dir: &Path) -> [PathBuf; 2] {
    let clients = [free_port(), free_port()];
    let peers = [free_port(), free_port()];
    std::fs::write(dir.join("secret"), CLUSTER_SECRET).expect("secret");
    [1u16, 2].map(|id| {
        let me = usize::from(id - 1);
        let mut text = format!(
            "[node]\nid = {id}\ncores = 1\n\n[listen]\nclient = \"127.0.0.1:{}\"\n\n[cluster]\nname = \"test\"\nheartbeat_interval = \"20ms\"\nelection_timeout = \"200ms\"\nsecret_file = \"secret\"\n",
            clients[me]
        );
        for other in 0..2 {
            text.push_str(&format!(
                "\n[[cluster.peers]]\nid = {}\npeer = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{}\"\n",
                other + 1,
                peers[other],
                clients[other]
            ));
        }
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, text).expect("config");
        path
    })
}

#[test]
fn ready_only_once_the_node_leads_or_follows_a_known_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [config1, config2] = two_node_configs(dir.path());
    let manager1 = Manager::bind(dir.path(), "notify1.sock");
    let manager2 = Manager::bind(dir.path(), "notify2.sock");
    let socket1 = manager1.path.to_str().expect("utf-8").to_string();
    let socket2 = manager2.path.to_str().expect("utf-8").to_string();

    let mut node1 = Node::spawn(
        &config1,
        &dir.path().join("data1"),
        &dir.path().join("node1.log"),
        &[("NOTIFY_SOCKET", &socket1)],
    );
    // Alone, node 1 has no quorum: 3 s is 15 election timeouts.
    let alone = manager1.collect(3_000);
    assert_eq!(
        count(&alone, "READY=1"),
        0,
        "READY=1 without a leader: {alone:?}\n{}",
        node1.log()
    );
    assert!(
        alone.iter().any(|m| m.contains("no leader known")),
        "the status says why it is not ready: {alone:?}"
    );
    let status = node1.status();
    assert_ne!(status["role"], "leader", "{status}");

    let mut node2 = Node::spawn(
        &config2,
        &dir.path().join("data2"),
        &dir.path().join("node2.log"),
        &[("NOTIFY_SOCKET", &socket2)],
    );
    for (node, manager) in [(&node1, &manager1), (&node2, &manager2)] {
        let (ready, _) = manager.wait_for("READY=1", 20_000);
        let status = node.status();
        let role = status["role"].as_str().expect("role");
        let leader = status["leader"].as_u64().expect("leader");
        match role {
            "leader" => assert!(ready.contains("STATUS=leader term "), "{ready:?}"),
            "follower" => {
                assert_ne!(leader, 0, "{status}");
                assert!(ready.contains("STATUS=follower of node "), "{ready:?}");
            }
            other => panic!("READY=1 sent by a {other}: {status}; {ready:?}"),
        }
    }
    // No watchdog was asked for: none is sent.
    assert_eq!(count(&manager1.collect(300), "WATCHDOG=1"), 0);

    assert!(node1.terminate().success(), "{}", node1.log());
    let (stopping, _) = manager1.wait_for("STOPPING=1", 5_000);
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    assert!(node2.terminate().success(), "{}", node2.log());
}

/// Watchdog interval the tests ask for.
const WATCHDOG_MS: u64 = 1_000;

fn single_node(dir: &Path, cores: usize, env: &[(&str, &str)]) -> Node {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ncores = {cores}\n\n[listen]\nclient = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .expect("config");
    Node::spawn(&config, &dir.join("data"), &dir.join("node.log"), env)
}

#[test]
fn the_watchdog_follows_the_health_of_every_data_plane_core() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        println!("SKIP: one CPU; the test stalls core 1 of two");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = Manager::bind(dir.path(), "notify.sock");
    let socket = manager.path.to_str().expect("utf-8").to_string();
    let usec = (WATCHDOG_MS * 1_000).to_string();
    let mut node = single_node(
        dir.path(),
        2,
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", &usec),
            ("PALISADE_TEST_STALL_CORE", "1"),
        ],
    );
    let (ready, _) = manager.wait_for("READY=1", 20_000);
    assert!(ready.contains("STATUS=leader term "), "{ready:?}");
    assert_eq!(node.status()["role"], "leader");

    // Healthy: a ping every half interval.
    let healthy = manager.collect(4 * WATCHDOG_MS);
    let pings = count(&healthy, "WATCHDOG=1");
    assert!(pings >= 4, "{pings} pings in 4 intervals: {healthy:?}");

    // Stall core 1: its thread blocks in a task, as a task that never
    // yields would block it.
    let stall = dir.path().join("data").join("failpoint-stall-core");
    std::fs::write(&stall, "").expect("arm the stall");
    let deadline = boottime_ms() + 20_000;
    while !node.log().contains("stalling this core's thread") {
        assert!(boottime_ms() < deadline, "no stall: {}", node.log());
        sleep_ms(20);
    }
    // Core 1's last beat is at most one heartbeat period before the stall;
    // pings may go on until that beat is an interval old.
    let grace = manager.collect(WATCHDOG_MS + 200);
    let stalled = manager.collect(3 * WATCHDOG_MS);
    assert_eq!(
        count(&stalled, "WATCHDOG=1"),
        0,
        "pinged while core 1 was stalled (after {grace:?}): {stalled:?}"
    );
    assert!(
        node.log().contains("data-plane core 1 has not run"),
        "the stuck core is named: {}",
        node.log()
    );
    // The process lives on (its control thread wrote the report): only
    // the missing pings tell systemd. A client may not get an answer now:
    // SO_REUSEPORT may hand its connection to the stalled core.
    assert!(node.child.try_wait().expect("try_wait").is_none());

    // Core 1 runs again: pings resume.
    std::fs::remove_file(&stall).expect("disarm the stall");
    let (_, _) = manager.wait_for("WATCHDOG=1", 10_000);
    assert!(
        node.log().contains("watchdog pings resume"),
        "{}",
        node.log()
    );

    assert!(node.terminate().success(), "{}", node.log());
    let (stopping, _) = manager.wait_for("STOPPING=1", 5_000);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
}

#[test]
fn a_watchdog_meant_for_another_process_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = Manager::bind(dir.path(), "notify.sock");
    let socket = manager.path.to_str().expect("utf-8").to_string();
    let usec = (WATCHDOG_MS * 1_000).to_string();
    let node = single_node(
        dir.path(),
        1,
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", &usec),
            // pid 1 is never this test's child.
            ("WATCHDOG_PID", "1"),
        ],
    );
    let (_, before) = manager.wait_for("READY=1", 20_000);
    let mut messages = before;
    messages.extend(manager.collect(2 * WATCHDOG_MS));
    assert_eq!(
        count(&messages, "WATCHDOG=1"),
        0,
        "{messages:?}\n{}",
        node.log()
    );
}

#[test]
fn a_malformed_notify_environment_stops_the_start_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = single_node(
        dir.path(),
        1,
        &[("NOTIFY_SOCKET", "/tmp/x.sock"), ("WATCHDOG_USEC", "soon")],
    );
    let status = node.child.wait().expect("wait");
    assert!(!status.success());
    assert!(
        node.log().contains("WATCHDOG_USEC=\"soon\""),
        "{}",
        node.log()
    );
}

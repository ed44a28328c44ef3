//! A cluster of real `palisade serve` processes on loopback, with a TCP
//! relay on every directed peer link that can cut it (as
//! control/tests/cluster starts them), and a client for it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
// A relay for the peer link `from -> to`: node `from` dials it, it dials
// node `to`'s peer port. While blocked, it breaks and refuses connections.
use palisade_testkit::link::{Link, Mesh};

use super::{now_ms, palisade_bin, sleep_ms};

/// One node.
pub struct Node {
    pub id: u16,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// The nodes' `leases.max_ttl`, seconds: short, so that a newly elected
/// leader's grace period (`max_ttl + lock_delay_max + election_timeout`)
/// is a few seconds.
pub const MAX_TTL_S: u64 = 3;

/// A running cluster; every node is killed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    links: Mesh,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` nodes (heartbeat 20 ms, election timeout 200 ms,
    /// leases of at most [`MAX_TTL_S`]).
    pub fn start(size: u16) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every port at once, so no two of them are the same.
        let held: Vec<TcpListener> = (0..2 * size)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let ports: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().expect("addr")).collect();
        drop(held);
        let mut links = Mesh::new();
        for from in 1..=size {
            for to in 1..=size {
                if from != to {
                    let upstream = ports[usize::from(to - 1) * 2 + 1];
                    links.insert(from, to, Link::start(upstream));
                }
            }
        }
        let mut nodes: Vec<Node> = (1..=size)
            .map(|id| Node {
                id,
                client: ports[usize::from(id - 1) * 2],
                peer: ports[usize::from(id - 1) * 2 + 1],
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                stopped: false,
            })
            .collect();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "correct horse battery staple\n").expect("secret");
        let peer_lists: Vec<String> = nodes
            .iter()
            .map(|me| {
                let mut peers = String::new();
                for other in &nodes {
                    // Its own entry is its real port; the others go
                    // through the relay for the link me -> other.
                    let peer = if other.id == me.id {
                        other.peer
                    } else {
                        links[&(me.id, other.id)].listen
                    };
                    peers.push_str(&format!(
                        "\n[[cluster.peers]]\nid = {}\npeer = \"{}\"\nclient = \"{}\"\n",
                        other.id, peer, other.client
                    ));
                }
                peers
            })
            .collect();
        for (node, peers) in nodes.iter_mut().zip(&peer_lists) {
            let config = dir.path().join(format!("node{}.toml", node.id));
            std::fs::write(
                &config,
                format!(
                    "[node]\nid = {}\ncores = 1\n\n[listen]\nclient = \"{}\"\n\n[cluster]\nname = \"proxy-test\"\nheartbeat_interval = \"20ms\"\nelection_timeout = \"200ms\"\nsecret_file = \"{}\"\n\n[admin]\nlisten = \"off\"\n\n[leases]\nmax_ttl = \"{MAX_TTL_S}s\"\nlock_delay_max = \"1s\"\n{peers}",
                    node.id,
                    node.client,
                    secret.display()
                ),
            )
            .expect("node config");
            let child = Command::new(palisade_bin())
                .args(["serve", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join(format!("data{}", node.id)))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&node.log).expect("log"))
                .spawn()
                .expect("spawn palisade serve");
            node.child = Some(child);
        }
        // Owned by the cluster before anything can panic: its drop kills
        // the nodes.
        let mut cluster = Cluster {
            nodes,
            links,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            let deadline = now_ms() + 20_000;
            while TcpStream::connect(node.client).is_err() {
                let exited = node
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                assert!(
                    now_ms() < deadline && exited.is_none(),
                    "node {} did not start ({exited:?}): {}",
                    node.id,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
                sleep_ms(20);
            }
        }
        cluster
    }

    /// Every node's client endpoint, comma-separated, `first` (an index)
    /// at the head.
    pub fn endpoints_from(&self, first: usize) -> String {
        let mut list = vec![self.nodes[first].client.to_string()];
        for (i, node) in self.nodes.iter().enumerate() {
            if i != first {
                list.push(node.client.to_string());
            }
        }
        list.join(",")
    }

    /// Every node's client endpoint but node `i`'s, comma-separated.
    pub fn endpoints_except(&self, i: usize) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, node)| node.client.to_string())
            .collect();
        list.join(",")
    }

    /// A client of the cluster, `attempt_ms` per node and attempt.
    pub fn client(&self, endpoints: &str, attempt_ms: u64) -> Client {
        let mut options = ConnectOptions::new(endpoints, "default")
            .with_attempt_timeout(Duration::from_millis(attempt_ms));
        options.request_timeout = Duration::from_secs(10);
        Client::connect(&options).expect("connect to the cluster")
    }

    /// Index of the node that says it leads, waiting up to `ms`.
    pub fn wait_leader(&self, ms: u64) -> usize {
        let deadline = now_ms() + ms;
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.stopped {
                    continue;
                }
                let mut options = ConnectOptions::new(node.client.to_string(), "default")
                    .with_attempt_timeout(Duration::from_millis(300));
                options.request_timeout = Duration::from_millis(500);
                let Ok(mut client) = Client::connect(&options) else {
                    continue;
                };
                if let Ok(status) = client.status() {
                    if status.role == palisade_proto::Role::Leader {
                        return i;
                    }
                }
            }
            assert!(now_ms() < deadline, "no leader within {ms} ms");
            sleep_ms(50);
        }
    }

    /// Acquires `resource` for `ttl_ms` through `client` (retrying while
    /// the cluster cannot grant yet); the token.
    pub fn acquire(client: &mut Client, resource: &str, ttl_ms: u64) -> u64 {
        let deadline = now_ms() + 30_000;
        loop {
            let options = AcquireOptions::new(Duration::from_millis(ttl_ms));
            match client.acquire(resource, options) {
                Ok(AcquireOutcome::Granted(lease)) => return lease.token,
                other => {
                    assert!(now_ms() < deadline, "no grant of {resource}: {other:?}");
                    sleep_ms(50);
                }
            }
        }
    }

    /// Cuts (or restores) every peer link of node `i`, both ways; its
    /// clients still reach it.
    pub fn isolate(&self, i: usize, blocked: bool) {
        self.links.isolate(self.nodes[i].id, blocked);
    }

    /// Sends `signal` to node `i`.
    pub fn signal(&mut self, i: usize, signal: i32) {
        let child = self.nodes[i].child.as_ref().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: signalling our own child process by pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
        self.nodes[i].stopped = signal == libc::SIGSTOP;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let pid = i32::try_from(child.id()).expect("pid");
                // A stopped process dies of SIGKILL only once continued.
                // SAFETY: signalling our own child process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

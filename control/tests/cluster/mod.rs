//! A cluster of real `palisade serve` processes on loopback, with a
//! fault-injecting TCP proxy on every directed peer link, and a checker
//! for the lease history clients observed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A fault-injecting TCP relay for the link `from -> to`: node `from`
/// dials it, it dials node `to`'s real peer port.
#[allow(unused_imports)]
pub use palisade_testkit::link::{Link as Proxy, LinkState, Mesh};
#[allow(unused_imports)]
pub use palisade_testkit::{free_port, sleep_ms};

pub struct NodeProc {
    pub id: u16,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// The secret every test node shares unless a test changes it.
pub const CLUSTER_SECRET: &str = "correct horse battery staple\n";

/// A running cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    /// Proxy for each directed link (from, to).
    pub links: Mesh,
    pub dir: tempfile::TempDir,
    pub extra: String,
    /// Extra environment per node index.
    pub env: HashMap<usize, Vec<(String, String)>>,
    /// Heartbeat interval and election timeout, ms.
    pub timing: (u64, u64),
    /// Lines added to every node's `[cluster]` section.
    pub cluster_lines: String,
}

impl Cluster {
    /// Starts `size` nodes with `extra` TOML appended to every config
    /// (e.g. short ttls).
    pub fn start(size: u16, extra: &str) -> Cluster {
        Cluster::start_with_env(size, extra, HashMap::new())
    }

    /// [`Cluster::start`] with this heartbeat interval and election timeout.
    pub fn start_timed(size: u16, extra: &str, heartbeat_ms: u64, election_ms: u64) -> Cluster {
        Cluster::build(size, extra, HashMap::new(), (heartbeat_ms, election_ms))
    }

    /// [`Cluster::start_timed`] with extra environment variables for some
    /// nodes.
    pub fn start_timed_with_env(
        size: u16,
        extra: &str,
        env: HashMap<usize, Vec<(String, String)>>,
        heartbeat_ms: u64,
        election_ms: u64,
    ) -> Cluster {
        Cluster::build(size, extra, env, (heartbeat_ms, election_ms))
    }

    /// [`Cluster::start`] with extra environment variables for some nodes.
    pub fn start_with_env(
        size: u16,
        extra: &str,
        env: HashMap<usize, Vec<(String, String)>>,
    ) -> Cluster {
        Cluster::build(size, extra, env, (20, 200))
    }

    /// [`Cluster::start`] with `lines` in every node's `[cluster]`
    /// section (`extra` cannot reopen it).
    pub fn start_with_cluster_lines(size: u16, extra: &str, lines: &str) -> Cluster {
        let mut cluster = Cluster::build_stopped(size, extra, HashMap::new(), (20, 200));
        cluster.cluster_lines = lines.to_string();
        cluster.write_and_spawn();
        cluster
    }

    fn build(
        size: u16,
        extra: &str,
        env: HashMap<usize, Vec<(String, String)>>,
        timing: (u64, u64),
    ) -> Cluster {
        let mut cluster = Cluster::build_stopped(size, extra, env, timing);
        cluster.write_and_spawn();
        cluster
    }

    fn write_and_spawn(&mut self) {
        for i in 0..self.nodes.len() {
            self.write_config(i);
        }
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
    }

    fn build_stopped(
        size: u16,
        extra: &str,
        env: HashMap<usize, Vec<(String, String)>>,
        timing: (u64, u64),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for id in 1..=size {
            let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let peer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            nodes.push(NodeProc {
                id,
                client,
                peer,
                config: dir.path().join(format!("node{id}.toml")),
                data_dir: dir.path().join(format!("data{id}")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
            });
        }
        let mut links = Mesh::new();
        for from in &nodes {
            for to in &nodes {
                if from.id != to.id {
                    links.insert(from.id, to.id, Proxy::start(to.peer));
                }
            }
        }
        Cluster {
            nodes,
            links,
            dir,
            extra: extra.to_string(),
            env,
            timing,
            cluster_lines: String::new(),
        }
    }

    fn write_config(&self, i: usize) {
        let me = &self.nodes[i];
        let mut text = format!(
            "[node]\nid = {}\ncores = 1\n\n[listen]\nclient = \"{}\"\n\n[cluster]\nname = \"test\"\nheartbeat_interval = \"{}ms\"\nelection_timeout = \"{}ms\"\nsecret_file = \"secret{}\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            me.id, me.client, self.timing.0, self.timing.1, me.id, self.cluster_lines
        );
        let secret = self.dir.path().join(format!("secret{}", me.id));
        if !secret.exists() {
            std::fs::write(&secret, CLUSTER_SECRET).expect("write secret");
        }
        for other in &self.nodes {
            let peer = if other.id == me.id {
                other.peer
            } else {
                self.links[&(me.id, other.id)].listen
            };
            text.push_str(&format!(
                "\n[[cluster.peers]]\nid = {}\npeer = \"{}\"\nclient = \"{}\"\n",
                other.id, peer, other.client
            ));
        }
        text.push('\n');
        text.push_str(&self.extra);
        std::fs::write(&me.config, text).expect("write config");
    }

    /// Gives node `i` another cluster secret (it takes effect when the
    /// node is next spawned).
    pub fn set_secret(&self, i: usize, secret: &str) {
        let path = self.dir.path().join(format!("secret{}", self.nodes[i].id));
        std::fs::write(path, secret).expect("write secret");
    }

    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log");
        let mut command = Command::new(BIN);
        // A node's own environment may override the log level.
        command.env("RUST_LOG", "info");
        for (key, value) in self.env.get(&i).into_iter().flatten() {
            command.env(key, value);
        }
        let child = command
            .args(["serve", "--failpoints", "--config"])
            .arg(&node.config)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        node.child = Some(child);
        let (id, client) = (node.id, node.client);
        // Wait for the client port.
        for _ in 0..500 {
            if TcpStream::connect(client).is_ok() {
                return;
            }
            sleep_ms(10);
        }
        panic!("node {id} did not start: {}", self.log(i));
    }

    /// The value of metric `name` (no labels) that node `i` serves, if it
    /// answers. The admin port is the kernel's choice (a port picked ahead
    /// could be taken before the node binds it); the node's latest start
    /// logs it.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let log = self.log(i);
        let from = log.rfind("metrics on http://")? + "metrics on http://".len();
        let admin = &log[from..from + log[from..].find('/')?];
        palisade_testkit::metric_sample(admin, name)?.parse().ok()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client.to_string()).collect()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, i: usize, signal: i32) {
        let child = self.nodes[i].child.as_ref().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: sending a signal to our own child process by pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// `palisade status --json` of node `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        let output = Command::new(BIN)
            .args(["status", "--json", "--timeout", "1s", "--endpoint"])
            .arg(self.nodes[i].client.to_string())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits up to `ms` for node `i` to answer as a follower that knows its
    /// leader: a restarted node rejoins once the leader's link to it
    /// reconnects (backoff up to 1 s, then the authenticated handshake), so
    /// tests poll rather than guess.
    pub fn wait_follower(&self, i: usize, ms: u64) -> Value {
        let deadline = palisade_host::clock::boottime_ms() + ms;
        loop {
            let status = self.status(i).unwrap_or_default();
            if status["role"] == "follower" && status["leader"].as_u64().is_some_and(|l| l != 0) {
                return status;
            }
            assert!(
                palisade_host::clock::boottime_ms() < deadline,
                "node {i} is not a follower within {ms} ms: {status}"
            );
            sleep_ms(50);
        }
    }

    /// Index of the node that says it leads and whose peers agree, waiting
    /// up to `ms`.
    pub fn wait_leader(&self, ms: u64, among: &[usize]) -> usize {
        let deadline = palisade_host::clock::boottime_ms() + ms;
        loop {
            for &i in among {
                if let Some(status) = self.status(i) {
                    if status["role"] == "leader" {
                        return i;
                    }
                }
            }
            assert!(
                palisade_host::clock::boottime_ms() < deadline,
                "no leader among {among:?} within {ms} ms"
            );
            sleep_ms(20);
        }
    }

    /// Blocks or unblocks every link between `i` and the others, both ways.
    pub fn isolate(&self, i: usize, blocked: bool) {
        self.links.isolate(self.nodes[i].id, blocked);
    }

    /// Blocks or unblocks only traffic *from* node `i`.
    pub fn mute(&self, i: usize, blocked: bool) {
        self.links.mute(self.nodes[i].id, blocked);
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(child) = self.nodes[i].child.as_ref() {
                // A stopped process cannot die of SIGKILL until continued.
                // SAFETY: signalling our own child.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGCONT);
                }
            }
            self.kill9(i);
        }
    }
}

/// What a client observed: it held `token` on `resource` from `from_ms`
/// (when the grant arrived) until `to_ms` (its `valid_until`, or when it
/// sent the release), on the shared boot-time clock.
#[derive(Debug, Clone)]
pub struct Held {
    pub resource: String,
    pub token: u64,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// Checks S1 (tokens per resource strictly increase in the order the
/// leases were held) and S2 (no two clients believed they held one
/// resource at the same time).
pub fn check_history(history: &[Held]) {
    let mut by_resource: HashMap<&str, Vec<&Held>> = HashMap::new();
    for held in history {
        by_resource.entry(&held.resource).or_default().push(held);
    }
    for (resource, mut leases) in by_resource {
        leases.sort_by_key(|h| (h.from_ms, h.token));
        for pair in leases.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.token > a.token,
                "S1: {resource}: token {} held from {} after token {} held from {}",
                b.token,
                b.from_ms,
                a.token,
                a.from_ms
            );
            assert!(
                b.from_ms >= a.to_ms,
                "S2: {resource}: token {} held from {} while token {} was still held until {}",
                b.token,
                b.from_ms,
                a.token,
                a.to_ms
            );
        }
    }
}

/// A workload: `threads` clients each loop over `resources`, acquiring
/// with `ttl_ms` and releasing half of the leases (the others expire),
/// recording what they held. Runs until `stop`.
pub fn workload(
    endpoints: Vec<String>,
    resources: usize,
    threads: usize,
    ttl_ms: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Held>>>,
) -> Vec<std::thread::JoinHandle<u64>> {
    use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions, TokenOutcome};
    use palisade_host::clock::boottime_ms;
    (0..threads)
        .map(|t| {
            let endpoints = endpoints.clone();
            let stop = stop.clone();
            let history = history.clone();
            std::thread::spawn(move || {
                let mut grants = 0u64;
                let mut client: Option<Client> = None;
                let mut n = t;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let endpoint = &endpoints[n % endpoints.len()];
                    if client.is_none() {
                        let mut options = ConnectOptions::new(endpoint.clone(), "default");
                        options.request_timeout = Duration::from_millis(500);
                        options.connect_timeout = Duration::from_millis(200);
                        client = Client::connect(&options).ok();
                        if client.is_none() {
                            sleep_ms(20);
                            continue;
                        }
                    }
                    let c = client.as_mut().expect("connected");
                    let resource = format!("r{}", n % resources);
                    let mut options = AcquireOptions::new(Duration::from_millis(ttl_ms));
                    options.holder = (t as u64 + 1) << 32 | n as u64;
                    match c.acquire(&resource, options) {
                        Ok(AcquireOutcome::Granted(lease)) => {
                            grants += 1;
                            let from_ms = boottime_ms();
                            let mut held = Held {
                                resource: resource.clone(),
                                token: lease.token,
                                from_ms,
                                to_ms: lease.valid_until_ms,
                            };
                            if n % 2 == 0 {
                                // A holder stops using the resource before
                                // it sends the release: with replicated
                                // leases a release whose answer is lost (the
                                // leader died after its commit) has still
                                // ended the lease.
                                let release_sent = boottime_ms();
                                held.to_ms = held.to_ms.min(release_sent);
                                let _: Result<TokenOutcome, _> = c.release(&resource, lease.token);
                            }
                            history.lock().expect("history").push(held);
                        }
                        Ok(AcquireOutcome::Busy { .. }) => sleep_ms(2),
                        Err(_) => {
                            client = None;
                            sleep_ms(10);
                        }
                    }
                }
                grants
            })
        })
        .collect()
}

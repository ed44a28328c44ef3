//! Starting and stopping the systems under test that are built here:
//! Palisade (one node, or a cluster on loopback) and the echo floor.
//!
//! Every server runs as its own process with its data in a temporary
//! directory, and is stopped (SIGTERM, then SIGKILL) when its guard is
//! dropped. [`ClusterSpec`] is the one place the bench writes Palisade
//! node configs (through `palisade_tuning::Config`, validated before a
//! node starts); [`Cluster`] keeps each node's process so that
//! `failover` can kill and restart single nodes. Nothing here measures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_tuning::{Config, CoreSelection, LogLevel, PeerConfig, Replication};

use super::codec::{Codec, CodecConfig, Op, Outcome};
use super::engine;
use super::palisade::PalisadeCodec;
use palisade_host::clock::monotonic_ns;

/// A running server process; stopped on drop.
pub(crate) struct Server {
    children: Vec<Child>,
    /// A Palisade node or cluster, stopped on drop.
    _cluster: Option<Cluster>,
    /// A peer system (Redis, etcd, ZooKeeper), stopped on drop.
    _peer: Option<super::peers::Peer>,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// What ran, for the report (version, pinning).
    pub(crate) about: String,
    /// The admin (`/metrics`) addresses of a Palisade system's nodes;
    /// empty for every other system.
    pub(crate) admins: Vec<SocketAddr>,
}

impl Server {
    /// Its processes (a cluster's nodes, a peer's main process), for CPU
    /// accounting.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(Child::id).collect();
        if let Some(cluster) = &self._cluster {
            pids.extend(
                cluster
                    .nodes
                    .iter()
                    .filter_map(|n| n.child.as_ref().map(Child::id)),
            );
        }
        if let Some(peer) = &self._peer {
            pids.push(peer.pid());
        }
        pids
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop(child);
        }
    }
}

/// SIGTERM, up to 5 s to exit, then SIGKILL.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let until = monotonic_ns() + 5_000_000_000;
    while monotonic_ns() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The directory of the running `palisade-bench`, where cargo puts the
/// workspace's other binaries.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating palisade-bench")?;
    let dir = exe.parent().context("palisade-bench has no directory")?;
    // Integration tests run from target/<profile>/deps.
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is not built next to {}; build the workspace first (`cargo build --release`)",
        exe.display()
    )
}

/// Finds the `palisade` binary: `explicit`, or next to this one.
pub(crate) fn palisade_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => bail!("--palisade-bin {} does not exist", path.display()),
        None => sibling("palisade"),
    }
}

/// `palisade --version`, or empty.
pub(crate) fn palisade_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Starts the echo floor on `cpu` (`extra`: more `echo-server` flags,
/// e.g. `--runtime uring`). Lines it prints as `about <text>` before its
/// `listening <addr>` line go into the report's description.
pub(crate) fn echo(cpu: usize, extra: &[String]) -> Result<Server> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .args(["echo-server", "--listen", "127.0.0.1:0", "--cpu"])
        .arg(cpu.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} echo-server", exe.display()))?;
    // Stop the child on every error path below.
    let mut server = Server {
        children: Vec::new(),
        _cluster: None,
        _peer: None,
        addr: "127.0.0.1:0".parse()?,
        admins: Vec::new(),
        about: if extra.is_empty() {
            format!("palisade-bench echo-server (glommio, io_uring) on CPU {cpu}")
        } else {
            format!(
                "palisade-bench echo-server {} on CPU {cpu}",
                extra.join(" ")
            )
        },
    };
    let stdout = child.stdout.take().context("echo-server stdout");
    server.children.push(child);
    let mut reader = BufReader::new(stdout?);
    // Bounded: `about` lines come before `listening`.
    for _ in 0..16 {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("reading the echo server's address")?;
        if let Some(about) = line.trim().strip_prefix("about ") {
            server.about = format!("{} ({about})", server.about);
            continue;
        }
        let Some(addr) = line.trim().strip_prefix("listening ") else {
            bail!("echo-server did not start (printed {line:?})");
        };
        server.addr = addr.parse().context("echo-server printed a bad address")?;
        return Ok(server);
    }
    bail!("echo-server printed no `listening` line")
}

/// Where a cluster's nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every node's whole process on this CPU (taskset), its data plane
    /// core too: keeps the servers off the load generator's CPU.
    Pinned(usize),
    /// Node `i` (from 1) runs its one data-plane executor on CPU
    /// `(i - 1) % cpus` (glommio pins it); the rest of the process is not
    /// pinned. For measures where nothing else needs a CPU of its own.
    Spread {
        /// CPUs of the machine.
        cpus: usize,
    },
}

/// How a Palisade node or cluster is configured and placed: the one
/// home of the bench's node configs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterSpec {
    /// 1 (a cluster of one, no peers) or more nodes on loopback.
    pub(crate) nodes: u16,
    /// `leases.replication`.
    pub(crate) replication: Replication,
    /// `cluster.heartbeat_interval`.
    pub(crate) heartbeat: Duration,
    /// `cluster.election_timeout`.
    pub(crate) election_timeout: Duration,
    /// `leases.max_ttl`.
    pub(crate) max_ttl: Duration,
    /// `leases.lock_delay_max`.
    pub(crate) lock_delay_max: Duration,
    /// `leases.table_capacity`.
    pub(crate) table_capacity: u32,
    /// `log.level`.
    pub(crate) log_level: LogLevel,
    /// `dataplane.busy_poll`. Always written to the node's config file,
    /// so a node runs with this value whatever its binary's default is.
    pub(crate) busy_poll: Duration,
    pub(crate) placement: Placement,
}

impl ClusterSpec {
    /// The set-up `compare` measures: `nodes` pinned to `cpu`, leases up to
    /// 120 s, a table for the uncontended key space, the default cluster
    /// timing (heartbeat 50 ms, election 500 ms) and lock delay.
    pub(crate) fn compare(nodes: u16, cpu: usize, replication: Replication) -> ClusterSpec {
        let defaults = Config::builtin_default();
        ClusterSpec {
            nodes,
            replication,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            max_ttl: Duration::from_secs(120),
            lock_delay_max: defaults.leases.lock_delay_max,
            table_capacity: 262_144,
            log_level: LogLevel::Warn,
            busy_poll: defaults.dataplane.busy_poll,
            placement: Placement::Pinned(cpu),
        }
    }

    /// The data-plane core of node `id` (from 1).
    fn core(&self, id: u16) -> u16 {
        let cpu = match self.placement {
            Placement::Pinned(cpu) => cpu,
            Placement::Spread { cpus } => usize::from(id - 1) % cpus.max(1),
        };
        u16::try_from(cpu).expect("CPU ids fit in u16")
    }

    /// The validated config of node `id`. `members` is every node's (id,
    /// peer address, client address); `secret_file` is the cluster secret
    /// (used only with more than one node).
    pub(crate) fn config(
        &self,
        id: u16,
        members: &[(u16, SocketAddr, SocketAddr)],
        data_dir: &Path,
        secret_file: &Path,
    ) -> Result<Config> {
        let me = members
            .iter()
            .find(|m| m.0 == id)
            .with_context(|| format!("node {id} is not a member"))?;
        let mut config = Config::builtin_default();
        config.node.id = id;
        config.node.data_dir = Some(data_dir.to_path_buf());
        config.node.cores = CoreSelection::Cpus(vec![self.core(id)]);
        config.listen.client = me.2;
        config.leases.max_ttl = self.max_ttl;
        config.leases.lock_delay_max = self.lock_delay_max;
        config.leases.table_capacity = self.table_capacity;
        // The tenant quota as large as the table: a sweep step past the
        // maximum leaves tens of thousands of grants unreleased (their
        // releases never went out) for the ttl, and the default quota
        // (32 768) then refused every acquire of the next steps, which
        // measured the quota instead of the server.
        config.limits.tenant_leases_max = self.table_capacity;
        config.leases.replication = self.replication;
        config.admin.listen = None;
        config.log.level = self.log_level;
        config.dataplane.busy_poll = self.busy_poll;
        config.cluster.heartbeat_interval = self.heartbeat;
        config.cluster.election_timeout = self.election_timeout;
        if members.len() > 1 {
            config.cluster.name = "bench".into();
            config.cluster.secret_file = Some(secret_file.to_path_buf());
            config.cluster.peers = members
                .iter()
                .map(|&(id, peer, client)| PeerConfig { id, peer, client })
                .collect();
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("the bench wrote an invalid config for node {id}: {e}"))?;
        Ok(config)
    }

    /// How long a new leader grants nothing under `replication = "none"`
    /// (`palisade_tuning::Config::grace_period` of these settings).
    pub(crate) fn grace_period(&self) -> Duration {
        let mut config = Config::builtin_default();
        config.leases.max_ttl = self.max_ttl;
        config.leases.lock_delay_max = self.lock_delay_max;
        config.cluster.election_timeout = self.election_timeout;
        config.grace_period()
    }
}

/// One node of a [`Cluster`].
pub(crate) struct Node {
    pub(crate) id: u16,
    /// Its client address.
    pub(crate) client: SocketAddr,
    /// Its admin address (`GET /metrics`).
    pub(crate) admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Palisade nodes on loopback, each its own `palisade serve` process with
/// its data directory in one temporary directory. Nodes can be killed and
/// started again from their data; all are stopped on drop.
pub(crate) struct Cluster {
    bin: PathBuf,
    spec: ClusterSpec,
    nodes: Vec<Node>,
    /// Dropped after the processes (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                stop(child);
            }
        }
    }
}

impl Cluster {
    /// Writes every node's config and starts every node. Does not wait
    /// for a leader.
    pub(crate) fn start(bin: &Path, spec: &ClusterSpec) -> Result<Cluster> {
        if spec.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let dir = tempfile::Builder::new()
            .prefix("palisade-bench-")
            .tempdir()
            .context("making a temporary directory")?;
        let mut members = Vec::new();
        // All the cluster's ports in one call, so that no two are the same.
        let ports = super::peers::free_port_list(3 * usize::from(spec.nodes))?;
        let mut admins = Vec::new();
        for (id, ports) in (1..=spec.nodes).zip(ports.chunks(3)) {
            let client: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse()?;
            let peer: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse()?;
            members.push((id, peer, client));
            admins.push(format!("127.0.0.1:{}", ports[2]).parse::<SocketAddr>()?);
        }
        let secret = dir.path().join("cluster.secret");
        if spec.nodes > 1 {
            std::fs::write(&secret, "palisade-bench loopback cluster secret\n")?;
        }
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            spec: spec.clone(),
            nodes: Vec::new(),
            dir,
        };
        for (&(id, _, client), &admin) in members.iter().zip(&admins) {
            let node_dir = cluster.dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut config = spec.config(id, &members, &node_dir.join("data"), &secret)?;
            // For the bench's own scrapes (`nodestats`), between runs.
            config.admin.listen = Some(admin);
            let path = node_dir.join("palisade.toml");
            std::fs::write(
                &path,
                format!("# written by palisade-bench\n{}", config.to_toml()),
            )?;
            cluster.nodes.push(Node {
                id,
                client,
                admin,
                config: path,
                log: node_dir.join("stderr.log"),
                child: None,
            });
        }
        for id in 1..=spec.nodes {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The nodes, by id order.
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Where the configs, data and logs are.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn node_mut(&mut self, id: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Starts node `id` (again) from its config and data directory; its
    /// stderr is appended to its log.
    pub(crate) fn spawn(&mut self, id: u16) -> Result<()> {
        let bin = self.bin.clone();
        let placement = self.spec.placement;
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = match placement {
            // The whole process on the server CPU (its data plane pins
            // itself there too; this keeps the control threads off the
            // generator's CPU).
            Placement::Pinned(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            Placement::Spread { .. } => Command::new(&bin),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} for node {id}", bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it.
    pub(crate) fn kill(&mut self, id: u16) -> Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        child.kill().with_context(|| format!("killing node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        Ok(())
    }

    /// Fails, with the node's log, if a node that should run has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    node.child = None;
                    bail!("palisade node {} exited with {status}:\n{log}", node.id);
                }
            }
        }
        Ok(())
    }

    /// Waits until some node grants a probe lease; returns its address.
    pub(crate) fn wait_granting(&mut self, timeout: Duration) -> Result<SocketAddr> {
        let clients: Vec<SocketAddr> = self.nodes.iter().map(|n| n.client).collect();
        let until = monotonic_ns() + u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        loop {
            self.check_running()?;
            // The node that grants is the leader; followers redirect.
            if let Some(addr) = clients.iter().find(|addr| grants(**addr)) {
                return Ok(*addr);
            }
            if monotonic_ns() > until {
                bail!(
                    "no Palisade node granted within {:.0} s (logs in {})",
                    timeout.as_secs_f64(),
                    self.dir().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts Palisade as `spec` says and waits until one node grants; clients
/// go to that node (the leader).
pub(crate) fn palisade(bin: &Path, spec: &ClusterSpec) -> Result<Server> {
    let mut cluster = Cluster::start(bin, spec)?;
    // A first election that splits puts the leader in a later term, which
    // waits out the grace period before it grants.
    let leader = cluster.wait_granting(spec.grace_period() + Duration::from_secs(60))?;
    let version = palisade_version(bin);
    let cpu = match spec.placement {
        Placement::Pinned(cpu) => format!("pinned to CPU {cpu} (taskset)"),
        Placement::Spread { .. } => "data planes spread over the CPUs".into(),
    };
    let about = if spec.nodes > 1 {
        format!(
            "{version}, {} nodes on loopback, all {cpu}, leases.replication = \"{}\", clients on the leader",
            spec.nodes,
            spec.replication.as_str()
        )
    } else {
        format!(
            "{version}, one node {cpu}, leases.replication = \"{}\"",
            spec.replication.as_str()
        )
    };
    let admins = cluster.nodes().iter().map(|n| n.admin).collect();
    Ok(Server {
        children: Vec::new(),
        _cluster: Some(cluster),
        _peer: None,
        addr: leader,
        about,
        admins,
    })
}

/// Whether the node at `addr` grants a probe lease now (and releases it).
fn grants(addr: SocketAddr) -> bool {
    let config = CodecConfig {
        ttl_ms: 1000,
        tenant: "default".into(),
        echo_size: 64,
        secret: None,
    };
    let make = || -> Result<Box<dyn Codec>> { Ok(Box::new(PalisadeCodec::new(&config))) };
    let probe = [Op::Acquire {
        resource: u64::MAX >> 1,
        holder: 1,
    }];
    match engine::exchange_once(addr, &make, &probe) {
        Ok(outcomes) => match outcomes.first() {
            Some(Outcome::Granted(held)) => {
                let release = [Op::Release {
                    resource: u64::MAX >> 1,
                    held: *held,
                }];
                engine::exchange_once(addr, &make, &release).is_ok()
            }
            _ => false,
        },
        Err(_) => false,
    }
}

/// Starts a peer system from Debian's packages (see `peers`).
pub(crate) fn peer(kind: super::peers::PeerKind, cpu: usize) -> Result<Server> {
    let package = match kind {
        super::peers::PeerKind::Redis => "redis-server",
        super::peers::PeerKind::Etcd => "etcd-server",
        super::peers::PeerKind::ZooKeeper => "zookeeper",
    };
    let peer = super::peers::Peer::start(kind, cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = command_version("dpkg-query", &["-W", "-f", "${Version}", package]);
    let how = match kind {
        super::peers::PeerKind::Redis => "no persistence (`--save \"\" --appendonly no`)",
        super::peers::PeerKind::Etcd => {
            "single member, default fsync, data in a temporary directory"
        }
        super::peers::PeerKind::ZooKeeper => {
            "standalone, default fsync, maxClientCnxns=0, data in a temporary directory"
        }
    };
    Ok(Server {
        children: Vec::new(),
        addr: peer.addr(),
        _peer: Some(peer),
        _cluster: None,
        about: format!("Debian {package} {version}, {how}, pinned to CPU {cpu} (taskset)"),
        admins: Vec::new(),
    })
}

fn command_version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "(version unknown)".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<(u16, SocketAddr, SocketAddr)> {
        (1..=3)
            .map(|id| {
                (
                    id,
                    format!("127.0.0.1:{}", 9100 + id).parse().unwrap(),
                    format!("127.0.0.1:{}", 9200 + id).parse().unwrap(),
                )
            })
            .collect()
    }

    /// What the bench writes is what a node reads back.
    fn written(spec: &ClusterSpec, id: u16, members: &[(u16, SocketAddr, SocketAddr)]) -> Config {
        let config = spec
            .config(
                id,
                members,
                Path::new("/data/n"),
                Path::new("/dir/cluster.secret"),
            )
            .unwrap();
        Config::from_toml_str(&config.to_toml(), Some(Path::new("/dir"))).unwrap()
    }

    #[test]
    fn failover_configs_round_trip_through_the_tuning_crate() {
        let spec = ClusterSpec {
            nodes: 3,
            replication: Replication::None,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            max_ttl: Duration::from_secs(30),
            lock_delay_max: Duration::from_secs(10),
            table_capacity: 65_536,
            log_level: LogLevel::Info,
            busy_poll: Duration::from_micros(7),
            placement: Placement::Spread { cpus: 2 },
        };
        let members = members();
        let node2 = written(&spec, 2, &members);
        assert_eq!(node2.node.id, 2);
        assert_eq!(node2.leases.replication, Replication::None);
        assert_eq!(node2.cluster.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(node2.cluster.election_timeout, Duration::from_millis(500));
        assert_eq!(node2.leases.max_ttl, Duration::from_secs(30));
        assert_eq!(node2.leases.lock_delay_max, Duration::from_secs(10));
        assert_eq!(node2.node.cores, CoreSelection::Cpus(vec![1]));
        assert_eq!(node2.listen.client, members[1].2);
        assert_eq!(node2.cluster.peers.len(), 3);
        assert_eq!(node2.peer_listen(), Some(members[1].1));
        assert_eq!(
            node2.secret_file_resolved(),
            Some(PathBuf::from("/dir/cluster.secret"))
        );
        assert_eq!(node2.admin.listen, None);
        assert_eq!(node2.dataplane.busy_poll, Duration::from_micros(7));
        // Node 3 wraps around to CPU 0.
        assert_eq!(
            written(&spec, 3, &members).node.cores,
            CoreSelection::Cpus(vec![0])
        );
        // (30 s + 10 s + 0.5 s) x 1.01.
        assert_eq!(spec.grace_period(), Duration::from_millis(40_905));
        // A timing the server would refuse is refused before any start.
        let bad = ClusterSpec {
            election_timeout: Duration::from_millis(100),
            ..spec
        };
        let e = bad
            .config(1, &members, Path::new("/d"), Path::new("/s"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("election_timeout"), "{e:#}");
    }

    #[test]
    fn compare_configs_pin_every_node_and_name_the_replication() {
        let members = members();
        for replication in [Replication::Quorum, Replication::None] {
            let spec = ClusterSpec::compare(3, 0, replication);
            for id in 1..=3 {
                let config = written(&spec, id, &members);
                assert_eq!(config.leases.replication, replication);
                assert_eq!(config.node.cores, CoreSelection::Cpus(vec![0]));
                assert_eq!(config.leases.max_ttl, Duration::from_secs(120));
                assert_eq!(config.leases.table_capacity, 262_144);
                assert_eq!(config.limits.tenant_leases_max, 262_144);
            }
        }
        // One node: a cluster of one, no peers, no secret.
        let single = ClusterSpec::compare(1, 1, Replication::Quorum);
        let config = written(&single, 1, &members[..1]);
        assert!(config.cluster.peers.is_empty());
        assert_eq!(config.cluster.secret_file, None);
        assert_eq!(config.node.cores, CoreSelection::Cpus(vec![1]));
    }
}

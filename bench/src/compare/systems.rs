//! Starting and stopping the systems under test that are built here:
//! Palisade (one node, or three on loopback) and the echo floor.
//!
//! Every server runs as its own process, pinned to the server CPU, with
//! its data in a temporary directory, and is stopped (SIGTERM, then
//! SIGKILL) when its guard is dropped. Nothing here measures.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::codec::{Codec, CodecConfig, Op, Outcome};
use super::engine;
use super::palisade::PalisadeCodec;
use crate::load::now_ns;

/// A running server process; stopped on drop.
pub(crate) struct Server {
    children: Vec<Child>,
    /// A peer system (Redis, etcd, ZooKeeper), stopped on drop.
    _peer: Option<super::peers::Peer>,
    /// Holds the data directories until the processes are gone.
    _dir: Option<tempfile::TempDir>,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// What ran, for the report (version, pinning).
    pub(crate) about: String,
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
    let until = now_ns() + 5_000_000_000;
    while now_ns() < until {
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

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the echo floor on `cpu`.
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
        _peer: None,
        _dir: None,
        addr: "127.0.0.1:0".parse()?,
        about: format!("palisade-bench echo-server (glommio, io_uring) on CPU {cpu}"),
    };
    let stdout = child.stdout.take().context("echo-server stdout");
    server.children.push(child);
    let mut line = String::new();
    BufReader::new(stdout?)
        .read_line(&mut line)
        .context("reading the echo server's address")?;
    let Some(addr) = line.trim().strip_prefix("listening ") else {
        bail!("echo-server did not start (printed {line:?})");
    };
    server.addr = addr.parse().context("echo-server printed a bad address")?;
    Ok(server)
}

fn node_config(
    id: u16,
    cpu: usize,
    client: SocketAddr,
    data: &Path,
    cluster: &[(u16, SocketAddr, SocketAddr)],
) -> String {
    let mut text = format!(
        "# written by palisade-bench compare\n\
         [node]\nid = {id}\ndata_dir = \"{}\"\ncores = [{cpu}]\n\n\
         [listen]\nclient = \"{client}\"\n\n\
         [leases]\nmax_ttl = \"120s\"\ntable_capacity = 262144\n\n\
         [admin]\nlisten = \"off\"\n\n\
         [log]\nlevel = \"warn\"\n",
        data.display()
    );
    if !cluster.is_empty() {
        text.push_str(
            "\n[cluster]\nname = \"bench\"\nheartbeat_interval = \"50ms\"\n\
             election_timeout = \"500ms\"\nsecret_file = \"../cluster.secret\"\n",
        );
        for (peer_id, peer, client) in cluster {
            text.push_str(&format!(
                "\n[[cluster.peers]]\nid = {peer_id}\npeer = \"{peer}\"\nclient = \"{client}\"\n"
            ));
        }
    }
    text
}

/// Starts Palisade: one node, or `nodes` on loopback, each on `cpu`, and
/// waits until one of them grants.
pub(crate) fn palisade(bin: &Path, nodes: u16, cpu: usize) -> Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-")
        .tempdir()
        .context("making a temporary directory")?;
    let mut members = Vec::new();
    for id in 1..=nodes {
        let client: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let peer: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        members.push((id, peer, client));
    }
    if nodes > 1 {
        std::fs::write(
            dir.path().join("cluster.secret"),
            "palisade-bench loopback cluster secret\n",
        )?;
    }
    let mut server = Server {
        children: Vec::new(),
        _peer: None,
        _dir: None,
        addr: members[0].2,
        about: String::new(),
    };
    for &(id, _, client) in &members {
        let node_dir = dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let cluster = if nodes > 1 { &members[..] } else { &[][..] };
        let config = node_dir.join("palisade.toml");
        std::fs::write(
            &config,
            node_config(id, cpu, client, &node_dir.join("data"), cluster),
        )?;
        let log = std::fs::File::create(node_dir.join("stderr.log"))?;
        // The whole process on the server CPU (its data plane pins
        // itself there too; this keeps the control threads off the
        // generator's CPU).
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting taskset -c {cpu} {}", bin.display()))?;
        server.children.push(child);
    }
    // The node that grants is the leader; followers redirect.
    let clients: Vec<SocketAddr> = members.iter().map(|m| m.2).collect();
    let until = now_ns() + 60_000_000_000;
    let leader = loop {
        for (i, child) in server.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join(format!("node{}/stderr.log", i + 1)))
                        .unwrap_or_default();
                bail!("palisade node {} exited with {status}:\n{log}", i + 1);
            }
        }
        if let Some(addr) = clients.iter().find(|addr| grants(**addr)) {
            break *addr;
        }
        if now_ns() > until {
            bail!(
                "no Palisade node granted within 60 s (logs in {})",
                dir.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    server.addr = leader;
    server.about = if nodes > 1 {
        format!("{version}, {nodes} nodes on loopback, all pinned to CPU {cpu} (taskset), clients on the leader")
    } else {
        format!("{version}, one node pinned to CPU {cpu} (taskset)")
    };
    server._dir = Some(dir);
    Ok(server)
}

/// Whether the node at `addr` grants a probe lease now (and releases it).
fn grants(addr: SocketAddr) -> bool {
    let config = CodecConfig {
        ttl_ms: 1000,
        tenant: "default".into(),
        echo_size: 64,
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
        _dir: None,
        about: format!("Debian {package} {version}, {how}, pinned to CPU {cpu} (taskset)"),
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

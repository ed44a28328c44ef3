//! Starting and stopping the peer systems `compare` measures: Redis, etcd
//! and ZooKeeper, each a real server process on loopback, pinned to one
//! CPU, with its data in a temporary directory.
//!
//! [`Peer::start`] returns once the server accepts connections and answers
//! a real request (Redis `PING`, etcd `GET /health`, a ZooKeeper session
//! handshake), within a bounded wait whose error carries the tail of the
//! server's log. Dropping the [`Peer`] sends SIGTERM, then SIGKILL if it
//! has not exited after a grace period, and removes the directory. A
//! missing binary is [`PeerError::Missing`], which names the Debian package
//! and `bench/install-peers.sh`, so the caller can report it and go on.
//!
//! Configuration choices (what users of each system get by default, except
//! where a benchmark on loopback needs otherwise):
//! - Redis: `--save "" --appendonly no`: no persistence, as a lock server
//!   is usually run (a lock in Redis is a ttl'd key; fsyncing it is rare).
//! - etcd: one member, default fsync of its WAL and backend (that is what
//!   etcd users get: every write is durable before it is acknowledged).
//! - ZooKeeper: standalone, default tickTime 2000 and forceSync (the
//!   transaction log is fsynced before a write is acknowledged),
//!   `maxClientCnxns=0` (no per-IP cap: every benchmark connection comes
//!   from 127.0.0.1, and the default cap is 60), admin server off.
//!
//! This module owns processes and their directories; it never encodes a
//! benchmark operation (the codecs do).

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::codec::{Codec, CodecConfig};
use super::zk::ZkCodec;

/// Debian's ZooKeeper jar; its manifest's Class-Path names its dependencies.
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// An SLF4J binding that logs to stderr, from libslf4j-java (a ZooKeeper
/// dependency); without one ZooKeeper logs nothing.
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// Grace period between SIGTERM and SIGKILL on drop.
const STOP_GRACE_MS: u64 = 5_000;
/// Bytes of a server's log quoted in a start error.
const LOG_TAIL_BYTES: u64 = 3_000;

/// The systems this module can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerKind {
    Redis,
    Etcd,
    ZooKeeper,
}

impl PeerKind {
    /// How long a start may take before it is an error. The JVM and etcd's
    /// first election are slow on a loaded two-core machine.
    fn start_timeout_ms(self) -> u64 {
        match self {
            PeerKind::Redis => 15_000,
            PeerKind::Etcd => 30_000,
            PeerKind::ZooKeeper => 60_000,
        }
    }
}

/// Why a peer could not be started.
#[derive(Debug)]
pub(crate) enum PeerError {
    /// A binary the peer needs is not installed. Not a failure of the run:
    /// report it and measure the other systems.
    Missing {
        system: PeerKind,
        binary: String,
        package: &'static str,
    },
    /// The peer is installed but did not start or answer in time.
    Failed(anyhow::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Missing {
                system,
                binary,
                package,
            } => write!(
                f,
                "{system:?} cannot start: {binary} not found (Debian package {package}); \
                 run bench/install-peers.sh as root"
            ),
            PeerError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<anyhow::Error> for PeerError {
    fn from(e: anyhow::Error) -> Self {
        PeerError::Failed(e)
    }
}

impl From<std::io::Error> for PeerError {
    fn from(e: std::io::Error) -> Self {
        PeerError::Failed(e.into())
    }
}

/// A running peer server; dropping it stops the server and removes its data.
pub(crate) struct Peer {
    kind: PeerKind,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    // Dropped after `child` is reaped (see Drop).
    dir: tempfile::TempDir,
}

/// Finds `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn require(system: PeerKind, binary: &str, package: &'static str) -> Result<PathBuf, PeerError> {
    let found = if binary.starts_with('/') {
        Path::new(binary).is_file().then(|| PathBuf::from(binary))
    } else {
        which(binary)
    };
    found.ok_or_else(|| PeerError::Missing {
        system,
        binary: binary.to_string(),
        package,
    })
}

/// Lowest port of the kernel's ephemeral range when it cannot be read.
const EPHEMERAL_LOW_DEFAULT: u16 = 32_768;
/// Lowest port handed out: above the well-known and most registered ones.
const PORT_LOW: u16 = 10_000;

/// The first port of the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), or the usual one if it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(EPHEMERAL_LOW_DEFAULT)
}

/// `N` loopback ports free right now (see [`free_port_list`]).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let list = free_port_list(N)?;
    let mut ports = [0; N];
    ports.copy_from_slice(&list);
    Ok(ports)
}

/// `count` loopback ports free right now (held together so they differ),
/// below the kernel's ephemeral range. A port found by binding port 0 is
/// an ephemeral one, which an outgoing connection (another node's, a
/// test's running beside) may take before the server handed it binds it:
/// "Address already in use" at its start (the failover test failed so in
/// CI once). Outgoing connections never take a port below the range.
/// Falls back to port 0 when the range leaves no room below it.
/// (`palisade_testkit::free_addr` does the same for the tests; the bench
/// ships, so it cannot depend on the test kit.)
pub(crate) fn free_port_list(count: usize) -> Result<Vec<u16>> {
    let low = ephemeral_low();
    let mut listeners = Vec::with_capacity(count);
    if low > PORT_LOW + 1_000 {
        // Start somewhere different in every process and call, so that
        // runs side by side seldom try the same ports.
        let span = u64::from(low - PORT_LOW);
        let seed = palisade_host::clock::monotonic_ns() ^ (u64::from(std::process::id()) << 20);
        let start = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        for step in 0..span {
            if listeners.len() == count {
                break;
            }
            let port = PORT_LOW + u16::try_from((start + step) % span).expect("below the range");
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(listener);
            }
        }
    }
    while listeners.len() < count {
        listeners.push(
            TcpListener::bind("127.0.0.1:0")
                .context("binding a loopback port to find a free one")?,
        );
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn now_ms() -> u64 {
    palisade_host::clock::monotonic_ns() / 1_000_000
}

/// The last `LOG_TAIL_BYTES` of `path`, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if len > LOG_TAIL_BYTES {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(len - LOG_TAIL_BYTES));
    }
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

impl Peer {
    /// Starts `kind` on loopback pinned to CPU `cpu` and waits until it
    /// answers a real request.
    pub(crate) fn start(kind: PeerKind, cpu: usize) -> Result<Peer, PeerError> {
        // The server's own binaries first: their absence is the common case.
        match kind {
            PeerKind::Redis => require(kind, "redis-server", "redis-server")?,
            PeerKind::Etcd => require(kind, "etcd", "etcd-server")?,
            PeerKind::ZooKeeper => {
                require(kind, "java", "default-jre-headless")?;
                require(kind, ZK_JAR, "zookeeper")?
            }
        };
        let taskset = require(kind, "taskset", "util-linux")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("palisade-bench-{kind:?}-").to_lowercase())
            .tempdir()
            .context("creating the peer's temporary directory")?;
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(taskset);
        cmd.arg("-c").arg(cpu.to_string());
        let addr = match kind {
            PeerKind::Redis => {
                let bin = require(kind, "redis-server", "redis-server")?;
                let [port] = free_ports::<1>()?;
                cmd.arg(bin)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--logfile",
                        "",
                    ])
                    .arg("--dir")
                    .arg(dir.path());
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            PeerKind::Etcd => {
                let bin = require(kind, "etcd", "etcd-server")?;
                let [client, peer] = free_ports::<2>()?;
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                cmd.arg(bin)
                    .args(["--name", "bench"])
                    .arg("--data-dir")
                    .arg(dir.path().join("data"))
                    .args([
                        "--listen-client-urls",
                        &client_url,
                        "--advertise-client-urls",
                        &client_url,
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer_url,
                        "--initial-advertise-peer-urls",
                        &peer_url,
                    ])
                    .args(["--initial-cluster", &format!("bench={peer_url}")])
                    .args([
                        "--initial-cluster-state",
                        "new",
                        "--logger",
                        "zap",
                        "--log-outputs",
                        "stderr",
                    ]);
                SocketAddr::from(([127, 0, 0, 1], client))
            }
            PeerKind::ZooKeeper => {
                let java = require(kind, "java", "default-jre-headless")?;
                require(kind, ZK_JAR, "zookeeper")?;
                let [port] = free_ports::<1>()?;
                let data = dir.path().join("data");
                std::fs::create_dir(&data).context("creating ZooKeeper's dataDir")?;
                let cfg = dir.path().join("zoo.cfg");
                std::fs::write(
                    &cfg,
                    format!(
                        "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                         maxClientCnxns=0\nadmin.enableServer=false\n",
                        data.display()
                    ),
                )
                .context("writing zoo.cfg")?;
                let mut classpath = ZK_JAR.to_string();
                if Path::new(SLF4J_SIMPLE_JAR).is_file() {
                    classpath.push(':');
                    classpath.push_str(SLF4J_SIMPLE_JAR);
                }
                cmd.arg(java)
                    .args(["-cp", &classpath, "-Dzookeeper.admin.enableServer=false"])
                    .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                    .arg(&cfg);
                SocketAddr::from(([127, 0, 0, 1], port))
            }
        };
        let out = File::create(&log).context("creating the peer's log file")?;
        let err = out.try_clone()?;
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {kind:?}: {cmd:?}"))?;
        let mut peer = Peer {
            kind,
            child,
            addr,
            log,
            dir,
        };
        peer.wait_ready().map_err(|e| {
            PeerError::Failed(e.context(format!(
                "{kind:?} did not become ready on {addr}; its log ends:\n{}",
                log_tail(&peer.log)
            )))
        })?;
        Ok(peer)
    }

    /// Polls until the server answers a real request, the process exits,
    /// or the start timeout passes.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = now_ms() + self.kind.start_timeout_ms();
        let mut last = anyhow!("never tried");
        while now_ms() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{:?} exited during start-up with {status}", self.kind);
            }
            match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.context(format!(
            "no answer within {} ms",
            self.kind.start_timeout_ms()
        )))
    }

    /// One real request to the server.
    fn probe(&self) -> Result<()> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        match self.kind {
            PeerKind::Redis => {
                s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
                let got = read_some(&mut s, 7)?;
                if got != b"+PONG\r\n" {
                    bail!(
                        "redis answered PING with {:?}",
                        String::from_utf8_lossy(&got)
                    );
                }
            }
            PeerKind::Etcd => {
                // etcd serves HTTP/1.1 and gRPC on the client port; /health
                // is true once the member has a leader and can serve.
                write!(
                    s,
                    "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                )?;
                let mut got = Vec::new();
                s.read_to_end(&mut got)?;
                let text = String::from_utf8_lossy(&got);
                if !text.contains("\"health\":\"true\"") {
                    bail!("etcd /health answered {text:?}");
                }
            }
            PeerKind::ZooKeeper => {
                let cfg = CodecConfig {
                    ttl_ms: 4_000,
                    tenant: String::new(),
                    echo_size: 0,
                    secret: None,
                };
                zk_handshake_with(&mut s, ZkCodec::new(&cfg)?)?;
            }
        }
        Ok(())
    }

    /// Where the server listens for clients.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id (taskset execs the server in place).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's temporary directory (data and log).
    #[cfg_attr(not(test), allow(dead_code))] // used by the live tests
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Reads until `want` bytes arrived or the peer closed.
fn read_some(s: &mut TcpStream, want: usize) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while got.len() < want {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(got)
}

impl Drop for Peer {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        if let Ok(None) = self.child.try_wait() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = now_ms() + STOP_GRACE_MS;
            while now_ms() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!(
                    "{:?} (pid {}) ignored SIGTERM for {STOP_GRACE_MS} ms; killing it",
                    self.kind,
                    self.pid()
                );
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        // `dir` removes itself when dropped, after this.
    }
}

/// A session handshake through the codec, for the ZooKeeper probe.
fn zk_handshake_with<C: Codec>(s: &mut TcpStream, mut codec: C) -> Result<C> {
    let mut out = Vec::new();
    codec.start(&mut out)?;
    s.write_all(&out)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !codec.ready() {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("zookeeper closed the connection during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        let used = codec.decode(&buf, &mut Vec::new(), &mut out)?;
        buf.drain(..used);
    }
    Ok(codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_its_package_and_the_install_script() {
        let err = require(PeerKind::Etcd, "palisade-no-such-binary", "etcd-server").unwrap_err();
        assert!(matches!(err, PeerError::Missing { .. }));
        let text = err.to_string();
        assert!(text.contains("palisade-no-such-binary"), "{text}");
        assert!(text.contains("Debian package etcd-server"), "{text}");
        assert!(text.contains("bench/install-peers.sh"), "{text}");
        let err = require(
            PeerKind::ZooKeeper,
            "/nonexistent/zookeeper.jar",
            "zookeeper",
        )
        .unwrap_err();
        assert!(matches!(err, PeerError::Missing { .. }), "{err}");
        assert!(require(PeerKind::Redis, "sh", "dash").is_ok());
    }

    #[test]
    fn free_ports_differ_and_log_tail_is_bounded() {
        let [a, b] = free_ports::<2>().unwrap();
        assert_ne!(a, b);
        // Below the ephemeral range, where no outgoing connection takes
        // them (this machine's range starts at 32768 or so).
        let low = ephemeral_low();
        if low > PORT_LOW + 1_000 {
            assert!(
                (PORT_LOW..low).contains(&a) && (PORT_LOW..low).contains(&b),
                "{a} {b}"
            );
        }
        // Free for the caller once returned.
        let _held = TcpListener::bind(("127.0.0.1", a)).unwrap();
        // Many at once differ too (a cluster's ports come in one call).
        let many = free_port_list(12).unwrap();
        let distinct: std::collections::BTreeSet<u16> = many.iter().copied().collect();
        assert_eq!(distinct.len(), 12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "x".repeat(10_000) + "the end").unwrap();
        let tail = log_tail(&path);
        assert_eq!(tail.len(), LOG_TAIL_BYTES as usize);
        assert!(tail.ends_with("the end"));
        assert!(log_tail(&dir.path().join("none")).contains("no log"));
    }
}

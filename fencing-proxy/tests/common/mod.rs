//! Real processes for the proxy's integration tests: a single-node
//! `palisade serve` (and a cluster of them, [`cluster`]), the proxy itself,
//! `qemu-io` clients (interactive, so a test can pause one mid-session),
//! `qemu-nbd` upstreams, and a raw NBD client for misbehaving on purpose.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

// Not every test binary uses all of them (as `dead_code` above).
#[allow(unused_imports)]
pub use palisade_testkit::{free_port, have, qemu_io, read_log, sleep_ms};
use palisade_testkit::{sibling_bin, wait_for_nbd_greeting};

pub const PROXY: &str = env!("CARGO_BIN_EXE_palisade-fencing-proxy");

/// Milliseconds on the monotonic clock (tests may not use `Instant`).
pub fn now_ms() -> u64 {
    palisade_host::clock::boottime_ms()
}

/// The `palisade` binary of this build, built first if this package's
/// tests run alone.
pub fn palisade_bin() -> PathBuf {
    sibling_bin(PROXY, "palisade-control", "palisade")
}

/// A single-node `palisade serve`, killed on drop.
pub struct Lease {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    reaped: bool,
}

impl Lease {
    pub fn start(work: &Path) -> Lease {
        let config = work.join("palisade.toml");
        std::fs::write(&config, "").expect("config");
        let ready = work.join("lease-ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = work.join("lease.log");
        let child = Command::new(palisade_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(work.join("lease-data"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn palisade serve");
        let mut lease = Lease {
            child,
            endpoint: String::new(),
            log,
            reaped: false,
        };
        for _ in 0..1500 {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let value: Value = serde_json::from_str(&text).expect("ready JSON");
                lease.endpoint = value["endpoint"].as_str().expect("endpoint").into();
                return lease;
            }
            if let Ok(Some(status)) = lease.child.try_wait() {
                panic!("palisade exited with {status}: {}", read_log(&lease.log));
            }
            sleep_ms(20);
        }
        panic!("palisade did not start: {}", read_log(&lease.log));
    }

    /// `palisade acquire RESOURCE --ttl TTL --json`: the token.
    pub fn acquire(&self, resource: &str, ttl: &str) -> u64 {
        let output = Command::new(palisade_bin())
            .args(["acquire", resource, "--ttl", ttl, "--json", "--endpoint"])
            .arg(&self.endpoint)
            .output()
            .expect("run palisade acquire");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "acquire failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: Value = serde_json::from_str(stdout.trim()).expect("JSON");
        value["token"].as_u64().expect("token")
    }

    pub fn stop(&mut self) {
        if self.reaped {
            return;
        }
        // A stopped process must be continued before it can be reaped.
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Sends `signal` (SIGSTOP: a hung service that still accepts TCP).
    pub fn signal(&self, signal: i32) {
        if self.reaped {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child process by pid.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The proxy's config: one file-backed or upstream-backed export `disk0`.
pub struct ProxySetup {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub lease_endpoint: String,
    /// `file = ...`, `nbd = ...` or `nbd_socket = ...` lines of the export.
    pub backend: String,
    /// More lines for `[proxy]` (limits, timeouts).
    pub proxy_extra: String,
    /// More lines for `[lease_service]`; `timeout = "1s"` unless they set it.
    pub lease_extra: String,
}

impl ProxySetup {
    pub fn file(dir: &Path, lease_endpoint: &str) -> ProxySetup {
        ProxySetup {
            dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            lease_endpoint: lease_endpoint.into(),
            backend: "file = \"disk0.img\"\nsize = \"64MiB\"\n".into(),
            proxy_extra: String::new(),
            lease_extra: String::new(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("proxy.toml")
    }

    pub fn write(&self) {
        let timeout = if self.lease_extra.contains("timeout = ") {
            ""
        } else {
            "timeout = \"1s\"\n"
        };
        let text = format!(
            "[proxy]\nlisten = \"{}\"\nmetrics = \"{}\"\nstate_dir = \"state\"\n{}\n[lease_service]\nendpoint = \"{}\"\n{timeout}{}\n[[exports]]\nname = \"disk0\"\ntenant = \"default\"\nresource = \"disk0\"\n{}",
            self.listen,
            self.metrics,
            self.proxy_extra,
            self.lease_endpoint,
            self.lease_extra,
            self.backend
        );
        std::fs::write(self.config_path(), text).expect("proxy config");
    }

    /// `nbd://127.0.0.1:PORT/disk0` plus `@TOKEN` when given.
    pub fn url(&self, token: Option<u64>) -> String {
        match token {
            Some(token) => format!("nbd://{}/disk0@{token}", self.listen),
            None => format!("nbd://{}/disk0", self.listen),
        }
    }
}

/// A running proxy, killed on drop.
pub struct Proxy {
    child: Child,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(setup: &ProxySetup, env: &[(&str, String)]) -> Proxy {
        Proxy::start_limited(setup, env, None)
    }

    /// [`Proxy::start`] with `RLIMIT_NOFILE` set to `(soft, hard)` in the
    /// proxy's process.
    pub fn start_limited(
        setup: &ProxySetup,
        env: &[(&str, String)],
        nofile: Option<(u64, u64)>,
    ) -> Proxy {
        setup.write();
        let log = setup.dir.join("proxy.log");
        let mut command = Command::new(PROXY);
        command
            .arg("--config")
            .arg(setup.config_path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log"),
            );
        for (k, v) in env {
            command.env(k, v);
        }
        // Test hooks arm only with --failpoints, as in the node.
        if env
            .iter()
            .any(|(k, _)| k.starts_with("PALISADE_PROXY_TEST_"))
        {
            command.arg("--failpoints");
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit runs, which is
            // async-signal-safe; nothing allocates.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut proxy = Proxy {
            child: command.spawn().expect("spawn proxy"),
            log,
        };
        // Ready once it sends the NBD greeting.
        let log = proxy.log.clone();
        wait_for_nbd_greeting(setup.listen, &mut proxy.child, || read_log(&log));
        proxy
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` of the proxy, KiB.
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process by pid.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({pid}, SIGTERM)");
        self.child.wait().expect("wait")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /metrics` from the proxy.
pub fn metrics(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

/// The value of `name{export="disk0"}`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = metrics(addr);
    let prefix = format!("{name}{{export=\"disk0\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .expect("number")
}

/// `VmRSS` of process `pid` in KiB, from /proc/PID/status.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to
/// the hard limit, with the daemons' own [`palisade_host::rlimit`]);
/// returns the soft limit now.
pub fn raise_own_nofile(want: u64) -> u64 {
    use palisade_host::rlimit::{raise_nofile, Raise};
    match raise_nofile(want) {
        Raise::Enough { soft } => soft.unwrap_or(u64::MAX),
        Raise::Raised { to, .. } => to,
        Raise::Short { soft, .. } => soft,
    }
}

/// A raw NBD client: connects and reads the 18-byte greeting.
pub fn nbd_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting)?;
    if &greeting[..8] != b"NBDMAGIC" {
        return Err(std::io::Error::other("not an NBD greeting"));
    }
    Ok(stream)
}

/// A raw NBD client through `NBD_OPT_GO` for `name`: `Ok` once the server
/// acknowledged, ready for transmission; `Err` if it refused or closed.
pub fn nbd_go(addr: SocketAddr, name: &str) -> std::io::Result<TcpStream> {
    let mut stream = nbd_connect(addr)?;
    // Client flags: fixed newstyle, no zeroes.
    stream.write_all(&3u32.to_be_bytes())?;
    let mut data = Vec::new();
    data.extend_from_slice(&u32::try_from(name.len()).expect("short").to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    let mut option = Vec::new();
    option.extend_from_slice(b"IHAVEOPT");
    option.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    option.extend_from_slice(&u32::try_from(data.len()).expect("short").to_be_bytes());
    option.extend_from_slice(&data);
    stream.write_all(&option)?;
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header)?;
        let reply = u32::from_be_bytes(header[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(header[16..20].try_into().expect("4"));
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body)?;
        if reply == 1 {
            return Ok(stream); // NBD_REP_ACK
        }
        if reply & 0x8000_0000 != 0 {
            return Err(std::io::Error::other(format!(
                "refused ({reply:#x}): {}",
                String::from_utf8_lossy(&body[body.len().min(4)..])
            )));
        }
    }
}

/// Waits up to `ms` for the server to close `stream` (EOF or reset);
/// returns whether it did.
pub fn closed_within(stream: &mut TcpStream, ms: u64) -> bool {
    let deadline = now_ms() + ms;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_sub(now_ms());
        if left == 0 {
            return false;
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(left)))
            .expect("timeout");
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

/// The value of a process-wide metric (no labels).
pub fn process_metric(addr: SocketAddr, name: &str) -> u64 {
    let text = metrics(addr);
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .expect("number")
}

/// Waits up to `ms` until `name{export="disk0"}` equals `value`.
pub fn wait_metric(addr: SocketAddr, name: &str, value: u64, ms: u64) {
    let deadline = now_ms() + ms;
    loop {
        let now = metric(addr, name);
        if now == value {
            return;
        }
        assert!(
            now_ms() < deadline,
            "{name} is {now}, not {value}, after {ms} ms"
        );
        sleep_ms(20);
    }
}

/// An interactive `qemu-io` session on one NBD connection.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
}

impl Session {
    pub fn open(url: &str) -> Session {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        let stdin = child.stdin.take().expect("stdin");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().expect("output");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Session {
            child,
            stdin,
            output,
        }
    }

    /// Sends one command line; does not wait.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("qemu-io stdin");
        self.stdin.flush().expect("flush");
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    /// Waits up to `ms` until the output contains `needle` `count` times.
    pub fn wait_for(&self, needle: &str, count: usize, ms: u64) -> String {
        let deadline = now_ms() + ms;
        loop {
            let out = self.output();
            if out.matches(needle).count() >= count {
                return out;
            }
            assert!(
                now_ms() < deadline,
                "qemu-io never printed {needle:?} x{count}: {out}"
            );
            sleep_ms(20);
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process by pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Quits and returns everything it printed.
    pub fn quit(mut self) -> String {
        self.send("quit");
        let deadline = now_ms() + 10_000;
        while matches!(self.child.try_wait(), Ok(None)) && now_ms() < deadline {
            sleep_ms(20);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        sleep_ms(50);
        self.output()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `qemu-nbd` serving `image` as export `name` on a free port, or on a
/// Unix socket.
pub struct QemuNbd {
    child: Child,
    pub addr: SocketAddr,
    /// The Unix socket it listens on instead of `addr`.
    pub socket: Option<PathBuf>,
    name: String,
}

impl QemuNbd {
    pub fn start(image: &Path, name: &str) -> QemuNbd {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = addr.port().to_string();
        QemuNbd::spawn(image, name, &["-b", "127.0.0.1", "-p", &port], addr, None)
    }

    /// Listening on the Unix socket `socket` (`qemu-nbd -k`) only.
    pub fn start_unix(image: &Path, name: &str, socket: &Path) -> QemuNbd {
        let unused = SocketAddr::from(([127, 0, 0, 1], 0));
        let path = socket.to_str().expect("utf-8 socket path");
        QemuNbd::spawn(image, name, &["-k", path], unused, Some(socket))
    }

    fn spawn(
        image: &Path,
        name: &str,
        listen: &[&str],
        addr: SocketAddr,
        socket: Option<&Path>,
    ) -> QemuNbd {
        let mut upstream = QemuNbd {
            child: Command::new("qemu-nbd")
                .args(["-f", "raw", "--persistent", "--shared=16"])
                .args(listen)
                .args(["-x", name])
                .arg(image)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn qemu-nbd"),
            addr,
            socket: socket.map(Path::to_path_buf),
            name: name.to_owned(),
        };
        for _ in 0..500 {
            let up = match socket {
                Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                None => TcpStream::connect(addr).is_ok(),
            };
            if up {
                return upstream;
            }
            if let Ok(Some(status)) = upstream.child.try_wait() {
                panic!("qemu-nbd exited with {status}");
            }
            sleep_ms(20);
        }
        upstream.child.kill().ok();
        panic!("qemu-nbd did not start");
    }

    /// The export's backend lines for [`ProxySetup::backend`]: `nbd` or
    /// `nbd_socket`, and `nbd_export`.
    pub fn backend_lines(&self) -> String {
        match &self.socket {
            Some(path) => format!(
                "nbd_socket = \"{}\"\nnbd_export = \"{}\"\n",
                path.display(),
                self.name
            ),
            None => format!("nbd = \"{}\"\nnbd_export = \"{}\"\n", self.addr, self.name),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Helpers for tests that run the real `palisade` binary.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod hold;
pub mod promtool;

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A `palisade serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub ready: Value,
    _tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

impl Server {
    /// Starts a server with `config` (TOML text, may be empty) on a free
    /// loopback port with a fresh data directory.
    pub fn start(config: &str) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut server = Server::start_in(config, &data_dir, tmp.path());
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server keeping its data in `data_dir` and its files in `work`.
    pub fn start_in(config: &str, data_dir: &Path, work: &Path) -> Server {
        Server::start_wrapped(config, data_dir, work, &[])
    }

    /// Starts a server with `config` under `wrapper` (a command such as
    /// `prlimit --nofile=256` that runs the rest of its arguments).
    pub fn start_under(config: &str, wrapper: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut server = Server::start_wrapped(config, &data_dir, tmp.path(), wrapper);
        server._tmp = Some(tmp);
        server
    }

    /// [`Server::start_in`] under `wrapper` (empty: none). The binary is
    /// `$PALISADE_SERVE_BIN` if set (to measure another build), else this
    /// build's.
    pub fn start_wrapped(config: &str, data_dir: &Path, work: &Path, wrapper: &[&str]) -> Server {
        let config_path = work.join("palisade.toml");
        std::fs::write(&config_path, config).expect("write config");
        let ready = work.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = work.join(format!("server-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let bin = std::env::var("PALISADE_SERVE_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&bin);
                command
            }
            None => Command::new(&bin),
        };
        let child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .env(
                "RUST_LOG",
                std::env::var("PALISADE_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn palisade serve");
        let mut server = Server {
            child,
            endpoint: String::new(),
            data_dir: data_dir.to_path_buf(),
            ready: Value::Null,
            _tmp: None,
            log,
        };
        for _ in 0..600 {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let value: Value = serde_json::from_str(&text).expect("ready file is JSON");
                server.endpoint = value["endpoint"].as_str().expect("endpoint").to_string();
                server.ready = value;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited with {status}: {}", server.log_text());
            }
            sleep_ms(20);
        }
        let bt = Command::new("gdb")
            .args([
                "-p",
                &server.child.id().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt 12",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        panic!("server did not become ready: {}\n{bt}", server.log_text());
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs a client subcommand against this server with `--json`.
    pub fn cli(&self, args: &[&str]) -> (i32, Value) {
        cli(&self.endpoint, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The test failed: its server's last words, before the
            // temporary directory holding them goes.
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!("--- the server's log (last {} lines) ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs `palisade ARGS --endpoint E --json` and parses stdout.
pub fn cli(endpoint: &str, args: &[&str]) -> (i32, Value) {
    let output = Command::new(BIN)
        .args(args)
        .args(["--endpoint", endpoint, "--json"])
        .output()
        .expect("run palisade");
    let code = output.status.code().expect("exit code");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not JSON ({e}): {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, value)
}

pub fn token(value: &Value) -> u64 {
    value["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {value}"))
}

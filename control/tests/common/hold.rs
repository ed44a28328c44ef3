//! Running `palisade hold --json` and reading its event lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::Value;

use super::BIN;

/// The arguments that make a 2 s lease end in SIGTERM 400 ms before its
/// validity and SIGKILL 100 ms later.
pub const SHORT: [&str; 6] = [
    "--ttl",
    "2s",
    "--kill-before",
    "400ms",
    "--kill-after",
    "100ms",
];

fn command(resource: &str, args: &[&str], endpoint: &str, cmd: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["hold", resource])
        .args(args)
        .args(["--endpoint", endpoint, "--json", "--"])
        .args(cmd);
    command
}

/// Runs `palisade hold RESOURCE ARGS --endpoint E --json -- CMD...` to
/// the end.
pub fn run(resource: &str, args: &[&str], endpoint: &str, cmd: &[&str]) -> Output {
    command(resource, args, endpoint, cmd)
        .output()
        .expect("run palisade hold")
}

/// The JSON event lines `palisade hold --json` wrote on stderr.
pub fn events(stderr: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The names of `events`, in order.
pub fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().expect("event name").to_string())
        .collect()
}

/// The token of the first `granted` event.
pub fn granted(events: &[Value]) -> u64 {
    events
        .iter()
        .find(|e| e["event"] == "granted")
        .and_then(|e| e["token"].as_u64())
        .unwrap_or_else(|| panic!("no grant in {events:?}"))
}

/// The latest validity (Unix ms) the events announced.
pub fn valid_until(events: &[Value]) -> u64 {
    events
        .iter()
        .filter_map(|e| e["valid_until_unix_ms"].as_u64())
        .max()
        .expect("a validity")
}

/// A `palisade hold` running in the background.
pub struct Running {
    pub child: Child,
    lines: Receiver<Value>,
    /// Every event read so far.
    pub seen: Vec<Value>,
}

impl Running {
    pub fn start(resource: &str, args: &[&str], endpoint: &str, cmd: &[&str]) -> Running {
        let mut child = command(resource, args, endpoint, cmd)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn palisade hold");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one named `name` arrived.
    pub fn wait_for(&mut self, name: &str) {
        while !self.seen.iter().any(|e| e["event"] == name) {
            let event = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {name} event; seen {:?}", self.seen));
            self.seen.push(event);
        }
    }

    /// Waits for the exit; the status code and every event.
    pub fn finish(mut self) -> (Option<i32>, Vec<Value>) {
        let status = self.child.wait().expect("hold exits");
        // The reader thread ends with stderr; collect what it read.
        self.seen.extend(self.lines.iter());
        (status.code(), self.seen)
    }
}

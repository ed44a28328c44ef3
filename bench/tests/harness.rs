//! The compare harness checked against servers whose latency is known:
//! an echo server that answers every message after a fixed delay, and one
//! that stalls once. Real processes on loopback. The bounds checked are
//! the ones the servers guarantee (no answer can come before its delay)
//! plus wide margins, never a speed target.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_palisade-bench");

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server(args: &[&str]) -> Server {
    let mut child = Command::new(BENCH)
        .args(["echo-server", "--listen", "127.0.0.1:0", "--size", "64"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting echo-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("echo-server printed {line:?}"))
        .to_string();
    Server(child, addr)
}

fn open_loop(addr: &str, rate: &str, duration: &str, warmup: &str) -> serde_json::Value {
    let out = Command::new(BENCH)
        .args([
            "open-loop",
            "--system",
            "echo",
            "--echo-size",
            "64",
            "--endpoint",
            addr,
            "--rate",
            rate,
            "--duration",
            duration,
            "--warmup",
            warmup,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "open-loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn us(v: &serde_json::Value, key: &str) -> f64 {
    v["requests"][key].as_f64().unwrap()
}

#[test]
fn a_known_delay_is_reported_as_that_delay() {
    // Every message is answered 5 ms after it is read; 50 cycles/s on one
    // connection leaves 20 ms between arrivals, so nothing queues.
    let server = echo_server(&["--delay-us", "5000"]);
    let result = open_loop(&server.1, "50", "3s", "500ms");
    eprintln!("{result}");
    // 3 s × 50 cycles × (acquire + release).
    let count = result["requests"]["count"].as_u64().unwrap();
    assert!((290..=310).contains(&count), "count {count}");
    assert_eq!(result["unanswered"], 0);
    // No answer can come sooner than the delay; HdrHistogram keeps 3
    // significant digits, so allow its 0.1 % rounding.
    assert!(us(&result, "p50") >= 4995.0, "{result}");
    // Loopback adds well under a millisecond; a generous ceiling still
    // catches a harness that adds its own delays or mixes up units.
    assert!(us(&result, "p50") < 5000.0 + 20_000.0, "{result}");
    assert!(us(&result, "p99") >= us(&result, "p50"));
    assert!(us(&result, "max") >= us(&result, "p99_99"));
}

#[test]
fn a_stall_is_charged_to_every_request_that_waited_behind_it() {
    // The server stalls 300 ms before answering its 100th message (about
    // 0.5 s in). At 100 cycles/s about 30 arrivals land in the stall; an
    // open-loop harness times each from its intended send, so about 20
    // acquires see 100 ms or more: over 1 % of the ~600 requests. A
    // closed-loop harness (coordinated omission) would record one slow
    // request and report a p99 of a few hundred microseconds.
    let server = echo_server(&["--stall-after", "100", "--stall-ms", "300"]);
    let result = open_loop(&server.1, "100", "3s", "0s");
    eprintln!("{result}");
    assert_eq!(result["unanswered"], 0);
    assert!(us(&result, "max") >= 299_000.0, "{result}");
    assert!(us(&result, "p99") >= 100_000.0, "{result}");
    // Most requests never met the stall.
    assert!(us(&result, "p50") < 50_000.0, "{result}");
}

#[test]
fn smoke_compare_writes_results_for_palisade_and_the_echo_floor() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(BENCH)
        .args(["compare", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "compare --smoke failed");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let systems = report["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2, "{systems:?}");
    for system in systems {
        assert!(system["missing"].is_null(), "{system}");
    }
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for cell in cells {
        assert!(cell["error"].is_null(), "{cell}");
        assert!(cell["max_rate"].as_f64().unwrap_or(0.0) > 0.0, "{cell}");
        let runs = cell["runs"].as_array().unwrap();
        assert!(runs.len() >= 2, "{cell}");
        for run in runs {
            let p = &run["requests"];
            assert!(p["count"].as_u64().unwrap() > 0, "{run}");
            let (p50, p99, max) = (
                p["p50"].as_f64().unwrap(),
                p["p99"].as_f64().unwrap(),
                p["max"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{run}");
        }
    }
    // The echo floor was also measured at Palisade's rates.
    let echo = cells.iter().find(|c| c["system"] == "echo").unwrap();
    assert!(echo["runs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["label"] == "at palisade 50%"));
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).unwrap();
    assert!(md.contains("## Targets"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("latency-uncontended-1conn.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
}

//! `palisade tune` end to end: against a real three-node cluster it
//! measures every peer over the authenticated peer transport (a probe
//! link, answered by each peer's transport), and it refuses to measure with
//! the wrong cluster secret; from a samples file it fits, advises and
//! writes a snippet that the config loader accepts.

mod cluster;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use cluster::{Cluster, BIN};
use serde_json::Value;

/// One-way delay the proxy adds to node 1's link to node 2, ms. A ping
/// and its pong each cross it once.
const DELAY_MS: u64 = 15;
const PINGS: usize = 30;

fn palisade(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run palisade")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("tune --json prints JSON")
}

fn check_snippet(path: &Path) {
    let output = palisade(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn tune_measures_every_peer_of_a_live_cluster() {
    let cluster = Cluster::start(3, "");
    cluster.links[&(1, 2)]
        .state
        .delay_ms
        .store(DELAY_MS, Ordering::SeqCst);
    let config = cluster.nodes[0].config.to_str().expect("utf-8").to_owned();
    let snippet = cluster.dir.path().join("snippet.toml");
    let count = PINGS.to_string();
    let output = palisade(&[
        "tune",
        "--config",
        &config,
        "--json",
        "--count",
        &count,
        "--interval",
        "2ms",
        "--write-snippet",
        snippet.to_str().expect("utf-8"),
    ]);
    let report = json_of(&output);

    let peers = report["peers"].as_array().expect("peers");
    let ids: Vec<u64> = peers
        .iter()
        .map(|p| p["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, [2, 3], "{report}");
    for peer in peers {
        assert_eq!(peer["samples"].as_u64(), Some(PINGS as u64), "{peer}");
        let (min, max) = (
            peer["min_us"].as_f64().expect("min"),
            peer["max_us"].as_f64().expect("max"),
        );
        assert!(min > 0.0 && min <= max, "{peer}");
        // Each peer's address is the one node 1's config names (the proxy).
        let addr = peer["addr"].as_str().expect("addr");
        let link = &cluster.links[&(
            1,
            u16::try_from(peer["id"].as_u64().expect("id")).expect("id"),
        )];
        assert_eq!(addr, link.listen.to_string());
    }
    // The ping and the pong each cross the delayed link: the pings really
    // went over node 1's peer link to node 2.
    let slow_min = peers[0]["min_us"].as_f64().expect("min");
    assert!(
        slow_min >= (2 * DELAY_MS * 1000) as f64,
        "peer 2 is {DELAY_MS} ms away each way, measured {slow_min} µs"
    );
    assert_eq!(report["fit"]["samples"].as_u64(), Some(2 * PINGS as u64));
    assert_eq!(report["fit"]["model"], "shifted-exponential");
    assert_eq!(report["inputs"]["members"], 3);

    let advice = &report["recommendation"];
    let heartbeat = advice["heartbeat_interval_ms"].as_f64().expect("h");
    let timeout = advice["election_timeout_ms"].as_f64().expect("T");
    assert!(timeout >= 3.0 * heartbeat, "{advice}");
    // p99 of the pooled RTTs is at least 30 ms, so h is too (step 7).
    assert!(heartbeat >= (2 * DELAY_MS) as f64, "{advice}");
    let prediction = &report["prediction"];
    assert!(
        prediction["fp_rate_per_s"].as_f64().expect("fp")
            <= prediction["fp_budget_per_s"].as_f64().expect("budget") * (1.0 + 1e-9),
        "{prediction}"
    );
    check_snippet(&snippet);
    let text = std::fs::read_to_string(&snippet).expect("snippet");
    let written = format!(
        "election_timeout = \"{}\"",
        advice["election_timeout"].as_str().expect("T")
    );
    assert!(text.contains(&written), "{text}");

    // The probe link checks the cluster secret like a raft link does.
    cluster.set_secret(0, "not the secret the others share\n");
    let output = palisade(&["tune", "--config", &config, "--count", "30"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("measuring peer"), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");
}

#[test]
fn tune_from_a_samples_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = dir.path().join("rtt.txt");
    let mut text = "# RTTs in µs, one per line\n\n".to_owned();
    // 90 at 200 µs and 10 at 400 µs: min 200, mean 220, p99 400, max 400.
    for i in 0..100 {
        text.push_str(if i % 10 == 9 {
            "400\n"
        } else {
            "200  # quiet\n"
        });
    }
    std::fs::write(&samples, text).expect("write");
    let snippet = dir.path().join("snippet.toml");
    let report = json_of(&palisade(&[
        "tune",
        "--samples",
        samples.to_str().expect("utf-8"),
        "--json",
        "--write-snippet",
        snippet.to_str().expect("utf-8"),
    ]));
    assert_eq!(report["fit"]["samples"], 100);
    assert_eq!(report["fit"]["min_us"], 200.0);
    assert_eq!(report["fit"]["p99_us"], 400.0);
    assert!((report["fit"]["mean_us"].as_f64().expect("mean") - 220.0).abs() < 1e-9);
    // h = max(10ms, 0.4ms) = 10ms; m = 20 µs: k = 3 (the config minimum).
    assert_eq!(report["recommendation"]["heartbeat_interval"], "10ms");
    assert_eq!(report["recommendation"]["election_timeout"], "30ms");
    check_snippet(&snippet);

    // The text output names the recommendation and the predictions.
    let output = palisade(&["tune", "--samples", samples.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for words in [
        "heartbeat_interval = \"10ms\"",
        "false suspicions",
        "failover",
    ] {
        assert!(stdout.contains(words), "{words}: {stdout}");
    }

    // A bad line is named; too few samples state the minimum.
    std::fs::write(&samples, "100\n200\n# fine\n-3\n").expect("write");
    let output = palisade(&["tune", "--samples", samples.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 4"), "{stderr}");
    std::fs::write(&samples, "100\n200\n").expect("write");
    let output = palisade(&["tune", "--samples", samples.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 30"), "{stderr}");
    // Neither --config nor --samples.
    let output = palisade(&["tune"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--samples"));
}

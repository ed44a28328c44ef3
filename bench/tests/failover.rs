//! `palisade-bench failover` end to end: one leader kill per replication
//! mode on a real three-node cluster of `palisade serve` processes, with a
//! short lease profile (max_ttl 2 s, no lock delay: the grace of `none` is
//! 2.5 s) so the run takes seconds. Checks that every measure is there and
//! consistent, never how fast it was. Needs the `palisade` binary built
//! next to this one (`cargo build --bin palisade`), like the compare smoke
//! test.

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_palisade-bench");

#[test]
fn one_round_per_mode_measures_election_first_grant_holders_and_rejoin() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(BENCH)
        .args([
            "failover",
            "--rounds",
            "1",
            "--replication",
            "quorum,none",
            "--holders",
            "2",
            "--holder-ttl",
            "1s",
            "--max-ttl",
            "2s",
            "--lock-delay-max",
            "0s",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "failover failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["grace_none_ms"], 2525, "{report}");
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2, "{report}");
    assert_eq!(modes[0]["replication"], "quorum");
    assert_eq!(modes[1]["replication"], "none");
    for mode in modes {
        assert!(mode["error"].is_null(), "{mode}\n{stderr}");
        let rounds = mode["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 1, "{mode}");
        let round = &rounds[0];
        assert!(round["error"].is_null(), "{round}\n{stderr}");
        let killed_epoch = round["killed_epoch"].as_u64().unwrap();
        let new_epoch = round["new_epoch"].as_u64().unwrap();
        assert!(new_epoch > killed_epoch, "{round}");
        assert_ne!(round["new_leader"], round["killed"], "{round}");
        assert!(round["elected_ms"].as_f64().unwrap() > 0.0, "{round}");
        assert!(round["first_grant_ms"].as_f64().unwrap() > 0.0, "{round}");
        // The first grant comes from a leader elected after the kill (S1:
        // its token's epoch is later than the killed leader's).
        let token = round["first_grant_token"].as_u64().unwrap();
        assert!(token >> 32 > killed_epoch, "{round}");
        // Every holder either renewed at the new leader or lost its lease.
        let holders = round["holders"].as_u64().unwrap();
        assert_eq!(holders, 2, "{round}");
        let lost = round["holders_lost"].as_u64().unwrap();
        let renewed = round["holders_renewed"].as_u64().unwrap();
        assert_eq!(lost + renewed, holders, "{round}");
        assert_eq!(round["losses"].as_array().unwrap().len() as u64, lost);
        assert!(round["rejoined_ms"].as_f64().unwrap() > 0.0, "{round}");
    }
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).unwrap();
    assert!(md.contains("## Targets"), "{md}");
    assert!(md.contains("## replication = \"quorum\""), "{md}");
    assert!(md.contains("## replication = \"none\""), "{md}");
    assert!(
        md.contains("kill → first grant of a free resource, median"),
        "{md}"
    );
}

//! `palisade config check FILE`: names every bad key of a file in one run
//! (unknown keys and sections, wrong types, values out of range, broken
//! cross-field rules), each with its reason, exits non-zero; accepts every
//! shipped profile in `tuning/profiles/`.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["config", "check"])
        .arg(path)
        .output()
        .expect("run palisade")
}

#[test]
fn every_bad_key_is_named_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[node]
id = 0
colour = "red"

[cluster]
heartbeat_interval = "100ms"
election_timeout = "200ms"

[leases]
max_ttl = 30
max_drift = 0.7

[limits]
frame_payload_max = 12

[[tenants]]
name = "a b"

[bogus]
x = 1
"#,
    )
    .expect("write");
    let output = check(&file);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing claims it is valid");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (key, reason) in [
        ("bogus", "unknown key"),
        (
            "node.colour",
            "unknown key; expected one of: id, data_dir, cores",
        ),
        ("node.id", "must be between 1 and 65535, got 0"),
        (
            "cluster.election_timeout",
            "must be at least 3 x cluster.heartbeat_interval (100ms), that is 300ms, got 200ms",
        ),
        (
            "leases.max_ttl",
            "expected a duration string like \"10s\", got integer 30",
        ),
        ("leases.max_drift", "got 0.7"),
        (
            "limits.frame_payload_max",
            "must be between 1024 and 1048576, got 12",
        ),
        ("tenants[0].name", "contains ' '"),
    ] {
        let line = format!("{key}: {reason}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{key}: ")) && l.contains(reason)),
            "missing {line:?} in:\n{stderr}"
        );
    }
    // One line per issue, after the heading that names the file.
    let issues = stderr.lines().filter(|l| l.contains(": ")).count();
    assert!(issues >= 9, "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn syntax_errors_and_missing_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[node]\nid = 1\n[leases\nmax_ttl = \"1s\"\n").expect("write");
    let output = check(&file);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid TOML at line 3"), "{stderr}");

    let output = check(&dir.path().join("absent.toml"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn every_shipped_profile_checks_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/profiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("tuning/profiles") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let output = check(&path);
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));
        checked += 1;
    }
    assert!(checked >= 3, "profiles checked: {checked}");
}

//! S5: tenants authenticate without sending their secret, and one tenant
//! can neither see nor change another's leases.

mod common;

use std::process::Command;

use common::{token, Server, BIN};

fn credential_line(secret_file: &std::path::Path) -> String {
    let output = Command::new(BIN)
        .args(["tenant-credential", "--secret-file"])
        .arg(secret_file)
        .output()
        .expect("run tenant-credential");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8(output.stdout).expect("utf8");
    assert!(line.starts_with("credential = \"scram-sha256$"), "{line}");
    line
}

fn setup() -> (Server, tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.secret");
    let bad = dir.path().join("bad.secret");
    std::fs::write(&good, "correct horse battery staple\n").expect("write");
    std::fs::write(&bad, "incorrect horse battery staple\n").expect("write");
    let config = format!(
        "[[tenants]]\nname = \"default\"\n\n[[tenants]]\nname = \"billing\"\n{}",
        credential_line(&good)
    );
    assert!(
        !config.contains("correct horse"),
        "the config never holds the secret"
    );
    let server = Server::start(&config);
    (
        server,
        dir,
        good.display().to_string(),
        bad.display().to_string(),
    )
}

#[test]
fn credentials_are_proved_at_the_handshake() {
    let (server, _dir, good, bad) = setup();
    let (code, ok) = server.cli(&[
        "acquire",
        "disk0",
        "--tenant",
        "billing",
        "--secret-file",
        &good,
    ]);
    assert_eq!(code, 0, "{ok}");
    assert_eq!(ok["tenant"], "billing");
    let (code, wrong) = server.cli(&["status", "--tenant", "billing", "--secret-file", &bad]);
    assert_eq!(code, 1, "{wrong}");
    assert_eq!(wrong["error"], "auth_failed");
    let (code, missing) = server.cli(&["status", "--tenant", "billing"]);
    assert_eq!(code, 1, "{missing}");
    assert_eq!(missing["error"], "auth");
    assert!(missing["message"]
        .as_str()
        .expect("message")
        .contains("--secret-file"));
}

#[test]
fn tenants_never_touch_each_others_leases() {
    let (server, _dir, good, _bad) = setup();
    let billing = ["--tenant", "billing", "--secret-file", good.as_str()];
    let (code, mine) = server.cli(&["acquire", "disk0", "--ttl", "10s"]);
    assert_eq!(code, 0, "{mine}");
    let t = token(&mine).to_string();

    // The other tenant cannot release, renew or see the lease ...
    let mut args = vec!["release", "disk0", t.as_str()];
    args.extend(billing);
    let (code, release) = server.cli(&args);
    assert_eq!(code, 3, "{release}");
    let mut args = vec!["renew", "disk0", t.as_str()];
    args.extend(billing);
    let (code, renew) = server.cli(&args);
    assert_eq!(code, 3, "{renew}");
    let mut args = vec!["check", "disk0", t.as_str()];
    args.extend(billing);
    let (code, check) = server.cli(&args);
    assert_eq!(code, 3, "{check}");
    assert!(check["current_token"].is_null(), "{check}");

    // ... and its own disk0 is a different resource, free to take.
    let mut args = vec!["acquire", "disk0", "--ttl", "10s"];
    args.extend(billing);
    let (code, theirs) = server.cli(&args);
    assert_eq!(code, 0, "{theirs}");

    // The first tenant's lease is untouched.
    let (code, still) = server.cli(&["check", "disk0", &t]);
    assert_eq!(code, 0, "{still}");
}

#[test]
fn a_non_loopback_listener_requires_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tenants[0].credential"), "{stderr}");
    assert!(
        stderr.contains("tenant-credential"),
        "the message says how to fix it: {stderr}"
    );
}

#[test]
fn bad_config_files_name_every_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[node]\nid = 0\n[leases]\nmax_ttl = 30\nmax_tll = \"1s\"\n",
    )
    .expect("write");
    let output = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["node.id", "leases.max_ttl", "leases.max_tll"] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!output.status.success(), "serve refuses the same file");
}

#[test]
fn a_secret_for_a_tenant_without_credential_is_refused() {
    // A server that does not challenge a client holding a secret cannot
    // prove it knows the credential: the client refuses to continue.
    let (server, _dir, good, _bad) = setup();
    let (code, out) = server.cli(&["status", "--tenant", "default", "--secret-file", &good]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["error"], "auth");
}

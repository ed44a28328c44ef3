//! `palisade hold RESOURCE -- CMD`: lock and run, with real processes. The
//! command gets its lease in its environment, the lease is released the
//! moment it exits, and when the lease is lost the command is stopped
//! before the lease's validity ends. The exit-code table of `palisade hold
//! --help` is checked here.

mod cluster;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::hold::{events, granted, names, valid_until, Running, SHORT};
use common::{token, Server, BIN};

/// Runs `palisade hold RESOURCE ARGS --endpoint E --json -- CMD...`.
fn hold(endpoint: &str, args: &[&str], command: &[&str]) -> Output {
    let (resource, args) = args.split_first().expect("a resource");
    common::hold::run(resource, args, endpoint, command)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_command_runs_with_its_lease_and_the_lease_is_released_when_it_exits() {
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let script = format!(
        "echo \"$PALISADE_RESOURCE $PALISADE_TOKEN $PALISADE_VALID_UNTIL_UNIX_MS {{token}}\" > {}; exit 7",
        out.display()
    );
    let output = hold(
        &server.endpoint,
        &["disk0", "--ttl", "30s"],
        &["sh", "-c", &script],
    );
    let events = events(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "CMD's status: {events:?}");
    assert_eq!(
        names(&events),
        ["granted", "exited", "released"],
        "{events:?}"
    );
    let granted = token(&events[0]);
    let text = read(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{text:?}");
    assert_eq!(fields[0], "disk0");
    assert_eq!(fields[1].parse::<u64>().expect("token"), granted);
    assert_eq!(
        fields[2].parse::<u64>().expect("validity"),
        events[0]["valid_until_unix_ms"].as_u64().expect("validity")
    );
    assert_eq!(fields[3], fields[1], "{{token}} in an argument is replaced");

    // Released at once: the next acquire is granted without waiting for
    // the 30 s ttl, and its token is greater.
    let (code, next) = server.cli(&["acquire", "disk0", "--ttl", "5s"]);
    assert_eq!(code, 0, "{next}");
    assert_eq!(next["waited_ms"], 0);
    assert!(token(&next) > granted);
}

#[test]
fn exit_codes_say_what_happened() {
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());

    // CMD's own status, and 128 + N when a signal killed it.
    let ok = hold(&server.endpoint, &["r-ok"], &["true"]);
    assert_eq!(ok.status.code(), Some(0));
    let killed = hold(&server.endpoint, &["r-ok"], &["sh", "-c", "kill -USR1 $$"]);
    assert_eq!(killed.status.code(), Some(128 + 10), "SIGUSR1 is 10");

    // 121: busy until --wait ran out; CMD never runs.
    let (code, held) = server.cli(&["acquire", "busy", "--ttl", "30s"]);
    assert_eq!(code, 0, "{held}");
    let busy = hold(
        &server.endpoint,
        &["busy", "--wait", "200ms"],
        &["sh", "-c", &touch],
    );
    assert_eq!(busy.status.code(), Some(121), "{:?}", events(&busy.stderr));
    assert_eq!(names(&events(&busy.stderr)), ["not_granted"]);
    assert!(!ran.exists(), "CMD ran without the lease");

    // 127: CMD not found; the lease is released again.
    let missing = hold(&server.endpoint, &["r-missing"], &["/nonexistent/cmd"]);
    assert_eq!(missing.status.code(), Some(127));
    let (code, again) = server.cli(&["acquire", "r-missing"]);
    assert_eq!(code, 0, "released after the failed start: {again}");

    // 126: CMD is not executable.
    let file = dir.path().join("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").expect("write");
    let cannot = hold(
        &server.endpoint,
        &["r-noexec"],
        &[file.to_str().expect("utf8")],
    );
    assert_eq!(cannot.status.code(), Some(126));

    // 123: no node to talk to.
    let nobody = hold("127.0.0.1:1", &["r", "--timeout", "1s"], &["true"]);
    assert_eq!(nobody.status.code(), Some(123));
    // 123: options that cannot work.
    let bad = hold(
        &server.endpoint,
        &["r", "--ttl", "1s", "--kill-before", "2s"],
        &["true"],
    );
    assert_eq!(bad.status.code(), Some(123));

    // The table is in the help.
    let help = Command::new(BIN)
        .args(["hold", "--help"])
        .output()
        .expect("run palisade hold --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for code in [
        "121",
        "122",
        "123",
        "126 / 127",
        "PALISADE_VALID_UNTIL_UNIX_MS",
    ] {
        assert!(help.contains(code), "{code} in {help}");
    }

    // 122 (lost) is the next test's.
}

#[test]
fn a_grant_that_waited_longer_than_its_ttl_is_valid_from_the_grant() {
    // The validity counts the queue's wait: counted from the send time
    // alone, this lease (2 s, granted after about 3 s in the queue) was
    // over on arrival and `hold` stopped the command as lost (122).
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    let (code, held) = server.cli(&["acquire", "queued", "--ttl", "3s"]);
    assert_eq!(code, 0, "{held}");
    let waited = hold(
        &server.endpoint,
        &["queued", "--wait", "20s", "--ttl", "2s"],
        &["sh", "-c", &format!("sleep 0.3; touch {}", ran.display())],
    );
    let events = events(&waited.stderr);
    assert_eq!(waited.status.code(), Some(0), "{events:?}");
    assert!(ran.exists(), "the command ran to its end");
    assert_eq!(
        names(&events).first().map(String::as_str),
        Some("granted"),
        "{events:?}"
    );
}

/// The last millisecond timestamp the command wrote.
fn last_stamp(path: &Path) -> u64 {
    read(path)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .expect("the command wrote timestamps")
}

/// Runs `palisade hold disk0 --ttl 2s` on `endpoint` with a command that
/// ignores SIGTERM and records the wall clock every few milliseconds; once
/// the lease was renewed, calls `disrupt` (which must make the lease lost)
/// and checks that the command was killed before the validity the client
/// last computed, and that `palisade hold` exited 122. Returns the token.
fn lost_while_running(endpoint: &str, disrupt: impl FnOnce()) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let stamps = dir.path().join("stamps");
    let script = format!(
        "trap '' TERM; while :; do date +%s%3N >> {}; sleep 0.005; done",
        stamps.display()
    );
    let mut running = Running::start("disk0", &SHORT, endpoint, &["sh", "-c", &script]);
    // Let it renew once, then take the lease away.
    running.wait_for("renewed");
    disrupt();
    let (status, seen) = running.finish();
    let events = names(&seen);
    assert_eq!(status, Some(122), "lost: {seen:?}");
    for expected in ["granted", "renewed", "signal", "lost", "exited"] {
        assert!(
            events.contains(&expected.to_string()),
            "{expected} in {seen:?}"
        );
    }
    let signals: Vec<&str> = seen
        .iter()
        .filter(|e| e["event"] == "signal")
        .map(|e| e["signal"].as_str().expect("signal"))
        .collect();
    assert_eq!(signals, ["SIGTERM", "SIGKILL"], "{seen:?}");

    // The command never ran past the validity the client last computed.
    let valid_until = valid_until(&seen);
    let last = last_stamp(&stamps);
    assert!(
        last <= valid_until,
        "the command wrote at {last}, after the lease's validity ended at {valid_until}"
    );
    // Nothing is left running to write more.
    let before = read(&stamps).len();
    common::sleep_ms(100);
    assert_eq!(read(&stamps).len(), before, "the command's group is gone");
    granted(&seen)
}

#[test]
fn a_lost_lease_stops_the_command_before_its_validity_ends() {
    let server = Server::start("");
    let pid = i32::try_from(server.child.id()).expect("pid");
    // A frozen node: renewals go unanswered until the validity runs out.
    let first = lost_while_running(&server.endpoint, || {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // The next holder gets a greater token once the lease ran out.
    let (code, next) = server.cli(&["acquire", "disk0", "--wait", "10s"]);
    assert_eq!(code, 0, "{next}");
    assert!(token(&next) > first);
}

#[test]
fn a_leader_that_dies_without_replication_takes_the_lease_with_it() {
    // Without replication the new leader knows no lease: it waits out a
    // grace period of (max_ttl + lock_delay_max + election timeout) and
    // then grants in its own, higher epoch.
    let extra = "[leases]\nreplication = \"none\"\nmax_ttl = \"2s\"\nlock_delay_max = \"0ms\"\n";
    let mut nodes = cluster::Cluster::start(3, extra);
    let leader = nodes.wait_leader(10_000, &[0, 1, 2]);
    let endpoints = nodes.endpoints().join(",");
    let first = lost_while_running(&endpoints, || nodes.kill9(leader));
    let (code, next) = common::cli(
        &endpoints,
        &[
            "acquire",
            "disk0",
            "--ttl",
            "1s",
            "--wait",
            "20s",
            "--timeout",
            "30s",
        ],
    );
    assert_eq!(code, 0, "{next}");
    assert!(token(&next) > first, "a later epoch");
}

#[test]
fn sigterm_to_hold_is_passed_on_and_the_lease_released() {
    let server = Server::start("");
    let mut child = Command::new(BIN)
        .args([
            "hold",
            "disk0",
            "--ttl",
            "30s",
            "--endpoint",
            &server.endpoint,
            "--json",
        ])
        .args([
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; while :; do sleep 0.01; done",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade hold");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("granted line");
    assert!(line.contains("\"granted\""), "{line}");
    // Give the shell a moment to install its trap.
    common::sleep_ms(200);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().expect("hold exits");
    assert_eq!(
        status.code(),
        Some(42),
        "CMD's own exit after the forwarded signal"
    );
    let (code, next) = server.cli(&["acquire", "disk0"]);
    assert_eq!(code, 0, "released: {next}");
}

#[test]
fn the_hold_guard_reports_a_loss_on_its_channel_and_to_its_callback() {
    use palisade_client::hold::wait_lost;
    use palisade_client::LeaseEvent;
    use palisade_client::{AcquireOptions, ConnectOptions, Hold};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let server = Server::start("");
    let options = ConnectOptions::new(server.endpoint.clone(), "default");
    let losses = Arc::new(AtomicUsize::new(0));
    let counted = losses.clone();
    let on_event = Box::new(move |event: &LeaseEvent| {
        if matches!(event, LeaseEvent::Lost { .. }) {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let guard = Hold::acquire_with(
        &options,
        "guarded",
        AcquireOptions::new(std::time::Duration::from_millis(900)),
        Some(on_event),
    )
    .expect("acquire")
    .expect("granted");
    let held = guard.lease().token;
    let pid = i32::try_from(server.child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let lost = wait_lost(&guard.events, std::time::Duration::from_secs(10));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert!(
        matches!(lost, Some(palisade_client::LossReason::Expired { .. })),
        "{lost:?}"
    );
    assert_eq!(losses.load(Ordering::SeqCst), 1);
    drop(guard);
    let (code, next) = server.cli(&["acquire", "guarded", "--wait", "5s"]);
    assert_eq!(code, 0, "{next}");
    assert!(token(&next) > held);
}

#[test]
fn the_async_guard_and_the_watch_stream() {
    use palisade_client::{AcquireOptions, AsyncClient, AsyncHold, ConnectOptions, WatchKind};

    let server = Server::start("");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = ConnectOptions::new(server.endpoint.clone(), "default");
        let client = AsyncClient::connect(&options).await.expect("connect");
        let mut stream = client.watch_stream("async-r", 0);
        // The watch's first answer (nothing held) comes before the grant.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let hold = AsyncHold::acquire(
            &client,
            "async-r",
            AcquireOptions::new(std::time::Duration::from_secs(5)),
        )
        .await
        .expect("acquire")
        .expect("granted");
        let token = hold.lease().token;
        let granted = stream.next().await.expect("event").expect("no error");
        assert_eq!((granted.kind, granted.token), (WatchKind::Granted, token));
        hold.release().await.expect("release");
        let released = stream.next().await.expect("event").expect("no error");
        assert_eq!(
            (released.kind, released.token),
            (WatchKind::Released, token)
        );
        let page = client.list("", "", 10).await.expect("list");
        assert!(page.leases.is_empty() && !page.more, "{page:?}");
    });
}

#[test]
fn a_leader_change_with_replicated_leases_does_not_stop_the_command() {
    let mut nodes = cluster::Cluster::start(3, "");
    let leader = nodes.wait_leader(10_000, &[0, 1, 2]);
    let endpoints = nodes.endpoints().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; exit 5",
        go.display()
    );
    let mut running = Running::start(
        "disk0",
        &["--ttl", "3s"],
        &endpoints,
        &["sh", "-c", &script],
    );
    running.wait_for("granted");
    nodes.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    nodes.wait_leader(10_000, &others);
    // Longer than the ttl: the lease lives on only if the new leader
    // renewed it.
    common::sleep_ms(3_500);
    std::fs::write(&go, "").expect("touch");
    let (status, seen) = running.finish();
    assert_eq!(status, Some(5), "CMD's own status: {seen:?}");
    let events = names(&seen);
    assert!(!events.contains(&"lost".to_string()), "{seen:?}");
    assert!(!events.contains(&"signal".to_string()), "{seen:?}");
    assert_eq!(
        events.last().map(String::as_str),
        Some("released"),
        "{seen:?}"
    );
}

//! `palisade watch RESOURCE`: one JSON line per change of the resource's
//! lease (granted, released, expired), in order, across a leader change;
//! SIGINT ends it with status 0.

mod cluster;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use cluster::{sleep_ms, Cluster, BIN};
use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions, TokenOutcome};
use serde_json::Value;

struct Watcher {
    child: Child,
    lines: Receiver<Value>,
}

impl Watcher {
    fn start(endpoints: &str, resource: &str) -> Watcher {
        let mut child = Command::new(BIN)
            .args(["watch", resource, "--endpoint", endpoints])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn palisade watch");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).expect("a JSON line");
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next event: its name and token.
    fn next(&self) -> (String, u64) {
        let value = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("an event line");
        (
            value["event"].as_str().expect("event").to_string(),
            value["token"].as_u64().expect("token"),
        )
    }

    /// SIGINT; the exit status.
    fn interrupt(mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        self.child.wait().expect("watch exits").code()
    }
}

fn grant(client: &mut Client, resource: &str, ttl: Duration) -> u64 {
    match client
        .acquire(resource, AcquireOptions::new(ttl))
        .expect("acquire")
    {
        AcquireOutcome::Granted(lease) => lease.token,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn watch_reports_grant_release_and_expiry_in_order_across_a_leader_change() {
    let mut cluster = Cluster::start(3, "");
    let leader = cluster.wait_leader(10_000, &[0, 1, 2]);
    let endpoints = cluster.endpoints().join(",");
    let watcher = Watcher::start(&endpoints, "disk0");
    let mut client =
        Client::connect(&ConnectOptions::new(endpoints.clone(), "default")).expect("connect");
    // Let the watcher's first (empty) answer arrive before the grant.
    sleep_ms(300);

    let first = grant(&mut client, "disk0", Duration::from_secs(5));
    assert_eq!(watcher.next(), ("granted".into(), first));

    // The leader dies; the replicated lease lives on at the new leader.
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_leader(10_000, &others);
    assert_eq!(
        client.release("disk0", first).expect("release"),
        TokenOutcome::Released
    );
    assert_eq!(watcher.next(), ("released".into(), first));

    // A short lease nobody renews runs out.
    let second = grant(&mut client, "disk0", Duration::from_millis(600));
    assert!(second > first);
    assert_eq!(watcher.next(), ("granted".into(), second));
    assert_eq!(watcher.next(), ("expired".into(), second));

    assert_eq!(watcher.interrupt(), Some(0), "SIGINT ends the watch with 0");
}

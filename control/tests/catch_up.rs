//! A follower that missed more than the leader's log keeps is caught up by
//! a snapshot of the whole replicated lease state, however large the state:
//! real processes, a log compacted every 100 entries (once it grew by the
//! last snapshot's size), and 32 000 leases with 256-byte names (9.7 MB):
//! the last compaction before the follower returns holds at least half of
//! them, past the 4 MiB frame limit the peer links once had (the
//! follower's link was refused every snapshot, and it never caught up).

mod cluster;

use std::time::Duration;

use cluster::{sleep_ms, Cluster};
use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
use palisade_host::clock::boottime_ms;

/// Leases granted while the follower is down; `PALISADE_CATCH_UP_LEASES`
/// raises it for a manual run at scale (100 000: a 30 MB state, past the
/// peer links' 16 MiB backlog too).
fn leases() -> usize {
    std::env::var("PALISADE_CATCH_UP_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32_000)
}
const THREADS: usize = 8;

fn resource(i: usize) -> String {
    format!("r{i:0>255}")
}

fn client(endpoints: &str) -> Client {
    let mut options = ConnectOptions::new(endpoints, "default");
    options.request_timeout = Duration::from_secs(10);
    Client::connect(&options).expect("connect")
}

/// Waits up to `ms` for node `i`'s metric `name` to read `want`.
fn wait_metric(cluster: &Cluster, i: usize, name: &str, want: f64, ms: u64) {
    let deadline = boottime_ms() + ms;
    loop {
        let got = cluster.metric(i, name);
        if got == Some(want) {
            return;
        }
        assert!(
            boottime_ms() < deadline,
            "node {i}: {name} is {got:?}, not {want}, after {ms} ms\n{}",
            cluster.log(i)
        );
        sleep_ms(100);
    }
}

/// Takes resource `i` (each is taken once), through a leader change if
/// one comes (a slow compaction on a busy machine may cause one): an
/// attempt whose answer was lost may have been granted, and then the
/// retry finds it busy.
fn grant(c: &mut Client, endpoints: &str, i: usize) {
    let deadline = boottime_ms() + 30_000;
    let mut retried = false;
    loop {
        match c.acquire(&resource(i), AcquireOptions::new(Duration::from_secs(500))) {
            Ok(AcquireOutcome::Granted(_)) => return,
            Ok(AcquireOutcome::Busy { .. }) if retried => return,
            Err(e) if boottime_ms() < deadline => {
                eprintln!("acquire {i}: {e}; retrying");
                retried = true;
                sleep_ms(50);
                if let Ok(again) = Client::connect(&ConnectOptions::new(endpoints, "default")) {
                    *c = again;
                }
            }
            other => panic!("acquire {i}: {other:?}"),
        }
    }
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_large_lease_state() {
    let count = leases();
    let capacity = (2 * count).max(65_536);
    let mut cluster = Cluster::start_with_cluster_lines(
        3,
        &format!(
            "[leases]\nmax_ttl = \"600s\"\ntable_capacity = {capacity}\n\n[limits]\ntenant_leases_max = {capacity}\n"
        ),
        "snapshot_entries = 100\n",
    );
    let leader = cluster.wait_leader(15_000, &[0, 1, 2]);
    let behind = (leader + 1) % 3;
    cluster.kill9(behind);
    let start_ms = boottime_ms();

    let endpoints = cluster.endpoints().join(",");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let endpoints = endpoints.clone();
            std::thread::spawn(move || {
                let mut c = client(&endpoints);
                for i in (t..count).step_by(THREADS) {
                    grant(&mut c, &endpoints, i);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("acquirer");
    }
    let granted_ms = boottime_ms();
    let leases = count as f64;
    wait_metric(
        &cluster,
        leader,
        "palisade_replicated_leases",
        leases,
        10_000,
    );

    // Back, it is far behind the leader's log: only a snapshot of every
    // lease catches it up.
    let restart_ms = boottime_ms();
    cluster.spawn(behind);
    wait_metric(
        &cluster,
        behind,
        "palisade_replicated_leases",
        leases,
        60_000,
    );
    eprintln!(
        "{count} leases granted in {} ms; the follower caught up {} ms after its restart",
        granted_ms - start_ms,
        boottime_ms() - restart_ms
    );

    // And the state is there to lead with: without the old leader, the
    // two others keep every lease.
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(15_000, &others);
    let mut c = client(&cluster.nodes[new_leader].client.to_string());
    let deadline = boottime_ms() + 15_000;
    for i in [0, count / 2, count - 1] {
        loop {
            match c.acquire(&resource(i), AcquireOptions::new(Duration::from_secs(5))) {
                Ok(AcquireOutcome::Busy { .. }) => break,
                Ok(AcquireOutcome::Granted(lease)) => {
                    panic!("lease {i} was lost in the failover: granted anew as {lease:?}")
                }
                Err(e) => {
                    assert!(boottime_ms() < deadline, "acquire {i}: {e}");
                    sleep_ms(100);
                    c = client(&cluster.nodes[new_leader].client.to_string());
                }
            }
        }
    }
}

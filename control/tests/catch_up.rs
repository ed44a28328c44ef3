//! A follower that missed more than the leader's log keeps is caught up by
//! a snapshot of the whole replicated lease state, however large the state:
//! real processes, a log compacted every 100 entries, and a state of
//! 4.5 MB (15 000 leases with 256-byte names), past the 4 MiB frame limit
//! the peer links once had (the follower's link was refused every
//! snapshot, and it never caught up).

mod cluster;

use std::time::Duration;

use cluster::{sleep_ms, Cluster};
use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
use palisade_host::clock::boottime_ms;

const LEASES: usize = 15_000;
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

#[test]
fn a_follower_behind_the_compacted_log_gets_a_large_lease_state() {
    let mut cluster = Cluster::start_with_cluster_lines(
        3,
        "[leases]\nmax_ttl = \"600s\"\n",
        "snapshot_entries = 100\n",
    );
    let leader = cluster.wait_leader(15_000, &[0, 1, 2]);
    let behind = (leader + 1) % 3;
    cluster.kill9(behind);

    let endpoint = cluster.nodes[leader].client.to_string();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut c = client(&endpoint);
                for i in (t..LEASES).step_by(THREADS) {
                    match c.acquire(&resource(i), AcquireOptions::new(Duration::from_secs(500))) {
                        Ok(AcquireOutcome::Granted(_)) => {}
                        other => panic!("acquire {i}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("acquirer");
    }
    let leases = LEASES as f64;
    wait_metric(
        &cluster,
        leader,
        "palisade_replicated_leases",
        leases,
        10_000,
    );

    // Back, it is far behind the leader's log: only a snapshot of every
    // lease catches it up.
    cluster.spawn(behind);
    wait_metric(
        &cluster,
        behind,
        "palisade_replicated_leases",
        leases,
        60_000,
    );

    // And the state is there to lead with: without the old leader, the
    // two others keep every lease.
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(15_000, &others);
    let mut c = client(&cluster.nodes[new_leader].client.to_string());
    let deadline = boottime_ms() + 15_000;
    for i in [0, LEASES / 2, LEASES - 1] {
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

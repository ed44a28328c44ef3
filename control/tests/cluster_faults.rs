//! Real three-node clusters under faults: leader election, kill -9 of the
//! leader under a client workload, SIGSTOP/SIGCONT, restart, minority and
//! asymmetric partitions (through fault-injecting proxies on every peer
//! link), and a stalled fsync. Every run ends with the history checker:
//! S1 (tokens per resource grow in the order leases were held) and S2 (no
//! two clients held one resource at once).

mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cluster::{check_history, sleep_ms, workload, Cluster, Held};

/// Short leases so the grace period after a failover is short:
/// (max_ttl 400 ms + lock_delay_max 0 + election_timeout 200 ms) x 1.01.
const EXTRA: &str = "[leases]\nmax_ttl = \"400ms\"\nmin_ttl = \"50ms\"\nlock_delay_max = \"0ms\"\n";
const TTL_MS: u64 = 300;
/// How long a test waits for an election. Liveness under a loaded 2-CPU
/// CI machine (every cluster test runs three nodes at once) is not what
/// these tests check, their safety properties are; `failover_timing`
/// measures election speed.
const ELECTION_WAIT_MS: u64 = 15_000;

struct Run {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Held>>>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

fn start_workload(cluster: &Cluster) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let threads = workload(
        cluster.endpoints(),
        4,
        4,
        TTL_MS,
        stop.clone(),
        history.clone(),
    );
    Run {
        stop,
        history,
        threads,
    }
}

fn finish(run: Run) -> Vec<Held> {
    run.stop.store(true, Ordering::SeqCst);
    let grants: u64 = run
        .threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .sum();
    let history = run.history.lock().expect("history").clone();
    assert_eq!(grants as usize, history.len());
    check_history(&history);
    history
}

fn epoch_of(cluster: &Cluster, i: usize) -> u64 {
    cluster.status(i).expect("status")["epoch"]
        .as_u64()
        .expect("epoch")
}

#[test]
fn three_nodes_elect_one_leader_and_followers_redirect() {
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let leader_id = cluster.nodes[leader].id;
    for i in (0..3).filter(|&i| i != leader) {
        // A follower learns the leader from its first heartbeat.
        let status = cluster.wait_follower(i, 10_000);
        assert_eq!(status["leader"], leader_id, "node {i}: {status}");
    }
    // A client of a follower is redirected to the leader and, after the
    // grace period, granted.
    sleep_ms(800);
    let follower = (leader + 1) % 3;
    let (code, out) = common_cli(
        &cluster.nodes[follower].client.to_string(),
        &["acquire", "x", "--ttl", "300ms"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["epoch"].as_u64(), Some(epoch_of(&cluster, leader)));
}

fn common_cli(endpoint: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let output = std::process::Command::new(cluster::BIN)
        .args(args)
        .args(["--endpoint", endpoint, "--json"])
        .output()
        .expect("run");
    let value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().expect("code"), value)
}

#[test]
fn kill_the_leader_under_load() {
    let mut cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let old_epoch = epoch_of(&cluster, leader);
    let run = start_workload(&cluster);
    sleep_ms(1_500);
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(ELECTION_WAIT_MS, &others);
    assert!(
        epoch_of(&cluster, new_leader) > old_epoch,
        "S1: the epoch grew"
    );
    sleep_ms(2_000);
    // The killed node comes back as a follower; its term never went back.
    cluster.spawn(leader);
    let status = cluster.wait_follower(leader, 10_000);
    assert!(status["epoch"].as_u64().expect("epoch") >= epoch_of(&cluster, new_leader));
    sleep_ms(500);
    let history = finish(run);
    let epochs: std::collections::BTreeSet<u64> = history.iter().map(|h| h.token >> 32).collect();
    assert!(epochs.len() >= 2, "grants in both epochs: {epochs:?}");
}

#[test]
fn a_paused_leader_grants_nothing_when_it_resumes() {
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let old_epoch = epoch_of(&cluster, leader);
    let run = start_workload(&cluster);
    // A client with a finished handshake to the leader, so that its next
    // request can sit in the stopped leader's socket.
    let mut probe = palisade_client::Client::connect(&palisade_client::ConnectOptions::new(
        cluster.nodes[leader].client.to_string(),
        "default",
    ))
    .expect("connect");
    sleep_ms(1_000);
    cluster.signal(leader, libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(ELECTION_WAIT_MS, &others);
    sleep_ms(1_500);
    // The request reaches the resumed leader's data plane before its
    // control plane hears of the new term: it must still refuse, because
    // its quorum confirmation ran out while it was stopped.
    let waiting = std::thread::spawn(move || {
        probe.acquire(
            "fresh-after-resume",
            palisade_client::AcquireOptions::new(std::time::Duration::from_millis(300)),
        )
    });
    sleep_ms(300);
    cluster.signal(leader, libc::SIGCONT);
    if let Ok(palisade_client::AcquireOutcome::Granted(lease)) = waiting.join().expect("probe") {
        assert!(
            lease.epoch() as u64 > old_epoch,
            "granted in the deposed epoch {}",
            lease.epoch()
        );
    }
    cluster.wait_follower(leader, 10_000);
    assert_ne!(new_leader, leader);
    finish(run);
}

#[test]
fn a_minority_leader_stops_and_the_majority_goes_on() {
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let old_epoch = epoch_of(&cluster, leader);
    let run = start_workload(&cluster);
    sleep_ms(1_000);
    cluster.isolate(leader, true);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(ELECTION_WAIT_MS, &others);
    assert!(epoch_of(&cluster, new_leader) > old_epoch);
    // The cut-off leader stops granting within an election timeout.
    sleep_ms(600);
    let (code, out) = common_cli(
        &cluster.nodes[leader].client.to_string(),
        &["acquire", "minority", "--ttl", "300ms", "--timeout", "1s"],
    );
    assert_ne!(code, 0, "a minority leader granted: {out}");
    sleep_ms(1_500);
    cluster.isolate(leader, false);
    cluster.wait_follower(leader, 10_000);
    finish(run);
}

#[test]
fn an_asymmetric_partition_deposes_a_leader_nobody_hears() {
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let old_epoch = epoch_of(&cluster, leader);
    let run = start_workload(&cluster);
    sleep_ms(1_000);
    // The leader still hears everyone, but nobody hears it.
    cluster.mute(leader, true);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(ELECTION_WAIT_MS, &others);
    assert!(epoch_of(&cluster, new_leader) > old_epoch);
    sleep_ms(1_500);
    cluster.mute(leader, false);
    sleep_ms(1_000);
    finish(run);
}

#[test]
fn a_leader_whose_fsync_stalls_stops_granting_and_renewing() {
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    sleep_ms(900); // Past the grace period.
    let endpoint = cluster.nodes[leader].client.to_string();
    let (code, held) = common_cli(&endpoint, &["acquire", "stall", "--ttl", "400ms"]);
    assert_eq!(code, 0, "{held}");
    let token = held["token"].as_u64().expect("token").to_string();
    let stall = cluster
        .data_dir(leader)
        .join(palisade_control::raftlog::FSYNC_STALL_FAILPOINT);
    std::fs::write(&stall, "").expect("arm the failpoint");
    // Make the leader write: a grant appends nothing, but ticks and votes
    // do; within one election timeout (200 ms) its quorum confirmation
    // runs out because its control thread is stuck in fsync.
    sleep_ms(400);
    let (code, out) = common_cli(
        &endpoint,
        &[
            "renew",
            "stall",
            &token,
            "--ttl",
            "400ms",
            "--timeout",
            "1s",
        ],
    );
    assert_ne!(code, 0, "a stalled leader renewed: {out}");
    let (code, out) = common_cli(
        &endpoint,
        &["acquire", "stall2", "--ttl", "400ms", "--timeout", "1s"],
    );
    assert_ne!(code, 0, "a stalled leader granted: {out}");
    std::fs::remove_file(&stall).expect("disarm");
}

#[test]
fn clocks_drifting_within_the_bound_keep_leases_apart() {
    // max_drift is 1 %: one node's clock runs 0.9 % fast, another's 0.9 %
    // slow. Leaders change (kills) while clients work; the history checker
    // compares what clients held on one shared clock.
    let env = std::collections::HashMap::from([
        (
            0usize,
            vec![(
                "PALISADE_TEST_CLOCK_RATE_PPM".to_string(),
                "1009000".to_string(),
            )],
        ),
        (
            1usize,
            vec![(
                "PALISADE_TEST_CLOCK_RATE_PPM".to_string(),
                "991000".to_string(),
            )],
        ),
    ]);
    let mut cluster = Cluster::start_with_env(3, EXTRA, env);
    let run = start_workload(&cluster);
    for _ in 0..2 {
        let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
        sleep_ms(1_200);
        cluster.kill9(leader);
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        cluster.wait_leader(ELECTION_WAIT_MS, &others);
        sleep_ms(1_200);
        cluster.spawn(leader);
        // The next kill must leave two live nodes: wait for this one to
        // rejoin before taking another leader away.
        cluster.wait_follower(leader, 10_000);
    }
    sleep_ms(1_000);
    let history = finish(run);
    let epochs: std::collections::BTreeSet<u64> = history.iter().map(|h| h.token >> 32).collect();
    assert!(
        epochs.len() >= 2,
        "grants across leader changes: {epochs:?}"
    );
}

#[test]
fn garbage_on_the_peer_port_is_refused_and_the_cluster_carries_on() {
    use std::io::Write;
    let cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let peer = cluster.nodes[leader].peer;
    let framed = |mut bytes: Vec<u8>| {
        let mut frame = (bytes.len() as u32).to_le_bytes().to_vec();
        frame.append(&mut bytes);
        frame
    };
    let other = if leader == 0 { 2u16 } else { 1u16 };
    let me = cluster.nodes[leader].id;
    let hello = |cluster_name: &str| {
        let mut hello = b"PLSDPEER\x02".to_vec();
        hello.extend_from_slice(&other.to_le_bytes());
        hello.extend_from_slice(&me.to_le_bytes());
        hello.extend_from_slice(&[7u8; 16]);
        hello.extend_from_slice(cluster_name.as_bytes());
        framed(hello)
    };
    for bytes in [
        b"\xff\xff\xff\xffgarbage".to_vec(),
        // A well-framed handshake from another cluster.
        hello("other"),
        // The right cluster and ids, then a forged proof and a raft message.
        {
            let mut bytes = hello("test");
            bytes.extend(framed(vec![0u8; 32]));
            bytes.extend(framed(b"\x08\x03".to_vec()));
            bytes
        },
        // The version-1 handshake of earlier builds.
        framed(b"PLSDPEER\x01\x02\x00\x01\x00test".to_vec()),
        vec![0u8; 3],
    ] {
        let mut stream = std::net::TcpStream::connect(peer).expect("connect");
        let _ = stream.write_all(&bytes);
        drop(stream);
    }
    // A flood of connections that never say anything: refused beyond the
    // cap, closed at the handshake deadline, and the links between members
    // recover.
    let silent: Vec<_> = (0..64)
        .filter_map(|_| std::net::TcpStream::connect(peer).ok())
        .collect();
    sleep_ms(2_500);
    drop(silent);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    assert_eq!(cluster.status(leader).expect("status")["role"], "leader");
    for i in (0..3).filter(|&i| i != leader) {
        // Polled: a `status` call may time out while the suite loads both
        // CPUs; what matters is that every node answers and follows.
        let status = cluster.wait_follower(i, 10_000);
        assert_eq!(
            status["leader"].as_u64(),
            Some(u64::from(cluster.nodes[leader].id)),
            "node {i} follows the leader again: {status}"
        );
    }
    assert!(
        cluster.log(leader).contains("proof is wrong"),
        "the forged proof is logged"
    );
}

#[test]
fn a_node_with_another_secret_is_kept_out() {
    let mut cluster = Cluster::start(3, EXTRA);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let outsider = (leader + 1) % 3;
    cluster.kill9(outsider);
    cluster.set_secret(outsider, "not the cluster secret at all\n");
    cluster.spawn(outsider);
    sleep_ms(1_500);
    let status = cluster.status(outsider).expect("the outsider runs");
    assert_ne!(status["role"], "leader", "{status}");
    assert_eq!(status["leader"], 0, "it never hears the leader: {status}");
    let leader_now = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    assert_ne!(leader_now, outsider);
    assert!(
        cluster.log(outsider).contains("secrets differ"),
        "the outsider's log says why: {}",
        cluster.log(outsider)
    );
}

/// Failover timing, run by hand (about two minutes):
/// `cargo test --release -p palisade-control --test cluster_faults failover_timing -- --ignored --nocapture`
///
/// 20 times: kill -9 the leader of a three-node cluster (heartbeat 50 ms,
/// election timeout 500 ms, max_ttl 2 s, no lock delay: grace
/// (2 s + 0.5 s) x 1.01 = 2.525 s) and measure from the kill to (a) a
/// surviving node saying it leads and (b) its first grant.
#[test]
#[ignore = "a measurement, run by hand"]
fn failover_timing() {
    use palisade_client::clock::boottime_ms;
    use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
    let extra = "[leases]\nmax_ttl = \"2s\"\nlock_delay_max = \"0ms\"\n";
    let mut cluster = Cluster::start_timed(3, extra, 50, 500);
    let try_grant = |endpoint: String, resource: String| -> bool {
        let mut options = ConnectOptions::new(endpoint, "default");
        options.request_timeout = std::time::Duration::from_millis(300);
        Client::connect(&options).is_ok_and(|mut client| {
            matches!(
                client.acquire(
                    &resource,
                    AcquireOptions::new(std::time::Duration::from_millis(100))
                ),
                Ok(AcquireOutcome::Granted(_))
            )
        })
    };
    let leads = |endpoint: String| -> bool {
        let mut options = ConnectOptions::new(endpoint, "default");
        options.request_timeout = std::time::Duration::from_millis(300);
        Client::connect(&options)
            .ok()
            .and_then(|mut c| c.status().ok())
            .is_some_and(|s| s.role == palisade_proto::Role::Leader)
    };
    let mut elections = Vec::new();
    let mut grants = Vec::new();
    for round in 0..20 {
        let leader = cluster.wait_leader(10_000, &[0, 1, 2]);
        let endpoint = cluster.nodes[leader].client.to_string();
        while !try_grant(endpoint.clone(), format!("warm{round}")) {
            sleep_ms(50);
        }
        let killed_at = boottime_ms();
        cluster.kill9(leader);
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut elected_at = None;
        let granted_at = 'wait: loop {
            if elected_at.is_none()
                && others
                    .iter()
                    .any(|&i| leads(cluster.nodes[i].client.to_string()))
            {
                elected_at = Some(boottime_ms());
            }
            if elected_at.is_some() {
                for &i in &others {
                    if try_grant(cluster.nodes[i].client.to_string(), format!("after{round}")) {
                        break 'wait boottime_ms();
                    }
                }
            }
            sleep_ms(5);
        };
        let elected = elected_at.expect("elected") - killed_at;
        elections.push(elected);
        grants.push(granted_at - killed_at);
        eprintln!(
            "kill {round}: new leader after {elected} ms, first grant after {} ms",
            granted_at - killed_at
        );
        cluster.spawn(leader);
        sleep_ms(1_000);
    }
    elections.sort_unstable();
    grants.sort_unstable();
    let median = |v: &[u64]| v[v.len() / 2];
    eprintln!(
        "election: median {} ms, max {} ms; kill to first grant: median {} ms, max {} ms (grace 2525 ms)",
        median(&elections),
        elections.last().expect("some"),
        median(&grants),
        grants.last().expect("some")
    );
}

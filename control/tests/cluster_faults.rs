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

/// Failover timing, run by hand (about a minute):
/// `cargo test --release -p palisade-control --test cluster_faults failover_timing -- --ignored --nocapture`
///
/// 20 times: kill -9 the leader of a three-node cluster (the LAN profile:
/// heartbeat 50 ms, election timeout 500 ms; replicated leases, max_ttl
/// 2 s, no lock delay) and measure, as a client sees it, from the kill to
/// (a) a surviving node saying it leads and (b) the first grant of a free
/// resource. The client polls every 2 ms over connections opened before the
/// kill, with a request timeout too short for the client library's own
/// retry pauses, so the figures are the cluster's, not the poller's. Prints
/// min/median/max of both, and each round's timeline from the nodes' logs
/// (raft's own messages included): when a survivor first campaigned
/// (pre-vote), when the winner became candidate and leader, when it took
/// over, and how many pre-votes were ignored because a follower still
/// counted the dead leader's lease.
#[test]
#[ignore = "a measurement, run by hand"]
fn failover_timing() {
    use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};
    use palisade_host::clock::boottime_ms;
    use std::time::Duration;
    const ROUNDS: usize = 20;
    let extra = "[leases]\nmax_ttl = \"2s\"\nlock_delay_max = \"0ms\"\n";
    let verbose: Vec<(String, String)> = vec![(
        "RUST_LOG".into(),
        "info,raft=debug,palisade_control::node=debug".into(),
    )];
    let env = (0..3).map(|i| (i, verbose.clone())).collect();
    let mut cluster = Cluster::start_timed_with_env(3, extra, env, 50, 500);
    let connect = |i: usize, cluster: &Cluster| -> Option<Client> {
        let mut options = ConnectOptions::new(cluster.nodes[i].client.to_string(), "default");
        options.request_timeout = Duration::from_millis(40);
        options.attempt_timeout = Duration::from_millis(40);
        options.connect_timeout = Duration::from_millis(40);
        Client::connect(&options).ok()
    };
    // One holder id per resource: an acquire repeated after a timed-out
    // attempt whose grant committed gets the same grant back.
    let grant = |client: &mut Client, resource: &str| -> bool {
        let mut options = AcquireOptions::new(Duration::from_millis(200));
        options.holder = resource
            .bytes()
            .fold(1u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        matches!(
            client.acquire(resource, options),
            Ok(AcquireOutcome::Granted(_))
        )
    };
    let mut elections = Vec::new();
    let mut grants = Vec::new();
    let mut phases: Vec<Phases> = Vec::new();
    for round in 0..ROUNDS {
        let leader = cluster.wait_leader(10_000, &[0, 1, 2]);
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        while !connect(leader, &cluster).is_some_and(|mut c| grant(&mut c, &format!("warm{round}")))
        {
            sleep_ms(50);
        }
        let mut clients: Vec<Option<Client>> =
            others.iter().map(|&i| connect(i, &cluster)).collect();
        let killed_unix_us = unix_us();
        let killed_at = boottime_ms();
        cluster.kill9(leader);
        let mut elected: Option<(u64, usize)> = None;
        let granted_at = loop {
            let now = boottime_ms();
            assert!(
                now - killed_at < 15_000,
                "round {round}: no grant within 15 s"
            );
            if elected.is_none() {
                for (k, &i) in others.iter().enumerate() {
                    if clients[k].is_none() {
                        clients[k] = connect(i, &cluster);
                    }
                    let Some(client) = clients[k].as_mut() else {
                        continue;
                    };
                    match client.status() {
                        Ok(status) if status.role == palisade_proto::Role::Leader => {
                            elected = Some((boottime_ms(), k));
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => clients[k] = None,
                    }
                }
            }
            if let Some((_, k)) = elected {
                if clients[k].is_none() {
                    clients[k] = connect(others[k], &cluster);
                }
                if let Some(client) = clients[k].as_mut() {
                    if grant(client, &format!("after{round}")) {
                        break boottime_ms();
                    }
                }
            }
            sleep_ms(2);
        };
        let (elected_at, _) = elected.expect("elected before granting");
        elections.push(elected_at - killed_at);
        grants.push(granted_at - killed_at);
        drop(clients);
        // Let the survivors' log lines of this round reach their files.
        sleep_ms(100);
        let logs: Vec<(u16, String)> = others
            .iter()
            .map(|&i| (cluster.nodes[i].id, cluster.log(i)))
            .collect();
        let phase = Phases::from_logs(&logs, killed_unix_us, (granted_at - killed_at) * 1_000);
        eprintln!(
            "kill {round:2} (node {}): leader after {:4} ms, grant after {:4} ms | {phase}",
            cluster.nodes[leader].id,
            elected_at - killed_at,
            granted_at - killed_at,
        );
        phases.push(phase);
        cluster.spawn(leader);
        sleep_ms(1_000);
    }
    let summary = |name: &str, v: &mut Vec<u64>| {
        v.sort_unstable();
        eprintln!(
            "{name}: min {} ms, median {} ms, max {} ms ({} kills)",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1],
            v.len()
        );
    };
    if let Some(dir) = std::env::var_os("PALISADE_FAILOVER_LOGS") {
        // The nodes' full logs, for a closer look than the timeline.
        std::fs::create_dir_all(&dir).expect("log dir");
        for node in &cluster.nodes {
            let to = std::path::Path::new(&dir).join(format!("node{}.log", node.id));
            std::fs::copy(&node.log, to).expect("copy log");
        }
    }
    summary("kill to new leader", &mut elections);
    summary("kill to first grant", &mut grants);
    Phases::summary(&phases);
}

/// Microseconds since the Unix epoch (the nodes' log lines carry wall-clock
/// timestamps).
fn unix_us() -> u64 {
    palisade_host::clock::unix_us()
}

/// The Unix time in µs of a log line's RFC 3339 timestamp
/// (`2025-01-31T12:34:56.123456Z ...`), if it has one.
fn log_time_us(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (parts.next()??, parts.next()??, parts.next()??);
    let frac_us = format!("{frac:0<6}")[..6].parse::<i64>().ok()?;
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + frac_us).ok()
}

/// One failover as the survivors' logs tell it, in µs after the kill.
#[derive(Debug, Default, Clone)]
struct Phases {
    /// A survivor first became pre-candidate (its election timer fired).
    first_campaign: Option<u64>,
    /// The winner became candidate (a quorum granted its pre-vote).
    candidate: Option<u64>,
    /// The winner became leader.
    leader: Option<u64>,
    /// The winner committed an entry of its term and installed the leases.
    took_over: Option<u64>,
    /// The client's first grant.
    granted: u64,
    /// Pre-candidate transitions, both survivors.
    campaigns: u32,
    /// Pre-votes or votes a survivor ignored because it still counted the
    /// dead leader's lease (check-quorum).
    lease_refusals: u32,
    /// Pre-votes or votes refused for another reason (a shorter log, a vote
    /// already given).
    other_refusals: u32,
    /// Pre-votes or votes granted whose response never reached the
    /// candidate (lost on the way).
    lost_grants: u32,
    /// The winner's first quorum-confirmed grant window (it may grant).
    confirmed: Option<u64>,
    /// Election timeouts the survivors drew after the kill (ticks).
    drawn: Vec<u64>,
    /// Ticks the survivors' control loops dropped after the kill.
    ticks_dropped: u64,
}

impl Phases {
    fn from_logs(logs: &[(u16, String)], killed_us: u64, granted_us: u64) -> Phases {
        let mut phases = Phases {
            granted: granted_us,
            ..Phases::default()
        };
        let end = killed_us + granted_us + 50_000;
        let (mut granted, mut received) = (0u32, 0u32);
        for (_, log) in logs {
            for line in log.lines() {
                let Some(at) = log_time_us(line) else {
                    continue;
                };
                if at < killed_us || at > end {
                    continue;
                }
                let t = at - killed_us;
                if line.contains("became pre-candidate") {
                    phases.campaigns += 1;
                    phases.first_campaign = Some(phases.first_campaign.map_or(t, |f| f.min(t)));
                } else if line.contains("became candidate") {
                    phases.candidate = Some(t);
                } else if line.contains("became leader") {
                    phases.leader = Some(t);
                } else if line.contains("took over") {
                    phases.took_over = Some(t);
                } else if line.contains("lease is not expired") {
                    phases.lease_refusals += 1;
                } else if line.contains("] rejected Msg") || line.contains("rejected vote") {
                    phases.other_refusals += 1;
                } else if line.contains("cast vote for") {
                    granted += 1;
                } else if line.contains("received votes response")
                    && line.contains("vote=true")
                    && field(line, "from") != field(line, "raft_id")
                {
                    received += 1;
                } else if line.contains("quorum confirmed") {
                    phases.confirmed.get_or_insert(t);
                } else if line.contains("tick late") {
                    phases.ticks_dropped += field(line, "dropped").unwrap_or(0);
                }
                if line.contains("election timeout drawn") && !line.contains("Leader") {
                    if let Some(ticks) = field(line, "election_ticks") {
                        phases.drawn.push(ticks);
                    }
                }
            }
        }
        phases.lost_grants = granted.saturating_sub(received);
        phases
    }

    fn summary(all: &[Phases]) {
        let median = |mut v: Vec<u64>| -> String {
            if v.is_empty() {
                return "-".into();
            }
            v.sort_unstable();
            format!("{}", v[v.len() / 2] / 1_000)
        };
        let gap = |f: fn(&Phases) -> Option<u64>, g: fn(&Phases) -> Option<u64>| -> String {
            median(
                all.iter()
                    .filter_map(|p| g(p)?.checked_sub(f(p)?))
                    .collect(),
            )
        };
        eprintln!(
            "median phases (ms): kill -> first campaign {}, -> candidate {}, -> leader {}, -> took over {}, -> confirmed {}, -> client grant {}",
            median(all.iter().filter_map(|p| p.first_campaign).collect()),
            gap(|p| p.first_campaign, |p| p.candidate),
            gap(|p| p.candidate, |p| p.leader),
            gap(|p| p.leader, |p| p.took_over),
            gap(|p| p.took_over, |p| p.confirmed),
            gap(|p| p.confirmed, |p| Some(p.granted)),
        );
        eprintln!(
            "rounds with a (pre-)vote granted but lost on the way: {}; ignored for the dead leader's lease: {}; with more than one campaign: {}; with dropped ticks: {}",
            all.iter().filter(|p| p.lost_grants > 0).count(),
            all.iter().filter(|p| p.lease_refusals > 0).count(),
            all.iter().filter(|p| p.campaigns > 1).count(),
            all.iter().filter(|p| p.ticks_dropped > 0).count(),
        );
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |t: Option<u64>| t.map_or("-".to_string(), |t| format!("{}", t / 1_000));
        write!(
            f,
            "campaign {} candidate {} leader {} took over {} confirmed {} | campaigns {} lease-refused {} refused {} lost {} drawn {:?} ticks dropped {}",
            ms(self.first_campaign),
            ms(self.candidate),
            ms(self.leader),
            ms(self.took_over),
            ms(self.confirmed),
            self.campaigns,
            self.lease_refusals,
            self.other_refusals,
            self.lost_grants,
            self.drawn,
            self.ticks_dropped,
        )
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

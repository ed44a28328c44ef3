//! Leases survive a leader change and a restart (`leases.replication =
//! "quorum"`, the default), with real processes: a holder renewing with the
//! client library's keepalive keeps its token across kill -9 of the leader,
//! across SIGSTOP of the leader and across a restart of a single node; a
//! free resource is granted by the new leader without waiting out anything
//! counted from max_ttl; a dead holder's resource frees at its own expiry,
//! not before. A contender keeps trying to take the held resource all
//! along, and the history checker runs over what everyone believed.

mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{check_history, sleep_ms, Cluster, Held};
use palisade_client::{
    AcquireOptions, AcquireOutcome, Client, ConnectOptions, KeepAliveThread, Lease, LeaseEvent,
    TokenOutcome,
};
use palisade_host::clock::boottime_ms;

/// max_ttl far above the leases here: anything that waited for it (a
/// grace period) would show.
const EXTRA: &str = "[leases]\nmax_ttl = \"10s\"\nlock_delay_max = \"0ms\"\n";
const MAX_TTL_MS: u64 = 10_000;
const ELECTION_WAIT_MS: u64 = 15_000;

fn client(cluster: &Cluster) -> Client {
    let mut options = ConnectOptions::new(cluster.endpoints().join(","), "default");
    options.request_timeout = Duration::from_secs(5);
    Client::connect(&options).expect("connect")
}

/// Acquires `resource` for `ttl`, retrying until a leader grants it.
fn acquire(cluster: &Cluster, resource: &str, ttl: Duration, within_ms: u64) -> (Lease, u64) {
    let deadline = boottime_ms() + within_ms;
    loop {
        let mut c = client(cluster);
        if let Ok(AcquireOutcome::Granted(lease)) = c.acquire(resource, AcquireOptions::new(ttl)) {
            return (lease, boottime_ms());
        }
        assert!(boottime_ms() < deadline, "{resource} was not granted");
        sleep_ms(50);
    }
}

/// A holder kept alive by the keepalive thread, and what it believed.
struct Holder {
    keepalive: KeepAliveThread,
    token: u64,
    from_ms: u64,
    valid_until_ms: u64,
    renewals: u64,
}

impl Holder {
    fn start(cluster: &Cluster, resource: &str) -> Holder {
        let (lease, from_ms) = acquire(cluster, resource, Duration::from_secs(3), ELECTION_WAIT_MS);
        let (token, valid_until_ms) = (lease.token, lease.valid_until_ms);
        Holder {
            keepalive: KeepAliveThread::spawn(client(cluster), lease, None),
            token,
            from_ms,
            valid_until_ms,
            renewals: 0,
        }
    }

    /// Takes the keepalive's events; panics on a loss.
    fn drain(&mut self, when: &str) {
        while let Ok(event) = self.keepalive.events.try_recv() {
            match event {
                LeaseEvent::Renewed(lease) => {
                    assert_eq!(lease.token, self.token, "{when}: the token changed");
                    self.valid_until_ms = lease.valid_until_ms;
                    self.renewals += 1;
                }
                LeaseEvent::Lost { lease, reason } => {
                    panic!("{when}: the live holder lost {:?}: {reason:?}", lease.token)
                }
            }
        }
    }

    /// Waits `ms` while the keepalive renews; returns the renewals seen.
    fn hold_for(&mut self, ms: u64, when: &str) -> u64 {
        let before = self.renewals;
        let deadline = boottime_ms() + ms;
        while boottime_ms() < deadline {
            sleep_ms(50);
            self.drain(when);
        }
        self.renewals - before
    }
}

/// A client that keeps trying to take `resource` from its holder and
/// records every grant it gets.
fn contender(
    endpoints: String,
    resource: &'static str,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Held>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let mut options = ConnectOptions::new(endpoints.clone(), "default");
            options.request_timeout = Duration::from_millis(800);
            let Ok(mut c) = Client::connect(&options) else {
                sleep_ms(50);
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                match c.acquire(resource, AcquireOptions::new(Duration::from_millis(500))) {
                    Ok(AcquireOutcome::Granted(lease)) => {
                        let from_ms = boottime_ms();
                        // It stops using the resource, then releases it.
                        history.lock().expect("history").push(Held {
                            resource: resource.into(),
                            token: lease.token,
                            from_ms,
                            to_ms: lease.valid_until_ms.min(boottime_ms()),
                        });
                        let _ = c.release(resource, lease.token);
                    }
                    Ok(AcquireOutcome::Busy { .. }) => sleep_ms(30),
                    Err(_) => break,
                }
            }
        }
    })
}

fn check_current(cluster: &Cluster, resource: &str, token: u64, when: &str) {
    match client(cluster).check(resource, token) {
        Ok(TokenOutcome::Current { .. }) => {}
        other => panic!("{when}: check of the held token answered {other:?}"),
    }
}

#[test]
fn a_live_holder_keeps_its_token_across_a_leader_kill_and_a_paused_leader() {
    let mut cluster = Cluster::start(3, EXTRA);
    cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let mut holder = Holder::start(&cluster, "disk0");
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let contender = contender(
        cluster.endpoints().join(","),
        "disk0",
        stop.clone(),
        history.clone(),
    );
    assert!(holder.hold_for(1_500, "before the faults") > 0, "it renews");

    // kill -9 of the leader.
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    let killed_ms = boottime_ms();
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_leader(ELECTION_WAIT_MS, &others);
    // A resource nobody held: granted by the new leader without waiting out
    // a grace period counted from max_ttl.
    let (_, granted_ms) = acquire(
        &cluster,
        "fresh-after-kill",
        Duration::from_secs(1),
        MAX_TTL_MS,
    );
    assert!(
        granted_ms < killed_ms + MAX_TTL_MS,
        "a free resource waited {} ms after the kill",
        granted_ms - killed_ms
    );
    assert!(
        holder.hold_for(4_000, "after the kill") > 0,
        "it renews at the new leader"
    );
    check_current(&cluster, "disk0", holder.token, "after the kill");

    // The killed node comes back; then SIGSTOP of the (new) leader.
    cluster.spawn(leader);
    cluster.wait_follower(leader, ELECTION_WAIT_MS);
    let paused = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    cluster.signal(paused, libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|&i| i != paused).collect();
    cluster.wait_leader(ELECTION_WAIT_MS, &others);
    assert!(
        holder.hold_for(4_000, "while the old leader is stopped") > 0,
        "it renews while the old leader is stopped"
    );
    cluster.signal(paused, libc::SIGCONT);
    cluster.wait_follower(paused, ELECTION_WAIT_MS);
    assert!(holder.hold_for(2_000, "after the resume") > 0);
    check_current(&cluster, "disk0", holder.token, "after the pause");

    stop.store(true, Ordering::SeqCst);
    contender.join().expect("contender");
    holder.drain("at the end");
    let mut history = history.lock().expect("history").clone();
    assert!(
        history.iter().all(|h| h.token != holder.token),
        "the contender never got the held token"
    );
    history.push(Held {
        resource: "disk0".into(),
        token: holder.token,
        from_ms: holder.from_ms,
        to_ms: holder.valid_until_ms,
    });
    check_history(&history);
    let during: Vec<&Held> = history
        .iter()
        .filter(|h| h.token != holder.token && h.from_ms < holder.valid_until_ms)
        .collect();
    assert!(
        during.is_empty(),
        "granted to the contender while held: {during:?}"
    );
}

#[test]
fn a_dead_holders_resource_frees_at_its_own_expiry_after_a_failover() {
    let mut cluster = Cluster::start(3, EXTRA);
    cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    // Granted, then never renewed: its holder died.
    let (dead, granted_ms) = acquire(&cluster, "dead", Duration::from_secs(2), ELECTION_WAIT_MS);
    let leader = cluster.wait_leader(ELECTION_WAIT_MS, &[0, 1, 2]);
    cluster.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_leader(ELECTION_WAIT_MS, &others);
    // The new leader lists the lease while it holds it, though nobody has
    // renewed it there: the takeover keeps the names it installed. (Listed,
    // then checked: a lease still current at the check was live at the
    // listing; one listed may have run out by the check.)
    let mut c = client(&cluster);
    let page = c.list("", "", 10).expect("list");
    let listed: Vec<(&str, u64)> = page
        .leases
        .iter()
        .map(|l| (l.resource.as_str(), l.token))
        .collect();
    let current = matches!(
        c.check("dead", dead.token).expect("check"),
        TokenOutcome::Current { .. }
    );
    if current || !listed.is_empty() {
        assert_eq!(
            listed,
            [("dead", dead.token)],
            "the listing after the failover"
        );
    }
    let (lease, taken_ms) = acquire(&cluster, "dead", Duration::from_secs(1), MAX_TTL_MS);
    assert!(lease.token > dead.token, "S1");
    assert!(
        taken_ms >= dead.valid_until_ms,
        "S2: taken {} ms before the dead holder's lease ended",
        dead.valid_until_ms - taken_ms
    );
    assert!(
        taken_ms < granted_ms + MAX_TTL_MS,
        "freed {} ms after the grant: not at its own expiry",
        taken_ms - granted_ms
    );
}

#[test]
fn a_holder_keeps_its_token_across_a_restart_of_a_single_node() {
    let mut cluster = Cluster::start(1, EXTRA);
    cluster.wait_leader(ELECTION_WAIT_MS, &[0]);
    let mut holder = Holder::start(&cluster, "disk0");
    assert!(holder.hold_for(1_200, "before the restart") > 0);
    cluster.kill9(0);
    cluster.spawn(0);
    cluster.wait_leader(ELECTION_WAIT_MS, &[0]);
    // A free resource is granted at once after the restart.
    let (_, _) = acquire(
        &cluster,
        "fresh-after-restart",
        Duration::from_secs(1),
        2_000,
    );
    assert!(
        holder.hold_for(4_000, "after the restart") > 0,
        "it renews at the restarted node"
    );
    check_current(&cluster, "disk0", holder.token, "after the restart");
}

//! The seeded scenarios and their tests: chaos, leader crashes, flapping
//! leaders; the harness they drive is the parent module's `Sim`.

use super::*;

fn seeds(default_debug: u64, default_release: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("PALISADE_SIM_SEED") {
        return vec![seed.parse().expect("PALISADE_SIM_SEED is a number")];
    }
    let count: u64 = std::env::var("PALISADE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            default_debug
        } else {
            default_release
        });
    (1..=count).collect()
}

fn for_seeds(seeds: Vec<u64>, run: impl Fn(u64) + std::panic::RefUnwindSafe) {
    for seed in seeds {
        if let Err(panic) = std::panic::catch_unwind(|| run(seed)) {
            eprintln!("failing seed: {seed} (replay: PALISADE_SIM_SEED={seed})");
            std::panic::resume_unwind(panic);
        }
    }
}

fn chaos_seed(seed: u64) {
    let size = if seed % 3 == 0 { 5 } else { 3 };
    let mut sim = Sim::new(seed, size, 8);
    sim.settle(5_000 + GRACE_MS);
    sim.crash_points = seed % 2 == 0;
    sim.chaos(4_000);
    sim.heal();
    sim.crash_points = false;
    // Liveness: a leader serves again, and a probe gets a fresh resource.
    let deadline = sim.real_ms + 3_000 + GRACE_MS;
    while sim.real_ms < deadline && sim.leader().is_none() {
        sim.step_ms();
    }
    let leader = sim
        .leader()
        .unwrap_or_else(|| panic!("seed {seed}: no leader serving after the faults stopped"));
    let probe = sim.probe_acquire(leader, "probe", 2_000);
    assert!(
        probe.is_some(),
        "seed {seed}: a free resource was not granted"
    );
    sim.run_ms(1_500);
    sim.check();
    sim.report();
}

impl Sim {
    /// Sends an acquire of a fresh resource to node `i` (following
    /// redirects and retries) as an extra client; returns the real ms it
    /// was granted, within `ms`.
    fn probe_acquire(&mut self, mut i: usize, resource: &str, ms: u64) -> Option<u64> {
        let deadline = self.real_ms + ms;
        let probe = self.clients.len();
        self.clients.push(Client {
            rate_ppm: 1_000_000,
            clock_offset_ms: 0,
            holder: 1_000_000 + probe as u64,
            target: i,
            next_request_id: 1,
            inflight: None,
            wanted: None,
            lease: None,
            dead_until: u64::MAX, // silent: driven by hand below
            next_action_local: 0,
            keeper: false,
        });
        let mut request_id = 1u64;
        while self.real_ms < deadline {
            let node = &mut self.nodes[i];
            if node.core.is_some() && self.real_ms >= node.paused_until {
                let request = Request::Acquire {
                    resource: resource.into(),
                    holder: 1_000_000 + probe as u64,
                    ttl_ms: 500,
                    lock_delay_ms: 0,
                    wait_ms: 0,
                };
                self.serve(i, probe, request_id, &request);
                // Answered at once, or after its commit.
                let mut answer = None;
                for _ in 0..50 {
                    if let Some(position) = self.flights.iter().position(|f| {
                        matches!(&f.payload, Payload::Response { client, request_id: r, .. } if *client == probe && *r == request_id)
                    }) {
                        let flight = self.flights.swap_remove(position);
                        if let Payload::Response { response, .. } = flight.payload {
                            answer = Some(response);
                        }
                        break;
                    }
                    self.step_ms();
                }
                request_id += 1;
                match answer {
                    Some(Response::Granted { .. }) => {
                        self.probe_grants.insert(resource.into(), self.real_ms);
                        return Some(self.real_ms);
                    }
                    Some(Response::Redirect { leader_id, .. }) if leader_id != 0 => {
                        i = usize::from(leader_id) - 1;
                    }
                    _ => {}
                }
            }
            self.step_ms();
        }
        None
    }
}

#[test]
fn seeded_schedules_keep_s1_s2_with_replicated_leases() {
    for_seeds(seeds(40, 1_000), chaos_seed);
}

fn failover_seed(seed: u64) {
    let mut sim = Sim::new(seed, 3, 0);
    sim.settle(5_000 + GRACE_MS);
    // Keepers: each holds one resource with a 600 ms lease and renews
    // every 200 ms; failover (crash detection + election + takeover) takes
    // well under the 400 ms a renewal may be late.
    for c in 0..RESOURCES {
        sim.clients.push(Client {
            rate_ppm: 995_100 + sim.rng.below(9_801),
            clock_offset_ms: sim.rng.below(10_000),
            holder: 500 + c as u64,
            target: c % 3,
            next_request_id: 1,
            inflight: None,
            wanted: Some((c, 600)),
            lease: None,
            dead_until: 0,
            next_action_local: 0,
            keeper: true,
        });
    }
    sim.run_ms(600);
    let tokens: Vec<u64> = sim
        .clients
        .iter()
        .map(|c| c.lease.as_ref().map_or(0, |l| l.token))
        .collect();
    assert!(
        tokens.iter().all(|&t| t != 0),
        "seed {seed}: every keeper holds its lease before the crash: {tokens:?}"
    );
    let leader = sim.leader().expect("a leader");
    let crash_at = sim.real_ms;
    let old_epoch = sim.nodes[leader].core.as_ref().expect("up").term();
    let down = 150 + sim.rng.below(300);
    sim.crash(leader, down);
    // The first takeover after the crash, in a later epoch.
    let mut takeover = None;
    while takeover.is_none() && sim.real_ms < crash_at + 2_000 {
        sim.step_ms();
        takeover = sim
            .takeovers
            .iter()
            .find(|&&(_, epoch)| u64::from(epoch) > old_epoch)
            .map(|&(at, _)| at);
    }
    let took_over = takeover.unwrap_or_else(|| panic!("seed {seed}: no takeover after the crash"));
    // Serving once a quorum confirmed its leadership (the next tick).
    while sim.leader().is_none() && sim.real_ms < took_over + 100 {
        sim.step_ms();
    }
    let new_leader = sim
        .leader()
        .unwrap_or_else(|| panic!("seed {seed}: the new leader does not serve"));
    // A free resource is granted within a commit of the takeover.
    let granted = sim
        .probe_acquire(new_leader, "free-after-failover", 500)
        .unwrap_or_else(|| panic!("seed {seed}: the free resource was not granted"));
    assert!(
        granted <= took_over.max(sim.real_ms) + 30,
        "seed {seed}: free resource granted {} ms after the takeover",
        granted - took_over
    );
    sim.run_ms(1_500);
    // The promise holds for a failover shorter than ttl - renew interval
    // (400 ms here), less what a client needs to find the new leader (a
    // timed-out attempt at the dead node, a redirect): 250 ms. Elections
    // that split twice take longer; those seeds check safety only.
    if took_over <= crash_at + 250 {
        assert!(
            sim.keeper_losses.is_empty(),
            "seed {seed}: live holders lost their leases in a {} ms failover: {:?}",
            took_over - crash_at,
            sim.keeper_losses
        );
    } else {
        FAILOVERS_TOO_SLOW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let after: Vec<u64> = sim
        .clients
        .iter()
        .take(RESOURCES)
        .map(|c| c.lease.as_ref().map_or(0, |l| l.token))
        .collect();
    if sim.keeper_losses.is_empty() {
        assert_eq!(after, tokens, "seed {seed}: the holders kept their tokens");
    }
    sim.check();
    sim.report();
}

/// Seeds whose failover took longer than the promise covers.
static FAILOVERS_TOO_SLOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn a_leader_crash_loses_no_live_holder_and_frees_nothing_late() {
    let seeds = seeds(40, 1_000);
    let count = seeds.len() as u64;
    for_seeds(seeds, failover_seed);
    eprintln!(
        "{} of {count} failovers too slow to check the live holders",
        FAILOVERS_TOO_SLOW.load(std::sync::atomic::Ordering::Relaxed)
    );
    // Most failovers are fast enough for the promise to be checked.
    let slow = FAILOVERS_TOO_SLOW.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        slow * 10 <= count,
        "{slow} of {count} failovers were too slow to check the live holders"
    );
}

/// etcd#9888: a lease must not outlive its holder just because leaders
/// keep changing. A holder takes a 500 ms lease and dies; the cluster then
/// changes leader every 300 ms, less than the 612 ms a takeover re-arms a
/// lease for. The lease is re-armed from the first leader change after it
/// was last served, not at every takeover, so the resource frees.
fn flapping_seed(seed: u64) {
    let mut sim = Sim::new(seed, 3, 0);
    sim.settle(5_000 + GRACE_MS);
    let leader = sim.leader().expect("a leader");
    let granted = sim
        .probe_acquire(leader, "dead", 500)
        .unwrap_or_else(|| panic!("seed {seed}: the first grant"));
    let mut freed = None;
    while sim.real_ms < granted + 4_000 {
        if let Some(i) = sim.leader() {
            let local = sim.nodes[i].local(sim.real_ms);
            sim.nodes[i]
                .core
                .as_mut()
                .expect("up")
                .force_new_term(local)
                .expect("new term");
            sim.pump(i);
        }
        let Some(i) = (0..sim.nodes.len()).find(|&i| sim.nodes[i].core.is_some()) else {
            sim.run_ms(300);
            continue;
        };
        // A different holder (probe ids differ per call) tries.
        if let Some(at) = sim.probe_acquire(i, "dead", 300) {
            freed = Some(at);
            break;
        }
    }
    let freed = freed.unwrap_or_else(|| {
        panic!(
            "seed {seed}: a dead holder's lease outlived {} ms of leader changes",
            sim.real_ms - granted
        )
    });
    assert!(
        freed >= granted + 490,
        "seed {seed}: S2: freed {} ms after a 500 ms grant",
        freed - granted
    );
    sim.check();
}

#[test]
fn a_dead_holders_lease_expires_while_leaders_keep_changing() {
    for_seeds(seeds(20, 300), flapping_seed);
}

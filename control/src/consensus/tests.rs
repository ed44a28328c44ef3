//! Tests of the consensus core, driven without threads, sockets or disk.

use super::*;
use crate::raftlog::RaftLog;

fn config() -> CoreConfig {
    CoreConfig {
        id: 1,
        voters: vec![1],
        tick_ms: 10,
        election_ticks: 10,
        grace_ms: 1_000,
        max_drift_ppm: 10_000,
        replicated: false,
    }
}

#[test]
fn a_follower_campaigns_only_after_its_peers_leases_ran_out() {
    for election_ticks in [3, 10, 20] {
        let (min, max) = election_timeout_range(election_ticks);
        assert!(min > election_ticks, "past the check-quorum lease");
        assert!(max > min + 1, "still randomized");
        for i in 0..50 {
            let core = ControlCore::new(
                CoreConfig {
                    id: 1 + i % 3,
                    voters: vec![1, 2, 3],
                    election_ticks,
                    ..config()
                },
                Restored::default(),
            )
            .expect("core");
            let drawn = core.election_timeout_drawn();
            assert!((min..max).contains(&drawn), "{drawn} not in {min}..{max}");
        }
    }
}

#[test]
fn a_single_node_leads_confirms_and_grants_after_its_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut restored = Restored::from(recovered);
    restored.hard_state.term = 1; // somebody led before
    let mut core = ControlCore::new(config(), restored).expect("core");
    core.campaign(100).expect("campaign");
    core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    core.request_confirmation(100);
    core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    let view = core.leadership().expect("view");
    assert_eq!(view.grants_until_ms, 0, "no serving before the takeover");
    let takeover = core.poll_takeover(100).expect("takes over");
    assert_eq!(
        takeover.adopted(),
        vec![],
        "nothing is installed without replication"
    );
    assert!(core.poll_takeover(100).is_none(), "once per term");
    let view = core.leadership().expect("view");
    assert_eq!(view.role, Role::Leader);
    assert_eq!(view.epoch, 2);
    assert_eq!(view.grants_from_ms, 1_100, "grace after becoming leader");
    // (10 - 1) ticks of 10 ms, shortened by 1 % drift.
    assert_eq!(view.grants_until_ms, 100 + 89);
    assert!(view.check_grant(1_099).is_err());
    // Without further confirmation rounds the leadership lapses.
    assert!(view.check_grant(1_200).is_err());
    core.tick(1_150);
    core.poll_ready(&mut log, 1_150, &mut |_| {})
        .expect("ready");
    let view = core.leadership().expect("view");
    assert!(view.check_grant(1_200).is_ok());
    assert_eq!(core.elections(), Elections { started: 1, won: 1 });
}

#[test]
fn messages_peers_never_send_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut cfg = config();
    cfg.voters = vec![1, 2, 3];
    let mut core = ControlCore::new(cfg, recovered.into()).expect("core");
    let last = core.raw.raft.raft_log.last_index();
    // A forged proposal would append an entry (or be forwarded).
    let mut propose = Message::default();
    propose.set_msg_type(MessageType::MsgPropose);
    propose.from = 2;
    propose.to = 1;
    propose.set_entries(vec![Entry::default()].into());
    core.step(propose, 0).expect("dropped, not an error");
    // A heartbeat committing past our log makes raft-rs panic.
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = 2;
    heartbeat.to = 1;
    heartbeat.term = 5;
    heartbeat.commit = last + 100;
    core.step(heartbeat, 0).expect("dropped, not a panic");
    core.poll_ready(&mut log, 0, &mut |_| {}).expect("ready");
    assert_eq!(core.raw.raft.raft_log.last_index(), last);
    assert_eq!(
        core.raw.raft.term, 0,
        "nothing from the forged messages was taken"
    );
}

#[test]
fn a_second_election_owes_grace_even_on_a_fresh_log() {
    // Three voters, the first election split: node 1 wins only in
    // term 2, where a term-1 leader may have granted.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut cfg = config();
    cfg.voters = vec![1, 2, 3];
    let mut core = ControlCore::new(cfg, recovered.into()).expect("core");
    core.raw.raft.become_candidate(); // term 1: no majority
    core.observe(20);
    core.raw.raft.become_candidate(); // term 2
    core.observe(40);
    assert_eq!(core.raw.raft.term, 2);
    assert_eq!(core.elections(), Elections { started: 2, won: 0 });
    core.raw.raft.become_leader();
    core.observe(60);
    assert_eq!(core.elections(), Elections { started: 2, won: 1 });
    assert_eq!(core.leadership().expect("view").grants_from_ms, 1_060);
}

#[test]
fn the_first_term_needs_no_grace_and_a_restart_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
        let mut core = ControlCore::new(config(), recovered.into()).expect("core");
        core.campaign(100).expect("campaign");
        core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
        assert_eq!(core.leadership().expect("view").grants_from_ms, 100);
    }
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(recovered.hard_state.term, 1, "the term survived");
    let mut core = ControlCore::new(config(), recovered.into()).expect("core");
    core.campaign(500).expect("campaign");
    core.poll_ready(&mut log, 500, &mut |_| {}).expect("ready");
    let view = core.leadership().expect("view");
    assert_eq!(view.epoch, 2, "S1: a restart leads in a higher term");
    assert_eq!(view.grants_from_ms, 1_500);
}

#[test]
fn compaction_rewrites_the_log_and_keeps_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = ControlCore::new(config(), recovered.into()).expect("core");
    core.campaign(0).expect("campaign");
    core.poll_ready(&mut log, 0, &mut |_| {}).expect("ready");
    assert!(core.compaction(log.entries_written(), 100).is_none());
    let (snapshot, hard_state, rest) = core.compaction(101, 100).expect("compacts");
    assert_eq!(snapshot.get_metadata().index, core.commit_index());
    assert!(rest.iter().all(|e| e.index > snapshot.get_metadata().index));
    log.compact(&snapshot, &hard_state, &rest).expect("rewrite");
    drop(log);
    let (_, after) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    assert_eq!(after.hard_state.term, hard_state.term);
    assert_eq!(
        after.snapshot.expect("snapshot").get_metadata().index,
        snapshot.get_metadata().index
    );
    // The compacted log restarts a working node in a higher term.
    let (mut log2, again) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = ControlCore::new(config(), again.into()).expect("core");
    core.campaign(10).expect("campaign");
    core.poll_ready(&mut log2, 10, &mut |_| {}).expect("ready");
    assert_eq!(core.leadership().expect("view").epoch, 2);
}

fn replicated() -> CoreConfig {
    CoreConfig {
        replicated: true,
        ..config()
    }
}

fn name(resource: &str) -> LeaseName {
    LeaseName::new("default", resource)
}

fn grant(resource: &str, token: u64, ttl_ms: u32) -> Command {
    Command::Grant {
        name: name(resource),
        token,
        holder: 42,
        ttl_ms,
        lock_delay_ms: 0,
    }
}

/// A single node that has led and taken over at `now`.
fn leading(log: &mut RaftLog, restored: Restored, now: u64) -> ControlCore {
    let mut core = ControlCore::new(replicated(), restored).expect("core");
    core.campaign(now).expect("campaign");
    core.poll_ready(log, now, &mut |_| {}).expect("ready");
    core.request_confirmation(now);
    core.poll_ready(log, now, &mut |_| {}).expect("ready");
    core
}

/// A grant proposed before this leadership serves is refused at once and
/// never logged.
fn assert_an_early_grant_is_refused(core: &mut ControlCore, epoch: u32) {
    core.propose(vec![Proposal {
        tag: 1,
        epoch,
        command: grant("early", u64::from(epoch) << 32 | 1, 1_000),
    }]);
    assert_eq!(
        core.take_notices(),
        vec![Notice {
            tag: 1,
            committed: false
        }]
    );
}

#[test]
fn a_begun_takeover_serves_only_once_installed_and_only_in_its_leadership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = leading(&mut log, recovered.into(), 100);
    let epoch = core.term() as u32;
    let takeover = core.begin_takeover(100).expect("due");
    assert_eq!(takeover.epoch, epoch);
    assert!(
        core.begin_takeover(150).is_none(),
        "handed out once per term"
    );
    assert!(
        core.poll_takeover(150).is_none(),
        "nor by the one-step call"
    );
    // While the shell installs: no serving, no grants in the view, and
    // proposals refused.
    assert!(!core.serving());
    assert_eq!(core.leadership().expect("view").grants_until_ms, 0);
    assert_an_early_grant_is_refused(&mut core, epoch);
    assert!(core.takeover_installed(&takeover));
    assert!(core.serving());
    assert!(core.leadership().expect("view").grants_until_ms > 0);
    assert_eq!(core.leadership().expect("view").grants_from_ms, 100);
    assert!(!core.takeover_installed(&takeover), "once");

    // A takeover whose leadership ended before it was installed is not
    // served; the next leadership begins its own.
    let stale = {
        core.force_new_term(200).expect("new term");
        core.poll_ready(&mut log, 200, &mut |_| {}).expect("ready");
        core.request_confirmation(200);
        core.poll_ready(&mut log, 200, &mut |_| {}).expect("ready");
        core.begin_takeover(200).expect("due in the new term")
    };
    assert!(!core.serving());
    core.force_new_term(300).expect("another term");
    core.poll_ready(&mut log, 300, &mut |_| {}).expect("ready");
    core.request_confirmation(300);
    core.poll_ready(&mut log, 300, &mut |_| {}).expect("ready");
    assert!(!core.takeover_installed(&stale), "its leadership ended");
    assert!(!core.serving());
    let fresh = core.begin_takeover(300).expect("this term's own");
    assert!(fresh.epoch > stale.epoch);
    assert!(core.takeover_installed(&fresh));
    assert!(core.serving());
}

#[test]
fn grants_are_answered_once_committed_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = leading(&mut log, recovered.into(), 100);
    let epoch = core.term() as u32;
    // Not taken over yet: refused, never logged.
    assert_an_early_grant_is_refused(&mut core, epoch);
    let takeover = core.poll_takeover(100).expect("takes over");
    assert!(takeover.is_empty());
    let view = core.leadership().expect("view");
    assert_eq!(
        view.grants_from_ms, 100,
        "the cluster's first term owes no grace"
    );
    // The log vouches for every live lease from here on.
    core.maintain(100);
    core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    assert_eq!(core.leases().replicated_since(), Some(core.term()));
    let token = u64::from(epoch) << 32 | 1;
    core.propose(vec![
        Proposal {
            tag: 2,
            epoch,
            command: grant("disk0", token, 10_000),
        },
        Proposal {
            tag: 3,
            epoch: epoch - 1,
            command: grant("stale", 9, 10_000),
        },
    ]);
    assert_eq!(
        core.take_notices(),
        vec![Notice {
            tag: 3,
            committed: false
        }],
        "a proposal of another epoch is refused at once"
    );
    assert!(core.leases().is_empty(), "not applied before commit");
    core.poll_ready(&mut log, 110, &mut |_| {}).expect("ready");
    assert_eq!(
        core.take_notices(),
        vec![Notice {
            tag: 2,
            committed: true
        }]
    );
    assert_eq!(
        core.leases().get(&name("disk0")).map(|r| r.token),
        Some(token)
    );
    drop(core);
    drop(log);

    // Restart: the log rebuilds the lease state, and the takeover
    // re-arms it: (ttl + election timeout) x 1.01 / 0.99, rounded up.
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let mut core = leading(&mut log, recovered.into(), 5_000);
    assert!(
        core.term() > u64::from(epoch),
        "S1: a restart leads in a higher term"
    );
    let takeover = core.poll_takeover(5_000).expect("takes over");
    assert_eq!(
        core.leadership().expect("view").grants_from_ms,
        5_000,
        "no grace: every live lease is installed"
    );
    assert_eq!(takeover.len(), 1);
    let adopted = &takeover.adopted()[0];
    assert_eq!(adopted.name, name("disk0"));
    assert_eq!(adopted.record.token, token);
    assert_eq!(adopted.record.holder, 42);
    assert_eq!(core.rearm_ms(10_000), (10_100u64 * 101).div_ceil(99));
    assert_eq!(adopted.expires_at_ms, 5_000 + core.rearm_ms(10_000));
}

#[test]
fn without_the_marker_a_leader_owes_the_grace_once() {
    // A log from a version (or a leader) without replication: leases
    // may be live that it does not hold.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut restored = Restored::from(recovered);
    restored.hard_state.term = 4;
    let mut core = leading(&mut log, restored, 100);
    core.poll_takeover(100).expect("takes over");
    assert_eq!(core.leadership().expect("view").grants_from_ms, 1_100);
    core.maintain(1_099);
    core.poll_ready(&mut log, 1_099, &mut |_| {})
        .expect("ready");
    assert_eq!(
        core.leases().replicated_since(),
        None,
        "not before the grace ends"
    );
    core.maintain(1_100);
    core.poll_ready(&mut log, 1_100, &mut |_| {})
        .expect("ready");
    assert_eq!(core.leases().replicated_since(), Some(5));
    drop(core);
    drop(log);
    // Restarted without replication: the marker is withdrawn before
    // this leader serves anything the log will not see.
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let mut core = ControlCore::new(config(), recovered.into()).expect("core");
    core.campaign(2_000).expect("campaign");
    core.poll_ready(&mut log, 2_000, &mut |_| {})
        .expect("ready");
    assert!(core.poll_takeover(2_000).is_none(), "marker first");
    core.poll_ready(&mut log, 2_000, &mut |_| {})
        .expect("ready");
    assert_eq!(core.leases().replicated_since(), None);
    assert!(core.poll_takeover(2_000).is_some());
    drop(core);
    drop(log);
    // With replication again: the grace once more.
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let mut core = leading(&mut log, recovered.into(), 3_000);
    core.poll_takeover(3_000).expect("takes over");
    assert_eq!(core.leadership().expect("view").grants_from_ms, 4_000);
}

#[test]
fn a_used_up_epoch_moves_a_single_node_to_a_new_term_with_its_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = leading(&mut log, recovered.into(), 100);
    core.poll_takeover(100).expect("takes over");
    core.maintain(100);
    let epoch = core.term() as u32;
    core.propose(vec![Proposal {
        tag: 1,
        epoch,
        command: grant("hot", u64::from(epoch) << 32 | u64::from(u32::MAX), 10_000),
    }]);
    core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    core.force_new_term(200).expect("new term");
    core.poll_ready(&mut log, 200, &mut |_| {}).expect("ready");
    assert_eq!(core.term(), u64::from(epoch) + 1);
    assert_eq!(core.raft_state(), StateRole::Leader);
    let takeover = core.poll_takeover(200).expect("takes over again");
    assert_eq!(takeover.epoch, epoch + 1);
    assert_eq!(takeover.len(), 1, "the lease survives the change");
    assert_eq!(
        core.leadership().expect("view").grants_from_ms,
        200,
        "no grace: the log vouches for every lease"
    );
}

#[test]
fn a_used_up_epoch_hands_a_cluster_to_the_most_caught_up_follower() {
    let (_dirs, mut nodes) = three_cores();
    let deliver = |nodes: &mut Vec<(ControlCore, RaftLog)>, now: u64| {
        deliver_but(nodes, now, &mut |_| false);
    };
    nodes[0].0.campaign(0).expect("campaign");
    deliver(&mut nodes, 0);
    assert_eq!(nodes[0].0.raft_state(), StateRole::Leader);
    let term = nodes[0].0.term();
    nodes[0].0.force_new_term(10).expect("transfer");
    deliver(&mut nodes, 10);
    let leader = nodes
        .iter()
        .position(|(c, _)| c.raft_state() == StateRole::Leader)
        .expect("a leader");
    assert_ne!(leader, 0, "leadership moved");
    assert_eq!(nodes[leader].0.term(), term + 1, "a new epoch, at once");
}

#[test]
fn a_compacted_log_carries_the_lease_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = leading(&mut log, recovered.into(), 100);
    core.poll_takeover(100).expect("takes over");
    let epoch = core.term() as u32;
    for i in 1..=5u64 {
        core.propose(vec![Proposal {
            tag: i,
            epoch,
            command: grant(&format!("r{i}"), u64::from(epoch) << 32 | i, 1_000),
        }]);
        core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    }
    core.propose(vec![Proposal {
        tag: 9,
        epoch,
        command: Command::Release {
            name: name("r2"),
            token: u64::from(epoch) << 32 | 2,
        },
    }]);
    core.poll_ready(&mut log, 100, &mut |_| {}).expect("ready");
    assert_eq!(core.leases().len(), 4);
    let (snapshot, hard_state, rest) = core.compaction(101, 100).expect("compacts");
    assert_eq!(
        LeaseState::decode(snapshot.get_data()).expect("decodes").1,
        core.leases().clone()
    );
    log.compact(&snapshot, &hard_state, &rest).expect("rewrite");
    let before = core.leases().clone();
    drop(core);
    drop(log);
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let core = leading(&mut log, recovered.into(), 200);
    assert_eq!(core.leases(), &before);
}

#[test]
fn a_compaction_encodes_the_state_at_its_start_while_grants_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut core = leading(&mut log, recovered.into(), 100);
    core.poll_takeover(100).expect("takes over");
    let epoch = core.term() as u32;
    let token = |i: u64| u64::from(epoch) << 32 | i;
    let propose = |core: &mut ControlCore, log: &mut RaftLog, tag: u64, command: Command| {
        core.propose(vec![Proposal {
            tag,
            epoch,
            command,
        }]);
        core.poll_ready(log, 100, &mut |_| {}).expect("ready");
    };
    for i in 1..=3u64 {
        propose(
            &mut core,
            &mut log,
            i,
            grant(&format!("r{i}"), token(i), 1_000),
        );
    }
    let at_start = core.leases().clone();
    let first_before = core.raw.raft.raft_log.first_index();
    let start = core.compaction_start(101, 100).expect("due");
    let writer = log.begin_compaction();
    assert_eq!(start.index(), core.commit_index());
    // Nothing is compacted yet: raft's memory keeps every entry.
    assert_eq!(core.raw.raft.raft_log.first_index(), first_before);
    // The core goes on while another thread encodes and writes.
    propose(&mut core, &mut log, 4, grant("r4", token(4), 1_000));
    propose(
        &mut core,
        &mut log,
        5,
        Command::Release {
            name: name("r1"),
            token: token(1),
        },
    );
    let (snapshot, written) = std::thread::spawn(move || {
        let snapshot = start.snapshot();
        let written = writer
            .write(&snapshot, &start.hard_state, &start.rest)
            .expect("written");
        (snapshot, written)
    })
    .join()
    .expect("compaction thread");
    assert_eq!(
        LeaseState::decode(snapshot.get_data()).expect("decodes").1,
        at_start,
        "the snapshot holds the state when the compaction started"
    );
    assert_ne!(core.leases(), &at_start);
    let index = snapshot.get_metadata().index;
    log.finish_compaction(written).expect("finish");
    core.compaction_done(snapshot);
    assert_eq!(core.raw.raft.raft_log.first_index(), index);
    // An older snapshot never replaces the one held.
    let older = core.compaction(101, 100).expect("due");
    let mut stale = Snapshot::default();
    stale.mut_metadata().index = index - 1;
    core.compaction_done(stale);
    assert_eq!(
        core.raw
            .raft
            .raft_log
            .store
            .snapshot(0, 0)
            .expect("held")
            .get_metadata()
            .index,
        older.0.get_metadata().index
    );
    log.compact(&older.0, &older.1, &older.2).expect("rewrite");
    let after = core.leases().clone();
    assert_eq!(after.len(), 3);
    drop(core);
    drop(log);
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("reopen");
    let core = leading(&mut log, recovered.into(), 200);
    assert_eq!(core.leases(), &after);
}

#[test]
fn losing_leadership_fails_what_is_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, recovered) = RaftLog::open(dir.path(), "c", 1, false).expect("open");
    let mut cfg = replicated();
    cfg.voters = vec![1, 2, 3];
    let mut core = ControlCore::new(cfg, recovered.into()).expect("core");
    core.raw.raft.become_candidate();
    core.raw.raft.become_leader();
    core.observe(10);
    let epoch = core.term() as u32;
    assert!(
        core.poll_takeover(10).is_none(),
        "its term has no commit yet"
    );
    core.poll_ready(&mut log, 10, &mut |_| {}).expect("ready");
    // Node 2 acknowledges the term's first entry: a quorum.
    let mut ack = Message::default();
    ack.set_msg_type(MessageType::MsgAppendResponse);
    ack.from = 2;
    ack.to = 1;
    ack.term = core.term();
    ack.index = core.last_index();
    core.step(ack, 10).expect("step");
    core.poll_ready(&mut log, 10, &mut |_| {}).expect("ready");
    assert!(core.poll_takeover(10).is_some());
    core.propose(vec![Proposal {
        tag: 5,
        epoch,
        command: grant("r", u64::from(epoch) << 32 | 1, 1_000),
    }]);
    assert!(core.take_notices().is_empty(), "in flight: no quorum yet");
    core.raw.raft.become_follower(core.term() + 1, 2);
    core.observe(20);
    assert_eq!(
        core.take_notices(),
        vec![Notice {
            tag: 5,
            committed: false
        }]
    );
    assert!(!core.serving());
}

/// Three replicated cores wired in memory, and the directories of their
/// logs (kept while they live).
fn three_cores() -> (Vec<tempfile::TempDir>, Vec<(ControlCore, RaftLog)>) {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let nodes = (1..=3u64)
        .map(|id| {
            let (log, recovered) =
                RaftLog::open(dirs[id as usize - 1].path(), "c", id as u16, false).expect("open");
            let mut cfg = replicated();
            cfg.id = id;
            cfg.voters = vec![1, 2, 3];
            (ControlCore::new(cfg, recovered.into()).expect("core"), log)
        })
        .collect();
    (dirs, nodes)
}

/// Hands every message on until none is left, except those `lose` takes.
fn deliver_but(
    nodes: &mut [(ControlCore, RaftLog)],
    now: u64,
    lose: &mut dyn FnMut(&Message) -> bool,
) {
    deliver(nodes, now, &mut |m| {
        if lose(&m) {
            Delivery::Lost
        } else {
            Delivery::Step(m)
        }
    });
}

/// What becomes of one message in [`deliver`].
enum Delivery {
    Lost,
    Step(Message),
    /// Stepped with a lease state decoded ahead.
    Decoded(Message, DecodedSnapshot),
}

/// Hands every message on as `route` says until none is left.
fn deliver(
    nodes: &mut [(ControlCore, RaftLog)],
    now: u64,
    route: &mut dyn FnMut(Message) -> Delivery,
) {
    for _ in 0..50 {
        let mut mail = Vec::new();
        for (core, log) in nodes.iter_mut() {
            let mut early = Vec::new();
            let out = core
                .poll_ready(log, now, &mut |m| early.extend(m))
                .expect("ready");
            mail.extend(early);
            mail.extend(out);
        }
        if mail.is_empty() {
            return;
        }
        for message in mail {
            let to = message.to as usize - 1;
            match route(message) {
                Delivery::Lost => {}
                Delivery::Step(m) => nodes[to].0.step(m, now).expect("step"),
                Delivery::Decoded(m, decoded) => {
                    nodes[to].0.step_decoded(m, decoded, now).expect("step");
                }
            }
        }
    }
}

/// Three cores whose leader granted 20 leases while node 3 heard nothing,
/// and then compacted its log: node 3 can only catch up by a snapshot.
fn node_3_behind_a_compaction() -> (Vec<tempfile::TempDir>, Vec<(ControlCore, RaftLog)>) {
    let (dirs, mut nodes) = three_cores();
    nodes[0].0.campaign(0).expect("campaign");
    deliver_but(&mut nodes, 0, &mut |_| false);
    assert_eq!(nodes[0].0.raft_state(), StateRole::Leader);
    nodes[0].0.poll_takeover(0).expect("takes over");
    let epoch = nodes[0].0.term() as u32;
    // Node 3 hears nothing while the leader grants and compacts its log.
    let cut = |m: &Message| m.to == 3 || m.from == 3;
    for i in 1..=20u64 {
        nodes[0].0.propose(vec![Proposal {
            tag: i,
            epoch,
            command: grant(&format!("r{i}"), u64::from(epoch) << 32 | i, 60_000),
        }]);
        deliver_but(&mut nodes, 10, &mut |m| cut(m));
    }
    assert_eq!(nodes[0].0.leases().len(), 20);
    let (leader, log) = &mut nodes[0];
    let (snapshot, hard_state, rest) = leader.compaction(1_000, 1).expect("compacts");
    if log.has_pending() {
        log.sync().expect("sync");
    }
    log.compact(&snapshot, &hard_state, &rest).expect("rewrite");
    (dirs, nodes)
}

#[test]
fn a_follower_whose_snapshot_was_lost_is_sent_it_again() {
    let (_dirs, mut nodes) = node_3_behind_a_compaction();
    // Node 3 is back, and the first snapshot sent to it is lost.
    let mut lost = 0;
    let mut now = 10;
    while now < 10 + 4 * SNAPSHOT_PATIENCE_MS && nodes[2].0.leases().len() < 20 {
        now += 10;
        for (core, _) in nodes.iter_mut() {
            core.tick(now);
        }
        deliver_but(&mut nodes, now, &mut |m| {
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if snapshot && lost == 0 {
                lost += 1;
                return true;
            }
            false
        });
    }
    assert_eq!(lost, 1, "a snapshot was sent, and lost");
    assert_eq!(nodes[0].0.snapshots_resent(), 1);
    assert_eq!(
        nodes[2].0.leases(),
        nodes[0].0.leases(),
        "the follower has the lease state"
    );
    assert!(
        now >= 10 + SNAPSHOT_PATIENCE_MS,
        "not before the patience ran out"
    );
}

#[test]
fn a_follower_installs_the_state_decoded_ahead_for_its_snapshot_and_no_other() {
    // A stand-in state, so the test sees which state was installed.
    let mut decoy = LeaseState::new();
    decoy.apply(&grant("decoy", 7, 1_000), 1);
    for same_snapshot in [true, false] {
        let (_dirs, mut nodes) = node_3_behind_a_compaction();
        let mut decoded_ahead = 0;
        let mut now = 10;
        while now < 10 + 4 * SNAPSHOT_PATIENCE_MS && nodes[2].0.leases().len() < 20 {
            now += 10;
            for (core, _) in nodes.iter_mut() {
                core.tick(now);
            }
            deliver(&mut nodes, now, &mut |m| {
                if m.get_msg_type() != MessageType::MsgSnapshot {
                    return Delivery::Step(m);
                }
                decoded_ahead += 1;
                let mut other = m.get_snapshot().clone();
                other.set_data(decoy.encode(GROUP_DEFAULT).into());
                if !same_snapshot {
                    other.mut_metadata().index -= 1;
                }
                Delivery::Decoded(m, DecodedSnapshot::of(&other))
            });
            if decoded_ahead > 0 && same_snapshot {
                break;
            }
        }
        assert_eq!(decoded_ahead, 1, "one snapshot was sent");
        let installed = nodes[2].0.leases();
        if same_snapshot {
            assert_eq!(installed, &decoy, "the state decoded ahead is installed");
        } else {
            assert_eq!(
                installed,
                nodes[0].0.leases(),
                "a state decoded for another snapshot is not: the follower decodes its own"
            );
        }
    }
}

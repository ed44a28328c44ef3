//! Deterministic simulation of replicated leases
//! (`leases.replication = "quorum"`): real `ControlCore`s and, on every node,
//! the real request service (`RequestService::handle`) over a real lease table,
//! driven by simulated clients over a simulated network, with drifting
//! clocks, lossy links, partitions, pauses, fsync failures, crash-restarts
//! that lose unsynced writes (at chosen points of a grant's life: before its
//! entry is appended, after the local append, after the commit before the
//! answer), log compaction and snapshot installs.
//!
//! Clients acquire, renew (a third of the ttl), release, retry with the same
//! holder id after a timeout, follow redirects, and some die holding a lease.
//! Each client computes its lease's validity as PROTOCOL.md says, on its own
//! drifting clock, and the checker asserts over what clients believed:
//!
//! - S1: per resource, the tokens of successive leases strictly increase;
//! - S2: the real-time intervals in which two clients believed they held
//!   the same resource under different tokens never overlap;
//!
//! and liveness: after the faults stop, a free resource is granted, and in
//! a leader crash shorter than `ttl - renew interval` no live holder loses
//! its lease or its token, and a free resource is granted within a few
//! milliseconds of the new leader's takeover.
//!
//! A failing seed is printed and replays exactly:
//! `PALISADE_SIM_SEED=<seed> cargo test -p palisade-control --test sim_leases`.

mod simulation;

use std::collections::{BTreeMap, BTreeSet};

use palisade_control::consensus::{CompactionStart, ControlCore, CoreConfig, CoreError};
use palisade_control::leases::{self, Tenants};
use palisade_dataplane::leadership::Leadership;
use palisade_dataplane::replica::{Notice, Proposal};
use palisade_dataplane::service::{
    Conn, Outcome, Phase, RequestMeta, RequestService, ServiceConfig, Tenant,
};
use palisade_dataplane::table::{KeyHasher, LeaseKey, LeaseTable};
use palisade_proto::frame::decode_frame;
use palisade_proto::{
    access_request, encode_request, Decoded, ErrorCode, FrameBuf, Request, Response,
};
use raft::eraftpb::Message;
use simulation::{Disk, Rng};

const TICK_MS: u64 = 10;
const ELECTION_TICKS: usize = 10;
const ELECTION_MS: u64 = TICK_MS * ELECTION_TICKS as u64;
const MAX_TTL_MS: u32 = 1_000;
const MAX_DRIFT_PPM: u32 = 10_000;
/// (max_ttl + election_timeout) x (1 + drift): owed once, by a leader that
/// finds no replication marker in the log (a first term that was split).
const GRACE_MS: u64 = (MAX_TTL_MS as u64 + ELECTION_MS) * 101 / 100 + 1;
/// Entries between compactions: small, so that snapshots are sent.
const SNAPSHOT_ENTRIES: u64 = 40;
/// A compaction's file is written (on the node's own thread) within this.
const COMPACTION_WRITE_MAX_MS: u64 = 300;
/// Resources the clients contend for.
const RESOURCES: usize = 3;
/// A client gives up on an answer after this long (real ms).
const REQUEST_TIMEOUT_MS: u64 = 120;
/// Nodes compare the replicated state with their table this often.
const PRUNE_EVERY_MS: u64 = 50;

// ---------------------------------------------------------------- nodes

struct Pending {
    client: usize,
    request_id: u64,
    reply: Response,
    key: LeaseKey,
    token: u64,
    undo_grant: bool,
    confirm: bool,
}

/// A node's data plane: the real request service over a real table.
struct Plane {
    shared: RequestService,
    conns: BTreeMap<usize, Conn>,
    pending: BTreeMap<u64, Pending>,
    next_tag: u64,
    next_prune_local: u64,
}

struct Node {
    id: u64,
    core: Option<ControlCore>,
    plane: Option<Plane>,
    disk: Disk,
    /// A compaction in flight and the local time its file is written (the
    /// node encodes and writes it on another thread meanwhile).
    compaction: Option<(CompactionStart, u64)>,
    rate_ppm: u64,
    clock_offset_ms: u64,
    next_tick_local_ms: u64,
    paused_until: u64,
    down_until: Option<u64>,
    /// Boots so far: a request sent to an earlier incarnation died with
    /// its connection.
    incarnation: u64,
}

impl Node {
    fn local(&self, real_ms: u64) -> u64 {
        self.clock_offset_ms + real_ms * self.rate_ppm / 1_000_000
    }
}

// ---------------------------------------------------------------- clients

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acquire,
    Renew,
    Release,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    request_id: u64,
    kind: Kind,
    send_local: u64,
    deadline_real: u64,
}

#[derive(Clone, Debug)]
struct Lease {
    resource: usize,
    token: u64,
    ttl_ms: u32,
    valid_until_local: u64,
    next_renew_local: u64,
    /// Index of this lease's interval in the history.
    record: usize,
}

struct Client {
    rate_ppm: u64,
    clock_offset_ms: u64,
    holder: u64,
    target: usize,
    next_request_id: u64,
    inflight: Option<Inflight>,
    /// The resource an acquire is for (kept across retries, with the
    /// holder id).
    wanted: Option<(usize, u32)>,
    lease: Option<Lease>,
    /// Dead: holds whatever it holds and never speaks until this real time.
    dead_until: u64,
    next_action_local: u64,
    /// Renewing holders never release and must never lose their lease
    /// (the failover test).
    keeper: bool,
}

impl Client {
    fn local(&self, real_ms: u64) -> u64 {
        self.clock_offset_ms + real_ms * self.rate_ppm / 1_000_000
    }
    /// The real time at which this client's clock reads `local`.
    fn real(&self, local: u64) -> u64 {
        (local.saturating_sub(self.clock_offset_ms) * 1_000_000).div_ceil(self.rate_ppm)
    }
}

/// What one client believed: it held `token` on `resource` from `from` to
/// `to` (real ms).
#[derive(Clone, Debug)]
struct Held {
    resource: usize,
    token: u64,
    client: usize,
    from: u64,
    to: u64,
}

// ---------------------------------------------------------------- network

enum Payload {
    Raft(Message),
    Request {
        client: usize,
        node: usize,
        incarnation: u64,
        request_id: u64,
        request: Request,
    },
    Response {
        client: usize,
        request_id: u64,
        response: Response,
    },
}

struct Flight {
    deliver_at: u64,
    seq: u64,
    payload: Payload,
}

// ---------------------------------------------------------------- the sim

struct Sim {
    rng: Rng,
    seed: u64,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    flights: Vec<Flight>,
    seq: u64,
    cut: BTreeMap<(u64, u64), bool>,
    loss_per_mille: u64,
    delay_max_ms: u64,
    real_ms: u64,
    history: Vec<Held>,
    /// Crash a leader right after one of its grant's stages, by chance.
    crash_points: bool,
    /// Leases a client lost while it was a keeper (failover test).
    keeper_losses: Vec<String>,
    /// (real ms, epoch) of every takeover.
    takeovers: Vec<(u64, u32)>,
    /// Real ms at which each resource name (a probe's) was first granted.
    probe_grants: BTreeMap<String, u64>,
}

fn config(id: u64, voters: &[u64]) -> CoreConfig {
    CoreConfig {
        id,
        voters: voters.to_vec(),
        tick_ms: TICK_MS,
        election_ticks: ELECTION_TICKS,
        grace_ms: GRACE_MS,
        max_drift_ppm: MAX_DRIFT_PPM,
        replicated: true,
    }
}

fn trace() -> bool {
    std::env::var_os("PALISADE_SIM_TRACE").is_some()
}

fn tenants() -> Tenants {
    [("default".to_string(), 0)].into()
}

fn resource_name(resource: usize) -> String {
    format!("r{resource}")
}

impl Sim {
    fn new(seed: u64, size: u64, clients: usize) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut nodes = Vec::new();
        for id in 1..=size {
            // Rates within half the drift bound of real time, so any two
            // clocks differ by less than max_drift.
            let rate_ppm = 995_100 + rng.below(9_801);
            let clock_offset_ms = rng.below(10_000);
            nodes.push(Node {
                id,
                core: None,
                plane: None,
                disk: Disk::default(),
                compaction: None,
                rate_ppm,
                clock_offset_ms,
                next_tick_local_ms: clock_offset_ms + rng.below(TICK_MS),
                paused_until: 0,
                down_until: None,
                incarnation: 0,
            });
        }
        let mut all = Vec::new();
        for c in 0..clients {
            all.push(Client {
                rate_ppm: 995_100 + rng.below(9_801),
                clock_offset_ms: rng.below(10_000),
                holder: 1000 + c as u64,
                target: rng.below(size) as usize,
                next_request_id: 1,
                inflight: None,
                wanted: None,
                lease: None,
                dead_until: 0,
                next_action_local: 0,
                keeper: false,
            });
        }
        let mut sim = Sim {
            rng,
            seed,
            nodes,
            clients: all,
            flights: Vec::new(),
            seq: 0,
            cut: BTreeMap::new(),
            loss_per_mille: 0,
            delay_max_ms: 3,
            real_ms: 0,
            history: Vec::new(),
            crash_points: false,
            keeper_losses: Vec::new(),
            takeovers: Vec::new(),
            probe_grants: BTreeMap::new(),
        };
        for i in 0..sim.nodes.len() {
            sim.boot(i);
        }
        sim
    }

    fn voters(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn boot(&mut self, i: usize) {
        let voters = self.voters();
        let members = voters
            .iter()
            .map(|&id| (id as u16, format!("n{id}")))
            .collect();
        let mut hash_key = [0u8; 16];
        hash_key[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        let node = &mut self.nodes[i];
        let mut core = ControlCore::new(config(node.id, &voters), node.disk.synced.clone())
            .unwrap_or_else(|e| {
                panic!("seed {}: node {} failed to start: {e}", self.seed, node.id)
            });
        let mut jitter_rng = Rng(self.rng.next() | 1);
        core.set_election_jitter(Box::new(move |min, max| {
            min + jitter_rng.below((max - min) as u64) as usize
        }));
        node.core = Some(core);
        node.plane = Some(Plane {
            shared: RequestService::new(
                LeaseTable::new(64, KeyHasher::new(hash_key)),
                Leadership::new(node.id as u16),
                vec![Tenant {
                    name: "default".into(),
                    credential: None,
                }],
                ServiceConfig {
                    node_id: node.id as u16,
                    min_ttl_ms: 10,
                    max_ttl_ms: MAX_TTL_MS,
                    lock_delay_max_ms: 200,
                    max_drift_ppm: MAX_DRIFT_PPM,
                    pending_per_connection_max: 1_000_000,
                    cores: 1,
                    start_ms: 0,
                    unix_offset_ms: 0,
                    members,
                    replicated: true,
                },
                palisade_dataplane::quota::Quotas::new(
                    1,
                    palisade_dataplane::quota::QuotaConfig::UNLIMITED,
                ),
            ),
            conns: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_tag: 1,
            next_prune_local: 0,
        });
        node.down_until = None;
        node.incarnation += 1;
    }

    fn crash(&mut self, i: usize, down_for_ms: u64) {
        if trace() {
            eprintln!(
                "{}: node {} crashes for {down_for_ms} ms",
                self.real_ms,
                i + 1
            );
        }
        let node = &mut self.nodes[i];
        node.core = None;
        node.plane = None; // Memory is lost; clients' requests go unanswered.
        node.compaction = None;
        node.disk.crash();
        node.down_until = Some(self.real_ms + down_for_ms);
    }

    fn flight(&mut self, payload: Payload) {
        if self.rng.chance(self.loss_per_mille) {
            return;
        }
        let delay = self.rng.below(self.delay_max_ms + 1);
        self.seq += 1;
        self.flights.push(Flight {
            deliver_at: self.real_ms + delay,
            seq: self.seq,
            payload,
        });
    }

    fn send_raft(&mut self, messages: Vec<Message>) {
        for message in messages {
            if self
                .cut
                .get(&(message.from, message.to))
                .copied()
                .unwrap_or(false)
            {
                continue;
            }
            self.flight(Payload::Raft(message));
        }
    }

    fn respond(&mut self, client: usize, request_id: u64, response: Response) {
        self.flight(Payload::Response {
            client,
            request_id,
            response,
        });
    }

    /// Everything a node's shell does after its core moved: persist, take
    /// over, publish, log the table's own ends, answer committed changes,
    /// send, compact. `stage` crashes it at one point when chosen.
    fn pump(&mut self, i: usize) {
        let real = self.real_ms;
        let local = self.nodes[i].local(real);
        let seed = self.seed;
        let mut early = Vec::new();
        // As the real node: answers of entries already committed and
        // persisted here go out before this node's own sync of new ones.
        let mut answered_early = Vec::new();
        let result = {
            let node = &mut self.nodes[i];
            let Some(core) = node.core.as_mut() else {
                return;
            };
            core.poll_ready_with(
                &mut node.disk,
                local,
                &mut |m| early.extend(m),
                Some(&mut |n| answered_early.extend(n)),
            )
        };
        self.answer(i, answered_early, local);
        // Crash point: after the local append (and any sync), before the
        // leader's appends reach anyone or its answers go out.
        if self.crash_points && self.is_leader(i) && self.rng.chance(1) {
            let down = 1 + self.rng.below(200);
            self.crash(i, down);
            return;
        }
        self.send_raft(early);
        let messages = match result {
            Ok(messages) => messages,
            Err(CoreError::Persist(_)) => {
                let down = 1 + self.rng.below(300);
                self.crash(i, down);
                return;
            }
            Err(e) => panic!("seed {seed}: node {}: {e}", self.nodes[i].id),
        };
        let compaction_write_ms = self.rng.below(COMPACTION_WRITE_MAX_MS + 1);
        let node = &mut self.nodes[i];
        let core = node.core.as_mut().expect("up");
        let plane = node.plane.as_mut().expect("up");
        if let Some(takeover) = core.poll_takeover(local) {
            leases::install(&plane.shared.table, &tenants(), &takeover)
                .unwrap_or_else(|e| panic!("seed {seed}: install: {e}"));
            if trace() {
                eprintln!(
                    "{real}: node {} takes over epoch {} at local {local}: {:?}",
                    node.id,
                    takeover.epoch,
                    takeover
                        .leases()
                        .map(|a| (
                            a.name.resource.clone(),
                            a.record.token,
                            a.record.ttl_ms,
                            a.expires_at_ms
                        ))
                        .collect::<Vec<_>>()
                );
            }
            self.takeovers.push((real, takeover.epoch));
        }
        core.maintain(local);
        plane
            .shared
            .leadership
            .publish(core.leadership().expect("term fits"));
        if core.serving() && local >= plane.next_prune_local {
            plane.next_prune_local = local + PRUNE_EVERY_MS;
            let epoch = core.term() as u32;
            let (ended, _) = leases::ended(
                core.leases(),
                None,
                usize::MAX,
                &plane.shared.table,
                &tenants(),
                local,
            );
            core.propose(
                ended
                    .into_iter()
                    .map(|command| Proposal {
                        tag: 0,
                        epoch,
                        command,
                    })
                    .collect(),
            );
        }
        let notices = core.take_notices();
        // Compaction needs everything queued on disk first (the real node
        // syncs); with a commit index still queued, wait for the next sync.
        // It finishes some steps later, after other batches were synced.
        if node.compaction.as_ref().is_some_and(|(_, at)| local >= *at) {
            let (start, _) = node.compaction.take().expect("in flight");
            let snapshot = start.snapshot();
            node.disk
                .finish_compaction(snapshot.clone(), start.hard_state, start.rest);
            core.compaction_done(snapshot);
        }
        if node.compaction.is_none() && node.disk.queued.is_empty() {
            if let Some(start) = core.compaction_start(node.disk.entries_written, SNAPSHOT_ENTRIES)
            {
                node.disk.begin_compaction();
                node.compaction = Some((start, local + compaction_write_ms));
            }
        }
        // Crash point: after the commit, before the answers go out.
        if self.crash_points
            && notices.iter().any(|n| n.committed && n.tag != 0)
            && self.rng.chance(30)
        {
            let down = 1 + self.rng.below(200);
            self.crash(i, down);
            return;
        }
        self.answer(i, notices, local);
        self.send_raft(messages);
    }

    /// Answers the clients whose proposals `notices` settle.
    fn answer(&mut self, i: usize, notices: Vec<Notice>, local: u64) {
        let mut replies = Vec::new();
        {
            let plane = self.nodes[i].plane.as_mut().expect("up");
            for notice in notices {
                if notice.tag == 0 {
                    continue;
                }
                let Some(pending) = plane.pending.remove(&notice.tag) else {
                    continue;
                };
                if let Some(conn) = plane.conns.get_mut(&pending.client) {
                    conn.pending = conn.pending.saturating_sub(1);
                }
                if notice.committed {
                    if pending.confirm {
                        plane.shared.table.confirm(pending.key, pending.token);
                    }
                    replies.push((pending.client, pending.request_id, pending.reply));
                } else {
                    if pending.undo_grant {
                        plane
                            .shared
                            .table
                            .release(pending.key, pending.token, local);
                    }
                    replies.push((
                        pending.client,
                        pending.request_id,
                        Response::Error {
                            code: ErrorCode::Unavailable,
                            retry_after_ms: 10,
                            message: "leadership changed before commit".into(),
                        },
                    ));
                }
            }
        }
        for (client, request_id, response) in replies {
            self.respond(client, request_id, response);
        }
    }

    fn is_leader(&self, i: usize) -> bool {
        self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.raft_state() == raft::StateRole::Leader)
    }

    /// A client's request reaches node `i`: the real request service
    /// answers it, or it waits for its commit.
    fn serve(&mut self, i: usize, client: usize, request_id: u64, request: &Request) {
        let local = self.nodes[i].local(self.real_ms);
        let mut buf = FrameBuf::new();
        encode_request(&mut buf, request_id, 0, 4096, request).expect("encodes");
        let Ok(Decoded::Frame { payload, .. }) = decode_frame(&buf, 4096) else {
            panic!("a frame we encoded decodes");
        };
        let archived = access_request(payload).expect("valid");
        let node = &mut self.nodes[i];
        let plane = node.plane.as_mut().expect("up");
        let conn = plane.conns.entry(client).or_insert_with(|| {
            let mut conn = Conn::new(0, client as u64);
            conn.phase = Phase::Ready { tenant: 0 };
            conn
        });
        let outcome = plane.shared.handle(
            conn,
            RequestMeta {
                request_id,
                group: 0,
            },
            archived,
            local,
            &mut || [0; 16],
        );
        if trace() {
            eprintln!(
                "{}: node {} (local {local}, view {:?}) serves client {client} {request:?}: {outcome:?}",
                self.real_ms,
                i + 1,
                plane.shared.leadership.load()
            );
        }
        match outcome {
            Outcome::Reply(response)
            | Outcome::ReplyAndWake(response, _)
            | Outcome::ReplyAndClose(response) => self.respond(client, request_id, response),
            Outcome::Commit(commit) => {
                // Crash point: the grant is in the table, its entry not yet
                // appended anywhere.
                if self.crash_points && self.rng.chance(20) {
                    let down = 1 + self.rng.below(200);
                    self.crash(i, down);
                    return;
                }
                let plane = self.nodes[i].plane.as_mut().expect("up");
                let tag = plane.next_tag;
                plane.next_tag += 1;
                plane.pending.insert(
                    tag,
                    Pending {
                        client,
                        request_id,
                        reply: commit.reply,
                        key: commit.key,
                        token: commit.command.token(),
                        undo_grant: commit.undo_grant,
                        confirm: commit.confirm,
                    },
                );
                self.nodes[i]
                    .core
                    .as_mut()
                    .expect("up")
                    .propose(vec![Proposal {
                        tag,
                        epoch: commit.epoch,
                        command: commit.command,
                    }]);
            }
            Outcome::Wait(_) | Outcome::Watch(_) | Outcome::List(_) => {
                panic!("the simulated clients never wait, watch or list")
            }
        }
        self.pump(i);
    }

    // ------------------------------------------------------------ clients

    fn send_request(&mut self, c: usize, kind: Kind, request: Request) {
        let real = self.real_ms;
        let client = &mut self.clients[c];
        let request_id = client.next_request_id;
        client.next_request_id += 1;
        let node = client.target;
        client.inflight = Some(Inflight {
            request_id,
            kind,
            send_local: client.local(real),
            deadline_real: real + REQUEST_TIMEOUT_MS,
        });
        let incarnation = self.nodes[node].incarnation;
        self.flight(Payload::Request {
            client: c,
            node,
            incarnation,
            request_id,
            request,
        });
    }

    fn acquire(&mut self, c: usize) {
        let (resource, ttl_ms) = self.clients[c].wanted.expect("wanted");
        let holder = self.clients[c].holder;
        self.send_request(
            c,
            Kind::Acquire,
            Request::Acquire {
                resource: resource_name(resource),
                holder,
                ttl_ms,
                lock_delay_ms: 0,
                wait_ms: 0,
            },
        );
    }

    /// The lease's validity ran out (or the server said it is gone): the
    /// client stops believing it holds it.
    fn lose(&mut self, c: usize, why: &str) {
        let Some(lease) = self.clients[c].lease.take() else {
            return;
        };
        if self.clients[c].keeper {
            self.keeper_losses.push(format!(
                "client {c} lost {} token {:#x} at {}: {why}",
                resource_name(lease.resource),
                lease.token,
                self.real_ms
            ));
        }
    }

    fn client_step(&mut self, c: usize) {
        let real = self.real_ms;
        if real < self.clients[c].dead_until {
            return;
        }
        let local = self.clients[c].local(real);
        if let Some(inflight) = self.clients[c].inflight {
            if real < inflight.deadline_real {
                return;
            }
            // No answer: try the next node of the list. An acquire is
            // retried with the same holder id (the same token if its grant
            // committed).
            self.clients[c].inflight = None;
            self.clients[c].target = (self.clients[c].target + 1) % self.nodes.len();
        }
        if let Some(lease) = self.clients[c].lease.clone() {
            if local >= lease.valid_until_local {
                self.lose(c, "its validity ran out");
                return;
            }
            if local >= lease.next_renew_local {
                self.send_request(
                    c,
                    Kind::Renew,
                    Request::Renew {
                        resource: resource_name(lease.resource),
                        token: lease.token,
                        ttl_ms: lease.ttl_ms,
                    },
                );
                return;
            }
            if !self.clients[c].keeper && self.rng.chance(5) {
                // Done with it: it stops using the resource, then releases.
                let lease = self.clients[c].lease.take().expect("held");
                self.history[lease.record].to = self.history[lease.record].to.min(real);
                self.send_request(
                    c,
                    Kind::Release,
                    Request::Release {
                        resource: resource_name(lease.resource),
                        token: lease.token,
                    },
                );
            }
            return;
        }
        if self.clients[c].wanted.is_some() {
            if local >= self.clients[c].next_action_local {
                self.acquire(c);
            }
            return;
        }
        if !self.clients[c].keeper
            && local >= self.clients[c].next_action_local
            && self.rng.chance(60)
        {
            let resource = self.rng.below(RESOURCES as u64) as usize;
            let ttl_ms = 100 + self.rng.below(400) as u32;
            // A holder id names one acquisition (kept across its retries),
            // never reused: a late release of an earlier lease on the same
            // token would otherwise end the new one (PROTOCOL.md).
            self.clients[c].holder += 1 << 20;
            self.clients[c].wanted = Some((resource, ttl_ms));
            self.acquire(c);
        }
    }

    fn client_receive(&mut self, c: usize, request_id: u64, response: Response) {
        let real = self.real_ms;
        if real < self.clients[c].dead_until {
            return;
        }
        let Some(inflight) = self.clients[c].inflight else {
            return;
        };
        if inflight.request_id != request_id {
            return; // A late answer to a request given up on.
        }
        self.clients[c].inflight = None;
        let local = self.clients[c].local(real);
        let ppm = u64::from(MAX_DRIFT_PPM);
        let valid_until = |ttl_ms: u32| {
            // PROTOCOL.md: send + ttl x (1 - drift) - 1 ms.
            (inflight.send_local + u64::from(ttl_ms) * (1_000_000 - ppm) / 1_000_000)
                .saturating_sub(1)
        };
        let retry_soon = |sim: &mut Sim, ms: u64| {
            sim.clients[c].next_action_local = local + ms;
        };
        match (inflight.kind, response) {
            (Kind::Acquire, Response::Granted { token, ttl_ms, .. }) => {
                let (resource, _) = self.clients[c].wanted.take().expect("wanted");
                let until = valid_until(ttl_ms);
                if trace() {
                    eprintln!(
                        "{real}: client {c} granted r{resource} {token:#x} ttl {ttl_ms} until {} (asked at local {}, real {})",
                        self.clients[c].real(until),
                        inflight.send_local,
                        self.clients[c].real(inflight.send_local)
                    );
                }
                let record = self.history.len();
                self.history.push(Held {
                    resource,
                    token,
                    client: c,
                    from: real,
                    to: self.clients[c].real(until),
                });
                if until <= local {
                    return; // Granted, but already over by its own clock.
                }
                let dies = !self.clients[c].keeper && self.rng.chance(80);
                self.clients[c].lease = Some(Lease {
                    resource,
                    token,
                    ttl_ms,
                    valid_until_local: until,
                    next_renew_local: inflight.send_local + u64::from(ttl_ms) / 3,
                    record,
                });
                if dies {
                    // A holder that dies holding its lease: it never
                    // renews or releases; it comes back as a new holder.
                    let lease = self.clients[c].lease.take().expect("held");
                    let back = self.clients[c].real(lease.valid_until_local) + 1;
                    self.clients[c].dead_until = back;
                }
            }
            (Kind::Acquire, Response::Busy { .. }) => {
                self.clients[c].wanted = None;
                let pause = 5 + self.rng.below(30);
                retry_soon(self, pause);
            }
            (Kind::Renew, Response::Renewed { token, ttl_ms }) => {
                if trace() {
                    eprintln!(
                        "{real}: client {c} renewed {token:#x} ttl {ttl_ms} until {}",
                        self.clients[c].real(valid_until(ttl_ms))
                    );
                }
                let Some(lease) = self.clients[c].lease.as_mut() else {
                    return;
                };
                assert_eq!(
                    token, lease.token,
                    "seed {}: renewed another token",
                    self.seed
                );
                let until = valid_until(ttl_ms).max(lease.valid_until_local);
                lease.valid_until_local = until;
                lease.next_renew_local = inflight.send_local + u64::from(ttl_ms) / 3;
                let record = lease.record;
                self.history[record].to = self.clients[c].real(until);
            }
            (Kind::Renew, Response::Stale { .. }) => self.lose(c, "a renewal answered stale"),
            (Kind::Release, _) => {}
            (_, Response::Redirect { leader_id, .. }) => {
                self.clients[c].target = if leader_id != 0 {
                    usize::from(leader_id) - 1
                } else {
                    (self.clients[c].target + 1) % self.nodes.len()
                };
                retry_soon(self, 1);
                self.retry(c, inflight.kind);
            }
            (_, Response::Error { code, .. }) => {
                assert!(
                    matches!(code, ErrorCode::Unavailable | ErrorCode::NotLeader),
                    "seed {}: unexpected error {code:?}",
                    self.seed
                );
                retry_soon(self, 5);
                self.retry(c, inflight.kind);
            }
            (kind, other) => panic!("seed {}: {kind:?} answered {other:?}", self.seed),
        }
    }

    /// After a redirect or a refusal: an acquire is re-sent later (same
    /// holder), a renewal at its next step.
    fn retry(&mut self, c: usize, kind: Kind) {
        if kind == Kind::Renew {
            let local = self.clients[c].local(self.real_ms);
            if let Some(lease) = self.clients[c].lease.as_mut() {
                lease.next_renew_local = local + 5;
            }
        }
    }

    // ------------------------------------------------------------ time

    fn step_ms(&mut self) {
        self.real_ms += 1;
        let now = self.real_ms;
        for i in 0..self.nodes.len() {
            if self.nodes[i].down_until.is_some_and(|t| t <= now) {
                self.boot(i);
            }
        }
        let mut due: Vec<Flight> = Vec::new();
        let mut i = 0;
        while i < self.flights.len() {
            if self.flights[i].deliver_at <= now {
                due.push(self.flights.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| (f.deliver_at, f.seq));
        for flight in due {
            let to_node = match &flight.payload {
                Payload::Raft(m) => Some(m.to as usize - 1),
                Payload::Request { node, .. } => Some(*node),
                Payload::Response { .. } => None,
            };
            if let Some(n) = to_node {
                if self.nodes[n].core.is_none() {
                    continue;
                }
                if now < self.nodes[n].paused_until {
                    let paused_until = self.nodes[n].paused_until;
                    self.flights.push(Flight {
                        deliver_at: paused_until,
                        ..flight
                    });
                    continue;
                }
            }
            match flight.payload {
                Payload::Raft(message) => {
                    let n = message.to as usize - 1;
                    let local = self.nodes[n].local(now);
                    let seed = self.seed;
                    self.nodes[n]
                        .core
                        .as_mut()
                        .expect("up")
                        .step(message, local)
                        .unwrap_or_else(|e| panic!("seed {seed}: step: {e}"));
                    self.pump(n);
                }
                Payload::Request {
                    client,
                    node,
                    incarnation,
                    request_id,
                    request,
                } => {
                    // Its connection died with the incarnation it was for.
                    if incarnation == self.nodes[node].incarnation {
                        self.serve(node, client, request_id, &request);
                    }
                }
                Payload::Response {
                    client,
                    request_id,
                    response,
                } => self.client_receive(client, request_id, response),
            }
        }
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.core.is_none() || now < node.paused_until {
                continue;
            }
            let local = node.local(now);
            if local >= node.next_tick_local_ms {
                node.next_tick_local_ms += TICK_MS;
                node.core.as_mut().expect("up").tick(local);
                self.pump(i);
            }
        }
        for c in 0..self.clients.len() {
            self.client_step(c);
        }
    }

    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step_ms();
        }
    }

    fn chaos(&mut self, ms: u64) {
        let size = self.nodes.len() as u64;
        let end = self.real_ms + ms;
        while self.real_ms < end {
            match self.rng.below(1000) {
                0..=2 => {
                    let i = self.rng.below(size) as usize;
                    if self.nodes[i].core.is_some() {
                        let down = 1 + self.rng.below(400);
                        self.crash(i, down);
                    }
                }
                3..=4 => {
                    let i = self.rng.below(size) as usize;
                    self.nodes[i].paused_until = self.real_ms + 1 + self.rng.below(300);
                }
                5..=7 => {
                    let from = 1 + self.rng.below(size);
                    let to = 1 + self.rng.below(size);
                    if from != to {
                        let cut = self.cut.entry((from, to)).or_insert(false);
                        *cut = !*cut;
                    }
                }
                8 => {
                    if self.rng.chance(500) {
                        self.cut.clear();
                    } else {
                        let victim = 1 + self.rng.below(size);
                        for other in 1..=size {
                            if other != victim {
                                self.cut.insert((victim, other), true);
                                self.cut.insert((other, victim), true);
                            }
                        }
                    }
                }
                9..=10 => self.loss_per_mille = self.rng.below(200),
                11..=12 => self.delay_max_ms = 1 + self.rng.below(30),
                13 => {
                    let i = self.rng.below(size) as usize;
                    self.nodes[i].disk.fail_next_sync = true;
                }
                14 => {
                    // A resource used up its epoch's tokens: the leader
                    // moves the cluster to a new term.
                    if let Some(i) = self.leader() {
                        let local = self.nodes[i].local(self.real_ms);
                        let seed = self.seed;
                        self.nodes[i]
                            .core
                            .as_mut()
                            .expect("up")
                            .force_new_term(local)
                            .unwrap_or_else(|e| panic!("seed {seed}: new term: {e}"));
                        self.pump(i);
                    }
                }
                _ => {}
            }
            self.step_ms();
        }
    }

    fn heal(&mut self) {
        for node in &mut self.nodes {
            node.disk.fail_next_sync = false;
            node.paused_until = 0;
        }
        self.cut.clear();
        self.loss_per_mille = 0;
        self.delay_max_ms = 3;
    }

    /// Runs until a leader serves and the log vouches for every live lease
    /// (a first election that split owes one grace period first).
    fn settle(&mut self, ms: u64) {
        let deadline = self.real_ms + ms;
        while self.real_ms < deadline {
            let vouched = self.nodes.iter().any(|n| {
                n.core
                    .as_ref()
                    .is_some_and(|c| c.leases().replicated_since().is_some())
            });
            if vouched && self.leader().is_some() {
                return;
            }
            self.step_ms();
        }
        for node in &self.nodes {
            if let Some(core) = node.core.as_ref() {
                eprintln!(
                    "node {}: term {} {:?} view {:?} local {} vouched {:?} commit {} last {}",
                    node.id,
                    core.term(),
                    core.raft_state(),
                    core.leadership(),
                    node.local(self.real_ms),
                    core.leases().replicated_since(),
                    core.commit_index(),
                    core.last_index()
                );
            }
        }
        panic!("seed {}: no leader serving after a clean start", self.seed);
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].core.as_ref().is_some_and(|c| {
                c.leadership()
                    .expect("term fits")
                    .check_grant(self.nodes[i].local(self.real_ms))
                    .is_ok()
            })
        })
    }

    // ------------------------------------------------------------ checks

    /// With `PALISADE_SIM_VERBOSE`: what the schedule exercised.
    fn report(&self) {
        if std::env::var_os("PALISADE_SIM_VERBOSE").is_none() {
            return;
        }
        let tokens: BTreeSet<u64> = self.history.iter().map(|h| h.token).collect();
        let epochs: BTreeSet<u64> = tokens.iter().map(|t| t >> 32).collect();
        eprintln!(
            "seed {}: {} ms, {} beliefs, {} tokens, epochs {:?}, {} takeovers",
            self.seed,
            self.real_ms,
            self.history.len(),
            tokens.len(),
            epochs,
            self.takeovers.len()
        );
    }

    /// S1 and S2 over everything clients believed.
    fn check(&self) {
        let mut by_resource: BTreeMap<usize, Vec<&Held>> = BTreeMap::new();
        for held in &self.history {
            if held.from < held.to {
                by_resource.entry(held.resource).or_default().push(held);
            }
        }
        for (resource, mut leases) in by_resource {
            // One interval per token: a holder that got its token again
            // (a retried acquire) held one lease.
            let mut merged: BTreeMap<u64, (u64, u64, BTreeSet<usize>)> = BTreeMap::new();
            for held in leases.drain(..) {
                let entry =
                    merged
                        .entry(held.token)
                        .or_insert((held.from, held.to, BTreeSet::new()));
                entry.0 = entry.0.min(held.from);
                entry.1 = entry.1.max(held.to);
                entry.2.insert(held.client);
            }
            for (token, (_, _, clients)) in &merged {
                assert!(
                    clients.len() == 1,
                    "seed {}: S2: r{resource} token {token:#x} believed held by clients {clients:?}",
                    self.seed
                );
            }
            let mut spans: Vec<(u64, u64, u64)> =
                merged.iter().map(|(&t, &(f, to, _))| (f, to, t)).collect();
            spans.sort();
            for pair in spans.windows(2) {
                let ((a_from, a_to, a), (b_from, _, b)) = (pair[0], pair[1]);
                assert!(
                    b_from >= a_to,
                    "seed {}: S2: r{resource}: token {b:#x} held from {b_from} ms while token {a:#x} (from {a_from}) was held until {a_to} ms",
                    self.seed
                );
                assert!(
                    b > a,
                    "seed {}: S1: r{resource}: token {b:#x} held after token {a:#x}",
                    self.seed
                );
            }
        }
    }
}

#[path = "sim_leases/scenarios.rs"]
mod scenarios;

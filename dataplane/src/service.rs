//! Request handling, sans-IO: one decoded (archived, in-place) request in,
//! one [`Outcome`] out. The shell only moves bytes; everything a
//! client can make the server do is decided here, and tests drive it
//! without sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use palisade_proto::auth::{auth_message, verify_proof, StoredCredential};
use palisade_proto::{
    validate_resource, validate_tenant, ArchivedRequest, ErrorCode, Response, StatusInfo, Welcome,
    CLIENT_NAME_LEN_MAX, LIST_LIMIT_MAX, NONCE_LEN, RESOURCE_LEN_MAX,
};

use crate::leadership::{Leadership, NotGranting};
use crate::metrics::{Closed, Denial, Fenced};
pub use crate::metrics::{ControlStats, CoreStats};
use crate::names::AdoptedNames;
use crate::quota::Quotas;
use crate::replica::{Command, LeaseName};
use crate::table::{AcquireMode, Acquired, Grant, LeaseKey, LeaseTable, TableError, TokenOutcome};
use crate::waiters::{Origin, WaitEvent, WaitRequest};

/// One tenant as the server knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name used at the handshake.
    pub name: String,
    /// Credential record; `None` means no proof is required (loopback only,
    /// enforced by config validation).
    pub credential: Option<StoredCredential>,
}

/// Fixed settings of the request path.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This node's id.
    pub node_id: u16,
    /// Shortest ttl granted.
    pub min_ttl_ms: u32,
    /// Longest ttl granted.
    pub max_ttl_ms: u32,
    /// Longest lock delay accepted.
    pub lock_delay_max_ms: u32,
    /// Clock drift bound, parts per million.
    pub max_drift_ppm: u32,
    /// Waiting requests allowed per connection.
    pub pending_per_connection_max: u32,
    /// Data-plane cores.
    pub cores: u16,
    /// Monotonic ms at node start.
    pub start_ms: u64,
    /// Unix ms minus monotonic ms at start, for status display only.
    pub unix_offset_ms: i64,
    /// Client addresses of the cluster's nodes, for redirects.
    pub members: Vec<(u16, String)>,
    /// Grants and releases go through the raft log before they are
    /// answered (`leases.replication = "quorum"`).
    pub replicated: bool,
}

/// The request service: everything the request path reads, shared by all
/// cores, and [`handle`](Self::handle), which turns one request into one
/// [`Outcome`].
#[derive(Debug)]
pub struct RequestService {
    /// The lease table.
    pub table: LeaseTable,
    /// The control plane's word.
    pub leadership: Leadership,
    /// Tenants by index (the index is part of every key, S5).
    pub tenants: Vec<Tenant>,
    /// Settings.
    pub config: ServiceConfig,
    /// Per-core counters.
    pub stats: Vec<CoreStats>,
    /// What the control plane publishes for metrics.
    pub control: ControlStats,
    /// Per-tenant connection and waiter counts, `wait_ms` and per-connection
    /// waiter limits, and the failed-proof limiter (the per-tenant lease
    /// quota is the table's).
    pub quotas: Quotas,
    /// The names of the leases this leader took over, until their holders
    /// renew them here (for `List`).
    pub adopted: AdoptedNames,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Expecting `Hello`.
    AwaitHello,
    /// Sent a `Challenge`, expecting `Auth`.
    AwaitAuth {
        /// Tenant index.
        tenant: u32,
        /// Message the proof must sign.
        auth_message: Vec<u8>,
    },
    /// Authenticated as `tenant`.
    Ready {
        /// Tenant index.
        tenant: u32,
    },
}

/// Per-connection state the service keeps.
#[derive(Debug)]
pub struct Conn {
    /// Handshake phase.
    pub phase: Phase,
    /// Core the connection lives on.
    pub core: u16,
    /// Connection id on that core.
    pub id: u64,
    /// Requests waiting in some queue.
    pub pending: u32,
    /// Of those, queued acquires (counted against the connection's and the
    /// tenant's waiter limits).
    pub waits: u32,
    /// Where the connection comes from (failed proofs are limited per
    /// source); `None` for tests without sockets.
    pub peer: Option<std::net::IpAddr>,
}

impl Conn {
    /// A new connection awaiting `Hello`.
    #[must_use]
    pub fn new(core: u16, id: u64) -> Conn {
        Conn {
            phase: Phase::AwaitHello,
            core,
            id,
            pending: 0,
            waits: 0,
            peer: None,
        }
    }
}

/// What the shell must do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this response.
    Reply(Response),
    /// Send this response, then wake `key`'s home core (a release of a key
    /// with waiters).
    ReplyAndWake(Response, LeaseKey),
    /// Send this response, then close the connection.
    ReplyAndClose(Response),
    /// Route this waiter to its key's home core; the answer comes later.
    Wait(WaitRequest),
    /// Keep watching on this core (poll [`RequestService::watch_poll`]); the
    /// answer comes later.
    Watch(WatchRequest),
    /// Replicate first: propose `command` to the control plane and send
    /// `reply` once it committed (a grant or release with replication).
    Commit(Box<Commit>),
    /// Gather one page of the tenant's leases from every core; the answer
    /// comes later.
    List(Box<ListRequest>),
}

/// A `List` to gather across the cores (see [`crate::names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// The caller's tenant (S5: only its names are read).
    pub tenant: u32,
    /// Only names starting with this.
    pub prefix: String,
    /// Only names after this.
    pub after: String,
    /// Most leases, 1..=[`LIST_LIMIT_MAX`].
    pub limit: u32,
    /// Where to answer.
    pub origin: Origin,
}

/// A table change the raft log must hold before it is answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// What to log.
    pub command: Command,
    /// The epoch the change was made in: a proposal made under an older
    /// leadership is refused by the control plane.
    pub epoch: u32,
    /// The table key.
    pub key: LeaseKey,
    /// The answer once committed.
    pub reply: Response,
    /// If it never commits: a fresh grant is taken back out of the table
    /// (release `token`); a repeated grant or a release stays as it is.
    pub undo_grant: bool,
    /// Wake the key's home core now (a release of a key with waiters).
    pub wake: bool,
    /// Once committed, the lease no longer counts as adopted: its first
    /// renewal under this leadership is logged (the leader serves it from
    /// now on), later ones are answered at once.
    pub confirm: bool,
}

/// A parked `Watch`: polled on the connection's core until a token above
/// `after` is issued or the deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchRequest {
    /// The watched key.
    pub key: LeaseKey,
    /// Answer once the key's last token exceeds this.
    pub after: u64,
    /// Answer unchanged at this time (monotonic ms).
    pub deadline_ms: u64,
    /// Where to answer.
    pub origin: Origin,
}

/// Longest `Watch` wait accepted.
pub const WATCH_WAIT_MAX_MS: u32 = 60_000;

fn error(code: ErrorCode, retry_after_ms: u32, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        retry_after_ms,
        message: message.into(),
    }
}

fn too_many_pending() -> Response {
    error(
        ErrorCode::TooManyWaiters,
        100,
        "this connection has pending_per_connection_max waiting requests",
    )
}

/// Retry hint when a leader's quorum confirmation lapsed.
const UNCONFIRMED_RETRY_MS: u32 = 50;

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Identifies the request being answered.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta {
    /// Frame request id.
    pub request_id: u64,
    /// Frame group.
    pub group: u32,
}

impl RequestService {
    /// A service over `table` for `config.cores` cores: counters at zero,
    /// no control-plane figures yet, no adopted names.
    #[must_use]
    pub fn new(
        table: LeaseTable,
        leadership: Leadership,
        tenants: Vec<Tenant>,
        config: ServiceConfig,
        quotas: Quotas,
    ) -> RequestService {
        let stats = (0..config.cores).map(|_| CoreStats::default()).collect();
        RequestService {
            table,
            leadership,
            tenants,
            config,
            stats,
            control: ControlStats::default(),
            quotas,
            adopted: AdoptedNames::new(),
        }
    }

    /// An answer for `origin` reached its connection `conn` (or was
    /// dropped with it): a queued acquire no longer counts against the
    /// waiter limits. Call for every delivered event.
    pub fn answered(&self, conn: &mut Conn, origin: &Origin) {
        if !origin.queued {
            return;
        }
        debug_assert!(
            conn.waits > 0,
            "a queued answer for a connection without waits"
        );
        conn.waits = conn.waits.saturating_sub(1);
        if let Phase::Ready { tenant } = conn.phase {
            self.quotas.give_waiters(tenant, 1);
        }
    }

    /// `conn` closed: its tenant's counts no longer include it or its
    /// queued acquires (whose queues drop them on the cancel that
    /// follows). Call once, when the connection ends.
    pub fn closed(&self, conn: &mut Conn) {
        if let Phase::Ready { tenant } = conn.phase {
            self.quotas.give_waiters(tenant, u64::from(conn.waits));
            self.quotas.give_connection(tenant);
        }
        conn.waits = 0;
        conn.phase = Phase::AwaitHello;
    }

    /// Completes the handshake as `tenant`, unless the tenant has its
    /// quota of connections.
    fn admit(&self, conn: &mut Conn, tenant: u32, welcome: Response) -> Outcome {
        if !self.quotas.take_connection(tenant) {
            self.count(conn, |s| s.close(Closed::TenantConnectionQuota));
            return Outcome::ReplyAndClose(error(
                ErrorCode::TenantConnectionQuota,
                1_000,
                format!(
                    "tenant {:?} has limits.tenant_connections_max ({}) connections to this node; close some or retry later",
                    self.tenants[tenant as usize].name,
                    self.quotas.config().tenant_connections_max
                ),
            ));
        }
        conn.phase = Phase::Ready { tenant };
        Outcome::Reply(welcome)
    }

    /// Runs `f` on the counters of `conn`'s core (the only core that writes
    /// them: the one running this request).
    fn count(&self, conn: &Conn, f: impl FnOnce(&CoreStats)) {
        if let Some(stats) = self.stats.get(usize::from(conn.core)) {
            f(stats);
        }
    }

    /// Counts the answer to an acquire: a grant or a denial (a wait is
    /// counted when it is answered).
    fn count_acquire(&self, conn: &Conn, outcome: &Outcome) {
        self.count(conn, |stats| match outcome {
            Outcome::Reply(Response::Granted { .. }) => crate::metrics::bump(&stats.grants, 1),
            Outcome::Reply(Response::Busy { .. }) => stats.deny(Denial::Busy),
            Outcome::Reply(Response::Redirect { .. }) => stats.deny(Denial::NotLeader),
            Outcome::Reply(Response::Error { code, .. }) => {
                if let Some(denial) = Denial::of_error(*code) {
                    stats.deny(denial);
                }
            }
            _ => {}
        });
    }

    /// The handshake `Welcome` for this node.
    fn welcome(&self, server_signature: Option<[u8; 32]>) -> Response {
        Response::Welcome(Welcome {
            node_id: self.config.node_id,
            epoch: self.leadership.load().epoch,
            max_ttl_ms: self.config.max_ttl_ms,
            min_ttl_ms: self.config.min_ttl_ms,
            lock_delay_max_ms: self.config.lock_delay_max_ms,
            max_drift_ppm: self.config.max_drift_ppm,
            server_signature,
        })
    }

    /// Node status as of `now_ms`.
    #[must_use]
    pub fn status(&self, now_ms: u64) -> StatusInfo {
        let lead = self.leadership.load();
        let sum = |f: fn(&CoreStats) -> &AtomicU64| -> u64 {
            self.stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        let leading = lead.role == palisade_proto::Role::Leader;
        let grants_from_unix_ms = if leading {
            (lead.grants_from_ms as i64 + self.config.unix_offset_ms).max(0) as u64
        } else {
            0
        };
        StatusInfo {
            node_id: self.config.node_id,
            role: lead.role,
            epoch: lead.epoch,
            leader_id: lead.leader_id,
            cores: self.config.cores,
            leases_held: sum(|s| &s.leases_held),
            ops_served: sum(|s| &s.ops),
            connections: clamp_u32(sum(|s| &s.connections)),
            waiters: sum(|s| &s.waiters),
            grants_from_unix_ms,
            grace_remaining_ms: if leading {
                lead.grants_from_ms.saturating_sub(now_ms)
            } else {
                0
            },
            uptime_ms: now_ms.saturating_sub(self.config.start_ms),
            table_capacity: clamp_u32(self.table.capacity()),
            peers: self
                .config
                .members
                .iter()
                .map(|(id, endpoint)| palisade_proto::Peer {
                    id: *id,
                    endpoint: endpoint.clone(),
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Handles one request on `conn`. `now_ms` must be read after the
    /// request's bytes arrived, so that the server's lease interval starts
    /// no earlier than the client's send time. `nonce` supplies fresh
    /// randomness for a challenge.
    pub fn handle(
        &self,
        conn: &mut Conn,
        meta: RequestMeta,
        request: &ArchivedRequest,
        now_ms: u64,
        nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
    ) -> Outcome {
        self.handle_keyed(conn, meta, request, now_ms, nonce, None)
    }

    /// The table key of a lease request (`Acquire`, `Renew`, `Release`,
    /// `Check`) with a valid resource name on a connection past its
    /// handshake; `None` for anything else. A server computes it once
    /// ahead of [`RequestService::handle_keyed`]: to prefetch the key's
    /// slot for a batch of requests, and for its `List` index.
    #[must_use]
    pub fn lease_key(&self, conn: &Conn, request: &ArchivedRequest) -> Option<LeaseKey> {
        let Phase::Ready { tenant } = conn.phase else {
            return None;
        };
        let resource = match request {
            ArchivedRequest::Acquire { resource, .. }
            | ArchivedRequest::Renew { resource, .. }
            | ArchivedRequest::Release { resource, .. }
            | ArchivedRequest::Check { resource, .. } => resource.as_str(),
            _ => return None,
        };
        self.key(tenant, resource).ok()
    }

    /// [`RequestService::handle`] given `key`: what
    /// [`RequestService::lease_key`] returned for this request on this
    /// connection (then it is not computed again), or `None`.
    pub fn handle_keyed(
        &self,
        conn: &mut Conn,
        meta: RequestMeta,
        request: &ArchivedRequest,
        now_ms: u64,
        nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
        key: Option<LeaseKey>,
    ) -> Outcome {
        match (&conn.phase, request) {
            (
                Phase::AwaitHello,
                ArchivedRequest::Hello {
                    tenant,
                    client_nonce,
                    client_name,
                },
            ) => self.hello(
                conn,
                tenant.as_str(),
                client_nonce,
                client_name.as_str(),
                now_ms,
                nonce,
            ),
            (Phase::AwaitAuth { .. }, ArchivedRequest::Auth { proof }) => {
                self.auth(conn, proof, now_ms)
            }
            (Phase::Ready { .. }, ArchivedRequest::Hello { .. } | ArchivedRequest::Auth { .. }) => {
                Outcome::Reply(error(
                    ErrorCode::InvalidArgument,
                    0,
                    "the handshake is already complete on this connection",
                ))
            }
            (Phase::Ready { tenant }, _) => {
                let tenant = *tenant;
                self.authenticated_request(conn, tenant, meta, request, now_ms, key)
            }
            (Phase::AwaitHello, _) => Outcome::ReplyAndClose(error(
                ErrorCode::NotAuthenticated,
                0,
                "send Hello first: every connection starts with the handshake",
            )),
            (Phase::AwaitAuth { .. }, _) => Outcome::ReplyAndClose(error(
                ErrorCode::NotAuthenticated,
                0,
                "answer the Challenge with Auth before other requests",
            )),
        }
    }

    fn hello(
        &self,
        conn: &mut Conn,
        tenant: &str,
        client_nonce: &[u8; NONCE_LEN],
        client_name: &str,
        now_ms: u64,
        nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
    ) -> Outcome {
        if let Some(refusal) = self.slow_down(conn, now_ms) {
            return refusal;
        }
        if let Err(why) = validate_tenant(tenant) {
            return Outcome::ReplyAndClose(error(ErrorCode::InvalidArgument, 0, why));
        }
        if client_name.len() > CLIENT_NAME_LEN_MAX {
            return Outcome::ReplyAndClose(error(
                ErrorCode::InvalidArgument,
                0,
                "client name is longer than 128 bytes",
            ));
        }
        let Some(index) = self.tenants.iter().position(|t| t.name == tenant) else {
            return Outcome::ReplyAndClose(error(
                ErrorCode::UnknownTenant,
                0,
                format!(
                    "unknown tenant {tenant:?}; check --tenant against the server's [[tenants]]"
                ),
            ));
        };
        let index = u32::try_from(index).expect("tenant count is bounded by config");
        match &self.tenants[index as usize].credential {
            None => self.admit(conn, index, self.welcome(None)),
            Some(credential) => {
                let server_nonce = nonce();
                let message = auth_message(
                    tenant,
                    client_nonce,
                    &server_nonce,
                    &credential.salt,
                    credential.iterations,
                );
                conn.phase = Phase::AwaitAuth {
                    tenant: index,
                    auth_message: message,
                };
                Outcome::Reply(Response::Challenge {
                    salt: credential.salt.clone(),
                    iterations: credential.iterations,
                    server_nonce,
                })
            }
        }
    }

    /// Refuses a handshake step from a source whose failed proofs are over
    /// the limit. Checked at `Hello` (before a challenge is issued) and
    /// again at `Auth` (before the proof is verified): connections that
    /// all got their challenge while the source was still under the limit
    /// get one verification between them, not one each.
    fn slow_down(&self, conn: &Conn, now_ms: u64) -> Option<Outcome> {
        let retry_after_ms = self.quotas.auth_refused(conn.peer?, now_ms)?;
        self.count(conn, |s| s.close(Closed::SlowDown));
        Some(Outcome::ReplyAndClose(error(
            ErrorCode::SlowDown,
            retry_after_ms,
            "too many failed credential proofs from this address lately; retry after retry_after_ms",
        )))
    }

    fn auth(&self, conn: &mut Conn, proof: &[u8; 32], now_ms: u64) -> Outcome {
        if let Some(refusal) = self.slow_down(conn, now_ms) {
            return refusal;
        }
        let Phase::AwaitAuth {
            tenant,
            auth_message,
        } = &conn.phase
        else {
            unreachable!("auth is only dispatched in AwaitAuth");
        };
        let tenant = *tenant;
        let credential = self.tenants[tenant as usize]
            .credential
            .as_ref()
            .expect("AwaitAuth only for tenants with a credential");
        match verify_proof(credential, auth_message, proof) {
            Some(signature) => self.admit(conn, tenant, self.welcome(Some(signature))),
            None => {
                if let Some(peer) = conn.peer {
                    self.quotas.auth_failed(peer, now_ms);
                }
                Outcome::ReplyAndClose(error(
                    ErrorCode::AuthFailed,
                    0,
                    "credential proof did not verify; check the tenant secret",
                ))
            }
        }
    }

    /// The replicated log's name of a lease (only built with replication:
    /// it allocates).
    fn lease_name(&self, tenant: u32, resource: &str) -> LeaseName {
        LeaseName {
            tenant: self.tenants[tenant as usize].name.clone(),
            resource: resource.to_owned(),
        }
    }

    fn key(&self, tenant: u32, resource: &str) -> Result<LeaseKey, Response> {
        validate_resource(resource).map_err(|why| error(ErrorCode::InvalidArgument, 0, why))?;
        Ok(self.table.hasher().key(tenant, resource.as_bytes()))
    }

    /// `known` (from [`RequestService::lease_key`], so the name was
    /// validated), or the key computed now.
    fn key_given(
        &self,
        known: Option<LeaseKey>,
        tenant: u32,
        resource: &str,
    ) -> Result<LeaseKey, Response> {
        match known {
            Some(key) => {
                debug_assert_eq!(Ok(key), self.key(tenant, resource).map_err(|_| ()));
                Ok(key)
            }
            None => self.key(tenant, resource),
        }
    }

    fn check_ttl(&self, ttl_ms: u32) -> Result<(), Response> {
        if ttl_ms < self.config.min_ttl_ms || ttl_ms > self.config.max_ttl_ms {
            return Err(error(
                ErrorCode::InvalidArgument,
                0,
                format!(
                    "ttl {ttl_ms}ms is outside this node's range {}ms..={}ms",
                    self.config.min_ttl_ms, self.config.max_ttl_ms
                ),
            ));
        }
        Ok(())
    }

    fn unconfirmed() -> Response {
        error(
            ErrorCode::Unavailable,
            UNCONFIRMED_RETRY_MS,
            "this node's leadership is not confirmed by a quorum right now; retry, or ask another node",
        )
    }

    fn not_leader(&self, leader_id: u16) -> Response {
        let endpoint = self
            .config
            .members
            .iter()
            .find(|(id, _)| *id == leader_id)
            .map(|(_, endpoint)| endpoint.clone())
            .unwrap_or_default();
        Response::Redirect {
            leader_id,
            endpoint,
        }
    }

    /// Handles one request on a connection past its handshake (phase
    /// [`Phase::Ready`]): the lease, watch, list and status requests.
    fn authenticated_request(
        &self,
        conn: &mut Conn,
        tenant: u32,
        meta: RequestMeta,
        request: &ArchivedRequest,
        now_ms: u64,
        key: Option<LeaseKey>,
    ) -> Outcome {
        if meta.group != crate::replica::GROUP_DEFAULT
            && !matches!(request, ArchivedRequest::Status)
        {
            // Groups are how scale-out will shard resources over several
            // raft groups; today there is one.
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                format!(
                    "resource group {} does not exist: this cluster serves group 0 only",
                    meta.group
                ),
            ));
        }
        let (resource, token) = match request {
            ArchivedRequest::Acquire {
                resource,
                holder,
                ttl_ms,
                lock_delay_ms,
                wait_ms,
            } => {
                let grant = Grant {
                    holder: holder.to_native(),
                    ttl_ms: ttl_ms.to_native(),
                    lock_delay_ms: lock_delay_ms.to_native(),
                };
                let outcome = self.acquire(
                    conn,
                    tenant,
                    meta,
                    resource.as_str(),
                    grant,
                    wait_ms.to_native(),
                    now_ms,
                    key,
                );
                self.count_acquire(conn, &outcome);
                return outcome;
            }
            ArchivedRequest::Status => {
                return Outcome::Reply(Response::Status(self.status(now_ms)))
            }
            ArchivedRequest::Watch {
                resource,
                after,
                wait_ms,
            } => {
                return self.watch(
                    conn,
                    tenant,
                    meta,
                    resource.as_str(),
                    after.to_native(),
                    wait_ms.to_native(),
                    now_ms,
                );
            }
            ArchivedRequest::List {
                prefix,
                after,
                limit,
            } => {
                return self.list(
                    conn,
                    tenant,
                    meta,
                    prefix.as_str(),
                    after.as_str(),
                    limit.to_native(),
                    now_ms,
                );
            }
            ArchivedRequest::Renew {
                resource, token, ..
            }
            | ArchivedRequest::Release { resource, token }
            | ArchivedRequest::Check { resource, token } => (resource.as_str(), token.to_native()),
            ArchivedRequest::Hello { .. } | ArchivedRequest::Auth { .. } => {
                unreachable!("handshake messages are dispatched before authenticated_request()")
            }
        };
        let key = match self.key_given(key, tenant, resource) {
            Ok(key) => key,
            Err(response) => return Outcome::Reply(response),
        };
        // Only a leader whose leadership a quorum confirmed recently answers
        // for leases, and only for leases of its own epoch.
        let lead = self.leadership.load();
        match lead.check_serve(now_ms) {
            Ok(()) => {}
            Err(NotGranting::NotLeader { leader_id }) => {
                return Outcome::Reply(self.not_leader(leader_id));
            }
            Err(NotGranting::Unconfirmed | NotGranting::Grace { .. }) => {
                return Outcome::Reply(Self::unconfirmed());
            }
        }
        let epoch = lead.epoch;
        let response = match request {
            ArchivedRequest::Renew { ttl_ms, .. } => {
                let ttl_ms = ttl_ms.to_native();
                if let Err(response) = self.check_ttl(ttl_ms) {
                    return Outcome::Reply(response);
                }
                match self.table.renew(key, token, ttl_ms, now_ms) {
                    TokenOutcome::Renewed {
                        ttl_ms, adopted, ..
                    } => {
                        self.count(conn, |s| crate::metrics::bump(&s.renewals, 1));
                        // The table caps a renewal at the lease's own ttl.
                        let reply = Response::Renewed { token, ttl_ms };
                        if adopted && self.config.replicated {
                            // The first renewal of a lease this leader took
                            // over: logged before it is answered, so that a
                            // later leader knows who served it last (and
                            // re-arms a dead holder's lease only so far).
                            if conn.pending >= self.config.pending_per_connection_max {
                                return Outcome::Reply(too_many_pending());
                            }
                            conn.pending += 1;
                            return Outcome::Commit(Box::new(Commit {
                                command: Command::Renewed {
                                    name: self.lease_name(tenant, resource),
                                    token,
                                },
                                epoch,
                                key,
                                reply,
                                undo_grant: false,
                                wake: false,
                                confirm: true,
                            }));
                        }
                        reply
                    }
                    other => {
                        self.count(conn, |s| s.fence(Fenced::Renew));
                        stale(other)
                    }
                }
            }
            ArchivedRequest::Release { .. } => {
                if self.config.replicated && conn.pending >= self.config.pending_per_connection_max
                {
                    return Outcome::Reply(too_many_pending());
                }
                let outcome = self.table.release(key, token, now_ms);
                match outcome {
                    TokenOutcome::Released { .. } => {
                        self.count(conn, |s| crate::metrics::bump(&s.releases, 1));
                    }
                    _ => self.count(conn, |s| s.fence(Fenced::Release)),
                }
                if let (true, TokenOutcome::Released { wake_waiters }) =
                    (self.config.replicated, outcome)
                {
                    conn.pending += 1;
                    return Outcome::Commit(Box::new(Commit {
                        command: Command::Release {
                            name: self.lease_name(tenant, resource),
                            token,
                        },
                        epoch,
                        key,
                        reply: Response::Released { token },
                        undo_grant: false,
                        wake: wake_waiters,
                        confirm: false,
                    }));
                }
                match outcome {
                    TokenOutcome::Released { wake_waiters: true } => {
                        return Outcome::ReplyAndWake(Response::Released { token }, key);
                    }
                    TokenOutcome::Released {
                        wake_waiters: false,
                    } => Response::Released { token },
                    other => stale(other),
                }
            }
            _ => match self.table.check(key, token, now_ms) {
                TokenOutcome::Current { expires_at_ms } => Response::Current {
                    token,
                    remaining_ms: clamp_u32(expires_at_ms.saturating_sub(now_ms)),
                },
                other => {
                    self.count(conn, |s| s.fence(Fenced::Check));
                    stale(other)
                }
            },
        };
        Outcome::Reply(response)
    }

    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        conn: &mut Conn,
        tenant: u32,
        meta: RequestMeta,
        resource: &str,
        after: u64,
        wait_ms: u32,
        now_ms: u64,
    ) -> Outcome {
        let key = match self.key(tenant, resource) {
            Ok(key) => key,
            Err(response) => return Outcome::Reply(response),
        };
        if wait_ms > WATCH_WAIT_MAX_MS {
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                format!(
                    "watch wait {wait_ms}ms exceeds {WATCH_WAIT_MAX_MS}ms; watch again instead"
                ),
            ));
        }
        let watch = WatchRequest {
            key,
            after,
            deadline_ms: now_ms + u64::from(wait_ms),
            origin: Origin {
                core: conn.core,
                conn: conn.id,
                request_id: meta.request_id,
                group: meta.group,
                queued: false,
            },
        };
        match self.watch_answer(&watch, now_ms) {
            Err(response) => Outcome::Reply(response),
            Ok(Some(response)) => Outcome::Reply(response),
            Ok(None) if conn.pending >= self.config.pending_per_connection_max => {
                Outcome::Reply(too_many_pending())
            }
            Ok(None) => {
                conn.pending += 1;
                Outcome::Watch(watch)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn list(
        &self,
        conn: &mut Conn,
        tenant: u32,
        meta: RequestMeta,
        prefix: &str,
        after: &str,
        limit: u32,
        now_ms: u64,
    ) -> Outcome {
        if limit == 0 || limit > LIST_LIMIT_MAX {
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                format!("list limit {limit} is outside 1..={LIST_LIMIT_MAX}; page with the cursor"),
            ));
        }
        for (what, text) in [("prefix", prefix), ("cursor", after)] {
            if text.len() > RESOURCE_LEN_MAX || text.chars().any(char::is_control) {
                return Outcome::Reply(error(
                    ErrorCode::InvalidArgument,
                    0,
                    format!("list {what} must be at most 256 bytes without control characters"),
                ));
            }
        }
        if let Err(response) = self.serving(now_ms) {
            return Outcome::Reply(response);
        }
        if conn.pending >= self.config.pending_per_connection_max {
            return Outcome::Reply(too_many_pending());
        }
        conn.pending += 1;
        Outcome::List(Box::new(ListRequest {
            tenant,
            prefix: prefix.to_owned(),
            after: after.to_owned(),
            limit,
            origin: Origin {
                core: conn.core,
                conn: conn.id,
                request_id: meta.request_id,
                group: meta.group,
                // Not a queued acquire: counts only against the
                // connection's pending requests.
                queued: false,
            },
        }))
    }

    /// `Ok` if this node answers lease requests now; otherwise the answer
    /// that says where to go instead.
    pub fn serving(&self, now_ms: u64) -> Result<(), Response> {
        match self.leadership.load().check_serve(now_ms) {
            Ok(()) => Ok(()),
            Err(NotGranting::NotLeader { leader_id }) => Err(self.not_leader(leader_id)),
            Err(NotGranting::Unconfirmed | NotGranting::Grace { .. }) => Err(Self::unconfirmed()),
        }
    }

    /// The answer to a watch now, if it has one: `Ok(None)` means keep
    /// waiting. Only a serving leader answers for leases.
    fn watch_answer(
        &self,
        watch: &WatchRequest,
        now_ms: u64,
    ) -> Result<Option<Response>, Response> {
        let lead = self.leadership.load();
        match lead.check_serve(now_ms) {
            Ok(()) => {}
            Err(NotGranting::NotLeader { leader_id }) => return Err(self.not_leader(leader_id)),
            Err(NotGranting::Unconfirmed | NotGranting::Grace { .. }) => {
                return Err(Self::unconfirmed())
            }
        }
        // Token 0 is never issued, so checking it reads the key's state.
        let (current_token, last_token) = match self.table.check(watch.key, 0, now_ms) {
            TokenOutcome::Stale {
                current_token,
                last_token,
            } => (current_token, last_token),
            _ => (0, 0),
        };
        let changed = last_token > watch.after;
        Ok(
            (changed || now_ms >= watch.deadline_ms).then_some(Response::Watched {
                current_token,
                last_token,
                changed,
            }),
        )
    }

    /// Polls a parked watch: its answer event once it has one.
    #[must_use]
    pub fn watch_poll(&self, watch: &WatchRequest, now_ms: u64) -> Option<WaitEvent> {
        let origin = watch.origin;
        match self.watch_answer(watch, now_ms) {
            Ok(None) => None,
            Ok(Some(Response::Watched {
                current_token,
                last_token,
                changed,
            })) => Some(WaitEvent::Watched {
                origin,
                current_token,
                last_token,
                changed,
            }),
            Ok(Some(_)) | Err(_) => Some(WaitEvent::Failed {
                origin,
                code: ErrorCode::Unavailable,
                retry_after_ms: UNCONFIRMED_RETRY_MS,
                message: "this node stopped serving during the watch; watch again (the client finds the leader)",
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn acquire(
        &self,
        conn: &mut Conn,
        tenant: u32,
        meta: RequestMeta,
        resource: &str,
        grant: Grant,
        wait_ms: u32,
        now_ms: u64,
        key: Option<LeaseKey>,
    ) -> Outcome {
        let key = match self.key_given(key, tenant, resource) {
            Ok(key) => key,
            Err(response) => return Outcome::Reply(response),
        };
        if let Err(response) = self.check_ttl(grant.ttl_ms) {
            return Outcome::Reply(response);
        }
        if grant.holder == 0 {
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                "holder id 0 is reserved; use a random non-zero id",
            ));
        }
        if grant.lock_delay_ms > self.config.lock_delay_max_ms {
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                format!(
                    "lock delay {}ms exceeds this node's maximum {}ms",
                    grant.lock_delay_ms, self.config.lock_delay_max_ms
                ),
            ));
        }
        let wait_max_ms = self.quotas.config().wait_max_ms;
        if wait_ms > wait_max_ms {
            return Outcome::Reply(error(
                ErrorCode::InvalidArgument,
                0,
                format!(
                    "wait {wait_ms}ms exceeds this node's limits.wait_max ({wait_max_ms}ms); wait less, and acquire again if need be"
                ),
            ));
        }
        if conn.pending >= self.config.pending_per_connection_max
            && (self.config.replicated || wait_ms > 0)
        {
            // With replication every grant waits for its commit.
            return Outcome::Reply(too_many_pending());
        }
        let deadline_ms = now_ms + u64::from(wait_ms);
        let wait = |conn: &mut Conn| -> Outcome {
            if conn.pending >= self.config.pending_per_connection_max {
                return Outcome::Reply(too_many_pending());
            }
            if conn.waits >= self.quotas.config().waiters_per_connection_max {
                return Outcome::Reply(error(
                    ErrorCode::TooManyWaiters,
                    100,
                    "this connection has limits.waiters_per_connection_max queued acquires",
                ));
            }
            if !self.quotas.take_waiter(tenant) {
                return Outcome::Reply(error(
                    ErrorCode::TenantWaiterQuota,
                    100,
                    format!(
                        "tenant {:?} has limits.tenant_waiters_max ({}) acquires queued on this node; retry later",
                        self.tenants[tenant as usize].name,
                        self.quotas.config().tenant_waiters_max
                    ),
                ));
            }
            conn.pending += 1;
            conn.waits += 1;
            Outcome::Wait(WaitRequest {
                key,
                name: self
                    .config
                    .replicated
                    .then(|| Arc::new(self.lease_name(tenant, resource))),
                grant,
                deadline_ms,
                enqueued_ms: now_ms,
                origin: Origin {
                    core: conn.core,
                    conn: conn.id,
                    request_id: meta.request_id,
                    group: meta.group,
                    queued: true,
                },
            })
        };
        let lead = self.leadership.load();
        match lead.check_grant(now_ms) {
            Ok(()) => {}
            Err(NotGranting::NotLeader { leader_id }) => {
                return Outcome::Reply(self.not_leader(leader_id));
            }
            Err(NotGranting::Unconfirmed) => return Outcome::Reply(Self::unconfirmed()),
            Err(NotGranting::Grace { until_ms }) => {
                // A waiter whose deadline outlasts the grace period queues
                // and is served when it ends; anyone else is told when.
                if wait_ms > 0 && deadline_ms > until_ms {
                    return wait(conn);
                }
                return Outcome::Reply(error(
                    ErrorCode::Unavailable,
                    clamp_u32(until_ms - now_ms),
                    format!(
                        "grace period after this node became leader: no grants for another {}ms (leases granted by an earlier leader or before a restart may still be held)",
                        until_ms - now_ms
                    ),
                ));
            }
        }
        let mut epoch = lead.epoch;
        let mut outcome = self
            .table
            .acquire(key, grant, now_ms, epoch, AcquireMode::Fair);
        if outcome == Err(TableError::StaleEpoch) {
            // Our view of the epoch may predate the control plane's latest
            // publish: look again once. Still behind means the key's
            // sequence ran past this epoch and the node needs a new one.
            let fresh = self.leadership.load().epoch;
            if fresh > epoch {
                epoch = fresh;
                outcome = self
                    .table
                    .acquire(key, grant, now_ms, epoch, AcquireMode::Fair);
            }
        }
        match outcome {
            Ok(Acquired::Granted {
                token,
                ttl_ms: lease_ttl_ms,
                idempotent,
                took_over_expired,
                ..
            }) => {
                if took_over_expired {
                    self.count(conn, |s| crate::metrics::bump(&s.expirations, 1));
                }
                let reply = Response::Granted {
                    token,
                    ttl_ms: grant.ttl_ms,
                    waited_ms: 0,
                };
                if !self.config.replicated {
                    return Outcome::Reply(reply);
                }
                conn.pending += 1;
                Outcome::Commit(Box::new(Commit {
                    command: Command::Grant {
                        name: self.lease_name(tenant, resource),
                        token,
                        holder: grant.holder,
                        ttl_ms: lease_ttl_ms,
                        lock_delay_ms: grant.lock_delay_ms,
                    },
                    epoch,
                    key,
                    reply,
                    undo_grant: !idempotent,
                    wake: false,
                    confirm: false,
                }))
            }
            Ok(Acquired::Busy { .. }) if wait_ms > 0 => wait(conn),
            Ok(Acquired::Busy {
                token,
                grantable_at_ms,
                waiters,
            }) => Outcome::Reply(Response::Busy {
                token,
                remaining_ms: clamp_u32(grantable_at_ms.saturating_sub(now_ms)),
                waiters,
                waited_ms: 0,
            }),
            Err(TableError::Full) => Outcome::Reply(error(
                ErrorCode::TableFull,
                100,
                "lease table is full; release leases or raise leases.table_capacity",
            )),
            Err(TableError::TenantQuota) => Outcome::Reply(error(
                ErrorCode::TenantLeaseQuota,
                100,
                format!(
                    "tenant {:?} holds limits.tenant_leases_max leases on this node; release some and retry",
                    self.tenants[tenant as usize].name
                ),
            )),
            Err(TableError::EpochExhausted | TableError::StaleEpoch) => {
                self.leadership.request_new_epoch();
                Outcome::Reply(error(
                    ErrorCode::Unavailable,
                    10,
                    "this resource used up the epoch's token space; the node is moving to a new epoch, retry",
                ))
            }
            Err(TableError::Contended) => Outcome::Reply(error(
                ErrorCode::Unavailable,
                1,
                "another core is creating this resource; retry",
            )),
        }
    }
}

fn stale(outcome: TokenOutcome) -> Response {
    match outcome {
        TokenOutcome::Stale {
            current_token,
            last_token,
        } => Response::Stale {
            current_token,
            last_token,
        },
        other => unreachable!("not a stale outcome: {other:?}"),
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

//! The server's request service, sans-IO: `palisade_dataplane::service::
//! RequestService::handle` driven through the handshake (Hello, Challenge, Auth) and
//! every lease request, on up to three connections, while time passes and
//! leadership changes, checked against a model of the leases.
//!
//! Input: a sequence of operations, each an operation byte and its
//! arguments: a raw frame (bytes through `decode_frame` and
//! `access_request`, as the server reads them), a well-formed request built
//! from choices (so the model's checks are reached often), time passing,
//! a leadership change (new term with its grace period, quorum
//! confirmation lapsing, follower, candidate), or closing a connection.
//!
//! Asserts (docs/DESIGN.md safety invariants; dataplane/src/service.rs):
//! - no panic on any frame or request sequence;
//! - handshake (S5): before `Welcome`, anything but Hello / Auth is answered
//!   NotAuthenticated and the connection closed; a tenant with a credential
//!   gets `Welcome` only for the proof made from its secret (and then with
//!   the matching server signature); a tenant without one at once; the
//!   connection then acts as exactly that tenant;
//! - S1: every fresh grant's token is above every token granted before for
//!   that tenant and resource, and carries the current epoch;
//! - S2: no grant to another holder while the model holds an unexpired
//!   lease on the resource (in any epoch), nor within its lock delay after
//!   it ran out; grants, renewals, releases and "current" answers come only
//!   from a leader whose quorum confirmation has not lapsed, and grants
//!   only after its grace period;
//! - S5: leases are per tenant (a key is tenant and resource); a renewal,
//!   release or check succeeds only with the live lease's token;
//! - the same holder acquiring again gets the same token (safe retry);
//! - "stale" and "watched" answers name the live lease (or 0) and no token
//!   above the highest one granted.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_dataplane::leadership::{Leadership, LeadershipView, TIME_MAX_MS};
use palisade_dataplane::service::{
    Conn, Outcome, Phase, RequestMeta, RequestService, ServiceConfig, Tenant,
};
use palisade_dataplane::table::{KeyHasher, LeaseTable, EXPIRY_MARGIN_MS};
use palisade_fuzz::Input;
use palisade_proto::auth::{auth_message, client_proof, derive_stored, StoredCredential};
use palisade_proto::{
    access_request, decode_request, encode_request, token_epoch, validate_resource, Decoded,
    ErrorCode, FrameBuf, FrameKind, Request, Response, Role, LIST_LIMIT_MAX, NONCE_LEN,
};

const SECRET: &[u8] = b"fuzz-secret";
const SALT: &[u8] = b"0123456789abcdef";
const ITERATIONS: u32 = 64;
const TENANTS: [&str; 3] = ["default", "billing", "other"];
const BILLING: u32 = 1;
const HELLO_TENANTS: [&str; 6] = ["default", "billing", "other", "nobody", "bad name", ""];
const RESOURCES: [&str; 5] = ["disk0", "disk1", "jobs/übung", "", "a\nb"];
const MIN_TTL_MS: u32 = 100;
const MAX_TTL_MS: u32 = 30_000;
const LOCK_DELAY_MAX_MS: u32 = 60_000;
/// A new leader's grace period: what the control plane gives it (without
/// the drift factor, which only lengthens it).
const GRACE_MS: u64 = MAX_TTL_MS as u64 + LOCK_DELAY_MAX_MS as u64 + 500;
const FRAME_LIMIT: u32 = 16 * 1024;
const START_MS: u64 = 1_000_000;

fn credential() -> StoredCredential {
    static CREDENTIAL: OnceLock<StoredCredential> = OnceLock::new();
    CREDENTIAL
        .get_or_init(|| derive_stored(SECRET, SALT, ITERATIONS))
        .clone()
}

fn shared() -> RequestService {
    let leadership = Leadership::new(1);
    leadership.publish(LeadershipView::leading_forever(1, 1));
    RequestService::new(
        LeaseTable::new(8, KeyHasher::new([7; 16])),
        leadership,
        TENANTS
            .iter()
            .enumerate()
            .map(|(index, name)| Tenant {
                name: (*name).to_owned(),
                credential: (index as u32 == BILLING).then(credential),
            })
            .collect(),
        ServiceConfig {
            node_id: 1,
            min_ttl_ms: MIN_TTL_MS,
            max_ttl_ms: MAX_TTL_MS,
            lock_delay_max_ms: LOCK_DELAY_MAX_MS,
            max_drift_ppm: 10_000,
            pending_per_connection_max: 4,
            cores: 1,
            start_ms: 0,
            unix_offset_ms: 1_700_000_000_000,
            members: vec![(1, "127.0.0.1:7400".into()), (2, "127.0.0.1:7402".into())],
            // Memory-only leases: every answer comes straight from the
            // table (with replication a grant is answered on its commit,
            // which this harness does not drive).
            replicated: false,
        },
        palisade_dataplane::quota::Quotas::new(
            TENANTS.len(),
            palisade_dataplane::quota::QuotaConfig::UNLIMITED,
        ),
    )
}

/// The model of one tenant's lease on one resource.
#[derive(Debug, Default, Clone)]
struct KeyModel {
    /// The last lease granted and not released: token, holder, expiry,
    /// lock delay.
    lease: Option<Lease>,
    /// Highest token granted for the key.
    last_token: u64,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    token: u64,
    holder: u64,
    expires_at_ms: u64,
    lock_delay_ms: u32,
    /// The lease's ttl: a renewal promises at most this much.
    ttl_ms: u32,
}

impl KeyModel {
    /// The lease if it is unexpired at `now` (any epoch).
    fn unexpired(&self, now_ms: u64) -> Option<Lease> {
        self.lease.filter(|lease| now_ms < lease.expires_at_ms)
    }
    /// The lease the leader serves: unexpired (a takeover ended every
    /// lease of an earlier leadership, see `World::leadership`).
    fn live(&self, now_ms: u64, _epoch: u32) -> Option<Lease> {
        self.unexpired(now_ms)
    }
}

/// What the harness remembers of one connection.
struct Client {
    conn: Conn,
    client_nonce: [u8; NONCE_LEN],
    /// The Challenge answered to this connection's Hello.
    challenge: Option<(Vec<u8>, u32, [u8; NONCE_LEN])>,
}

struct World {
    shared: RequestService,
    clients: [Option<Client>; 3],
    next_conn_id: u64,
    now_ms: u64,
    nonce_counter: u8,
    keys: HashMap<(u32, String), KeyModel>,
    /// Every token granted, for requests that name one.
    tokens: Vec<u64>,
}

fn lease_name(request: &Request) -> Option<&str> {
    match request {
        Request::Acquire { resource, .. }
        | Request::Renew { resource, .. }
        | Request::Release { resource, .. }
        | Request::Check { resource, .. }
        | Request::Watch { resource, .. } => Some(resource),
        _ => None,
    }
}

impl World {
    fn client(&mut self, index: usize) -> &mut Client {
        if self.clients[index].is_none() {
            self.next_conn_id += 1;
            self.clients[index] = Some(Client {
                conn: Conn::new(0, self.next_conn_id),
                client_nonce: [0; NONCE_LEN],
                challenge: None,
            });
        }
        self.clients[index].as_mut().expect("just made")
    }

    fn view(&self) -> LeadershipView {
        self.shared.leadership.load()
    }

    fn serving(&self) -> bool {
        self.view().check_serve(self.now_ms).is_ok()
    }

    fn granting(&self) -> bool {
        self.view().check_grant(self.now_ms).is_ok()
    }

    fn leadership(&mut self, input: &mut Input) {
        let view = self.view();
        let now = self.now_ms;
        let next = match input.byte() % 4 {
            // Elected in a new term: grants wait out the grace period.
            // (Its takeover resets the table below.)
            0 => LeadershipView {
                epoch: view.epoch + 1,
                role: Role::Leader,
                leader_id: 1,
                grants_from_ms: now + GRACE_MS,
                grants_until_ms: if input.bool() {
                    TIME_MAX_MS
                } else {
                    now + u64::from(input.u16())
                },
            },
            // A quorum confirms (or stops confirming) the current leader.
            1 => LeadershipView {
                grants_until_ms: now + u64::from(input.u16()) * 10,
                ..view
            },
            // Follows another node, in this term or a later one.
            2 => LeadershipView {
                epoch: view.epoch + u32::from(input.bool()),
                role: Role::Follower,
                leader_id: input.choose(&[0, 2, 3]),
                grants_from_ms: 0,
                grants_until_ms: 0,
            },
            _ => LeadershipView {
                epoch: view.epoch + 1,
                role: Role::Candidate,
                leader_id: 0,
                grants_from_ms: 0,
                grants_until_ms: 0,
            },
        };
        if next.role == Role::Leader && next.epoch != view.epoch {
            // A takeover without replication ends every lease the table
            // held; the grace period covers them.
            self.shared.table.reset(now);
            for model in self.keys.values_mut() {
                model.lease = None;
            }
        }
        self.shared.leadership.publish(next);
    }

    fn token(&self, input: &mut Input) -> u64 {
        let choice = input.byte();
        if choice < 200 && !self.tokens.is_empty() {
            self.tokens[usize::from(choice) % self.tokens.len()]
        } else if choice < 230 {
            0
        } else {
            input.u64()
        }
    }

    fn resource(input: &mut Input) -> String {
        let choice = input.byte();
        match choice {
            0..=249 => RESOURCES[usize::from(choice) % RESOURCES.len()].to_owned(),
            250..=252 => "r".repeat(256),
            253 => "r".repeat(257),
            _ => String::from_utf8_lossy(input.blob()).into_owned(),
        }
    }

    /// A well-formed request built from the input's choices.
    fn request(&self, index: usize, input: &mut Input) -> Request {
        match input.byte() % 8 {
            0 => Request::Hello {
                tenant: input.choose(&HELLO_TENANTS).to_owned(),
                client_nonce: input.array(),
                client_name: if input.byte() == 255 {
                    "n".repeat(129)
                } else {
                    "fuzz".to_owned()
                },
            },
            1 => {
                let client = self.clients[index].as_ref();
                let proof = match client.and_then(|c| c.challenge.clone().map(|ch| (c, ch))) {
                    Some((client, (salt, iterations, server_nonce))) if input.bool() => {
                        let message = auth_message(
                            TENANTS[BILLING as usize],
                            &client.client_nonce,
                            &server_nonce,
                            &salt,
                            iterations,
                        );
                        client_proof(SECRET, &salt, iterations, &message).0
                    }
                    _ => input.array(),
                };
                Request::Auth { proof }
            }
            2 => Request::Acquire {
                resource: Self::resource(input),
                holder: input.choose(&[1, 2, 3, 0, u64::MAX]),
                ttl_ms: input.choose(&[MIN_TTL_MS, 1_000, 5_000, MAX_TTL_MS, 0, 99, 30_001]),
                lock_delay_ms: input.choose(&[0, 0, 2_000, LOCK_DELAY_MAX_MS, 60_001]),
                wait_ms: input.choose(&[0, 0, 0, 500]),
            },
            3 => Request::Renew {
                resource: Self::resource(input),
                token: self.token(input),
                ttl_ms: input.choose(&[MIN_TTL_MS, 1_000, MAX_TTL_MS, 0, 30_001]),
            },
            4 => Request::Release {
                resource: Self::resource(input),
                token: self.token(input),
            },
            5 => Request::Check {
                resource: Self::resource(input),
                token: self.token(input),
            },
            6 => Request::Status,
            _ if input.bool() => Request::List {
                prefix: Self::resource(input),
                after: Self::resource(input),
                limit: input.choose(&[1, 100, LIST_LIMIT_MAX, 0, LIST_LIMIT_MAX + 1]),
            },
            _ => Request::Watch {
                resource: Self::resource(input),
                after: self.token(input),
                wait_ms: input.choose(&[0, 0, 1_000, 60_001]),
            },
        }
    }

    /// Sends `bytes` (one frame, as a client would) on connection `index`.
    fn send_frame(&mut self, index: usize, bytes: &[u8]) {
        let mut buf = FrameBuf::new();
        buf.extend_from_slice(bytes);
        let Ok(Decoded::Frame {
            header, payload, ..
        }) = palisade_proto::frame::decode_frame(&buf, FRAME_LIMIT)
        else {
            // A bad header or a short frame: the server answers with an
            // error and closes (or waits for more, then times out).
            self.clients[index] = None;
            return;
        };
        if header.kind != FrameKind::Request {
            self.clients[index] = None;
            return;
        }
        let Ok(archived) = access_request(payload) else {
            self.clients[index] = None;
            return;
        };
        let request = decode_request(payload).expect("validated payloads deserialize");
        let meta = RequestMeta {
            request_id: header.request_id,
            group: header.group,
        };
        self.handle(index, meta, archived, &request);
    }

    fn send_request(&mut self, index: usize, request: &Request, request_id: u64) {
        let mut buf = FrameBuf::new();
        encode_request(&mut buf, request_id, 0, FRAME_LIMIT, request)
            .expect("a built request encodes");
        let bytes = buf.to_vec();
        self.send_frame(index, &bytes);
    }

    fn handle(
        &mut self,
        index: usize,
        meta: RequestMeta,
        archived: &palisade_proto::ArchivedRequest,
        request: &Request,
    ) {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let nonce_byte = self.nonce_counter;
        let now_ms = self.now_ms;
        let serving = self.serving();
        let granting = self.granting();
        let epoch = self.view().epoch;
        let client = self.client(index);
        let phase = client.conn.phase.clone();
        if let Request::Hello { client_nonce, .. } = request {
            if phase == Phase::AwaitHello {
                client.client_nonce = *client_nonce;
            }
        }
        let outcome = self.shared.handle(
            &mut self.clients[index].as_mut().expect("made above").conn,
            meta,
            archived,
            now_ms,
            &mut || [nonce_byte; NONCE_LEN],
        );
        let client = self.clients[index].as_mut().expect("made above");
        let phase_after = client.conn.phase.clone();

        let (response, closes) = match &outcome {
            Outcome::Reply(r) | Outcome::ReplyAndWake(r, _) => (Some(r.clone()), false),
            Outcome::ReplyAndClose(r) => (Some(r.clone()), true),
            _ => (None, false),
        };

        match (&phase, request) {
            (Phase::AwaitHello, Request::Hello { tenant, .. }) => match &response {
                Some(Response::Welcome(welcome)) => {
                    let index = TENANTS
                        .iter()
                        .position(|t| t == tenant)
                        .expect("Welcome only for a known tenant")
                        as u32;
                    assert_ne!(
                        index, BILLING,
                        "a tenant with a credential got in without proof"
                    );
                    assert_eq!(phase_after, Phase::Ready { tenant: index });
                    assert_eq!(welcome.server_signature, None);
                }
                Some(Response::Challenge {
                    salt,
                    iterations,
                    server_nonce,
                }) => {
                    assert_eq!(tenant, TENANTS[BILLING as usize]);
                    assert!(matches!(
                        phase_after,
                        Phase::AwaitAuth {
                            tenant: BILLING,
                            ..
                        }
                    ));
                    client.challenge = Some((salt.clone(), *iterations, *server_nonce));
                }
                Some(Response::Error { .. }) => {
                    assert!(closes, "a refused Hello closes the connection");
                    assert_eq!(phase_after, Phase::AwaitHello);
                }
                other => panic!("unexpected answer to Hello: {other:?}"),
            },
            (Phase::AwaitAuth { .. }, Request::Auth { proof }) => {
                let (salt, iterations, server_nonce) = client
                    .challenge
                    .clone()
                    .expect("AwaitAuth follows a Challenge");
                let message = auth_message(
                    TENANTS[BILLING as usize],
                    &client.client_nonce,
                    &server_nonce,
                    &salt,
                    iterations,
                );
                let (expected, signature) = client_proof(SECRET, &salt, iterations, &message);
                match &response {
                    Some(Response::Welcome(welcome)) => {
                        assert_eq!(proof, &expected, "Welcome for a wrong proof");
                        assert_eq!(welcome.server_signature, Some(signature));
                        assert_eq!(phase_after, Phase::Ready { tenant: BILLING });
                    }
                    Some(Response::Error {
                        code: ErrorCode::AuthFailed,
                        ..
                    }) => {
                        assert_ne!(proof, &expected, "the right proof was refused");
                        assert!(closes);
                    }
                    other => panic!("unexpected answer to Auth: {other:?}"),
                }
            }
            (Phase::AwaitHello | Phase::AwaitAuth { .. }, _) => {
                assert!(
                    closes,
                    "a request before the handshake must close: {outcome:?}"
                );
                assert!(matches!(
                    response,
                    Some(Response::Error {
                        code: ErrorCode::NotAuthenticated,
                        ..
                    })
                ));
                assert_eq!(phase_after, phase);
            }
            (Phase::Ready { .. }, Request::Hello { .. } | Request::Auth { .. }) => {
                assert!(matches!(
                    response,
                    Some(Response::Error {
                        code: ErrorCode::InvalidArgument,
                        ..
                    })
                ));
                assert_eq!(phase_after, phase);
            }
            (Phase::Ready { tenant }, Request::List { limit, .. }) => {
                assert_eq!(phase_after, phase);
                match &outcome {
                    // Gathered by the shell: only for the connection's own
                    // tenant (S5), from a serving leader, within the limit.
                    Outcome::List(list) => {
                        assert_eq!(list.tenant, *tenant);
                        assert!(serving, "a list from a node that may not serve");
                        assert!((1..=LIST_LIMIT_MAX).contains(limit));
                    }
                    Outcome::Reply(Response::Error { .. } | Response::Redirect { .. }) => {}
                    other => panic!("unexpected answer to List: {other:?}"),
                }
            }
            (Phase::Ready { tenant }, _) => {
                assert_eq!(
                    phase_after, phase,
                    "the tenant of a connection never changes"
                );
                if let (Some(resource), Some(response)) = (lease_name(request), &response) {
                    self.check_lease(
                        *tenant, resource, request, response, now_ms, epoch, serving, granting,
                    );
                }
            }
        }
        if closes {
            self.clients[index] = None;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_lease(
        &mut self,
        tenant: u32,
        resource: &str,
        request: &Request,
        response: &Response,
        now_ms: u64,
        epoch: u32,
        serving: bool,
        granting: bool,
    ) {
        let key = (tenant, resource.to_owned());
        let model = self.keys.get(&key).cloned().unwrap_or_default();
        let live = model.live(now_ms, epoch);
        let succeeded = matches!(
            response,
            Response::Granted { .. }
                | Response::Renewed { .. }
                | Response::Released { .. }
                | Response::Current { .. }
                | Response::Stale { .. }
                | Response::Watched { .. }
        );
        if succeeded {
            assert!(
                serving,
                "a lease answer from a node that may not serve: {response:?}"
            );
            assert!(
                validate_resource(resource).is_ok(),
                "answered for an invalid resource name"
            );
        }
        if !serving {
            assert!(
                matches!(response, Response::Redirect { .. } | Response::Error { .. }),
                "not serving, yet answered {response:?}"
            );
        }
        match (request, response) {
            (
                Request::Acquire {
                    holder,
                    ttl_ms,
                    lock_delay_ms,
                    ..
                },
                Response::Granted {
                    token,
                    ttl_ms: granted_ttl,
                    ..
                },
            ) => {
                assert!(
                    granting,
                    "granted outside a confirmed leadership or in the grace period"
                );
                assert_eq!(granted_ttl, ttl_ms);
                assert!((MIN_TTL_MS..=MAX_TTL_MS).contains(ttl_ms));
                assert!(*lock_delay_ms <= LOCK_DELAY_MAX_MS);
                assert_ne!(*holder, 0);
                assert_eq!(token_epoch(*token), epoch, "a token of another epoch");
                // Counted from the end of the arrival millisecond.
                let expires_at_ms = now_ms + u64::from(*ttl_ms) + EXPIRY_MARGIN_MS;
                let lease = match live {
                    Some(lease) if lease.holder == *holder => {
                        assert_eq!(
                            *token, lease.token,
                            "a retry by the holder got another token"
                        );
                        Lease {
                            expires_at_ms: expires_at_ms.max(lease.expires_at_ms),
                            lock_delay_ms: *lock_delay_ms,
                            ttl_ms: lease.ttl_ms.max(*ttl_ms),
                            ..lease
                        }
                    }
                    _ => {
                        if let Some(held) = model.unexpired(now_ms) {
                            panic!(
                                "S2: granted {token:#x} to holder {holder} while {:#x} (holder {}) runs until {} > now {now_ms}",
                                held.token, held.holder, held.expires_at_ms
                            );
                        }
                        if let Some(expired) = model.lease {
                            let free_at = expired.expires_at_ms + u64::from(expired.lock_delay_ms);
                            assert!(
                                now_ms >= free_at,
                                "granted inside the lock delay of {:#x} (free at {free_at}, now {now_ms})",
                                expired.token
                            );
                        }
                        assert!(
                            *token > model.last_token,
                            "S1: token {token:#x} not above {:#x}",
                            model.last_token
                        );
                        self.tokens.push(*token);
                        Lease {
                            token: *token,
                            holder: *holder,
                            expires_at_ms,
                            lock_delay_ms: *lock_delay_ms,
                            ttl_ms: *ttl_ms,
                        }
                    }
                };
                let entry = self.keys.entry(key).or_default();
                entry.lease = Some(lease);
                entry.last_token = entry.last_token.max(lease.token);
            }
            (Request::Acquire { holder, .. }, Response::Busy { token, .. }) => {
                if *token != 0 {
                    let lease = live.expect("Busy names a live lease");
                    assert_eq!(*token, lease.token);
                    assert_ne!(lease.holder, *holder, "the holder itself was told Busy");
                } else {
                    let lease = model
                        .lease
                        .expect("Busy without a lease: nothing blocks the key");
                    assert!(now_ms >= lease.expires_at_ms);
                    assert!(
                        now_ms < lease.expires_at_ms + u64::from(lease.lock_delay_ms),
                        "Busy after the lock delay ended"
                    );
                }
            }
            (
                Request::Renew { token, ttl_ms, .. },
                Response::Renewed {
                    token: renewed,
                    ttl_ms: t,
                },
            ) => {
                assert_eq!(token, renewed);
                let lease = live.expect("renewed a lease that is not live");
                assert_eq!(
                    lease.token, *token,
                    "renewed with a token that is not the lease's"
                );
                assert_eq!(
                    *t,
                    (*ttl_ms).min(lease.ttl_ms),
                    "a renewal promises at most the lease's ttl"
                );
                let entry = self.keys.get_mut(&key).expect("live implies present");
                entry.lease = Some(Lease {
                    // The server's expiry never moves back.
                    expires_at_ms: (now_ms + u64::from(*t) + EXPIRY_MARGIN_MS)
                        .max(lease.expires_at_ms),
                    ..lease
                });
            }
            (Request::Release { token, .. }, Response::Released { token: released }) => {
                assert_eq!(token, released);
                let lease = model.lease.expect("released a lease never granted");
                assert_eq!(
                    lease.token, *token,
                    "released with a token that is not the lease's"
                );
                self.keys.get_mut(&key).expect("present").lease = None;
            }
            (
                Request::Check { token, .. },
                Response::Current {
                    token: current,
                    remaining_ms,
                },
            ) => {
                assert_eq!(token, current);
                let lease = live.expect("current but not live");
                assert_eq!(
                    lease.token, *token,
                    "current for a token that is not the lease's"
                );
                let remaining = (lease.expires_at_ms - now_ms).min(u64::from(u32::MAX));
                assert_eq!(u64::from(*remaining_ms), remaining);
            }
            (
                _,
                Response::Stale {
                    current_token,
                    last_token,
                }
                | Response::Watched {
                    current_token,
                    last_token,
                    ..
                },
            ) => {
                assert_eq!(*current_token, live.map_or(0, |lease| lease.token));
                assert!(
                    *last_token <= model.last_token,
                    "names a token never granted"
                );
                if let Request::Watch { after, .. } = request {
                    if let Response::Watched { changed, .. } = response {
                        assert_eq!(*changed, *last_token > *after);
                    }
                }
                if let Request::Renew { token, .. } | Request::Check { token, .. } = request {
                    assert!(
                        live.map_or(true, |lease| lease.token != *token),
                        "the live lease's own token was called stale"
                    );
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut world = World {
        shared: shared(),
        clients: [None, None, None],
        next_conn_id: 0,
        now_ms: START_MS,
        nonce_counter: 0,
        keys: HashMap::new(),
        tokens: Vec::new(),
    };
    let mut request_id = 0u64;
    while !input.is_empty() {
        let op = input.byte();
        let index = usize::from(op & 3) % 3;
        match op >> 5 {
            0 => {
                let bytes = input.blob();
                world.send_frame(index, bytes);
            }
            1 => world.now_ms += u64::from(input.u16()) * input.choose(&[1, 10, 100]),
            2 => world.leadership(&mut input),
            3 => world.clients[index] = None,
            _ => {
                let request = world.request(index, &mut input);
                request_id += 1;
                world.send_request(index, &request, request_id);
            }
        }
    }
});

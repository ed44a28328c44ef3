//! Test vectors: the normative bytes of protocol version 1.
//!
//! `proto/vectors/*.json` hold, for every request and response variant
//! (and the awkward cases: inline and out-of-line strings, empty vectors,
//! `None`, a status with peers, every error code), the exact frame this
//! crate sends and the values it stands for; payloads the validator must
//! refuse; and the credential proof for a fixed secret, salt and nonces.
//! Clients in other languages test against the same files (see
//! `clients/python/tests`).
//!
//! These tests read the files as the source of truth: the encoder must
//! produce exactly the recorded bytes and the decoder must read exactly the
//! recorded values. A layout change (an rkyv upgrade, a reordered or
//! resized field, a new variant in the middle) fails here, loudly. Such a
//! change breaks every client: it needs a new protocol version, not new
//! vectors. Only when that is intended, regenerate the files with
//! `PALISADE_BLESS_VECTORS=1 cargo test -p palisade-proto --test vectors`
//! and update docs/PROTOCOL.md to match.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use palisade_proto::auth::{auth_message, client_proof, derive_stored, verify_proof};
use palisade_proto::frame::{decode_frame, FrameError, FrameHeader};
use palisade_proto::{
    access_request, access_response, decode_request, decode_response, encode_request,
    encode_response, Decoded, ErrorCode, FrameBuf, FrameKind, ListedLease, Peer, Request, Response,
    Role, StatusInfo, Welcome, HEADER_LEN,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PAYLOAD_MAX: u32 = 1 << 20;
/// Size of every archived `Request` root (the largest variant, `Acquire`).
const REQUEST_ROOT_LEN: usize = 40;
/// Size of every archived `Response` root (the largest variant, `Status`).
const RESPONSE_ROOT_LEN: usize = 104;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn bless() -> bool {
    std::env::var_os("PALISADE_BLESS_VECTORS").is_some()
}

fn read_json(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn write_json(name: &str, value: &Value) {
    let path = vectors_dir().join(name);
    std::fs::create_dir_all(vectors_dir()).expect("create vectors dir");
    let mut text = serde_json::to_string_pretty(value).expect("serialize");
    text.push('\n');
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn array<const N: usize>(text: &str) -> [u8; N] {
    unhex(text)
        .try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

/// Bytes `start, start + 1, ...` (wrapping), for recognisable fields.
fn ramp<const N: usize>(start: u8) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = start.wrapping_add(u8::try_from(i).expect("short"));
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Request(Request),
    Response(Response),
}

struct Case {
    name: &'static str,
    notes: &'static str,
    request_id: u64,
    msg: Msg,
}

fn request_variant(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "Hello",
        Request::Auth { .. } => "Auth",
        Request::Acquire { .. } => "Acquire",
        Request::Renew { .. } => "Renew",
        Request::Release { .. } => "Release",
        Request::Check { .. } => "Check",
        Request::Status => "Status",
        Request::Watch { .. } => "Watch",
        Request::List { .. } => "List",
    }
}

fn response_variant(response: &Response) -> &'static str {
    match response {
        Response::Welcome(_) => "Welcome",
        Response::Challenge { .. } => "Challenge",
        Response::Granted { .. } => "Granted",
        Response::Busy { .. } => "Busy",
        Response::Renewed { .. } => "Renewed",
        Response::Released { .. } => "Released",
        Response::Current { .. } => "Current",
        Response::Stale { .. } => "Stale",
        Response::Status(_) => "Status",
        Response::Watched { .. } => "Watched",
        Response::Redirect { .. } => "Redirect",
        Response::Error { .. } => "Error",
        Response::Listed { .. } => "Listed",
    }
}

/// Tags as PROTOCOL.md states them: declaration order, from 0.
const REQUEST_TAGS: [&str; 9] = [
    "Hello", "Auth", "Acquire", "Renew", "Release", "Check", "Status", "Watch", "List",
];
const RESPONSE_TAGS: [&str; 13] = [
    "Welcome",
    "Challenge",
    "Granted",
    "Busy",
    "Renewed",
    "Released",
    "Current",
    "Stale",
    "Status",
    "Watched",
    "Redirect",
    "Error",
    "Listed",
];

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

fn role_of(name: &str) -> Role {
    match name {
        "leader" => Role::Leader,
        "follower" => Role::Follower,
        "candidate" => Role::Candidate,
        other => panic!("unknown role {other:?}"),
    }
}

fn code_of(name: &str) -> ErrorCode {
    ErrorCode::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or_else(|| panic!("unknown error code {name:?}"))
}

fn to_json(msg: &Msg) -> Value {
    match msg {
        Msg::Request(request) => {
            let mut v = match request {
                Request::Hello {
                    tenant,
                    client_nonce,
                    client_name,
                } => {
                    json!({"tenant": tenant, "client_nonce": hex(client_nonce), "client_name": client_name})
                }
                Request::Auth { proof } => json!({"proof": hex(proof)}),
                Request::Acquire {
                    resource,
                    holder,
                    ttl_ms,
                    lock_delay_ms,
                    wait_ms,
                } => {
                    json!({"resource": resource, "holder": holder, "ttl_ms": ttl_ms, "lock_delay_ms": lock_delay_ms, "wait_ms": wait_ms})
                }
                Request::Renew {
                    resource,
                    token,
                    ttl_ms,
                } => json!({"resource": resource, "token": token, "ttl_ms": ttl_ms}),
                Request::Release { resource, token } | Request::Check { resource, token } => {
                    json!({"resource": resource, "token": token})
                }
                Request::Status => json!({}),
                Request::Watch {
                    resource,
                    after,
                    wait_ms,
                } => json!({"resource": resource, "after": after, "wait_ms": wait_ms}),
                Request::List {
                    prefix,
                    after,
                    limit,
                } => json!({"prefix": prefix, "after": after, "limit": limit}),
            };
            v["type"] = json!(request_variant(request));
            v
        }
        Msg::Response(response) => {
            let mut v = match response {
                Response::Welcome(w) => json!({
                    "node_id": w.node_id,
                    "epoch": w.epoch,
                    "max_ttl_ms": w.max_ttl_ms,
                    "min_ttl_ms": w.min_ttl_ms,
                    "lock_delay_max_ms": w.lock_delay_max_ms,
                    "max_drift_ppm": w.max_drift_ppm,
                    "server_signature": w.server_signature.map(|s| hex(&s)),
                }),
                Response::Challenge {
                    salt,
                    iterations,
                    server_nonce,
                } => {
                    json!({"salt": hex(salt), "iterations": iterations, "server_nonce": hex(server_nonce)})
                }
                Response::Granted {
                    token,
                    ttl_ms,
                    waited_ms,
                } => json!({"token": token, "ttl_ms": ttl_ms, "waited_ms": waited_ms}),
                Response::Busy {
                    token,
                    remaining_ms,
                    waiters,
                    waited_ms,
                } => {
                    json!({"token": token, "remaining_ms": remaining_ms, "waiters": waiters, "waited_ms": waited_ms})
                }
                Response::Renewed { token, ttl_ms } => json!({"token": token, "ttl_ms": ttl_ms}),
                Response::Released { token } => json!({ "token": token }),
                Response::Current {
                    token,
                    remaining_ms,
                } => json!({"token": token, "remaining_ms": remaining_ms}),
                Response::Stale {
                    current_token,
                    last_token,
                } => json!({"current_token": current_token, "last_token": last_token}),
                Response::Status(s) => json!({
                    "node_id": s.node_id,
                    "role": role_name(s.role),
                    "epoch": s.epoch,
                    "leader_id": s.leader_id,
                    "cores": s.cores,
                    "leases_held": s.leases_held,
                    "ops_served": s.ops_served,
                    "connections": s.connections,
                    "waiters": s.waiters,
                    "grants_from_unix_ms": s.grants_from_unix_ms,
                    "grace_remaining_ms": s.grace_remaining_ms,
                    "uptime_ms": s.uptime_ms,
                    "table_capacity": s.table_capacity,
                    "peers": s.peers.iter().map(|p| json!({"id": p.id, "endpoint": p.endpoint})).collect::<Vec<_>>(),
                    "version": s.version,
                }),
                Response::Watched {
                    current_token,
                    last_token,
                    changed,
                } => {
                    json!({"current_token": current_token, "last_token": last_token, "changed": changed})
                }
                Response::Redirect {
                    leader_id,
                    endpoint,
                } => json!({"leader_id": leader_id, "endpoint": endpoint}),
                Response::Error {
                    code,
                    retry_after_ms,
                    message,
                } => {
                    json!({"code": code.as_str(), "code_value": *code as u16, "retry_after_ms": retry_after_ms, "message": message})
                }
                Response::Listed {
                    leases,
                    next_after,
                    more,
                } => json!({
                    "leases": leases.iter().map(|l| json!({"resource": l.resource, "token": l.token, "remaining_ms": l.remaining_ms, "waiters": l.waiters})).collect::<Vec<_>>(),
                    "next_after": next_after,
                    "more": more,
                }),
            };
            v["type"] = json!(response_variant(response));
            v
        }
    }
}

/// Reads a field, failing with the vector's name on a missing or
/// mistyped one.
struct Fields<'a> {
    name: &'a str,
    value: &'a Value,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> &Value {
        self.value
            .get(key)
            .unwrap_or_else(|| panic!("vector {}: no field {key:?}", self.name))
    }
    fn u64(&self, key: &str) -> u64 {
        self.get(key)
            .as_u64()
            .unwrap_or_else(|| panic!("vector {}: {key} is not a u64", self.name))
    }
    fn u32(&self, key: &str) -> u32 {
        u32::try_from(self.u64(key)).expect("fits u32")
    }
    fn u16(&self, key: &str) -> u16 {
        u16::try_from(self.u64(key)).expect("fits u16")
    }
    fn str(&self, key: &str) -> String {
        self.get(key)
            .as_str()
            .unwrap_or_else(|| panic!("vector {}: {key} is not a string", self.name))
            .to_string()
    }
    fn bool(&self, key: &str) -> bool {
        self.get(key)
            .as_bool()
            .unwrap_or_else(|| panic!("vector {}: {key} is not a bool", self.name))
    }
}

fn from_json(name: &str, direction: &str, value: &Value) -> Msg {
    let f = Fields { name, value };
    let kind = f.str("type");
    match direction {
        "request" => Msg::Request(match kind.as_str() {
            "Hello" => Request::Hello {
                tenant: f.str("tenant"),
                client_nonce: array(&f.str("client_nonce")),
                client_name: f.str("client_name"),
            },
            "Auth" => Request::Auth {
                proof: array(&f.str("proof")),
            },
            "Acquire" => Request::Acquire {
                resource: f.str("resource"),
                holder: f.u64("holder"),
                ttl_ms: f.u32("ttl_ms"),
                lock_delay_ms: f.u32("lock_delay_ms"),
                wait_ms: f.u32("wait_ms"),
            },
            "Renew" => Request::Renew {
                resource: f.str("resource"),
                token: f.u64("token"),
                ttl_ms: f.u32("ttl_ms"),
            },
            "Release" => Request::Release {
                resource: f.str("resource"),
                token: f.u64("token"),
            },
            "Check" => Request::Check {
                resource: f.str("resource"),
                token: f.u64("token"),
            },
            "Status" => Request::Status,
            "Watch" => Request::Watch {
                resource: f.str("resource"),
                after: f.u64("after"),
                wait_ms: f.u32("wait_ms"),
            },
            "List" => Request::List {
                prefix: f.str("prefix"),
                after: f.str("after"),
                limit: f.u32("limit"),
            },
            other => panic!("vector {name}: unknown request type {other:?}"),
        }),
        "response" => Msg::Response(match kind.as_str() {
            "Welcome" => Response::Welcome(Welcome {
                node_id: f.u16("node_id"),
                epoch: f.u32("epoch"),
                max_ttl_ms: f.u32("max_ttl_ms"),
                min_ttl_ms: f.u32("min_ttl_ms"),
                lock_delay_max_ms: f.u32("lock_delay_max_ms"),
                max_drift_ppm: f.u32("max_drift_ppm"),
                server_signature: f.get("server_signature").as_str().map(array),
            }),
            "Challenge" => Response::Challenge {
                salt: unhex(&f.str("salt")),
                iterations: f.u32("iterations"),
                server_nonce: array(&f.str("server_nonce")),
            },
            "Granted" => Response::Granted {
                token: f.u64("token"),
                ttl_ms: f.u32("ttl_ms"),
                waited_ms: f.u32("waited_ms"),
            },
            "Busy" => Response::Busy {
                token: f.u64("token"),
                remaining_ms: f.u32("remaining_ms"),
                waiters: f.bool("waiters"),
                waited_ms: f.u32("waited_ms"),
            },
            "Renewed" => Response::Renewed {
                token: f.u64("token"),
                ttl_ms: f.u32("ttl_ms"),
            },
            "Released" => Response::Released {
                token: f.u64("token"),
            },
            "Current" => Response::Current {
                token: f.u64("token"),
                remaining_ms: f.u32("remaining_ms"),
            },
            "Stale" => Response::Stale {
                current_token: f.u64("current_token"),
                last_token: f.u64("last_token"),
            },
            "Status" => Response::Status(StatusInfo {
                node_id: f.u16("node_id"),
                role: role_of(&f.str("role")),
                epoch: f.u32("epoch"),
                leader_id: f.u16("leader_id"),
                cores: f.u16("cores"),
                leases_held: f.u64("leases_held"),
                ops_served: f.u64("ops_served"),
                connections: f.u32("connections"),
                waiters: f.u64("waiters"),
                grants_from_unix_ms: f.u64("grants_from_unix_ms"),
                grace_remaining_ms: f.u64("grace_remaining_ms"),
                uptime_ms: f.u64("uptime_ms"),
                table_capacity: f.u32("table_capacity"),
                peers: f
                    .get("peers")
                    .as_array()
                    .expect("peers is a list")
                    .iter()
                    .map(|p| {
                        let p = Fields { name, value: p };
                        Peer {
                            id: p.u16("id"),
                            endpoint: p.str("endpoint"),
                        }
                    })
                    .collect(),
                version: f.str("version"),
            }),
            "Watched" => Response::Watched {
                current_token: f.u64("current_token"),
                last_token: f.u64("last_token"),
                changed: f.bool("changed"),
            },
            "Redirect" => Response::Redirect {
                leader_id: f.u16("leader_id"),
                endpoint: f.str("endpoint"),
            },
            "Error" => {
                let code = code_of(&f.str("code"));
                assert_eq!(
                    u64::from(code as u16),
                    f.u64("code_value"),
                    "vector {name}: code name and value disagree"
                );
                Response::Error {
                    code,
                    retry_after_ms: f.u32("retry_after_ms"),
                    message: f.str("message"),
                }
            }
            "Listed" => Response::Listed {
                leases: f
                    .get("leases")
                    .as_array()
                    .expect("leases is a list")
                    .iter()
                    .map(|l| {
                        let l = Fields { name, value: l };
                        ListedLease {
                            resource: l.str("resource"),
                            token: l.u64("token"),
                            remaining_ms: l.u32("remaining_ms"),
                            waiters: l.bool("waiters"),
                        }
                    })
                    .collect(),
                next_after: f.str("next_after"),
                more: f.bool("more"),
            },
            other => panic!("vector {name}: unknown response type {other:?}"),
        }),
        other => panic!("vector {name}: direction {other:?}"),
    }
}

fn encode(msg: &Msg, request_id: u64) -> Vec<u8> {
    let mut out = FrameBuf::new();
    match msg {
        Msg::Request(r) => encode_request(&mut out, request_id, 0, PAYLOAD_MAX, r),
        Msg::Response(r) => encode_response(&mut out, request_id, 0, PAYLOAD_MAX, r),
    }
    .expect("encodes");
    out.to_vec()
}

/// An 8-aligned copy, as a receive buffer holds it.
fn aligned(bytes: &[u8]) -> FrameBuf {
    let mut buf = FrameBuf::new();
    buf.extend_from_slice(bytes);
    buf
}

const TOKEN: u64 = (7 << 32) | 42;

fn welcome(server_signature: Option<[u8; 32]>) -> Welcome {
    Welcome {
        node_id: 1,
        epoch: 7,
        max_ttl_ms: 60_000,
        min_ttl_ms: 100,
        lock_delay_max_ms: 60_000,
        max_drift_ppm: 10_000,
        server_signature,
    }
}

fn status(peers: Vec<Peer>, role: Role, leader_id: u16) -> StatusInfo {
    StatusInfo {
        node_id: 2,
        role,
        epoch: 7,
        leader_id,
        cores: 2,
        leases_held: 3,
        ops_served: 123_456_789,
        connections: 4,
        waiters: 1,
        grants_from_unix_ms: 1_767_225_600_000,
        grace_remaining_ms: 0,
        uptime_ms: 86_400_000,
        table_capacity: 65_536,
        peers,
        version: "0.1.0".into(),
    }
}

fn peer(id: u16, endpoint: &str) -> Peer {
    Peer {
        id,
        endpoint: endpoint.into(),
    }
}

/// The canonical cases, used only to (re)generate the file.
fn cases() -> Vec<Case> {
    use Msg::{Request as Q, Response as A};
    let long_resource: String = "r".repeat(256);
    let mut cases = vec![
        Case { name: "hello_inline", notes: "tenant and client_name of at most 8 bytes are stored inline, padded with 0xff", request_id: 1, msg: Q(Request::Hello { tenant: "default".into(), client_nonce: ramp(0x00), client_name: "py".into() }) },
        Case { name: "hello_out_of_line", notes: "two out-of-line strings: their bytes precede the root in field order (tenant, then client_name), unaligned, then zero padding to 8", request_id: 1, msg: Q(Request::Hello { tenant: "billing-team".into(), client_nonce: ramp(0x10), client_name: "palisade-python/0.1.0".into() }) },
        Case { name: "hello_empty_name", notes: "an empty string is eight 0xff bytes", request_id: 1, msg: Q(Request::Hello { tenant: "default".into(), client_nonce: [0; 16], client_name: String::new() }) },
        Case { name: "auth", notes: "the 32-byte proof is stored inline right after the tag", request_id: 2, msg: Q(Request::Auth { proof: ramp(0xa0) }) },
        Case { name: "acquire_inline", notes: "the largest request variant: it sets the 40-byte root of every request", request_id: 3, msg: Q(Request::Acquire { resource: "disk0".into(), holder: 0x0123_4567_89ab_cdef, ttl_ms: 10_000, lock_delay_ms: 0, wait_ms: 0 }) },
        Case { name: "acquire_exactly_8_bytes", notes: "8 bytes is still inline, with no 0xff terminator", request_id: 4, msg: Q(Request::Acquire { resource: "eightchr".into(), holder: 1, ttl_ms: 30_000, lock_delay_ms: 1_000, wait_ms: 5_000 }) },
        Case { name: "acquire_9_bytes", notes: "9 bytes goes out of line: length 9 is stored as 0x89 (bit 7 set, bit 6 clear)", request_id: 5, msg: Q(Request::Acquire { resource: "ninechars".into(), holder: u64::MAX, ttl_ms: u32::MAX, lock_delay_ms: u32::MAX, wait_ms: u32::MAX }) },
        Case { name: "acquire_utf8", notes: "lengths count UTF-8 bytes (18 here), not characters", request_id: 6, msg: Q(Request::Acquire { resource: "jobs/2026/11/übung".into(), holder: 2, ttl_ms: 1_000, lock_delay_ms: 0, wait_ms: 0 }) },
        Case { name: "acquire_256_bytes", notes: "the longest resource: length 256 = 0b1_0000_0000 is stored as ((256 & 0x3f) | 0x80) | ((256 & !0x3f) << 2) = 0x480", request_id: 7, msg: Q(Request::Acquire { resource: long_resource, holder: 3, ttl_ms: 1_000, lock_delay_ms: 0, wait_ms: 0 }) },
        Case { name: "renew", notes: "", request_id: 8, msg: Q(Request::Renew { resource: "disk0".into(), token: TOKEN, ttl_ms: 10_000 }) },
        Case { name: "release", notes: "", request_id: 9, msg: Q(Request::Release { resource: "disk0".into(), token: TOKEN }) },
        Case { name: "check", notes: "", request_id: 10, msg: Q(Request::Check { resource: "disk0".into(), token: TOKEN }) },
        Case { name: "check_out_of_line", notes: "", request_id: 11, msg: Q(Request::Check { resource: "volumes/db-primary".into(), token: TOKEN }) },
        Case { name: "status", notes: "a unit variant: the tag and 39 zero bytes", request_id: 12, msg: Q(Request::Status) },
        Case { name: "watch", notes: "Watch is tag 7, after Status (6)", request_id: 0xfedc_ba98_7654_3210, msg: Q(Request::Watch { resource: "disk0".into(), after: TOKEN, wait_ms: 30_000 }) },
        Case { name: "watch_out_of_line", notes: "", request_id: 13, msg: Q(Request::Watch { resource: "volumes/db-primary".into(), after: 0, wait_ms: 60_000 }) },
        Case { name: "list_first_page", notes: "List is tag 8, after Watch (7): no prefix, no cursor (two empty strings)", request_id: 14, msg: Q(Request::List { prefix: String::new(), after: String::new(), limit: 100 }) },
        Case { name: "list_out_of_line", notes: "prefix and cursor out of line, in field order", request_id: 15, msg: Q(Request::List { prefix: "volumes/db-".into(), after: "volumes/db-primary".into(), limit: 1_000 }) },
        Case { name: "welcome_no_signature", notes: "every response root is 104 bytes (set by Status)", request_id: 1, msg: A(Response::Welcome(welcome(None))) },
        Case { name: "welcome_signature", notes: "Option: a tag byte (0 None, 1 Some) then the value", request_id: 2, msg: A(Response::Welcome(welcome(Some(ramp(0xc0))))) },
        Case { name: "challenge", notes: "the salt is a byte vector: its bytes precede the root; the root holds a relative offset and a length", request_id: 1, msg: A(Response::Challenge { salt: ramp::<16>(0x30).to_vec(), iterations: 4096, server_nonce: ramp(0x50) }) },
        Case { name: "challenge_empty_salt", notes: "an empty vector still points at the position where its bytes would start", request_id: 1, msg: A(Response::Challenge { salt: Vec::new(), iterations: 1, server_nonce: [0xee; 16] }) },
        Case { name: "granted", notes: "", request_id: 3, msg: A(Response::Granted { token: TOKEN, ttl_ms: 10_000, waited_ms: 0 }) },
        Case { name: "granted_after_wait", notes: "a queued acquire answered later", request_id: 4, msg: A(Response::Granted { token: (8 << 32) | 1, ttl_ms: 30_000, waited_ms: 1_234 }) },
        Case { name: "busy", notes: "", request_id: 3, msg: A(Response::Busy { token: TOKEN, remaining_ms: 9_000, waiters: true, waited_ms: 5_000 }) },
        Case { name: "busy_lock_delay", notes: "no holder (token 0), no waiters: the resource is in its lock delay", request_id: 3, msg: A(Response::Busy { token: 0, remaining_ms: 800, waiters: false, waited_ms: 0 }) },
        Case { name: "renewed", notes: "", request_id: 8, msg: A(Response::Renewed { token: TOKEN, ttl_ms: 10_000 }) },
        Case { name: "released", notes: "", request_id: 9, msg: A(Response::Released { token: TOKEN }) },
        Case { name: "current", notes: "", request_id: 10, msg: A(Response::Current { token: TOKEN, remaining_ms: 4_321 }) },
        Case { name: "stale", notes: "", request_id: 10, msg: A(Response::Stale { current_token: TOKEN + 1, last_token: TOKEN + 1 }) },
        Case { name: "stale_none", notes: "no live lease: current_token 0", request_id: 10, msg: A(Response::Stale { current_token: 0, last_token: TOKEN }) },
        Case { name: "status_with_peers", notes: "out-of-line peer endpoints first, then the 4-aligned array of 12-byte peers, then the version, then the root", request_id: 12, msg: A(Response::Status(status(vec![peer(1, "127.0.0.1:7411"), peer(2, "127.0.0.1:7412"), peer(3, "h:7413")], Role::Follower, 1))) },
        Case { name: "status_no_peers", notes: "a single node: an empty peer vector", request_id: 12, msg: A(Response::Status(status(Vec::new(), Role::Leader, 2))) },
        Case { name: "status_long_version", notes: "", request_id: 12, msg: A(Response::Status(status(vec![peer(1, "node1.example:7400")], Role::Candidate, 0))) },
        Case { name: "watched_changed", notes: "", request_id: 0xfedc_ba98_7654_3210, msg: A(Response::Watched { current_token: TOKEN + 1, last_token: TOKEN + 1, changed: true }) },
        Case { name: "watched_unchanged", notes: "", request_id: 13, msg: A(Response::Watched { current_token: 0, last_token: TOKEN, changed: false }) },
        Case { name: "redirect", notes: "", request_id: 3, msg: A(Response::Redirect { leader_id: 3, endpoint: "127.0.0.1:7413".into() }) },
        Case { name: "redirect_unknown", notes: "no leader known: leader_id 0 and an empty endpoint", request_id: 3, msg: A(Response::Redirect { leader_id: 0, endpoint: String::new() }) },
        Case { name: "listed_page", notes: "Listed is tag 12, after Error (11): the long resource names first, in element order, then zero padding to 8, then the array of 24-byte, 8-aligned elements, then the long cursor, then the root", request_id: 15, msg: A(Response::Listed { leases: vec![
            ListedLease { resource: "disk0".into(), token: TOKEN, remaining_ms: 9_000, waiters: false },
            ListedLease { resource: "volumes/db-primary".into(), token: (8 << 32) | 1, remaining_ms: 250, waiters: true },
            ListedLease { resource: "volumes/db-replica".into(), token: 1, remaining_ms: 0, waiters: false },
        ], next_after: "volumes/db-replica".into(), more: true }) },
        Case { name: "listed_empty", notes: "the last page: no leases (an empty vector still points where its elements would start), empty cursor, more false", request_id: 14, msg: A(Response::Listed { leases: Vec::new(), next_after: String::new(), more: false }) },
        Case { name: "error_timeout_connection_level", notes: "request_id 0: a connection-level error; the server closes the connection after it", request_id: 0, msg: A(Response::Error { code: ErrorCode::Timeout, retry_after_ms: 0, message: "the handshake did not complete within limits.handshake_timeout; closing".into() }) },
        Case { name: "error_unavailable", notes: "", request_id: 3, msg: A(Response::Error { code: ErrorCode::Unavailable, retry_after_ms: 1_500, message: "grace period".into() }) },
    ];
    // One short error per code, so decoders can check the whole table.
    for code in ErrorCode::ALL {
        let name: &'static str =
            Box::leak(format!("error_code_{}", code.as_str()).into_boxed_str());
        cases.push(Case {
            name,
            notes: "",
            request_id: 20 + u64::from(code as u16),
            msg: A(Response::Error {
                code,
                retry_after_ms: 0,
                message: code.as_str().into(),
            }),
        });
    }
    cases
}

fn frames_document() -> Value {
    let vectors: Vec<Value> = cases()
        .iter()
        .map(|case| {
            let frame = encode(&case.msg, case.request_id);
            let payload_len = frame.len() - HEADER_LEN;
            let (direction, root) = match case.msg {
                Msg::Request(_) => ("request", REQUEST_ROOT_LEN),
                Msg::Response(_) => ("response", RESPONSE_ROOT_LEN),
            };
            json!({
                "name": case.name,
                "direction": direction,
                "notes": case.notes,
                "request_id": case.request_id,
                "group": 0,
                "message": to_json(&case.msg),
                "payload_len": payload_len,
                "root_offset": payload_len - root,
                "frame": hex(&frame),
            })
        })
        .collect();
    json!({
        "about": "Palisade protocol version 1 test vectors (docs/PROTOCOL.md). Every frame is exact: header, payload (root last), padding. Byte arrays are lowercase hex; integers are JSON numbers (u64 values may exceed 2^53); Error codes by name and value.",
        "protocol_version": 1,
        "request_root_len": REQUEST_ROOT_LEN,
        "response_root_len": RESPONSE_ROOT_LEN,
        "request_tags": REQUEST_TAGS,
        "response_tags": RESPONSE_TAGS,
        "vectors": vectors,
    })
}

fn payload_of(frame: &mut [u8]) -> &mut [u8] {
    &mut frame[HEADER_LEN..]
}

fn set_payload_len(frame: &mut Vec<u8>, len: usize) {
    let padded = (len + 7) & !7;
    frame.resize(HEADER_LEN + padded, 0);
    frame[0..4].copy_from_slice(&u32::try_from(len).expect("small").to_le_bytes());
}

/// Payloads with a valid header that the validator must refuse.
fn invalid_document() -> Value {
    let req = |r: Request| encode(&Msg::Request(r), 1);
    let resp = |r: Response| encode(&Msg::Response(r), 1);
    let check = |resource: &str| {
        req(Request::Check {
            resource: resource.into(),
            token: 1,
        })
    };
    let mut payloads: Vec<(&str, &str, &str, Vec<u8>)> = Vec::new();

    let mut f = req(Request::Status);
    payload_of(&mut f)[0] = 9;
    payloads.push((
        "request_unknown_tag",
        "request",
        "request tag 9 does not exist (0..=8)",
        f,
    ));

    let mut f = resp(Response::Released { token: 1 });
    payload_of(&mut f)[0] = 13;
    payloads.push((
        "response_unknown_tag",
        "response",
        "response tag 13 does not exist (0..=12)",
        f,
    ));

    // "ninechars" out of line: bytes at 0..9, root at 16, string at root+4.
    let mut f = check("ninechars");
    payload_of(&mut f)[16 + 4] = 0x85;
    payloads.push((
        "string_out_of_line_too_short",
        "request",
        "an out-of-line string must be longer than 8 bytes (length 5 here)",
        f,
    ));

    let mut f = check("ninechars");
    payload_of(&mut f)[16 + 8..16 + 12].copy_from_slice(&4i32.to_le_bytes());
    payloads.push((
        "string_points_into_root",
        "request",
        "out-of-line bytes must lie before the root (offset +4 points into the root)",
        f,
    ));

    let mut f = check("ninechars");
    payload_of(&mut f)[16 + 4..16 + 8].copy_from_slice(&(0x80u32 | 17).to_le_bytes());
    payloads.push(("string_overruns_root", "request", "out-of-line bytes must end at or before the root (17 bytes from offset 0 reach into the root at 16)", f));

    let mut f = check("disk0");
    payload_of(&mut f)[5] = 0x80;
    payloads.push((
        "string_invalid_utf8",
        "request",
        "strings must be valid UTF-8 (0x80 is a lone continuation byte)",
        f,
    ));

    // Hello with two out-of-line strings stored in the wrong order.
    let tenant = "billing-team";
    let name = "palisade-python/0.1.0";
    let mut f = req(Request::Hello {
        tenant: tenant.into(),
        client_nonce: [0; 16],
        client_name: name.into(),
    });
    {
        let p = payload_of(&mut f);
        // Bytes: client_name at 0..21, tenant at 21..33; root at 40.
        p[..name.len()].copy_from_slice(name.as_bytes());
        p[name.len()..name.len() + tenant.len()].copy_from_slice(tenant.as_bytes());
        let tenant_at = 40 + 4;
        let name_at = 40 + 28;
        let off = |target: usize, at: usize| {
            (i32::try_from(target).expect("small") - i32::try_from(at).expect("small"))
                .to_le_bytes()
        };
        p[tenant_at + 4..tenant_at + 8].copy_from_slice(&off(name.len(), tenant_at));
        p[name_at + 4..name_at + 8].copy_from_slice(&off(0, name_at));
    }
    payloads.push(("strings_out_of_field_order", "request", "out-of-line data must appear in field order: here client_name's bytes come before tenant's", f));

    let mut f = resp(Response::Busy {
        token: 1,
        remaining_ms: 2,
        waiters: true,
        waited_ms: 3,
    });
    payload_of(&mut f)[20] = 2;
    payloads.push((
        "bool_not_0_or_1",
        "response",
        "a bool byte must be 0 or 1",
        f,
    ));

    let error = Response::Error {
        code: ErrorCode::Internal,
        retry_after_ms: 0,
        message: String::new(),
    };
    let mut f = resp(error.clone());
    payload_of(&mut f)[1] = 0;
    payloads.push(("error_code_0", "response", "error codes are 1..=18", f));
    let mut f = resp(error);
    payload_of(&mut f)[1] = 19;
    payloads.push(("error_code_19", "response", "error codes are 1..=18", f));

    let mut f = resp(Response::Welcome(welcome(None)));
    payload_of(&mut f)[28] = 2;
    payloads.push((
        "option_tag_2",
        "response",
        "an Option tag must be 0 (None) or 1 (Some)",
        f,
    ));

    let mut f = resp(Response::Status(status(Vec::new(), Role::Leader, 1)));
    let root = f.len() - HEADER_LEN - RESPONSE_ROOT_LEN;
    payload_of(&mut f)[root + 8 + 2] = 4;
    payloads.push((
        "role_4",
        "response",
        "roles are 1 (leader), 2 (follower), 3 (candidate)",
        f,
    ));

    let mut f = resp(Response::Challenge {
        salt: vec![1, 2, 3, 4],
        iterations: 1,
        server_nonce: [0; 16],
    });
    payload_of(&mut f)[8 + 8..8 + 12].copy_from_slice(&9u32.to_le_bytes());
    payloads.push(("vec_overruns_root", "response", "a byte vector must end at or before the root (9 bytes from offset 0 reach into the root at 8)", f));

    // One listed lease with an inline name: the 24-byte element at 0, the
    // root at 24.
    let listed = resp(Response::Listed {
        leases: vec![ListedLease {
            resource: "a".into(),
            token: 1,
            remaining_ms: 1,
            waiters: false,
        }],
        next_after: String::new(),
        more: false,
    });
    let mut f = listed.clone();
    payload_of(&mut f)[20] = 2;
    payloads.push((
        "listed_lease_waiters_not_bool",
        "response",
        "a listed lease's waiters byte (element offset 20) must be 0 or 1",
        f,
    ));
    // The same element moved to offset 4 (4 zero bytes before it, 4 after,
    // the root at 32): inside the window, overlapping nothing, but not
    // 8-aligned.
    let payload = &listed[HEADER_LEN..];
    let mut moved = listed[..HEADER_LEN].to_vec();
    moved.extend_from_slice(&[0; 4]);
    moved.extend_from_slice(&payload[..24]);
    moved.extend_from_slice(&[0; 4]);
    moved.extend_from_slice(&payload[24..]);
    payload_of(&mut moved)[36..40].copy_from_slice(&(-32i32).to_le_bytes());
    set_payload_len(&mut moved, 32 + RESPONSE_ROOT_LEN);
    payloads.push((
        "listed_lease_array_misaligned",
        "response",
        "a Vec<ListedLease> element array must start at a multiple of 8 (4 here)",
        moved,
    ));

    let mut f = req(Request::Status);
    set_payload_len(&mut f, 32);
    payloads.push((
        "payload_shorter_than_root",
        "request",
        "a request payload is at least the 40-byte root",
        f,
    ));

    let mut f = req(Request::Status);
    let payload: Vec<u8> = [&[0u8; 4][..], &f[HEADER_LEN..]].concat();
    set_payload_len(&mut f, payload.len());
    f[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
    payloads.push((
        "root_misaligned",
        "request",
        "the root starts at payload_len - 40, which must be a multiple of 8 (44 - 40 = 4 here)",
        f,
    ));

    let invalid_payloads: Vec<Value> = payloads
        .into_iter()
        .map(|(name, direction, why, frame)| {
            json!({"name": name, "direction": direction, "why": why, "frame": hex(&frame)})
        })
        .collect();

    let good = req(Request::Status);
    let header_case = |mutate: &dyn Fn(&mut Vec<u8>)| {
        let mut f = good.clone();
        mutate(&mut f);
        hex(&f)
    };
    let headers = vec![
        json!({"name": "version_2", "why": "byte 4 is the protocol version, 1", "server_error": "unsupported_version",
               "frame": header_case(&|f| f[4] = 2)}),
        json!({"name": "kind_3", "why": "byte 5 is 1 (request) or 2 (response)", "server_error": "malformed",
               "frame": header_case(&|f| f[5] = 3)}),
        json!({"name": "flags_set", "why": "bytes 6..8 are reserved flags, 0", "server_error": "malformed",
               "frame": header_case(&|f| f[6] = 1)}),
        json!({"name": "reserved_set", "why": "bytes 20..24 are reserved, 0", "server_error": "malformed",
               "frame": header_case(&|f| f[23] = 1)}),
        json!({"name": "empty_payload", "why": "payload_len 0: every frame carries a message", "server_error": "malformed",
               "frame": hex(&good[..HEADER_LEN].iter().enumerate().map(|(i, b)| if i < 4 { 0 } else { *b }).collect::<Vec<_>>())}),
        json!({"name": "above_hard_cap", "why": "payload_len above 1 MiB (and above the server's frame_payload_max, 16 KiB by default) is refused before the payload is read", "server_error": "frame_too_large",
               "frame": hex(&{ let mut h = good[..HEADER_LEN].to_vec(); h[0..4].copy_from_slice(&((1u32 << 20) + 8).to_le_bytes()); h })}),
    ];
    json!({
        "about": "Frames a decoder must refuse. invalid_payloads: the header is valid, the payload fails validation (the server answers malformed, with the frame's request_id, and closes). invalid_headers: the header itself is refused (the server answers server_error with request_id 0 and closes).",
        "invalid_payloads": invalid_payloads,
        "invalid_headers": headers,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Every step of the credential proof for fixed inputs.
fn auth_case(
    name: &str,
    secret_file: &[u8],
    tenant: &str,
    iterations: u32,
    salt: &[u8],
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
) -> Value {
    let secret = secret_file.trim_ascii_end();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret, salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, b"Server Key");
    let message = auth_message(tenant, client_nonce, server_nonce, salt, iterations);
    let client_signature = hmac(&stored_key, &message);
    let proof: Vec<u8> = client_key
        .iter()
        .zip(client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_signature = hmac(&server_key, &message);
    json!({
        "name": name,
        "secret_file": hex(secret_file),
        "secret": hex(secret),
        "tenant": tenant,
        "iterations": iterations,
        "salt": hex(salt),
        "client_nonce": hex(client_nonce),
        "server_nonce": hex(server_nonce),
        "salted_secret": hex(&salted),
        "client_key": hex(&client_key),
        "stored_key": hex(&stored_key),
        "server_key": hex(&server_key),
        "auth_message": hex(&message),
        "client_signature": hex(&client_signature),
        "proof": hex(&proof),
        "server_signature": hex(&server_signature),
        "credential": format!(
            "scram-sha256${iterations}${}${}${}",
            hex(salt),
            hex(&stored_key),
            hex(&server_key)
        ),
    })
}

fn auth_document() -> Value {
    json!({
        "about": "Credential proofs (docs/PROTOCOL.md, Handshake and credentials). secret = secret_file with trailing ASCII whitespace (space, \\t, \\n, \\x0c, \\r) removed. credential is the [[tenants]] line `palisade tenant-credential` prints for that secret and salt.",
        "vectors": [
            auth_case("billing", b"correct horse battery staple\n", "billing", 4096, &ramp::<16>(0x00), &ramp(0x10), &ramp(0x20)),
            auth_case("one_iteration_short_salt", b"0123456789abcdef \t\r\n", "team-a.prod_1", 1, b"salt", &[0xff; 16], &[0; 16]),
        ],
    })
}

#[test]
fn frames_match_the_vectors_byte_for_byte() {
    if bless() {
        write_json("frames.json", &frames_document());
    }
    let doc = read_json("frames.json");
    assert_eq!(doc["protocol_version"], 1);
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert!(!vectors.is_empty());
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let direction = v["direction"].as_str().expect("direction");
        let msg = from_json(name, direction, &v["message"]);
        let request_id = v["request_id"].as_u64().expect("request_id");
        let frame = unhex(v["frame"].as_str().expect("frame"));

        // Encoder: exactly these bytes.
        let encoded = encode(&msg, request_id);
        assert_eq!(
            hex(&encoded),
            hex(&frame),
            "vector {name}: the encoder no longer produces the recorded frame (a wire layout change: see the top of this file)"
        );

        // Decoder: exactly these values.
        let buf = aligned(&frame);
        let Ok(Decoded::Frame {
            header,
            payload,
            frame_len,
        }) = decode_frame(&buf, PAYLOAD_MAX)
        else {
            panic!("vector {name}: the frame does not decode");
        };
        assert_eq!(frame_len, frame.len(), "vector {name}: frame length");
        assert_eq!(header.request_id, request_id, "vector {name}");
        assert_eq!(u64::from(header.group), v["group"].as_u64().expect("group"));
        assert_eq!(
            payload.len() as u64,
            v["payload_len"].as_u64().expect("payload_len"),
            "vector {name}"
        );
        let (decoded, root) = match direction {
            "request" => {
                assert_eq!(header.kind, FrameKind::Request, "vector {name}");
                (
                    Msg::Request(decode_request(payload).expect("valid request")),
                    REQUEST_ROOT_LEN,
                )
            }
            _ => {
                assert_eq!(header.kind, FrameKind::Response, "vector {name}");
                (
                    Msg::Response(decode_response(payload).expect("valid response")),
                    RESPONSE_ROOT_LEN,
                )
            }
        };
        assert_eq!(decoded, msg, "vector {name}: decoded values differ");
        assert_eq!(
            (payload.len() - root) as u64,
            v["root_offset"].as_u64().expect("root_offset"),
            "vector {name}: the root is the last {root} bytes"
        );
        assert_eq!(
            payload.len() % 8,
            0,
            "vector {name}: payloads are 8-byte multiples"
        );
        // The tag is the root's first byte.
        let tag = usize::from(payload[payload.len() - root]);
        let variant = match &decoded {
            Msg::Request(r) => request_variant(r),
            Msg::Response(r) => response_variant(r),
        };
        let tags: &[&str] = if direction == "request" {
            &REQUEST_TAGS
        } else {
            &RESPONSE_TAGS
        };
        assert_eq!(tags[tag], variant, "vector {name}: tag {tag}");
    }
}

#[test]
fn vectors_cover_every_variant_and_error_code() {
    let doc = read_json("frames.json");
    let mut seen = std::collections::BTreeSet::new();
    for v in doc["vectors"].as_array().expect("vectors") {
        let name = v["name"].as_str().expect("name");
        let direction = v["direction"].as_str().expect("direction");
        match from_json(name, direction, &v["message"]) {
            Msg::Request(r) => seen.insert(format!("request {}", request_variant(&r))),
            Msg::Response(Response::Error { code, .. }) => {
                seen.insert(format!("error {}", code.as_str()))
            }
            Msg::Response(r) => seen.insert(format!("response {}", response_variant(&r))),
        };
    }
    for tag in REQUEST_TAGS {
        assert!(
            seen.contains(&format!("request {tag}")),
            "no vector for request {tag}"
        );
    }
    for tag in RESPONSE_TAGS.iter().filter(|t| **t != "Error") {
        assert!(
            seen.contains(&format!("response {tag}")),
            "no vector for response {tag}"
        );
    }
    for code in ErrorCode::ALL {
        assert!(
            seen.contains(&format!("error {}", code.as_str())),
            "no vector for error {code}"
        );
    }
    assert_eq!(
        doc["request_tags"],
        json!(REQUEST_TAGS),
        "request tags are declaration order"
    );
    assert_eq!(doc["response_tags"], json!(RESPONSE_TAGS));
}

#[test]
fn root_sizes_are_as_documented() {
    let status = encode(&Msg::Request(Request::Status), 1);
    assert_eq!(status.len() - HEADER_LEN, REQUEST_ROOT_LEN);
    let released = encode(&Msg::Response(Response::Released { token: 1 }), 1);
    assert_eq!(released.len() - HEADER_LEN, RESPONSE_ROOT_LEN);
    assert_eq!(
        core::mem::size_of::<palisade_proto::ArchivedRequest>(),
        REQUEST_ROOT_LEN
    );
    assert_eq!(
        core::mem::size_of::<palisade_proto::ArchivedResponse>(),
        RESPONSE_ROOT_LEN
    );
    assert_eq!(core::mem::align_of::<palisade_proto::ArchivedRequest>(), 8);
    assert_eq!(core::mem::align_of::<palisade_proto::ArchivedResponse>(), 8);
    assert_eq!(core::mem::size_of::<palisade_proto::ArchivedErrorCode>(), 1);
    assert_eq!(core::mem::size_of::<palisade_proto::ArchivedRole>(), 1);
}

#[test]
fn invalid_frames_are_refused() {
    if bless() {
        write_json("invalid.json", &invalid_document());
    }
    let doc = read_json("invalid.json");
    for v in doc["invalid_payloads"]
        .as_array()
        .expect("invalid_payloads")
    {
        let name = v["name"].as_str().expect("name");
        let buf = aligned(&unhex(v["frame"].as_str().expect("frame")));
        let Ok(Decoded::Frame { payload, .. }) = decode_frame(&buf, PAYLOAD_MAX) else {
            panic!("vector {name}: the header should be valid");
        };
        let refused = match v["direction"].as_str().expect("direction") {
            "request" => access_request(payload).map(|_| ()),
            _ => access_response(payload).map(|_| ()),
        };
        assert_eq!(
            refused,
            Err(FrameError::Invalid),
            "vector {name} was accepted"
        );
    }
    for v in doc["invalid_headers"].as_array().expect("invalid_headers") {
        let name = v["name"].as_str().expect("name");
        let frame = unhex(v["frame"].as_str().expect("frame"));
        let head: &[u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
        let err = FrameHeader::parse(head, PAYLOAD_MAX)
            .expect_err(&format!("vector {name}: header accepted"));
        let code = match err {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        };
        assert_eq!(
            code.as_str(),
            v["server_error"].as_str().expect("server_error"),
            "vector {name}"
        );
    }
}

#[test]
fn auth_vectors_match() {
    if bless() {
        write_json("auth.json", &auth_document());
    }
    let doc = read_json("auth.json");
    for v in doc["vectors"].as_array().expect("vectors") {
        let name = v["name"].as_str().expect("name");
        let field = |k: &str| unhex(v[k].as_str().unwrap_or_else(|| panic!("{name}: {k}")));
        let secret_file = field("secret_file");
        let secret = secret_file.trim_ascii_end();
        assert_eq!(secret, field("secret").as_slice(), "{name}: trimmed secret");
        let tenant = v["tenant"].as_str().expect("tenant");
        let iterations = u32::try_from(v["iterations"].as_u64().expect("iterations")).expect("u32");
        let salt = field("salt");
        let client_nonce = field("client_nonce");
        let server_nonce = field("server_nonce");
        let message = auth_message(tenant, &client_nonce, &server_nonce, &salt, iterations);
        assert_eq!(
            hex(&message),
            hex(&field("auth_message")),
            "{name}: AuthMessage"
        );
        let stored = derive_stored(secret, &salt, iterations);
        assert_eq!(hex(&stored.stored_key), hex(&field("stored_key")), "{name}");
        assert_eq!(hex(&stored.server_key), hex(&field("server_key")), "{name}");
        let (proof, signature) = client_proof(secret, &salt, iterations, &message);
        assert_eq!(hex(&proof), hex(&field("proof")), "{name}: proof");
        assert_eq!(hex(&signature), hex(&field("server_signature")), "{name}");
        assert_eq!(verify_proof(&stored, &message, &proof), Some(signature));
        // The intermediate values are recomputed independently.
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(secret, &salt, iterations, &mut salted);
        assert_eq!(hex(&salted), hex(&field("salted_secret")), "{name}");
        assert_eq!(
            hex(&hmac(&salted, b"Client Key")),
            hex(&field("client_key"))
        );
        assert_eq!(
            hex(&hmac(&stored.stored_key, &message)),
            hex(&field("client_signature"))
        );
    }
}

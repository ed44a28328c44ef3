//! A fake Palisade node on a real socket, for failover tests: a std
//! `TcpListener`, the protocol crate's frame codec, and a small lease
//! table that several fake nodes may share (standing in for the replicated
//! lease state a new leader takes over). Each node can serve, redirect,
//! hang (accept and never answer, like a SIGSTOPped process), close in the
//! middle of a request, carry a request out and then close without
//! answering (a lost answer), or answer `Unavailable` a number of times.

#![allow(dead_code)] // Each test binary uses a part of it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_proto::frame::decode_frame;
use palisade_proto::{
    access_request, decode_request, encode_response, Decoded, ErrorCode, FrameBuf, FrameKind,
    RecvBuf, Request, Response, Role, StatusInfo, Welcome,
};

const PAYLOAD_MAX: u32 = 1 << 16;
/// How often node threads look at their stop flag.
const POLL: Duration = Duration::from_millis(5);

/// What a node does with the requests it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Answer like a leader. A waiting acquire on a held resource queues
    /// on its connection: it is granted once the resource is free, or
    /// answered `Busy` when its wait ends.
    Serve,
    /// Answer the handshake and `Status`; redirect lease requests.
    Redirect(String),
    /// Accept connections, read, never answer anything.
    Hang,
    /// Answer the handshake and `Status`; close the connection on the
    /// first lease request without carrying it out.
    CloseOnRequest,
    /// Carry the first lease request out (commit it), then close without
    /// answering: the answer is lost.
    ApplyThenClose,
    /// Carry lease requests out (commit them) but hold their answers
    /// back; they go out in the same write as the next answer sent in
    /// another mode (a late answer that reaches the client together with
    /// a newer one).
    ApplyAndHold,
    /// Serve, but only after this long (a slow leader).
    Slow {
        /// Delay before each lease answer.
        delay_ms: u64,
    },
    /// Answer lease requests `Unavailable` this many more times, then serve.
    Unavailable {
        /// Refusals left.
        left: u32,
        /// The hint sent with each.
        retry_after_ms: u32,
    },
}

/// A lease in the shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its token.
    pub token: u64,
    /// Its holder id.
    pub holder: u64,
}

/// The lease state fake nodes share (what raft replicates).
#[derive(Debug, Default)]
pub struct Table {
    /// Live leases by resource.
    pub leases: HashMap<String, Held>,
    /// Highest token issued per resource.
    pub last: HashMap<String, u64>,
}

impl Table {
    /// Puts a lease by `holder` on `resource` (another client's, say).
    pub fn hold(&mut self, resource: &str, holder: u64) -> u64 {
        let token = self.last.get(resource).copied().unwrap_or(7 << 32) + 1;
        self.last.insert(resource.to_owned(), token);
        self.leases
            .insert(resource.to_owned(), Held { token, holder });
        token
    }

    fn stale(&self, resource: &str) -> Response {
        Response::Stale {
            current_token: self.leases.get(resource).map_or(0, |h| h.token),
            last_token: self.last.get(resource).copied().unwrap_or(0),
        }
    }
}

/// A request as a node read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request.
    pub request: Request,
    /// When (boot-time ms).
    pub at_ms: u64,
}

struct Shared {
    mode: Mutex<Mode>,
    table: Arc<Mutex<Table>>,
    seen: Mutex<Vec<Seen>>,
    accepted: AtomicUsize,
    dead: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    node_id: u16,
}

/// One fake node. Dropping it kills it.
pub struct FakeNode {
    /// `host:port` it listens on.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl FakeNode {
    /// A node with its own table.
    pub fn start(mode: Mode) -> FakeNode {
        FakeNode::with_table(mode, Arc::new(Mutex::new(Table::default())))
    }

    /// A node sharing `table` with others.
    pub fn with_table(mode: Mode, table: Arc<Mutex<Table>>) -> FakeNode {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            table,
            seen: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            node_id: u16::try_from(NEXT_ID.fetch_add(1, Ordering::Relaxed)).expect("few nodes"),
        });
        let accept = shared.clone();
        std::thread::spawn(move || accept_loop(&listener, &accept));
        FakeNode { endpoint, shared }
    }

    /// Changes what the node does from its next request on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// Stops listening and closes every connection (a killed process).
    pub fn kill(&self) {
        self.shared.dead.store(true, Ordering::SeqCst);
        for stream in self.shared.streams.lock().expect("streams").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every request read so far, handshakes included.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    /// The acquires read so far: (holder, wait_ms).
    pub fn acquires(&self) -> Vec<(u64, u32)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.request {
                Request::Acquire {
                    holder, wait_ms, ..
                } => Some((holder, wait_ms)),
                _ => None,
            })
            .collect()
    }

    /// How many requests of this kind the node read.
    pub fn count(&self, kind: fn(&Request) -> bool) -> usize {
        self.seen().iter().filter(|s| kind(&s.request)).count()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.dead.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(POLL * 4))
                    .expect("read timeout");
                shared
                    .streams
                    .lock()
                    .expect("streams")
                    .push(stream.try_clone().expect("clone"));
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(stream, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    // The listener closes here: new connections are refused.
}

/// A waiting acquire queued on a connection.
struct Queued {
    request_id: u64,
    resource: String,
    holder: u64,
    ttl_ms: u32,
    until_ms: u64,
}

/// Answers the queued acquires whose resource is free or whose wait ended
/// (unless the node hangs now).
fn wake_queued(shared: &Shared, queued: &mut Vec<Queued>, out: &mut FrameBuf) {
    if *shared.mode.lock().expect("mode") == Mode::Hang {
        return;
    }
    let now = palisade_host::clock::boottime_ms();
    let mut table = shared.table.lock().expect("table");
    queued.retain(|q| {
        let response = if !table.leases.contains_key(&q.resource) {
            Response::Granted {
                token: table.hold(&q.resource, q.holder),
                ttl_ms: q.ttl_ms,
                waited_ms: 1,
            }
        } else if now >= q.until_ms {
            Response::Busy {
                token: table.leases[&q.resource].token,
                remaining_ms: 1_000,
                waiters: false,
                waited_ms: 1,
            }
        } else {
            return true;
        };
        encode_response(out, q.request_id, 0, PAYLOAD_MAX, &response).expect("encode");
        false
    });
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    let mut rx = RecvBuf::new(4096, 1 << 20);
    let mut queued: Vec<Queued> = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    loop {
        if shared.dead.load(Ordering::SeqCst) {
            return;
        }
        let mut out = FrameBuf::new();
        match stream.read(rx.spare()) {
            Ok(0) => return,
            Ok(n) => rx.filled(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                wake_queued(shared, &mut queued, &mut out);
                if !out.is_empty() && stream.write_all(&out).is_err() {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        loop {
            let (request_id, request, frame_len) = {
                let Ok(Decoded::Frame {
                    header,
                    payload,
                    frame_len,
                }) = rx.next_frame(PAYLOAD_MAX)
                else {
                    break;
                };
                assert_eq!(header.kind, FrameKind::Request);
                // Validate in place first, as a server does, then take an
                // owned copy for the record.
                assert!(access_request(payload).is_ok(), "client sent junk");
                let request = decode_request(payload).expect("valid request");
                (header.request_id, request, frame_len)
            };
            rx.consume(frame_len);
            shared.seen.lock().expect("seen").push(Seen {
                request: request.clone(),
                at_ms: palisade_host::clock::boottime_ms(),
            });
            match answer(shared, &request) {
                Answer::Queue => {
                    let Request::Acquire {
                        resource,
                        holder,
                        ttl_ms,
                        wait_ms,
                        ..
                    } = request
                    else {
                        unreachable!("only acquires queue");
                    };
                    queued.push(Queued {
                        request_id,
                        resource,
                        holder,
                        ttl_ms,
                        until_ms: palisade_host::clock::boottime_ms() + u64::from(wait_ms),
                    });
                }
                Answer::Send(response) => {
                    encode_response(&mut out, request_id, 0, PAYLOAD_MAX, &response)
                        .expect("encode");
                    // Pair check: what we send decodes.
                    debug_assert!(matches!(
                        decode_frame(&out, PAYLOAD_MAX),
                        Ok(Decoded::Frame { .. })
                    ));
                }
                Answer::Hold(response) => {
                    let mut frame = FrameBuf::new();
                    encode_response(&mut frame, request_id, 0, PAYLOAD_MAX, &response)
                        .expect("encode");
                    held.extend_from_slice(&frame);
                }
                Answer::Nothing => {}
                Answer::Close => {
                    let _ = stream.write_all(&out);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        if !out.is_empty() {
            // Held answers go first, in the same write.
            held.extend_from_slice(&out);
            let write = stream.write_all(&held);
            held.clear();
            if write.is_err() {
                return;
            }
        }
    }
}

enum Answer {
    Send(Response),
    /// Send, but only together with the next answer that is sent.
    Hold(Response),
    Queue,
    Nothing,
    Close,
}

fn answer(shared: &Shared, request: &Request) -> Answer {
    let mut mode = shared.mode.lock().expect("mode");
    if *mode == Mode::Hang {
        return Answer::Nothing;
    }
    match request {
        Request::Hello { .. } => {
            return Answer::Send(Response::Welcome(Welcome {
                node_id: shared.node_id,
                epoch: 7,
                max_ttl_ms: 60_000,
                min_ttl_ms: 10,
                lock_delay_max_ms: 0,
                max_drift_ppm: 0,
                server_signature: None,
            }))
        }
        Request::Status => return Answer::Send(Response::Status(status(shared, &mode))),
        _ => {}
    }
    match &mut *mode {
        Mode::Hang => unreachable!("answered above"),
        Mode::Redirect(endpoint) => Answer::Send(Response::Redirect {
            leader_id: 9,
            endpoint: endpoint.clone(),
        }),
        Mode::CloseOnRequest => Answer::Close,
        Mode::ApplyThenClose => {
            let _ = serve(shared, request);
            Answer::Close
        }
        Mode::Unavailable {
            left,
            retry_after_ms,
        } if *left > 0 => {
            *left -= 1;
            Answer::Send(Response::Error {
                code: ErrorCode::Unavailable,
                retry_after_ms: *retry_after_ms,
                message: "not ready".into(),
            })
        }
        Mode::ApplyAndHold => match serve(shared, request) {
            Answer::Send(response) => Answer::Hold(response),
            other => other,
        },
        Mode::Slow { delay_ms } => {
            let delay = Duration::from_millis(*delay_ms);
            drop(mode);
            std::thread::sleep(delay);
            serve(shared, request)
        }
        Mode::Serve | Mode::Unavailable { .. } => serve(shared, request),
    }
}

fn status(shared: &Shared, mode: &Mode) -> StatusInfo {
    StatusInfo {
        node_id: shared.node_id,
        role: if *mode == Mode::Serve {
            Role::Leader
        } else {
            Role::Follower
        },
        epoch: 7,
        leader_id: 0,
        cores: 1,
        leases_held: 0,
        ops_served: 0,
        connections: 0,
        waiters: 0,
        grants_from_unix_ms: 0,
        grace_remaining_ms: 0,
        uptime_ms: 0,
        table_capacity: 0,
        peers: Vec::new(),
        version: "fake".into(),
    }
}

/// A leader's answer, against the shared table.
fn serve(shared: &Shared, request: &Request) -> Answer {
    let mut table = shared.table.lock().expect("table");
    let response = match request {
        Request::Acquire {
            resource,
            holder,
            ttl_ms,
            wait_ms,
            ..
        } => match table.leases.get(resource).copied() {
            Some(held) if held.holder == *holder => Response::Granted {
                token: held.token,
                ttl_ms: *ttl_ms,
                waited_ms: 0,
            },
            Some(_) if *wait_ms > 0 => return Answer::Queue,
            Some(held) => Response::Busy {
                token: held.token,
                remaining_ms: 1_000,
                waiters: false,
                waited_ms: 0,
            },
            None => Response::Granted {
                token: table.hold(resource, *holder),
                ttl_ms: *ttl_ms,
                waited_ms: 0,
            },
        },
        Request::Renew {
            resource,
            token,
            ttl_ms,
        } => match table.leases.get(resource) {
            Some(held) if held.token == *token => Response::Renewed {
                token: *token,
                ttl_ms: *ttl_ms,
            },
            _ => table.stale(resource),
        },
        Request::Release { resource, token } => match table.leases.get(resource) {
            Some(held) if held.token == *token => {
                table.leases.remove(resource);
                Response::Released { token: *token }
            }
            _ => table.stale(resource),
        },
        Request::Check { resource, token } => match table.leases.get(resource) {
            Some(held) if held.token == *token => Response::Current {
                token: *token,
                remaining_ms: 1_000,
            },
            _ => table.stale(resource),
        },
        Request::Watch { resource, .. } => Response::Watched {
            current_token: table.leases.get(resource).map_or(0, |h| h.token),
            last_token: table.last.get(resource).copied().unwrap_or(0),
            changed: false,
        },
        Request::List {
            prefix,
            after,
            limit,
        } => {
            let mut names: Vec<&String> = table
                .leases
                .keys()
                .filter(|r| r.starts_with(prefix.as_str()) && *r > after)
                .collect();
            names.sort();
            let more = names.len() > *limit as usize;
            names.truncate(*limit as usize);
            Response::Listed {
                leases: names
                    .iter()
                    .map(|r| palisade_proto::ListedLease {
                        resource: (*r).clone(),
                        token: table.leases[*r].token,
                        remaining_ms: 1_000,
                        waiters: false,
                    })
                    .collect(),
                next_after: if more {
                    names.last().map(|r| (*r).clone()).unwrap_or_default()
                } else {
                    String::new()
                },
                more,
            }
        }
        Request::Hello { .. } | Request::Auth { .. } | Request::Status => Response::Error {
            code: ErrorCode::Malformed,
            retry_after_ms: 0,
            message: "unexpected".into(),
        },
    };
    Answer::Send(response)
}

/// A shared table, for nodes that stand for one cluster.
pub fn table() -> Arc<Mutex<Table>> {
    Arc::new(Mutex::new(Table::default()))
}

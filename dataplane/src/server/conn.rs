//! One client connection: read frames into an aligned buffer, answer each
//! from the archived bytes in place, write all answers of a batch at once.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use palisade_proto::frame::padded_len;
use palisade_proto::{
    access_request, encode_response, Decoded, ErrorCode, FrameBuf, FrameError, FrameKind, RecvBuf,
    Response, HEADER_LEN, NONCE_LEN,
};
use tracing::{debug, warn};

use super::CoreCtx;
use crate::metrics::{Closed, CoreStats};
use crate::service::{Conn, Outcome, Phase, RequestMeta};
use crate::waiters::WaitEvent;
use palisade_host::clock::{monotonic_ms, monotonic_ns};
use palisade_host::throttle::LogThrottle;

/// Receive buffer a connection starts with; it grows up to one maximal frame.
const RECV_BUF_INITIAL: usize = 4096;
/// Queued answers written together at most: a group commit answers many
/// requests of one connection at once, and one write per answer costs a
/// send each (the bound keeps reads and other connections turning).
const DELIVERIES_PER_WRITE_MAX: usize = 64;
/// While a connection has traffic, the longest its task waits before it
/// looks again, whatever its deadlines. glommio 0.9 can put the core to
/// sleep with runnable tasks (issue 16, see [`super::nudge`]): a turn of
/// its loop that finds the preemption timer already fired runs nothing and
/// parks, and the tasks it had just woken wait for the core's next timer.
/// The connection's own timer is one: kept this close while requests flow
/// densely (two in a row less than this apart), it bounds such a stall to
/// this long instead of the heartbeat period (10 ms; with the 100 ms
/// heartbeat before issue 16's kick change, these stalls gave renewals at
/// 100 000/s on a shared CPU a p99 of 30 ms). It costs one extra wake when
/// a burst ends; sparser traffic is left alone, since a look after every
/// request would cost a wake each (30-50 µs of CPU per request at 700
/// requests/s, measured), and an idle connection never wakes its core.
/// Why 2 ms: at 1 ms, one connection at 20 000 checks/s cost 41.1-41.6 µs
/// of CPU per request against 37.6-39.8 without the guard (this VM, kernel
/// HZ 250, alternating A/B runs); at 2 ms 39.5-39.6, at 5 ms 37.6-38.6.
pub(crate) const PARK_GUARD: Duration = Duration::from_millis(2);
/// Pause after a failed accept (out of file descriptors, say), doubled on
/// each failure in a row up to [`ACCEPT_BACKOFF_MAX`]: the listener stays
/// readable while the backlog holds connections, so retrying at once would
/// spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one log line per core per this long about failed accepts; the
/// line counts the failures it stands for.
const ACCEPT_LOG_INTERVAL_MS: u64 = 1_000;

pub(super) async fn accept_loop(ctx: Rc<CoreCtx>, listener: TcpListener) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut log = LogThrottle::new(ACCEPT_LOG_INTERVAL_MS);
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                if let Some(suppressed) = log.failed(monotonic_ms()) {
                    warn!(
                        core = ctx.index,
                        error = %e,
                        suppressed,
                        backoff_ms = backoff.as_millis() as u64,
                        "accept failed (more failures since the last line: suppressed); if out of file descriptors, raise LimitNOFILE or lower limits.connections_max"
                    );
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let id = ctx.next_conn.get();
        ctx.next_conn.set(id + 1);
        let ctx2 = ctx.clone();
        super::spawn(ctx.hot, async move {
            let open = ctx2.connections.fetch_add(1, Ordering::SeqCst);
            ctx2.shared.stats[ctx2.index]
                .connections
                .fetch_add(1, Ordering::Relaxed);
            if open >= u64::from(ctx2.opts.connections_max) {
                refuse(&ctx2, stream).await;
            } else if let Err(e) = serve(&ctx2, stream, id).await {
                debug!(core = ctx2.index, conn = id, error = %e, "connection ended");
            }
            ctx2.connections.fetch_sub(1, Ordering::SeqCst);
            ctx2.shared.stats[ctx2.index]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn refuse(ctx: &CoreCtx, mut stream: TcpStream) {
    ctx.shared.stats[ctx.index].close(Closed::ConnectionsMax);
    let mut out = FrameBuf::new();
    let response = Response::Error {
        code: ErrorCode::TooManyConnections,
        retry_after_ms: 100,
        message: "the node is at limits.connections_max; retry later".into(),
    };
    if encode_response(&mut out, 0, 0, ctx.opts.frame_payload_max, &response).is_ok() {
        let stats = &ctx.shared.stats[ctx.index];
        let _ = write_bounded(&mut stream, &out, ctx.opts.write_stall_timeout, stats).await;
    }
    let _ = stream.close().await;
}

/// Writes `bytes`, or fails with `TimedOut` (and counts a write stall in
/// `stats`) if that takes longer than `stall`: the client stopped reading
/// and both socket buffers are full.
async fn write_bounded(
    stream: &mut TcpStream,
    bytes: &[u8],
    stall: Duration,
    stats: &CoreStats,
) -> io::Result<()> {
    let write = async { stream.write_all(bytes).await };
    let stalled = async {
        glommio::timer::sleep(stall).await;
        stats.close(Closed::WriteStall);
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "replies could not be written within limits.write_stall_timeout; closing",
        ))
    };
    futures_lite::future::or(write, stalled).await
}

/// What woke the connection task.
enum Event {
    Read(io::Result<usize>),
    Deliver(Option<WaitEvent>),
    Timeout,
    /// Closed to make room for a newer handshake.
    Evicted,
}

/// Which deadline a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Handshake,
    Frame,
    Idle,
}

impl Deadline {
    fn closed(self) -> Closed {
        match self {
            Deadline::Handshake => Closed::HandshakeTimeout,
            Deadline::Frame => Closed::FrameTimeout,
            Deadline::Idle => Closed::Idle,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Deadline::Handshake => {
                "the handshake did not complete within limits.handshake_timeout; closing"
            }
            Deadline::Frame => "a frame did not complete within limits.frame_timeout; closing",
            Deadline::Idle => {
                "the connection was idle for limits.idle_timeout; closing (reconnect to go on)"
            }
        }
    }
}

/// How long a connection task waits for its next event: until its
/// earliest deadline (`deadline_in` from now, `None`: none), and, while it
/// has dense traffic (`busy`: its last two reads or deliveries were less
/// than [`PARK_GUARD`] apart), at most [`PARK_GUARD`]. `None`: no timer at
/// all.
pub(crate) fn wait_bound(deadline_in: Option<Duration>, busy: bool) -> Option<Duration> {
    match (deadline_in, busy) {
        (Some(wait), true) => Some(wait.min(PARK_GUARD)),
        (Some(wait), false) => Some(wait),
        (None, true) => Some(PARK_GUARD),
        (None, false) => None,
    }
}

/// Whether traffic at `now_ns` after traffic at `previous_ns` (monotonic
/// ns, 0: none yet) is dense enough for [`wait_bound`]'s `busy`.
pub(crate) fn dense_traffic(previous_ns: u64, now_ns: u64) -> bool {
    previous_ns != 0 && now_ns.saturating_sub(previous_ns) < PARK_GUARD.as_nanos() as u64
}

fn frame_error_response(err: &FrameError) -> Response {
    let code = match err {
        FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::BadKind { .. }
        | FrameError::ReservedNotZero
        | FrameError::EmptyPayload
        | FrameError::Invalid
        | FrameError::Truncated => ErrorCode::Malformed,
    };
    Response::Error {
        code,
        retry_after_ms: 0,
        message: format!("{err}; closing the connection"),
    }
}

fn event_response(event: WaitEvent) -> (u64, u32, Response) {
    match event {
        WaitEvent::Granted {
            origin,
            token,
            ttl_ms,
            waited_ms,
            ..
        } => (
            origin.request_id,
            origin.group,
            Response::Granted {
                token,
                ttl_ms,
                waited_ms,
            },
        ),
        WaitEvent::TimedOut {
            origin,
            token,
            remaining_ms,
            waited_ms,
        } => (
            origin.request_id,
            origin.group,
            Response::Busy {
                token,
                remaining_ms,
                waiters: true,
                waited_ms,
            },
        ),
        WaitEvent::Reply { origin, response } => (origin.request_id, origin.group, response),
        WaitEvent::Watched {
            origin,
            current_token,
            last_token,
            changed,
        } => (
            origin.request_id,
            origin.group,
            Response::Watched {
                current_token,
                last_token,
                changed,
            },
        ),
        WaitEvent::Failed {
            origin,
            code,
            retry_after_ms,
            message,
        } => (
            origin.request_id,
            origin.group,
            Response::Error {
                code,
                retry_after_ms,
                message: message.to_string(),
            },
        ),
    }
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    // The kernel's CSPRNG does not fail once the system has booted; a
    // failure here is an environment defect worth crashing on.
    rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    nonce
}

/// Registers connection `id` as unauthenticated; if that makes more than
/// this core's share, the oldest unauthenticated connection is told to
/// close. Refusing the newest instead would let a flood that keeps its
/// connections open hold every slot; evicting the oldest means a client
/// that completes its handshake promptly always gets through, and a flood
/// only shortens the time a slow handshake may take.
fn register_unauthenticated(ctx: &CoreCtx, id: u64) -> local_channel::LocalReceiver<()> {
    let (evict_tx, evict_rx) = local_channel::new_bounded(1);
    let mut unauthenticated = ctx.unauthenticated.borrow_mut();
    unauthenticated.insert(id, evict_tx);
    while unauthenticated.len() > ctx.unauthenticated_max {
        let Some((oldest, evict)) = unauthenticated.pop_first() else {
            break;
        };
        debug!(
            core = ctx.index,
            conn = oldest,
            "evicting the oldest unfinished handshake"
        );
        // A full channel already holds the request.
        let _ = evict.try_send(());
    }
    evict_rx
}

async fn serve(ctx: &Rc<CoreCtx>, mut stream: TcpStream, id: u64) -> io::Result<()> {
    let ipv6 = ctx.opts.listen.is_ipv6();
    super::net::prepare_stream(stream.as_raw_fd(), ipv6, ctx.opts.dscp)?;
    let evict = register_unauthenticated(ctx, id);
    // Unbounded but never long: the service admits at most
    // pending_per_connection_max waits per connection.
    let (deliver_tx, deliver_rx) = local_channel::new_unbounded();
    ctx.conns.borrow_mut().insert(id, deliver_tx);
    let core = u16::try_from(ctx.index).expect("core count fits u16");
    let mut conn = Conn::new(core, id);
    conn.peer = stream.peer_addr().ok().map(|addr| addr.ip());
    let result = run(ctx, &mut stream, &mut conn, &deliver_rx, &evict).await;
    ctx.unauthenticated.borrow_mut().remove(&id);
    ctx.conns.borrow_mut().remove(&id);
    ctx.shared.closed(&mut conn);
    if conn.pending > 0 {
        ctx.cancel(id);
    }
    // Answers that arrived after the loop ended: release orphaned grants.
    while let Some(Some(event)) = futures_lite::future::poll_once(deliver_rx.recv()).await {
        ctx.deliver_local(event);
    }
    let _ = stream.close().await;
    result
}

async fn run(
    ctx: &Rc<CoreCtx>,
    stream: &mut TcpStream,
    conn: &mut Conn,
    deliveries: &local_channel::LocalReceiver<WaitEvent>,
    evict: &local_channel::LocalReceiver<()>,
) -> io::Result<()> {
    let payload_max = ctx.opts.frame_payload_max;
    let frame_max = HEADER_LEN + padded_len(payload_max as usize);
    let mut rx = RecvBuf::new(
        RECV_BUF_INITIAL.min(frame_max),
        frame_max.max(RECV_BUF_INITIAL),
    );
    let mut out = FrameBuf::with_capacity(4096);
    let stats = &ctx.shared.stats[ctx.index];
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let frame_timeout_ms = millis(ctx.opts.frame_timeout);
    let idle_timeout_ms = millis(ctx.opts.idle_timeout);
    let stall = ctx.opts.write_stall_timeout;
    let handshake_deadline_ms = monotonic_ms().saturating_add(millis(ctx.opts.handshake_timeout));
    let mut partial_since_ms: Option<u64> = None;
    // Last byte from the client or answer to it: the idle clock.
    let mut heard_ms = monotonic_ms();
    let mut authenticated = false;
    // The last two events were traffic (reads or deliveries) less than
    // PARK_GUARD apart: keep the timer within PARK_GUARD (see `wait_bound`).
    let mut busy = false;
    let mut traffic_ns = 0u64;
    loop {
        let now_ms = monotonic_ms();
        let ready = matches!(conn.phase, Phase::Ready { .. });
        let deadlines = [
            partial_since_ms.map(|since| (since.saturating_add(frame_timeout_ms), Deadline::Frame)),
            (!ready).then_some((handshake_deadline_ms, Deadline::Handshake)),
            // Idle: authenticated, nothing half-read and nothing pending
            // (a waiting acquire or a watch is the server's turn).
            (ready && partial_since_ms.is_none() && conn.pending == 0)
                .then(|| (heard_ms.saturating_add(idle_timeout_ms), Deadline::Idle)),
        ];
        let deadline = deadlines.into_iter().flatten().min_by_key(|&(at, _)| at);
        let event = {
            let read = async { Event::Read(stream.read(rx.spare()).await) };
            let deliver = async { Event::Deliver(deliveries.recv().await) };
            let evicted = async {
                if ready {
                    std::future::pending::<()>().await;
                }
                match evict.recv().await {
                    Some(()) => Event::Evicted,
                    None => std::future::pending().await,
                }
            };
            let wait = wait_bound(
                deadline.map(|(at, _)| Duration::from_millis(at.saturating_sub(now_ms))),
                busy,
            );
            let timer = async {
                match wait {
                    Some(wait) => {
                        glommio::timer::sleep(wait).await;
                        Event::Timeout
                    }
                    None => std::future::pending().await,
                }
            };
            // Deliveries first: a client that never stops sending must still
            // get its queued answers.
            futures_lite::future::or(
                deliver,
                futures_lite::future::or(read, futures_lite::future::or(evicted, timer)),
            )
            .await
        };
        match event {
            Event::Read(Ok(0)) => {
                if rx.buffered() > 0 {
                    let response = frame_error_response(&FrameError::Truncated);
                    respond(ctx, &mut out, 0, 0, &response);
                    let _ = write_bounded(stream, &out, stall, stats).await;
                }
                return Ok(());
            }
            Event::Read(Ok(n)) => {
                rx.filled(n);
                // Read the clock after the bytes arrived: a lease's server
                // interval then starts no earlier than the client sent it.
                let arrived_ns = monotonic_ns();
                heard_ms = arrived_ns / 1_000_000;
                busy = dense_traffic(traffic_ns, arrived_ns);
                traffic_ns = arrived_ns;
                let now_ms = arrived_ns / 1_000_000;
                let mut served = 0u64;
                // Requests answered in this batch (not those left waiting).
                let mut answered = 0u64;
                let mut close = false;
                let mut waits = Vec::new();
                let mut wakes = Vec::new();
                loop {
                    let (outcome, frame_len, meta) = match rx.next_frame(payload_max) {
                        Ok(Decoded::Incomplete { .. }) => break,
                        Err(err) => {
                            respond(ctx, &mut out, 0, 0, &frame_error_response(&err));
                            close = true;
                            break;
                        }
                        Ok(Decoded::Frame {
                            header,
                            payload,
                            frame_len,
                        }) => {
                            let meta = RequestMeta {
                                request_id: header.request_id,
                                group: header.group,
                            };
                            if header.kind != FrameKind::Request {
                                let err = frame_error_response(&FrameError::BadKind { got: 2 });
                                respond(ctx, &mut out, header.request_id, header.group, &err);
                                close = true;
                                break;
                            }
                            match access_request(payload) {
                                Ok(request) => {
                                    let outcome = ctx.shared.handle(
                                        conn,
                                        meta,
                                        request,
                                        now_ms,
                                        &mut random_nonce,
                                    );
                                    ctx.note_request(conn, request, now_ms);
                                    (outcome, frame_len, meta)
                                }
                                Err(err) => {
                                    let response = frame_error_response(&err);
                                    respond(ctx, &mut out, meta.request_id, meta.group, &response);
                                    close = true;
                                    break;
                                }
                            }
                        }
                    };
                    rx.consume(frame_len);
                    served += 1;
                    answered += u64::from(matches!(
                        outcome,
                        Outcome::Reply(_) | Outcome::ReplyAndWake(..) | Outcome::ReplyAndClose(_)
                    ));
                    match outcome {
                        Outcome::Reply(response) => {
                            respond(ctx, &mut out, meta.request_id, meta.group, &response);
                        }
                        Outcome::ReplyAndWake(response, key) => {
                            respond(ctx, &mut out, meta.request_id, meta.group, &response);
                            wakes.push(key);
                        }
                        Outcome::ReplyAndClose(response) => {
                            respond(ctx, &mut out, meta.request_id, meta.group, &response);
                            close = true;
                            break;
                        }
                        Outcome::Wait(request) => waits.push(request),
                        Outcome::Watch(watch) => ctx.watch(watch),
                        Outcome::List(list) => ctx.list(*list),
                        Outcome::Commit(commit) => {
                            let origin = crate::waiters::Origin {
                                core: conn.core,
                                conn: conn.id,
                                request_id: meta.request_id,
                                group: meta.group,
                                queued: false,
                            };
                            ctx.commit(origin, *commit, arrived_ns);
                        }
                    }
                }
                stats.bump_ops(served);
                if !authenticated && matches!(conn.phase, Phase::Ready { .. }) {
                    // Out of the handshake budget before the next await, so
                    // that an eviction never picks an authenticated one.
                    authenticated = true;
                    ctx.unauthenticated.borrow_mut().remove(&conn.id);
                }
                // A frame timeout measures how long one frame takes to
                // arrive: restart the clock whenever a frame completed.
                partial_since_ms = match (rx.buffered() > 0, served > 0) {
                    (false, _) => None,
                    (true, true) => Some(now_ms),
                    (true, false) => Some(partial_since_ms.unwrap_or(now_ms)),
                };
                // Waiters must hear about releases, and waits must queue,
                // whatever happens to this connection's write.
                for key in wakes {
                    ctx.wake(key).await;
                }
                for request in waits {
                    ctx.route_wait(request).await;
                }
                if !out.is_empty() {
                    write_bounded(stream, &out, stall, stats).await?;
                    out.clear();
                }
                stats
                    .latency
                    .record(monotonic_ns().saturating_sub(arrived_ns), answered);
                if close {
                    return Ok(());
                }
            }
            Event::Read(Err(e)) => return Err(e),
            Event::Deliver(Some(first)) => {
                // The idle clock restarts when the last pending answer goes
                // out: a watch answered after a minute must leave its
                // client time to watch again.
                let now_ns = monotonic_ns();
                heard_ms = now_ns / 1_000_000;
                busy = dense_traffic(traffic_ns, now_ns);
                traffic_ns = now_ns;
                // Every answer already queued (a group commit answers many
                // at once) goes out in this one write, up to a bound.
                let mut grants = Vec::new();
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(event) = next.take() {
                    conn.pending = conn.pending.saturating_sub(1);
                    ctx.shared.answered(conn, &event.origin());
                    if let WaitEvent::Granted { .. } = &event {
                        grants.push(event.clone());
                    }
                    let (request_id, group, response) = event_response(event);
                    respond(ctx, &mut out, request_id, group, &response);
                    taken += 1;
                    if taken < DELIVERIES_PER_WRITE_MAX {
                        next = futures_lite::future::poll_once(deliveries.recv())
                            .await
                            .flatten();
                    }
                }
                if let Err(e) = write_bounded(stream, &out, stall, stats).await {
                    // The grants never reached their holder: release them
                    // rather than leave them held by nobody until they
                    // expire.
                    ctx.conns.borrow_mut().remove(&conn.id);
                    for grant in grants {
                        ctx.deliver_local(grant);
                    }
                    return Err(e);
                }
                out.clear();
            }
            Event::Deliver(None) => return Ok(()),
            Event::Timeout => {
                // A quiet look (PARK_GUARD) or a deadline: either way no
                // traffic came meanwhile.
                busy = false;
                let Some((at, which)) = deadline else {
                    continue;
                };
                if monotonic_ms() < at {
                    // Woken before the deadline (PARK_GUARD, or the timer's
                    // granularity): look again.
                    continue;
                }
                debug!(core = ctx.index, conn = conn.id, deadline = ?which, "connection timed out");
                stats.close(which.closed());
                let response = Response::Error {
                    code: ErrorCode::Timeout,
                    retry_after_ms: 0,
                    message: which.message().into(),
                };
                respond(ctx, &mut out, 0, 0, &response);
                let _ = write_bounded(stream, &out, stall, stats).await;
                return Ok(());
            }
            Event::Evicted => {
                if matches!(conn.phase, Phase::Ready { .. }) {
                    continue;
                }
                stats.close(Closed::Evicted);
                let response = Response::Error {
                    code: ErrorCode::TooManyConnections,
                    retry_after_ms: 0,
                    message: "closed to make room: limits.unauthenticated_max connections were in their handshake and this was the oldest; reconnect and complete the handshake promptly".into(),
                };
                respond(ctx, &mut out, 0, 0, &response);
                let _ = write_bounded(stream, &out, stall, stats).await;
                return Ok(());
            }
        }
    }
}

/// Appends one response frame. Encoding our own responses cannot fail short
/// of a bug; if it ever does, answer with a bare internal error.
fn respond(ctx: &CoreCtx, out: &mut FrameBuf, request_id: u64, group: u32, response: &Response) {
    let limit = ctx.opts.frame_payload_max.max(1024);
    if let Err(e) = encode_response(out, request_id, group, limit, response) {
        warn!(error = %e, "could not encode a response");
        let fallback = Response::Error {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
            message: String::new(),
        };
        encode_response(out, request_id, group, limit, &fallback)
            .expect("a bare error response always fits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_connection_looks_again_within_the_park_guard() {
        let far = Duration::from_secs(60);
        let near = PARK_GUARD / 2;
        assert_eq!(wait_bound(Some(far), true), Some(PARK_GUARD));
        assert_eq!(wait_bound(Some(near), true), Some(near));
        // Pending requests and no deadline: still looks again while busy.
        assert_eq!(wait_bound(None, true), Some(PARK_GUARD));
    }

    #[test]
    fn only_traffic_closer_than_the_park_guard_is_dense() {
        let guard_ns = PARK_GUARD.as_nanos() as u64;
        let start = 5_000_000_000u64;
        // The first event has nothing before it.
        assert!(!dense_traffic(0, start));
        assert!(dense_traffic(start, start + guard_ns / 4));
        assert!(dense_traffic(start, start));
        assert!(!dense_traffic(start, start + guard_ns));
        assert!(!dense_traffic(start, start + 2 * guard_ns));
        // A clock that did not move forward is still dense, never a panic.
        assert!(dense_traffic(start, start - guard_ns));
    }

    #[test]
    fn a_quiet_connection_waits_for_its_deadline_only() {
        let far = Duration::from_secs(60);
        assert_eq!(wait_bound(Some(far), false), Some(far));
        assert_eq!(
            wait_bound(Some(Duration::ZERO), false),
            Some(Duration::ZERO)
        );
        // Nothing due and nothing flowing: no timer, the core may sleep.
        assert_eq!(wait_bound(None, false), None);
    }
}

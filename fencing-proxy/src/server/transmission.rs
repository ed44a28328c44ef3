//! One client's transmission: the reader that decodes and spawns requests
//! within the in-flight bounds, the writer that batches replies, and the
//! task per request that asks the admission before a write.

use super::fencing::admit;
use super::handshake::Bound;
use super::*;

/// What a request holds while in flight, for the connection's bound: the
/// bytes of its payload or of its read data.
fn request_cost(request: &Request) -> usize {
    match request.command {
        Command::Read | Command::Write => request.length as usize,
        _ => 0,
    }
}

/// One connection in transmission: what its reader, its writer and its
/// request tasks share.
///
/// The reader decodes requests and spawns one task per request, up to the
/// in-flight bounds; each task runs its request against the backend (a
/// write asks the gate first) and puts its reply in the outbox; the writer
/// hands the outbox to the socket, many replies per write. Replies go out
/// in the order requests finish, each with its request's cookie.
struct Conn {
    exports: Rc<Exports>,
    export: Rc<ExportRt>,
    token: Option<u64>,
    backend: Backend,
    replies: nbd::ReplyEncoder,
    outbox: RefCell<Outbox>,
    /// Wakes the writer: replies wait in the outbox, or the reader is done.
    replies_ready: Signal,
    /// Wakes the reader: replies went out (room in flight), or the writer
    /// failed.
    room: Signal,
}

/// Replies waiting for the socket, and what the connection holds.
#[derive(Debug, Default)]
struct Outbox {
    /// Encoded replies, whole, in the order their requests finished.
    bytes: Vec<u8>,
    /// Requests whose replies are in `bytes`, and their cost.
    replies: usize,
    replies_cost: usize,
    /// Requests taken in and not yet answered on the socket (running, or
    /// their reply in `bytes`), and their cost: the in-flight bounds.
    in_flight: usize,
    in_flight_cost: usize,
    /// The reader stopped taking requests: the writer returns once every
    /// request in flight is answered.
    closing: bool,
    /// The writer could not write: the reader stops.
    failed: bool,
}

impl Conn {
    /// Whether a request costing `cost` may go in flight now. One request
    /// always may, whatever its size.
    fn has_room(&self, cost: usize) -> bool {
        let outbox = self.outbox.borrow();
        let limits = &self.exports.limits;
        outbox.in_flight == 0
            || (outbox.in_flight < limits.requests_in_flight_max
                && outbox.in_flight_cost + cost <= limits.in_flight_bytes_max)
    }

    /// Waits until a request costing `cost` may go in flight, then counts
    /// it in. `Err` if the writer failed (the client is gone).
    async fn take_in(&self, cost: usize) -> io::Result<()> {
        loop {
            if self.outbox.borrow().failed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "replies could not be written",
                ));
            }
            if self.has_room(cost) {
                let mut outbox = self.outbox.borrow_mut();
                outbox.in_flight += 1;
                outbox.in_flight_cost += cost;
                return Ok(());
            }
            self.room.wait().await;
        }
    }

    /// Queues the reply of a request taken in with `cost`.
    fn reply(&self, cost: usize, encode: impl FnOnce(&mut Vec<u8>, &nbd::ReplyEncoder)) {
        {
            let mut outbox = self.outbox.borrow_mut();
            assert!(
                outbox.replies < outbox.in_flight,
                "one reply per request taken in"
            );
            encode(&mut outbox.bytes, &self.replies);
            outbox.replies += 1;
            outbox.replies_cost += cost;
        }
        self.replies_ready.notify();
    }

    fn in_flight(&self) -> usize {
        self.outbox.borrow().in_flight
    }
}

pub(super) async fn transmission(
    (input, output): (ReadHalf, WriteHalf),
    handshake: Handshake,
    bound: Bound,
    exports: Rc<Exports>,
    out: Vec<u8>,
) -> io::Result<()> {
    let mut tx = handshake.into_transmission();
    info!(
        export = %bound.export.config.name,
        token = ?bound.token,
        "client bound"
    );
    // Anyone may open a read-only connection; a writer needs a token.
    let (idle, idle_key) = if bound.token.is_some() {
        (exports.limits.idle_timeout, "proxy.idle_timeout")
    } else {
        (
            exports.limits.read_only_idle_timeout,
            "proxy.read_only_idle_timeout",
        )
    };
    let conn = Rc::new(Conn {
        replies: tx.replies(),
        exports,
        export: bound.export,
        token: bound.token,
        backend: bound.backend,
        outbox: RefCell::new(Outbox {
            bytes: out,
            ..Outbox::default()
        }),
        replies_ready: Signal::default(),
        room: Signal::default(),
    });
    // A client that stops reading our replies is as idle as a silent one.
    let writer = tokio::task::spawn_local(write_replies(conn.clone(), output, idle));
    let idle_reason = format!("no request for {} ms ({idle_key})", millis(idle));
    let read = read_requests(&conn, &mut tx, input, millis(idle), &idle_reason).await;
    // Every request taken in is answered before the connection closes
    // (NBD wants that after a disconnect), and the backend closes only once
    // no request uses it.
    conn.outbox.borrow_mut().closing = true;
    conn.replies_ready.notify();
    let written = writer
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("reply writer: {e}"))));
    // Every task queued its reply and ended, so this is the last handle;
    // if not, the backend closes when the last one goes (without a goodbye).
    if let Ok(conn) = Rc::try_unwrap(conn) {
        conn.backend.close().await;
    }
    read.and(written)
}

/// The reader: decodes requests, takes each in flight (waiting for room),
/// and spawns its task. Returns at a disconnect, the end of the stream, an
/// idle timeout or a fatal protocol error.
async fn read_requests(
    conn: &Rc<Conn>,
    tx: &mut nbd::Transmission,
    mut input: ReadHalf,
    idle_ms: u64,
    idle_reason: &str,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut active_ms = monotonic_ms();
    loop {
        while let Some(incoming) = tx.poll_request() {
            active_ms = monotonic_ms();
            match incoming {
                Incoming::Request(request) => {
                    let cost = request_cost(&request);
                    conn.take_in(cost).await?;
                    // The payload leaves the decoder's buffer here: one copy,
                    // which the backends pass on as it is.
                    let mut payload = conn.exports.pool.take(tx.payload().len());
                    payload.extend_from_slice(tx.payload());
                    // Detached: it ends once its reply is queued.
                    drop(tokio::task::spawn_local(execute(
                        conn.clone(),
                        request,
                        payload,
                    )));
                }
                Incoming::Refuse(refusal) => {
                    if refusal.request.command.writes() && refusal.error == Errno::Perm {
                        conn.export
                            .metrics()
                            .writes_fenced
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    conn.take_in(0).await?;
                    conn.reply(0, |out, replies| replies.refuse(out, &refusal));
                }
                Incoming::Disconnect => return Ok(()),
                Incoming::Fatal { error, reply } => {
                    if let Some(reply) = reply {
                        conn.take_in(0).await?;
                        conn.reply(0, |out, replies| replies.refuse(out, &reply));
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        error.to_string(),
                    ));
                }
            }
        }
        if conn.in_flight() > 0 {
            // Requests in flight: the client waits for us, not idle.
            active_ms = monotonic_ms();
        }
        // Idle since the last request, even if bytes trickle in.
        let n = input
            .read(&mut buf, active_ms.saturating_add(idle_ms), idle_reason)
            .await?;
        if conn.outbox.borrow().failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "replies could not be written",
            ));
        }
        if n == 0 {
            return Ok(());
        }
        tx.handle_input(&buf[..n]);
    }
}

/// The writer: hands queued replies to the socket, as many as are ready per
/// write, and frees their room in flight. Returns once the reader is done
/// and every request it took in is answered. After a failed write it
/// shuts the socket (so the reader stops) and drops later replies.
async fn write_replies(
    conn: Rc<Conn>,
    mut output: WriteHalf,
    wait_max: Duration,
) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut failure = None;
    loop {
        let (count, cost, last) = {
            let mut outbox = conn.outbox.borrow_mut();
            std::mem::swap(&mut outbox.bytes, &mut batch);
            let count = std::mem::take(&mut outbox.replies);
            let cost = std::mem::take(&mut outbox.replies_cost);
            (count, cost, outbox.closing && outbox.in_flight == count)
        };
        if count == 0 && !last {
            conn.replies_ready.wait().await;
            continue;
        }
        if failure.is_none() {
            if let Err(e) = output.write_all(&batch, Some(wait_max)).await {
                conn.outbox.borrow_mut().failed = true;
                output.shutdown();
                failure = Some(e);
            }
        }
        batch.clear();
        if batch.capacity() > OUT_KEEP_MAX {
            batch = Vec::new();
        }
        {
            let mut outbox = conn.outbox.borrow_mut();
            outbox.in_flight -= count;
            outbox.in_flight_cost -= cost;
        }
        conn.room.notify();
        if last {
            return failure.map_or(Ok(()), Err);
        }
    }
}

/// Carries out one request and queues its reply.
async fn execute(conn: Rc<Conn>, request: Request, payload: Vec<u8>) {
    let cost = request_cost(&request);
    let export = &conn.export;
    let cookie = request.cookie;
    match request.command {
        Command::Read => match conn.backend.read(request.offset, request.length).await {
            Ok(data) => {
                export.metrics().reads.fetch_add(1, Ordering::Relaxed);
                conn.reply(cost, |out, replies| {
                    replies.read(out, cookie, request.offset, &data);
                });
            }
            Err(e) => {
                warn!(export = %export.config.name, error = %e, "backend read failed");
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Io, &format!("read failed: {e}"));
                });
            }
        },
        Command::Flush => match conn.backend.flush().await {
            Ok(()) => conn.reply(cost, |out, replies| replies.ok(out, cookie)),
            Err(e) => {
                warn!(export = %export.config.name, error = %e, "backend flush failed");
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Io, &format!("flush failed: {e}"));
                });
            }
        },
        Command::Write | Command::Trim | Command::WriteZeroes => {
            let Some(token) = conn.token else {
                // The decoder refuses writes on a read-only export; this is
                // the belt to its braces.
                export
                    .metrics()
                    .writes_fenced
                    .fetch_add(1, Ordering::Relaxed);
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Perm, "read-only: no fencing token");
                });
                return;
            };
            if let Err(message) = admit(&conn.exports, export, token).await {
                export
                    .metrics()
                    .writes_fenced
                    .fetch_add(1, Ordering::Relaxed);
                debug!(export = %export.config.name, token, %message, "write fenced");
                conn.exports.pool.give(payload);
                conn.reply(cost, |out, replies| {
                    replies.error(out, cookie, Errno::Perm, &message);
                });
                return;
            }
            // Admitted: the gate counts this write in flight under `token`
            // until `done` below, and no newer token's write is admitted
            // meanwhile (see the gate).
            if let Some((delayed, wait)) = conn.exports.write_delay {
                if delayed == token {
                    tokio::time::sleep(wait).await;
                }
            }
            let fua = request.fua();
            let result = match request.command {
                Command::Write => conn.backend.write(request.offset, payload, fua).await,
                Command::Trim => conn.backend.trim(request.offset, request.length, fua).await,
                _ => {
                    let no_hole = request.flags & nbd::command_flags::NO_HOLE != 0;
                    conn.backend
                        .write_zeroes(request.offset, request.length, no_hole, fua)
                        .await
                }
            };
            export.admission.borrow_mut().done(token);
            match result {
                Ok(()) => {
                    export
                        .metrics()
                        .writes_accepted
                        .fetch_add(1, Ordering::Relaxed);
                    conn.reply(cost, |out, replies| replies.ok(out, cookie));
                }
                Err(e) => {
                    warn!(export = %export.config.name, error = %e, "backend write failed");
                    conn.reply(cost, |out, replies| {
                        replies.error(out, cookie, Errno::Io, &format!("write failed: {e}"));
                    });
                }
            }
        }
        Command::Disc | Command::Other(_) => {
            // The decoder turns these into Disconnect and Refuse.
            conn.reply(cost, |out, replies| {
                replies.error(out, cookie, Errno::Inval, "unsupported command");
            });
        }
    }
}

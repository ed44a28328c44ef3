//! The epoll engine of `palisade-bench load`: one thread, nonblocking
//! sockets, level-triggered epoll, one `write` and one `read` per batch of
//! ready requests — the same shape as redis-benchmark, so comparisons
//! charge every server the same client cost.
//!
//! Each connection keeps `--pipeline` independent cycles in flight (1 by
//! default: strictly one request at a time, like redis-benchmark without
//! `-P`). Against Palisade a cycle is an acquire of a random resource and,
//! if granted, its release; against Redis (`--target redis`) a cycle is
//! `SET lock:<n> v NX PX <ttl>`, the command redis-benchmark runs.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use palisade_proto::{
    access_response, encode_request, ArchivedResponse, Decoded, FrameBuf, RecvBuf, Request,
};
use rustix::event::epoll;

use crate::load::{now_ns, LoadArgs, Rng, Totals};

/// One cycle in flight on a connection.
#[derive(Default)]
struct Cycle {
    sent_ns: u64,
    resource: String,
    /// Token to release next, if the last acquire was granted.
    releasing: Option<u64>,
}

struct Conn {
    stream: TcpStream,
    rx: RecvBuf,
    /// Raw bytes for RESP (Redis); unused for Palisade.
    resp: Vec<u8>,
    tx: FrameBuf,
    cycles: Vec<Cycle>,
    /// Redis answers in order: the cycles in flight, oldest first.
    in_flight: VecDeque<usize>,
    next_seq: u64,
    /// Requests sent and not yet answered.
    outstanding: usize,
    holder: u64,
    done: bool,
}

fn handshake(stream: &mut TcpStream, tenant: &str) -> Result<()> {
    let mut tx = FrameBuf::new();
    encode_request(
        &mut tx,
        1,
        0,
        1 << 14,
        &Request::Hello {
            tenant: tenant.into(),
            client_nonce: [0; 16],
            client_name: "palisade-bench".into(),
        },
    )?;
    stream.write_all(&tx)?;
    let mut rx = RecvBuf::new(4096, 1 << 17);
    loop {
        if let Decoded::Frame { payload, .. } = rx.next_frame(1 << 16)? {
            return match access_response(payload)? {
                ArchivedResponse::Welcome(_) => Ok(()),
                other => bail!("handshake failed: {other:?}"),
            };
        }
        let n = stream.read(rx.spare())?;
        if n == 0 {
            bail!("server closed the connection during the handshake");
        }
        rx.filled(n);
    }
}

struct Ctx<'a> {
    args: &'a LoadArgs,
    ttl_ms: u32,
    depth: u64,
    redis: bool,
    rng: Rng,
}

impl Conn {
    /// Appends the next request of cycle `slot` to the output buffer.
    fn queue(&mut self, slot: usize, ctx: &mut Ctx<'_>) -> Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding += 1;
        let cycle = &mut self.cycles[slot];
        cycle.sent_ns = now_ns();
        if ctx.redis {
            cycle.resource.clear();
            use std::fmt::Write as _;
            let _ = write!(
                cycle.resource,
                "lock:{}",
                ctx.rng.next() % ctx.args.resources
            );
            let ttl = ctx.ttl_ms.to_string();
            let parts: [&[u8]; 7] = [
                b"SET",
                cycle.resource.as_bytes(),
                b"v",
                b"NX",
                b"PX",
                ttl.as_bytes(),
                b"",
            ];
            self.tx.extend_from_slice(b"*6\r\n");
            for part in &parts[..6] {
                self.tx
                    .extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
                self.tx.extend_from_slice(part);
                self.tx.extend_from_slice(b"\r\n");
            }
            self.in_flight.push_back(slot);
            return Ok(());
        }
        let request = match cycle.releasing.take() {
            Some(token) => Request::Release {
                resource: cycle.resource.clone(),
                token,
            },
            None => {
                cycle.resource.clear();
                use std::fmt::Write as _;
                let _ = write!(
                    cycle.resource,
                    "lock:{}",
                    ctx.rng.next() % ctx.args.resources
                );
                Request::Acquire {
                    resource: cycle.resource.clone(),
                    // Every cycle is its own holder: two cycles drawing the
                    // same resource must not share a lease.
                    holder: self.holder * ctx.depth + slot as u64,
                    ttl_ms: ctx.ttl_ms,
                    lock_delay_ms: 0,
                    wait_ms: 0,
                }
            }
        };
        encode_request(
            &mut self.tx,
            seq * ctx.depth + slot as u64,
            0,
            1 << 14,
            &request,
        )?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.tx.is_empty() {
            // Requests are small and the socket buffer has room for a
            // pipeline's worth: a short write means something is wrong.
            let written = self.stream.write(&self.tx)?;
            if written != self.tx.len() {
                bail!("short write of {} of {} bytes", written, self.tx.len());
            }
            self.tx.clear();
        }
        Ok(())
    }
}

/// Parses one RESP reply line at the front of `buf`; returns its length.
fn resp_reply(buf: &[u8]) -> Result<Option<(usize, bool)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    match buf.first() {
        Some(b'+') => Ok(Some((end + 2, true))),
        Some(b'$') if &buf[..end] == b"$-1" => Ok(Some((end + 2, false))),
        Some(b'_') => Ok(Some((end + 2, false))),
        _ => bail!(
            "unexpected Redis reply {:?}",
            String::from_utf8_lossy(&buf[..end])
        ),
    }
}

/// Runs the load with epoll on the current thread.
pub fn run(args: &LoadArgs) -> Result<(Histogram<u64>, Totals)> {
    if let Some(cpu) = args.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).context("pinning the load thread")?;
    }
    let redis = match args.target.as_str() {
        "palisade" => false,
        "redis" => true,
        other => bail!("unknown --target {other:?}; use palisade or redis"),
    };
    let depth = args.pipeline.max(1);
    let mut ctx = Ctx {
        args,
        ttl_ms: u32::try_from(args.ttl.as_millis())?,
        depth: depth as u64,
        redis,
        rng: Rng(0x2545_f491_4f6c_dd1d),
    };
    let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut stream = TcpStream::connect(args.endpoint.as_str())
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        stream.set_nodelay(true)?;
        if !redis {
            handshake(&mut stream, &args.tenant)?;
        }
        stream.set_nonblocking(true)?;
        epoll::add(
            &epoll_fd,
            stream.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )?;
        conns.push(Conn {
            stream,
            rx: RecvBuf::new(1 << 16, 1 << 17),
            resp: Vec::with_capacity(4096),
            tx: FrameBuf::with_capacity(4096),
            cycles: (0..depth).map(|_| Cycle::default()).collect(),
            in_flight: VecDeque::with_capacity(depth),
            next_seq: 1,
            outstanding: 0,
            holder: i as u64 + 1,
            done: false,
        });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut totals = Totals::default();
    let start_ns = now_ns() + u64::try_from(args.warmup.as_nanos())?;
    let end_ns = start_ns + u64::try_from(args.duration.as_nanos())?;
    for conn in &mut conns {
        for slot in 0..depth {
            conn.queue(slot, &mut ctx)?;
        }
        conn.flush()?;
    }
    let mut events = Vec::with_capacity(args.connections);
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let mut open = conns.len();
    while open > 0 {
        events.clear();
        epoll::wait(
            &epoll_fd,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        )?;
        for event in &events {
            let index = usize::try_from(event.data.u64())?;
            let conn = &mut conns[index];
            if conn.done {
                continue;
            }
            let read = if redis {
                let len = conn.resp.len();
                conn.resp.resize(len + 4096, 0);
                let r = conn.stream.read(&mut conn.resp[len..]);
                conn.resp.truncate(len + *r.as_ref().unwrap_or(&0));
                r
            } else {
                let r = conn.stream.read(conn.rx.spare());
                if let Ok(n) = r {
                    conn.rx.filled(n);
                }
                r
            };
            match read {
                Ok(0) => bail!("server closed connection {index}"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            let done = now_ns();
            let mut answered = Vec::new();
            if redis {
                let mut at = 0;
                while let Some((len, ok)) = resp_reply(&conn.resp[at..])? {
                    at += len;
                    if ok {
                        totals.grants += 1;
                    } else {
                        totals.busy += 1;
                    }
                    let slot = conn
                        .in_flight
                        .pop_front()
                        .context("reply without request")?;
                    answered.push(slot);
                }
                conn.resp.drain(..at);
            } else {
                while let Decoded::Frame {
                    header,
                    payload,
                    frame_len,
                } = conn.rx.next_frame(1 << 16)?
                {
                    let slot = usize::try_from(header.request_id % ctx.depth)?;
                    match access_response(payload)? {
                        ArchivedResponse::Granted { token, .. } => {
                            totals.grants += 1;
                            conn.cycles[slot].releasing = Some(token.to_native());
                        }
                        ArchivedResponse::Busy { .. } => totals.busy += 1,
                        ArchivedResponse::Released { .. } => {}
                        other => bail!("unexpected response {other:?}"),
                    }
                    conn.rx.consume(frame_len);
                    answered.push(slot);
                }
            }
            for slot in answered {
                conn.outstanding -= 1;
                let cycle = &conn.cycles[slot];
                if cycle.sent_ns >= start_ns && done <= end_ns {
                    totals.ops += 1;
                    histogram.record((done - cycle.sent_ns).max(1))?;
                }
                // Past the end, finish open releases and stop.
                if done < end_ns || cycle.releasing.is_some() {
                    conn.queue(slot, &mut ctx)?;
                }
            }
            conn.flush()?;
            if done >= end_ns && conn.outstanding == 0 {
                epoll::delete(&epoll_fd, conn.stream.as_fd())?;
                conn.done = true;
                open -= 1;
            }
        }
    }
    Ok((histogram, totals))
}

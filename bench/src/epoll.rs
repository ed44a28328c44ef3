//! The epoll engine of `palisade-bench load`: one thread, nonblocking
//! sockets, level-triggered epoll, one `write` and one `read` per request —
//! the same shape as redis-benchmark, so that comparisons charge both
//! servers the same client cost.

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

struct Conn {
    stream: TcpStream,
    rx: RecvBuf,
    tx: FrameBuf,
    next_id: u64,
    sent_ns: u64,
    resource: String,
    /// Token to release next, if the last acquire was granted.
    releasing: Option<u64>,
    holder: u64,
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

impl Conn {
    fn send_next(&mut self, rng: &mut Rng, args: &LoadArgs, ttl_ms: u32) -> Result<()> {
        self.tx.clear();
        self.next_id += 1;
        let request = match self.releasing.take() {
            Some(token) => Request::Release {
                resource: self.resource.clone(),
                token,
            },
            None => {
                self.resource.clear();
                use std::fmt::Write as _;
                let _ = write!(self.resource, "lock:{}", rng.next() % args.resources);
                Request::Acquire {
                    resource: self.resource.clone(),
                    holder: self.holder,
                    ttl_ms,
                    lock_delay_ms: 0,
                    wait_ms: 0,
                }
            }
        };
        encode_request(&mut self.tx, self.next_id, 0, 1 << 14, &request)?;
        self.sent_ns = now_ns();
        // Requests are tiny: the socket buffer always takes them whole.
        let written = self.stream.write(&self.tx)?;
        if written != self.tx.len() {
            bail!("short write of a {}-byte request", self.tx.len());
        }
        Ok(())
    }
}

/// Runs the load with epoll on the current thread.
pub fn run(args: &LoadArgs) -> Result<(Histogram<u64>, Totals)> {
    if let Some(cpu) = args.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).context("pinning the load thread")?;
    }
    let ttl_ms = u32::try_from(args.ttl.as_millis())?;
    let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut stream = TcpStream::connect(args.endpoint.as_str())
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        stream.set_nodelay(true)?;
        handshake(&mut stream, &args.tenant)?;
        stream.set_nonblocking(true)?;
        epoll::add(
            &epoll_fd,
            stream.as_fd(),
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )?;
        conns.push(Conn {
            stream,
            rx: RecvBuf::new(4096, 1 << 17),
            tx: FrameBuf::with_capacity(512),
            next_id: 1,
            sent_ns: 0,
            resource: String::with_capacity(32),
            releasing: None,
            holder: i as u64 + 1,
        });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut totals = Totals::default();
    let start_ns = now_ns() + u64::try_from(args.warmup.as_nanos())?;
    let end_ns = start_ns + u64::try_from(args.duration.as_nanos())?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for conn in &mut conns {
        conn.send_next(&mut rng, args, ttl_ms)?;
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
            let n = match conn.stream.read(conn.rx.spare()) {
                Ok(0) => bail!("server closed connection {index}"),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            conn.rx.filled(n);
            let Decoded::Frame {
                payload, frame_len, ..
            } = conn.rx.next_frame(1 << 16)?
            else {
                continue;
            };
            let done = now_ns();
            match access_response(payload)? {
                ArchivedResponse::Granted { token, .. } => {
                    totals.grants += 1;
                    conn.releasing = Some(token.to_native());
                }
                ArchivedResponse::Busy { .. } => totals.busy += 1,
                ArchivedResponse::Released { .. } => {}
                other => bail!("unexpected response {other:?}"),
            }
            conn.rx.consume(frame_len);
            if conn.sent_ns >= start_ns && done <= end_ns {
                totals.ops += 1;
                histogram.record((done - conn.sent_ns).max(1))?;
            }
            if done >= end_ns && conn.releasing.is_none() {
                epoll::delete(&epoll_fd, conn.stream.as_fd())?;
                open -= 1;
                continue;
            }
            conn.send_next(&mut rng, args, ttl_ms)?;
        }
    }
    Ok((histogram, totals))
}

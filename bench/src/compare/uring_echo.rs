//! `echo-server --runtime uring`: the echo on a ring of our own (the
//! `io-uring` crate), the candidate for the data plane's client sockets
//! that issue 17 asks to measure against glommio before it replaces
//! anything.
//!
//! One thread, one ring, set up with `SINGLE_ISSUER | DEFER_TASKRUN` (the
//! kernel runs completion work only when this thread enters the ring),
//! else `COOP_TASKRUN`, else no flags; the server prints which. One
//! multishot accept on the listener; one multishot receive per connection
//! drawing from a ring of provided buffers ([`BufRing`]). A turn of the
//! loop takes every completion, copies the received bytes into the
//! connection's reply buffer and hands the provided buffer back at once,
//! then queues one send per connection with replies ready (none while one
//! is in flight: the next carries everything gathered meanwhile), then
//! makes one `io_uring_enter` (`submit_and_wait(1)`) that submits those
//! sends and waits for the next completion.
//!
//! That wait usually ends at once, on the completion of a send it just
//! submitted (a loopback send completes inline), so a lone request costs
//! two enters. With `wait_past_sends` (`--uring-wait-past-sends`, the
//! system `echo-uring-past-sends`) the enter waits for one completion more
//! than it submitted sends, so a lone request costs one; a 1 ms timeout
//! on that wait bounds the case where a send came up short and nothing
//! else arrives (its rest goes out at the next turn).
//!
//! It never frees memory the kernel may still write: the provided buffers
//! and the loop's state are leaked (the loop runs until the process
//! ends), a connection's reply buffer is not touched while its send is in
//! flight, and a connection is dropped (its socket closed) only once its
//! receive has ended and no send is in flight. It measures nothing itself,
//! and it applies no back-pressure: a client that sends without reading
//! grows its reply buffer without bound (the data plane would cap it).

use std::cell::UnsafeCell;
use std::convert::Infallible;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{bail, Context, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::echo::EchoStats;

/// Submission queue entries; the loop submits whenever it fills.
const SQ_ENTRIES: u32 = 512;
/// Completion queue entries (the kernel keeps overflow beyond this).
const CQ_ENTRIES: u32 = 8192;
/// Provided buffers (a power of two, at most 32 768).
const BUF_COUNT: u16 = 1024;
/// Bytes per provided buffer; a receive fills at most one.
const BUF_SIZE: usize = 4096;
/// The provided-buffer group the receives draw from.
const BUF_GROUP: u16 = 0;
/// Most connections at once (slots of the connection table).
const CONNECTIONS_MAX: usize = 1 << 20;

// user_data: the operation's kind in the high 32 bits, the connection's
// slot in the low 32.
const KIND_ACCEPT: u64 = 1 << 32;
const KIND_RECV: u64 = 2 << 32;
const KIND_SEND: u64 = 3 << 32;
const KIND_ACCEPT_RETRY: u64 = 4 << 32;
const KIND_MASK: u64 = 0xffff_ffff << 32;

/// Which setup flags the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingSetup {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`.
    SingleIssuerDeferTaskrun,
    /// `IORING_SETUP_COOP_TASKRUN`.
    CoopTaskrun,
    /// No flags.
    Plain,
}

impl RingSetup {
    fn name(self) -> &'static str {
        match self {
            RingSetup::SingleIssuerDeferTaskrun => "SINGLE_ISSUER+DEFER_TASKRUN",
            RingSetup::CoopTaskrun => "COOP_TASKRUN",
            RingSetup::Plain => "no setup flags",
        }
    }
}

/// Builds the ring with the best flags the kernel takes. Must run on the
/// thread that will submit (`SINGLE_ISSUER`).
fn build_ring() -> Result<(IoUring, RingSetup, Vec<String>)> {
    let mut refused = Vec::new();
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
    {
        Ok(ring) => return Ok((ring, RingSetup::SingleIssuerDeferTaskrun, refused)),
        Err(e) => refused.push(format!("SINGLE_ISSUER+DEFER_TASKRUN refused: {e}")),
    }
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
    {
        Ok(ring) => return Ok((ring, RingSetup::CoopTaskrun, refused)),
        Err(e) => refused.push(format!("COOP_TASKRUN refused: {e}")),
    }
    let ring = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
        .context("setting up an io_uring without flags")?;
    Ok((ring, RingSetup::Plain, refused))
}

/// One entry of a provided-buffer ring, as the kernel lays it out
/// (`struct io_uring_buf`). Entry 0's last field is the ring's tail.
#[repr(C)]
struct BufDesc {
    addr: u64,
    len: u32,
    bid: u16,
    /// `resv` in every entry but the first, where it is the tail.
    tail: u16,
}

const _: () = assert!(std::mem::size_of::<BufDesc>() == 16);
const _: () = assert!(BUF_COUNT.is_power_of_two());

/// A page of the descriptor ring: page-aligned, as the kernel pins it.
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);

/// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the kernel
/// takes a buffer from the head for each receive it completes, this
/// thread puts buffers back at the tail. Its memory is leaked on purpose
/// (see the module doc).
struct BufRing {
    /// `BUF_COUNT` descriptors; the kernel reads them, only this thread
    /// writes them.
    descs: *mut BufDesc,
    /// `BUF_COUNT * BUF_SIZE` bytes; buffer `b` starts at `b * BUF_SIZE`.
    data: *mut u8,
    /// The next tail to publish (wraps at 2^16 like the kernel's).
    tail: u16,
    /// Buffers handed to the kernel and not yet returned in a completion;
    /// at most `BUF_COUNT`, so the slot at `tail` is always free.
    lent: u32,
}

impl BufRing {
    /// Allocates (and leaks) the descriptors and buffers and registers
    /// them with `ring` as group [`BUF_GROUP`], every buffer lent.
    fn register(ring: &IoUring) -> Result<BufRing> {
        let desc_bytes = usize::from(BUF_COUNT) * std::mem::size_of::<BufDesc>();
        let pages: &'static [Page] = Vec::leak(
            (0..desc_bytes.div_ceil(4096))
                .map(|_| Page(UnsafeCell::new([0; 4096])))
                .collect(),
        );
        let descs = pages.as_ptr().cast::<BufDesc>().cast_mut();
        let data: &'static [UnsafeCell<u8>] = Vec::leak(
            (0..usize::from(BUF_COUNT) * BUF_SIZE)
                .map(|_| UnsafeCell::new(0))
                .collect(),
        );
        // `UnsafeCell` makes writing through this pointer (by us and the
        // kernel) legal although it came from a shared slice.
        let data = UnsafeCell::raw_get(data.as_ptr());
        let mut bufs = BufRing {
            descs,
            data,
            tail: 0,
            lent: 0,
        };
        // SAFETY: `descs` points at `BUF_COUNT` descriptors in leaked,
        // page-aligned memory that stays valid for the process's life,
        // longer than the ring; nothing else registers group BUF_GROUP.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(descs as u64, BUF_COUNT, BUF_GROUP, 0)
        }
        .context("registering the provided-buffer ring (IORING_REGISTER_PBUF_RING)")?;
        for bid in 0..BUF_COUNT {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// Writes buffer `bid` into the slot at the tail; the kernel sees it
    /// after [`BufRing::publish`]. Call only for a buffer this thread
    /// owns: not yet lent, or returned by a completion.
    fn push(&mut self, bid: u16) {
        assert!(bid < BUF_COUNT, "buffer id {bid} out of range");
        assert!(
            self.lent < u32::from(BUF_COUNT),
            "more buffers lent than exist"
        );
        let slot = usize::from(self.tail & (BUF_COUNT - 1));
        let addr = self.data as u64 + u64::from(bid) * BUF_SIZE as u64;
        // SAFETY: `slot < BUF_COUNT`, inside the leaked descriptor array.
        // The kernel reads only slots between its head and the published
        // tail; fewer than BUF_COUNT buffers are lent (asserted), so this
        // slot is not among them. The fields are written through raw
        // pointers one by one: entry 0's `tail` field is the published
        // tail, which the kernel may read at any time and is not touched
        // here.
        unsafe {
            let desc = self.descs.add(slot);
            std::ptr::addr_of_mut!((*desc).addr).write(addr);
            std::ptr::addr_of_mut!((*desc).len).write(BUF_SIZE as u32);
            std::ptr::addr_of_mut!((*desc).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.lent += 1;
    }

    /// Makes every pushed buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: entry 0's `tail` is a naturally aligned u16 inside the
        // leaked descriptor array; the kernel reads it with an acquire
        // load, and it is only ever accessed atomically from this side.
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.descs).tail)) };
        // Release: the descriptors written by `push` are visible before
        // the tail that covers them.
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which a completion just
    /// returned. Valid until the buffer is pushed back.
    fn received(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUF_COUNT, "the kernel returned buffer id {bid}");
        assert!(
            len <= BUF_SIZE,
            "the kernel filled {len} bytes of a {BUF_SIZE}-byte buffer"
        );
        // SAFETY: buffer `bid` lies inside the leaked data allocation
        // (bounds asserted above). A completion carrying `bid` hands the
        // buffer back: the kernel writes to it again only after `push`
        // puts it back in the ring, which needs `&mut self` and so ends
        // this borrow first. Its bytes are initialised (zeroed at
        // allocation, then written by the kernel).
        unsafe { std::slice::from_raw_parts(self.data.add(usize::from(bid) * BUF_SIZE), len) }
    }

    /// A completion returned buffer `bid` to this thread.
    fn returned(&mut self) {
        assert!(self.lent > 0, "a buffer came back that was never lent");
        self.lent -= 1;
    }
}

struct Conn {
    stream: TcpStream,
    /// Replies gathered since the last send was queued.
    gathered: Vec<u8>,
    /// What the send in flight is sending; untouched while it flies.
    sending: Vec<u8>,
    /// Bytes of `sending` the kernel has sent.
    sent: usize,
    send_in_flight: bool,
    /// The multishot receive is armed (no final completion seen yet).
    recv_armed: bool,
    /// Read side finished (EOF or error): do not receive again.
    read_done: bool,
    /// A send failed: drop what is gathered, close once quiet.
    failed: bool,
    /// In the turn's list of connections with replies to flush.
    queued: bool,
}

/// The loop's state; leaked (see the module doc).
struct Echo {
    ring: IoUring,
    bufs: BufRing,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    ready: Vec<u32>,
    completions: Vec<(u64, i32, u32)>,
    /// The back-off before accepting again after an accept error
    /// (EMFILE); read by the kernel when the timeout is submitted.
    retry_after: types::Timespec,
}

/// Serves echo on `listener` until the process ends; calls `announce`
/// once the ring is set up (with which flags the kernel took) and
/// accepts are armed. `wait_past_sends`: see the module doc.
pub(crate) fn run(
    listener: TcpListener,
    stats: &EchoStats,
    wait_past_sends: bool,
    announce: impl FnOnce(&str),
) -> Result<()> {
    let (ring, setup, refused) = build_ring()?;
    let bufs = BufRing::register(&ring)?;
    let echo: &'static mut Echo = Box::leak(Box::new(Echo {
        ring,
        bufs,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        ready: Vec::new(),
        completions: Vec::with_capacity(CQ_ENTRIES as usize),
        retry_after: types::Timespec::new().nsec(10_000_000),
    }));
    echo.arm_accept()?;
    let mut about = format!(
        "uring echo: one thread, ring {}, multishot accept and recv, {BUF_COUNT} provided \
         buffers of {BUF_SIZE} bytes, one send per connection per turn, each enter waits for {}",
        setup.name(),
        if wait_past_sends {
            "one completion past the sends it submits (1 ms timeout)"
        } else {
            "one completion"
        }
    );
    for r in refused {
        about.push_str("; ");
        about.push_str(&r);
    }
    announce(&about);
    let never: Result<Infallible> = echo.serve(stats, wait_past_sends);
    never.map(|n| match n {})
}

impl Echo {
    /// Queues `entry`, submitting first if the queue is full.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: the caller's promise covers the entry's pointers.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit().context("submitting a full queue")?;
        }
    }

    fn arm_accept(&mut self) -> Result<()> {
        let fd = types::Fd(self.listener.as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd)
            .flags(libc_sock_cloexec())
            .build()
            .user_data(KIND_ACCEPT);
        // SAFETY: no pointers; the listener is leaked with the loop.
        unsafe { self.push(&entry) }
    }

    fn arm_recv(&mut self, slot: u32) -> Result<()> {
        let conn = self.conns[slot as usize]
            .as_mut()
            .expect("arming a live slot");
        assert!(!conn.recv_armed, "one receive per connection");
        conn.recv_armed = true;
        let fd = types::Fd(conn.stream.as_raw_fd());
        let entry = opcode::RecvMulti::new(fd, BUF_GROUP)
            .build()
            .user_data(KIND_RECV | u64::from(slot));
        // SAFETY: no pointers (the kernel picks provided buffers, which are
        // leaked); the socket stays open until this receive's final
        // completion (see `maybe_close`).
        unsafe { self.push(&entry) }
    }

    /// Queues the next send of `slot`: the rest of `sending` if a send
    /// was short, else everything gathered. False if there was nothing to
    /// send.
    fn send(&mut self, slot: u32) -> Result<bool> {
        let conn = self.conns[slot as usize]
            .as_mut()
            .expect("sending on a live slot");
        assert!(!conn.send_in_flight, "one send per connection at a time");
        if conn.sent == conn.sending.len() {
            conn.sending.clear();
            conn.sent = 0;
            std::mem::swap(&mut conn.sending, &mut conn.gathered);
        }
        if conn.sending.is_empty() {
            return Ok(false);
        }
        let rest = &conn.sending[conn.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let fd = types::Fd(conn.stream.as_raw_fd());
        let entry = opcode::Send::new(fd, rest.as_ptr(), len)
            .build()
            .user_data(KIND_SEND | u64::from(slot));
        conn.send_in_flight = true;
        // SAFETY: the pointer is into `sending`'s heap buffer, which is
        // neither written, resized nor freed while `send_in_flight` (the
        // connection is dropped only when no send is in flight, and the
        // loop's state is leaked); the socket stays open as long.
        unsafe { self.push(&entry) }?;
        Ok(true)
    }

    fn serve(&mut self, stats: &EchoStats, wait_past_sends: bool) -> Result<Infallible> {
        let short_wait = types::Timespec::new().nsec(1_000_000);
        let short_wait = types::SubmitArgs::new().timespec(&short_wait);
        // Sends queued by the last turn.
        let mut sends = 0;
        loop {
            let entered = if wait_past_sends && sends > 0 {
                self.ring
                    .submitter()
                    .submit_with_args(sends + 1, &short_wait)
            } else {
                self.ring.submit_and_wait(1)
            };
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TIME.raw_os_error()) => {}
                // The completion queue overflowed: drain it, then enter.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
                Err(e) => return Err(e).context("io_uring_enter"),
            }
            sends = 0;
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let mut returned_any = false;
            for i in 0..self.completions.len() {
                let (user_data, res, flags) = self.completions[i];
                returned_any |= self.complete(user_data, res, flags, stats)?;
            }
            if returned_any {
                self.bufs.publish();
            }
            // One send per connection with replies ready.
            for i in 0..self.ready.len() {
                let slot = self.ready[i];
                let Some(conn) = self.conns[slot as usize].as_mut() else {
                    continue;
                };
                conn.queued = false;
                if !conn.send_in_flight {
                    sends += usize::from(self.send(slot)?);
                }
                self.maybe_close(slot, stats);
            }
            self.ready.clear();
        }
    }

    /// Handles one completion; true if it returned a provided buffer.
    fn complete(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        stats: &EchoStats,
    ) -> Result<bool> {
        let slot = (user_data & !KIND_MASK) as u32;
        match user_data & KIND_MASK {
            KIND_ACCEPT => {
                if res >= 0 {
                    // SAFETY: a successful accept completion carries a new
                    // descriptor that nothing else owns.
                    let stream = unsafe { TcpStream::from_raw_fd(res as RawFd) };
                    self.accepted(stream, stats)?;
                } else if !cqueue::more(flags) {
                    eprintln!(
                        "echo-server: accept failed: {}; retrying in 10 ms",
                        std::io::Error::from_raw_os_error(-res)
                    );
                    let entry = opcode::Timeout::new(&raw const self.retry_after)
                        .build()
                        .user_data(KIND_ACCEPT_RETRY);
                    // SAFETY: `retry_after` lives in the leaked state.
                    unsafe { self.push(&entry) }?;
                    return Ok(false);
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
                Ok(false)
            }
            KIND_ACCEPT_RETRY => {
                self.arm_accept()?;
                Ok(false)
            }
            KIND_RECV => {
                let mut returned = false;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.returned();
                    if res > 0 {
                        let bytes = self.bufs.received(bid, res as usize);
                        let conn = self.conns[slot as usize]
                            .as_mut()
                            .expect("receive on a live slot");
                        if !conn.failed {
                            conn.gathered.extend_from_slice(bytes);
                            if !conn.queued {
                                conn.queued = true;
                                self.ready.push(slot);
                            }
                        }
                    }
                    self.bufs.push(bid);
                    returned = true;
                }
                let conn = self.conns[slot as usize]
                    .as_mut()
                    .expect("receive on a live slot");
                if !cqueue::more(flags) {
                    conn.recv_armed = false;
                    // ENOBUFS ends a multishot receive when the buffers ran
                    // out; they are back now (published this turn).
                    let retry = res > 0 || res == -rustix::io::Errno::NOBUFS.raw_os_error();
                    if retry && !conn.read_done && !conn.failed {
                        self.arm_recv(slot)?;
                    } else {
                        conn.read_done = true;
                    }
                }
                if res <= 0 && res != -rustix::io::Errno::NOBUFS.raw_os_error() {
                    self.conns[slot as usize].as_mut().expect("live").read_done = true;
                }
                self.maybe_close(slot, stats);
                Ok(returned)
            }
            KIND_SEND => {
                let conn = self.conns[slot as usize]
                    .as_mut()
                    .expect("send on a live slot");
                conn.send_in_flight = false;
                if res < 0 {
                    conn.failed = true;
                    conn.gathered.clear();
                    conn.sending.clear();
                    conn.sent = 0;
                    // Ends the multishot receive (it completes with 0).
                    let _ = conn.stream.shutdown(Shutdown::Both);
                } else {
                    conn.sent += res as usize;
                    assert!(conn.sent <= conn.sending.len(), "sent more than was queued");
                    if conn.sent < conn.sending.len() || !conn.gathered.is_empty() {
                        // A short send, or replies gathered while it flew:
                        // flush at the end of this turn.
                        if !conn.queued {
                            conn.queued = true;
                            self.ready.push(slot);
                        }
                    }
                }
                self.maybe_close(slot, stats);
                Ok(false)
            }
            other => bail!("a completion of unknown kind {other:#x}"),
        }
    }

    fn accepted(&mut self, stream: TcpStream, stats: &EchoStats) -> Result<()> {
        if let Err(e) = stream.set_nodelay(true) {
            // A peer that reset at once: drop it, keep serving.
            eprintln!("echo-server: TCP_NODELAY on a new connection failed ({e}); closing it");
            return Ok(());
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.conns.len() < CONNECTIONS_MAX => {
                self.conns.push(None);
                u32::try_from(self.conns.len() - 1).expect("CONNECTIONS_MAX fits in u32")
            }
            None => {
                eprintln!("echo-server: {CONNECTIONS_MAX} connections open; closing a new one");
                return Ok(());
            }
        };
        self.conns[slot as usize] = Some(Conn {
            stream,
            gathered: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            recv_armed: false,
            read_done: false,
            failed: false,
            queued: false,
        });
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        self.arm_recv(slot)
    }

    /// Closes `slot` once nothing of it is in flight and nothing is left
    /// to send (or sending failed).
    fn maybe_close(&mut self, slot: u32, stats: &EchoStats) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        let quiet = !conn.recv_armed && !conn.send_in_flight && !conn.queued;
        let nothing_left =
            conn.failed || (conn.gathered.is_empty() && conn.sent == conn.sending.len());
        if conn.read_done && quiet && nothing_left {
            self.conns[slot as usize] = None;
            self.free.push(slot);
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn libc_sock_cloexec() -> i32 {
    // accept4's SOCK_CLOEXEC equals O_CLOEXEC on Linux.
    rustix::fs::OFlags::CLOEXEC.bits() as i32
}

//! `echo-server --runtime epoll`: the echo on a plain non-blocking epoll
//! loop, the way Redis serves its clients, as the yardstick for a ring of
//! our own ([`super::uring_echo`]) and glommio.
//!
//! One thread, level-triggered epoll. A turn waits in `epoll_wait`, then
//! for each readable connection reads what is there (again only while a
//! read fills the whole scratch buffer) into the connection's reply
//! buffer; then, like Redis's `beforeSleep`, writes each connection's
//! replies with one `write`. Only a connection whose write came up short
//! asks for `EPOLLOUT` until its replies are out. No unsafe code; it
//! measures nothing itself, and like the uring loop it applies no
//! back-pressure (a client that never reads grows its reply buffer).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;

use super::echo::EchoStats;

/// Bytes one `read` takes at most (Redis reads 16 KiB; more costs nothing).
const READ_SIZE: usize = 64 << 10;
/// Events one `epoll_wait` returns at most.
const EVENTS_MAX: usize = 1024;
/// The listener's epoll data (connections use their slot).
const LISTENER: u64 = u64::MAX;
/// Most connections at once.
const CONNECTIONS_MAX: usize = 1 << 20;

struct Conn {
    stream: TcpStream,
    /// Replies not yet written; `out[written..]` is left.
    out: Vec<u8>,
    written: usize,
    /// The connection's interest set in epoll.
    interest: epoll::EventFlags,
    /// In this turn's list of connections to write.
    queued: bool,
    /// Read side ended (EOF): close once `out` is written.
    read_done: bool,
}

struct Echo {
    epoll: std::os::fd::OwnedFd,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    ready: Vec<usize>,
    scratch: Vec<u8>,
}

/// Serves echo on `listener` until the process ends; calls `announce`
/// once the listener is in the epoll set.
pub(crate) fn run(
    listener: TcpListener,
    stats: &EchoStats,
    announce: impl FnOnce(&str),
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
    epoll::add(
        &epoll,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )
    .context("adding the listener to epoll")?;
    let mut echo = Echo {
        epoll,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        ready: Vec::new(),
        scratch: vec![0; READ_SIZE],
    };
    announce(
        "epoll echo: one thread, level-triggered epoll, read what is there, one write per \
         connection per turn",
    );
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_MAX);
    loop {
        events.clear();
        match epoll::wait(&echo.epoll, spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for event in &events {
            let data = event.data.u64();
            if data == LISTENER {
                echo.accept(stats)?;
            } else {
                let slot = usize::try_from(data).expect("slots fit in usize");
                echo.handle(slot, event.flags, stats);
            }
        }
        for i in 0..echo.ready.len() {
            let slot = echo.ready[i];
            if let Some(conn) = echo.conns[slot].as_mut() {
                conn.queued = false;
                echo.write(slot, stats);
            }
        }
        echo.ready.clear();
    }
}

impl Echo {
    fn accept(&mut self, stats: &EchoStats) -> Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the listener stays readable, so
                    // the next turn tries again.
                    eprintln!("echo-server: accept failed: {e}");
                    return Ok(());
                }
            };
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true))
            {
                // A peer that reset at once: drop it, keep serving.
                eprintln!("echo-server: setting up a new connection failed ({e}); closing it");
                continue;
            }
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None if self.conns.len() < CONNECTIONS_MAX => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
                None => {
                    eprintln!("echo-server: {CONNECTIONS_MAX} connections open; closing a new one");
                    continue;
                }
            };
            if let Err(e) = epoll::add(
                &self.epoll,
                &stream,
                epoll::EventData::new_u64(slot as u64),
                epoll::EventFlags::IN,
            ) {
                eprintln!("echo-server: adding a connection to epoll failed ({e}); closing it");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                out: Vec::new(),
                written: 0,
                interest: epoll::EventFlags::IN,
                queued: false,
                read_done: false,
            });
            stats.connections_open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection's events: read what is there, write what is left.
    fn handle(&mut self, slot: usize, flags: epoll::EventFlags, stats: &EchoStats) {
        // An event for a slot closed (or closed and reused) earlier in this
        // turn finds nothing to read, or another connection: harmless.
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
            && !conn.read_done
        {
            loop {
                match conn.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        conn.read_done = true;
                        break;
                    }
                    Ok(n) => {
                        conn.out.extend_from_slice(&self.scratch[..n]);
                        if n < self.scratch.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close(slot, stats);
                        return;
                    }
                }
            }
        }
        let conn = self.conns[slot].as_mut().expect("still open");
        if (conn.written < conn.out.len() || conn.read_done) && !conn.queued {
            conn.queued = true;
            self.ready.push(slot);
        }
    }

    /// One write of what `slot` has to send; asks for `EPOLLOUT` if it
    /// came up short, closes the connection when it is done with.
    fn write(&mut self, slot: usize, stats: &EchoStats) {
        let conn = self.conns[slot].as_mut().expect("writing an open slot");
        if conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(slot, stats);
                    return;
                }
            }
        }
        if conn.written == conn.out.len() {
            conn.out.clear();
            conn.written = 0;
        }
        let pending = !conn.out.is_empty();
        if !pending && conn.read_done {
            self.close(slot, stats);
            return;
        }
        // Interest: IN while reading, OUT while replies wait.
        let mut interest = epoll::EventFlags::empty();
        if !conn.read_done {
            interest |= epoll::EventFlags::IN;
        }
        if pending {
            interest |= epoll::EventFlags::OUT;
        }
        if interest != conn.interest {
            conn.interest = interest;
            if epoll::modify(
                &self.epoll,
                &conn.stream,
                epoll::EventData::new_u64(slot as u64),
                interest,
            )
            .is_err()
            {
                self.close(slot, stats);
            }
        }
    }

    /// Drops the connection (closing its socket takes it out of the epoll
    /// set: nothing else holds the descriptor).
    fn close(&mut self, slot: usize, stats: &EchoStats) {
        if self.conns[slot].take().is_some() {
            self.free.push(slot);
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

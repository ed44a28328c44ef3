//! The admin endpoint's shell on plain threads, for a daemon whose cores
//! must not serve scrapes (the data plane runs its own loop per core): one
//! acceptor thread, and one short-lived thread per scrape, at most
//! [`admin::CONNECTIONS_MAX`] at once (the rest get a 503 at once, from a
//! thread of their own, at most 16 at once; beyond that they are closed). Reads a
//! request head (bounded in size and time), asks [`super::parse_head`]
//! what to answer, renders the daemon's [`Pages`], writes, closes.
//!
//! What it never does: run on a data-plane core (the owner pins the
//! acceptor with [`AdminThread::tid`]; the scrape threads inherit its
//! mask), or keep a connection past its deadlines.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use socket2::Socket;
use tracing::{debug, warn};

use super::{Pages, Route, Status};
use crate::admin::{self, Head};
use crate::affinity::Tid;
use crate::clock::monotonic_ms;
use crate::throttle::LogThrottle;

/// The running acceptor thread; stops (and is joined) on drop.
///
/// The acceptor sleeps in `poll()` on the listener and an `eventfd` that
/// [`AdminThread::stop`] writes, with no timeout: it wakes only for a
/// scrape or a stop, never to look at a flag, so it does not preempt a
/// data-plane core it may share a CPU with.
#[derive(Debug)]
pub struct AdminThread {
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    tid: Tid,
}

impl AdminThread {
    /// The acceptor thread's kernel id, to pin it.
    #[must_use]
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// Stops accepting and joins the acceptor; scrapes under way finish
    /// on their own threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The eventfd's counter cannot be full (one write per stop, and a
        // stop joins); should the write fail anyway, the acceptor still
        // stops at its next scrape.
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for AdminThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `pages` on `sock` (bound and listening, from
/// [`super::bind_listener`]) from a new thread named `palisade-admin`.
///
/// # Errors
///
/// The thread could not be started.
pub fn start<P: Pages + Send + Sync + 'static>(
    sock: Socket,
    pages: Arc<P>,
) -> io::Result<AdminThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("palisade-admin".into())
        .spawn({
            let stop = stop.clone();
            let wake = wake.clone();
            move || {
                let _ = tid_tx.send(crate::affinity::current_tid());
                accept_loop(&sock, &pages, &stop, &wake);
            }
        })?;
    let tid = tid_rx
        .recv()
        .map_err(|_| io::Error::other("the admin thread ended before it started"))?;
    Ok(AdminThread {
        handle: Some(handle),
        stop,
        wake,
        tid,
    })
}

fn accept_loop<P: Pages + Send + Sync + 'static>(
    sock: &Socket,
    pages: &Arc<P>,
    stop: &AtomicBool,
    wake: &OwnedFd,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    // Out of file descriptors, accepts fail as fast as they are retried:
    // back off (10 ms doubling to 100) and log once a second.
    let mut log = LogThrottle::new(1_000);
    let mut backoff = Duration::from_millis(10);
    while !stop.load(Ordering::SeqCst) {
        let fd = sock.as_fd();
        let mut fds = [
            PollFd::new(&fd, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            // Only a stop writes the eventfd (after setting the flag): the
            // loop's condition ends it.
            Ok(_) if fds[1].revents().contains(PollFlags::IN) => continue,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "admin endpoint: poll failed; it stops");
                return;
            }
        }
        let stream = match sock.accept() {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                TcpStream::from(stream)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                if let Some(suppressed) = log.failed(monotonic_ms()) {
                    warn!(error = %e, suppressed, "admin accept failed (more failures since the last line: suppressed)");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
                continue;
            }
        };
        // Accepted sockets may inherit O_NONBLOCK: the scrape threads block,
        // with deadlines.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        if active.load(Ordering::SeqCst) >= admin::CONNECTIONS_MAX {
            refuse(stream, &refusing);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let pages = pages.clone();
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .name("palisade-admin".into())
            .spawn(move || {
                serve(&*pages, stream);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            warn!(error = %e, "admin endpoint: could not start a thread for a scrape");
        }
    }
}

/// Answers 503 on a thread of its own (it lingers like any answer, see
/// [`linger`]), at most [`REFUSALS_MAX`] at once; beyond that the
/// connection is just closed.
fn refuse(stream: TcpStream, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::SeqCst) >= REFUSALS_MAX {
        refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let done = refusing.clone();
    let spawned = std::thread::Builder::new()
        .name("palisade-admin".into())
        .spawn(move || {
            let mut stream = stream;
            let response =
                admin::error_response(Status::Unavailable, "too many admin connections; retry");
            if stream
                .set_write_timeout(Some(admin::WRITE_DEADLINE))
                .is_ok()
                && stream.write_all(&response).is_ok()
            {
                linger(&mut stream);
            }
            done.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        refusing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 503 answers under way at most (each on a short-lived thread).
const REFUSALS_MAX: usize = 16;

fn serve(pages: &impl Pages, mut stream: TcpStream) {
    let deadline_ms = monotonic_ms() + admin::READ_DEADLINE.as_millis() as u64;
    let mut buf = vec![0u8; admin::REQUEST_HEAD_MAX];
    let mut filled = 0;
    let route = loop {
        let left = deadline_ms.saturating_sub(monotonic_ms());
        if left == 0 {
            break Route::Error(
                Status::RequestTimeout,
                "the request head did not arrive within 5 s",
            );
        }
        if stream
            .set_read_timeout(Some(Duration::from_millis(left)))
            .is_err()
        {
            return;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(error = %e, "admin connection failed");
                return;
            }
        }
        match admin::parse_head(&buf[..filled]) {
            Head::Incomplete => {}
            Head::Complete(route) => break route,
        }
    };
    let response = admin::answer(pages, route, monotonic_ms());
    if stream
        .set_write_timeout(Some(admin::WRITE_DEADLINE))
        .is_err()
    {
        return;
    }
    if let Err(e) = stream.write_all(&response) {
        debug!(error = %e, "admin client went away or did not take the response in time");
        return;
    }
    linger(&mut stream);
}

/// Most request bytes read and dropped after the response, and for how
/// long at most.
const LINGER_BYTES: usize = 64 << 10;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Ends the response with a FIN, then reads what the client still sends
/// (the rest of a head that was cut off at 8 KiB, say) for a moment before
/// closing: a socket closed with unread bytes sends a reset, and the reset
/// can destroy the response before the client read it.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).is_err()
        || stream.set_read_timeout(Some(LINGER_TIME)).is_err()
    {
        return;
    }
    let deadline_ms = monotonic_ms() + LINGER_TIME.as_millis() as u64;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES && monotonic_ms() < deadline_ms {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::bind_listener;

    fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn the_thread_serves_the_pages_and_refuses_other_paths() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let pages = Arc::new(|_now_ms: u64| "palisade_test 1\n".to_string());
        let mut admin = start(sock, pages).unwrap();
        let answer = get(local, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("palisade_test 1\n"), "{answer}");
        let answer = get(local, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        admin.stop();
        // Stopped: the listener is closed with the thread.
        assert!(TcpStream::connect(local).is_err());
    }

    /// The acceptor's voluntary context switches so far (each sleep it
    /// woke from is one).
    fn wake_ups(admin: &AdminThread) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/self/task/{}/status", admin.tid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn an_idle_acceptor_sleeps_until_a_scrape_or_its_stop() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let pages = Arc::new(|_now_ms: u64| "palisade_test 4\n".to_string());
        let mut admin = start(sock, pages).unwrap();
        // Settled into its first poll (or about to enter it).
        std::thread::sleep(Duration::from_millis(50));
        let before = wake_ups(&admin);
        // Long enough for several wake-ups of any polling period up to
        // 100 ms; an acceptor without a timeout wakes for none of it.
        std::thread::sleep(Duration::from_millis(500));
        let idle = wake_ups(&admin) - before;
        assert!(idle <= 1, "an idle acceptor woke {idle} times in 500 ms");
        let answer = get(local, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.ends_with("palisade_test 4\n"), "{answer}");
        // Its stop wakes it: `stop` returns (it joins the acceptor).
        admin.stop();
        assert!(TcpStream::connect(local).is_err());
    }

    #[test]
    fn a_head_cut_off_at_its_limit_still_gets_its_answer() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let pages = Arc::new(|_now_ms: u64| String::new());
        let _admin = start(sock, pages).unwrap();
        let mut long = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(3 * admin::REQUEST_HEAD_MAX, b'a');
        for _ in 0..20 {
            let answer = get(local, &long);
            assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        }
    }

    #[test]
    fn past_the_connection_limit_a_scrape_gets_a_whole_503() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let pages = Arc::new(|_now_ms: u64| "palisade_test 3\n".to_string());
        let _admin = start(sock, pages).unwrap();
        let _silent: Vec<TcpStream> = (0..admin::CONNECTIONS_MAX)
            .map(|_| TcpStream::connect(local).unwrap())
            .collect();
        // Until the acceptor has taken all of them (they then wait for
        // their heads on their threads).
        let mut answer = String::new();
        for _ in 0..100 {
            answer = get(local, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            if answer.starts_with("HTTP/1.1 503") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too many admin connections"), "{answer}");
    }

    #[test]
    fn a_client_that_sends_nothing_does_not_hold_up_the_next_scrape() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let pages = Arc::new(|_now_ms: u64| "palisade_test 2\n".to_string());
        let _admin = start(sock, pages).unwrap();
        let _silent = TcpStream::connect(local).unwrap();
        let answer = get(local, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.ends_with("palisade_test 2\n"), "{answer}");
    }
}

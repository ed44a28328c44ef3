//! A TCP relay for one directed link between two daemons (`from` dials
//! [`Link::listen`], the relay dials `to`), which a test can cut or slow
//! down through its [`LinkState`]. Stopped on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sleep_ms;

/// One directed link's behaviour, changed by the test at any time.
#[derive(Debug, Default)]
pub struct LinkState {
    /// Drop everything (break connections and refuse new ones).
    pub blocked: AtomicBool,
    /// Added one-way delay per chunk, ms.
    pub delay_ms: AtomicU64,
}

/// The relay: a listener and a pair of pump threads per connection.
#[derive(Debug)]
pub struct Link {
    /// Where `from` dials.
    pub listen: SocketAddr,
    /// What the test changes.
    pub state: Arc<LinkState>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// A relay to `upstream` on a free loopback port.
    #[must_use]
    pub fn start(upstream: SocketAddr) -> Link {
        Link::start_on(
            TcpListener::bind("127.0.0.1:0").expect("link bind"),
            upstream,
        )
    }

    /// A relay to `upstream` accepting on `listener` (bound earlier, so
    /// its address could go into a config first).
    #[must_use]
    pub fn start_on(listener: TcpListener, upstream: SocketAddr) -> Link {
        let listen = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(LinkState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || accept_loop(&listener, upstream, &state2, &stop2));
        Link {
            listen,
            state,
            stop,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    state: &Arc<LinkState>,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if state.blocked.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (s1, s2) = (state.clone(), state.clone());
                let (k1, k2) = (stop.clone(), stop.clone());
                let client2 = client.try_clone().expect("clone");
                let server2 = server.try_clone().expect("clone");
                std::thread::spawn(move || pump(client, server, &s1, &k1));
                std::thread::spawn(move || pump(server2, client2, &s2, &k2));
            }
            Err(_) => sleep_ms(5),
        }
    }
}

fn pump(mut src: TcpStream, mut dst: TcpStream, state: &LinkState, stop: &AtomicBool) {
    let _ = src.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) || state.blocked.load(Ordering::SeqCst) {
            let _ = src.shutdown(std::net::Shutdown::Both);
            let _ = dst.shutdown(std::net::Shutdown::Both);
            return;
        }
        match src.read(&mut buf) {
            Ok(0) => {
                let _ = dst.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                let delay = state.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    sleep_ms(delay);
                }
                if state.blocked.load(Ordering::SeqCst) || dst.write_all(&buf[..n]).is_err() {
                    let _ = src.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = dst.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_both_ways_until_blocked() {
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let link = Link::start(upstream.local_addr().expect("addr"));
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = upstream.accept().expect("accept");
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).expect("read");
            conn.write_all(&buf).expect("write");
        });
        let mut conn = TcpStream::connect(link.listen).expect("connect");
        conn.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        echo.join().expect("echo");
        link.state.blocked.store(true, Ordering::SeqCst);
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The blocked link breaks the connection: EOF or an error, no data.
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
    }
}

//! A TCP relay for one directed link between two daemons (`from` dials
//! [`Link::listen`], the relay dials `to`), which a test can cut or slow
//! down through its [`LinkState`]. Stopped on drop. A cluster's relays
//! make a [`Mesh`], which cuts every link of one node at once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Index;
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("link bind");
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

/// The relays of a cluster's directed peer links, by (from, to) node id.
#[derive(Debug, Default)]
pub struct Mesh {
    links: HashMap<(u16, u16), Link>,
}

impl Mesh {
    /// No links yet.
    #[must_use]
    pub fn new() -> Mesh {
        Mesh::default()
    }

    /// Adds the relay for the link `from -> to`.
    pub fn insert(&mut self, from: u16, to: u16, link: Link) {
        let old = self.links.insert((from, to), link);
        assert!(old.is_none(), "one relay per link {from} -> {to}");
    }

    /// Blocks or unblocks every link between node `id` and the others,
    /// both ways.
    pub fn isolate(&self, id: u16, blocked: bool) {
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.state.blocked.store(blocked, Ordering::SeqCst);
            }
        }
    }

    /// Blocks or unblocks only the links *from* node `id`.
    pub fn mute(&self, id: u16, blocked: bool) {
        for ((from, _), link) in &self.links {
            if *from == id {
                link.state.blocked.store(blocked, Ordering::SeqCst);
            }
        }
    }
}

impl Index<&(u16, u16)> for Mesh {
    type Output = Link;

    fn index(&self, link: &(u16, u16)) -> &Link {
        &self.links[link]
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
                // As the nodes' own sockets: without it, Nagle on the
                // relay's writes met the far end's delayed ACK and held
                // 2-3 % of a 3-node cluster's grants for 40 ms.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
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

    #[test]
    fn a_mesh_isolates_or_mutes_one_node() {
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let to = upstream.local_addr().expect("addr");
        let mut mesh = Mesh::new();
        for (from, to_id) in [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1)] {
            mesh.insert(from, to_id, Link::start(to));
        }
        let blocked = |from, to_id| mesh[&(from, to_id)].state.blocked.load(Ordering::SeqCst);
        mesh.mute(1, true);
        assert!(blocked(1, 2) && blocked(1, 3));
        assert!(!blocked(2, 1) && !blocked(3, 1) && !blocked(2, 3));
        mesh.mute(1, false);
        mesh.isolate(2, true);
        assert!(blocked(1, 2) && blocked(2, 1) && blocked(2, 3) && blocked(3, 2));
        assert!(!blocked(1, 3) && !blocked(3, 1));
    }
}

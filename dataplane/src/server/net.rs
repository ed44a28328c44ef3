//! Socket set-up of the data plane: a listener with SO_REUSEPORT and a
//! DSCP mark set before `listen`, and the
//! mark on accepted streams (marked again rather than trusting what the
//! kernel copies from the listener: `net.ipv4.tcp_reflect_tos`, for one,
//! replaces it with the client's). The server's only `unsafe` lives here.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use palisade_host::mark::{mark, marks_of, Marked};

/// Listen backlog of every core's listener.
const BACKLOG: i32 = 1024;

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}

/// Binds (without listening) a socket to `addr` with SO_REUSEPORT, to
/// resolve port 0 to a concrete port before the cores bind it. Keep it open
/// until they have.
pub fn reserve(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let sock = socket_for(addr)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP socket address"))?;
    Ok((sock, local))
}

/// A listening socket on `addr` for one core: SO_REUSEPORT (every core binds
/// the same port and the kernel spreads connections), DSCP mark, nonblocking.
pub fn listener(addr: SocketAddr, dscp: u8) -> io::Result<std::net::TcpListener> {
    let sock = socket_for(addr)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    mark(&SockRef::from(&sock), addr.is_ipv6(), dscp)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Marks an accepted stream with DSCP `dscp` (and its `SO_PRIORITY`, see
/// `palisade_host::mark`) and disables Nagle.
pub fn prepare_stream(fd: RawFd, ipv6: bool, dscp: u8) -> io::Result<()> {
    // SAFETY: `fd` belongs to a `TcpStream` the caller holds for the whole
    // call, so it stays open while borrowed; the borrow does not outlive
    // this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    mark(&sock, ipv6, dscp)?;
    sock.set_tcp_nodelay(true)
}

/// Reads back the marks of a socket (tests and diagnostics).
pub fn marks_of_fd(fd: RawFd, ipv6: bool) -> io::Result<Marked> {
    // SAFETY: as in `prepare_stream`: the caller keeps `fd` open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    marks_of(&SockRef::from(&borrowed), ipv6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Accepts one connection on a marked listener for `addr` and returns
    /// the accepted stream's marks and whether Nagle is off.
    fn accepted_marks(addr: &str, dscp: u8) -> (Marked, bool) {
        let (reservation, addr) = reserve(addr.parse().expect("addr")).expect("reserve");
        let ipv6 = addr.is_ipv6();
        let listener = listener(addr, dscp).expect("listener");
        let client =
            std::thread::spawn(move || std::net::TcpStream::connect(addr).expect("connect"));
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        prepare_stream(stream.as_raw_fd(), ipv6, dscp).expect("prepare");
        let marks = marks_of_fd(stream.as_raw_fd(), ipv6).expect("read mark");
        let nodelay = stream.nodelay().expect("nodelay");
        drop(client.join().expect("client"));
        drop(reservation);
        (marks, nodelay)
    }

    #[test]
    fn listener_and_accepted_streams_carry_the_mark() {
        let (marks, nodelay) = accepted_marks("127.0.0.1:0", 46);
        assert_eq!(marks.dscp, 46, "EF");
        assert_eq!(marks.priority, palisade_host::mark::PRIO_INTERACTIVE);
        assert!(nodelay);
    }

    #[test]
    fn ipv6_accepted_streams_carry_the_traffic_class() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            println!("SKIP: no IPv6 loopback here");
            return;
        }
        let (marks, nodelay) = accepted_marks("[::1]:0", 34);
        assert_eq!(marks.dscp, 34, "AF41 in IPV6_TCLASS");
        assert_eq!(marks.priority, palisade_host::mark::priority_for_dscp(34));
        assert!(nodelay);
    }
}

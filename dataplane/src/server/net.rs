//! Socket set-up the data plane needs and glommio does not offer: a
//! listener with SO_REUSEPORT and a DSCP mark set before `listen`, and the
//! mark on accepted streams. The only `unsafe` of the server lives here.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

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

/// Marks `sock` with DSCP `dscp` (IP_TOS / IPV6_TCLASS carry DSCP in the
/// upper six bits).
fn mark(sock: &SockRef<'_>, ipv6: bool, dscp: u8) -> io::Result<()> {
    let tos = u32::from(dscp) << 2;
    if ipv6 {
        sock.set_tclass_v6(tos)
    } else {
        sock.set_tos_v4(tos)
    }
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
pub fn listener(addr: SocketAddr, dscp: u8) -> io::Result<glommio::net::TcpListener> {
    let sock = socket_for(addr)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    mark(&SockRef::from(&sock), addr.is_ipv6(), dscp)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(into_glommio(sock))
}

/// Backlog of the admin listener: scrapes are few.
const ADMIN_BACKLOG: i32 = 64;

/// The admin (metrics) listener: bound and listening on `addr`, without
/// SO_REUSEPORT (one core serves it, and a second process on the same port
/// must fail rather than take half the scrapes), nonblocking. Returns it
/// with the address it got (port 0 picks one).
pub fn admin_listener(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    let sock = socket_for(addr)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(ADMIN_BACKLOG)?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP socket address"))?;
    Ok((sock, local))
}

/// Hands a listening socket to glommio.
pub fn into_glommio(sock: Socket) -> glommio::net::TcpListener {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so it is an open
    // TCP socket that nothing else owns; the listener takes sole ownership
    // and closes it on drop. Callers pass only bound, listening sockets.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}

/// Marks an accepted stream with DSCP `dscp` and disables Nagle.
pub fn prepare_stream(fd: RawFd, ipv6: bool, dscp: u8) -> io::Result<()> {
    // SAFETY: `fd` belongs to a `TcpStream` the caller holds for the whole
    // call, so it stays open while borrowed; the borrow does not outlive
    // this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    mark(&sock, ipv6, dscp)?;
    sock.set_tcp_nodelay(true)
}

/// Reads back the DSCP mark of a socket (tests and diagnostics).
pub fn dscp_of(fd: RawFd, ipv6: bool) -> io::Result<u8> {
    // SAFETY: as in `prepare_stream`: the caller keeps `fd` open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    let tos = if ipv6 {
        sock.tclass_v6()?
    } else {
        sock.tos_v4()?
    };
    Ok(u8::try_from(tos >> 2).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn listener_and_accepted_streams_carry_the_mark() {
        let (reservation, addr) = reserve("127.0.0.1:0".parse().expect("addr")).expect("reserve");
        let handle = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = listener(addr, 46).expect("listener");
                let client = std::thread::spawn(move || {
                    std::net::TcpStream::connect(addr).expect("connect")
                });
                let stream = listener.accept().await.expect("accept");
                prepare_stream(stream.as_raw_fd(), false, 46).expect("prepare");
                let dscp = dscp_of(stream.as_raw_fd(), false).expect("read mark");
                let nodelay = stream.nodelay().expect("nodelay");
                drop(client.join().expect("client"));
                (dscp, nodelay)
            })
            .expect("executor");
        let (dscp, nodelay) = handle.join().expect("join");
        drop(reservation);
        assert_eq!(dscp, 46, "EF");
        assert!(nodelay);
    }
}

//! Two tasks on one socket: a reader and a writer, inside the proxy's one
//! event-loop thread (a tokio current-thread runtime).
//!
//! Pipelining needs a task that reads requests (or replies) while another
//! writes replies (or requests) on the same connection. [`split`] hands
//! the two directions of a [`Stream`] (a tokio `TcpStream`, or a
//! `UnixStream` to an upstream NBD server on the same host) to two tasks
//! ([`ReadHalf`], [`WriteHalf`]) and adds what the shell needs around
//! them: a deadline on
//! reads, a timeout on each wait for room to write, and a shutdown that
//! stops the other task. Readiness comes from mio's edge-triggered epoll:
//! a read that would block costs no re-arming (glommio armed a `POLL_ADD`
//! per read), and a read that returns less than the buffer marks the
//! socket drained, so the next read waits for epoll instead of making a
//! `recv` that says `EAGAIN` (tokio's `AsyncRead` does that; its
//! `try_read` does not). TCP and Unix streams behave alike here (both are
//! tokio's `PollEvented`); which one a half holds is one `match` per
//! poll. [`Signal`] wakes one waiting task.
//!
//! [`Signal`] is not `Send`: everything here lives on one thread.
//!
//! ```
//! use palisade_fencing_proxy::duplex::split;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let client = tokio::net::TcpStream::connect(addr).await.unwrap();
//!     let (server, _) = listener.accept().await.unwrap();
//!     let ((_, mut client_tx), (mut server_rx, _)) = (split(client), split(server));
//!     client_tx.write_all(b"ping", None).await.unwrap();
//!     let mut buf = [0u8; 4];
//!     let n = server_rx.read(&mut buf, u64::MAX, "test").await.unwrap();
//!     assert_eq!(&buf[..n], b"ping");
//! });
//! ```

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_host::clock::monotonic_ms;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connected stream socket: TCP (clients, upstream servers by address)
/// or Unix-domain (upstream servers by socket path).
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream socket.
    Unix(UnixStream),
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Tcp(stream)
    }
}

impl From<UnixStream> for Stream {
    fn from(stream: UnixStream) -> Stream {
        Stream::Unix(stream)
    }
}

/// The two directions of `stream`, for a reading and a writing task.
#[must_use]
pub fn split(stream: impl Into<Stream>) -> (ReadHalf, WriteHalf) {
    match stream.into() {
        Stream::Tcp(stream) => {
            let (read, write) = stream.into_split();
            (
                ReadHalf(ReadInner::Tcp(read)),
                WriteHalf(WriteInner::Tcp(write)),
            )
        }
        Stream::Unix(stream) => {
            let (read, write) = stream.into_split();
            (
                ReadHalf(ReadInner::Unix(read)),
                WriteHalf(WriteInner::Unix(write)),
            )
        }
    }
}

/// The reading direction of a stream [`split`] for two tasks.
#[derive(Debug)]
pub struct ReadHalf(ReadInner);

#[derive(Debug)]
enum ReadInner {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

impl AsyncRead for ReadInner {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadInner::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadInner::Unix(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

#[derive(Debug)]
enum WriteInner {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl AsyncWrite for WriteInner {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteInner::Tcp(write) => Pin::new(write).poll_write(cx, buf),
            WriteInner::Unix(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteInner::Tcp(write) => Pin::new(write).poll_flush(cx),
            WriteInner::Unix(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteInner::Tcp(write) => Pin::new(write).poll_shutdown(cx),
            WriteInner::Unix(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

impl ReadHalf {
    /// Reads what is there (at least one byte, or 0 at the end of the
    /// stream), waiting for it until monotonic `deadline_ms` at most
    /// (`u64::MAX`: no deadline): after that, a `TimedOut` error saying
    /// `what`.
    pub async fn read(
        &mut self,
        buf: &mut [u8],
        deadline_ms: u64,
        what: &str,
    ) -> io::Result<usize> {
        if deadline_ms == u64::MAX {
            return self.0.read(buf).await;
        }
        let left_ms = deadline_ms.saturating_sub(monotonic_ms());
        if left_ms == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
        }
        // The timer is armed only if the read has to wait.
        tokio::time::timeout(Duration::from_millis(left_ms), self.0.read(buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, what.to_owned()))?
    }
}

/// The writing direction of a stream [`split`] for two tasks. Dropping it
/// shuts the stream's writing direction down (the peer reads the end).
#[derive(Debug)]
pub struct WriteHalf(WriteInner);

impl WriteHalf {
    /// Writes all of `bytes`. With `wait_max`, a wait for room in the
    /// socket's buffer longer than that (a peer that stopped reading) is a
    /// `TimedOut` error.
    pub async fn write_all(&mut self, bytes: &[u8], wait_max: Option<Duration>) -> io::Result<()> {
        let Some(wait) = wait_max else {
            return self.0.write_all(bytes).await;
        };
        let mut done = 0;
        while done < bytes.len() {
            // The timer is armed only if the write has to wait.
            let n = tokio::time::timeout(wait, self.0.write(&bytes[done..]))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {} ms", wait.as_millis()),
                    )
                })??;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        Ok(())
    }

    /// Shuts both directions down now: a task waiting to read sees the
    /// end of the stream, so a failed writer can stop its reader.
    pub fn shutdown(&self) {
        // The error (already shut, peer gone) changes nothing.
        let _ = match &self.0 {
            WriteInner::Tcp(write) => {
                socket2::SockRef::from(write.as_ref()).shutdown(Shutdown::Both)
            }
            WriteInner::Unix(write) => {
                socket2::SockRef::from(write.as_ref()).shutdown(Shutdown::Both)
            }
        };
    }
}

/// Wakes one waiting task; a notification with no waiter is kept until
/// the next wait, so none is lost.
#[derive(Debug, Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Wakes the waiter, or lets the next [`Signal::wait`] return at once.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Returns once [`Signal::notify`] was called since the last wait
    /// returned. One waiter at a time.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

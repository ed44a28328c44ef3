//! Two tasks on one socket: a reader and a writer, inside the proxy's one
//! event-loop thread (a tokio current-thread runtime).
//!
//! Pipelining needs a task that reads requests (or replies) while another
//! writes replies (or requests) on the same connection. tokio's
//! `TcpStream` keeps the readiness of the two directions apart and offers
//! `readable`/`try_read` and `writable`/`try_write` on `&self`, so both
//! may be pending at once; [`SharedStream`] hands one stream to two tasks
//! (an `Rc`) and adds what the shell needs around those calls: a deadline
//! on reads, a timeout on each wait for room to write, and a shutdown that
//! stops the other task. Readiness comes from mio's edge-triggered epoll:
//! a read that would block costs no re-arming, unlike a `POLL_ADD` per
//! read. [`Signal`] wakes one waiting task.
//!
//! Neither type is `Send`: everything here lives on one thread.
//!
//! ```
//! use palisade_fencing_proxy::duplex::SharedStream;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let client = tokio::net::TcpStream::connect(addr).await.unwrap();
//!     let (server, _) = listener.accept().await.unwrap();
//!     let (client, server) = (SharedStream::new(client), SharedStream::new(server));
//!     client.write_all(b"ping", None).await.unwrap();
//!     let mut buf = [0u8; 4];
//!     let n = server.read(&mut buf, u64::MAX, "test").await.unwrap();
//!     assert_eq!(&buf[..n], b"ping");
//! });
//! ```

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use palisade_host::clock::monotonic_ms;
use tokio::net::TcpStream;

/// A TCP stream that a reading task and a writing task share.
#[derive(Debug, Clone)]
pub struct SharedStream(Rc<TcpStream>);

impl SharedStream {
    /// Shares `stream`.
    #[must_use]
    pub fn new(stream: TcpStream) -> SharedStream {
        SharedStream(Rc::new(stream))
    }

    /// The stream, for options and addresses.
    #[must_use]
    pub fn get(&self) -> &TcpStream {
        &self.0
    }

    /// Reads what is there (at least one byte, or 0 at the end of the
    /// stream), waiting for it until monotonic `deadline_ms` at most:
    /// after that, a `TimedOut` error saying `what`.
    pub async fn read(&self, buf: &mut [u8], deadline_ms: u64, what: &str) -> io::Result<usize> {
        loop {
            // No syscall unless epoll said the socket is readable.
            match self.0.try_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let left_ms = deadline_ms.saturating_sub(monotonic_ms());
            if left_ms == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
            }
            if deadline_ms == u64::MAX {
                self.0.readable().await?;
            } else {
                tokio::time::timeout(Duration::from_millis(left_ms), self.0.readable())
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, what.to_owned()))??;
            }
        }
    }

    /// Writes all of `bytes`. With `wait_max`, a wait for room in the
    /// socket's buffer longer than that (a peer that stopped reading) is a
    /// `TimedOut` error.
    pub async fn write_all(&self, bytes: &[u8], wait_max: Option<Duration>) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match self.0.try_write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match wait_max {
                None => self.0.writable().await?,
                Some(wait) => tokio::time::timeout(wait, self.0.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer read nothing for {} ms", wait.as_millis()),
                        )
                    })??,
            }
        }
        Ok(())
    }

    /// Shuts both directions down now: a task waiting to read sees the
    /// end of the stream, so a failed writer can stop its reader.
    pub fn shutdown(&self) {
        // The error (already shut, peer gone) changes nothing.
        let _ = socket2::SockRef::from(&*self.0).shutdown(Shutdown::Both);
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

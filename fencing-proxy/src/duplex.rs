//! Two tasks on one socket: a reader and a writer, inside one glommio
//! executor.
//!
//! Pipelining needs a task that reads requests (or replies) while another
//! writes replies (or requests) on the same connection. glommio's
//! `TcpStream` keeps separate readiness sources for the two directions, so
//! both may be pending at once; what it lacks is a way to hand one stream
//! to two tasks. [`SharedStream`] does that: clones share the stream and
//! borrow it only inside a single `poll_*` call, never across an `.await`,
//! so the two never collide. [`Signal`] wakes one waiting task.
//!
//! Neither type is `Send`: everything here lives on one executor thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A TCP stream that a reading task and a writing task share.
#[derive(Debug, Clone)]
pub struct SharedStream(Rc<RefCell<TcpStream>>);

impl SharedStream {
    /// Shares `stream`.
    #[must_use]
    pub fn new(stream: TcpStream) -> SharedStream {
        SharedStream(Rc::new(RefCell::new(stream)))
    }

    /// Runs `f` on the stream (for options such as timeouts). Never call
    /// it from inside another borrow of the stream.
    pub fn with<T>(&self, f: impl FnOnce(&TcpStream) -> T) -> T {
        f(&self.0.borrow())
    }

    /// Shuts both directions down now: a task blocked reading sees the
    /// end of the stream, so a failed writer can stop its reader.
    pub async fn shutdown(&self) {
        let stream = self.0.clone();
        futures_lite::future::poll_fn(move |cx| {
            let stream = stream.borrow();
            let shut = stream.shutdown(std::net::Shutdown::Both);
            futures_lite::pin!(shut);
            // The error (already shut, peer gone) changes nothing.
            shut.poll(cx).map(|_| ())
        })
        .await;
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
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
        futures_lite::future::poll_fn(|cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

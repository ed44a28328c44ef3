//! A doorbell: how other threads wake a thread that waits in `poll()`.
//!
//! The control thread waits for peer sockets and for work other threads
//! queue for it (the data plane's proposals, a link a handshake thread
//! finished) in one `poll()`. The doorbell is the `eventfd` in that
//! `poll()`; a producer rings it after it queued its work, and only when
//! the waiter said it is about to sleep, so that a busy waiter costs its
//! producers no system call:
//!
//! ```text
//! producer                         waiter
//! queue.push(work)                 bell.sleep_begins()      // sleeping = true; fence
//! bell.ring()  // fence; if sleeping: swap false, write eventfd
//!                                  if every queue is empty { poll(bell, sockets…) }
//!                                  bell.awake(readable)     // sleeping = false; drain
//! ```
//!
//! Both sides put a sequentially consistent fence between their write and
//! their read, so at least one of them sees the other's write: either the
//! producer sees `sleeping` and writes the eventfd, or the waiter sees the
//! queued work and does not sleep. A ring that comes when the waiter did
//! not sleep after all leaves the eventfd readable: the next wait returns
//! at once, once, which costs one spare turn and loses nothing.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

/// An `eventfd` and the waiter's "about to sleep" flag.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A doorbell that has not been rung.
    ///
    /// # Errors
    /// `eventfd` failed (out of file descriptors).
    pub fn new() -> io::Result<Doorbell> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Doorbell {
            fd,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Wakes the waiter if it is asleep or about to sleep. Call it after
    /// the work is where the waiter looks for it.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            // A full counter (2^64 - 2 rings unread) cannot happen: the
            // waiter drains it on every wake, and a ring only writes after
            // the waiter announced a sleep. Any other failure leaves the
            // waiter to wake at its timeout.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    /// The waiter is about to sleep: after this call it must look at every
    /// queue once more, and sleep only if all are empty.
    pub fn sleep_begins(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The waiter is awake (whether it slept or not); `rung` says whether
    /// `poll` found the doorbell readable, which drains it.
    pub fn awake(&self, rung: bool) {
        self.sleeping.store(false, Ordering::Relaxed);
        if rung {
            let mut count = [0u8; 8];
            // Non-blocking: a ring drained already reads EAGAIN.
            let _ = rustix::io::read(&self.fd, &mut count);
        }
    }

    /// Waits up to `wait` for a ring (between [`Doorbell::sleep_begins`]
    /// and [`Doorbell::awake`]), for a waiter with nothing else to poll.
    /// Returns whether it was rung.
    pub fn wait(&self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        poll_for(&mut fds, wait);
        fds[0].revents().contains(PollFlags::IN)
    }

    /// The descriptor to put in a `poll()` set (readable once rung).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `poll(fds, wait)`; an interrupted or failed poll returns as a wait
/// that found nothing (the caller's next turn polls again).
pub fn poll_for(fds: &mut [PollFd<'_>], wait: Duration) {
    let timeout = rustix::time::Timespec {
        tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    if poll(fds, Some(&timeout)).is_err() {
        for fd in fds.iter_mut() {
            fd.clear_revents();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_ring_while_asleep_wakes_and_is_drained() {
        let bell = Doorbell::new().expect("eventfd");
        bell.sleep_begins();
        bell.ring();
        let rung = bell.wait(Duration::from_secs(10));
        assert!(rung, "the ring is seen");
        bell.awake(rung);
        // Drained: the next wait finds nothing.
        bell.sleep_begins();
        assert!(!bell.wait(Duration::ZERO));
        bell.awake(false);
    }

    #[test]
    fn a_ring_while_awake_writes_nothing() {
        let bell = Doorbell::new().expect("eventfd");
        bell.ring();
        bell.sleep_begins();
        assert!(!bell.wait(Duration::ZERO), "no system call, no wake");
        bell.awake(false);
    }

    #[test]
    fn no_wake_is_lost_between_producers_and_a_sleeping_waiter() {
        // Producers push and ring; the waiter sleeps only when the queue
        // looked empty after `sleep_begins`. A lost wake shows as a wait
        // that ran its whole (long) timeout while work was queued.
        const ITEMS: usize = 20_000;
        let bell = Arc::new(Doorbell::new().expect("eventfd"));
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let (bell, queue) = (bell.clone(), queue.clone());
                std::thread::spawn(move || {
                    for i in 0..ITEMS / 2 {
                        queue.lock().expect("not poisoned").push_back(p * ITEMS + i);
                        bell.ring();
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut taken = 0;
        let mut lost = 0;
        while taken < ITEMS {
            bell.sleep_begins();
            let empty = queue.lock().expect("not poisoned").is_empty();
            let rung = if empty {
                let rung = bell.wait(Duration::from_secs(5));
                if !rung && !queue.lock().expect("not poisoned").is_empty() {
                    lost += 1;
                }
                rung
            } else {
                false
            };
            bell.awake(rung);
            taken += queue.lock().expect("not poisoned").drain(..).count();
        }
        for producer in producers {
            producer.join().expect("producer");
        }
        assert_eq!(lost, 0, "waits that slept through queued work");
    }
}

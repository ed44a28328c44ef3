//! Wakes every core from outside, every [`NUDGE_INTERVAL`], because glommio
//! 0.9 can put an executor to sleep with runnable tasks (issue 16).
//!
//! The glommio bug: `LocalExecutor::run` arms the preemption timer (1 ms
//! here, `dataplane.preempt_timer`) and then runs the task queues. If the
//! thread is descheduled for longer than that in between (a busy machine),
//! the timer has fired before the first task runs; `run_task_queues` then
//! returns "nothing ran" without running anything, and the loop parks the
//! executor in `io_uring_enter` although its tasks are runnable. The tasks
//! woken in that turn never run, so the timers they would have re-armed do
//! not exist: an executor with nothing else pending (a core joining the
//! mesh, an idle core whose only tasks are timers) sleeps until an I/O
//! completion or a wake from another thread reaches it — for ever, if
//! none comes. (Seen: a start that hung; a bare executor that only sleeps
//! 1 ms at a time, parked for good; `dataplane/tests/start_stop.rs`.) The
//! same bug is in glommio's master branch; a fork fixed it in September
//! 2026 ("do not park the executor while a task queue is still runnable").
//!
//! The workaround: each core registers a waker of its root task here, and
//! a plain thread ([`Nudger`]) wakes them all every [`NUDGE_INTERVAL`]. A
//! wake from another thread rings the executor's eventfd, so a parked
//! executor gets up, polls its rings and runs its queues again; a stall
//! lasts at most about one interval. An awake core pays one queued waker
//! per interval. What it never does: run anything on a core, or touch the
//! lease table.
//!
//! A waker exists only once the root task ran. The bug can strike before
//! that, in the executor's first turn: then the core has no task to wake
//! and nothing else to wait for. [`kick`] interrupts such a thread's
//! `io_uring_enter` with a signal whose handler does nothing
//! ([`KICK_SIGNAL`]); glommio takes the `EINTR` as an event and turns its
//! loop again. [`Nudge::is_registered`] tells who still needs that.
//!
//! ```no_run
//! use palisade_dataplane::server::nudge::Nudger;
//!
//! let nudger = Nudger::start(1).expect("nudge thread");
//! let nudge = nudger.handle();
//! glommio::LocalExecutorBuilder::default()
//!     .spawn(move || async move {
//!         let _registration = nudge.register().await;
//!         glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
//!     })
//!     .expect("executor")
//!     .join()
//!     .expect("ran");
//! ```

#![allow(unsafe_code)] // the signal shim in `kick`, nothing else

use std::future::poll_fn;
use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

/// How often every registered executor is woken. The longest a stall
/// caused by the glommio bug lasts; an idle core wakes this often.
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(10);

/// The wakers of the executors to nudge, one slot per executor.
#[derive(Debug)]
pub struct Nudge {
    slots: Box<[Mutex<Option<Waker>>]>,
    next_slot: AtomicUsize,
    /// The threads that registered, in slot order.
    threads: Mutex<Vec<ThreadId>>,
    stopped: AtomicBool,
}

impl Nudge {
    fn new(slot_count: usize) -> Nudge {
        Nudge {
            slots: (0..slot_count).map(|_| Mutex::new(None)).collect(),
            next_slot: AtomicUsize::new(0),
            threads: Mutex::new(Vec::with_capacity(slot_count)),
            stopped: AtomicBool::new(false),
        }
    }

    /// Registers the calling task's executor (call it from the executor's
    /// root task, once). It is nudged until the registration is dropped.
    ///
    /// # Panics
    /// If more executors register than [`Nudger::start`] was given slots
    /// for (a bug).
    pub async fn register(self: &Arc<Self>) -> Registration {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        assert!(slot < self.slots.len(), "one nudge slot per executor");
        let registration = Registration {
            nudge: self.clone(),
            slot,
        };
        poll_fn(|cx| {
            registration.refresh(cx.waker());
            Poll::Ready(())
        })
        .await;
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(std::thread::current().id());
        registration
    }

    /// Whether `thread` registered (its executor has run its root task, so
    /// nudges reach it).
    #[must_use]
    pub fn is_registered(&self, thread: ThreadId) -> bool {
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&thread)
    }

    /// Wakes every registered executor now.
    pub fn wake_all(&self) {
        for slot in self.slots.iter() {
            let waker = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waker) = waker.as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}

/// An executor's place in a [`Nudge`]; dropping it (on the executor's
/// thread) stops the nudges.
#[derive(Debug)]
pub struct Registration {
    nudge: Arc<Nudge>,
    slot: usize,
}

impl Registration {
    /// The slot, in order of registration (0 first).
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Nudges will wake the task that owns `waker` (any task of the same
    /// executor does; call it when a different task should be polled).
    pub fn refresh(&self, waker: &Waker) {
        let mut slot = self.nudge.slots[self.slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropped here, on the executor's thread.
        let waker = self.nudge.slots[self.slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(waker);
    }
}

/// The signal [`kick`] sends: a real-time signal above the C library's own
/// (`SIGRTMIN + 7`), handled by a function that does nothing.
#[must_use]
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Interrupts whatever system call `thread` sleeps in (for a glommio core:
/// `io_uring_enter`, which returns `EINTR`). For a core that has not
/// registered yet (see the module docs); a thread that already ended is
/// left alone. Installs the no-op handler on first use (`SA_RESTART`:
/// other system calls of the thread resume).
pub fn kick<T>(thread: &JoinHandle<T>) {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    if thread.is_finished() {
        return;
    }
    HANDLER.call_once(|| {
        // SAFETY: a zeroed `sigaction` is a valid empty one; the handler
        // is an `extern "C" fn(c_int)` that touches nothing, so it is
        // async-signal-safe; the pointer arguments are valid or null.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
    // SAFETY: the handle is not joined, so its pthread_t is still valid
    // (an ended thread answers ESRCH, which is ignored).
    unsafe {
        libc::pthread_kill(thread.as_pthread_t(), kick_signal());
    }
}

/// The thread that wakes every registered executor every
/// [`NUDGE_INTERVAL`]. Stops when dropped.
#[derive(Debug)]
pub struct Nudger {
    nudge: Arc<Nudge>,
    thread: Option<JoinHandle<()>>,
}

impl Nudger {
    /// Starts the thread, with room for `slot_count` executors.
    pub fn start(slot_count: usize) -> io::Result<Nudger> {
        let nudge = Arc::new(Nudge::new(slot_count));
        let thread = std::thread::Builder::new()
            .name("palisade-nudge".into())
            .spawn({
                let nudge = nudge.clone();
                move || {
                    while !nudge.stopped.load(Ordering::SeqCst) {
                        std::thread::park_timeout(NUDGE_INTERVAL);
                        nudge.wake_all();
                    }
                }
            })?;
        Ok(Nudger {
            nudge,
            thread: Some(thread),
        })
    }

    /// What executors register with.
    #[must_use]
    pub fn handle(&self) -> Arc<Nudge> {
        self.nudge.clone()
    }

    /// Wakes every registered executor now (say, after setting a flag they
    /// should see at once).
    pub fn nudge_now(&self) {
        self.nudge.wake_all();
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.nudge.stopped.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicU32;

    /// A waker that counts its wakes.
    struct Count(AtomicU32);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_registered_slots_until_dropped() {
        let nudge = Arc::new(Nudge::new(2));
        let count = Arc::new(Count(AtomicU32::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut register = std::pin::pin!(nudge.register());
        let Poll::Ready(registration) = register.as_mut().poll(&mut cx) else {
            panic!("registering never waits");
        };
        assert_eq!(registration.slot(), 0);
        nudge.wake_all();
        nudge.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        drop(registration);
        nudge.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "no wakes after drop");
    }

    #[test]
    fn the_thread_nudges_and_stops() {
        let mut nudger = Nudger::start(1).expect("thread");
        let count = Arc::new(Count(AtomicU32::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let nudge = nudger.handle();
        let mut register = std::pin::pin!(nudge.register());
        let Poll::Ready(_registration) = register.as_mut().poll(&mut cx) else {
            panic!("registering never waits");
        };
        std::thread::sleep(NUDGE_INTERVAL * 10);
        nudger.stop();
        let seen = count.0.load(Ordering::SeqCst);
        assert!(seen >= 2, "woken {seen} times in ten intervals");
        std::thread::sleep(NUDGE_INTERVAL * 3);
        assert_eq!(count.0.load(Ordering::SeqCst), seen, "stopped");
    }
}

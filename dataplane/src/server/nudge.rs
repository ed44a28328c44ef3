//! Gets glommio executors that went to sleep with runnable tasks going
//! again (issue 16), and wakes the cores when the server stops.
//!
//! The glommio 0.9 bug: `LocalExecutor::run` arms the preemption timer (1 ms
//! here, `dataplane.preempt_timer`) and then runs the task queues. If the
//! thread is descheduled for longer than that in between (a busy machine),
//! the timer has fired before the first task runs; `run_task_queues` then
//! returns "nothing ran" without running anything, and the loop parks the
//! executor in `io_uring_enter` although its tasks are runnable. The tasks
//! woken in that turn do not run, so the timers they would have re-armed
//! do not exist: an executor with nothing else pending (a core joining the
//! mesh, an idle core whose only tasks wait on timers) sleeps until an I/O
//! completion or another thread reaches it — for ever, if none does. It
//! can strike in the executor's very first turn, before any task of ours
//! ran. (Seen: starts that hung; a bare executor that only sleeps 1 ms at a
//! time, parked for good; `dataplane/tests/start_stop.rs`.) glommio's
//! master branch has the same code; a fork fixed it in September 2026 ("do
//! not park the executor while a task queue is still runnable").
//!
//! The workaround, [`Kicker`]: a plain thread that, every
//! [`KICK_INTERVAL`], sends a no-op signal ([`kick_signal`]) to each
//! executor thread that its owner calls stale (the server: a core that does
//! not listen yet, or whose heartbeat is late). The signal ends the
//! thread's `io_uring_enter` with `EINTR`; glommio takes that as an event,
//! turns its loop and runs its queues. A healthy core is never disturbed,
//! and a signal, unlike a wake, does not pile up while a core is busy in a
//! task that never yields. (Waking a task from outside would not do: before
//! the first task ran there is no waker, and a waker queued to a core that
//! cannot run it piles up.)
//!
//! [`CoreWakers`] is the other half: each core registers its root task's
//! waker, and the server wakes them all once, when it stops.
//!
//! What it never does: run anything on a core, or touch the lease table.
//!
//! ```no_run
//! use std::os::unix::thread::JoinHandleExt;
//! use palisade_dataplane::server::nudge::Kicker;
//!
//! let thread = std::thread::spawn(|| {
//!     let executor = glommio::LocalExecutorBuilder::default().make().expect("executor");
//!     executor.run(glommio::timer::sleep(std::time::Duration::from_millis(1)))
//! });
//! let threads = vec![(thread.thread().id(), thread.as_pthread_t())];
//! // Here the thread is always stale; a real owner asks its heartbeat.
//! let kicker = Kicker::start(threads, |_| true).expect("kick thread");
//! while !thread.is_finished() {
//!     std::thread::sleep(std::time::Duration::from_millis(10));
//! }
//! drop(kicker); // before the join, which ends the thread's pthread_t
//! thread.join().expect("ran");
//! ```

#![allow(unsafe_code)] // the signal shim in `kick`, nothing else

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use palisade_host::affinity::{current_tid, Tid};

/// How often [`Kicker`] looks at the threads (and kicks the stale ones).
pub const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// The signal [`kick`] sends: a real-time signal above the C library's own
/// (`SIGRTMIN + 7`), handled by a function that does nothing.
#[must_use]
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Interrupts whatever system call `thread` sleeps in (for a glommio
/// executor, `io_uring_enter`, which returns `EINTR`). Installs the no-op
/// handler on first use, with `SA_RESTART`, so that other system calls
/// resume.
///
/// `thread` must not be joined or detached yet (while it is not, an ended
/// thread's id stays valid: the kick is then ignored).
pub fn kick(thread: libc::pthread_t) {
    static HANDLER: std::sync::Once = std::sync::Once::new();
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
    // SAFETY: the caller keeps the thread unjoined, so `thread` names a
    // live thread descriptor (an ended thread answers ESRCH, ignored).
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}

/// The thread that kicks stale executor threads every [`KICK_INTERVAL`].
/// Stop it (or drop it) before the threads it kicks are joined.
#[derive(Debug)]
pub struct Kicker {
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The kick thread's kernel id, to pin it once the cores' CPUs are
    /// known.
    tid: Tid,
}

impl Kicker {
    /// Starts kicking `threads` (id and `pthread_t`, see
    /// [`std::os::unix::thread::JoinHandleExt`]) for which `is_stale`
    /// answers true.
    pub fn start(
        threads: Vec<(ThreadId, libc::pthread_t)>,
        is_stale: impl Fn(ThreadId) -> bool + Send + 'static,
    ) -> io::Result<Kicker> {
        let stopped = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("palisade-kick".into())
            .spawn({
                let stopped = stopped.clone();
                move || {
                    let _ = tid_tx.send(current_tid());
                    while !stopped.load(Ordering::SeqCst) {
                        std::thread::park_timeout(KICK_INTERVAL);
                        if stopped.load(Ordering::SeqCst) {
                            break;
                        }
                        for &(id, pthread) in &threads {
                            if is_stale(id) {
                                kick(pthread);
                            }
                        }
                    }
                }
            })?;
        // The thread sends it first thing: no answer means it is gone.
        let tid = tid_rx
            .recv()
            .map_err(|_| io::Error::other("the kick thread ended at once"))?;
        Ok(Kicker {
            stopped,
            thread: Some(thread),
            tid,
        })
    }

    /// The kick thread's kernel id (to pin it, see
    /// [`palisade_host::affinity::pin_thread`]).
    #[must_use]
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// Stops the thread and waits for it; no kick is sent after this.
    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The root-task wakers of the cores, woken once when the server stops.
#[derive(Debug)]
pub struct CoreWakers {
    slots: Box<[Mutex<Option<Waker>>]>,
    next_slot: AtomicUsize,
}

impl CoreWakers {
    /// Room for `slot_count` cores.
    #[must_use]
    pub fn new(slot_count: usize) -> CoreWakers {
        CoreWakers {
            slots: (0..slot_count).map(|_| Mutex::new(None)).collect(),
            next_slot: AtomicUsize::new(0),
        }
    }

    /// Registers the calling task (a core's root task; call it once, first
    /// thing). [`CoreWakers::wake_all`] wakes it until the registration
    /// is dropped.
    ///
    /// # Panics
    /// If more cores register than there are slots (a bug).
    pub async fn register(self: &Arc<Self>) -> Registration {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        assert!(slot < self.slots.len(), "one waker slot per core");
        let registration = Registration {
            wakers: self.clone(),
            slot,
        };
        std::future::poll_fn(|cx| {
            registration.refresh(cx.waker());
            Poll::Ready(())
        })
        .await;
        registration
    }

    /// Wakes every registered task.
    pub fn wake_all(&self) {
        for slot in self.slots.iter() {
            let waker = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waker) = waker.as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}

/// A core's place in [`CoreWakers`]; dropping it (on the core's thread)
/// takes the waker out.
#[derive(Debug)]
pub struct Registration {
    wakers: Arc<CoreWakers>,
    slot: usize,
}

impl Registration {
    /// The slot, in order of registration (0 first).
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// [`CoreWakers::wake_all`] will wake the task that owns `waker`.
    pub fn refresh(&self, waker: &Waker) {
        let mut slot = self.wakers.slots[self.slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropped here, on the core's thread, not on the stopping one.
        let waker = self.wakers.slots[self.slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::AtomicU32;

    /// A waker that counts its wakes.
    struct Count(AtomicU32);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_registered_tasks_until_dropped() {
        let wakers = Arc::new(CoreWakers::new(2));
        let count = Arc::new(Count(AtomicU32::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut register = std::pin::pin!(wakers.register());
        let Poll::Ready(registration) = register.as_mut().poll(&mut cx) else {
            panic!("registering never waits");
        };
        assert_eq!(registration.slot(), 0);
        wakers.wake_all();
        wakers.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        drop(registration);
        wakers.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "no wakes after drop");
    }

    #[test]
    fn a_kick_ends_a_sleeping_system_call_of_a_stale_thread_only() {
        // A thread blocked in a channel receive; the kicks interrupt its
        // futex wait, which resumes (SA_RESTART, and std retries).
        let kicked = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let stale = Arc::new(AtomicBool::new(false));
        let mut kicker = Kicker::start(vec![(sleeper.thread().id(), sleeper.as_pthread_t())], {
            let stale = stale.clone();
            let kicked = kicked.clone();
            move |_| {
                let now = stale.load(Ordering::SeqCst);
                if now {
                    kicked.fetch_add(1, Ordering::SeqCst);
                }
                now
            }
        })
        .expect("kick thread");
        std::thread::sleep(KICK_INTERVAL * 5);
        assert_eq!(
            kicked.load(Ordering::SeqCst),
            0,
            "a fresh thread is left alone"
        );
        stale.store(true, Ordering::SeqCst);
        // Kicked again and again while stale (bounded wait: a loaded
        // machine may deschedule the kick thread for a while).
        let deadline = palisade_host::clock::monotonic_ms() + 5_000;
        while kicked.load(Ordering::SeqCst) < 2 && palisade_host::clock::monotonic_ms() < deadline {
            std::thread::sleep(KICK_INTERVAL);
        }
        kicker.stop();
        let seen = kicked.load(Ordering::SeqCst);
        assert!(seen >= 2, "kicked {seen} times in 5 s");
        // The kicked thread lives on (the handler does nothing).
        tx.send(()).expect("sleeper alive");
        sleeper.join().expect("sleeper");
    }
}

//! Atomics used by the lease table, swapped for loom's under `cfg(loom)`.
//!
//! Production builds use `portable_atomic::AtomicU128` (CMPXCHG16B for
//! read-modify-write, VMOVDQA for loads on CPUs with AVX). loom has no
//! 128-bit atomic, so the loom build models one with a loom mutex: loom then
//! explores every interleaving of the table's 128-bit operations as if each
//! were one indivisible step, which is what the hardware instruction gives.

#[cfg(not(loom))]
pub(crate) use portable_atomic::AtomicU128;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

/// A 128-bit atomic for loom models: a mutex-protected `u128` whose every
/// operation is one step, exactly like the real instruction.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct AtomicU128(loom::sync::Mutex<u128>);

#[cfg(loom)]
impl AtomicU128 {
    pub(crate) fn new(value: u128) -> Self {
        AtomicU128(loom::sync::Mutex::new(value))
    }

    pub(crate) fn load(&self, _order: Ordering) -> u128 {
        *self.0.lock().expect("loom mutex")
    }

    pub(crate) fn store(&self, value: u128, _order: Ordering) {
        *self.0.lock().expect("loom mutex") = value;
    }

    pub(crate) fn compare_exchange(
        &self,
        current: u128,
        new: u128,
        _success: Ordering,
        _failure: Ordering,
    ) -> Result<u128, u128> {
        let mut guard = self.0.lock().expect("loom mutex");
        if *guard == current {
            *guard = new;
            Ok(current)
        } else {
            Err(*guard)
        }
    }
}

/// Called in every wait loop so loom can schedule the thread being waited on.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives the processor away while a peer finishes a short critical step.
#[inline]
pub(crate) fn yield_thread() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

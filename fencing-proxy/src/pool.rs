//! Reusable buffers for large write payloads, one pool per event loop.
//!
//! With many requests in flight, a connection holds many payload copies
//! at once. glibc serves each one of [`LARGE`] bytes or more with a fresh
//! `mmap` (the proxy fixes its threshold, see `limits::tune_allocator`),
//! so without reuse every 2 MiB write of `qemu-img convert` costs an
//! `mmap`, 512 page faults and a `munmap` — a third of the proxy's CPU,
//! measured. The pool keeps such buffers for the next payload instead, up
//! to [`POOL_BYTES_MAX`]; smaller payloads come from the heap as before.
//!
//! ```
//! use palisade_fencing_proxy::pool::{BufPool, LARGE};
//! let pool = BufPool::default();
//! let mut payload = pool.take(LARGE);
//! payload.extend_from_slice(&vec![7u8; LARGE]);
//! pool.give(payload);
//! assert_eq!(pool.pooled_bytes(), LARGE);
//! assert!(pool.take(LARGE).capacity() >= LARGE); // the same buffer again
//! assert_eq!(pool.pooled_bytes(), 0);
//! ```

use std::cell::{Cell, RefCell};

/// Payloads of this many bytes or more are pooled (glibc's mmap
/// threshold as the proxy sets it).
pub const LARGE: usize = crate::limits::MMAP_THRESHOLD as usize;
/// Bytes of buffers the pool keeps at most; more are freed.
pub const POOL_BYTES_MAX: usize = 32 << 20;

/// A pool of large buffers for one event-loop thread.
#[derive(Debug, Default)]
pub struct BufPool {
    bufs: RefCell<Vec<Vec<u8>>>,
    bytes: Cell<usize>,
}

impl BufPool {
    /// An empty buffer with room for `len` bytes: a pooled one when `len`
    /// is large and one fits.
    #[must_use]
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= LARGE {
            let mut bufs = self.bufs.borrow_mut();
            if let Some(at) = bufs.iter().rposition(|b| b.capacity() >= len) {
                let buf = bufs.swap_remove(at);
                self.bytes.set(self.bytes.get() - buf.capacity());
                debug_assert!(buf.is_empty());
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// Gives a buffer back; a small one, or one past the pool's bound, is
    /// freed.
    pub fn give(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity < LARGE || self.bytes.get() + capacity > POOL_BYTES_MAX {
            return;
        }
        buf.clear();
        self.bytes.set(self.bytes.get() + capacity);
        self.bufs.borrow_mut().push(buf);
    }

    /// Bytes held for reuse.
    #[must_use]
    pub fn pooled_bytes(&self) -> usize {
        self.bytes.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_not_pooled_and_the_bound_holds() {
        let pool = BufPool::default();
        pool.give(Vec::with_capacity(LARGE - 1));
        assert_eq!(pool.pooled_bytes(), 0);
        for _ in 0..(POOL_BYTES_MAX / LARGE + 3) {
            pool.give(Vec::with_capacity(LARGE));
        }
        assert!(pool.pooled_bytes() <= POOL_BYTES_MAX);
        // Too small for a larger request: a new buffer, the pool untouched.
        let before = pool.pooled_bytes();
        let big = pool.take(2 * LARGE);
        assert!(big.capacity() >= 2 * LARGE);
        assert_eq!(pool.pooled_bytes(), before);
    }
}

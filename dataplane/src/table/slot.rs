//! One slot of the lease table and the packed words it holds: the key word's
//! kind bits, the state word's meta bits (time, lock delay, flags) and
//! [`State`], the decoded state word every transition is judged on.
//!
//! Layout only: which transition is allowed lives in the table itself.

use super::LOCK_DELAY_MAX_MS;
use crate::sync::{AtomicU128, AtomicU64};

pub(super) const KIND_MASK: u128 = 0b11;
pub(super) const KIND_TOMB: u128 = 0b01;
pub(super) const KIND_PENDING: u128 = 0b10;
pub(super) const KIND_LIVE: u128 = 0b11;
pub(super) const KEY_EMPTY: u128 = 0;
pub(super) const KEY_TOMB: u128 = KIND_TOMB;

pub(super) const TIME_BITS: u32 = 40;
pub(super) const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
pub(super) const DELAY_SHIFT: u32 = 40;
pub(super) const DELAY_MASK: u64 = 0xffff;
pub(super) const HELD: u64 = 1 << 56;
pub(super) const WAITERS: u64 = 1 << 57;
pub(super) const VACANT: u64 = 1 << 58;
/// A token was issued in this slot since the key was inserted. Without it,
/// the state's token is only the starting floor, which may come from
/// another key (or tenant) and must not be reported.
pub(super) const ISSUED: u64 = 1 << 59;
/// A held lease past its expiry was counted as expired (by the sweeper):
/// each lease that runs out unreleased is counted once, by whichever of the
/// sweeper or the grant that takes it over gets there first.
pub(super) const EXPIRY_COUNTED: u64 = 1 << 60;
/// The lease was installed from the replicated state at a takeover
/// ([`LeaseTable::install`](super::LeaseTable::install)) rather than
/// granted by this leadership. No state word written by anything else
/// carries it, so an installed word never equals a word some stale
/// compare-and-swap may still expect.
pub(super) const ADOPTED: u64 = 1 << 61;

/// One cache line per slot so that cores working on different resources do
/// not share lines.
#[repr(C, align(64))]
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) key: AtomicU128,
    pub(super) state: AtomicU128,
    pub(super) holder: AtomicU128,
    pub(super) inserts: AtomicU64,
    /// The lease's ttl, tagged with the low 32 bits of its token:
    /// `token as u32 << 32 | ttl_ms`. Renewals never extend past it: the
    /// replicated state re-arms a lease at a takeover from the ttl its
    /// grant logged, so no renewal may have promised more.
    pub(super) ttl: AtomicU64,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Slot>() == 64);

impl Slot {
    pub(super) fn new() -> Slot {
        Slot {
            key: AtomicU128::new(KEY_EMPTY),
            state: AtomicU128::new(0),
            holder: AtomicU128::new(0),
            inserts: AtomicU64::new(0),
            ttl: AtomicU64::new(0),
        }
    }
}

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    pub(super) token: u64,
    pub(super) meta: u64,
}

impl State {
    pub(super) fn unpack(word: u128) -> State {
        State {
            token: (word >> 64) as u64,
            meta: word as u64,
        }
    }
    pub(super) fn pack(self) -> u128 {
        (u128::from(self.token) << 64) | u128::from(self.meta)
    }
    pub(super) fn time_ms(self) -> u64 {
        self.meta & TIME_MASK
    }
    pub(super) fn lock_delay_ms(self) -> u64 {
        (self.meta >> DELAY_SHIFT) & DELAY_MASK
    }
    pub(super) fn held(self) -> bool {
        self.meta & HELD != 0
    }
    pub(super) fn waiters(self) -> bool {
        self.meta & WAITERS != 0
    }
    /// Held, past its expiry and not yet counted as expired.
    pub(super) fn expired_uncounted(self, now_ms: u64) -> bool {
        self.held() && now_ms >= self.expiry_ms() && self.meta & EXPIRY_COUNTED == 0
    }
    pub(super) fn vacant(self) -> bool {
        self.meta & VACANT != 0
    }
    pub(super) fn adopted(self) -> bool {
        self.meta & ADOPTED != 0
    }
    /// For a held lease: its expiry. For a free slot: when it became free.
    pub(super) fn expiry_ms(self) -> u64 {
        self.time_ms()
    }
    /// Earliest time a new grant may happen (ignoring waiters).
    pub(super) fn grantable_at_ms(self) -> u64 {
        if self.held() {
            self.expiry_ms() + self.lock_delay_ms()
        } else {
            0
        }
    }
    /// Holding and unexpired at `now_ms`, in any epoch.
    pub(super) fn live_at(self, now_ms: u64) -> bool {
        self.held() && now_ms < self.expiry_ms()
    }
    /// Counts against its tenant's lease quota: held and not yet counted
    /// as expired (the sweeper marks a run-out lease within a sweep
    /// interval; a grant that takes it over keeps the count as it is).
    pub(super) fn charged(self) -> bool {
        self.held() && self.meta & EXPIRY_COUNTED == 0
    }
    pub(super) fn with_waiters(self, on: bool) -> State {
        let meta = if on {
            self.meta | WAITERS
        } else {
            self.meta & !WAITERS
        };
        State { meta, ..self }
    }
}

/// Meta for a slot. A held lease, or one released after being held, has
/// had a token issued in this incarnation (ISSUED); only a freshly inserted
/// key has neither.
pub(super) fn meta(time_ms: u64, lock_delay_ms: u32, held: bool, waiters: bool) -> u64 {
    assert!(time_ms <= TIME_MASK, "time beyond the table's 40-bit range");
    assert!(lock_delay_ms <= LOCK_DELAY_MAX_MS);
    let mut meta = time_ms | (u64::from(lock_delay_ms) << DELAY_SHIFT);
    if held {
        meta |= HELD | ISSUED;
    }
    if waiters {
        meta |= WAITERS;
    }
    meta
}

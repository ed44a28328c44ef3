//! The lease table: one array of cache-line slots shared by every core.
//!
//! Each slot holds three 128-bit words and an insert counter:
//!
//! ```text
//! key     fingerprint (126 bits) | kind (2 bits: EMPTY, TOMB, PENDING, LIVE)
//! state   token (64) | meta (64: time_ms 40, lock_delay_ms 16, HELD, WAITERS, VACANT,
//!         ISSUED, EXPIRY_COUNTED)
//! holder  token (64) | holder id (64): who received `token`, for idempotent acquire
//! inserts counter for keys whose probe sequence starts at this slot
//! ```
//!
//! Acquire, renew, release and check are single compare-and-swap transitions
//! on `state`: the CAS succeeds only on the exact state the caller evaluated,
//! expiry included, so a grant can never land on a lease that was renewed in
//! between (etcd#11456). No mutex is taken on any request path.
//!
//! Keys are 128-bit SipHash-1-3 fingerprints of (tenant, resource) under a
//! per-process random key; the resource name itself is never stored.
//!
//! Inserting a new key claims a vacant slot (`PENDING`), then commits by
//! bumping the home slot's `inserts` counter from the value read before the
//! scan. Two inserters of one key share a home slot, so at most one commits;
//! the other retracts. That keeps one slot per key even though reclaimed
//! slots (`TOMB`) are reused.
//!
//! Tokens: every state word carries the last token issued in its slot; a
//! grant issues `next_token(last, epoch)`, strictly greater (S1). A slot's
//! token survives reclamation, a reused slot starts above it, and a per-key
//! floor (`floors`, indexed by fingerprint) carries the highest token of a
//! reclaimed key over to wherever that key lands next.

use crate::sync::{spin_hint, yield_thread, AtomicU64, Ordering};

mod key;
mod slot;
pub use key::{KeyHasher, LeaseKey};
use slot::{
    meta, Slot, State, ADOPTED, DELAY_MASK, EXPIRY_COUNTED, ISSUED, KEY_EMPTY, KEY_TOMB, KIND_LIVE,
    KIND_MASK, KIND_PENDING, TIME_MASK, VACANT,
};

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

/// Index of a slot in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotIndex(pub u32);

/// How many slots a key's probe sequence visits before the table counts as
/// full for it. Quadratic probing at load <= 1/2 makes a full window of 32
/// about as likely as 32 coin flips all landing heads.
pub const PROBE_MAX: usize = 32;
/// Spins, then yields, while another core finishes inserting the same key.
const PENDING_SPIN_MAX: u32 = 1_000;
const PENDING_YIELD_MAX: u32 = 1_000;
/// Restarts of one operation after losing races; each restart means another
/// operation made progress, so hitting this is a bug or a pathological storm.
const RETRY_MAX: u32 = 10_000;
#[cfg(not(loom))]
const FLOOR_COUNT: usize = 1024;
#[cfg(loom)]
const FLOOR_COUNT: usize = 2;

/// Added to every expiry the table computes from a request's arrival.
/// Arrival times are whole milliseconds rounded down, so a request that
/// arrived at 1 000.9 ms is seen at 1 000: without this margin its lease
/// would end at 1 000 + ttl, up to 1 ms before arrival + ttl on this clock,
/// and a client counting ttl from its send time (PROTOCOL.md, "Validity on
/// the client") could still use it while a new grant is made. With it, the
/// lease ends strictly after arrival + ttl.
pub const EXPIRY_MARGIN_MS: u64 = 1;

/// Tenants whose leases a table counts unless told otherwise
/// ([`LeaseTable::with_tenant_quota`]).
#[cfg(not(loom))]
const TENANT_COUNT_DEFAULT: usize = 16;
#[cfg(loom)]
const TENANT_COUNT_DEFAULT: usize = 1;

/// Largest lock delay a slot can store.
pub const LOCK_DELAY_MAX_MS: u32 = DELAY_MASK as u32;
/// Largest time value the table stores (about 34 years of milliseconds).
pub const TIME_MAX_MS: u64 = TIME_MASK;

/// The token after `last` in `epoch`.
///
/// Fails with [`TableError::EpochExhausted`] when `epoch`'s 32-bit sequence
/// is used up for this resource, and with [`TableError::StaleEpoch`] when
/// `last` is from a later epoch than the caller's (the caller read the
/// Leadership word before the control plane published a newer epoch, or a
/// reused slot started just past an exhausted sequence).
pub fn next_token(last: u64, epoch: u32) -> Result<u64, TableError> {
    assert!(epoch >= 1, "epochs start at 1");
    let last_epoch = (last >> 32) as u32;
    let next = if last_epoch < epoch {
        (u64::from(epoch) << 32) | 1
    } else if last_epoch > epoch {
        return Err(TableError::StaleEpoch);
    } else if (last as u32) < u32::MAX {
        last + 1
    } else {
        return Err(TableError::EpochExhausted);
    };
    assert!(next > last, "S1: tokens strictly increase");
    Ok(next)
}

/// Whether an acquire respects queued waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireMode {
    /// A new request: it may not overtake queued waiters.
    Fair,
    /// The head of the wait queue, acting through the key's home core.
    WaiterHead,
}

/// What an acquire asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Caller-chosen holder id (non-zero).
    pub holder: u64,
    /// Lease duration from `now_ms`.
    pub ttl_ms: u32,
    /// Ungrantable time after an expiry without release.
    pub lock_delay_ms: u32,
}

/// Result of an acquire that the table could evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is the caller's.
    Granted {
        /// Fencing token.
        token: u64,
        /// Server-side expiry.
        expires_at_ms: u64,
        /// The lease's ttl from now on: the request's, or for a repeated
        /// acquire the larger of it and the lease's earlier ttl.
        ttl_ms: u32,
        /// The caller already held it (same holder id): same token, expiry
        /// pushed to `now + ttl`.
        idempotent: bool,
        /// The grant took over a lease that had run out unreleased and that
        /// no sweep had counted yet: count one expiration.
        took_over_expired: bool,
    },
    /// Not grantable now.
    Busy {
        /// Token of the live lease, 0 if none (lock delay or waiters).
        token: u64,
        /// When the resource may become grantable; `now` if only waiters
        /// stand in the way.
        grantable_at_ms: u64,
        /// Waiters are queued for this key.
        waiters: bool,
    },
}

/// Result of renew, release and check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// The token is the live lease (check).
    Current {
        /// Server-side expiry.
        expires_at_ms: u64,
    },
    /// Renewed (renew).
    Renewed {
        /// Server-side expiry: never lowered by a renewal (it may hold a
        /// re-armed takeover expiry that covers an earlier leader's
        /// answers).
        expires_at_ms: u64,
        /// What the holder may count on from its send time: the request's
        /// ttl, capped at the lease's own.
        ttl_ms: u32,
        /// The lease was installed at a takeover and this leadership has
        /// not yet logged that it serves it: with replication, the answer
        /// waits for that log entry (see `replica::Command::Renewed`).
        adopted: bool,
    },
    /// Released; `wake_waiters` tells the caller to wake the key's home core.
    Released {
        /// Waiters are queued for this key.
        wake_waiters: bool,
    },
    /// The token is not the live lease.
    Stale {
        /// Token of the live lease, 0 if none.
        current_token: u64,
        /// Highest token this slot knows for the key, 0 if the key is unknown.
        last_token: u64,
    },
}

/// Failures that are not about the lease itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No room for another key (capacity reached or probe window full).
    #[error("lease table is full")]
    Full,
    /// The epoch's sequence numbers are used up for this key; the node must
    /// advance its epoch before granting it again.
    #[error("epoch sequence exhausted")]
    EpochExhausted,
    /// The key already holds a token from a later epoch than the caller's:
    /// reload the Leadership word and retry; if the epoch is still behind,
    /// the node must advance it.
    #[error("caller's epoch is behind the key's last token")]
    StaleEpoch,
    /// Another core is inserting the same key and did not finish in time
    /// (it was descheduled mid-insert). Retry.
    #[error("contended insert, retry")]
    Contended,
    /// The key's tenant holds its quota of leases
    /// ([`LeaseTable::with_tenant_quota`]); only a fresh grant is refused.
    #[error("the tenant holds its quota of leases")]
    TenantQuota,
}

/// A read-only look at one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// Token of the live lease, 0 if none.
    pub token: u64,
    /// When the key may become grantable (`now` if it is).
    pub grantable_at_ms: u64,
    /// Waiters are queued.
    pub waiters: bool,
}

/// A key's lease as [`LeaseTable::inspect`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    /// The slot's token: the lease's if held, else the last one issued.
    pub token: u64,
    /// A lease is held (possibly expired).
    pub held: bool,
    /// For a held lease, its expiry.
    pub expires_at_ms: u64,
    /// When a new grant may happen (expiry plus lock delay if held).
    pub grantable_at_ms: u64,
    /// Installed at a takeover and not granted since.
    pub adopted: bool,
}

/// What a sweep pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    /// Slots visited.
    pub visited: u64,
    /// Unexpired leases seen.
    pub held: u64,
    /// Idle keys removed.
    pub reclaimed: u64,
    /// Leases that ran out unreleased, counted now (each once: a lease
    /// taken over first is counted by that grant instead).
    pub expired: u64,
}

/// The shared lease table. All methods take `&self` and are lock-free
/// compare-and-swap transitions; `now_ms` is a monotonic millisecond clock
/// read by the caller after the request's bytes arrived.
#[derive(Debug)]
pub struct LeaseTable {
    slots: Box<[Slot]>,
    mask: usize,
    capacity: u64,
    live: AtomicU64,
    floors: Box<[AtomicU64]>,
    hasher: KeyHasher,
    /// Leases each tenant holds ([`State::charged`]), by tenant index. A
    /// tenant beyond the array is not counted (and has no quota).
    tenant_leases: Box<[AtomicU64]>,
    /// The most leases one tenant may hold: a grant that would hold one
    /// more is refused. Renewals, repeated acquires, takeovers of a run-out
    /// lease and installs are never refused.
    tenant_leases_max: u64,
}

impl LeaseTable {
    /// A table for up to `capacity` keys, using twice as many slots (rounded
    /// up to a power of two, at least 8).
    #[must_use]
    pub fn new(capacity: u32, hasher: KeyHasher) -> LeaseTable {
        assert!(capacity >= 1);
        let slot_count = (capacity as usize * 2).next_power_of_two().max(8);
        // Slots are read at random: on huge pages where the kernel has
        // them (a table of 65 536 keys is 8 MiB of slots; on 4 KiB pages a
        // random lookup also misses the TLB: the `cold-batch` bench took
        // 22 % longer one by one on small pages, 10 % longer prefetched).
        let mut slots: Vec<Slot> = Vec::with_capacity(slot_count);
        palisade_host::memory::advise_huge_pages(slots.spare_capacity_mut());
        slots.extend((0..slot_count).map(|_| Slot::new()));
        let slots = slots.into_boxed_slice();
        let floors: Box<[AtomicU64]> = (0..FLOOR_COUNT).map(|_| AtomicU64::new(0)).collect();
        LeaseTable {
            slots,
            mask: slot_count - 1,
            capacity: u64::from(capacity),
            live: AtomicU64::new(0),
            floors,
            hasher,
            tenant_leases: (0..TENANT_COUNT_DEFAULT)
                .map(|_| AtomicU64::new(0))
                .collect(),
            tenant_leases_max: u64::MAX,
        }
    }

    /// Counts the leases of `tenants` tenants (indexes `0..tenants`) and
    /// refuses a grant that would give one of them more than `leases_max`.
    /// Call once, before the table is shared.
    #[must_use]
    pub fn with_tenant_quota(mut self, tenants: usize, leases_max: u64) -> LeaseTable {
        assert!(leases_max >= 1);
        self.tenant_leases = (0..tenants).map(|_| AtomicU64::new(0)).collect();
        self.tenant_leases_max = leases_max;
        self
    }

    /// Leases tenant `tenant` holds now: held, and not yet found expired
    /// by the sweeper (which looks every sweep interval).
    #[must_use]
    pub fn tenant_leases(&self, tenant: u32) -> u64 {
        self.tenant_leases
            .get(tenant as usize)
            .map_or(0, |count| count.load(Ordering::SeqCst))
    }

    /// Takes one lease of `key`'s tenant's quota ahead of a grant that
    /// will hold one more; give it back with [`LeaseTable::unreserve`] if
    /// the grant does not happen.
    fn reserve(&self, key: LeaseKey) -> Result<(), TableError> {
        let Some(count) = self.tenant_leases.get(key.tenant() as usize) else {
            return Ok(());
        };
        let mut seen = count.load(Ordering::SeqCst);
        loop {
            if seen >= self.tenant_leases_max {
                return Err(TableError::TenantQuota);
            }
            match count.compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Ok(()),
                Err(actual) => seen = actual,
            }
        }
    }

    fn unreserve(&self, key: LeaseKey) {
        let Some(count) = self.tenant_leases.get(key.tenant() as usize) else {
            return;
        };
        let mut seen = count.load(Ordering::SeqCst);
        // Saturating: a miscount must never wrap into a quota that refuses
        // the tenant forever.
        while seen > 0 {
            match count.compare_exchange(seen, seen - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
        debug_assert!(false, "a tenant's lease count never goes below 0");
    }

    /// Keeps the tenant's lease count after a state change other than a
    /// grant (grants reserve first).
    fn recount(&self, key: LeaseKey, old: State, new: State) {
        match (old.charged(), new.charged()) {
            (false, true) => {
                if let Some(count) = self.tenant_leases.get(key.tenant() as usize) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            (true, false) => self.unreserve(key),
            _ => {}
        }
    }

    /// The hasher that turns (tenant, resource) into this table's keys.
    #[must_use]
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// Keys the table may hold.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Slots in the table.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Keys currently present (held or idle, not yet reclaimed).
    #[must_use]
    pub fn live_keys(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Asks the CPU to start loading `key`'s home slot into its cache: a
    /// hint that reads and writes nothing. A server that prefetches the
    /// keys of a batch of requests before serving them overlaps the
    /// batch's cache misses instead of taking them one after another.
    pub fn prefetch(&self, key: LeaseKey) {
        palisade_host::memory::prefetch(&self.slots[self.home(key)]);
    }

    fn home(&self, key: LeaseKey) -> usize {
        (key.hash() >> 64) as usize & self.mask
    }

    fn probe(&self, home: usize, step: usize) -> usize {
        // Triangular numbers visit every slot of a power-of-two table.
        (home + step * (step + 1) / 2) & self.mask
    }

    fn floor(&self, key: LeaseKey) -> &AtomicU64 {
        &self.floors[(key.hash() >> 2) as usize % FLOOR_COUNT]
    }

    /// The slot holding `key`, if present. PENDING inserts count as absent:
    /// a key being created holds no lease yet.
    fn find(&self, key: LeaseKey) -> Option<usize> {
        let live = key.word(KIND_LIVE);
        let home = self.home(key);
        for step in 0..PROBE_MAX {
            let index = self.probe(home, step);
            let word = self.slots[index].key.load(Ordering::SeqCst);
            if word == live {
                return Some(index);
            }
            if word == KEY_EMPTY {
                return None;
            }
        }
        None
    }

    /// Waits until the key word at `index` is no longer `word`: another core
    /// is between the two steps of an insert (PENDING) or a reclaim (VACANT
    /// state, key still LIVE) and will finish with its next store.
    fn wait_key_change(&self, index: usize, word: u128) -> Result<u128, TableError> {
        let slot = &self.slots[index];
        for _ in 0..PENDING_SPIN_MAX {
            let now = slot.key.load(Ordering::SeqCst);
            if now != word {
                return Ok(now);
            }
            spin_hint();
        }
        for _ in 0..PENDING_YIELD_MAX {
            let now = slot.key.load(Ordering::SeqCst);
            if now != word {
                return Ok(now);
            }
            yield_thread();
        }
        Err(TableError::Contended)
    }

    /// The slot holding `key`, inserting it if absent, with the (not
    /// vacant) state word it holds.
    fn find_or_insert(&self, key: LeaseKey, now_ms: u64) -> Result<(usize, u128), TableError> {
        let live = key.word(KIND_LIVE);
        let pending = key.word(KIND_PENDING);
        let home = self.home(key);
        'attempt: for _ in 0..RETRY_MAX {
            let inserts_seen = self.slots[home].inserts.load(Ordering::SeqCst);
            let mut vacant: Option<(usize, u128)> = None;
            let mut step = 0;
            while step < PROBE_MAX {
                let index = self.probe(home, step);
                let slot = &self.slots[index];
                let mut word = slot.key.load(Ordering::SeqCst);
                if word == pending {
                    word = self.wait_key_change(index, pending)?;
                }
                if word == live {
                    let state = slot.state.load(Ordering::SeqCst);
                    if !State::unpack(state).vacant() {
                        return Ok((index, state));
                    }
                    // Being reclaimed: only the reclaimer retires the key word
                    // (anyone else could hit a later incarnation of the same
                    // key in this slot), so wait for it, then look again.
                    self.wait_key_change(index, live)?;
                    continue 'attempt;
                }
                if word == KEY_EMPTY {
                    vacant.get_or_insert((index, word));
                    break;
                }
                if word == KEY_TOMB {
                    vacant.get_or_insert((index, word));
                }
                step += 1;
            }
            // Capacity is checked before the claim and counted after the
            // commit, so concurrent inserts of different keys may overshoot it
            // by at most the number of cores; the slot array has 2x headroom.
            let full = self.live.load(Ordering::SeqCst) >= self.capacity;
            let (index, seen) = match vacant {
                Some(found) if !full => found,
                _ => {
                    // Before saying "full", make sure nobody inserted this very
                    // key meanwhile: that would have moved the home counter.
                    if self.slots[home].inserts.load(Ordering::SeqCst) != inserts_seen {
                        continue 'attempt;
                    }
                    return Err(TableError::Full);
                }
            };
            let slot = &self.slots[index];
            if slot
                .key
                .compare_exchange(seen, pending, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue 'attempt;
            }
            // Commit point: only one inserter per home slot moves the counter
            // on from the value it read before scanning.
            if self.slots[home]
                .inserts
                .compare_exchange(
                    inserts_seen,
                    inserts_seen.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err()
            {
                slot.key.store(KEY_TOMB, Ordering::SeqCst);
                continue 'attempt;
            }
            // Start above both this slot's history (no state word repeats in a
            // slot, so a stale CAS can never succeed here) and the key's floor
            // (its tokens from an earlier slot, S1).
            let previous = State::unpack(slot.state.load(Ordering::SeqCst)).token;
            let floor = self.floor(key).load(Ordering::SeqCst);
            let start = previous.max(floor).saturating_add(1);
            let state = State {
                token: start,
                meta: meta(now_ms, 0, false, false),
            }
            .pack();
            slot.state.store(state, Ordering::SeqCst);
            self.live.fetch_add(1, Ordering::SeqCst);
            slot.key.store(live, Ordering::SeqCst);
            return Ok((index, state));
        }
        panic!("find_or_insert: no progress after {RETRY_MAX} attempts");
    }

    /// The ttl recorded for `token`'s lease in `slot`, if the slot's ttl
    /// word is that lease's (it is written right after the grant's CAS, so
    /// only a caller racing the grant itself can miss it).
    fn lease_ttl(slot: &Slot, token: u64) -> Option<u32> {
        let word = slot.ttl.load(Ordering::SeqCst);
        ((word >> 32) as u32 == token as u32).then_some(word as u32)
    }

    fn record_ttl(slot: &Slot, token: u64, ttl_ms: u32) {
        slot.ttl.store(
            (u64::from(token as u32) << 32) | u64::from(ttl_ms),
            Ordering::SeqCst,
        );
    }

    fn holder_is(&self, slot: &Slot, token: u64, holder: u64) -> bool {
        slot.holder.load(Ordering::SeqCst) == (u128::from(token) << 64) | u128::from(holder)
    }

    fn record_holder(&self, slot: &Slot, token: u64, holder: u64) {
        let record = (u128::from(token) << 64) | u128::from(holder);
        let mut current = slot.holder.load(Ordering::SeqCst);
        // Only ever move forward: a slow writer of an older grant must not
        // overwrite a newer grant's record.
        while ((current >> 64) as u64) < token {
            match slot
                .holder
                .compare_exchange(current, record, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes the lease on `key` for `grant.holder`, or reports who has it.
    ///
    /// Call with the epoch read from the node's `Leadership` word for this
    /// request, after checking that grants are allowed.
    pub fn acquire(
        &self,
        key: LeaseKey,
        grant: Grant,
        now_ms: u64,
        epoch: u32,
        mode: AcquireMode,
    ) -> Result<Acquired, TableError> {
        assert!(grant.ttl_ms > 0, "ttl is validated before the table");
        assert!(grant.lock_delay_ms <= LOCK_DELAY_MAX_MS);
        let (mut index, mut word) = self.find_or_insert(key, now_ms)?;
        for _ in 0..RETRY_MAX {
            let slot = &self.slots[index];
            let state = State::unpack(word);
            if state.vacant() {
                // Reclaimed under us: find (or re-create) the key again.
                (index, word) = self.find_or_insert(key, now_ms)?;
                continue;
            }
            let expires_at_ms = now_ms + u64::from(grant.ttl_ms) + EXPIRY_MARGIN_MS;
            if state.live_at(now_ms) {
                if !self.holder_is(slot, state.token, grant.holder) {
                    return Ok(Acquired::Busy {
                        token: state.token,
                        grantable_at_ms: state.grantable_at_ms(),
                        waiters: state.waiters(),
                    });
                }
                // Same holder retrying: same token, lease pushed to now + ttl
                // (never shortened: an earlier answer may promise more), and
                // the lease's ttl never lowered for the same reason.
                let ttl_ms = Self::lease_ttl(slot, state.token)
                    .unwrap_or(0)
                    .max(grant.ttl_ms);
                let renewed = State {
                    token: state.token,
                    meta: meta(
                        expires_at_ms.max(state.expiry_ms()),
                        grant.lock_delay_ms,
                        true,
                        state.waiters(),
                    ),
                };
                match slot.state.compare_exchange(
                    word,
                    renewed.pack(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => {
                        // The sweeper may have counted it as run out
                        // after this request's clock was read.
                        self.recount(key, state, renewed);
                        Self::record_ttl(slot, state.token, ttl_ms);
                        return Ok(Acquired::Granted {
                            token: state.token,
                            expires_at_ms: renewed.expiry_ms(),
                            ttl_ms,
                            idempotent: true,
                            took_over_expired: false,
                        });
                    }
                    Err(actual) => {
                        word = actual;
                        continue;
                    }
                }
            }
            if state.held() && now_ms < state.grantable_at_ms() {
                return Ok(Acquired::Busy {
                    token: 0,
                    grantable_at_ms: state.grantable_at_ms(),
                    waiters: state.waiters(),
                });
            }
            if state.waiters() && mode == AcquireMode::Fair {
                return Ok(Acquired::Busy {
                    token: 0,
                    grantable_at_ms: now_ms,
                    waiters: true,
                });
            }
            let token = next_token(state.token, epoch)?;
            let granted = State {
                token,
                meta: meta(expires_at_ms, grant.lock_delay_ms, true, state.waiters()),
            };
            // A grant over a lease that still counts (run out, not yet
            // swept) keeps the tenant's count; any other holds one more.
            let reserved = !state.charged();
            if reserved {
                self.reserve(key)?;
            }
            // The CAS is on the exact state judged free above, expiry
            // included: a renewal in between makes it fail.
            match slot.state.compare_exchange(
                word,
                granted.pack(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.record_holder(slot, token, grant.holder);
                    Self::record_ttl(slot, token, grant.ttl_ms);
                    return Ok(Acquired::Granted {
                        token,
                        expires_at_ms,
                        ttl_ms: grant.ttl_ms,
                        idempotent: false,
                        took_over_expired: state.expired_uncounted(now_ms),
                    });
                }
                // Someone else changed the state first: judge the new one.
                Err(actual) => {
                    if reserved {
                        self.unreserve(key);
                    }
                    word = actual;
                }
            }
        }
        panic!("acquire: no progress after {RETRY_MAX} attempts");
    }

    /// Loads the state of `key`, or `None` if the key is absent. A key being
    /// reclaimed counts as absent: only idle keys are reclaimed.
    fn load_state(&self, key: LeaseKey) -> Option<(usize, u128, State)> {
        let index = self.find(key)?;
        let word = self.slots[index].state.load(Ordering::SeqCst);
        let state = State::unpack(word);
        if state.vacant() {
            return None;
        }
        Some((index, word, state))
    }

    fn stale(state: Option<State>, now_ms: u64) -> TokenOutcome {
        match state {
            None => TokenOutcome::Stale {
                current_token: 0,
                last_token: 0,
            },
            Some(state) => TokenOutcome::Stale {
                current_token: if state.live_at(now_ms) {
                    state.token
                } else {
                    0
                },
                last_token: if state.meta & ISSUED != 0 {
                    state.token
                } else {
                    0
                },
            },
        }
    }

    /// Extends the lease `token` on `key` to `now + ttl`, `ttl` capped at
    /// the ttl the lease was granted with (the returned `ttl_ms` is what the
    /// holder may count on). The server-side expiry never moves back.
    /// Fails (stale) if the lease expired: an expired lease is never
    /// revived. An adopted lease stays adopted until [`LeaseTable::confirm`].
    pub fn renew(&self, key: LeaseKey, token: u64, ttl_ms: u32, now_ms: u64) -> TokenOutcome {
        assert!(ttl_ms > 0, "ttl is validated before the table");
        for _ in 0..RETRY_MAX {
            let Some((index, word, state)) = self.load_state(key) else {
                return Self::stale(None, now_ms);
            };
            if state.token != token || !state.live_at(now_ms) {
                return Self::stale(Some(state), now_ms);
            }
            let ttl_ms =
                Self::lease_ttl(&self.slots[index], token).map_or(ttl_ms, |t| t.min(ttl_ms));
            let expires_at_ms =
                (now_ms + u64::from(ttl_ms) + EXPIRY_MARGIN_MS).max(state.expiry_ms());
            let adopted = state.adopted();
            let renewed = State {
                token,
                meta: meta(
                    expires_at_ms,
                    state.lock_delay_ms() as u32,
                    true,
                    state.waiters(),
                ) | if adopted { ADOPTED } else { 0 },
            };
            if self.slots[index]
                .state
                .compare_exchange(word, renewed.pack(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                // As for a repeated acquire: the sweeper may have counted
                // it as run out after this request's clock was read.
                self.recount(key, state, renewed);
                return TokenOutcome::Renewed {
                    expires_at_ms,
                    ttl_ms,
                    adopted,
                };
            }
        }
        panic!("renew: no progress after {RETRY_MAX} attempts");
    }

    /// Gives back the lease `token` on `key`. Releasing an expired lease
    /// that nobody took over also succeeds and cancels its lock delay.
    pub fn release(&self, key: LeaseKey, token: u64, now_ms: u64) -> TokenOutcome {
        for _ in 0..RETRY_MAX {
            let Some((index, word, state)) = self.load_state(key) else {
                return Self::stale(None, now_ms);
            };
            if state.token != token || !state.held() {
                return Self::stale(Some(state), now_ms);
            }
            let freed = State {
                token,
                // Released after a grant: the token was issued.
                meta: meta(now_ms, 0, false, state.waiters()) | ISSUED,
            };
            if self.slots[index]
                .state
                .compare_exchange(word, freed.pack(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.recount(key, state, freed);
                return TokenOutcome::Released {
                    wake_waiters: state.waiters(),
                };
            }
        }
        panic!("release: no progress after {RETRY_MAX} attempts");
    }

    /// Whether `token` is the live lease on `key`. Reads only.
    #[must_use]
    pub fn check(&self, key: LeaseKey, token: u64, now_ms: u64) -> TokenOutcome {
        match self.load_state(key) {
            Some((_, _, state)) if state.token == token && state.live_at(now_ms) => {
                TokenOutcome::Current {
                    expires_at_ms: state.expiry_ms(),
                }
            }
            Some((_, _, state)) => Self::stale(Some(state), now_ms),
            None => Self::stale(None, now_ms),
        }
    }

    /// Marks (or unmarks) `key` as having queued waiters. While marked, fair
    /// acquires are refused and the key is never reclaimed. Only the key's
    /// home core calls this.
    pub fn set_waiters(&self, key: LeaseKey, on: bool, now_ms: u64) -> Result<(), TableError> {
        for _ in 0..RETRY_MAX {
            let index = if on {
                self.find_or_insert(key, now_ms)?.0
            } else {
                match self.find(key) {
                    Some(index) => index,
                    None => return Ok(()),
                }
            };
            let slot = &self.slots[index];
            let word = slot.state.load(Ordering::SeqCst);
            let state = State::unpack(word);
            if state.vacant() {
                if on {
                    continue;
                }
                return Ok(());
            }
            if state.waiters() == on {
                return Ok(());
            }
            if slot
                .state
                .compare_exchange(
                    word,
                    state.with_waiters(on).pack(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
        panic!("set_waiters: no progress after {RETRY_MAX} attempts");
    }

    /// Visits slots `range` (clamped to the table): counts live leases,
    /// counts leases that ran out unreleased since the last sweep (marking
    /// them so each is counted once), and reclaims keys idle (free, or
    /// expired past their lock delay, with no waiters) for at least
    /// `reclaim_after_ms`.
    pub fn sweep(
        &self,
        range: std::ops::Range<usize>,
        now_ms: u64,
        reclaim_after_ms: u64,
    ) -> SweepStats {
        let mut stats = SweepStats::default();
        let end = range.end.min(self.slots.len());
        for index in range.start.min(end)..end {
            stats.visited += 1;
            let slot = &self.slots[index];
            if slot.key.load(Ordering::SeqCst) & KIND_MASK != KIND_LIVE {
                continue;
            }
            // State first, then the key: if the CAS below succeeds, the slot
            // was in one incarnation from this load to the CAS (state words
            // never repeat across incarnations), and that incarnation's key
            // was already LIVE when read below.
            let mut word = slot.state.load(Ordering::SeqCst);
            let mut state = State::unpack(word);
            let key_word = slot.key.load(Ordering::SeqCst);
            if key_word & KIND_MASK != KIND_LIVE || state.vacant() {
                continue;
            }
            if state.live_at(now_ms) {
                stats.held += 1;
                continue;
            }
            if state.expired_uncounted(now_ms) {
                let counted = State {
                    meta: state.meta | EXPIRY_COUNTED,
                    ..state
                };
                // Lost to a grant, release or waiter flag: whoever changed
                // it judged the lease first; look again next sweep.
                if slot
                    .state
                    .compare_exchange(word, counted.pack(), Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    continue;
                }
                stats.expired += 1;
                self.recount(LeaseKey::from_word(key_word), state, counted);
                word = counted.pack();
                state = counted;
            }
            if state.waiters() {
                continue;
            }
            let idle_since_ms = if state.held() {
                state.grantable_at_ms()
            } else {
                state.time_ms()
            };
            if now_ms < idle_since_ms.saturating_add(reclaim_after_ms) {
                continue;
            }
            // Raise the key's floor first: whoever sees the slot VACANT (and
            // may then re-insert the key elsewhere) also sees the floor.
            let key = LeaseKey::from_word(key_word);
            self.floor(key).fetch_max(state.token, Ordering::SeqCst);
            let vacant = State {
                token: state.token,
                meta: VACANT,
            };
            if slot
                .state
                .compare_exchange(word, vacant.pack(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.recount(key, state, vacant);
                // Only the VACANT winner touches a LIVE key word, so this
                // cannot fail.
                let retired = slot.key.compare_exchange(
                    key_word,
                    KEY_TOMB,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                assert!(retired.is_ok(), "reclaimed key changed under its reclaimer");
                self.live.fetch_sub(1, Ordering::SeqCst);
                stats.reclaimed += 1;
            }
        }
        stats
    }

    /// Reads `key` without changing it: the live lease's token (0 if none),
    /// when it may become grantable, and whether waiters are queued.
    #[must_use]
    pub fn peek(&self, key: LeaseKey, now_ms: u64) -> Peek {
        match self.load_state(key) {
            None => Peek {
                token: 0,
                grantable_at_ms: now_ms,
                waiters: false,
            },
            Some((_, _, state)) => Peek {
                token: if state.live_at(now_ms) {
                    state.token
                } else {
                    0
                },
                grantable_at_ms: state.grantable_at_ms().max(now_ms),
                waiters: state.waiters(),
            },
        }
    }

    /// The log now says this leadership serves `token`'s lease (its first
    /// renewal after a takeover committed): later renewals are answered at
    /// once. Does nothing if the lease changed meanwhile.
    pub fn confirm(&self, key: LeaseKey, token: u64) {
        for _ in 0..RETRY_MAX {
            let Some((index, word, state)) = self.load_state(key) else {
                return;
            };
            if state.token != token || !state.held() || !state.adopted() {
                return;
            }
            let confirmed = State {
                meta: state.meta & !ADOPTED,
                ..state
            };
            if self.slots[index]
                .state
                .compare_exchange(word, confirmed.pack(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        }
        panic!("confirm: no progress after {RETRY_MAX} attempts");
    }

    /// Reads `key`'s lease as it stands, for reconciling the replicated
    /// state with the table: `None` if the key is absent.
    #[must_use]
    pub fn inspect(&self, key: LeaseKey) -> Option<Inspected> {
        let (_, _, state) = self.load_state(key)?;
        Some(Inspected {
            token: state.token,
            held: state.held(),
            expires_at_ms: state.expiry_ms(),
            grantable_at_ms: state.grantable_at_ms(),
            adopted: state.adopted(),
        })
    }

    /// Takeover, step one: ends every lease in the table, keeping each
    /// slot's token history (S1) and its waiter flag. Call when this node
    /// has just become leader, before it serves: what the table held came
    /// from an earlier term of this node, and only the replicated state
    /// (installed next) says which of those leases still stand. Without
    /// replication nothing is installed and the grace period covers the
    /// leases a previous leader granted.
    ///
    /// Returns the number of leases ended.
    pub fn reset(&self, now_ms: u64) -> u64 {
        let mut ended = 0;
        for slot in self.slots.iter() {
            for _ in 0..RETRY_MAX {
                let key_word = slot.key.load(Ordering::SeqCst);
                if key_word & KIND_MASK != KIND_LIVE {
                    break;
                }
                let word = slot.state.load(Ordering::SeqCst);
                let state = State::unpack(word);
                if state.vacant() || !state.held() {
                    break;
                }
                let freed = State {
                    token: state.token,
                    meta: meta(now_ms, 0, false, state.waiters()) | ISSUED,
                };
                if slot
                    .state
                    .compare_exchange(word, freed.pack(), Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.recount(LeaseKey::from_word(key_word), state, freed);
                    ended += 1;
                    break;
                }
            }
        }
        ended
    }

    /// Takeover, step two: makes `key` held by `token` for `holder` until
    /// `expires_at_ms`, whatever the slot held before (the replicated
    /// state decides). The token may be lower than tokens this node issued
    /// in an earlier term that never committed; grants of the new term are
    /// in a higher epoch and still exceed them all (S1).
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        &self,
        key: LeaseKey,
        token: u64,
        holder: u64,
        ttl_ms: u32,
        expires_at_ms: u64,
        lock_delay_ms: u32,
        now_ms: u64,
    ) -> Result<(), TableError> {
        assert!(token != 0, "token 0 is never issued");
        assert!(lock_delay_ms <= LOCK_DELAY_MAX_MS);
        for _ in 0..RETRY_MAX {
            let (index, word) = self.find_or_insert(key, now_ms)?;
            let slot = &self.slots[index];
            let state = State::unpack(word);
            if state.vacant() {
                continue;
            }
            let installed = State {
                token,
                meta: meta(expires_at_ms, lock_delay_ms, true, state.waiters()) | ADOPTED,
            };
            if slot
                .state
                .compare_exchange(word, installed.pack(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                // Never refused: the replicated state decides what is held.
                self.recount(key, state, installed);
                // The holder word only moves forward for grants; an install
                // sets it outright (it may hold an uncommitted later grant).
                slot.holder.store(
                    (u128::from(token) << 64) | u128::from(holder),
                    Ordering::SeqCst,
                );
                Self::record_ttl(slot, token, ttl_ms);
                // The key's floor keeps the highest token ever seen here.
                self.floor(key).fetch_max(state.token, Ordering::SeqCst);
                return Ok(());
            }
        }
        panic!("install: no progress after {RETRY_MAX} attempts");
    }

    /// Debug and test helper: every present key's slot index and last token.
    #[doc(hidden)]
    pub fn present_keys(&self) -> Vec<(LeaseKey, SlotIndex, u64)> {
        let mut out = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let word = slot.key.load(Ordering::SeqCst);
            if word & KIND_MASK == KIND_LIVE {
                let state = State::unpack(slot.state.load(Ordering::SeqCst));
                out.push((
                    LeaseKey::from_word(word),
                    SlotIndex(u32::try_from(index).expect("slot count fits u32")),
                    state.token,
                ));
            }
        }
        out
    }
}

//! Property test: the lock-free table, driven on one thread, behaves like a
//! plain sequential model of leases, and tokens per resource only grow (S1)
//! across expiry, release, reclamation and epoch changes.

use std::collections::HashMap;

use palisade_dataplane::table::{
    AcquireMode, Acquired, Grant, KeyHasher, LeaseKey, LeaseTable, TokenOutcome,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        key: u8,
        holder: u8,
        ttl_ms: u32,
        lock_delay_ms: u32,
        head: bool,
    },
    Renew {
        key: u8,
        which: Which,
        ttl_ms: u32,
    },
    Release {
        key: u8,
        which: Which,
    },
    Check {
        key: u8,
        which: Which,
    },
    Waiters {
        key: u8,
        on: bool,
    },
    Sweep {
        reclaim_after_ms: u64,
    },
    Advance {
        ms: u64,
    },
    NewEpoch,
}

/// Which token a token-carrying request presents.
#[derive(Debug, Clone, Copy)]
enum Which {
    Current,
    Previous,
    Bogus,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..4;
    let which = prop_oneof![
        Just(Which::Current),
        Just(Which::Previous),
        Just(Which::Bogus)
    ];
    prop_oneof![
        4 => (key.clone(), 1u8..4, 1u32..200, prop_oneof![Just(0u32), 1u32..100], any::<bool>())
            .prop_map(|(key, holder, ttl_ms, lock_delay_ms, head)| Op::Acquire { key, holder, ttl_ms, lock_delay_ms, head }),
        2 => (key.clone(), which.clone(), 1u32..200).prop_map(|(key, which, ttl_ms)| Op::Renew { key, which, ttl_ms }),
        2 => (key.clone(), which.clone()).prop_map(|(key, which)| Op::Release { key, which }),
        2 => (key.clone(), which).prop_map(|(key, which)| Op::Check { key, which }),
        1 => (key, any::<bool>()).prop_map(|(key, on)| Op::Waiters { key, on }),
        1 => (0u64..300).prop_map(|reclaim_after_ms| Op::Sweep { reclaim_after_ms }),
        3 => (0u64..150).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::NewEpoch),
    ]
}

#[derive(Debug, Clone, Default)]
struct ModelLease {
    /// (token, holder, expiry, lock delay) of the lease last granted, while
    /// it is held (not released).
    held: Option<(u64, u8, u64, u64)>,
    /// When the key became free (release) or was created.
    free_since_ms: u64,
    waiters: bool,
    previous_token: u64,
    /// The held lease ran out and was counted as an expiration.
    expiry_counted: bool,
}

impl ModelLease {
    /// The live lease of `epoch`: leases of earlier epochs are never
    /// vouched for again.
    fn live(&self, now: u64, epoch: u32) -> Option<(u64, u8, u64, u64)> {
        self.held
            .filter(|&(token, _, expiry, _)| now < expiry && (token >> 32) as u32 == epoch)
    }
    fn idle_since(&self) -> u64 {
        match self.held {
            Some((_, _, expiry, delay)) => expiry + delay,
            None => self.free_since_ms,
        }
    }
}

struct Harness {
    table: LeaseTable,
    keys: Vec<LeaseKey>,
    model: HashMap<u8, ModelLease>,
    /// Highest token ever granted per key: survives reclamation.
    highest: HashMap<u8, u64>,
    now: u64,
    epoch: u32,
}

impl Harness {
    fn token(&self, key: u8, which: Which) -> u64 {
        let lease = self.model.get(&key);
        match which {
            Which::Current => lease.and_then(|l| l.held).map_or(1, |h| h.0),
            Which::Previous => lease.map_or(2, |l| l.previous_token),
            Which::Bogus => u64::MAX - 7,
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Acquire {
                key,
                holder,
                ttl_ms,
                lock_delay_ms,
                head,
            } => {
                let mode = if head {
                    AcquireMode::WaiterHead
                } else {
                    AcquireMode::Fair
                };
                let got = self
                    .table
                    .acquire(
                        self.keys[key as usize],
                        Grant {
                            holder: u64::from(holder),
                            ttl_ms,
                            lock_delay_ms,
                        },
                        now,
                        self.epoch,
                        mode,
                    )
                    .expect("no table errors at this size");
                let lease = self.model.entry(key).or_insert_with(|| ModelLease {
                    free_since_ms: now,
                    ..ModelLease::default()
                });
                let expect_busy = match lease.live(now, self.epoch) {
                    Some((token, h, expiry, _)) if h == holder => {
                        let new_expiry = expiry.max(now + u64::from(ttl_ms));
                        assert_eq!(
                            got,
                            Acquired::Granted {
                                token,
                                expires_at_ms: new_expiry,
                                idempotent: true,
                                took_over_expired: false,
                            }
                        );
                        lease.held = Some((token, holder, new_expiry, u64::from(lock_delay_ms)));
                        return;
                    }
                    Some(_) => true,
                    None => {
                        lease.held.is_some_and(|(_, _, e, d)| now < e + d)
                            || (lease.waiters && !head)
                    }
                };
                match got {
                    Acquired::Busy { token, .. } => {
                        assert!(expect_busy, "table busy, model free: {lease:?} at {now}");
                        assert_eq!(token, lease.live(now, self.epoch).map_or(0, |l| l.0));
                    }
                    Acquired::Granted {
                        token,
                        expires_at_ms,
                        idempotent,
                        took_over_expired,
                    } => {
                        let ran_out = lease.held.is_some_and(|(_, _, expiry, _)| now >= expiry);
                        assert_eq!(
                            took_over_expired,
                            ran_out && !lease.expiry_counted,
                            "each expiration is counted once: {lease:?} at {now}"
                        );
                        lease.expiry_counted = false;
                        assert!(
                            !expect_busy,
                            "table granted, model busy: {lease:?} at {now}"
                        );
                        assert!(!idempotent);
                        assert_eq!(expires_at_ms, now + u64::from(ttl_ms));
                        let highest = self.highest.entry(key).or_insert(0);
                        assert!(token > *highest, "S1: {token:#x} after {highest:#x}");
                        assert_eq!((token >> 32) as u32, self.epoch);
                        *highest = token;
                        if let Some((old, ..)) = lease.held {
                            lease.previous_token = old;
                        }
                        lease.held = Some((token, holder, expires_at_ms, u64::from(lock_delay_ms)));
                    }
                }
            }
            Op::Renew { key, which, ttl_ms } => {
                let token = self.token(key, which);
                let got = self
                    .table
                    .renew(self.keys[key as usize], token, ttl_ms, now, self.epoch);
                let lease = self.model.get_mut(&key);
                match lease.and_then(|l| l.live(now, self.epoch).map(|live| (l, live))) {
                    Some((lease, (current, holder, _, delay))) if current == token => {
                        let expiry = now + u64::from(ttl_ms);
                        assert_eq!(
                            got,
                            TokenOutcome::Current {
                                expires_at_ms: expiry
                            }
                        );
                        lease.held = Some((current, holder, expiry, delay));
                    }
                    _ => assert!(matches!(got, TokenOutcome::Stale { .. }), "{got:?}"),
                }
            }
            Op::Release { key, which } => {
                let token = self.token(key, which);
                let got = self
                    .table
                    .release(self.keys[key as usize], token, now, self.epoch);
                let epoch = self.epoch;
                match self.model.get_mut(&key) {
                    Some(lease)
                        if lease
                            .held
                            .is_some_and(|h| h.0 == token && (token >> 32) as u32 == epoch) =>
                    {
                        assert_eq!(
                            got,
                            TokenOutcome::Released {
                                wake_waiters: lease.waiters
                            }
                        );
                        lease.previous_token = token;
                        lease.held = None;
                        lease.free_since_ms = now;
                        lease.expiry_counted = false;
                    }
                    _ => assert!(matches!(got, TokenOutcome::Stale { .. }), "{got:?}"),
                }
            }
            Op::Check { key, which } => {
                let token = self.token(key, which);
                let got = self
                    .table
                    .check(self.keys[key as usize], token, now, self.epoch);
                let live = self.model.get(&key).and_then(|l| l.live(now, self.epoch));
                match live {
                    Some((current, _, expiry, _)) if current == token => {
                        assert_eq!(
                            got,
                            TokenOutcome::Current {
                                expires_at_ms: expiry
                            }
                        );
                    }
                    _ => match got {
                        TokenOutcome::Stale { current_token, .. } => {
                            assert_eq!(current_token, live.map_or(0, |l| l.0));
                        }
                        other => panic!("expected stale, got {other:?}"),
                    },
                }
            }
            Op::Waiters { key, on } => {
                self.table
                    .set_waiters(self.keys[key as usize], on, now)
                    .expect("room");
                if on || self.model.contains_key(&key) {
                    let lease = self.model.entry(key).or_insert_with(|| ModelLease {
                        free_since_ms: now,
                        ..ModelLease::default()
                    });
                    lease.waiters = on;
                }
            }
            Op::Sweep { reclaim_after_ms } => {
                let stats = self
                    .table
                    .sweep(0..self.table.slot_count(), now, reclaim_after_ms);
                let mut reclaimed = 0;
                let mut held = 0;
                let mut expired = 0;
                for lease in self.model.values_mut() {
                    if lease.held.is_some_and(|(_, _, expiry, _)| now >= expiry)
                        && !lease.expiry_counted
                    {
                        lease.expiry_counted = true;
                        expired += 1;
                    }
                }
                self.model.retain(|_, lease| {
                    // The sweeper counts (and keeps) unexpired leases of any epoch.
                    if lease.held.is_some_and(|(_, _, expiry, _)| now < expiry) {
                        held += 1;
                        return true;
                    }
                    let idle = !lease.waiters && now >= lease.idle_since() + reclaim_after_ms;
                    if idle {
                        reclaimed += 1;
                    }
                    !idle
                });
                assert_eq!(stats.held, held);
                assert_eq!(stats.reclaimed, reclaimed);
                assert_eq!(stats.expired, expired, "expirations counted once, when due");
                assert_eq!(self.table.live_keys(), self.model.len() as u64);
            }
            Op::Advance { ms } => self.now += ms,
            Op::NewEpoch => self.epoch += 1,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_sequential_model(ops in proptest::collection::vec(op(), 1..120), colliding in any::<bool>()) {
        let table = LeaseTable::new(8, KeyHasher::new([5; 16]));
        // Either real fingerprints or four keys forced onto one home slot,
        // so probing, tombstones and slot reuse get exercised.
        let keys: Vec<LeaseKey> = (0..4u32)
            .map(|i| if colliding {
                LeaseKey::from_raw((9u128 << 64) | (u128::from(i + 1) << 2))
            } else {
                table.hasher().key(0, format!("res{i}").as_bytes())
            })
            .collect();
        let mut harness = Harness {
            table,
            keys,
            model: HashMap::new(),
            highest: HashMap::new(),
            now: 1,
            epoch: 1,
        };
        for op in &ops {
            harness.apply(op);
        }
    }
}

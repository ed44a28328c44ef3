//! Property test: the lock-free table, driven on one thread, behaves like a
//! plain sequential model of leases, and tokens per resource only grow (S1)
//! across expiry, release, reclamation and takeovers (a new epoch that ends
//! every lease and installs the replicated ones).

use std::collections::HashMap;

use palisade_dataplane::table::{
    AcquireMode, Acquired, Grant, KeyHasher, LeaseKey, LeaseTable, TokenOutcome, EXPIRY_MARGIN_MS,
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
    /// A new epoch: the table is reset and the held leases of the keys in
    /// `keep` (a bit mask) are installed again, re-armed.
    Takeover {
        keep: u8,
    },
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
        1 => (0u8..16).prop_map(|keep| Op::Takeover { keep }),
    ]
}

#[derive(Debug, Clone, Default)]
struct ModelLease {
    /// The lease last granted, while it is held (not released).
    held: Option<Held>,
    /// When the key became free (release) or was created.
    free_since_ms: u64,
    waiters: bool,
    previous_token: u64,
    /// The held lease ran out and was counted as an expiration.
    expiry_counted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    token: u64,
    holder: u8,
    expiry: u64,
    delay: u64,
    /// The lease's ttl: renewals never extend past it.
    ttl: u32,
    /// Installed at a takeover, not granted since.
    adopted: bool,
}

impl ModelLease {
    /// The unexpired lease, if any. A takeover ended every lease it did
    /// not install again, so the table vouches for all it holds.
    fn live(&self, now: u64) -> Option<Held> {
        self.held.filter(|h| now < h.expiry)
    }
    fn idle_since(&self) -> u64 {
        match self.held {
            Some(h) => h.expiry + h.delay,
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
            Which::Current => lease.and_then(|l| l.held).map_or(1, |h| h.token),
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
                let expect_busy = match lease.live(now) {
                    Some(h) if h.holder == holder => {
                        let new_expiry = h.expiry.max(now + u64::from(ttl_ms) + EXPIRY_MARGIN_MS);
                        let ttl = h.ttl.max(ttl_ms);
                        assert_eq!(
                            got,
                            Acquired::Granted {
                                token: h.token,
                                expires_at_ms: new_expiry,
                                ttl_ms: ttl,
                                idempotent: true,
                                took_over_expired: false,
                            }
                        );
                        lease.held = Some(Held {
                            expiry: new_expiry,
                            delay: u64::from(lock_delay_ms),
                            ttl,
                            adopted: false,
                            ..h
                        });
                        return;
                    }
                    Some(_) => true,
                    None => {
                        lease.held.is_some_and(|h| now < h.expiry + h.delay)
                            || (lease.waiters && !head)
                    }
                };
                match got {
                    Acquired::Busy { token, .. } => {
                        assert!(expect_busy, "table busy, model free: {lease:?} at {now}");
                        assert_eq!(token, lease.live(now).map_or(0, |l| l.token));
                    }
                    Acquired::Granted {
                        token,
                        expires_at_ms,
                        ttl_ms: granted_ttl,
                        idempotent,
                        took_over_expired,
                    } => {
                        assert_eq!(granted_ttl, ttl_ms);
                        let ran_out = lease.held.is_some_and(|h| now >= h.expiry);
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
                        assert_eq!(expires_at_ms, now + u64::from(ttl_ms) + EXPIRY_MARGIN_MS);
                        let highest = self.highest.entry(key).or_insert(0);
                        assert!(token > *highest, "S1: {token:#x} after {highest:#x}");
                        assert_eq!((token >> 32) as u32, self.epoch);
                        *highest = token;
                        if let Some(old) = lease.held {
                            lease.previous_token = old.token;
                        }
                        lease.held = Some(Held {
                            token,
                            holder,
                            expiry: expires_at_ms,
                            delay: u64::from(lock_delay_ms),
                            ttl: ttl_ms,
                            adopted: false,
                        });
                    }
                }
            }
            Op::Renew { key, which, ttl_ms } => {
                let token = self.token(key, which);
                let got = self
                    .table
                    .renew(self.keys[key as usize], token, ttl_ms, now);
                let lease = self.model.get_mut(&key);
                match lease.and_then(|l| l.live(now).map(|live| (l, live))) {
                    Some((lease, live)) if live.token == token => {
                        let applied = ttl_ms.min(live.ttl);
                        let expiry = (now + u64::from(applied) + EXPIRY_MARGIN_MS).max(live.expiry);
                        assert_eq!(
                            got,
                            TokenOutcome::Renewed {
                                expires_at_ms: expiry,
                                ttl_ms: applied,
                                adopted: live.adopted,
                            }
                        );
                        lease.held = Some(Held { expiry, ..live });
                    }
                    _ => assert!(matches!(got, TokenOutcome::Stale { .. }), "{got:?}"),
                }
            }
            Op::Release { key, which } => {
                let token = self.token(key, which);
                let got = self.table.release(self.keys[key as usize], token, now);
                match self.model.get_mut(&key) {
                    Some(lease) if lease.held.is_some_and(|h| h.token == token) => {
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
                let got = self.table.check(self.keys[key as usize], token, now);
                let live = self.model.get(&key).and_then(|l| l.live(now));
                match live {
                    Some(live) if live.token == token => {
                        assert_eq!(
                            got,
                            TokenOutcome::Current {
                                expires_at_ms: live.expiry
                            }
                        );
                    }
                    _ => match got {
                        TokenOutcome::Stale { current_token, .. } => {
                            assert_eq!(current_token, live.map_or(0, |l| l.token));
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
                    if lease.held.is_some_and(|h| now >= h.expiry) && !lease.expiry_counted {
                        lease.expiry_counted = true;
                        expired += 1;
                    }
                }
                self.model.retain(|_, lease| {
                    // The sweeper counts (and keeps) unexpired leases.
                    if lease.held.is_some_and(|h| now < h.expiry) {
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
            Op::Takeover { keep } => {
                self.epoch += 1;
                let ended = self.table.reset(now);
                let held = self.model.values().filter(|l| l.held.is_some()).count();
                assert_eq!(ended, held as u64, "every held lease ends");
                for (&key, lease) in &mut self.model {
                    let Some(h) = lease.held.take() else {
                        continue;
                    };
                    lease.expiry_counted = false;
                    if keep & (1 << key) != 0 {
                        // The replicated state still holds it: re-armed.
                        let expiry = now + 1_000;
                        self.table
                            .install(
                                self.keys[key as usize],
                                h.token,
                                u64::from(h.holder),
                                h.ttl,
                                expiry,
                                h.delay as u32,
                                now,
                            )
                            .expect("room");
                        lease.held = Some(Held {
                            expiry,
                            adopted: true,
                            ..h
                        });
                    } else {
                        lease.previous_token = h.token;
                        lease.free_since_ms = now;
                    }
                }
            }
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
            // The tenant's lease count (its quota's measure) follows every
            // grant, release, sweep and takeover: held and not yet counted
            // as run out.
            let charged = harness
                .model
                .values()
                .filter(|l| l.held.is_some() && !l.expiry_counted)
                .count() as u64;
            prop_assert_eq!(harness.table.tenant_leases(0), charged, "after {:?}", op);
        }
    }
}

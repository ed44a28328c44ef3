//! Unit tests of the table's transitions on one thread.

use super::*;

const EPOCH: u32 = 3;

fn table(capacity: u32) -> LeaseTable {
    LeaseTable::new(capacity, KeyHasher::new([7; 16]))
}

fn grant(holder: u64, ttl_ms: u32) -> Grant {
    Grant {
        holder,
        ttl_ms,
        lock_delay_ms: 0,
    }
}

fn granted(outcome: Result<Acquired, TableError>) -> u64 {
    match outcome {
        Ok(Acquired::Granted { token, .. }) => token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn prefetch_is_only_a_hint() {
    let t = table(16);
    let key = t.hasher().key(0, b"disk0");
    // Before the key is in the table, and after: nothing changes.
    t.prefetch(key);
    assert!(matches!(
        t.check(key, 1, 100),
        TokenOutcome::Stale {
            current_token: 0,
            ..
        }
    ));
    let token = granted(t.acquire(key, grant(1, 1000), 100, EPOCH, AcquireMode::Fair));
    for i in 0..64u32 {
        t.prefetch(t.hasher().key(i % 3, &i.to_le_bytes()));
    }
    assert!(matches!(
        t.check(key, token, 200),
        TokenOutcome::Current { .. }
    ));
}

#[test]
fn acquire_busy_release_reacquire() {
    let t = table(16);
    let key = t.hasher().key(0, b"disk0");
    let first = granted(t.acquire(key, grant(1, 1000), 100, EPOCH, AcquireMode::Fair));
    assert_eq!(first >> 32, u64::from(EPOCH));
    assert_eq!(
        t.acquire(key, grant(2, 1000), 200, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy {
            token: first,
            // Expiry is arrival + ttl + EXPIRY_MARGIN_MS.
            grantable_at_ms: 1101,
            waiters: false
        })
    );
    assert_eq!(
        t.check(key, first, 300),
        TokenOutcome::Current {
            expires_at_ms: 1101
        }
    );
    assert_eq!(
        t.release(key, first, 400),
        TokenOutcome::Released {
            wake_waiters: false
        }
    );
    assert!(matches!(
        t.check(key, first, 401),
        TokenOutcome::Stale {
            current_token: 0,
            ..
        }
    ));
    let second = granted(t.acquire(key, grant(2, 1000), 500, EPOCH, AcquireMode::Fair));
    assert!(second > first, "S1");
    assert!(matches!(
        t.check(key, first, 501),
        TokenOutcome::Stale { current_token, .. } if current_token == second
    ));
}

#[test]
fn same_holder_acquire_is_idempotent() {
    let t = table(16);
    let key = t.hasher().key(0, b"job");
    let first = granted(t.acquire(key, grant(9, 1000), 0, EPOCH, AcquireMode::Fair));
    match t.acquire(key, grant(9, 1000), 500, EPOCH, AcquireMode::Fair) {
        Ok(Acquired::Granted {
            token,
            expires_at_ms,
            ttl_ms,
            idempotent,
            took_over_expired,
        }) => {
            assert!(!took_over_expired);
            assert_eq!(ttl_ms, 1000);
            assert_eq!(token, first);
            assert_eq!(expires_at_ms, 1501);
            assert!(idempotent);
        }
        other => panic!("{other:?}"),
    }
    // After expiry the same holder gets a new, greater token.
    let later = granted(t.acquire(key, grant(9, 1000), 1501, EPOCH, AcquireMode::Fair));
    assert!(later > first);
}

#[test]
fn expiry_is_lazy_and_exact() {
    let t = table(16);
    let key = t.hasher().key(0, b"r");
    let first = granted(t.acquire(key, grant(1, 100), 1000, EPOCH, AcquireMode::Fair));
    // Granted in millisecond 1000, so at some time in [1000, 1001): the
    // lease must outlast 1000.999 + 100. At 1100 it is live; at 1101 it is
    // expired (expiry is exclusive).
    assert!(matches!(
        t.acquire(key, grant(2, 100), 1100, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy { .. })
    ));
    assert!(matches!(
        t.renew(key, first, 100, 1101),
        TokenOutcome::Stale { .. }
    ));
    let second = granted(t.acquire(key, grant(2, 100), 1101, EPOCH, AcquireMode::Fair));
    assert!(second > first);
}

#[test]
fn renew_extends_and_never_revives() {
    let t = table(16);
    let key = t.hasher().key(0, b"r");
    let token = granted(t.acquire(key, grant(1, 300), 0, EPOCH, AcquireMode::Fair));
    assert_eq!(
        t.renew(key, token, 300, 50),
        TokenOutcome::Renewed {
            expires_at_ms: 351,
            ttl_ms: 300,
            adopted: false
        }
    );
    assert!(matches!(
        t.acquire(key, grant(2, 100), 200, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy { .. })
    ));
    assert!(matches!(
        t.renew(key, token + 1, 300, 60),
        TokenOutcome::Stale { .. }
    ));
    assert!(matches!(
        t.renew(key, token, 300, 351),
        TokenOutcome::Stale { .. }
    ));
}

#[test]
fn lock_delay_blocks_after_unreleased_expiry_only() {
    let t = table(16);
    let key = t.hasher().key(0, b"r");
    let with_delay = Grant {
        holder: 1,
        ttl_ms: 100,
        lock_delay_ms: 50,
    };
    let token = granted(t.acquire(key, with_delay, 0, EPOCH, AcquireMode::Fair));
    assert_eq!(
        t.acquire(key, grant(2, 100), 120, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy {
            token: 0,
            grantable_at_ms: 151,
            waiters: false
        })
    );
    let next = granted(t.acquire(key, grant(2, 100), 151, EPOCH, AcquireMode::Fair));
    assert!(next > token);
    // A released lease has no lock delay.
    assert!(matches!(
        t.release(key, next, 160),
        TokenOutcome::Released { .. }
    ));
    granted(t.acquire(key, grant(3, 100), 160, EPOCH, AcquireMode::Fair));
}

#[test]
fn waiters_block_fair_acquires_but_not_the_head() {
    let t = table(16);
    let key = t.hasher().key(0, b"r");
    let token = granted(t.acquire(key, grant(1, 100), 0, EPOCH, AcquireMode::Fair));
    t.set_waiters(key, true, 10).expect("room");
    assert_eq!(
        t.release(key, token, 20),
        TokenOutcome::Released { wake_waiters: true }
    );
    assert!(matches!(
        t.acquire(key, grant(2, 100), 21, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy { waiters: true, .. })
    ));
    let head = granted(t.acquire(key, grant(3, 100), 22, EPOCH, AcquireMode::WaiterHead));
    assert!(head > token);
    t.set_waiters(key, false, 23).expect("present");
    assert_eq!(
        t.release(key, head, 24),
        TokenOutcome::Released {
            wake_waiters: false
        }
    );
}

#[test]
fn tenants_are_separate() {
    let t = table(16);
    let a = t.hasher().key(0, b"disk0");
    let b = t.hasher().key(1, b"disk0");
    let ta = granted(t.acquire(a, grant(1, 100), 0, EPOCH, AcquireMode::Fair));
    // Tenant 1 sees a free resource, not tenant 0's lease.
    let tb = granted(t.acquire(b, grant(2, 100), 0, EPOCH, AcquireMode::Fair));
    // Tenant 1 releasing "its" disk0 never touches tenant 0's lease, even
    // with a token of the same value.
    assert!(matches!(t.release(b, tb, 1), TokenOutcome::Released { .. }));
    assert!(matches!(t.release(b, ta, 2), TokenOutcome::Stale { .. }));
    assert!(matches!(t.check(a, ta, 3), TokenOutcome::Current { .. }));
    assert!(matches!(t.renew(b, ta, 100, 3), TokenOutcome::Stale { .. }));
    assert!(matches!(
        t.check(a, ta, 4),
        TokenOutcome::Current { expires_at_ms: 101 }
    ));
}

#[test]
fn table_full_is_an_error_not_a_panic() {
    let t = table(4);
    for i in 0..4u32 {
        let key = t.hasher().key(0, format!("r{i}").as_bytes());
        granted(t.acquire(key, grant(1, 100), 0, EPOCH, AcquireMode::Fair));
    }
    let key = t.hasher().key(0, b"one-too-many");
    assert_eq!(
        t.acquire(key, grant(1, 100), 0, EPOCH, AcquireMode::Fair),
        Err(TableError::Full)
    );
    // Existing keys still work.
    let key = t.hasher().key(0, b"r0");
    assert!(matches!(
        t.acquire(key, grant(2, 100), 1, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy { .. })
    ));
}

#[test]
fn reclaim_frees_room_and_tokens_keep_growing() {
    let t = table(2);
    let key = t.hasher().key(0, b"a");
    let first = granted(t.acquire(key, grant(1, 100), 0, EPOCH, AcquireMode::Fair));
    assert!(matches!(
        t.release(key, first, 10),
        TokenOutcome::Released { .. }
    ));
    let other = t.hasher().key(0, b"b");
    granted(t.acquire(other, grant(1, 100), 10, EPOCH, AcquireMode::Fair));
    // Too early to reclaim.
    let stats = t.sweep(0..t.slot_count(), 500, 1000);
    assert_eq!(stats.reclaimed, 0);
    assert_eq!(stats.held, 0);
    let stats = t.sweep(0..t.slot_count(), 1010, 1000);
    assert_eq!(
        stats.reclaimed, 1,
        "only the released key is idle long enough"
    );
    assert_eq!(t.live_keys(), 1);
    // The key comes back with a token above everything it had.
    let again = granted(t.acquire(key, grant(2, 100), 1020, EPOCH, AcquireMode::Fair));
    assert!(again > first, "S1 across reclamation");
    assert_eq!(t.live_keys(), 2);
}

#[test]
fn expired_unreleased_keys_are_reclaimed_after_their_delay() {
    let t = table(4);
    let key = t.hasher().key(0, b"a");
    let g = Grant {
        holder: 1,
        ttl_ms: 100,
        lock_delay_ms: 200,
    };
    let first = granted(t.acquire(key, g, 0, EPOCH, AcquireMode::Fair));
    assert_eq!(t.sweep(0..t.slot_count(), 50, 10).held, 1);
    assert_eq!(t.sweep(0..t.slot_count(), 310, 10).reclaimed, 0);
    assert_eq!(t.sweep(0..t.slot_count(), 311, 10).reclaimed, 1);
    let again = granted(t.acquire(key, grant(2, 100), 400, EPOCH, AcquireMode::Fair));
    assert!(again > first);
}

#[test]
fn waiters_pin_a_key_against_reclaim() {
    let t = table(4);
    let key = t.hasher().key(0, b"a");
    t.set_waiters(key, true, 0).expect("room");
    assert_eq!(t.sweep(0..t.slot_count(), 1_000_000, 10).reclaimed, 0);
    t.set_waiters(key, false, 0).expect("present");
    assert_eq!(t.sweep(0..t.slot_count(), 1_000_000, 10).reclaimed, 1);
}

#[test]
fn new_epoch_restarts_sequence_above_old_tokens() {
    let t = table(4);
    let key = t.hasher().key(0, b"a");
    let old = granted(t.acquire(key, grant(1, 10), 0, 1, AcquireMode::Fair));
    let new = granted(t.acquire(key, grant(1, 10), 20, 2, AcquireMode::Fair));
    assert_eq!(new, (2 << 32) | 1);
    assert!(new > old);
}

#[test]
fn exhausted_sequence_is_reported() {
    assert_eq!(
        next_token((5 << 32) | u64::from(u32::MAX), 5),
        Err(TableError::EpochExhausted)
    );
    assert_eq!(
        next_token((5 << 32) | u64::from(u32::MAX), 6),
        Ok((6 << 32) | 1)
    );
    assert_eq!(next_token(6 << 32, 5), Err(TableError::StaleEpoch));
    assert_eq!(next_token(0, 1), Ok((1 << 32) | 1));
}

#[test]
fn colliding_homes_and_tombstones_keep_one_slot_per_key() {
    // Keys with the same home slot, inserted, reclaimed and reinserted in
    // shuffled order: every key stays findable and present exactly once.
    let t = table(8);
    let keys: Vec<LeaseKey> = (1..=6u128)
        .map(|i| LeaseKey::from_raw((5u128 << 64) | (i << 2)))
        .collect();
    let mut now = 0;
    for round in 0..5 {
        for (i, &key) in keys.iter().enumerate() {
            if (i + round) % 2 == 0 {
                let token = granted(t.acquire(key, grant(1, 10), now, EPOCH, AcquireMode::Fair));
                assert!(matches!(
                    t.release(key, token, now),
                    TokenOutcome::Released { .. }
                ));
            }
        }
        now += 100;
        t.sweep(0..t.slot_count(), now, 50);
        let present = t.present_keys();
        let mut seen: Vec<LeaseKey> = present.iter().map(|(k, _, _)| *k).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), present.len(), "a key occupies two slots");
    }
}

#[test]
fn stale_answers_report_only_tokens_issued_to_the_key() {
    let t = table(4);
    let key = t.hasher().key(0, b"a");
    let first = granted(t.acquire(key, grant(1, 10), 0, EPOCH, AcquireMode::Fair));
    assert!(matches!(
        t.release(key, first, 1),
        TokenOutcome::Released { .. }
    ));
    assert_eq!(
        t.check(key, 0, 2),
        TokenOutcome::Stale {
            current_token: 0,
            last_token: first
        }
    );
    assert_eq!(t.sweep(0..t.slot_count(), 100, 10).reclaimed, 1);
    // Re-created (here by a waiter mark): its starting floor is not a token
    // anyone was issued for this key, so it is not reported.
    t.set_waiters(key, true, 100).expect("room");
    assert_eq!(
        t.check(key, 0, 101),
        TokenOutcome::Stale {
            current_token: 0,
            last_token: 0
        }
    );
}

#[test]
fn a_takeover_ends_earlier_leases_and_installs_the_replicated_ones() {
    // This node led in epoch 3, lost leadership, and leads again in
    // epoch 5: another leader may have granted the resource in epoch 4.
    let t = table(8);
    let a = t.hasher().key(0, b"a");
    let b = t.hasher().key(0, b"b");
    let old = granted(t.acquire(a, grant(1, 1000), 0, 3, AcquireMode::Fair));
    let uncommitted = granted(t.acquire(b, grant(2, 1000), 0, 3, AcquireMode::Fair));
    assert_eq!(t.reset(10), 2, "both leases end");
    assert!(matches!(
        t.check(a, old, 10),
        TokenOutcome::Stale {
            current_token: 0,
            ..
        }
    ));
    assert!(matches!(
        t.renew(a, old, 1000, 10),
        TokenOutcome::Stale { .. }
    ));
    assert_eq!(t.reset(11), 0, "nothing left to end");
    // The log says b is held by epoch 4's token (never this node's own
    // uncommitted epoch-3 grant), until a re-armed expiry.
    let logged = (4u64 << 32) | 7;
    t.install(b, logged, 9, 600, 5_000, 250, 20).expect("room");
    assert_eq!(
        t.inspect(b),
        Some(crate::table::Inspected {
            token: logged,
            held: true,
            expires_at_ms: 5_000,
            grantable_at_ms: 5_250,
            adopted: true,
        })
    );
    assert_eq!(
        t.check(b, logged, 30),
        TokenOutcome::Current {
            expires_at_ms: 5_000
        }
    );
    assert!(matches!(
        t.check(b, uncommitted, 30),
        TokenOutcome::Stale { current_token, .. } if current_token == logged
    ));
    // The holder renews with its token: the answer promises at most the
    // logged ttl, the re-armed expiry (which covers what an earlier leader
    // may have answered) stays, and the lease stays adopted until the log
    // says this leadership serves it.
    assert_eq!(
        t.renew(b, logged, 10_000, 40),
        TokenOutcome::Renewed {
            expires_at_ms: 5_000,
            ttl_ms: 600,
            adopted: true
        }
    );
    t.confirm(b, logged);
    assert!(!t.inspect(b).expect("present").adopted);
    assert_eq!(
        t.renew(b, logged, 600, 45),
        TokenOutcome::Renewed {
            expires_at_ms: 5_000,
            ttl_ms: 600,
            adopted: false
        }
    );
    t.confirm(b, uncommitted);
    assert_eq!(
        t.inspect(b).expect("present").token,
        logged,
        "another token: no change"
    );
    // The same holder acquiring again gets its token back (safe retry).
    match t.acquire(b, grant(9, 700), 50, 5, AcquireMode::Fair) {
        Ok(Acquired::Granted {
            token,
            idempotent: true,
            ttl_ms,
            ..
        }) => {
            assert_eq!(token, logged);
            assert_eq!(ttl_ms, 700, "the larger of the two ttls");
        }
        other => panic!("{other:?}"),
    }
    // Anyone else waits for its expiry plus lock delay; then epoch 5's
    // grant exceeds every token the slot ever held (S1).
    assert!(matches!(
        t.acquire(b, grant(3, 1000), 60, 5, AcquireMode::Fair),
        Ok(Acquired::Busy { token, .. }) if token == logged
    ));
    let next = granted(t.acquire(b, grant(3, 1000), 5_000, 5, AcquireMode::Fair));
    assert!(next > uncommitted && next > logged);
    assert_eq!(next >> 32, 5);
    // a, not in the log, is free at once in the new epoch.
    let fresh = granted(t.acquire(a, grant(1, 1000), 12, 5, AcquireMode::Fair));
    assert!(fresh > old);
}

#[test]
fn renewals_never_exceed_the_granted_ttl() {
    let t = table(4);
    let key = t.hasher().key(0, b"r");
    let token = granted(t.acquire(key, grant(1, 1000), 0, EPOCH, AcquireMode::Fair));
    assert_eq!(
        t.renew(key, token, 5_000, 100),
        TokenOutcome::Renewed {
            expires_at_ms: 1_101,
            ttl_ms: 1_000,
            adopted: false
        }
    );
    // A shorter renewal promises its own ttl but never moves the expiry
    // back (an earlier answer may count on it).
    assert_eq!(
        t.renew(key, token, 300, 200),
        TokenOutcome::Renewed {
            expires_at_ms: 1_101,
            ttl_ms: 300,
            adopted: false
        }
    );
    assert_eq!(
        t.renew(key, token, 1_000, 900),
        TokenOutcome::Renewed {
            expires_at_ms: 1_901,
            ttl_ms: 1_000,
            adopted: false
        }
    );
}

#[test]
fn each_expiration_is_counted_once_by_sweep_or_take_over() {
    let t = table(16);
    let swept = t.hasher().key(0, b"swept");
    let taken = t.hasher().key(0, b"taken");
    let released = t.hasher().key(0, b"released");
    let took_over = |outcome: Result<Acquired, TableError>| match outcome {
        Ok(Acquired::Granted {
            took_over_expired, ..
        }) => took_over_expired,
        other => panic!("expected a grant, got {other:?}"),
    };
    let all = 0..t.slot_count();
    assert!(!took_over(t.acquire(
        swept,
        grant(1, 100),
        0,
        EPOCH,
        AcquireMode::Fair
    )));
    assert!(!took_over(t.acquire(
        taken,
        grant(1, 100),
        0,
        EPOCH,
        AcquireMode::Fair
    )));
    let token = granted(t.acquire(released, grant(1, 100), 0, EPOCH, AcquireMode::Fair));
    assert_eq!(t.sweep(all.clone(), 99, 60_000).expired, 0, "not yet due");
    // Released in time: never an expiration.
    t.release(released, token, 50);
    // "taken" runs out and is taken over before any sweep sees it.
    assert!(took_over(t.acquire(
        taken,
        grant(2, 1_000),
        150,
        EPOCH,
        AcquireMode::Fair
    )));
    let stats = t.sweep(all.clone(), 150, 60_000);
    assert_eq!(stats.expired, 1, "only \"swept\"");
    assert_eq!(stats.held, 1);
    assert_eq!(t.sweep(all.clone(), 400, 60_000).expired, 0, "counted once");
    // A grant over the counted lease does not count it again.
    assert!(!took_over(t.acquire(
        swept,
        grant(2, 100),
        500,
        EPOCH,
        AcquireMode::Fair
    )));
    assert_eq!(
        t.sweep(all, 601, 60_000).expired,
        1,
        "the new lease ran out too"
    );
}

#[test]
fn a_tenant_at_its_lease_quota_gets_no_new_grant() {
    let t = LeaseTable::new(16, KeyHasher::new([7; 16])).with_tenant_quota(2, 2);
    let key = |tenant: u32, name: &str| t.hasher().key(tenant, name.as_bytes());
    let acquire = |k: LeaseKey, holder: u64, now: u64| {
        t.acquire(k, grant(holder, 100), now, EPOCH, AcquireMode::Fair)
    };
    let a = granted(acquire(key(0, "a"), 1, 0));
    let b = granted(acquire(key(0, "b"), 1, 0));
    assert_eq!(t.tenant_leases(0), 2);
    assert_eq!(acquire(key(0, "c"), 1, 0), Err(TableError::TenantQuota));
    granted(acquire(key(1, "c"), 1, 0));
    assert_eq!(t.tenant_leases(1), 1, "another tenant has its own count");
    // What a holder already has is never refused: renewals and retries.
    assert!(matches!(
        t.renew(key(0, "a"), a, 100, 50),
        TokenOutcome::Renewed { .. }
    ));
    assert_eq!(
        granted(acquire(key(0, "b"), 1, 60)),
        b,
        "same holder retries"
    );
    assert_eq!(t.tenant_leases(0), 2);
    // A release gives a unit back.
    t.release(key(0, "b"), b, 70);
    let c = granted(acquire(key(0, "c"), 1, 70));
    // A run-out lease taken over before a sweep keeps the count as it is.
    let a2 = granted(acquire(key(0, "a"), 2, 200));
    assert!(a2 > a);
    assert_eq!(t.tenant_leases(0), 2);
    // A sweep gives back what ran out.
    let stats = t.sweep(0..t.slot_count(), 1_000, 60_000);
    assert_eq!(stats.expired, 3);
    assert_eq!(t.tenant_leases(0), 0);
    assert_eq!(t.tenant_leases(1), 0);
    granted(acquire(key(0, "d"), 1, 1_000));
    // A takeover ends every lease and installs the replicated ones, past
    // the quota if the log says so: quotas refuse only new grants.
    assert_eq!(t.reset(1_001), 4, "held, run out or not");
    assert_eq!(t.tenant_leases(0), 0);
    for (name, token) in [("a", a2), ("c", c), ("e", 99)] {
        t.install(key(0, name), token, 1, 100, 2_000, 0, 1_001)
            .expect("room");
    }
    assert_eq!(t.tenant_leases(0), 3);
    assert_eq!(acquire(key(0, "f"), 1, 1_002), Err(TableError::TenantQuota));
    t.release(key(0, "e"), 99, 1_003);
    t.release(key(0, "c"), c, 1_003);
    granted(acquire(key(0, "f"), 1, 1_004));
    assert_eq!(t.tenant_leases(0), 2);
}

#[test]
fn a_lease_outlasts_its_arrival_millisecond_plus_ttl() {
    // Arrival at 1000.9 ms is seen as 1000; the lease must not end before
    // 1100.9, so no grant may happen at 1100.
    let t = table(4);
    let key = t.hasher().key(0, b"r");
    granted(t.acquire(key, grant(1, 100), 1_000, EPOCH, AcquireMode::Fair));
    assert!(matches!(
        t.acquire(key, grant(2, 100), 1_100, EPOCH, AcquireMode::Fair),
        Ok(Acquired::Busy { .. })
    ));
    granted(t.acquire(key, grant(2, 100), 1_101, EPOCH, AcquireMode::Fair));
}

//! loom models of the table's races. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p palisade-dataplane --no-default-features --lib --release table::loom_tests`.
//!
//! Each model builds a tiny table, races operations on real threads under
//! loom's scheduler, and checks the outcome against S1/S2 in every
//! interleaving loom explores.

use super::*;
use loom::sync::Arc;
use loom::thread;

const EPOCH: u32 = 1;

fn table() -> Arc<LeaseTable> {
    Arc::new(LeaseTable::new(2, KeyHasher::new([3; 16])))
}

fn grant(holder: u64) -> Grant {
    Grant {
        holder,
        ttl_ms: 100,
        lock_delay_ms: 0,
    }
}

fn token_of(result: Result<Acquired, TableError>) -> Option<u64> {
    match result.expect("no table error in these models") {
        Acquired::Granted { token, .. } => Some(token),
        Acquired::Busy { .. } => None,
    }
}

fn occurrences(t: &LeaseTable, key: LeaseKey) -> usize {
    t.present_keys()
        .iter()
        .filter(|(k, _, _)| *k == key)
        .count()
}

#[test]
fn two_acquirers_of_a_new_key_exactly_one_wins() {
    loom::model(|| {
        let t = table();
        let key = LeaseKey::from_raw(1 << 64 | 4);
        let a = {
            let t = t.clone();
            thread::spawn(move || token_of(t.acquire(key, grant(1), 10, EPOCH, AcquireMode::Fair)))
        };
        let b = token_of(t.acquire(key, grant(2), 10, EPOCH, AcquireMode::Fair));
        let a = a.join().expect("thread");
        assert!(
            a.is_some() != b.is_some(),
            "S2: exactly one grant, got {a:?} {b:?}"
        );
        assert_eq!(occurrences(&t, key), 1);
    });
}

#[test]
fn release_races_acquire() {
    loom::model(|| {
        let t = table();
        let key = LeaseKey::from_raw(2 << 64 | 8);
        let first = token_of(t.acquire(key, grant(1), 0, EPOCH, AcquireMode::Fair)).expect("free");
        let releaser = {
            let t = t.clone();
            thread::spawn(move || t.release(key, first, 10))
        };
        let second = token_of(t.acquire(key, grant(2), 10, EPOCH, AcquireMode::Fair));
        let released = releaser.join().expect("thread");
        assert!(matches!(released, TokenOutcome::Released { .. }));
        if let Some(second) = second {
            assert!(second > first, "S1");
            assert!(matches!(
                t.check(key, second, 11),
                TokenOutcome::Current { .. }
            ));
        }
        assert!(matches!(
            t.check(key, first, 11),
            TokenOutcome::Stale { .. }
        ));
    });
}

#[test]
fn renew_at_the_deadline_races_takeover() {
    loom::model(|| {
        let t = table();
        let key = LeaseKey::from_raw(3 << 64 | 12);
        let first = token_of(t.acquire(key, grant(1), 0, EPOCH, AcquireMode::Fair)).expect("free");
        let renewer = {
            let t = t.clone();
            // The holder renews just before expiry (100) ...
            thread::spawn(move || t.renew(key, first, 100, 99))
        };
        // ... while another core sees the lease expired.
        let taken = token_of(t.acquire(key, grant(2), 100, EPOCH, AcquireMode::Fair));
        let renewed = renewer.join().expect("thread");
        let renewed = matches!(renewed, TokenOutcome::Renewed { .. });
        assert!(
            !(renewed && taken.is_some()),
            "S2: renewal and takeover both succeeded"
        );
        assert!(renewed || taken.is_some(), "one of them must win");
    });
}

#[test]
fn reclaim_races_acquire_of_the_same_key() {
    loom::model(|| {
        let t = table();
        let key = LeaseKey::from_raw(4 << 64 | 16);
        let first = token_of(t.acquire(key, grant(1), 0, EPOCH, AcquireMode::Fair)).expect("free");
        assert!(matches!(
            t.release(key, first, 0),
            TokenOutcome::Released { .. }
        ));
        let sweeper = {
            let t = t.clone();
            thread::spawn(move || t.sweep(0..t.slot_count(), 100, 10).reclaimed)
        };
        let again = token_of(t.acquire(key, grant(2), 100, EPOCH, AcquireMode::Fair))
            .expect("the key is free whether or not it was reclaimed");
        let _reclaimed = sweeper.join().expect("thread");
        assert!(again > first, "S1 across reclamation");
        assert_eq!(occurrences(&t, key), 1);
        assert!(matches!(
            t.check(key, again, 101),
            TokenOutcome::Current { .. }
        ));
    });
}

#[test]
fn inserts_of_one_key_across_a_fresh_tombstone_stay_unique() {
    // Two keys share a home slot. `old` sits at the home and is reclaimable;
    // while the sweeper turns it into a tombstone, two cores insert `new`.
    // One may claim the tombstone and the other the empty slot behind it:
    // the insert counter must let only one of them commit.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let t = table();
        let old = LeaseKey::from_raw(5 << 64 | 20);
        let new = LeaseKey::from_raw(5 << 64 | 24);
        let first = token_of(t.acquire(old, grant(1), 0, EPOCH, AcquireMode::Fair)).expect("free");
        assert!(matches!(
            t.release(old, first, 0),
            TokenOutcome::Released { .. }
        ));
        let sweeper = {
            let t = t.clone();
            thread::spawn(move || {
                t.sweep(0..t.slot_count(), 100, 10);
            })
        };
        let other = {
            let t = t.clone();
            thread::spawn(move || token_of(t.acquire(new, grant(2), 100, EPOCH, AcquireMode::Fair)))
        };
        let mine = token_of(t.acquire(new, grant(3), 100, EPOCH, AcquireMode::Fair));
        let other = other.join().expect("thread");
        sweeper.join().expect("thread");
        assert!(mine.is_some() != other.is_some(), "S2: exactly one grant");
        assert_eq!(occurrences(&t, new), 1, "one slot per key");
    });
}

#[test]
fn expired_holder_retry_races_new_holder() {
    loom::model(|| {
        let t = table();
        let key = LeaseKey::from_raw(6 << 64 | 28);
        let first = token_of(t.acquire(key, grant(1), 0, EPOCH, AcquireMode::Fair)).expect("free");
        let retry = {
            let t = t.clone();
            thread::spawn(move || token_of(t.acquire(key, grant(1), 200, EPOCH, AcquireMode::Fair)))
        };
        let fresh = token_of(t.acquire(key, grant(2), 200, EPOCH, AcquireMode::Fair));
        let retry = retry.join().expect("thread");
        assert!(retry.is_some() != fresh.is_some(), "S2: exactly one grant");
        let winner = retry.or(fresh).expect("one grant");
        assert!(winner > first, "an expired lease is never handed back");
    });
}

#[test]
fn a_tenant_quota_holds_across_racing_grants() {
    loom::model(|| {
        // Quota 1: two threads grant two different keys of tenant 0 at
        // once; exactly one wins, and the count says one.
        let t = Arc::new(LeaseTable::new(2, KeyHasher::new([3; 16])).with_tenant_quota(1, 1));
        let a_key = LeaseKey::from_raw(7 << 64 | 32);
        let b_key = LeaseKey::from_raw(8 << 64 | 36);
        let a = {
            let t = t.clone();
            thread::spawn(move || t.acquire(a_key, grant(1), 10, EPOCH, AcquireMode::Fair))
        };
        let b = t.acquire(b_key, grant(2), 10, EPOCH, AcquireMode::Fair);
        let a = a.join().expect("thread");
        let granted = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(Acquired::Granted { .. })))
            .count();
        let refused = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Err(TableError::TenantQuota)))
            .count();
        assert_eq!((granted, refused), (1, 1), "{a:?} {b:?}");
        assert_eq!(t.tenant_leases(0), 1);
    });
}

//! Limits that span connections and cores, sans-IO: each tenant's
//! authenticated connections and queued acquires (its leases are counted
//! by the lease table, which sees every grant and every end, including
//! those installed from the replicated log), and failed credential proofs
//! per source address.
//!
//! Everything here is atomics in fixed-size arrays sized at start; nothing
//! allocates or locks on the request path. A quota only ever refuses
//! something new (a handshake, a wait); it never ends a lease or a
//! connection that already exists.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Settings of [`Quotas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Authenticated connections one tenant may have open.
    pub tenant_connections_max: u64,
    /// Queued acquires one tenant may have.
    pub tenant_waiters_max: u64,
    /// Queued acquires one connection may have.
    pub waiters_per_connection_max: u32,
    /// Longest `wait_ms` accepted.
    pub wait_max_ms: u32,
}

impl QuotaConfig {
    /// No limit beyond the node-wide ones.
    pub const UNLIMITED: QuotaConfig = QuotaConfig {
        tenant_connections_max: u64::MAX,
        tenant_waiters_max: u64::MAX,
        waiters_per_connection_max: u32::MAX,
        wait_max_ms: u32::MAX,
    };
}

/// Failed proofs a source may make at once before it is slowed down.
pub const AUTH_FAILURE_BURST: u64 = 10;
/// After the burst, one failed proof per this long is allowed per source.
pub const AUTH_FAILURE_INTERVAL_MS: u64 = 1_000;
/// Buckets of the failure limiter. Sources share a bucket by a keyed hash
/// (random per process), so an attacker cannot pick a victim's bucket; a
/// legitimate source sharing one by chance with an attacker is slowed too
/// (1 in 4096 per attacking source).
const AUTH_BUCKETS: usize = 4096;

/// Per-tenant counters and the per-source failure limiter.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    connections: Box<[AtomicU64]>,
    waiters: Box<[AtomicU64]>,
    /// Per bucket: the GCRA "theoretical arrival time" of the next failure
    /// (monotonic ms); a source is slowed while it lies more than
    /// `AUTH_FAILURE_BURST` intervals ahead of now.
    auth_due_ms: Box<[AtomicU64]>,
    hash_key: RandomState,
}

/// Takes one unit of `count` if it stays within `max`.
fn take(count: &AtomicU64, max: u64) -> bool {
    let mut seen = count.load(Ordering::SeqCst);
    loop {
        if seen >= max {
            return false;
        }
        match count.compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(actual) => seen = actual,
        }
    }
}

/// Gives back `n` units of `count`, never below 0.
fn give(count: &AtomicU64, n: u64) {
    let mut seen = count.load(Ordering::SeqCst);
    loop {
        debug_assert!(seen >= n, "gave back more than was taken");
        match count.compare_exchange(
            seen,
            seen.saturating_sub(n),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => return,
            Err(actual) => seen = actual,
        }
    }
}

impl Quotas {
    /// Counters for `tenants` tenants (indexes `0..tenants`).
    #[must_use]
    pub fn new(tenants: usize, config: QuotaConfig) -> Quotas {
        let counters = || (0..tenants).map(|_| AtomicU64::new(0)).collect();
        Quotas {
            config,
            connections: counters(),
            waiters: counters(),
            auth_due_ms: (0..AUTH_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hash_key: RandomState::new(),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Counts one more authenticated connection of `tenant`; `false` (and
    /// nothing counted) if it has `tenant_connections_max` already.
    pub fn take_connection(&self, tenant: u32) -> bool {
        self.connections
            .get(tenant as usize)
            .is_none_or(|count| take(count, self.config.tenant_connections_max))
    }

    /// An authenticated connection of `tenant` closed.
    pub fn give_connection(&self, tenant: u32) {
        if let Some(count) = self.connections.get(tenant as usize) {
            give(count, 1);
        }
    }

    /// Counts one more queued acquire of `tenant`; `false` (and nothing
    /// counted) if it has `tenant_waiters_max` already.
    pub fn take_waiter(&self, tenant: u32) -> bool {
        self.waiters
            .get(tenant as usize)
            .is_none_or(|count| take(count, self.config.tenant_waiters_max))
    }

    /// `n` queued acquires of `tenant` were answered or dropped.
    pub fn give_waiters(&self, tenant: u32, n: u64) {
        if let Some(count) = self.waiters.get(tenant as usize) {
            give(count, n);
        }
    }

    /// Authenticated connections `tenant` has open.
    #[must_use]
    pub fn tenant_connections(&self, tenant: u32) -> u64 {
        self.connections
            .get(tenant as usize)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Queued acquires `tenant` has.
    #[must_use]
    pub fn tenant_waiters(&self, tenant: u32) -> u64 {
        self.waiters
            .get(tenant as usize)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn auth_bucket(&self, source: IpAddr) -> &AtomicU64 {
        let mut hasher = self.hash_key.build_hasher();
        match source {
            IpAddr::V4(v4) => v4.hash(&mut hasher),
            // One host usually has a whole /64: count it as one source.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.hash(&mut hasher),
                None => (u128::from(v6) >> 64).hash(&mut hasher),
            },
        }
        &self.auth_due_ms[hasher.finish() as usize % AUTH_BUCKETS]
    }

    /// Whether a handshake from `source` must wait: `Some(ms)` to wait
    /// before the next attempt once its failed proofs exceeded the burst.
    #[must_use]
    pub fn auth_refused(&self, source: IpAddr, now_ms: u64) -> Option<u32> {
        let due_ms = self.auth_bucket(source).load(Ordering::SeqCst);
        let allowed_ms = now_ms + AUTH_FAILURE_BURST * AUTH_FAILURE_INTERVAL_MS;
        (due_ms > allowed_ms).then(|| u32::try_from(due_ms - allowed_ms).unwrap_or(u32::MAX))
    }

    /// A credential proof from `source` failed.
    pub fn auth_failed(&self, source: IpAddr, now_ms: u64) {
        let bucket = self.auth_bucket(source);
        let mut seen = bucket.load(Ordering::SeqCst);
        loop {
            // Capped so that a long attack does not lock the source out for
            // longer than one burst after it stops.
            let ceiling = now_ms + (AUTH_FAILURE_BURST + 1) * AUTH_FAILURE_INTERVAL_MS;
            let due = (seen.max(now_ms) + AUTH_FAILURE_INTERVAL_MS).min(ceiling);
            match bucket.compare_exchange(seen, due, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas::new(
            2,
            QuotaConfig {
                tenant_connections_max: 2,
                tenant_waiters_max: 3,
                ..QuotaConfig::UNLIMITED
            },
        )
    }

    #[test]
    fn tenant_counters_stop_at_their_maximum_and_come_back() {
        let q = quotas();
        assert!(q.take_connection(0));
        assert!(q.take_connection(0));
        assert!(!q.take_connection(0), "third connection refused");
        assert!(q.take_connection(1), "another tenant is not affected");
        q.give_connection(0);
        assert!(q.take_connection(0));
        for _ in 0..3 {
            assert!(q.take_waiter(1));
        }
        assert!(!q.take_waiter(1));
        q.give_waiters(1, 3);
        assert_eq!(q.tenant_waiters(1), 0);
        assert!(q.take_waiter(7), "unknown tenants are not counted");
    }

    #[test]
    fn failed_proofs_slow_a_source_after_the_burst() {
        let q = quotas();
        let attacker: IpAddr = "192.0.2.1".parse().expect("ip");
        let now = 1_000_000;
        for _ in 0..=AUTH_FAILURE_BURST {
            assert_eq!(q.auth_refused(attacker, now), None);
            q.auth_failed(attacker, now);
        }
        let wait = q
            .auth_refused(attacker, now)
            .expect("slowed after the burst");
        assert!(wait <= 1_000, "{wait}");
        // One more attempt is allowed per interval.
        assert_eq!(q.auth_refused(attacker, now + u64::from(wait)), None);
        // Hammering does not extend the lock-out beyond one burst.
        for _ in 0..1_000 {
            q.auth_failed(attacker, now);
        }
        assert!(q.auth_refused(attacker, now).expect("slowed") <= 1_000);
        assert_eq!(
            q.auth_refused(attacker, now + 1_000 + AUTH_FAILURE_INTERVAL_MS),
            None
        );
    }
}

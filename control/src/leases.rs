//! Where the replicated lease state meets the data plane's table, sans-IO:
//! installing it at a takeover ([`install`]), and finding the leases whose
//! end only the table saw ([`ended`]: a lease that ran out past its lock
//! delay, or a grant a core released because its connection was gone), so
//! that the leader logs those ends too.
//!
//! The node shell and the deterministic simulation both call these.

use std::collections::HashMap;

use palisade_dataplane::replica::{Command, LeaseName, LeaseState};
use palisade_dataplane::table::{LeaseTable, TableError, LOCK_DELAY_MAX_MS};

use crate::consensus::Takeover;

/// Leases a takeover hashes and prefetches ahead of installing them.
const INSTALL_BATCH: usize = 32;

/// Tenant names to the indexes this node's table keys use.
pub type Tenants = HashMap<String, u32>;

/// What a takeover did to the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Installed {
    /// Leases the table held before (from an earlier term) and ended.
    pub ended: u64,
    /// Replicated leases installed.
    pub installed: u64,
    /// Replicated leases of tenants this node does not know: nobody can
    /// name them here, so they are not installed.
    pub unknown_tenant: u64,
    /// The latest re-armed expiry of a lease installed (monotonic ms; 0 if
    /// none): by then each has run out or its holder renewed it here.
    pub expires_by_ms: u64,
}

/// Resets `table` and installs every lease of `takeover`, re-armed. Call
/// before the new leadership serves (`ControlCore::takeover_installed`);
/// the node calls it on a thread of its own.
///
/// # Errors
///
/// The table has no room for the replicated leases
/// (`leases.table_capacity` is smaller than what the log holds): the node
/// must not serve, since a lease it could not install would look free.
pub fn install(
    table: &LeaseTable,
    tenants: &Tenants,
    takeover: &Takeover,
) -> Result<Installed, TableError> {
    let mut done = Installed {
        ended: table.reset(takeover.at_ms),
        ..Installed::default()
    };
    // In batches: every key of a batch is hashed and its home slot
    // prefetched before the first insert, so the slots' cache misses
    // overlap (the takeover of a large state is mostly those misses, and
    // the new leader serves only once it is done).
    let mut leases = takeover.leases();
    let mut batch = Vec::with_capacity(INSTALL_BATCH);
    let mut keys = Vec::with_capacity(INSTALL_BATCH);
    loop {
        batch.clear();
        batch.extend(leases.by_ref().take(INSTALL_BATCH));
        if batch.is_empty() {
            break;
        }
        keys.clear();
        let mut tenant_seen: Option<(&str, u32)> = None;
        for adopted in &batch {
            // Names come in order, tenant first: most lookups repeat.
            let tenant = match tenant_seen {
                Some((name, index)) if name == adopted.name.tenant => Some(index),
                _ => tenants.get(&adopted.name.tenant).copied(),
            };
            let key = tenant.map(|tenant| {
                tenant_seen = Some((&adopted.name.tenant, tenant));
                let key = table.hasher().key(tenant, adopted.name.resource.as_bytes());
                table.prefetch(key);
                key
            });
            keys.push(key);
        }
        for (adopted, key) in batch.iter().zip(&keys) {
            let Some(key) = *key else {
                done.unknown_tenant += 1;
                continue;
            };
            let record = adopted.record;
            table.install(
                key,
                record.token,
                record.holder,
                record.ttl_ms,
                adopted.expires_at_ms,
                record.lock_delay_ms.min(LOCK_DELAY_MAX_MS),
                takeover.at_ms,
            )?;
            done.installed += 1;
            done.expires_by_ms = done.expires_by_ms.max(adopted.expires_at_ms);
        }
    }
    Ok(done)
}

/// Walks up to `limit` replicated leases after `cursor` and returns an
/// `Expire` for each the table no longer holds: absent, another token,
/// released, or past its expiry and lock delay. Returns the cursor to go on
/// from (`None`: the walk reached the end).
#[must_use]
pub fn ended(
    leases: &LeaseState,
    cursor: Option<&LeaseName>,
    limit: usize,
    table: &LeaseTable,
    tenants: &Tenants,
    now_ms: u64,
) -> (Vec<Command>, Option<LeaseName>) {
    let mut ended = Vec::new();
    let mut seen = 0;
    let mut last = None;
    for (name, record) in leases.range_after(cursor, limit) {
        seen += 1;
        last = Some(name);
        let Some(&tenant) = tenants.get(&name.tenant) else {
            continue;
        };
        let key = table.hasher().key(tenant, name.resource.as_bytes());
        let gone = table.inspect(key).is_none_or(|lease| {
            lease.token != record.token || !lease.held || now_ms >= lease.grantable_at_ms
        });
        if gone {
            ended.push(Command::Expire {
                name: name.clone(),
                token: record.token,
            });
        }
    }
    let next = if seen < limit { None } else { last.cloned() };
    (ended, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Adopted;
    use palisade_dataplane::replica::Record;
    use palisade_dataplane::table::{AcquireMode, Grant, KeyHasher};

    fn name(resource: &str) -> LeaseName {
        LeaseName::new("default", resource)
    }

    fn record(token: u64, lock_delay_ms: u32) -> Record {
        Record {
            token,
            holder: 5,
            ttl_ms: 1_000,
            lock_delay_ms,
            served_term: 3,
        }
    }

    #[test]
    fn a_large_takeover_installs_each_lease_under_its_own_tenant() {
        // Several batches; tenants change inside batches and across them,
        // with an unknown tenant between two known ones.
        let table = LeaseTable::new(1_024, KeyHasher::new([5; 16]));
        let tenants: Tenants = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let mut leases = Vec::new();
        for (tenant, count) in [("a", 45), ("gone", 3), ("a", 2), ("b", 70), ("a", 1)] {
            for i in 0..count {
                let token = 3 << 32 | (leases.len() as u64 + 1);
                leases.push(Adopted {
                    name: LeaseName::new(tenant, format!("r{i}")),
                    record: record(token, 0),
                    expires_at_ms: 2_000,
                });
            }
        }
        let takeover = Takeover::listed(4, 100, leases);
        let done = install(&table, &tenants, &takeover).expect("fits");
        assert_eq!((done.installed, done.unknown_tenant), (118, 3));
        let mut latest: HashMap<(u32, &str), u64> = HashMap::new();
        let adopted = takeover.adopted();
        for adopted in &adopted {
            if let Some(&tenant) = tenants.get(&adopted.name.tenant) {
                latest.insert((tenant, &adopted.name.resource), adopted.record.token);
            }
        }
        for ((tenant, resource), token) in &latest {
            let key = table.hasher().key(*tenant, resource.as_bytes());
            let lease = table.inspect(key).expect("installed");
            assert_eq!(lease.token, *token, "tenant {tenant} {resource}");
            assert!(lease.held);
        }
        // Nothing of tenant b under a's index beyond a's own names.
        let key = table.hasher().key(0, b"r60");
        assert!(table.inspect(key).is_none());
    }

    #[test]
    fn a_takeover_installs_what_the_log_holds_and_the_walk_finds_what_ended() {
        let table = LeaseTable::new(16, KeyHasher::new([3; 16]));
        let tenants: Tenants = [("default".to_string(), 0)].into();
        let stale = table.hasher().key(0, b"stale");
        let grant = Grant {
            holder: 1,
            ttl_ms: 1_000,
            lock_delay_ms: 0,
        };
        // This node's own lease of an earlier term, not in the log.
        table
            .acquire(stale, grant, 0, 2, AcquireMode::Fair)
            .expect("grant");
        let takeover = Takeover::listed(
            4,
            100,
            vec![
                Adopted {
                    name: name("held"),
                    record: record(3 << 32 | 1, 0),
                    expires_at_ms: 2_000,
                },
                Adopted {
                    name: name("delayed"),
                    record: record(3 << 32 | 2, 300),
                    expires_at_ms: 500,
                },
                Adopted {
                    name: LeaseName {
                        tenant: "gone".into(),
                        resource: "x".into(),
                    },
                    record: record(3 << 32 | 3, 0),
                    expires_at_ms: 2_000,
                },
            ],
        );
        assert_eq!(
            install(&table, &tenants, &takeover),
            Ok(Installed {
                ended: 1,
                installed: 2,
                unknown_tenant: 1,
                expires_by_ms: 2_000,
            })
        );
        // What `List` keeps of it: every name, with its record.
        let names = takeover.clone().into_state();
        assert_eq!(names.len(), 3);
        assert_eq!(
            names.get(&name("delayed")).map(|r| r.token),
            Some(3 << 32 | 2)
        );
        let mut state = LeaseState::new();
        for adopted in takeover.adopted() {
            state.apply(
                &Command::Grant {
                    name: adopted.name.clone(),
                    token: adopted.record.token,
                    holder: adopted.record.holder,
                    ttl_ms: adopted.record.ttl_ms,
                    lock_delay_ms: adopted.record.lock_delay_ms,
                },
                3,
            );
        }
        state.apply(
            &Command::Grant {
                name: name("stale"),
                token: 2 << 32 | 1,
                holder: 1,
                ttl_ms: 1_000,
                lock_delay_ms: 0,
            },
            2,
        );
        let expired = |now| {
            let (commands, next) = ended(&state, None, 100, &table, &tenants, now);
            assert_eq!(next, None);
            commands
                .into_iter()
                .map(|c| c.name().resource.clone())
                .collect::<Vec<_>>()
        };
        // "stale" was ended by the reset; the others stand until their
        // expiry plus lock delay; an unknown tenant's lease is left alone.
        assert_eq!(expired(600), vec!["stale"]);
        assert_eq!(expired(800), vec!["delayed", "stale"]);
        assert_eq!(expired(2_000), vec!["delayed", "held", "stale"]);
        // The walk pages, and finds the same.
        let mut cursor = None;
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let (page, next) = ended(&state, cursor.as_ref(), 2, &table, &tenants, 2_000);
            all.extend(page);
            pages += 1;
            cursor = next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(all.len(), 3);
        assert_eq!(pages, 3, "two full pages, then an empty one");
    }
}

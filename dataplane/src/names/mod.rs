//! Lease names for `List`, sans-IO.
//!
//! The lease table stores fingerprints, never names, so each core keeps the
//! names its own connections asked for: every `Acquire` (and a `Renew`
//! whose name the core has not seen, such as a lease a new leader took
//! over) notes `(tenant, resource)` in that core's [`NameIndex`]. A name is
//! only a hint: `List` reports it only if the table holds a live lease for
//! its key at that moment, and a name whose key is not live is dropped once
//! the acquire that noted it can no longer be granted (its wait is over).
//! A background task on each core prunes its index in rolling order
//! ([`NameIndex::prune`]), which keeps it near the number of live leases
//! plus recent acquires; the request path only looks a name up (and
//! inserts it the first time).
//!
//! A new leader's takeover installs leases whose names no core has seen:
//! it keeps their names apart ([`AdoptedNames`]) until each has run out or
//! been renewed, and a listing reads them as one more part.
//!
//! A listing asks every core for one page ([`NameIndex::scan`], bounded
//! work: at most [`scan_budget`] names examined) and merges the pages
//! ([`merge`]) into one answer that is a correct prefix of the tenant's
//! live leases in name order: a name appears on at most one page of a
//! listing walked with the returned cursor, and every lease live for the
//! whole walk appears on one.

use std::collections::BTreeSet;
use std::ops::Bound;

use palisade_proto::{ListedLease, LIST_LIMIT_MAX};

use crate::table::{KeyHasher, LeaseKey};

mod adopted;
mod keep;

pub use adopted::{AdoptedNames, Adoption};
use keep::KeepMap;

/// How long a noted name outlives its acquire's wait when its key is not
/// live: covers a grant that is committed or delivered a little later.
pub const NOTE_GRACE_MS: u64 = 2_000;

/// Most names one core examines for one page: enough for `limit` live
/// leases among some dead names, never the whole index.
#[must_use]
pub fn scan_budget(limit: u32) -> usize {
    let limit = limit.min(LIST_LIMIT_MAX) as usize;
    4 * limit + 64
}

/// What one scan for a page looks for: names under `prefix` that sort
/// after `after`, at most `limit` live leases, examining at most `budget`
/// names (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Names start with this.
    pub prefix: &'a str,
    /// Names sort after this (the cursor of the page before).
    pub after: &'a str,
    /// Live leases at most.
    pub limit: u32,
    /// Names examined at most.
    pub budget: usize,
}

impl<'a> Scan<'a> {
    /// A scan for at most `limit` leases, examining the names
    /// [`scan_budget`] allows for them.
    #[must_use]
    pub fn new(prefix: &'a str, after: &'a str, limit: u32) -> Scan<'a> {
        Scan {
            prefix,
            after,
            limit,
            budget: scan_budget(limit),
        }
    }
}

/// One live lease as the table reports it for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The lease's token.
    pub token: u64,
    /// Time left on the lease.
    pub remaining_ms: u32,
    /// Waiters are queued.
    pub waiters: bool,
}

/// One core's answer to a page request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    /// Live leases found, in name order.
    pub leases: Vec<ListedLease>,
    /// The last name examined when the scan stopped before the end of the
    /// tenant's names under the prefix (limit reached or budget spent):
    /// names after it were not looked at.
    pub stopped_at: Option<String>,
}

/// The names one core has seen, per tenant, in byte order, and how long to
/// keep each by its table key.
#[derive(Debug)]
pub struct NameIndex {
    hasher: KeyHasher,
    tenants: Vec<BTreeSet<String>>,
    /// Keep-until time of each name, by key: all the request path touches
    /// for a name it has seen (one bucket, which [`NameIndex::prefetch`]
    /// can load ahead).
    keep: KeepMap,
    /// Where [`NameIndex::prune`] continues: tenant and last name examined.
    prune_at: (usize, Option<String>),
}

impl NameIndex {
    /// An empty index keying names with the table's `hasher`.
    #[must_use]
    pub fn new(hasher: KeyHasher) -> NameIndex {
        NameIndex {
            hasher,
            tenants: Vec::new(),
            keep: KeepMap::new(),
            prune_at: (0, None),
        }
    }

    /// Names held, all tenants.
    #[must_use]
    pub fn len(&self) -> usize {
        debug_assert_eq!(
            self.keep.len(),
            self.tenants.iter().map(BTreeSet::len).sum::<usize>()
        );
        self.keep.len()
    }

    /// Whether no name is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, tenant: u32, resource: &str) -> LeaseKey {
        self.hasher.key(tenant, resource.as_bytes())
    }

    /// Notes `resource` for `tenant`; keep it at least until `keep_until_ms`
    /// (to the second, rounded up) even if its key is not live.
    pub fn note(&mut self, tenant: u32, resource: &str, keep_until_ms: u64) {
        let key = self.key(tenant, resource);
        self.note_keyed(tenant, resource, key, keep_until_ms);
    }

    /// [`NameIndex::note`] given the name's `key` (the table's key of
    /// `(tenant, resource)`, which the caller already computed).
    pub fn note_keyed(&mut self, tenant: u32, resource: &str, key: LeaseKey, keep_until_ms: u64) {
        debug_assert_eq!(key, self.key(tenant, resource));
        if self.keep.raise(key, keep_until_ms) {
            return;
        }
        self.keep.insert_new(key, keep_until_ms);
        let index = tenant as usize;
        if self.tenants.len() <= index {
            self.tenants.resize_with(index + 1, BTreeSet::new);
        }
        let inserted = self.tenants[index].insert(resource.to_owned());
        debug_assert!(inserted, "a name and its key are noted together");
    }

    /// Whether `resource` is noted for `tenant` (a cheap check before
    /// [`NameIndex::note`] on the renewal path).
    #[must_use]
    pub fn contains(&self, tenant: u32, resource: &str) -> bool {
        self.contains_key(self.key(tenant, resource))
    }

    /// Whether the name whose table key is `key` is noted.
    #[must_use]
    pub fn contains_key(&self, key: LeaseKey) -> bool {
        self.keep.contains_key(key)
    }

    /// Starts loading what [`NameIndex::note_keyed`] and
    /// [`NameIndex::contains_key`] read for `key`: a hint for a request
    /// served shortly (the look-ahead gives it with the table slot's).
    pub fn prefetch(&self, key: LeaseKey) {
        self.keep.prefetch(key);
    }

    /// Whether `name` of `tenant` may go: not kept any more and not live.
    fn expendable(&self, tenant: u32, name: &str, now_ms: u64, live: bool) -> Option<LeaseKey> {
        let key = self.key(tenant, name);
        let keep_until_ms = self.keep.get(key).unwrap_or(0);
        (!live && keep_until_ms < now_ms).then_some(key)
    }

    fn forget(&mut self, tenant: usize, dead: Vec<(String, LeaseKey)>) {
        for (name, key) in dead {
            self.tenants[tenant].remove(&name);
            self.keep.remove(key);
        }
    }

    /// Examines up to `count` names in rolling order (continuing where the
    /// last call stopped, across tenants) and drops those whose key is not
    /// live (`live` returns `None`) and whose keep time passed. Also takes
    /// `count` steps of a growing index's work (moving or writing buckets,
    /// a few each).
    pub fn prune(
        &mut self,
        now_ms: u64,
        count: usize,
        live: &mut dyn FnMut(u32, &str) -> Option<Live>,
    ) {
        // The keep map's growing steps, off the request path.
        self.keep.tidy(count);
        let mut left = count;
        // Each tenant's names at most once per call.
        let mut tenants_left = self.tenants.len() + 1;
        while left > 0 && tenants_left > 0 && !self.tenants.is_empty() {
            let (tenant, after) = std::mem::take(&mut self.prune_at);
            let tenant = tenant.min(self.tenants.len() - 1);
            let tenant_id = u32::try_from(tenant).expect("tenant index fits u32");
            let names = &self.tenants[tenant];
            let range = match &after {
                Some(after) => {
                    names.range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                }
                None => names.range::<str, _>(..),
            };
            let mut dead = Vec::new();
            let mut last = None;
            let mut examined = 0usize;
            for name in range.take(left) {
                examined += 1;
                let is_live = live(tenant_id, name).is_some();
                if let Some(key) = self.expendable(tenant_id, name, now_ms, is_live) {
                    dead.push((name.clone(), key));
                }
                last = Some(name);
            }
            let last = last.cloned();
            self.forget(tenant, dead);
            left -= examined;
            self.prune_at = if left > 0 {
                // This tenant's names are done: the next tenant's from the start.
                tenants_left -= 1;
                ((tenant + 1) % self.tenants.len(), None)
            } else {
                (tenant, last)
            };
        }
    }

    /// One part of a page of `tenant`'s live leases ([`Scan`]); also
    /// returns how many names it examined. Dead names past their keep time
    /// are dropped on the way. A scan cut into pieces continues with
    /// `after` = the piece's `stopped_at`.
    pub fn scan(
        &mut self,
        tenant: u32,
        page: Scan<'_>,
        now_ms: u64,
        live: &mut dyn FnMut(&str) -> Option<Live>,
    ) -> (Part, usize) {
        let start = scan_start(page);
        let Some(names) = self.tenants.get(tenant as usize) else {
            return (Part::default(), 0);
        };
        let mut dead = Vec::new();
        let scanned = scan_names(
            names.range::<str, _>((start, Bound::Unbounded)),
            page,
            live,
            &mut |name| {
                if let Some(key) = self.expendable(tenant, name, now_ms, false) {
                    dead.push((name.clone(), key));
                }
            },
        );
        self.forget(tenant as usize, dead);
        scanned
    }
}

/// Where a scan for `page` starts: after its cursor, or at its prefix
/// (names with the prefix start at the prefix itself).
fn scan_start<'a>(page: Scan<'a>) -> Bound<&'a str> {
    assert!(page.limit >= 1, "a page holds at least one lease");
    assert!(page.budget >= 1, "a scan examines at least one name");
    if page.after < page.prefix {
        Bound::Included(page.prefix)
    } else {
        Bound::Excluded(page.after)
    }
}

/// One part of `page` from `names`, a tenant's names in byte order from
/// [`scan_start`] on: the live ones under the prefix, at most the limit,
/// examining at most the budget; `dead` is told of each name examined and
/// found not live. Also returns how many it examined.
fn scan_names<'a>(
    names: impl Iterator<Item = &'a String>,
    page: Scan<'_>,
    live: &mut dyn FnMut(&str) -> Option<Live>,
    dead: &mut dyn FnMut(&'a String),
) -> (Part, usize) {
    let Scan {
        prefix,
        limit,
        budget,
        ..
    } = page;
    let mut part = Part::default();
    let mut examined = 0usize;
    for name in names {
        if !name.starts_with(prefix) {
            // Sorted by bytes: past the prefix's range.
            break;
        }
        examined += 1;
        match live(name) {
            Some(lease) => part.leases.push(ListedLease {
                resource: name.clone(),
                token: lease.token,
                remaining_ms: lease.remaining_ms,
                waiters: lease.waiters,
            }),
            None => dead(name),
        }
        if part.leases.len() >= limit as usize || examined >= budget {
            part.stopped_at = Some(name.clone());
            break;
        }
    }
    debug_assert!(part.leases.len() <= limit as usize);
    debug_assert!(part
        .leases
        .windows(2)
        .all(|w| w[0].resource < w[1].resource));
    (part, examined)
}

/// Bytes one lease adds to a `Listed` payload at most: its 24-byte element
/// and its name out of line, plus alignment.
#[must_use]
pub fn listed_cost(lease: &ListedLease) -> usize {
    24 + lease.resource.len() + 8
}

/// A merged page: the leases, the cursor to continue from, and whether to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Leases in name order, each name once.
    pub leases: Vec<ListedLease>,
    /// Pass as `after` for the next page (empty when `more` is false).
    pub next_after: String,
    /// Whether more may follow.
    pub more: bool,
}

/// Merges the cores' parts into one page of at most `limit` leases and
/// `bytes_max` bytes of lease entries. The page is exact up to the
/// smallest name a core stopped at: every core has examined every name up
/// to there, so nothing before the cursor is missed.
#[must_use]
pub fn merge(parts: Vec<Part>, limit: u32, bytes_max: usize) -> Page {
    let bound = parts.iter().filter_map(|p| p.stopped_at.clone()).min();
    let mut leases: Vec<ListedLease> = parts.into_iter().flat_map(|p| p.leases).collect();
    leases.sort_by(|a, b| a.resource.cmp(&b.resource).then(b.token.cmp(&a.token)));
    // Several cores may know one name; they read the same table.
    leases.dedup_by(|later, kept| later.resource == kept.resource);
    if let Some(bound) = &bound {
        leases.retain(|l| l.resource <= *bound);
    }
    let mut bytes = 0usize;
    let mut fit = 0usize;
    for lease in &leases {
        let cost = listed_cost(lease);
        if fit >= limit as usize || (fit > 0 && bytes + cost > bytes_max) {
            break;
        }
        bytes += cost;
        fit += 1;
    }
    if fit < leases.len() {
        leases.truncate(fit);
        let next_after = leases.last().expect("at least one fits").resource.clone();
        return Page {
            leases,
            next_after,
            more: true,
        };
    }
    match bound {
        Some(bound) => Page {
            leases,
            next_after: bound,
            more: true,
        },
        None => Page {
            leases,
            next_after: String::new(),
            more: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn index() -> NameIndex {
        NameIndex::new(KeyHasher::new([3; 16]))
    }

    fn live_set(set: &BTreeSet<String>) -> impl FnMut(&str) -> Option<Live> + '_ {
        move |name| {
            set.contains(name).then_some(Live {
                token: 7,
                remaining_ms: 100,
                waiters: false,
            })
        }
    }

    /// Walks a listing over several cores' indexes with the cursor.
    fn walk(
        cores: &mut [NameIndex],
        tenant: u32,
        prefix: &str,
        live: &BTreeSet<String>,
        limit: u32,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = String::new();
        for _ in 0..100_000 {
            let parts = cores
                .iter_mut()
                .map(|core| {
                    core.scan(
                        tenant,
                        Scan::new(prefix, &after, limit),
                        0,
                        &mut live_set(live),
                    )
                    .0
                })
                .collect();
            let page = merge(parts, limit, usize::MAX);
            assert!(page.leases.len() <= limit as usize);
            out.extend(page.leases.into_iter().map(|l| l.resource));
            if !page.more {
                return out;
            }
            assert!(page.next_after > after, "the cursor moves forward");
            after = page.next_after;
        }
        panic!("listing did not end");
    }

    #[test]
    fn a_walk_returns_each_live_name_once_across_cores() {
        let mut cores: Vec<NameIndex> = (0..3).map(|_| index()).collect();
        let mut live = BTreeSet::new();
        for i in 0..2_000u32 {
            let name = format!("r{i:05}");
            // Noted on one or two cores; every third one is dead.
            cores[(i % 3) as usize].note(0, &name, 0);
            if i % 5 == 0 {
                cores[((i + 1) % 3) as usize].note(0, &name, 0);
            }
            if i % 3 != 0 {
                live.insert(name);
            }
        }
        for limit in [1, 7, 100, 1000] {
            let mut fresh: Vec<NameIndex> = (0..3).map(|_| index()).collect();
            for (core, fresh) in cores.iter().zip(fresh.iter_mut()) {
                for names in &core.tenants {
                    for name in names {
                        fresh.note(0, name, u64::MAX);
                    }
                }
            }
            let got = walk(&mut fresh, 0, "", &live, limit);
            let want: Vec<String> = live.iter().cloned().collect();
            assert_eq!(got, want, "limit {limit}");
        }
    }

    #[test]
    fn prefixes_and_tenants_are_kept_apart() {
        let mut core = index();
        let live: BTreeSet<String> = ["a/1", "a/2", "ab", "b/1", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for name in &live {
            core.note(0, name, u64::MAX);
        }
        core.note(1, "a/secret", u64::MAX);
        let mut cores = [core];
        assert_eq!(walk(&mut cores, 0, "a/", &live, 1), ["a/1", "a/2"]);
        assert_eq!(
            walk(&mut cores, 0, "a", &live, 2),
            ["a", "a/1", "a/2", "ab"]
        );
        assert_eq!(walk(&mut cores, 2, "", &live, 2), Vec::<String>::new());
        let secret: BTreeSet<String> = ["a/secret".to_string()].into();
        assert_eq!(walk(&mut cores, 1, "", &secret, 5), ["a/secret"]);
        assert_eq!(walk(&mut cores, 0, "", &secret, 5), Vec::<String>::new());
    }

    #[test]
    fn a_scan_is_bounded_even_among_many_dead_names() {
        let mut core = index();
        for i in 0..10_000 {
            core.note(0, &format!("d{i:05}"), u64::MAX);
        }
        let mut examined = 0;
        let (part, _) = core.scan(0, Scan::new("", "", 10), 0, &mut |_| {
            examined += 1;
            None
        });
        assert_eq!(examined, scan_budget(10));
        assert!(part.leases.is_empty());
        assert!(part.stopped_at.is_some());
        // The merged page is empty but moves the cursor on.
        let page = merge(vec![part], 10, usize::MAX);
        assert!(page.more && !page.next_after.is_empty());
    }

    #[test]
    fn dead_names_are_dropped_once_their_keep_time_passed() {
        let mut core = index();
        // Keep times are kept to the second, rounded up.
        core.note(0, "waiting", 100_000);
        core.note(0, "gone", 1_000);
        core.note(3, "other", 1_000);
        let (part, _) = core.scan(0, Scan::new("", "", 10), 50_000, &mut |_| None);
        assert!(part.leases.is_empty());
        assert!(core.contains(0, "waiting"));
        assert!(!core.contains(0, "gone"));
        core.note(0, "waiting", 100_000);
        core.note(1, "live", 1_000);
        // A small budget continues where the last call stopped.
        for _ in 0..3 {
            core.prune(200_000, 1, &mut |_, name| {
                (name == "live").then_some(Live {
                    token: 1,
                    remaining_ms: 1,
                    waiters: false,
                })
            });
        }
        assert!(!core.contains(0, "waiting"));
        assert!(!core.contains(3, "other"));
        assert!(core.contains(1, "live"), "a live name stays");
        assert_eq!(core.len(), 1);
        // A large budget visits each tenant once and stops.
        core.prune(300_000, 1_000, &mut |_, _| None);
        assert!(core.is_empty(), "{core:?}");
    }

    #[test]
    fn a_page_stops_at_the_byte_bound() {
        let leases: Vec<ListedLease> = (0..10)
            .map(|i| ListedLease {
                resource: format!("{i}").repeat(100),
                token: 1,
                remaining_ms: 1,
                waiters: false,
            })
            .collect();
        let part = Part {
            leases,
            stopped_at: None,
        };
        let page = merge(vec![part], 1000, 3 * 132);
        assert_eq!(page.leases.len(), 3);
        assert!(page.more);
        assert_eq!(page.next_after, "2".repeat(100));
    }
}

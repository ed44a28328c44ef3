//! The names of the leases a new leader took over, for `List`, sans-IO.
//!
//! A takeover installs the replicated leases into the table by key; no
//! core's [`NameIndex`](super::NameIndex) has seen their names (a core
//! notes a name from an `Acquire`, or from a holder's first `Renew` on this
//! leader). Without these names a listing right after a failover or a
//! restart would leave out every lease held across it. The leader keeps the
//! replicated state it installed (a clone: its map shares structure with
//! the live state) as one more source of names, read by the core that
//! gathers a page, as one more part of it.
//!
//! Like the cores' names, these are hints: a name is reported only if the
//! table holds a live lease for its key right then, and a name found not
//! live is forgotten (a later acquire of it is noted by its core). The whole
//! set is forgotten once every lease it names has run out or been renewed
//! here (a renewal notes the name on its core), and when the leadership it
//! was taken over for ends.

use std::ops::Bound;
use std::sync::{Mutex, PoisonError};

use imbl::OrdMap;

use super::{scan_names, scan_start, Live, Part, Scan};
use crate::replica::{LeaseName, LeaseState, Record};

/// The names one leadership took over, while they may name a lease that
/// no core has noted.
#[derive(Debug, Default)]
pub struct AdoptedNames {
    set: Mutex<Option<Adoption>>,
}

/// The names of one takeover.
#[derive(Debug)]
pub struct Adoption {
    /// The leadership it was installed for.
    epoch: u32,
    /// Past this time (monotonic ms) every lease of `names` has run out or
    /// was renewed on this leader.
    until_ms: u64,
    names: OrdMap<LeaseName, Record>,
}

impl Adoption {
    /// Names not yet forgotten.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether every name was forgotten.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl AdoptedNames {
    /// No names.
    #[must_use]
    pub fn new() -> AdoptedNames {
        AdoptedNames::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Adoption>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The names of `state`, which a takeover for `epoch` installed and
    /// whose leases all end (unless renewed) by `until_ms`. Replaces an
    /// earlier takeover's names and returns them: the caller drops them
    /// where a large drop does not hold up requests.
    pub fn adopt(&self, epoch: u32, until_ms: u64, state: LeaseState) -> Option<Adoption> {
        self.lock().replace(Adoption {
            epoch,
            until_ms,
            names: state.into_records(),
        })
    }

    /// Takes the names out if they are no longer needed at `now_ms`: their
    /// leases ended, or every name was forgotten, or `leading` is false
    /// (the leadership they were taken over for ended). For the caller to
    /// drop off the request path.
    pub fn retire(&self, now_ms: u64, leading: bool) -> Option<Adoption> {
        let mut set = self.lock();
        let done = set
            .as_ref()
            .is_some_and(|a| !leading || now_ms >= a.until_ms || a.names.is_empty());
        if done {
            set.take()
        } else {
            None
        }
    }

    /// Names held (0 when none are).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, Adoption::len)
    }

    /// Whether no name is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One part of a page ([`Scan`]) of `tenant`'s live leases, as
    /// [`super::NameIndex::scan`] gives one. Names found not live are
    /// forgotten. `None` if no names are held for the leadership of
    /// `epoch`, or they are past their time.
    pub fn scan(
        &self,
        epoch: u32,
        tenant: &str,
        page: Scan<'_>,
        now_ms: u64,
        live: &mut dyn FnMut(&str) -> Option<Live>,
    ) -> Option<Part> {
        let start = scan_start(page).map(|s| LeaseName::new(tenant, s));
        let mut set = self.lock();
        let adoption = set
            .as_mut()
            .filter(|a| a.epoch == epoch && now_ms < a.until_ms)?;
        // In (tenant, name) order: the tenant's names from the start on.
        let names = adoption
            .names
            .range((start, Bound::Unbounded))
            .map(|(name, _)| name)
            .take_while(|name| name.tenant == tenant)
            .map(|name| &name.resource);
        let mut dead = Vec::new();
        let (part, _) = scan_names(names, page, live, &mut |name| {
            dead.push(LeaseName::new(tenant, name.as_str()));
        });
        for name in &dead {
            adoption.names.remove(name);
        }
        Some(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Command;

    fn names(list: &[(&str, &str, u64)]) -> LeaseState {
        let mut state = LeaseState::new();
        for &(tenant, resource, token) in list {
            let grant = Command::Grant {
                name: LeaseName::new(tenant, resource),
                token,
                holder: 1,
                ttl_ms: 1_000,
                lock_delay_ms: 0,
            };
            state.apply(&grant, 1);
        }
        state
    }

    fn page<'a>(prefix: &'a str, after: &'a str, limit: u32, budget: usize) -> Scan<'a> {
        Scan {
            prefix,
            after,
            limit,
            budget,
        }
    }

    fn live_if<'a>(tokens: &'a [(&'a str, u64)]) -> impl FnMut(&str) -> Option<Live> + 'a {
        move |name| {
            tokens
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, token)| Live {
                    token,
                    remaining_ms: 500,
                    waiters: false,
                })
        }
    }

    fn resources(part: &Part) -> Vec<(&str, u64)> {
        part.leases
            .iter()
            .map(|l| (l.resource.as_str(), l.token))
            .collect()
    }

    #[test]
    fn a_scan_reports_the_tenants_live_names_under_the_prefix_and_forgets_dead_ones() {
        let set = AdoptedNames::new();
        let taken = names(&[
            ("a", "vol/1", 11),
            ("a", "vol/2", 12),
            ("a", "vol/3", 13),
            ("a", "x", 14),
            ("b", "vol/1", 21),
            ("b", "vol/9", 29),
        ]);
        assert!(set.adopt(4, 10_000, taken).is_none());
        assert_eq!(set.len(), 6);
        // vol/2 was released since; the table reads its own tokens.
        let table = [("vol/1", 11), ("vol/3", 30), ("x", 14)];
        let part = set
            .scan(4, "a", page("vol/", "", 10, 100), 0, &mut live_if(&table))
            .expect("held");
        assert_eq!(resources(&part), [("vol/1", 11), ("vol/3", 30)]);
        assert_eq!(part.stopped_at, None, "the prefix's names were all seen");
        assert_eq!(set.len(), 5, "the dead vol/2 is forgotten");
        // Tenant b's names are b's alone (S5): a's table reads nothing there.
        let part = set
            .scan(
                4,
                "b",
                page("", "", 10, 100),
                0,
                &mut live_if(&[("vol/9", 29)]),
            )
            .expect("held");
        assert_eq!(resources(&part), [("vol/9", 29)]);
        assert_eq!(set.len(), 4);
        // A cursor past a name, and a limit.
        let part = set
            .scan(4, "a", page("", "vol/1", 1, 100), 0, &mut live_if(&table))
            .expect("held");
        assert_eq!(resources(&part), [("vol/3", 30)]);
        assert_eq!(part.stopped_at.as_deref(), Some("vol/3"));
    }

    #[test]
    fn a_scan_stops_at_its_budget_and_says_where() {
        let set = AdoptedNames::new();
        let list: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let list: Vec<(&str, &str, u64)> = list.iter().map(|n| ("a", n.as_str(), 1)).collect();
        set.adopt(1, 10_000, names(&list));
        let mut everything_live = |_: &str| {
            Some(Live {
                token: 1,
                remaining_ms: 1,
                waiters: false,
            })
        };
        let part = set
            .scan(1, "a", page("", "", 100, 3), 0, &mut everything_live)
            .expect("held");
        assert_eq!(part.leases.len(), 3);
        assert_eq!(part.stopped_at.as_deref(), Some("n2"));
    }

    #[test]
    fn names_serve_only_their_own_leadership_and_until_their_leases_end() {
        let set = AdoptedNames::new();
        set.adopt(7, 5_000, names(&[("a", "r", 1)]));
        let mut live = live_if(&[("r", 1)]);
        assert!(set
            .scan(8, "a", page("", "", 10, 10), 0, &mut live)
            .is_none());
        assert!(set
            .scan(7, "a", page("", "", 10, 10), 5_000, &mut live)
            .is_none());
        assert!(set
            .scan(7, "a", page("", "", 10, 10), 4_999, &mut live)
            .is_some());
        assert!(set.retire(4_999, true).is_none(), "still needed");
        assert_eq!(set.retire(5_000, true).map(|a| a.len()), Some(1));
        assert!(set.is_empty());
        set.adopt(9, 5_000, names(&[("a", "r", 1)]));
        assert!(set.retire(0, false).is_some(), "the leadership ended");
        set.adopt(9, 5_000, names(&[("a", "r", 1)]));
        set.scan(9, "a", page("", "", 10, 10), 0, &mut live_if(&[]));
        assert!(set.retire(0, true).is_some(), "every name was forgotten");
        let old = set.adopt(10, 5_000, names(&[("a", "r", 1)]));
        assert!(old.is_none());
        let old = set.adopt(11, 6_000, names(&[("a", "s", 2)]));
        assert_eq!(
            old.map(|a| a.epoch),
            Some(10),
            "a later takeover replaces it"
        );
    }
}

//! How long a new leader's takeover takes: the list of replicated leases
//! (`ControlCore::begin_takeover`: a clone of the state that shares its
//! nodes) and their install into the lease table (`leases::install`: the
//! table reset, then each lease re-armed, its key hashed and inserted).
//! The node runs it on a thread of its own and serves once it is done;
//! before, its control thread did, and sent no heartbeat meanwhile.
//!
//! `cargo bench -p palisade-control --bench takeover [-- ROUNDS]`
//!
//! Min and median over the rounds (default 5), in ms, for 65 536 leases
//! with short names (a full default table), with the longest names, and
//! 1 500 000 with short names (the replicated table's cap), each into a
//! table of that capacity; and the table's reset alone.

mod support;

use palisade_control::consensus::Takeover;
use palisade_control::leases::{self, Tenants};
use palisade_dataplane::table::{KeyHasher, LeaseTable};
use palisade_host::clock::monotonic_ns;
use support::{longest, min_median, ms, rounds, short, state, Namer};

fn main() {
    let rounds = rounds();
    let states: [(&str, u64, &Namer); 3] = [
        ("65536 short", 65_536, &short),
        ("65536 longest", 65_536, &longest),
        ("1500000 short", 1_500_000, &short),
    ];
    println!("takeover, ms: min / median of {rounds} rounds");
    for (label, leases, name) in states {
        let state = state(leases, name);
        let tenants: Tenants = [("volumes".to_string(), 0), ("t".repeat(64), 1)]
            .into_iter()
            .collect();
        // A table of exactly that capacity, as `leases.table_capacity`.
        let table = LeaseTable::new(
            u32::try_from(leases).expect("fits"),
            KeyHasher::new([7; 16]),
        );
        let mut listed = Vec::new();
        let mut installed = Vec::new();
        let mut reset = Vec::new();
        for round in 0..rounds {
            let at = monotonic_ns();
            // What `ControlCore::poll_takeover` hands over: the state's
            // clone, walked (and re-armed) by the install.
            let takeover = Takeover::of_state(2 + round as u32, 1_000, state.clone(), 10_000, 500);
            listed.push(ms(at));
            let at = monotonic_ns();
            let done = leases::install(&table, &tenants, &takeover).expect("fits");
            installed.push(ms(at));
            // The reset alone, the first step of every install (this one
            // ends the leases just installed).
            let at = monotonic_ns();
            table.reset(2_000);
            reset.push(ms(at));
            assert_eq!(done.installed, leases);
        }
        let (lmin, lmed) = min_median(listed);
        let (imin, imed) = min_median(installed);
        let (rmin, rmed) = min_median(reset);
        println!(
            "  {label:<14} list {lmin:>7.1} / {lmed:>7.1}   install {imin:>7.1} / {imed:>7.1}   of which reset {rmin:>6.1} / {rmed:>6.1}"
        );
    }
}

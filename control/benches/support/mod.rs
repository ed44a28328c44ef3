//! What the control benches share: replicated lease states of a given
//! size and naming, wall-clock readings, and min / median reporting.

// Each bench uses what it needs.
#![allow(dead_code)]

use palisade_dataplane::replica::{Command, LeaseName, LeaseState};
use palisade_host::clock::monotonic_ns;
use raft::eraftpb::Entry;

/// How the `i`th lease is named.
pub type Namer = dyn Fn(u64) -> LeaseName;

/// A grant of `name` with token `1 << 32 | i`.
pub fn grant(name: LeaseName, i: u64) -> Command {
    Command::Grant {
        name,
        token: 1 << 32 | i,
        holder: i,
        ttl_ms: 30_000,
        lock_delay_ms: 0,
    }
}

/// A state of `leases` leases named by `name`.
pub fn state(leases: u64, name: &Namer) -> LeaseState {
    let mut state = LeaseState::new();
    for i in 0..leases {
        state.apply(&grant(name(i), i), 1);
    }
    state
}

/// Short names, like `volumes/vm-000042`.
pub fn short(i: u64) -> LeaseName {
    LeaseName::new("volumes", format!("vm-{i:06}"))
}

/// The longest names: a 64-byte tenant and a 256-byte resource.
pub fn longest(i: u64) -> LeaseName {
    LeaseName::new("t".repeat(64), format!("{i:0>256}"))
}

/// Milliseconds since `start` (a `monotonic_ns` reading).
pub fn ms(start: u64) -> f64 {
    (monotonic_ns() - start) as f64 / 1e6
}

/// The smallest and the median value.
pub fn min_median(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2])
}

/// Rounds asked for on the command line (the first number), else 5.
pub fn rounds() -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5)
}

/// A raft entry of 256 bytes at `index` (a group-committed entry of a
/// few grants).
pub fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        data: vec![7; 256].into(),
        ..Default::default()
    }
}

//! Counters and their Prometheus text exposition, sans-IO.
//!
//! What it owns: [`CoreStats`], the counters one data-plane core bumps on
//! its own request path (single writer: a plain load and store, never a
//! locked instruction, each core's block on its own cache lines);
//! [`ControlStats`], which the control-plane thread writes (the raft
//! log's sync times among them); and
//! [`render`], which sums the per-core counters into the text a
//! Prometheus server scrapes (`GET /metrics` on the admin port, served by
//! the shell in `server::admin`).
//!
//! What it never does: take a lock, allocate or read the clock on the
//! request path. Rendering allocates, and runs only in the low-priority
//! queue when scraped.
//!
//! ```
//! use palisade_dataplane::metrics::LatencyHistogram;
//! let histogram = LatencyHistogram::default();
//! histogram.record(40_000, 3); // three requests answered in 40 µs
//! let snapshot = histogram.snapshot();
//! assert_eq!(snapshot.count(), 3);
//! assert_eq!(snapshot.sum_ns, 120_000);
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use palisade_proto::Role;

use crate::service::RequestService;

/// Upper bounds of the request latency buckets, in nanoseconds: 5 µs to
/// 2.5 s in 1-2.5-5 steps. Answers slower than the last land in `+Inf`.
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Buckets kept: one per bound, and one above the last.
const BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Adds `n` to a counter only the calling core writes: a load and a store,
/// no locked read-modify-write. Readers on other cores see some recent
/// value, never a torn one.
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Latencies in [`LATENCY_BOUNDS_NS`] buckets: per-bucket counts and the
/// sum, written by one thread only (a core's request latency, or the
/// control thread's raft log syncs).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Requests per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of all recorded latencies, nanoseconds.
    sum_ns: AtomicU64,
}

/// A copy of a histogram's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Requests per bucket (not cumulative), as [`LATENCY_BOUNDS_NS`] plus
    /// one above the last bound.
    pub buckets: [u64; BUCKETS],
    /// Sum of latencies, nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Requests recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_ns += other.sum_ns;
    }
}

impl LatencyHistogram {
    /// Records `n` requests answered in `latency_ns` each. Call only from
    /// the one thread that writes this histogram.
    pub fn record(&self, latency_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < latency_ns);
        bump(&self.buckets[bucket], n);
        bump(&self.sum_ns, latency_ns.saturating_mul(n));
    }

    /// Reads the counters (from any thread).
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Why an acquire was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Another holder has it (or its lock delay, or waiters ahead), at
    /// once or when a wait ran out.
    Busy,
    /// This node does not lead: the client was redirected.
    NotLeader,
    /// Leader, but not granting now: grace period, leadership not
    /// confirmed, epoch change, a contended insert.
    Unavailable,
    /// The lease table had no room.
    TableFull,
    /// Waiter limits (per connection or per node) were reached.
    TooManyWaiters,
    /// The tenant holds `limits.tenant_leases_max` leases.
    TenantLeaseQuota,
    /// The tenant has `limits.tenant_waiters_max` acquires queued.
    TenantWaiterQuota,
}

impl Denial {
    /// Every reason, in exposition order.
    pub const ALL: [Denial; 7] = [
        Denial::Busy,
        Denial::NotLeader,
        Denial::Unavailable,
        Denial::TableFull,
        Denial::TooManyWaiters,
        Denial::TenantLeaseQuota,
        Denial::TenantWaiterQuota,
    ];

    /// The `reason` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Denial::Busy => "busy",
            Denial::NotLeader => "not_leader",
            Denial::Unavailable => "unavailable",
            Denial::TableFull => "table_full",
            Denial::TooManyWaiters => "too_many_waiters",
            Denial::TenantLeaseQuota => "tenant_lease_quota",
            Denial::TenantWaiterQuota => "tenant_waiter_quota",
        }
    }

    /// The reason an error answer to an acquire stands for, if it is a
    /// denial (a bad argument is not).
    #[must_use]
    pub fn of_error(code: palisade_proto::ErrorCode) -> Option<Denial> {
        use palisade_proto::ErrorCode;
        match code {
            ErrorCode::NotLeader => Some(Denial::NotLeader),
            ErrorCode::Unavailable => Some(Denial::Unavailable),
            ErrorCode::TableFull => Some(Denial::TableFull),
            ErrorCode::TooManyWaiters => Some(Denial::TooManyWaiters),
            ErrorCode::TenantLeaseQuota => Some(Denial::TenantLeaseQuota),
            ErrorCode::TenantWaiterQuota => Some(Denial::TenantWaiterQuota),
            _ => None,
        }
    }
}

/// Why the node closed a client connection for one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Refused at accept: the node was at `limits.connections_max`.
    ConnectionsMax,
    /// The oldest unfinished handshake, closed for a newer one
    /// (`limits.unauthenticated_max`).
    Evicted,
    /// No complete handshake within `limits.handshake_timeout`.
    HandshakeTimeout,
    /// A started frame did not complete within `limits.frame_timeout`.
    FrameTimeout,
    /// Authenticated, nothing pending, silent for `limits.idle_timeout`.
    Idle,
    /// A reply could not be written within `limits.write_stall_timeout`.
    WriteStall,
    /// The tenant had `limits.tenant_connections_max` connections.
    TenantConnectionQuota,
    /// Too many failed proofs from the source address.
    SlowDown,
}

impl Closed {
    /// Every reason, in exposition order.
    pub const ALL: [Closed; 8] = [
        Closed::ConnectionsMax,
        Closed::Evicted,
        Closed::HandshakeTimeout,
        Closed::FrameTimeout,
        Closed::Idle,
        Closed::WriteStall,
        Closed::TenantConnectionQuota,
        Closed::SlowDown,
    ];

    /// The `reason` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Closed::ConnectionsMax => "connections_max",
            Closed::Evicted => "evicted",
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::FrameTimeout => "frame_timeout",
            Closed::Idle => "idle",
            Closed::WriteStall => "write_stall",
            Closed::TenantConnectionQuota => "tenant_connection_quota",
            Closed::SlowDown => "slow_down",
        }
    }
}

/// A token-carrying request refused because its token was stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// `Check`: a resource asked whether a token is current; it is not.
    Check,
    /// `Renew` with a token that is not the live lease.
    Renew,
    /// `Release` with a token that is not the held lease.
    Release,
}

impl Fenced {
    /// Every kind, in exposition order.
    pub const ALL: [Fenced; 3] = [Fenced::Check, Fenced::Renew, Fenced::Release];

    /// The `op` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Fenced::Check => "check",
            Fenced::Renew => "renew",
            Fenced::Release => "release",
        }
    }
}

/// Counters one core writes and any thread reads (status, metrics).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CoreStats {
    /// Requests answered.
    pub ops: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
    /// Live leases in this core's sweep partition at its last sweep.
    pub leases_held: AtomicU64,
    /// Waiters queued on this core (as home core).
    pub waiters: AtomicU64,
    /// Leases granted (at once or to a waiter, idempotent re-acquires
    /// included).
    pub grants: AtomicU64,
    /// Acquires not granted, by [`Denial`].
    pub denials: [AtomicU64; Denial::ALL.len()],
    /// Successful renewals.
    pub renewals: AtomicU64,
    /// Successful releases.
    pub releases: AtomicU64,
    /// Stale-token refusals, by [`Fenced`].
    pub fenced: [AtomicU64; Fenced::ALL.len()],
    /// Leases that ran out unreleased (sweep or take-over on this core).
    pub expirations: AtomicU64,
    /// Connections closed for a limit, by [`Closed`].
    pub closed: [AtomicU64; Closed::ALL.len()],
    /// Time from a request's bytes arriving to its answer being written.
    pub latency: LatencyHistogram,
    /// Nanoseconds spent polling for requests instead of sleeping
    /// (`dataplane.busy_poll`).
    pub busy_poll_ns: AtomicU64,
}

impl CoreStats {
    /// Single-writer increment of `ops`.
    pub fn bump_ops(&self, n: u64) {
        bump(&self.ops, n);
    }

    /// Counts one denial.
    pub fn deny(&self, denial: Denial) {
        bump(&self.denials[denial as usize], 1);
    }

    /// Counts one stale-token refusal.
    pub fn fence(&self, fenced: Fenced) {
        bump(&self.fenced[fenced as usize], 1);
    }

    /// Counts one connection closed for a limit.
    pub fn close(&self, closed: Closed) {
        bump(&self.closed[closed as usize], 1);
    }
}

/// What the control plane publishes for metrics; the control thread is
/// the only writer.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Current raft term.
    pub term: AtomicU64,
    /// Raft commit index.
    pub commit_index: AtomicU64,
    /// Leases in this node's replicated lease state (as of its applied
    /// index; 0 without replication).
    pub replicated_leases: AtomicU64,
    /// Snapshots a leader counted lost and sent again.
    pub snapshots_resent: AtomicU64,
    /// Elections this node started (it became a candidate).
    pub elections_started: AtomicU64,
    /// Elections this node won (it became leader).
    pub elections_won: AtomicU64,
    /// Peers with a working connection (both directions counted once).
    pub peers_connected: AtomicU64,
    /// Other members of the cluster.
    pub peers: AtomicU64,
    /// 1 when the node's threads other than the data-plane cores (the
    /// control thread, the peer transport) are pinned to CPUs no core
    /// uses; 0 when they share the cores' CPUs. Set once at start.
    pub control_pinned: AtomicU64,
    /// How long each raft log sync took (writing its batch and the
    /// `fdatasync`), which every replicated grant waits for; the log
    /// records into it from the node's start.
    pub log_sync: Arc<LatencyHistogram>,
}

/// One metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One counter family with a sample per value of one label.
fn labelled<const N: usize>(
    out: &mut String,
    (name, help): (&str, &str),
    label: &str,
    samples: [(&str, u64); N],
) {
    family(out, name, "counter", help);
    for (value, count) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// Seconds, as Prometheus floats, from nanoseconds.
fn seconds(ns: u64) -> String {
    format!("{:?}", ns as f64 / 1e9)
}

/// The Prometheus text exposition (format 0.0.4) of `shared` at `now_ms`:
/// per-core counters summed, the latency histogram per core.
#[must_use]
pub fn render(shared: &RequestService, now_ms: u64) -> String {
    let mut out = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&CoreStats) -> &AtomicU64| -> u64 {
        shared
            .stats
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    };
    let lead = shared.leadership.load();
    let control = &shared.control;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    family(
        &mut out,
        "palisade_build_info",
        "gauge",
        "Always 1; the labels name the version and this node.",
    );
    let _ = writeln!(
        out,
        "palisade_build_info{{version=\"{}\",node_id=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        shared.config.node_id
    );
    single(
        &mut out,
        "palisade_uptime_seconds",
        "gauge",
        "Seconds since this node started.",
        seconds(now_ms.saturating_sub(shared.config.start_ms) * 1_000_000),
    );
    single(
        &mut out,
        "palisade_requests_total",
        "counter",
        "Client requests answered (handshakes and status included).",
        sum(&|s| &s.ops),
    );
    single(
        &mut out,
        "palisade_grants_total",
        "counter",
        "Leases granted, at once or to a waiter.",
        sum(&|s| &s.grants),
    );
    labelled(
        &mut out,
        ("palisade_denials_total", "Acquires not granted, by reason."),
        "reason",
        Denial::ALL.map(|denial| (denial.label(), sum(&|s| &s.denials[denial as usize]))),
    );
    single(
        &mut out,
        "palisade_renewals_total",
        "counter",
        "Leases renewed.",
        sum(&|s| &s.renewals),
    );
    single(
        &mut out,
        "palisade_releases_total",
        "counter",
        "Leases released by their holder.",
        sum(&|s| &s.releases),
    );
    labelled(
        &mut out,
        (
            "palisade_fenced_requests_total",
            "Requests refused because their fencing token was stale, by operation.",
        ),
        "op",
        Fenced::ALL.map(|fenced| (fenced.label(), sum(&|s| &s.fenced[fenced as usize]))),
    );
    single(
        &mut out,
        "palisade_expirations_total",
        "counter",
        "Leases that ran out without being released or renewed.",
        sum(&|s| &s.expirations),
    );
    single(
        &mut out,
        "palisade_core_busy_poll_seconds_total",
        "counter",
        "CPU time the data-plane cores spent polling for requests instead of sleeping (dataplane.busy_poll).",
        seconds(sum(&|s| &s.busy_poll_ns)),
    );
    single(
        &mut out,
        "palisade_leases_held",
        "gauge",
        "Unexpired leases in the table at the last sweep.",
        sum(&|s| &s.leases_held),
    );
    single(
        &mut out,
        "palisade_lease_table_capacity",
        "gauge",
        "Leases the table can hold (leases.table_capacity).",
        shared.table.capacity(),
    );
    single(
        &mut out,
        "palisade_waiters",
        "gauge",
        "Acquires waiting in a queue.",
        sum(&|s| &s.waiters),
    );
    single(
        &mut out,
        "palisade_connections",
        "gauge",
        "Open client connections.",
        sum(&|s| &s.connections),
    );
    labelled(
        &mut out,
        (
            "palisade_connections_closed_total",
            "Client connections the node closed for one of its limits, by reason.",
        ),
        "reason",
        Closed::ALL.map(|closed| (closed.label(), sum(&|s| &s.closed[closed as usize]))),
    );
    single(
        &mut out,
        "palisade_elections_started_total",
        "counter",
        "Elections this node started (it became a candidate).",
        load(&control.elections_started),
    );
    single(
        &mut out,
        "palisade_elections_won_total",
        "counter",
        "Elections this node won (it became leader).",
        load(&control.elections_won),
    );
    single(
        &mut out,
        "palisade_term",
        "gauge",
        "Current raft term; tokens minted by a leader carry it as their epoch.",
        load(&control.term),
    );
    family(
        &mut out,
        "palisade_role",
        "gauge",
        "1 for this node's current role, 0 for the others.",
    );
    for role in [Role::Leader, Role::Follower, Role::Candidate] {
        let _ = writeln!(
            out,
            "palisade_role{{role=\"{}\"}} {}",
            role.as_str(),
            u8::from(lead.role == role)
        );
    }
    single(
        &mut out,
        "palisade_leader_id",
        "gauge",
        "Node id of the leader this node knows of; 0 if none.",
        lead.leader_id,
    );
    let grace_ms = if lead.role == Role::Leader {
        lead.grants_from_ms.saturating_sub(now_ms)
    } else {
        0
    };
    single(
        &mut out,
        "palisade_grace_remaining_seconds",
        "gauge",
        "Seconds until a newly elected leader may grant; 0 when granting or not leading.",
        seconds(grace_ms * 1_000_000),
    );
    single(
        &mut out,
        "palisade_commit_index",
        "gauge",
        "Raft commit index.",
        load(&control.commit_index),
    );
    single(
        &mut out,
        "palisade_replicated_leases",
        "gauge",
        "Leases in this node's replicated lease state, as of its applied raft index (a follower's is the leader's once caught up).",
        load(&control.replicated_leases),
    );
    single(
        &mut out,
        "palisade_snapshots_resent_total",
        "counter",
        "Snapshots this node, leading, counted lost (not taken by a follower in time) and sent again.",
        load(&control.snapshots_resent),
    );
    single(
        &mut out,
        "palisade_peers",
        "gauge",
        "Other members of the cluster.",
        load(&control.peers),
    );
    single(
        &mut out,
        "palisade_peers_connected",
        "gauge",
        "Other members this node has a working connection to.",
        load(&control.peers_connected),
    );
    single(
        &mut out,
        "palisade_control_pinned",
        "gauge",
        "1 when the control plane's threads run on CPUs no data-plane core uses; 0 when they share the cores' CPUs.",
        load(&control.control_pinned),
    );

    family(
        &mut out,
        "palisade_request_duration_seconds",
        "histogram",
        "Time from a request's bytes arriving to its answer being written, per data-plane core (waits for a busy lease excluded).",
    );
    for (core, stats) in shared.stats.iter().enumerate() {
        let snapshot = stats.latency.snapshot();
        histogram_lines(
            &mut out,
            "palisade_request_duration_seconds",
            &format!("core=\"{core}\""),
            &snapshot,
        );
    }
    family(
        &mut out,
        "palisade_log_sync_duration_seconds",
        "histogram",
        "Time of each raft log sync (writing the batch, then fdatasync), which every replicated grant and release waits for.",
    );
    histogram_lines(
        &mut out,
        "palisade_log_sync_duration_seconds",
        "",
        &control.log_sync.snapshot(),
    );
    out
}

/// One histogram's bucket, sum and count lines; `labels` without braces,
/// empty for none.
fn histogram_lines(out: &mut String, name: &str, labels: &str, snapshot: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (bound, count) in LATENCY_BOUNDS_NS.iter().zip(snapshot.buckets) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
            seconds(*bound)
        );
    }
    let count = snapshot.count();
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braced = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braced} {}", seconds(snapshot.sum_ns));
    let _ = writeln!(out, "{name}_count{braced} {count}");
}

/// Sum of every core's latency histogram (status and tests).
#[must_use]
pub fn latency_total(shared: &RequestService) -> HistogramSnapshot {
    let mut total = HistogramSnapshot {
        buckets: [0; BUCKETS],
        sum_ns: 0,
    };
    for stats in &shared.stats {
        total.add(&stats.latency.snapshot());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_bucket_at_or_above_them() {
        let h = LatencyHistogram::default();
        h.record(0, 1);
        h.record(5_000, 1); // on the bound: le="5e-6" includes it
        h.record(5_001, 2);
        h.record(3_000_000_000, 1);
        h.record(u64::MAX, 1);
        h.record(7, 0);
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 2);
        assert_eq!(s.buckets[LATENCY_BOUNDS_NS.len() - 1], 1, "3 s <= 5 s");
        assert_eq!(s.buckets[LATENCY_BOUNDS_NS.len()], 1, "+Inf");
        assert_eq!(s.count(), 6);
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn seconds_are_prometheus_floats() {
        assert_eq!(seconds(5_000), "5e-6");
        assert_eq!(seconds(1_000_000_000), "1.0");
        assert_eq!(seconds(0), "0.0");
        assert_eq!(seconds(2_500_000), "0.0025");
    }
}

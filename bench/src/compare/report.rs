//! What `compare` writes: the data model of a comparison, its JSON, the
//! RESULTS.md tables and targets, and one SVG latency plot per workload.
//!
//! Pure functions of the measured data: no clock, no sockets. Files are
//! written by the caller.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::engine::{RunResult, Workload};
use super::sweep::Step;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p99_9: f64,
    pub(crate) p99_99: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let at = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Percentiles {
            count: h.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            max: h.max() as f64 / 1e3,
        }
    }
}

/// The percentile spectrum of a histogram: (quantile, µs) points from
/// the median to the max, denser towards the tail.
pub(crate) fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1e3))
        .filter(|(q, _)| *q < 1.0)
        .collect();
    points.dedup_by(|b, a| (b.0 - a.0).abs() < 1e-12);
    let top = 1.0 - 1.0 / h.len() as f64;
    points.push((
        top.max(points.last().map_or(0.0, |p| p.0)),
        h.max() as f64 / 1e3,
    ));
    points
}

/// One fixed-rate run as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Measured {
    /// Which rate: "50% of max", "90% of max", "at Palisade's 50%", ...
    pub(crate) label: String,
    /// Offered arrivals per second.
    pub(crate) rate: f64,
    /// Requests answered per second.
    pub(crate) requests_per_s: f64,
    /// Request latency from intended send time.
    pub(crate) requests: Percentiles,
    /// Cycle latency (acquire to release answer).
    pub(crate) cycles: Percentiles,
    pub(crate) granted: u64,
    pub(crate) busy: u64,
    pub(crate) done: u64,
    pub(crate) stale: u64,
    pub(crate) unanswered: u64,
    /// The generator's worst lag behind the schedule.
    pub(crate) send_lag_max_us: f64,
    pub(crate) overloaded: Option<String>,
    /// Request latency spectrum (quantile, µs).
    pub(crate) spectrum: Vec<(f64, f64)>,
}

impl Measured {
    pub(crate) fn of(label: &str, r: &RunResult) -> Measured {
        Measured {
            label: label.to_string(),
            rate: r.offered_rate,
            requests_per_s: r.request_rate(),
            requests: Percentiles::of(&r.requests),
            cycles: Percentiles::of(&r.cycles),
            granted: r.granted,
            busy: r.busy,
            done: r.done,
            stale: r.stale,
            unanswered: r.unanswered,
            send_lag_max_us: r.send_lag_max_ns as f64 / 1e3,
            overloaded: r.overloaded.clone(),
            spectrum: spectrum(&r.requests),
        }
    }
}

/// One system × workload × connection count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Cell {
    pub(crate) system: String,
    pub(crate) workload: Workload,
    pub(crate) connections: usize,
    /// Highest sustained arrival rate, if any.
    pub(crate) max_rate: Option<f64>,
    /// Requests per second answered at that rate.
    pub(crate) max_requests_per_s: Option<f64>,
    pub(crate) sweep: Vec<Step>,
    pub(crate) runs: Vec<Measured>,
    /// Why the cell has no numbers.
    pub(crate) error: Option<String>,
}

/// A system as the report names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SystemInfo {
    pub(crate) name: String,
    /// What ran (version, how it was started), or empty.
    pub(crate) about: String,
    /// Why it did not run, if it did not.
    pub(crate) missing: Option<String>,
}

/// Everything a comparison measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) machine: String,
    /// `/proc/loadavg` before and after the run: the machine is shared.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) method: String,
    pub(crate) p99_bound_us: f64,
    pub(crate) systems: Vec<SystemInfo>,
    pub(crate) cells: Vec<Cell>,
    /// `--rates`: every system at the same rates, in rounds.
    pub(crate) fixed: Vec<super::fixed::FixedRun>,
    /// The disk's fdatasync and a loopback round trip, when a system with
    /// replicated grants ran.
    pub(crate) probes: Option<super::probe::Probes>,
}

impl Report {
    pub(crate) fn cell(
        &self,
        system: &str,
        workload: Workload,
        connections: usize,
    ) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.system == system && c.workload == workload && c.connections == connections)
    }
}

fn run<'a>(cell: Option<&'a Cell>, label: &str) -> Option<&'a Measured> {
    cell?.runs.iter().find(|m| m.label == label)
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn rate(v: f64) -> String {
    let v = v.round() as u64;
    let text = v.to_string();
    let mut out = String::new();
    for (i, ch) in text.chars().enumerate() {
        if i > 0 && (text.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// A target's verdict line.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) measured: Option<f64>,
    /// Written after `measured`: "×" for ratios, " ms" for latencies.
    pub(crate) unit: &'static str,
    pub(crate) needed: String,
    pub(crate) met: Option<bool>,
    pub(crate) detail: String,
}

impl Target {
    /// The measured value with its unit, or "–".
    pub(crate) fn measured_text(&self) -> String {
        self.measured
            .map_or("–".into(), |m| format!("{m:.2}{}", self.unit))
    }
}

/// Whether a cell's sweep never failed: it stopped at the sweep's rate
/// cap, so the system's maximum is at least the reported one.
pub(crate) fn capped(cell: &Cell) -> bool {
    !cell.sweep.is_empty() && cell.sweep.iter().all(|s| s.failed.is_none())
}

/// The highest requests/s any connection count of `system` sustained on
/// `workload`, and whether that cell stopped at the sweep's cap.
fn best(report: &Report, system: &str, workload: Workload) -> Option<(f64, bool)> {
    report
        .cells
        .iter()
        .filter(|c| c.system == system && c.workload == workload)
        .filter_map(|c| c.max_requests_per_s.map(|m| (m, capped(c))))
        .reduce(|a, b| if b.0 > a.0 { b } else { a })
}

fn cap_note(capped: bool) -> &'static str {
    if capped {
        " (the sweep's cap: at least this)"
    } else {
        ""
    }
}

/// Issue 12 ("Leases survive leader failover"): the three-node cluster
/// with `leases.replication = "quorum"` (`palisade-cluster`) against etcd's
/// lease-bound lock, and against the same cluster with `replication =
/// "none"` (`palisade-cluster-none`) on the leader-local operations.
pub(crate) fn replication_targets(report: &Report) -> Vec<Target> {
    const QUORUM: &str = "palisade-cluster";
    const NONE: &str = "palisade-cluster-none";
    let mut out = Vec::new();
    let (ours, etcd) = (
        best(report, QUORUM, Workload::Uncontended),
        best(report, "etcd", Workload::Uncontended),
    );
    let ratio = ours.zip(etcd).map(|(a, b)| a.0 / b.0);
    out.push(Target {
        name: "3-node cluster, quorum: maximum sustainable uncontended throughput (requests/s) vs etcd's lease-bound lock".into(),
        measured: ratio,
        unit: "×",
        needed: "≥ 10×".into(),
        met: ratio.map(|r| r >= 10.0),
        detail: match (ours, etcd) {
            (Some(a), Some(b)) => format!(
                "{}{} vs {}{} requests/s",
                rate(a.0),
                cap_note(a.1),
                rate(b.0),
                cap_note(b.1)
            ),
            (_, None) => "etcd not measured".into(),
            (None, _) => format!("{QUORUM} not measured"),
        },
    });
    let mut connections: Vec<usize> = report
        .cells
        .iter()
        .filter(|c| c.system == QUORUM && c.workload == Workload::Uncontended)
        .map(|c| c.connections)
        .collect();
    connections.sort_unstable();
    connections.dedup();
    for conns in connections {
        let m = run(
            report.cell(QUORUM, Workload::Uncontended, conns),
            "50% of max",
        );
        let p99_ms = m.map(|m| m.requests.p99 / 1e3);
        out.push(Target {
            name: format!(
                "3-node cluster, quorum: uncontended p99 at 50% of its maximum rate ({conns} connection{})",
                plural(conns)
            ),
            measured: p99_ms,
            unit: " ms",
            needed: "≤ 5 ms".into(),
            met: p99_ms.map(|p| p <= 5.0),
            detail: m.map_or("not measured".into(), |m| {
                format!("{} µs at {} arrivals/s", us(m.requests.p99), rate(m.rate))
            }),
        });
    }
    for workload in [Workload::Renew, Workload::Check] {
        let mut connections: Vec<usize> = report
            .cells
            .iter()
            .filter(|c| (c.system == QUORUM || c.system == NONE) && c.workload == workload)
            .map(|c| c.connections)
            .collect();
        connections.sort_unstable();
        connections.dedup();
        for conns in connections {
            let max = |system: &str| {
                report
                    .cell(system, workload, conns)
                    .and_then(|c| c.max_requests_per_s.map(|m| (m, capped(c))))
            };
            let (q, n) = (max(QUORUM), max(NONE));
            let ratio = q.zip(n).map(|(q, n)| q.0 / n.0);
            let both_capped = q.zip(n).is_some_and(|(q, n)| q.1 && n.1);
            out.push(Target {
                name: format!(
                    "3-node cluster: maximum {} throughput (requests/s), quorum vs none ({conns} connection{})",
                    workload.name(),
                    plural(conns)
                ),
                measured: ratio,
                unit: "×",
                needed: "≥ 0.90× (within 10 %)".into(),
                met: ratio.map(|r| r >= 0.9),
                detail: match (q, n) {
                    (Some(q), Some(n)) => format!(
                        "{}{} vs {}{} requests/s{}",
                        rate(q.0),
                        cap_note(q.1),
                        rate(n.0),
                        cap_note(n.1),
                        if both_capped {
                            "; both reached the sweep's cap, raise --max-rate to tell them apart"
                        } else {
                            ""
                        }
                    ),
                    (None, _) => format!("{QUORUM} not measured"),
                    (_, None) => format!("{NONE} not measured"),
                },
            });
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The single node the echo-floor tail targets are about for `workload`:
/// memory-speed grants and releases are `palisade-none`'s (with the
/// default `quorum` each waits for an fsync, which the replication targets
/// cover), so uncontended and contended use it when it was measured;
/// renewals and checks are leader-local in every mode, so the default node.
fn tail_subject(report: &Report, workload: Workload) -> &'static str {
    let none_measured = report
        .cells
        .iter()
        .any(|c| c.system == "palisade-none" && c.workload == workload);
    match workload {
        Workload::Uncontended | Workload::Contended if none_measured => "palisade-none",
        _ => "palisade",
    }
}

/// `system`'s run at 50% of its maximum and the echo floor's at that rate.
fn at_half<'a>(
    report: &'a Report,
    system: &str,
    workload: Workload,
    connections: usize,
) -> Option<(&'a Measured, &'a Measured)> {
    let ours = run(report.cell(system, workload, connections), "50% of max")?;
    let floor = run(
        report.cell("echo", workload, connections),
        &format!("at {system} 50%"),
    )?;
    Some((ours, floor))
}

/// p99 at 50% of `system`'s maximum, one connection, within 1.3× the floor's.
fn p99_target(report: &Report, system: &str, workload: Workload) -> Target {
    let pair = at_half(report, system, workload, 1);
    let ratio = pair.map(|(p, e)| p.requests.p99 / e.requests.p99);
    Target {
        name: format!(
            "{system} {}, 1 connection: p99 vs the echo floor's p99 at the same rate (50% of its maximum)",
            workload.name()
        ),
        measured: ratio,
        unit: "×",
        needed: "≤ 1.3×".into(),
        met: ratio.map(|r| r <= 1.3),
        detail: pair.map_or("not measured".into(), |(p, e)| {
            format!(
                "{} vs {} µs at {} arrivals/s",
                us(p.requests.p99),
                us(e.requests.p99),
                rate(p.rate)
            )
        }),
    }
}

/// p99.9 at 50% of `system`'s maximum within 1.5× the floor's.
fn p99_9_target(report: &Report, system: &str, workload: Workload, connections: usize) -> Target {
    let pair = at_half(report, system, workload, connections);
    let ratio = pair.map(|(p, e)| p.requests.p99_9 / e.requests.p99_9);
    Target {
        name: format!(
            "p99.9 at 50% of {system}'s maximum rate vs the echo floor at that rate ({}, {connections} connection{})",
            workload.name(),
            if connections == 1 { "" } else { "s" }
        ),
        measured: ratio,
        unit: "×",
        needed: "≤ 1.5×".into(),
        met: ratio.map(|r| r <= 1.5),
        detail: pair.map_or("not measured".into(), |(p, e)| {
            format!(
                "{} vs {} µs at {} arrivals/s",
                us(p.requests.p99_9),
                us(e.requests.p99_9),
                rate(p.rate)
            )
        }),
    }
}

/// The issue's targets, computed from the report.
pub(crate) fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let subject = tail_subject(report, Workload::Uncontended);
    out.push(p99_target(report, subject, Workload::Uncontended));
    out.extend(throughput_targets(report));
    for connections in [1, 32] {
        out.push(p99_9_target(
            report,
            subject,
            Workload::Uncontended,
            connections,
        ));
    }
    // Renewals and checks are leader-local in every mode: the same two
    // bounds, when they were measured.
    for workload in [Workload::Renew, Workload::Check] {
        if !report
            .cells
            .iter()
            .any(|c| c.system == "palisade" && c.workload == workload)
        {
            continue;
        }
        out.push(p99_target(report, "palisade", workload));
        for connections in [1, 32] {
            out.push(p99_9_target(report, "palisade", workload, connections));
        }
    }
    out.extend(grant_bound_targets(report));
    out.extend(replication_targets(report));
    out
}

/// What a system keeps of a grant, for the throughput targets' details.
fn durability(system: &str) -> &'static str {
    match system {
        "palisade-none" => "grants in memory",
        "palisade" => "every grant fsynced",
        "redis" => "no persistence",
        "etcd" => "every put fsynced",
        _ => "",
    }
}

/// Issue 6's throughput targets (≥ 3× Redis, ≥ 50× etcd), for each single
/// node measured: `palisade-none` keeps grants in memory like the Redis
/// the bench runs, `palisade` (the default `quorum`) fsyncs each like
/// etcd, and neither pairing alone says what a reader asks, so both are
/// reported and each names its system.
fn throughput_targets(report: &Report) -> Vec<Target> {
    let best = |system: &str| {
        report
            .cells
            .iter()
            .filter(|c| c.system == system && c.workload == Workload::Uncontended)
            .filter_map(|c| c.max_requests_per_s)
            .reduce(f64::max)
    };
    let measured = |system: &str| {
        report
            .cells
            .iter()
            .any(|c| c.system == system && c.workload == Workload::Uncontended)
    };
    let mut ours: Vec<&str> = ["palisade-none", "palisade"]
        .into_iter()
        .filter(|s| measured(s))
        .collect();
    if ours.is_empty() {
        ours.push("palisade");
    }
    let mut out = Vec::new();
    for (peer, needed) in [("redis", 3.0), ("etcd", 50.0)] {
        for &system in &ours {
            let (a, b) = (best(system), best(peer));
            let ratio = a.zip(b).map(|(a, b)| a / b);
            out.push(Target {
                name: format!(
                    "maximum sustainable throughput (uncontended, requests/s): {system} vs {peer}"
                ),
                measured: ratio,
                unit: "×",
                needed: format!("≥ {needed}×"),
                met: ratio.map(|r| r >= needed),
                detail: match (a, b) {
                    (Some(a), Some(b)) => format!(
                        "{} ({}) vs {} ({}) requests/s",
                        rate(a),
                        durability(system),
                        rate(b),
                        durability(peer)
                    ),
                    (_, None) => format!("{peer} not measured"),
                    (None, _) => format!("{system} not measured"),
                },
            });
        }
    }
    out
}

/// Issue 17's target for replicated grants: with `quorum` an acquire and
/// its release each wait for a durable log write (and, in a cluster, a
/// follower's append), so their p99 at 50% of the maximum is held to twice
/// the machine's own fdatasync p99 plus one round trip, probed in the run.
fn grant_bound_targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for system in ["palisade", "palisade-cluster"] {
        let mut connections: Vec<usize> = report
            .cells
            .iter()
            .filter(|c| c.system == system && c.workload == Workload::Uncontended)
            .map(|c| c.connections)
            .collect();
        connections.sort_unstable();
        connections.dedup();
        for conns in connections {
            let m = run(
                report.cell(system, Workload::Uncontended, conns),
                "50% of max",
            );
            let bound = report
                .probes
                .as_ref()
                .map(super::probe::Probes::grant_bound_us);
            let ratio = m.zip(bound).map(|(m, b)| m.requests.p99 / b);
            out.push(Target {
                name: format!(
                    "{system} (quorum): uncontended p99 at 50% of its maximum vs 2 × (fdatasync p99 + one round trip) ({conns} connection{})",
                    plural(conns)
                ),
                measured: ratio,
                unit: "×",
                needed: "≤ 1×".into(),
                met: ratio.map(|r| r <= 1.0),
                detail: match (m, report.probes.as_ref()) {
                    (Some(m), Some(p)) => format!(
                        "{} µs at {} arrivals/s; bound {} µs = 2 × ({} + {})",
                        us(m.requests.p99),
                        rate(m.rate),
                        us(p.grant_bound_us()),
                        us(p.fdatasync.p99),
                        us(p.round_trip.p99)
                    ),
                    (None, _) => "not measured".into(),
                    (_, None) => "no probe ran".into(),
                },
            });
        }
    }
    out
}

/// RESULTS.md.
pub(crate) fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Tail latency: Palisade, Redis, etcd, ZooKeeper and the echo floor\n"
    );
    let _ = writeln!(md, "Command: `{}`  ", report.command);
    let _ = writeln!(md, "Date: {}  ", report.date);
    let _ = writeln!(md, "Machine: {}  ", report.machine);
    let _ = writeln!(
        md,
        "Load average (1, 5, 15 min, runnable/total, last pid) before: {}; after: {}\n",
        report.load_before, report.load_after
    );
    let _ = writeln!(md, "## Method\n\n{}\n", report.method);
    let _ = writeln!(md, "## Systems\n");
    let _ = writeln!(md, "| system | what ran |\n|---|---|");
    for s in &report.systems {
        let what = match &s.missing {
            Some(why) => format!("**not measured:** {why}"),
            None => s.about.clone(),
        };
        let _ = writeln!(md, "| {} | {} |", s.name, what);
    }
    if let Some(p) = &report.probes {
        let _ = writeln!(
            md,
            "\n## Probes\n\nMeasured in this run, the yardstick of replicated grants (µs):\n\n\
             | probe | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|"
        );
        for (name, q) in [
            (
                format!(
                    "4 KiB write + fdatasync, {} syncs in {}",
                    p.fdatasync.count, p.fsync_dir
                ),
                &p.fdatasync,
            ),
            (
                format!(
                    "loopback TCP round trip, 64 bytes, {} trips, both ends on the servers' CPU",
                    p.round_trip.count
                ),
                &p.round_trip,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} |",
                us(q.p50),
                us(q.p90),
                us(q.p99),
                us(q.p99_9),
                us(q.max)
            );
        }
    }
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(
        md,
        "| target | needed | measured | met | detail |\n|---|---|---|---|---|"
    );
    for t in targets(report) {
        let measured = t.measured_text();
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            t.name, t.needed, measured, met, t.detail
        );
    }
    for workload in Workload::ALL {
        let mut connections: Vec<usize> = report
            .cells
            .iter()
            .filter(|c| c.workload == workload)
            .map(|c| c.connections)
            .collect();
        connections.sort_unstable();
        connections.dedup();
        for conns in connections {
            let _ = writeln!(
                md,
                "\n## {}, {} connection{}\n",
                workload.name(),
                conns,
                if conns == 1 { "" } else { "s" }
            );
            let _ = writeln!(md, "![latency spectrum]({})\n", plot_name(workload, conns));
            let _ = writeln!(
                md,
                "| system | max sustained (arrivals/s) | requests/s there | at | arrivals/s | p50 µs | p90 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | generator lag max µs |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
            for cell in report
                .cells
                .iter()
                .filter(|c| c.workload == workload && c.connections == conns)
            {
                if let Some(why) = &cell.error {
                    let _ = writeln!(
                        md,
                        "| {} | failed: {} | | | | | | | | | | |",
                        cell.system, why
                    );
                    if cell.runs.is_empty() {
                        continue;
                    }
                }
                // Never failed: the sweep stopped at its rate cap, so the
                // system's maximum is at least this.
                let max = cell.max_rate.map_or("none within the bound".into(), |m| {
                    if capped(cell) {
                        format!("≥ {} (the sweep's cap)", rate(m))
                    } else {
                        rate(m)
                    }
                });
                let reqs = cell.max_requests_per_s.map_or("–".into(), rate);
                for (i, m) in cell.runs.iter().enumerate() {
                    let (name, max, reqs) = if i == 0 {
                        (cell.system.as_str(), max.as_str(), reqs.as_str())
                    } else {
                        ("", "", "")
                    };
                    let r = &m.requests;
                    let flag = if m.unanswered > 0 || m.overloaded.is_some() {
                        " (not sustained)"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        md,
                        "| {name} | {max} | {reqs} | {}{flag} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        m.label,
                        rate(m.rate),
                        us(r.p50),
                        us(r.p90),
                        us(r.p99),
                        us(r.p99_9),
                        us(r.p99_99),
                        us(r.max),
                        us(m.send_lag_max_us)
                    );
                }
                if cell.runs.is_empty() {
                    let _ = writeln!(md, "| {} | {max} | {reqs} | | | | | | | | | |", cell.system);
                }
            }
        }
    }
    md.push_str(&super::fixed::markdown(&report.fixed));
    md
}

/// File name of a workload's plot.
pub(crate) fn plot_name(workload: Workload, connections: usize) -> String {
    format!("latency-{}-{}conn.svg", workload.name(), connections)
}

const COLORS: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

/// The percentile spectrum plot of one workload: x is the percentile on
/// a log axis of 1/(1-q) (50% … 99.999%), y is latency on a log axis.
/// One curve per system, each at 50% of its own maximum rate, plus the
/// echo floor at Palisade's 50% rate.
pub(crate) fn svg(report: &Report, workload: Workload, connections: usize) -> String {
    let mut curves: Vec<(String, &[(f64, f64)])> = Vec::new();
    for cell in report
        .cells
        .iter()
        .filter(|c| c.workload == workload && c.connections == connections)
    {
        for m in &cell.runs {
            let at_node = m
                .label
                .strip_prefix("at ")
                .and_then(|l| l.strip_suffix(" 50%"));
            if m.label == "50% of max" {
                let name = format!("{} @ {} /s", cell.system, rate(m.rate));
                curves.push((name, &m.spectrum));
            } else if let Some(node) = at_node {
                let name = format!("{} @ {} /s ({node}'s rate)", cell.system, rate(m.rate));
                curves.push((name, &m.spectrum));
            }
        }
    }
    let (w, h, left, right, top, bottom) = (900.0, 560.0, 80.0, 260.0, 40.0, 60.0);
    let has_data = curves
        .iter()
        .any(|(_, pts)| pts.iter().any(|p| p.1.is_finite() && p.1 > 0.0));
    if !has_data {
        return format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"120\" font-family=\"sans-serif\" font-size=\"14\">\
             <rect width=\"{w}\" height=\"120\" fill=\"white\"/><text x=\"20\" y=\"60\">{} — {connections} connection(s): no system was measured at a sustained rate</text></svg>\n",
            workload.name()
        );
    }
    let x_of = |q: f64| (1.0 / (1.0 - q).max(1e-6)).log10();
    let (x_min, x_max) = (x_of(0.5), 5.0);
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (y_min, y_max) = (lo.log10().floor(), hi.log10().ceil());
    let px = |x: f64| left + (x - x_min) / (x_max - x_min) * (w - left - right);
    let py = |y: f64| h - bottom - (y.log10() - y_min) / (y_max - y_min) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15">{} — {} connection{}: request latency by percentile</text>"#,
        left,
        workload.name(),
        connections,
        if connections == 1 { "" } else { "s" }
    );
    for (q, label) in [
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
    ] {
        let x = px(x_of(q));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            h - bottom,
            h - bottom + 18.0
        );
    }
    let mut decade = y_min;
    while decade <= y_max {
        let v = 10f64.powf(decade);
        let y = py(v);
        let label = if v >= 1000.0 {
            format!("{} ms", v / 1000.0)
        } else {
            format!("{v} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">percentile (log scale of 1/(1−p))</text>"#,
        left + (w - left - right) / 2.0,
        h - 14.0
    );
    for (i, (name, points)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|(q, v)| *q >= 0.5 && *v > 0.0)
            .map(|(q, v)| format!("{:.1},{:.1}", px(x_of(*q).min(x_max)), py(v.max(lo))))
            .collect();
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{name}</title></polyline>"#,
            path.join(" ")
        );
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = w - right + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn histogram(values_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in values_us {
            h.record(v * 1000).unwrap();
        }
        h
    }

    /// A run at `rate` whose requests took `values_us` (other tests'
    /// runs too).
    pub(crate) fn measured(label: &str, rate: f64, values_us: &[u64]) -> Measured {
        let h = histogram(values_us);
        Measured {
            label: label.into(),
            rate,
            requests_per_s: rate * 2.0,
            requests: Percentiles::of(&h),
            cycles: Percentiles::of(&h),
            granted: 1,
            busy: 0,
            done: 1,
            stale: 0,
            unanswered: 0,
            send_lag_max_us: 0.0,
            overloaded: None,
            spectrum: spectrum(&h),
        }
    }

    /// A report holding `cells` and nothing else of note.
    pub(crate) fn report_of(cells: Vec<Cell>) -> Report {
        Report {
            command: "c".into(),
            date: "d".into(),
            machine: "m".into(),
            load_before: "1".into(),
            load_after: "2".into(),
            method: "x".into(),
            p99_bound_us: 10_000.0,
            systems: Vec::new(),
            fixed: Vec::new(),
            probes: None,
            cells,
        }
    }

    pub(crate) fn cell(system: &str, max: f64, runs: Vec<Measured>) -> Cell {
        Cell {
            system: system.into(),
            workload: Workload::Uncontended,
            connections: 1,
            max_rate: Some(max),
            max_requests_per_s: Some(max * 2.0),
            sweep: Vec::new(),
            runs,
            error: None,
        }
    }

    /// A cell whose sweep sustained `requests_per_s` at its maximum;
    /// `capped`: the sweep never failed.
    fn cell_at(
        system: &str,
        workload: Workload,
        connections: usize,
        requests_per_s: f64,
        capped: bool,
        runs: Vec<Measured>,
    ) -> Cell {
        Cell {
            system: system.into(),
            workload,
            connections,
            max_rate: Some(requests_per_s / 2.0),
            max_requests_per_s: Some(requests_per_s),
            sweep: vec![Step {
                rate: requests_per_s / 2.0,
                requests_per_s,
                p99_us: 100.0,
                failed: (!capped).then(|| "p99".to_string()),
            }],
            runs,
            error: None,
        }
    }

    #[test]
    fn replication_targets_from_known_numbers() {
        let report = report_of(vec![
            // Uncontended: the best quorum cell is 32 connections,
            // 120k requests/s; etcd's best is 8k: 15x.
            cell_at(
                "palisade-cluster",
                Workload::Uncontended,
                1,
                100_000.0,
                false,
                vec![measured("50% of max", 25_000.0, &[1000, 2000, 4000])],
            ),
            cell_at(
                "palisade-cluster",
                Workload::Uncontended,
                32,
                120_000.0,
                false,
                vec![measured("50% of max", 30_000.0, &[1000, 2000, 6000])],
            ),
            cell_at("etcd", Workload::Uncontended, 1, 8_000.0, false, Vec::new()),
            cell_at(
                "etcd",
                Workload::Uncontended,
                32,
                1_400.0,
                false,
                Vec::new(),
            ),
            // Renew: 95k vs 100k (0.95, met); check: 80k vs 100k (0.8,
            // not met), both at the cap.
            cell_at(
                "palisade-cluster",
                Workload::Renew,
                1,
                95_000.0,
                false,
                Vec::new(),
            ),
            cell_at(
                "palisade-cluster-none",
                Workload::Renew,
                1,
                100_000.0,
                false,
                Vec::new(),
            ),
            cell_at(
                "palisade-cluster",
                Workload::Check,
                1,
                80_000.0,
                true,
                Vec::new(),
            ),
            cell_at(
                "palisade-cluster-none",
                Workload::Check,
                1,
                100_000.0,
                true,
                Vec::new(),
            ),
            // Renew at 32 connections: only the quorum cluster.
            cell_at(
                "palisade-cluster",
                Workload::Renew,
                32,
                1.0,
                false,
                Vec::new(),
            ),
        ]);
        let t = replication_targets(&report);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(t.len(), 6, "{names:#?}");
        assert_eq!(t[0].measured, Some(15.0));
        assert_eq!(t[0].met, Some(true));
        assert!(t[0].detail.contains("120 000 vs 8 000"), "{:?}", t[0]);
        // p99 at 50%: 4 ms (met) at 1 connection, 6 ms (not met) at 32.
        assert!(t[1].name.contains("(1 connection)"), "{:?}", t[1]);
        assert!((t[1].measured.unwrap() - 4.0).abs() < 0.01, "{:?}", t[1]);
        assert_eq!(t[1].met, Some(true));
        assert_eq!(t[1].measured_text(), "4.00 ms");
        assert!(t[2].name.contains("(32 connections)"), "{:?}", t[2]);
        assert_eq!(t[2].met, Some(false));
        assert!(t[3].name.contains("renew") && t[3].name.contains("(1 connection)"));
        assert!((t[3].measured.unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(t[3].met, Some(true));
        assert_eq!(t[3].measured_text(), "0.95×");
        assert!(t[4].name.contains("renew") && t[4].name.contains("(32 connections)"));
        assert_eq!(t[4].met, None, "none not measured at 32: {:?}", t[4]);
        assert!(t[4].detail.contains("palisade-cluster-none not measured"));
        assert!(t[5].name.contains("check"));
        assert!((t[5].measured.unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(t[5].met, Some(false));
        assert!(
            t[5].detail.contains("both reached the sweep's cap"),
            "{:?}",
            t[5]
        );
        // The report's own target list ends with these (after the
        // replicated grants' bound, one per quorum cluster cell: 2), and
        // RESULTS.md prints them.
        assert_eq!(targets(&report).len(), 5 + 2 + 6);
        let md = markdown(&report);
        assert!(
            md.contains("| 3-node cluster, quorum: maximum sustainable uncontended throughput (requests/s) vs etcd's lease-bound lock | ≥ 10× | 15.00× | yes |"),
            "{md}"
        );
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs once each: p50 = 500, p99 = 990, max = 1000.
        let values: Vec<u64> = (1..=1000).collect();
        let p = Percentiles::of(&histogram(&values));
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() <= 1.0, "{p:?}");
        let s = spectrum(&histogram(&values));
        assert!(
            s.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
            "{s:?}"
        );
        assert!((s.last().unwrap().1 - 1000.0).abs() <= 1.0);
    }

    #[test]
    fn a_plot_without_data_says_so() {
        let report = report_of(vec![cell("redis", 1.0, Vec::new())]);
        let svg = svg(&report, Workload::Uncontended, 1);
        assert!(svg.contains("no system was measured"), "{svg}");
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn tail_targets_use_the_memory_speed_node_and_cover_renewals() {
        let mut renew = cell(
            "palisade",
            400_000.0,
            vec![measured("50% of max", 200_000.0, &[100, 200, 300])],
        );
        renew.workload = Workload::Renew;
        let mut echo_renew = cell(
            "echo",
            900_000.0,
            vec![measured("at palisade 50%", 200_000.0, &[100, 100, 100])],
        );
        echo_renew.workload = Workload::Renew;
        let report = report_of(vec![
            // The quorum node's acquire waits for an fsync: far slower.
            cell(
                "palisade",
                5_000.0,
                vec![measured("50% of max", 2_500.0, &[4_000, 4_000, 4_000])],
            ),
            cell(
                "palisade-none",
                100_000.0,
                vec![measured("50% of max", 50_000.0, &[100, 110, 120])],
            ),
            cell(
                "echo",
                300_000.0,
                vec![
                    measured("at palisade 50%", 2_500.0, &[100, 100, 100]),
                    measured("at palisade-none 50%", 50_000.0, &[100, 100, 100]),
                ],
            ),
            renew,
            echo_renew,
        ]);
        let t = targets(&report);
        assert!(t[0].name.starts_with("palisade-none uncontended"), "{t:?}");
        assert!((t[0].measured.unwrap() - 1.2).abs() < 0.01, "{t:?}");
        assert_eq!(t[0].met, Some(true));
        let renew_p99 = t
            .iter()
            .find(|t| t.name.starts_with("palisade renew, 1 connection: p99"))
            .expect("a renewal p99 target");
        assert!(
            (renew_p99.measured.unwrap() - 3.0).abs() < 0.01,
            "{renew_p99:?}"
        );
        assert_eq!(renew_p99.met, Some(false));
        assert!(
            !t.iter().any(|t| t.name.contains("check")),
            "checks were not measured: {t:?}"
        );
        let svg = svg(&report, Workload::Uncontended, 1);
        assert!(svg.contains("palisade-none's rate"), "{svg}");
        // The quorum node's grants are held to the probes instead: no
        // probe, not measured; 4 ms against 2 × (1 ms + 0.1 ms), not met.
        let bound = |t: &[Target]| {
            t.iter()
                .find(|t| t.name.starts_with("palisade (quorum): uncontended p99"))
                .cloned()
                .expect("a replicated-grant target")
        };
        assert_eq!(bound(&t).met, None);
        let mut report = report;
        let probe = |us: u64| Percentiles::of(&histogram(&[us, us, us]));
        report.probes = Some(super::super::probe::Probes {
            fsync_dir: "/tmp".into(),
            fdatasync: probe(1_000),
            round_trip: probe(100),
        });
        let b = bound(&targets(&report));
        assert!(
            (b.measured.unwrap() - 4_000.0 / 2_200.0).abs() < 0.01,
            "{b:?}"
        );
        assert_eq!(b.met, Some(false));
        assert!(markdown(&report).contains("## Probes"));
    }

    #[test]
    fn throughput_targets_name_each_node_and_what_it_keeps() {
        let report = report_of(vec![
            cell("palisade-none", 400_000.0, Vec::new()),
            cell("palisade", 40_000.0, Vec::new()),
            cell("redis", 100_000.0, Vec::new()),
            cell("etcd", 2_000.0, Vec::new()),
        ]);
        let t: Vec<Target> = targets(&report)
            .into_iter()
            .filter(|t| t.name.starts_with("maximum sustainable throughput"))
            .collect();
        let got: Vec<(&str, Option<f64>, Option<bool>)> = t
            .iter()
            .map(|t| (t.name.rsplit(": ").next().unwrap(), t.measured, t.met))
            .collect();
        assert_eq!(
            got,
            [
                ("palisade-none vs redis", Some(4.0), Some(true)),
                ("palisade vs redis", Some(0.4), Some(false)),
                ("palisade-none vs etcd", Some(200.0), Some(true)),
                ("palisade vs etcd", Some(20.0), Some(false)),
            ]
        );
        assert_eq!(
            t[1].detail,
            "80 000 (every grant fsynced) vs 200 000 (no persistence) requests/s"
        );
        // Neither node measured: one pair, said so.
        let t = targets(&report_of(vec![cell("redis", 100_000.0, Vec::new())]));
        let t: Vec<&Target> = t
            .iter()
            .filter(|t| t.name.starts_with("maximum sustainable throughput"))
            .collect();
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].detail, "palisade not measured");
        assert_eq!(t[1].detail, "etcd not measured");
    }

    #[test]
    fn targets_compare_within_one_report() {
        let report = report_of(vec![
            cell(
                "palisade",
                100_000.0,
                vec![measured("50% of max", 50_000.0, &[100, 120, 130])],
            ),
            cell(
                "echo",
                300_000.0,
                vec![measured("at palisade 50%", 50_000.0, &[100, 100, 100])],
            ),
            cell("redis", 25_000.0, Vec::new()),
        ]);
        let t = targets(&report);
        // p99 130 vs 100 µs: exactly the 1.3× bound.
        assert!((t[0].measured.unwrap() - 1.3).abs() < 0.01, "{t:?}");
        // 200k vs 50k requests/s.
        assert_eq!(t[1].measured, Some(4.0));
        assert_eq!(t[1].met, Some(true));
        assert_eq!(t[2].met, None, "etcd absent: {t:?}");
        let md = markdown(&report);
        assert!(
            md.contains("| palisade | 100 000 | 200 000 | 50% of max |"),
            "{md}"
        );
        let svg = svg(&report, Workload::Uncontended, 1);
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("palisade's rate"));
    }
}

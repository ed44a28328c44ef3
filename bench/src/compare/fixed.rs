//! The fixed-rate table of `compare --rates`: every system at the same
//! chosen arrival rates, in rounds that alternate the systems (each round
//! starts each system afresh, measures every rate, stops it), so a quiet
//! or a noisy minute of the shared machine falls on all of them alike.
//! Each round starts one system later in the list ([`round_order`]): in a
//! fixed order, a system always ran right after the same neighbour, and
//! two builds of Palisade compared side by side read p99s 1.5–2× apart at
//! 100 000 arrivals/s whichever build ran second after the other.
//! The report gives the minimum and the median of each percentile over the
//! rounds, never the best run, and the servers' CPU time per request
//! (process and descendants, user + system, from `/proc`).
//!
//! The machine is shared, so each run also records the CPU that neither
//! the server nor this generator used ([`Busy`]): other processes, kernel
//! threads (some of them doing this run's own network or disk work), and
//! time the hypervisor stole. It tells a noisy round from a quiet one; it
//! excludes nothing by itself.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::engine::Workload;
use super::nodestats::{at_most, LogSyncs};
use super::report::Measured;

/// One system at one rate in one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FixedRun {
    pub(crate) system: String,
    pub(crate) workload: Workload,
    pub(crate) connections: usize,
    /// Offered arrivals per second.
    pub(crate) rate: f64,
    /// From 1.
    pub(crate) round: usize,
    pub(crate) measured: Option<Measured>,
    /// Server CPU time (all its processes) per answered request.
    pub(crate) cpu_us_per_request: Option<f64>,
    /// CPUs busy on average with work other than the server's and the
    /// generator's during the run (warm-up and recording), and CPUs
    /// stolen by the hypervisor ([`Busy::others`]).
    pub(crate) other_cpus: Option<f64>,
    pub(crate) stolen_cpus: Option<f64>,
    /// A Palisade system's raft log syncs during the run (every node's),
    /// from the nodes' own histograms ([`super::nodestats`]).
    pub(crate) log_syncs: Option<LogSyncs>,
    /// Of `cpu_us_per_request`, the part the nodes' cores spent busy
    /// polling (`palisade_core_busy_poll_seconds_total`); `None` for
    /// systems other than Palisade.
    pub(crate) busy_poll_us_per_request: Option<f64>,
    pub(crate) error: Option<String>,
}

impl FixedRun {
    /// CPUs of other work plus CPUs stolen, on average over the run.
    pub(crate) fn noise(&self) -> Option<f64> {
        Some(self.other_cpus? + self.stolen_cpus.unwrap_or(0.0))
    }
}

/// Machine-wide busy and stolen CPU ticks (`/proc/stat`), and this
/// process's own, at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Busy {
    /// user + nice + system + irq + softirq of every CPU (guest time is
    /// inside user).
    pub(crate) machine: u64,
    /// steal of every CPU.
    pub(crate) stolen: u64,
    /// This process's utime + stime (the generator's threads).
    pub(crate) own: u64,
}

impl Busy {
    /// Now, or `None` if `/proc` cannot be read.
    pub(crate) fn now() -> Option<Busy> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (machine, stolen) = parse_cpu_line(&stat)?;
        let own = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1;
        Some(Busy {
            machine,
            stolen,
            own,
        })
    }

    /// `(other, stolen)` CPUs on average between `self` and `later`
    /// over `seconds`, given the server's ticks in that time: machine busy
    /// time less the server's and this process's. Never negative (the
    /// per-process and machine counters are sampled at slightly different
    /// instants).
    pub(crate) fn others(
        &self,
        later: &Busy,
        server_ticks: u64,
        seconds: f64,
        hz: f64,
    ) -> (f64, f64) {
        if seconds <= 0.0 {
            return (f64::NAN, f64::NAN);
        }
        let machine = later.machine.saturating_sub(self.machine);
        let own = later.own.saturating_sub(self.own);
        let other = machine.saturating_sub(server_ticks + own);
        let stolen = later.stolen.saturating_sub(self.stolen);
        (other as f64 / hz / seconds, stolen as f64 / hz / seconds)
    }
}

/// `(busy, steal)` ticks from the aggregate `cpu` line of `/proc/stat`:
/// `cpu user nice system idle iowait irq softirq steal guest guest_nice`.
fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied();
    let busy = field(0)? + field(1)? + field(2)? + field(5)? + field(6)?;
    Some((busy, field(7).unwrap_or(0)))
}

/// User + system CPU ticks of `roots` and every process descending from
/// them, from `/proc/*/stat` (a Palisade cluster is three processes; a
/// peer may run under a wrapper).
pub(crate) fn cpu_ticks(roots: &[u32]) -> u64 {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut ticks: HashMap<u32, u64> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((ppid, t)) = parse_stat(&stat) {
            parent.insert(pid, ppid);
            ticks.insert(pid, t);
        }
    }
    let mut total = 0;
    for (&pid, &t) in &ticks {
        let mut at = pid;
        // Bounded walk up the tree (a pid reused mid-scan cannot loop it).
        for _ in 0..64 {
            if roots.contains(&at) {
                total += t;
                break;
            }
            match parent.get(&at) {
                Some(&p) if p != 0 && p != at => at = p,
                _ => break,
            }
        }
    }
    total
}

/// `(ppid, utime + stime)` of one `/proc/PID/stat` line. The command name
/// is in parentheses and may hold spaces or parentheses itself: fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Clock ticks per second of `/proc` times.
pub(crate) fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second().max(1) as f64
}

/// `min / median` of some values, formatted by `f`; "–" when none.
fn min_median(mut values: Vec<f64>, f: impl Fn(f64) -> String) -> String {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return "–".into();
    }
    values.sort_by(f64::total_cmp);
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    format!("{} / {}", f(values[0]), f(median))
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The markdown section: one table per workload and connection count,
/// rows by rate then system.
pub(crate) fn markdown(runs: &[FixedRun]) -> String {
    let mut md = String::new();
    if runs.is_empty() {
        return md;
    }
    let rounds = runs.iter().map(|r| r.round).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "\n## Fixed rates\n\nEvery system at the same offered rates, {rounds} round{} \
         alternating the systems (each round starts each system afresh). Each cell is \
         **min / median** over the rounds. CPU is the servers' processes' user + system \
         time per answered request; \"of it polling\" is the part a Palisade node's cores \
         spent busy polling (`dataplane.busy_poll`, `palisade_core_busy_poll_seconds_total`).",
        if rounds == 1 { "" } else { "s" }
    );
    let mut keys: Vec<(Workload, usize)> =
        runs.iter().map(|r| (r.workload, r.connections)).collect();
    keys.sort_by_key(|(w, c)| (w.name(), *c));
    keys.dedup();
    for (workload, conns) in keys {
        let _ = writeln!(
            md,
            "\n### {}, {} connection{}\n",
            workload.name(),
            conns,
            if conns == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            md,
            "| arrivals/s | system | rounds | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/request | of it polling | failed |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        let mut rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.workload == workload && r.connections == conns)
            .map(|r| r.rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        let mut systems: Vec<&str> = Vec::new();
        for r in runs {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        for rate in rates {
            for system in &systems {
                let cell: Vec<&FixedRun> = runs
                    .iter()
                    .filter(|r| {
                        r.workload == workload
                            && r.connections == conns
                            && r.rate == rate
                            && r.system == *system
                    })
                    .collect();
                if cell.is_empty() {
                    continue;
                }
                let ok: Vec<&Measured> = cell
                    .iter()
                    .filter_map(|r| r.measured.as_ref())
                    .filter(|m| m.unanswered == 0 && m.overloaded.is_none())
                    .collect();
                let failed = cell.len() - ok.len();
                let pick = |f: fn(&Measured) -> f64| ok.iter().map(|m| f(m)).collect::<Vec<_>>();
                let cpu: Vec<f64> = cell
                    .iter()
                    .filter(|r| r.measured.is_some())
                    .filter_map(|r| r.cpu_us_per_request)
                    .collect();
                let polling: Vec<f64> = cell
                    .iter()
                    .filter(|r| r.measured.is_some() && r.cpu_us_per_request.is_some())
                    .filter_map(|r| r.busy_poll_us_per_request)
                    .collect();
                let _ = writeln!(
                    md,
                    "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    rate,
                    system,
                    cell.len(),
                    min_median(pick(|m| m.requests.p50), us),
                    min_median(pick(|m| m.requests.p99), us),
                    min_median(pick(|m| m.requests.p99_9), us),
                    min_median(pick(|m| m.requests.max), us),
                    min_median(cpu, |v| format!("{v:.1}")),
                    min_median(polling, |v| format!("{v:.1}")),
                    if failed == 0 {
                        String::new()
                    } else {
                        format!("{failed} (not sustained or error)")
                    }
                );
            }
        }
    }
    md.push_str(&machine_note(runs));
    md.push_str(&log_sync_note(runs));
    md
}

/// The raft log's syncs in each run that had any: what a replicated
/// grant's tail waited for, beside that tail.
fn log_sync_note(runs: &[FixedRun]) -> String {
    let synced: Vec<(&FixedRun, &LogSyncs)> = runs
        .iter()
        .filter_map(|r| Some((r, r.log_syncs.as_ref().filter(|s| s.count > 0)?)))
        .collect();
    if synced.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### The raft log's syncs during the runs\n\nFrom the nodes' own \
         `palisade_log_sync_duration_seconds` (every node of a cluster together), \
         read before and after each run, warm-up included; the figures are the \
         histogram's bucket bounds. A run whose requests' p99 is far above its \
         syncs' p99 waited for something else.\n\n\
         | system | workload | conns | arrivals/s | round | syncs | syncs p99 | slowest sync | requests p99 µs |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (run, syncs) in synced {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            run.system,
            run.workload.name(),
            run.connections,
            run.rate,
            run.round,
            syncs.count,
            syncs.p99_le_us.map_or("–".into(), at_most),
            syncs.max_le_us.map_or("–".into(), at_most),
            run.measured
                .as_ref()
                .map_or("–".into(), |m| format!("{:.0}", m.requests.p99)),
        );
    }
    md
}

/// Other work on the machine during the runs: spread, and the runs with a
/// noisy neighbour (more than [`NOISY_CPUS`]).
fn machine_note(runs: &[FixedRun]) -> String {
    let others: Vec<f64> = runs.iter().filter_map(|r| r.other_cpus).collect();
    if others.is_empty() {
        return String::new();
    }
    let stolen: Vec<f64> = runs.iter().filter_map(|r| r.stolen_cpus).collect();
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let cpus = |v: f64| format!("{v:.2}");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### The machine during the runs\n\nCPUs busy with work other than the \
         server's and the generator's (other processes, kernel threads — some doing \
         this run's own network or disk work), average over each run, min / median, \
         max: {}, {}; stolen by the hypervisor: {}, {}.",
        min_median(others.clone(), cpus),
        cpus(max(&others)),
        min_median(stolen.clone(), cpus),
        cpus(max(&stolen)),
    );
    let noisy: Vec<String> = runs
        .iter()
        .filter(|r| r.noise().is_some_and(|n| n > NOISY_CPUS))
        .map(|r| {
            format!(
                "{} {} x{} at {:.0}/s in round {} ({:.2})",
                r.system,
                r.workload.name(),
                r.connections,
                r.rate,
                r.round,
                r.noise().unwrap_or(f64::NAN)
            )
        })
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            md,
            "\nRuns with more than {NOISY_CPUS} CPU of other work and stolen time ({} of {}): {}.",
            noisy.len(),
            runs.len(),
            noisy.join("; ")
        );
    }
    md
}

/// Other work and stolen time above this many CPUs on average mark a run
/// as noisy in the report (it is still counted).
const NOISY_CPUS: f64 = 0.25;

/// The systems of round `round` (from 1), in the order they run: the
/// list rotated by one more place each round, so that every system takes
/// every position and follows every neighbour in turn.
pub(crate) fn round_order<'a>(systems: &[&'a str], round: usize) -> Vec<&'a str> {
    if systems.is_empty() {
        return Vec::new();
    }
    let k = round.saturating_sub(1) % systems.len();
    systems[k..].iter().chain(&systems[..k]).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_system_later() {
        let systems = ["a", "b", "c"];
        assert_eq!(round_order(&systems, 1), ["a", "b", "c"]);
        assert_eq!(round_order(&systems, 2), ["b", "c", "a"]);
        assert_eq!(round_order(&systems, 3), ["c", "a", "b"]);
        assert_eq!(round_order(&systems, 4), ["a", "b", "c"]);
        assert!(round_order(&[], 1).is_empty());
    }

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some((17, 281)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_burns_cpu_that_the_scan_sees() {
        let me = std::process::id();
        let before = cpu_ticks(&[me]);
        let start = palisade_host::clock::monotonic_ns();
        let mut x = 0u64;
        // Spin until the scan sees this process's CPU time grow: a busy
        // machine may give a low-priority test little CPU for a while, so
        // wall time alone proves nothing; 30 s of spinning that the scan
        // never sees is a broken scan.
        let mut seen = false;
        while palisade_host::clock::monotonic_ns() - start < 30_000_000_000 {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            if cpu_ticks(&[me]) > before {
                seen = true;
                break;
            }
        }
        std::hint::black_box(x);
        assert!(seen, "30 s of spinning took no ticks the scan saw");
        assert!(ticks_per_second() >= 1.0);
    }

    #[test]
    fn the_cpu_line_sums_busy_fields_and_keeps_steal_apart() {
        let stat = "cpu  100 5 40 9000 30 7 8 11 0 0\ncpu0 50 2 20 4500 15 3 4 5 0 0\n";
        // user + nice + system + irq + softirq; idle and iowait are not busy.
        assert_eq!(parse_cpu_line(stat), Some((160, 11)));
        // Kernels before steal was counted: none stolen.
        assert_eq!(
            parse_cpu_line("cpu  1 2 3 4 5 6 7\n"),
            Some((1 + 2 + 3 + 6 + 7, 0))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse_cpu_line("cpu  1 x 3 4 5 6 7\n"), None);
    }

    #[test]
    fn others_are_the_machine_less_the_server_and_the_generator() {
        let a = Busy {
            machine: 1_000,
            stolen: 10,
            own: 200,
        };
        let b = Busy {
            machine: 1_000 + 300,
            stolen: 10 + 20,
            own: 200 + 100,
        };
        // 300 ticks busy in 2 s at 100 Hz: 100 the generator's, 150 the
        // server's, 50 others' = 0.25 CPUs; 20 stolen = 0.1 CPUs.
        let (other, stolen) = a.others(&b, 150, 2.0, 100.0);
        assert!((other - 0.25).abs() < 1e-9, "{other}");
        assert!((stolen - 0.1).abs() < 1e-9, "{stolen}");
        // Counters sampled apart can make the difference negative: 0.
        assert_eq!(a.others(&b, 500, 2.0, 100.0).0, 0.0);
        assert!(a.others(&b, 0, 0.0, 100.0).0.is_nan());
    }

    #[test]
    fn this_process_reads_its_own_busy_time() {
        let busy = Busy::now().expect("/proc/stat and /proc/self/stat");
        assert!(busy.machine >= busy.own, "{busy:?}");
    }

    fn run(other: Option<f64>, round: usize) -> FixedRun {
        FixedRun {
            system: "echo".into(),
            workload: Workload::Uncontended,
            connections: 1,
            rate: 5000.0,
            round,
            measured: None,
            cpu_us_per_request: None,
            other_cpus: other,
            stolen_cpus: other.map(|_| 0.0),
            log_syncs: None,
            busy_poll_us_per_request: None,
            error: None,
        }
    }

    fn measured(p99_us: u64) -> Measured {
        crate::compare::report::tests::measured("5000/s", 5000.0, &[p99_us])
    }

    #[test]
    fn the_cpu_column_says_how_much_of_it_was_polling() {
        let polled = |round, cpu, polling| FixedRun {
            system: "palisade-none".into(),
            measured: Some(measured(60)),
            cpu_us_per_request: Some(cpu),
            busy_poll_us_per_request: Some(polling),
            ..run(None, round)
        };
        let md = markdown(&[
            polled(1, 5.0, 0.3),
            polled(2, 4.0, 0.5),
            polled(3, 4.5, 0.75),
            FixedRun {
                measured: Some(measured(50)),
                cpu_us_per_request: Some(4.9),
                ..run(None, 1)
            },
        ]);
        assert!(md.contains("| 4.0 / 4.5 | 0.3 / 0.5 |  |"), "{md}");
        // A system that does not poll (or says nothing about it): a dash.
        assert!(md.contains("| 4.9 / 4.9 | – |  |"), "{md}");
    }

    #[test]
    fn the_report_puts_each_runs_log_syncs_beside_it() {
        assert!(!markdown(&[run(None, 1)]).contains("log's syncs"));
        let synced = FixedRun {
            system: "palisade".into(),
            log_syncs: Some(LogSyncs {
                count: 812,
                p99_le_us: Some(500.0),
                max_le_us: Some(50_000.0),
            }),
            ..run(None, 2)
        };
        let idle = FixedRun {
            log_syncs: Some(LogSyncs {
                count: 0,
                p99_le_us: None,
                max_le_us: None,
            }),
            ..run(None, 3)
        };
        let md = markdown(&[synced, idle]);
        assert!(
            md.contains("| palisade | uncontended | 1 | 5000 | 2 | 812 | ≤ 500 µs | ≤ 50 ms | – |"),
            "{md}"
        );
        assert!(
            !md.contains("| 5000 | 3 |"),
            "a run without syncs is left out: {md}"
        );
    }

    #[test]
    fn the_report_names_the_noisy_runs() {
        let md = markdown(&[run(Some(0.05), 1), run(Some(0.9), 2), run(Some(0.1), 3)]);
        assert!(md.contains("min / median, max: 0.05 / 0.10, 0.90"), "{md}");
        assert!(
            md.contains("(1 of 3): echo uncontended x1 at 5000/s in round 2 (0.90)"),
            "{md}"
        );
        let quiet = markdown(&[run(Some(0.05), 1)]);
        assert!(!quiet.contains("Runs with more"), "{quiet}");
        assert!(!markdown(&[run(None, 1)]).contains("The machine during"));
        // Time the hypervisor stole counts as noise too.
        let stolen = FixedRun {
            stolen_cpus: Some(0.3),
            ..run(Some(0.0), 4)
        };
        assert!(markdown(&[stolen]).contains("in round 4 (0.30)"));
    }

    #[test]
    fn min_and_median_ignore_order_and_nan() {
        let f = |v: f64| format!("{v:.0}");
        assert_eq!(min_median(vec![3.0, 1.0, 2.0], f), "1 / 2");
        assert_eq!(min_median(vec![4.0, 1.0, 2.0, 3.0], f), "1 / 2");
        assert_eq!(min_median(vec![f64::NAN], f), "–");
    }
}

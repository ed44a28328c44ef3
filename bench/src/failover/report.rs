//! What `failover` writes: the data model of a run, its summaries, the
//! issue's targets, and RESULTS.md. Pure functions of the measured data:
//! no clock, no sockets, no files.

use std::fmt::Write as _;

use serde::Serialize;

use super::holder::LossKind;

/// One leader kill.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Round {
    /// From 1.
    pub(crate) index: u32,
    /// The leader that was killed, and the epoch it led.
    pub(crate) killed: u16,
    pub(crate) killed_epoch: u32,
    /// The first survivor seen reporting itself leader in a later epoch.
    pub(crate) new_leader: Option<u16>,
    pub(crate) new_epoch: Option<u32>,
    /// Kill → a survivor's `status` says leader in a later epoch.
    pub(crate) elected_ms: Option<f64>,
    /// Kill → the first grant of a resource nobody held.
    pub(crate) first_grant_ms: Option<f64>,
    /// The token of that grant.
    pub(crate) first_grant_token: Option<u64>,
    /// Live holders at the kill.
    pub(crate) holders: u32,
    /// Holders whose lease was lost in this round.
    pub(crate) holders_lost: u32,
    /// How each of those was lost.
    pub(crate) losses: Vec<LossKind>,
    /// Holders that renewed at the new leader with their token.
    pub(crate) holders_renewed: u32,
    /// Holders whose renewal came back with another token.
    pub(crate) tokens_changed: u32,
    /// Kill → the last holder renewed at the new leader (only when every
    /// holder did).
    pub(crate) holders_renewed_ms: Option<f64>,
    /// Restart of the killed node → all three nodes agree on one leader.
    pub(crate) rejoined_ms: Option<f64>,
    /// Why the round is incomplete, if it is.
    pub(crate) error: Option<String>,
}

/// Every round of one replication mode.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Mode {
    /// `leases.replication` as written in the node configs.
    pub(crate) replication: String,
    /// What ran.
    pub(crate) about: String,
    pub(crate) rounds: Vec<Round>,
    /// Why the mode stopped early (cluster did not start, a round left
    /// the cluster without a leader).
    pub(crate) error: Option<String>,
}

/// Settings of the run, as the report states them.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) rounds: u32,
    pub(crate) holders: usize,
    pub(crate) holder_ttl_ms: u64,
    pub(crate) renew_every_ms: u64,
    pub(crate) heartbeat_ms: u64,
    pub(crate) election_timeout_ms: u64,
    pub(crate) max_ttl_ms: u64,
    pub(crate) lock_delay_max_ms: u64,
    pub(crate) max_drift: f64,
    /// `(max_ttl + lock_delay_max + election_timeout) × (1 + max_drift)`:
    /// how long a new leader grants nothing under `replication = "none"`.
    pub(crate) grace_none_ms: u64,
    pub(crate) probe_interval_ms: u64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FailoverReport {
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) machine: String,
    /// `/proc/loadavg` before and after: the machine is shared.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) method: String,
    pub(crate) settings: Settings,
    pub(crate) modes: Vec<Mode>,
}

/// Minimum, median and maximum of a measure over the rounds that have it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) min: f64,
    /// The middle value; the mean of the two middle values for an even
    /// count.
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Summary {
    /// `None` for no values.
    pub(crate) fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            count: n,
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// A measure of every round of a mode.
fn measure(mode: &Mode, f: impl Fn(&Round) -> Option<f64>) -> Option<Summary> {
    let values: Vec<f64> = mode.rounds.iter().filter_map(f).collect();
    Summary::of(&values)
}

/// The measures summarized per mode, with their names.
pub(crate) fn summaries(mode: &Mode) -> Vec<(&'static str, Option<Summary>)> {
    vec![
        (
            "kill → new leader reports itself (ms)",
            measure(mode, |r| r.elected_ms),
        ),
        (
            "kill → first grant of a free resource (ms)",
            measure(mode, |r| r.first_grant_ms),
        ),
        (
            "kill → every holder renewed at the new leader (ms)",
            measure(mode, |r| r.holders_renewed_ms),
        ),
        (
            "restart of the killed node → all three agree on the leader (ms)",
            measure(mode, |r| r.rejoined_ms),
        ),
        (
            "holders that lost their lease, per round",
            measure(mode, |r| Some(f64::from(r.holders_lost))),
        ),
    ]
}

/// A target's verdict.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) mode: String,
    pub(crate) name: String,
    pub(crate) needed: String,
    /// The measured value as text ("–" if none).
    pub(crate) measured: String,
    pub(crate) met: Option<bool>,
}

/// The failover targets, for each mode (they are the targets of
/// `quorum`; `none` is shown against them for comparison).
pub(crate) fn targets(report: &FailoverReport) -> Vec<Target> {
    let mut out = Vec::new();
    for mode in &report.modes {
        let grant = measure(mode, |r| r.first_grant_ms);
        let measured_rounds = mode
            .rounds
            .iter()
            .filter(|r| r.first_grant_ms.is_some() && r.error.is_none())
            .count();
        let lost: u32 = mode.rounds.iter().map(|r| r.holders_lost).sum();
        let changed: u32 = mode.rounds.iter().map(|r| r.tokens_changed).sum();
        let holders: u32 = mode.rounds.iter().map(|r| r.holders).sum();
        let any = !mode.rounds.is_empty();
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0} ms"));
        let mut push = |name: &str, needed: &str, measured: String, met: Option<bool>| {
            out.push(Target {
                mode: mode.replication.clone(),
                name: name.into(),
                needed: needed.into(),
                measured,
                met,
            });
        };
        push(
            "complete rounds (leader kills)",
            "≥ 20",
            measured_rounds.to_string(),
            Some(measured_rounds >= 20),
        );
        push(
            "kill → first grant of a free resource, median",
            "≤ 1000 ms",
            ms(grant.map(|s| s.median)),
            grant.map(|s| s.median <= 1000.0),
        );
        push(
            "kill → first grant of a free resource, max",
            "≤ 2000 ms",
            ms(grant.map(|s| s.max)),
            grant.map(|s| s.max <= 2000.0),
        );
        push(
            "live holders that lost their lease",
            "0",
            format!("{lost} of {holders} holder-rounds"),
            any.then_some(lost == 0),
        );
        // Only a holder that renewed at a new leader can show whether its
        // token survived.
        let renewed: u32 = mode.rounds.iter().map(|r| r.holders_renewed).sum();
        push(
            "holders that renewed at the new leader with another token",
            "0",
            if renewed == 0 {
                "– (no holder renewed at a new leader)".into()
            } else {
                format!("{changed} of {renewed} renewals at a new leader")
            },
            (renewed > 0).then_some(changed == 0),
        );
    }
    out
}

fn ms_text(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

/// RESULTS.md.
pub(crate) fn markdown(report: &FailoverReport) -> String {
    let mut md = String::new();
    let s = &report.settings;
    let _ = writeln!(
        md,
        "# Failover: leader kills, the first grant after them, and live holders\n"
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
    let _ = writeln!(md, "## Settings\n");
    let _ = writeln!(md, "| setting | value |\n|---|---|");
    for (name, value) in [
        ("rounds (leader kills) per mode", s.rounds.to_string()),
        ("live holders", s.holders.to_string()),
        ("holder lease ttl", format!("{} ms", s.holder_ttl_ms)),
        ("holder renews every", format!("{} ms", s.renew_every_ms)),
        (
            "cluster.heartbeat_interval",
            format!("{} ms", s.heartbeat_ms),
        ),
        (
            "cluster.election_timeout",
            format!("{} ms", s.election_timeout_ms),
        ),
        ("leases.max_ttl", format!("{} ms", s.max_ttl_ms)),
        (
            "leases.lock_delay_max",
            format!("{} ms", s.lock_delay_max_ms),
        ),
        ("leases.max_drift", format!("{}", s.max_drift)),
        (
            "grace of a new leader under replication = \"none\"",
            format!("{} ms", s.grace_none_ms),
        ),
        (
            "probe interval (leader and grant probes)",
            format!("{} ms", s.probe_interval_ms),
        ),
    ] {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(
        md,
        "The issue's targets are for `replication = \"quorum\"`; `none` is measured against them for comparison.\n"
    );
    let _ = writeln!(
        md,
        "| replication | target | needed | measured | met |\n|---|---|---|---|---|"
    );
    for t in targets(report) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            t.mode, t.name, t.needed, t.measured, met
        );
    }
    for mode in &report.modes {
        let _ = writeln!(md, "\n## replication = \"{}\"\n", mode.replication);
        if !mode.about.is_empty() {
            let _ = writeln!(md, "What ran: {}\n", mode.about);
        }
        if let Some(e) = &mode.error {
            let _ = writeln!(md, "**Stopped early:** {e}\n");
        }
        let _ = writeln!(
            md,
            "| measure | rounds | min | median | max |\n|---|---|---|---|---|"
        );
        for (name, summary) in summaries(mode) {
            match summary {
                Some(s) => {
                    let _ = writeln!(
                        md,
                        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
                        s.count, s.min, s.median, s.max
                    );
                }
                None => {
                    let _ = writeln!(md, "| {name} | 0 | – | – | – |");
                }
            }
        }
        let _ = writeln!(
            md,
            "\n| round | killed (epoch) | new leader (epoch) | elected ms | first grant ms | holders | lost | renewed | tokens changed | all renewed ms | rejoined ms | note |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &mode.rounds {
            let new = match (r.new_leader, r.new_epoch) {
                (Some(id), Some(epoch)) => format!("{id} ({epoch})"),
                _ => "–".into(),
            };
            let mut note = r.error.clone().unwrap_or_default();
            if !r.losses.is_empty() {
                let stale = r
                    .losses
                    .iter()
                    .filter(|l| matches!(l, LossKind::Stale { .. }))
                    .count();
                let expired = r.losses.len() - stale;
                if !note.is_empty() {
                    note.push_str("; ");
                }
                let _ = write!(note, "lost: {stale} stale, {expired} expired");
                if let Some(LossKind::Expired { last_error }) = r
                    .losses
                    .iter()
                    .find(|l| matches!(l, LossKind::Expired { .. }))
                {
                    let _ = write!(note, " (last error: {last_error})");
                }
            }
            let _ = writeln!(
                md,
                "| {} | {} ({}) | {new} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.index,
                r.killed,
                r.killed_epoch,
                ms_text(r.elected_ms),
                ms_text(r.first_grant_ms),
                r.holders,
                r.holders_lost,
                r.holders_renewed,
                r.tokens_changed,
                ms_text(r.holders_renewed_ms),
                ms_text(r.rejoined_ms),
                note.replace('|', "\\|")
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_known_numbers() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Some(Summary {
                count: 3,
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        // An even count takes the mean of the two middle values.
        let s = Summary::of(&[400.0, 100.0, 300.0, 200.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (100.0, 250.0, 400.0));
        // A missing measure is no value, not a zero.
        let s = Summary::of(&[f64::NAN, 5.0]).unwrap();
        assert_eq!((s.count, s.median), (1, 5.0));
    }

    fn round(index: u32, elected: f64, grant: f64, lost: u32) -> Round {
        Round {
            index,
            killed: 1,
            killed_epoch: index,
            new_leader: Some(2),
            new_epoch: Some(index + 1),
            elected_ms: Some(elected),
            first_grant_ms: Some(grant),
            first_grant_token: Some(u64::from(index + 1) << 32 | 1),
            holders: 16,
            holders_lost: lost,
            losses: (0..lost)
                .map(|_| LossKind::Stale { current_token: 0 })
                .collect(),
            holders_renewed: 16 - lost,
            tokens_changed: 0,
            holders_renewed_ms: (lost == 0).then_some(3000.0),
            rejoined_ms: Some(900.0),
            error: None,
        }
    }

    fn report(modes: Vec<Mode>) -> FailoverReport {
        FailoverReport {
            command: "palisade-bench failover".into(),
            date: "d".into(),
            machine: "m".into(),
            load_before: "1".into(),
            load_after: "2".into(),
            method: "x".into(),
            settings: Settings {
                rounds: 20,
                holders: 16,
                holder_ttl_ms: 10_000,
                renew_every_ms: 3333,
                heartbeat_ms: 50,
                election_timeout_ms: 500,
                max_ttl_ms: 30_000,
                lock_delay_max_ms: 10_000,
                max_drift: 0.01,
                grace_none_ms: 40_905,
                probe_interval_ms: 5,
            },
            modes,
        }
    }

    #[test]
    fn targets_from_known_rounds() {
        // quorum: 20 rounds, grants at 600..=2500 ms (median of 20 values
        // 600, 700, ..., 2500 is (1500 + 1600) / 2 = 1550), no losses.
        let quorum = Mode {
            replication: "quorum".into(),
            about: String::new(),
            rounds: (0..20)
                .map(|i| round(i + 1, 500.0, 600.0 + 100.0 * f64::from(i), 0))
                .collect(),
            error: None,
        };
        // none: 3 rounds, grants at the grace, every holder lost.
        let none = Mode {
            replication: "none".into(),
            about: String::new(),
            rounds: vec![
                round(1, 700.0, 41_700.0, 16),
                round(2, 600.0, 41_600.0, 16),
                round(3, 900.0, 41_900.0, 16),
            ],
            error: None,
        };
        let report = report(vec![quorum, none]);
        let t = targets(&report);
        assert_eq!(t.len(), 10, "{t:?}");
        let find = |mode: &str, name: &str| {
            t.iter()
                .find(|t| t.mode == mode && t.name.contains(name))
                .unwrap_or_else(|| panic!("no {mode} {name}: {t:?}"))
        };
        assert_eq!(find("quorum", "complete rounds").met, Some(true));
        assert_eq!(find("quorum", "median").measured, "1550 ms");
        assert_eq!(find("quorum", "median").met, Some(false));
        assert_eq!(find("quorum", ", max").measured, "2500 ms");
        assert_eq!(find("quorum", ", max").met, Some(false));
        assert_eq!(find("quorum", "lost").met, Some(true));
        assert_eq!(find("none", "complete rounds").met, Some(false));
        assert_eq!(find("none", "median").measured, "41700 ms");
        assert_eq!(find("none", "lost").measured, "48 of 48 holder-rounds");
        assert_eq!(find("none", "lost").met, Some(false));
        assert_eq!(find("quorum", "token").met, Some(true));
        assert_eq!(
            find("quorum", "token").measured,
            "0 of 320 renewals at a new leader"
        );
        // Every holder of none lost its lease: nothing says whether a token
        // would have survived.
        assert_eq!(find("none", "token").met, None);

        let s = summaries(&report.modes[1]);
        let elected = s[0].1.unwrap();
        assert_eq!(
            (elected.min, elected.median, elected.max),
            (600.0, 700.0, 900.0)
        );
        // No round of none had every holder renew.
        assert_eq!(s[2].1, None);

        let md = markdown(&report);
        assert!(md.contains("## replication = \"quorum\""), "{md}");
        assert!(
            md.contains(
                "| kill → first grant of a free resource (ms) | 3 | 41600 | 41700 | 41900 |"
            ),
            "{md}"
        );
        assert!(md.contains("lost: 16 stale, 0 expired"), "{md}");
        assert!(md.contains("| quorum | kill → first grant of a free resource, median | ≤ 1000 ms | 1550 ms | **no** |"), "{md}");
    }

    #[test]
    fn a_mode_without_rounds_is_not_measured() {
        let report = report(vec![Mode {
            replication: "quorum".into(),
            about: String::new(),
            rounds: Vec::new(),
            error: Some("the cluster did not start".into()),
        }]);
        let t = targets(&report);
        assert_eq!(t[0].met, Some(false), "0 rounds is not 20");
        assert!(t[1..].iter().all(|t| t.met.is_none()), "{t:?}");
        let md = markdown(&report);
        assert!(md.contains("**Stopped early:** the cluster did not start"));
    }
}

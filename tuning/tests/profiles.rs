//! Every shipped profile in `tuning/profiles/` loads with the real config
//! loader, writes out every section, and its timings are what the model of
//! `palisade tune` gives for the inputs its `# tune-model:` line states and
//! its own `leases.replication` (as `palisade tune --config` takes it), and
//! its comments state the model's figures for that mode (so the comments
//! cannot drift from the numbers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_tuning::tune::{recommend, violations, RttFit, TuneInputs};
use palisade_tuning::{parse_duration, Config, FsSource, Replication};

fn profiles() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tuning/profiles exists")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// The `key=value` pairs of the `# tune-model:` line.
fn model_line(text: &str, path: &Path) -> HashMap<String, String> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("# tune-model:"))
        .unwrap_or_else(|| panic!("{} has no `# tune-model:` line", path.display()));
    line.split_whitespace()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: bad pair {pair:?}", path.display()));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_three_named_profiles_ship() {
    let names: Vec<String> = profiles()
        .iter()
        .map(|path| {
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for name in [
        "lan-low-latency.toml",
        "cross-zone.toml",
        "high-latency-link.toml",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
}

#[test]
fn every_profile_validates_and_is_complete() {
    for path in profiles() {
        let config = Config::load(&path, &FsSource)
            .unwrap_or_else(|errors| panic!("{}:\n{errors}", path.display()));
        let text = std::fs::read_to_string(&path).expect("read");
        // Complete: every section the built-in default writes out (so a
        // section added to the schema must be added here too).
        let default = Config::builtin_default().to_toml();
        let sections = default
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with('['))
            .chain(["[[cluster.peers]]"]);
        for section in sections {
            assert!(
                text.lines().any(|line| line.trim() == section),
                "{}: no {section}",
                path.display()
            );
        }
        // Every timing is written, not left to a default.
        for key in ["heartbeat_interval", "election_timeout", "max_ttl"] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{key} ="))),
                "{}: {key} is not written out",
                path.display()
            );
        }
        assert!(config.members().len() >= 3, "{}", path.display());
    }
}

#[test]
fn every_profile_is_what_the_model_recommends() {
    for path in profiles() {
        let config = Config::load(&path, &FsSource).expect("validated above");
        let text = std::fs::read_to_string(&path).expect("read");
        let model = model_line(&text, &path);
        let number = |key: &str| -> f64 {
            model
                .get(key)
                .unwrap_or_else(|| panic!("{}: tune-model lacks {key}", path.display()))
                .parse()
                .unwrap_or_else(|_| panic!("{}: {key} is not a number", path.display()))
        };
        let duration = |key: &str| -> Duration {
            let text = model
                .get(key)
                .unwrap_or_else(|| panic!("{}: tune-model lacks {key}", path.display()));
            parse_duration(text).unwrap_or_else(|why| panic!("{}: {key}: {why}", path.display()))
        };
        let fit = RttFit::from_summary(
            number("rtt_min_us"),
            number("rtt_mean_us"),
            number("rtt_p99_us"),
            number("rtt_max_us"),
        )
        .expect("a valid summary");
        // max_ttl is an input only with quorum (kept, not derived): the
        // line states it if the profile chose one, else it is the built-in
        // default; never the file's own value, which is what is checked.
        let max_ttl = if model.contains_key("max_ttl") {
            duration("max_ttl")
        } else {
            TuneInputs::default().max_ttl
        };
        let inputs = TuneInputs {
            mtbf: duration("mtbf"),
            fp_fraction: number("fp_fraction"),
            availability: number("availability"),
            heartbeat_min: duration("heartbeat_min"),
            fsync: duration("fsync"),
            max_ttl,
            ..TuneInputs::from_config(&config)
        };
        let (cluster, leases) = (&config.cluster, &config.leases);
        let broken = violations(
            &fit,
            &inputs,
            cluster.heartbeat_interval,
            cluster.election_timeout,
            leases.max_ttl,
        );
        assert!(broken.is_empty(), "{}: {broken:#?}", path.display());
        // The model's constraints, spelled out once more: T ≥ 3h, and the
        // shortest suspicion time outlasts a heartbeat plus the worst RTT.
        assert!(cluster.election_timeout >= 3 * cluster.heartbeat_interval);
        let worst_rtt = Duration::from_secs_f64(fit.max_us / 1e6);
        assert!(
            cluster.election_timeout - cluster.heartbeat_interval
                > cluster.heartbeat_interval + worst_rtt
        );

        let advice = recommend(&fit, &inputs).expect("feasible");
        let got = (
            cluster.heartbeat_interval,
            cluster.election_timeout,
            leases.max_ttl,
        );
        let want = (
            advice.heartbeat_interval,
            advice.election_timeout,
            advice.max_ttl,
        );
        assert_eq!(got, want, "{}: {advice:#?}", path.display());
        assert_eq!(config.grace_period(), advice.prediction.grace);

        // The comments state the mode's figures, to the millisecond.
        let p = &advice.prediction;
        let seconds = |d: Duration| format!("{:.3}s", d.as_secs_f64());
        let mut stated = vec![seconds(p.grace)];
        match config.leases.replication {
            Replication::Quorum => {
                let rearmed = p.rearmed_ttl_max.expect("quorum re-arms");
                stated.extend([seconds(rearmed), seconds(p.held_resource_free_max)]);
                for stale in [
                    "grace period after every failover",
                    "max_ttl from the availability target",
                ] {
                    assert!(
                        !text.contains(stale),
                        "{}: says {stale:?}, which holds only with replication = \"none\"",
                        path.display()
                    );
                }
            }
            Replication::None => stated.push(seconds(p.grants_resume_max)),
        }
        for figure in stated {
            assert!(
                text.contains(&figure),
                "{}: its comments do not state {figure}: {p:#?}",
                path.display()
            );
        }
    }
}

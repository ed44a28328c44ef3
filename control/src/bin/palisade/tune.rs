//! `palisade tune`: measure round trips to the configured peers over the
//! peer transport (or read them from a file), run the model of
//! [`palisade_tuning::tune`] for the lease replication mode (the config's
//! `leases.replication`, else `--replication`), print the advice, and
//! optionally write it as a config snippet. The model is there; this is
//! only the I/O around it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_control::node::cluster_secret;
use palisade_control::transport::Prober;
use palisade_tuning::tune::{self, MaxTtlRule, Recommendation, RttFit, TuneInputs};
use palisade_tuning::{format_duration, parse_duration, Config, FsSource, Replication};
use serde_json::json;

/// Flags of `palisade tune`.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// Config file: its peers are measured (as this node, from its peer
    /// address, with its cluster secret), and its cluster size and lease
    /// settings (replication mode and max_ttl included) feed the model.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Lease replication mode to advise for when no --config is given:
    /// "quorum" (the default: a failover keeps every lease and owes no
    /// grace period) or "none" (every failover owes the grace period, and
    /// max_ttl is derived from --availability).
    #[arg(long, value_parser = replication_arg, conflicts_with = "config")]
    replication: Option<Replication>,
    /// Worst time of one fsync of the raft log on the members' disks; with
    /// quorum an election waits for three in a row.
    #[arg(long, default_value = "10ms", value_parser = duration_arg)]
    fsync: Duration,
    /// Read RTTs from this file instead of measuring: one RTT in
    /// microseconds per line; blank lines and `#` comments are skipped.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Pings per peer (each one round trip), 30..=10000.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(30..=10_000))]
    count: u64,
    /// Time between pings, at most 1s.
    #[arg(long, default_value = "10ms", value_parser = duration_arg)]
    interval: Duration,
    /// Mean time between failures of one node (failures are a Poisson
    /// process with rate 1/mtbf).
    #[arg(long, default_value = "168h", value_parser = duration_arg)]
    mtbf: Duration,
    /// False suspicions allowed, as a fraction of the true failure rate.
    #[arg(long, default_value_t = 0.01)]
    fp_fraction: f64,
    /// Availability target for new grants: with replication "none" it sets
    /// max_ttl; with "quorum" the failover is checked against it.
    #[arg(long, default_value_t = 0.9999)]
    availability: f64,
    /// Shortest heartbeat interval to recommend.
    #[arg(long, default_value = "10ms", value_parser = duration_arg)]
    heartbeat_min: Duration,
    /// Cluster size (default: the config's members, else 3).
    #[arg(long)]
    members: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the advice as a config snippet (TOML) to this file.
    #[arg(long)]
    write_snippet: Option<PathBuf>,
}

/// Longest pause between pings: 10000 pings still finish within hours.
const INTERVAL_MAX: Duration = Duration::from_secs(1);

fn duration_arg(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    parse_duration(text)
}

fn replication_arg(text: &str) -> Result<Replication, palisade_tuning::ValueError> {
    text.parse()
}

/// Where the lease inputs that decide the mode's advice came from, for the
/// output.
struct LeaseSources {
    /// `"config"`, `"--replication"` or `"default"`.
    replication: &'static str,
    /// `"config"` or `"default"` (the built-in 30s).
    max_ttl: &'static str,
}

/// One peer's round trips as measured, µs.
struct Measured {
    id: u16,
    addr: SocketAddr,
    rtts_us: Vec<f64>,
}

/// One peer's fitted round trips.
struct PeerRtts {
    id: u16,
    addr: SocketAddr,
    fit: RttFit,
}

/// Runs `palisade tune`.
pub fn run(args: &TuneArgs) -> Result<()> {
    if args.interval > INTERVAL_MAX {
        bail!(
            "--interval must be at most {}, got {}",
            format_duration(INTERVAL_MAX),
            format_duration(args.interval)
        );
    }
    let config =
        match &args.config {
            Some(path) => Some(Config::load(path, &FsSource).map_err(|errors| {
                anyhow::anyhow!("invalid config {}:\n{errors}", path.display())
            })?),
            None => None,
        };
    let (samples_us, peers, source) = match (&args.samples, &config) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let samples = tune::parse_samples(&text)
                .with_context(|| format!("in samples file {}", path.display()))?;
            (
                samples,
                Vec::new(),
                format!("read from samples file {}", path.display()),
            )
        }
        (None, Some(config)) => {
            let peers = measure(config, args)?;
            let samples = peers
                .iter()
                .flat_map(|peer| peer.rtts_us.iter().copied())
                .collect();
            let peers = peers
                .into_iter()
                .map(|peer| {
                    Ok(PeerRtts {
                        id: peer.id,
                        addr: peer.addr,
                        fit: RttFit::from_samples(&peer.rtts_us)?,
                    })
                })
                .collect::<Result<Vec<_>, tune::TuneError>>()?;
            let from = config.node.id;
            (
                samples,
                peers,
                format!("measured over the peer transport from node {from}"),
            )
        }
        (None, None) => bail!(
            "nothing to tune from: give --config FILE to measure its peers, or --samples FILE"
        ),
    };
    let fit = RttFit::from_samples(&samples_us).context("fitting the RTT samples")?;
    let mut inputs = config
        .as_ref()
        .map_or_else(TuneInputs::default, TuneInputs::from_config);
    let sources = match (&config, args.replication) {
        (Some(_), _) => LeaseSources {
            replication: "config",
            max_ttl: "config",
        },
        (None, Some(replication)) => {
            inputs.replication = replication;
            LeaseSources {
                replication: "--replication",
                max_ttl: "default",
            }
        }
        (None, None) => LeaseSources {
            replication: "default",
            max_ttl: "default",
        },
    };
    inputs.fsync = args.fsync;
    inputs.mtbf = args.mtbf;
    inputs.fp_fraction = args.fp_fraction;
    inputs.availability = args.availability;
    inputs.heartbeat_min = args.heartbeat_min;
    if let Some(members) = args.members {
        inputs.members = members;
    }
    let advice = tune::recommend(&fit, &inputs)?;

    if let Some(path) = &args.write_snippet {
        write_snippet(path, &advice, &inputs, &source)?;
    }
    if args.json {
        println!(
            "{}",
            to_json(&source, &peers, &fit, &inputs, &sources, &advice)
        );
    } else {
        print!(
            "{}",
            to_text(&source, &peers, &fit, &inputs, &sources, &advice)
        );
    }
    Ok(())
}

/// Pings every other member of `config`'s cluster over the peer transport,
/// all at once (one thread each).
fn measure(config: &Config, args: &TuneArgs) -> Result<Vec<Measured>> {
    let members = config.members();
    let me = config.node.id;
    let targets: Vec<(u16, SocketAddr)> = members
        .iter()
        .filter(|member| member.id != me)
        .filter_map(|member| member.peer.map(|addr| (member.id, addr)))
        .collect();
    if targets.is_empty() {
        bail!(
            "the config lists no other members ([[cluster.peers]]) to measure; a cluster of one \
             has no heartbeats to tune"
        );
    }
    let secret = cluster_secret(config)?;
    let bind_ip = config.peer_listen().map(|addr| addr.ip());
    let prober = Prober::new(me, &config.cluster.name, &secret, bind_ip);
    let count = usize::try_from(args.count).expect("at most 10000");
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&(id, addr)| {
                let prober = &prober;
                scope.spawn(move || prober.rtts(id, addr, count, args.interval))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a prober thread panicked"))
            .collect()
    });
    let mut measured = Vec::new();
    for ((id, addr), result) in targets.into_iter().zip(results) {
        let rtts = result.with_context(|| {
            format!(
                "measuring peer {id} at {addr} over the peer transport (is it running, and does \
                 it share this cluster's name and secret?)"
            )
        })?;
        let rtts_us = rtts.iter().map(|rtt| rtt.as_nanos() as f64 / 1e3).collect();
        measured.push(Measured { id, addr, rtts_us });
    }
    Ok(measured)
}

fn write_snippet(
    path: &Path,
    advice: &Recommendation,
    inputs: &TuneInputs,
    source: &str,
) -> Result<()> {
    let header = [
        format!("written by `palisade tune`; RTTs {source}"),
        format!(
            "model inputs: {} members, mtbf {}, fp fraction {}, availability {}, heartbeat floor \
             {}, replication {}, fsync {}",
            inputs.members,
            format_duration(inputs.mtbf),
            inputs.fp_fraction,
            inputs.availability,
            format_duration(inputs.heartbeat_min),
            inputs.replication.as_str(),
            format_duration(inputs.fsync)
        ),
        "merge these keys into every member's config (they must agree)".to_owned(),
    ];
    let text = tune::snippet(advice, inputs, &header);
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    // Pair the write with a read: the snippet must load on its own.
    Config::load(path, &FsSource).map_err(|errors| {
        anyhow::anyhow!(
            "the snippet written to {} does not load:\n{errors}",
            path.display()
        )
    })?;
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn fit_json(fit: &RttFit) -> serde_json::Value {
    json!({
        "samples": fit.count,
        "min_us": fit.min_us,
        "mean_us": fit.mean_us,
        "p99_us": fit.p99_us,
        "max_us": fit.max_us,
    })
}

fn to_json(
    source: &str,
    peers: &[PeerRtts],
    fit: &RttFit,
    inputs: &TuneInputs,
    sources: &LeaseSources,
    advice: &Recommendation,
) -> serde_json::Value {
    let p = &advice.prediction;
    let mut fit_value = fit_json(fit);
    fit_value["model"] = json!("shifted-exponential");
    fit_value["jitter_mean_us"] = json!(fit.jitter_mean_us());
    json!({
        "source": source,
        "peers": peers.iter().map(|peer| {
            let mut value = fit_json(&peer.fit);
            value["id"] = json!(peer.id);
            value["addr"] = json!(peer.addr.to_string());
            value
        }).collect::<Vec<_>>(),
        "fit": fit_value,
        "inputs": {
            "members": inputs.members,
            "mtbf_s": inputs.mtbf.as_secs_f64(),
            "fp_fraction": inputs.fp_fraction,
            "availability": inputs.availability,
            "heartbeat_min_ms": ms(inputs.heartbeat_min),
            "max_drift": inputs.max_drift,
            "lock_delay_max_ms": ms(inputs.lock_delay_max),
            "min_ttl_ms": ms(inputs.min_ttl),
            "replication": inputs.replication.as_str(),
            "replication_from": sources.replication,
            "max_ttl_ms": ms(inputs.max_ttl),
            "max_ttl_from": sources.max_ttl,
            "fsync_ms": ms(inputs.fsync),
        },
        "recommendation": {
            "heartbeat_interval": format_duration(advice.heartbeat_interval),
            "election_timeout": format_duration(advice.election_timeout),
            "max_ttl": format_duration(advice.max_ttl),
            "heartbeat_interval_ms": ms(advice.heartbeat_interval),
            "election_timeout_ms": ms(advice.election_timeout),
            "max_ttl_ms": ms(advice.max_ttl),
            "election_ticks": advice.election_ticks,
            "set_by": advice.binding.as_str(),
            "max_ttl_set_by": advice.max_ttl_rule.as_str(),
        },
        "prediction": {
            "failure_rate_per_s": p.failure_rate_per_s,
            "fp_budget_per_s": p.fp_budget_per_s,
            "fp_rate_per_s": p.fp_rate_per_s,
            "detection_expected_ms": ms(p.detection_expected),
            "detection_max_ms": ms(p.detection_max),
            "election_expected_ms": ms(p.election_expected),
            "election_max_ms": ms(p.election_max),
            "failover_expected_ms": ms(p.failover_expected),
            "failover_max_ms": ms(p.failover_max),
            "election_syncs_ms": ms(p.election_syncs),
            "grace_ms": ms(p.grace),
            "grace_after": match p.replication {
                Replication::None => "every failover",
                Replication::Quorum => "once",
            },
            "grants_resume_expected_ms": ms(p.grants_resume_expected),
            "grants_resume_max_ms": ms(p.grants_resume_max),
            "unavailability_budget_ms": ms(p.unavailability_budget),
            "availability_worst": p.availability_worst,
            "rearmed_ttl_max_ms": p.rearmed_ttl_max.map(ms),
            "held_resource_free_max_ms": ms(p.held_resource_free_max),
        },
    })
}

fn to_text(
    source: &str,
    peers: &[PeerRtts],
    fit: &RttFit,
    inputs: &TuneInputs,
    sources: &LeaseSources,
    advice: &Recommendation,
) -> String {
    let mut out = format!("RTTs {source}\n");
    for peer in peers {
        out.push_str(&format!(
            "  peer {} {}: {} pings, min {:.0} µs, mean {:.0} µs, p99 {:.0} µs, max {:.0} µs\n",
            peer.id,
            peer.addr,
            peer.fit.count,
            peer.fit.min_us,
            peer.fit.mean_us,
            peer.fit.p99_us,
            peer.fit.max_us
        ));
    }
    out.push_str(&format!(
        "fit: shifted exponential over {} samples: min {:.0} µs, mean {:.0} µs (jitter mean m = \
         {:.0} µs), p99 {:.0} µs, max {:.0} µs\n",
        fit.count,
        fit.min_us,
        fit.mean_us,
        fit.jitter_mean_us(),
        fit.p99_us,
        fit.max_us
    ));
    let p = &advice.prediction;
    out.push_str(&format!(
        "model: {} members, mtbf {} (λ = {:.3e}/s), fp fraction {}, availability {}, heartbeat \
         floor {}\n",
        inputs.members,
        format_duration(inputs.mtbf),
        p.failure_rate_per_s,
        inputs.fp_fraction,
        inputs.availability,
        format_duration(inputs.heartbeat_min)
    ));
    let quorum = inputs.replication == Replication::Quorum;
    let from = |source: &str| match source {
        "config" => "from the config",
        "--replication" => "from --replication",
        _ => "the default",
    };
    out.push_str(&format!(
        "leases: replication \"{}\" ({}), lock_delay_max {}, max_drift {}",
        inputs.replication.as_str(),
        from(sources.replication),
        format_duration(inputs.lock_delay_max),
        inputs.max_drift
    ));
    if quorum {
        out.push_str(&format!(
            ", max_ttl {} ({}), fsync {} assumed",
            format_duration(inputs.max_ttl),
            from(sources.max_ttl),
            format_duration(inputs.fsync)
        ));
    }
    out.push_str("\n\n");
    let max_ttl_note = match advice.max_ttl_rule {
        MaxTtlRule::Availability => "the longest the availability target allows",
        MaxTtlRule::Kept => "kept (see below)",
    };
    out.push_str(&format!(
        "recommended:\n  heartbeat_interval = \"{}\"\n  election_timeout = \"{}\"   # {} \
         heartbeats, set by the {} rule\n  max_ttl = \"{}\"   # {max_ttl_note}\n\n",
        format_duration(advice.heartbeat_interval),
        format_duration(advice.election_timeout),
        advice.election_ticks,
        advice.binding.as_str(),
        format_duration(advice.max_ttl)
    ));
    let round = |d: Duration| {
        let seconds = d.as_secs_f64();
        if seconds < 1e-3 {
            format!("{:.0} µs", seconds * 1e6)
        } else if seconds < 10.0 {
            format!("{:.1} ms", seconds * 1e3)
        } else {
            format!("{seconds:.2} s")
        }
    };
    out.push_str(&format!(
        "predicted (replication \"{}\"):\n  false suspicions: {:.3e}/s (budget {:.3e}/s = {} x \
         leader failure rate)\n  failover (new leader): {} mean, {} worst (detection {} / {}, \
         election {} / {})\n",
        inputs.replication.as_str(),
        p.fp_rate_per_s,
        p.fp_budget_per_s,
        inputs.fp_fraction,
        round(p.failover_expected),
        round(p.failover_max),
        round(p.detection_expected),
        round(p.detection_max),
        round(p.election_expected),
        round(p.election_max),
    ));
    let resume = format!(
        "{} mean, {} worst (budget {} per failure; availability {:.7} at worst)",
        round(p.grants_resume_expected),
        round(p.grants_resume_max),
        round(p.unavailability_budget),
        p.availability_worst
    );
    match p.rearmed_ttl_max {
        None => out.push_str(&format!(
            "  grace before new grants, after every failover: {}\n  new grants resume after: \
             {resume}\n",
            round(p.grace),
        )),
        Some(rearmed) => {
            out.push_str(&format!(
                "  new grants resume after the failover and 3 fsyncs ({}), no grace period: \
                 {resume}\n  a dead holder's resource is free again at most {} after a failure \
                 (its lease re-armed at the takeover to {}, then lock_delay_max {})\n  grace \
                 period {}: owed once only, by the first leader after an upgrade or a switch \
                 from \"none\", or when a new cluster's first election splits\n",
                round(p.election_syncs),
                round(p.held_resource_free_max),
                round(rearmed),
                format_duration(inputs.lock_delay_max),
                round(p.grace),
            ));
            out.push_str(&format!(
                "\nmax_ttl {} is kept ({}): with replication \"quorum\" a new leader keeps every \
                 lease and grants a free resource once it has committed an entry of its term, so \
                 max_ttl enters neither the failover nor the availability target. It bounds how \
                 long a dead holder's resource stays taken: lower it to free such resources \
                 sooner, at the cost of more renewals.\n",
                format_duration(advice.max_ttl),
                match sources.max_ttl {
                    "config" => "the config's",
                    _ => "the built-in default",
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tune: TuneArgs,
    }

    fn parse(args: &[&str]) -> Result<TuneArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("tune").chain(args.iter().copied())).map(|cli| cli.tune)
    }

    /// The samples of the CLI test: min 200, mean 220, p99 400, max 400 µs,
    /// so h = 10ms and T = 30ms.
    fn fit() -> RttFit {
        let mut samples = vec![200.0; 90];
        samples.extend([400.0; 10]);
        RttFit::from_samples(&samples).expect("fit")
    }

    const DEFAULTS: LeaseSources = LeaseSources {
        replication: "default",
        max_ttl: "default",
    };

    #[test]
    fn replication_is_a_flag_only_without_a_config() {
        let args = parse(&["--samples", "x"]).expect("parses");
        assert_eq!(args.replication, None);
        assert_eq!(args.fsync, Duration::from_millis(10));
        let args =
            parse(&["--samples", "x", "--replication", "none", "--fsync", "2ms"]).expect("parses");
        assert_eq!(args.replication, Some(Replication::None));
        assert_eq!(args.fsync, Duration::from_millis(2));
        assert!(parse(&["--replication", "sometimes"]).is_err());
        let error = parse(&["--config", "c.toml", "--replication", "none"])
            .expect_err("the config's mode is the one advised for");
        assert!(error.to_string().contains("cannot be used with"), "{error}");
    }

    #[test]
    fn quorum_output_keeps_max_ttl_and_says_why() {
        let inputs = TuneInputs::default();
        let advice = tune::recommend(&fit(), &inputs).expect("advice");
        let text = to_text("from a test", &[], &fit(), &inputs, &DEFAULTS, &advice);
        for words in [
            "replication \"quorum\" (the default)",
            "fsync 10ms assumed",
            "max_ttl = \"30s\"   # kept",
            "3 fsyncs (30.0 ms), no grace period: 70.7 ms mean, 91.2 ms worst",
            "re-armed at the takeover to 30.64 s",
            "free again at most 40.73 s",
            "grace period 40.43 s: owed once only",
            "max_ttl 30s is kept (the built-in default)",
        ] {
            assert!(text.contains(words), "{words}:\n{text}");
        }
        let json = to_json("from a test", &[], &fit(), &inputs, &DEFAULTS, &advice);
        assert_eq!(json["inputs"]["replication"], "quorum");
        assert_eq!(json["inputs"]["fsync_ms"], 10.0);
        assert_eq!(json["recommendation"]["max_ttl"], "30s");
        assert_eq!(json["recommendation"]["max_ttl_set_by"], "kept");
        assert_eq!(json["prediction"]["grace_after"], "once");
        assert_eq!(json["prediction"]["election_syncs_ms"], 30.0);
        assert_eq!(json["prediction"]["rearmed_ttl_max_ms"], 30_637.0);
    }

    #[test]
    fn none_output_is_the_grace_model() {
        let inputs = TuneInputs {
            replication: Replication::None,
            ..TuneInputs::default()
        };
        let sources = LeaseSources {
            replication: "--replication",
            max_ttl: "default",
        };
        let advice = tune::recommend(&fit(), &inputs).expect("advice");
        let text = to_text("from a test", &[], &fit(), &inputs, &sources, &advice);
        for words in [
            "replication \"none\" (from --replication)",
            "max_ttl = \"49s\"   # the longest the availability target allows",
            "grace before new grants, after every failover: 59.62 s",
        ] {
            assert!(text.contains(words), "{words}:\n{text}");
        }
        assert!(!text.contains("fsync"), "{text}");
        let json = to_json("from a test", &[], &fit(), &inputs, &sources, &advice);
        assert_eq!(json["recommendation"]["max_ttl_set_by"], "availability");
        assert_eq!(json["prediction"]["grace_after"], "every failover");
        assert!(json["prediction"]["rearmed_ttl_max_ms"].is_null());
    }
}

//! `palisade-bench load`: closed-loop load, a schedule of the one engine
//! ([`crate::compare::engine`]) over its codecs.
//!
//! Each connection keeps `--pipeline` independent cycles in flight (1 by
//! default: strictly one request at a time, like redis-benchmark without
//! `-P`) and starts the next one when an answer ends a cycle. Against
//! Palisade a cycle is an acquire of a random resource and, if granted,
//! its release (the Palisade codec); against Redis (`--target redis`) a
//! cycle is `SET lock:<n> <holder> NX PX <ttl>`, the command
//! redis-benchmark runs (the Redis codec's acquire). Every request counts
//! as one operation and its round trip, from its send to its answer, is
//! recorded.
//!
//! What it never does: assert a number, or read a clock or a socket
//! itself (the engine does both).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::compare::codec::CodecConfig;
use crate::compare::codec_for;
use crate::compare::engine::{self, RunResult, RunSpec, Schedule, Workload};

fn duration(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    palisade_tuning::parse_duration(text)
}

/// Arguments of `palisade-bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Node to load.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub(crate) endpoint: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub(crate) warmup: Duration,
    /// Resources to pick from at random.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) resources: u64,
    /// Lease ttl.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) ttl: Duration,
    /// CPU to pin the generator to.
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// Tenant.
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
    /// File holding the tenant secret (or set PALISADE_SECRET), for a
    /// tenant with a credential.
    #[arg(long)]
    pub(crate) secret_file: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Client engine. Only `epoll` is left (one thread, one read and one
    /// write per batch of ready requests, like redis-benchmark); the
    /// glommio client was removed when `load` moved onto the engine of
    /// `compare`.
    #[arg(long, default_value = "epoll")]
    engine: String,
    /// What to load: `palisade`, or `redis` (`SET lock:<n> <holder> NX PX
    /// <ttl>`).
    #[arg(long, default_value = "palisade")]
    pub(crate) target: String,
    /// Independent cycles in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub(crate) pipeline: usize,
}

/// The run `args` ask for, against `addr`.
fn spec(args: &LoadArgs, addr: SocketAddr, workload: Workload) -> RunSpec {
    RunSpec {
        addr,
        connections: args.connections,
        schedule: Schedule::Closed {
            in_flight: args.pipeline.max(1),
        },
        warmup: args.warmup,
        duration: args.duration,
        workload,
        resources: args.resources,
        held_per_connection: 0,
        resource_base: 0,
        cpu: args.cpu,
        // A closed loop never has more than connections × pipeline
        // requests unanswered.
        outstanding_max: usize::MAX,
        drain: Duration::from_secs(5),
        seed: 0x2545_f491_4f6c_dd1d,
    }
}

/// Runs the load and prints the result.
pub fn run(args: &LoadArgs) -> Result<()> {
    if args.engine != "epoll" {
        bail!(
            "unknown --engine {:?}: only epoll is left (the glommio client was removed; load runs on the engine of compare)",
            args.engine
        );
    }
    let redis = match args.target.as_str() {
        "palisade" => false,
        "redis" => true,
        other => bail!("unknown --target {other:?}; use palisade or redis"),
    };
    let addr = args
        .endpoint
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.endpoint))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.endpoint))?;
    let config = CodecConfig {
        ttl_ms: u32::try_from(args.ttl.as_millis()).context("--ttl is too long")?,
        tenant: args.tenant.clone(),
        echo_size: 0,
        secret: if redis {
            None
        } else {
            palisade_client::handshake::read_secret(args.secret_file.as_deref())?
        },
    };
    let workload = if redis {
        Workload::AcquireOnly
    } else {
        Workload::Uncontended
    };
    let result = engine::run(&spec(args, addr, workload), &|| {
        codec_for(&args.target, &config, addr)
    })?;
    if let Some(why) = &result.overloaded {
        bail!("the run was cut short: {why}");
    }
    report(args, &result);
    Ok(())
}

fn report(args: &LoadArgs, result: &RunResult) {
    let histogram = &result.requests;
    let seconds = args.duration.as_secs_f64();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let ops = histogram.len() - result.unanswered;
    let ops_per_s = ops as f64 / seconds;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "target": args.target,
                "connections": args.connections,
                "pipeline": args.pipeline.max(1),
                "duration_s": seconds,
                "ops": ops,
                "ops_per_s": ops_per_s.round(),
                "grants": result.granted,
                "busy": result.busy,
                "p50_us": us(0.5),
                "p99_us": us(0.99),
                "p999_us": us(0.999),
                "max_us": histogram.max() as f64 / 1000.0,
            })
        );
    } else {
        println!(
            "{} {} connections x {} in flight, {:.0} ops/s ({} ops in {seconds:.1}s; {} grants, {} busy)",
            args.target, args.connections, args.pipeline.max(1), ops_per_s, ops, result.granted, result.busy
        );
        println!(
            "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(0.5),
            us(0.99),
            us(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
}

//! `palisade-bench failover`: leader kills on a real three-node cluster,
//! with live lease holders, for each `leases.replication` mode.
//!
//! Per mode it starts a fresh loopback cluster of `palisade serve`
//! processes (configs from [`ClusterSpec`], the same place `compare` gets
//! its clusters from), acquires one resource per live holder and keeps
//! each alive from its own thread ([`holder`]), then, round after round,
//! SIGKILLs the leader and measures: kill → a survivor reports itself
//! leader in a later epoch; kill → the first grant of a resource nobody
//! held; which holders lost their lease or saw their token change; restart
//! of the killed node → it follows the new leader. It writes RESULTS.md
//! and results.json ([`report`]) after every round, so a run cut short
//! keeps what it measured. It measures; it never asserts a number.

pub(crate) mod holder;
pub(crate) mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_client::{random_holder, Client, ConnectOptions};
use palisade_proto::{Request, Response, Role};
use palisade_tuning::{Config, LogLevel, Replication};

use crate::compare::systems::{self, Cluster, ClusterSpec, Placement};
use crate::compare::{command_line, command_output, load_average, machine};
use holder::Holder;
use palisade_host::clock::monotonic_ns;
use report::{FailoverReport, Mode, Round, Settings};

fn duration(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    palisade_tuning::parse_duration(text)
}

fn replication(text: &str) -> Result<Replication, palisade_tuning::ValueError> {
    text.parse()
}

/// Arguments of `palisade-bench failover`.
#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Leader kills per replication mode.
    #[arg(long, default_value_t = 20)]
    pub(crate) rounds: u32,
    /// `leases.replication` modes to run, comma-separated (quorum, none);
    /// each gets a fresh cluster.
    #[arg(long, value_delimiter = ',', default_value = "quorum,none", value_parser = replication)]
    pub(crate) replication: Vec<Replication>,
    /// Live holders kept alive through the kills, one resource each.
    #[arg(long, default_value_t = 16)]
    pub(crate) holders: usize,
    /// Lease ttl of the holders.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) holder_ttl: Duration,
    /// How often holders renew (default: a third of --holder-ttl).
    #[arg(long, value_parser = duration)]
    pub(crate) renew_every: Option<Duration>,
    /// `cluster.heartbeat_interval` (the LAN profile of the issue).
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub(crate) heartbeat: Duration,
    /// `cluster.election_timeout`.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub(crate) election_timeout: Duration,
    /// `leases.max_ttl`.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub(crate) max_ttl: Duration,
    /// `leases.lock_delay_max` (the built-in default; it lengthens the
    /// grace of `replication = "none"`).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) lock_delay_max: Duration,
    /// Pause between two passes of the leader and grant probes over the
    /// survivors.
    #[arg(long, default_value = "5ms", value_parser = duration)]
    pub(crate) probe_interval: Duration,
    /// Give up on a round's measure this long after the kill (default:
    /// the grace of `none` plus 30 s).
    #[arg(long, value_parser = duration)]
    pub(crate) round_timeout: Option<Duration>,
    /// Where RESULTS.md and results.json go.
    #[arg(long, default_value = "bench/results/failover")]
    pub(crate) out: PathBuf,
    /// The `palisade` binary (default: next to this one).
    #[arg(long)]
    pub(crate) palisade_bin: Option<PathBuf>,
}

/// Ttl of the grant probe's lease (released at once anyway).
const PROBE_TTL_MS: u32 = 1000;
/// Time allowed for one probe answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Time a restarted node has to follow, and the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

impl FailoverArgs {
    fn renew_every(&self) -> Duration {
        self.renew_every.unwrap_or(self.holder_ttl / 3)
    }

    fn spec(&self, replication: Replication) -> ClusterSpec {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ClusterSpec {
            nodes: 3,
            replication,
            heartbeat: self.heartbeat,
            election_timeout: self.election_timeout,
            max_ttl: self.max_ttl,
            lock_delay_max: self.lock_delay_max,
            table_capacity: Config::builtin_default().leases.table_capacity,
            log_level: LogLevel::Info,
            busy_poll: Config::builtin_default().dataplane.busy_poll,
            placement: Placement::Spread { cpus },
        }
    }

    fn round_timeout(&self) -> Duration {
        self.round_timeout
            .unwrap_or(self.spec(Replication::None).grace_period() + Duration::from_secs(30))
    }

    /// Refuses settings the run cannot measure.
    pub(crate) fn check(&self) -> Result<()> {
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if self.replication.is_empty() {
            bail!("--replication needs quorum, none or both");
        }
        if self.max_ttl < Duration::from_millis(u64::from(PROBE_TTL_MS)) {
            bail!("--max-ttl must be at least the grant probe's ttl ({PROBE_TTL_MS} ms)");
        }
        let min_ttl = Config::builtin_default().leases.min_ttl;
        if self.holder_ttl < min_ttl || self.holder_ttl > self.max_ttl {
            bail!(
                "--holder-ttl must be within leases.min_ttl ({} ms) and --max-ttl ({} ms)",
                min_ttl.as_millis(),
                self.max_ttl.as_millis()
            );
        }
        let every = self.renew_every();
        if every.is_zero() || every >= self.holder_ttl {
            bail!("--renew-every must be above 0 and below --holder-ttl");
        }
        if self.probe_interval.is_zero() {
            bail!("--probe-interval must be above 0");
        }
        // Every node config must be valid before anything starts.
        for &mode in &self.replication {
            let spec = self.spec(mode);
            let addr: SocketAddr = "127.0.0.1:1".parse()?;
            let peer: SocketAddr = "127.0.0.1:2".parse()?;
            spec.config(1, &[(1, peer, addr)], Path::new("/d"), Path::new("/s"))?;
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn elapsed_ms(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e6
}

fn method(args: &FailoverArgs) -> String {
    format!(
        "A fresh three-node loopback cluster of `palisade serve` processes per replication mode \
(node configs written by the bench's `ClusterSpec`, the same code `compare` uses). Node i runs \
its one data-plane executor on CPU (i − 1) mod {cpus} (`node.cores`; glommio pins it); nothing \
else is pinned (no taskset): with {cpus} CPUs the three nodes, the holders and the probes share \
them, with each other and with whatever else runs on the machine. {holders} live holders each \
acquire a resource of their own with a ttl of {ttl} ms and renew it every {every} ms from a \
thread of their own; on any error a holder drops its connection and tries the next node every \
20 ms until a renewal succeeds, the answer is `stale`, or its client-side validity (send time + \
ttl × (1 − max_drift) − 1 ms) has passed. That retry loop is the bench's own: the client \
library's `KeepAliveThread` stays on one connection (following the leader across endpoints is \
being added to the library). Each round: wait until one node leads and the two others follow \
it in its epoch; replace the holders lost in the previous round by new holders of fresh \
resources; connect the probes to the two survivors; read the monotonic clock and SIGKILL the \
leader. The leader probe asks both survivors for `status` every {probe} ms until one says it \
leads in a later epoch. The grant probe sends `Acquire` (ttl {probe_ttl} ms, no wait) of a \
resource nobody ever held (a fresh name per round) to each survivor in turn every {probe} ms, \
without following redirects, until one grants. Times run from just before the kill signal to \
the moment the answer was read; their resolution is the probe interval. A holder has lost its \
lease when a renewal was answered `stale` or its validity ran out; its token changed when a \
renewal answered with another token. Then the killed node is restarted from its data \
directory, and the round ends once all three nodes agree on one leader and epoch (polled every \
10 ms).",
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
        holders = args.holders,
        ttl = millis(args.holder_ttl),
        every = millis(args.renew_every()),
        probe = millis(args.probe_interval),
        probe_ttl = PROBE_TTL_MS,
    )
}

/// `palisade-bench failover`.
pub fn run(args: &FailoverArgs) -> Result<()> {
    args.check()?;
    let bin = systems::palisade_bin(args.palisade_bin.as_deref())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let none = args.spec(Replication::None);
    let mut report = FailoverReport {
        command: command_line(),
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine(),
        load_before: load_average(),
        load_after: String::new(),
        method: method(args),
        settings: Settings {
            rounds: args.rounds,
            holders: args.holders,
            holder_ttl_ms: millis(args.holder_ttl),
            renew_every_ms: millis(args.renew_every()),
            heartbeat_ms: millis(args.heartbeat),
            election_timeout_ms: millis(args.election_timeout),
            max_ttl_ms: millis(args.max_ttl),
            lock_delay_max_ms: millis(args.lock_delay_max),
            max_drift: Config::builtin_default().leases.max_drift,
            grace_none_ms: millis(none.grace_period()),
            probe_interval_ms: millis(args.probe_interval),
        },
        modes: Vec::new(),
    };
    for &replication in &args.replication {
        eprintln!("failover: replication = \"{}\"", replication.as_str());
        report.modes.push(Mode {
            replication: replication.as_str().into(),
            about: String::new(),
            rounds: Vec::new(),
            error: None,
        });
        let result = run_mode(args, &bin, replication, &mut |mode: &Mode| {
            *report.modes.last_mut().expect("pushed above") = mode.clone();
            report.load_after = load_average();
            write(&report, &args.out)
        });
        if let Err(e) = result {
            eprintln!("failover: {}: {e:#}", replication.as_str());
            let mode = report.modes.last_mut().expect("pushed above");
            mode.error = Some(format!("{e:#}"));
        }
    }
    report.load_after = load_average();
    write(&report, &args.out)?;
    print_summary(&report);
    Ok(())
}

fn write(report: &FailoverReport, out: &Path) -> Result<()> {
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("RESULTS.md");
    std::fs::write(&md, report::markdown(report))
        .with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

fn print_summary(report: &FailoverReport) {
    for mode in &report.modes {
        println!("replication = \"{}\"", mode.replication);
        if let Some(e) = &mode.error {
            println!("  stopped early: {e}");
        }
        for (name, s) in report::summaries(mode) {
            match s {
                Some(s) => println!(
                    "  {name}: min {:.0}, median {:.0}, max {:.0} ({} rounds)",
                    s.min, s.median, s.max, s.count
                ),
                None => println!("  {name}: not measured"),
            }
        }
    }
    for t in report::targets(report) {
        println!(
            "target ({}): {} — needed {}, measured {}, {}",
            t.mode,
            t.name,
            t.needed,
            t.measured,
            match t.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        );
    }
}

/// One replication mode: a fresh cluster, its holders, `args.rounds`
/// kills. Calls `on_round` with the mode so far after each round. An
/// error means the cluster could not go on (the rounds so far stand).
fn run_mode(
    args: &FailoverArgs,
    bin: &Path,
    replication: Replication,
    on_round: &mut dyn FnMut(&Mode) -> Result<()>,
) -> Result<()> {
    let spec = args.spec(replication);
    let mut cluster = Cluster::start(bin, &spec)?;
    cluster
        .wait_granting(spec.grace_period() + Duration::from_secs(60))
        .context("waiting for the new cluster's first grant")?;
    eprintln!(
        "failover: configs, data and logs in {} (removed at the end)",
        cluster.dir().display()
    );
    let mut mode = Mode {
        replication: replication.as_str().into(),
        about: format!(
            "{}, 3 nodes on loopback, data planes spread over the CPUs, nothing pinned with taskset, leases.replication = \"{}\"",
            systems::palisade_version(bin),
            replication.as_str()
        ),
        rounds: Vec::new(),
        error: None,
    };
    on_round(&mode)?;
    let endpoints: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.client.to_string())
        .collect();
    let mut holders: Vec<Option<Holder>> = (0..args.holders).map(|_| None).collect();
    let mut generation = 0u32;
    for index in 1..=args.rounds {
        generation += 1;
        let mut round = Round {
            index,
            ..Round::default()
        };
        let result = one_round(
            args,
            &mut cluster,
            &endpoints,
            &mut holders,
            generation,
            &mut round,
        );
        let fatal = result.err();
        if let Some(e) = &fatal {
            round.error = Some(format!("{e:#}"));
        }
        eprintln!(
            "failover: {} round {index}: killed {} (epoch {}), elected {} ms, first grant {} ms, holders lost {}/{}, tokens changed {}, rejoined {} ms{}",
            replication.as_str(),
            round.killed,
            round.killed_epoch,
            round.elected_ms.map_or("–".into(), |v| format!("{v:.0}")),
            round.first_grant_ms.map_or("–".into(), |v| format!("{v:.0}")),
            round.holders_lost,
            round.holders,
            round.tokens_changed,
            round.rejoined_ms.map_or("–".into(), |v| format!("{v:.0}")),
            round.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        mode.rounds.push(round);
        on_round(&mode)?;
        if let Some(e) = fatal {
            return Err(e);
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<Client> {
    let mut options = ConnectOptions::new(addr.to_string(), "default");
    options.connect_timeout = PROBE_TIMEOUT;
    options.request_timeout = PROBE_TIMEOUT;
    options.identity.client_name = "palisade-bench failover probe".into();
    Client::connect(&options).with_context(|| format!("connecting to {addr}"))
}

fn status(addr: SocketAddr) -> Result<palisade_proto::StatusInfo> {
    Ok(connect(addr)?.status()?)
}

/// Waits until one running node leads and every other running node
/// follows it in its epoch; returns (leader id, epoch).
fn stable_leader(cluster: &mut Cluster, timeout: Duration, poll: Duration) -> Result<(u16, u32)> {
    let until = monotonic_ns() + u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    loop {
        cluster.check_running()?;
        let seen: Vec<(u16, Result<palisade_proto::StatusInfo>)> = cluster
            .nodes()
            .iter()
            .map(|n| (n.id, status(n.client)))
            .collect();
        let leaders: Vec<(u16, u32)> = seen
            .iter()
            .filter_map(|(id, s)| match s {
                Ok(s) if s.role == Role::Leader => Some((*id, s.epoch)),
                _ => None,
            })
            .collect();
        if let [(leader, epoch)] = leaders[..] {
            let all_follow = seen.iter().all(|(id, s)| {
                *id == leader
                    || matches!(s, Ok(s) if s.role == Role::Follower && s.leader_id == leader && s.epoch == epoch)
            });
            if all_follow {
                return Ok((leader, epoch));
            }
        }
        let last = seen
            .iter()
            .map(|(id, s)| match s {
                Ok(s) => format!(
                    "node {id}: {} epoch {} leader {}",
                    s.role.as_str(),
                    s.epoch,
                    s.leader_id
                ),
                Err(e) => format!("node {id}: {e:#}"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        if monotonic_ns() > until {
            bail!(
                "no stable leader within {:.0} s ({last})",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(poll);
    }
}

/// Polls `status` on the survivors until one leads in an epoch after
/// `old_epoch`; returns (when, its id, its epoch).
fn watch_leader(
    mut clients: Vec<(SocketAddr, Option<Client>)>,
    old_epoch: u32,
    interval: Duration,
    deadline_ns: u64,
) -> Result<(u64, u16, u32)> {
    loop {
        for (addr, client) in &mut clients {
            if client.is_none() {
                *client = connect(*addr).ok();
            }
            if let Some(c) = client.as_mut() {
                match c.status() {
                    Ok(s) if s.role == Role::Leader && s.epoch > old_epoch => {
                        return Ok((monotonic_ns(), s.node_id, s.epoch));
                    }
                    Ok(_) => {}
                    Err(_) => *client = None,
                }
            }
        }
        if monotonic_ns() > deadline_ns {
            bail!("no survivor reported itself leader in a later epoch");
        }
        std::thread::sleep(interval);
    }
}

/// Sends `Acquire` of `resource` to the survivors in turn until one
/// grants; returns (when, token). Releases the grant.
fn probe_grant(
    mut clients: Vec<(SocketAddr, Option<Client>)>,
    resource: &str,
    interval: Duration,
    deadline_ns: u64,
) -> Result<(u64, u64)> {
    let acquire = Request::Acquire {
        resource: resource.into(),
        holder: random_holder(),
        ttl_ms: PROBE_TTL_MS,
        lock_delay_ms: 0,
        wait_ms: 0,
    };
    let mut last = String::from("no answer");
    loop {
        for (addr, client) in &mut clients {
            if client.is_none() {
                *client = connect(*addr).ok();
            }
            let Some(c) = client.as_mut() else { continue };
            match c.call(&acquire) {
                Ok(Response::Granted { token, .. }) => {
                    let at = monotonic_ns();
                    let _ = c.call(&Request::Release {
                        resource: resource.into(),
                        token,
                    });
                    return Ok((at, token));
                }
                Ok(other) => last = format!("{addr}: {other:?}"),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    *client = None;
                }
            }
        }
        if monotonic_ns() > deadline_ns {
            bail!("no survivor granted {resource} (last answer: {last})");
        }
        std::thread::sleep(interval);
    }
}

/// One leader kill. Fills `round` as it goes; an error means the cluster
/// cannot go on.
fn one_round(
    args: &FailoverArgs,
    cluster: &mut Cluster,
    endpoints: &[String],
    holders: &mut [Option<Holder>],
    generation: u32,
    round: &mut Round,
) -> Result<()> {
    let (leader, epoch) = stable_leader(cluster, SETTLE_TIMEOUT, Duration::from_millis(50))?;
    round.killed = leader;
    round.killed_epoch = epoch;
    // Holders lost in the last round are replaced by new holders of fresh
    // resources (a lost lease may still be held at the server).
    for (i, slot) in holders.iter_mut().enumerate() {
        if slot.as_ref().is_some_and(|h| h.state().lost.is_none()) {
            continue;
        }
        *slot = None;
        let resource = format!("failover-h{i}-g{generation}");
        let deadline =
            monotonic_ns() + u64::try_from(SETTLE_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        *slot = Some(Holder::start(
            endpoints,
            &resource,
            args.holder_ttl,
            args.renew_every(),
            deadline,
        )?);
    }
    let live: Vec<&Holder> = holders.iter().flatten().collect();
    round.holders = u32::try_from(live.len()).unwrap_or(u32::MAX);
    let survivors: Vec<SocketAddr> = cluster
        .nodes()
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.client)
        .collect();
    // Connected before the kill, so the probes measure the cluster, not
    // a handshake.
    let connected = || -> Vec<(SocketAddr, Option<Client>)> {
        survivors.iter().map(|&a| (a, connect(a).ok())).collect()
    };
    let (watch_clients, grant_clients) = (connected(), connected());
    let free = format!("failover-free-r{}", round.index);
    let interval = args.probe_interval;

    let kill_ns = monotonic_ns();
    cluster.kill(leader)?;
    let deadline = kill_ns + u64::try_from(args.round_timeout().as_nanos()).unwrap_or(u64::MAX);
    let (watched, granted) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_leader(watch_clients, epoch, interval, deadline));
        let prober = scope.spawn(|| probe_grant(grant_clients, &free, interval, deadline));
        (
            watcher
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the leader probe panicked"))),
            prober
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the grant probe panicked"))),
        )
    });
    let mut errors = Vec::new();
    match watched {
        Ok((at, id, new_epoch)) => {
            round.elected_ms = Some(elapsed_ms(kill_ns, at));
            round.new_leader = Some(id);
            round.new_epoch = Some(new_epoch);
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    match granted {
        Ok((at, token)) => {
            round.first_grant_ms = Some(elapsed_ms(kill_ns, at));
            round.first_grant_token = Some(token);
        }
        Err(e) => errors.push(format!("{e:#}")),
    }

    // Every holder either renews at a survivor (a renewal sent after the
    // kill) or loses its lease by its validity's end.
    let valid_max_ms = live
        .iter()
        .map(|h| h.state().lease.valid_until_ms)
        .max()
        .unwrap_or(0);
    loop {
        let states: Vec<_> = live.iter().map(|h| h.state()).collect();
        let settled = states
            .iter()
            .all(|s| s.lost.is_some() || s.renewed_sent_ns > kill_ns);
        if settled || palisade_host::clock::boottime_ms() > valid_max_ms + 2000 {
            round.holders_lost = 0;
            round.losses.clear();
            for s in &states {
                if let Some(loss) = s.lost.as_ref().filter(|l| l.at_ns > kill_ns) {
                    round.holders_lost += 1;
                    round.losses.push(loss.kind.clone());
                }
            }
            let renewed: Vec<u64> = states
                .iter()
                .filter(|s| s.lost.is_none() && s.renewed_sent_ns > kill_ns)
                .map(|s| s.renewed_at_ns)
                .collect();
            round.holders_renewed = u32::try_from(renewed.len()).unwrap_or(u32::MAX);
            round.tokens_changed = u32::try_from(
                states
                    .iter()
                    .filter(|s| s.token_changed || s.lease.token != s.first_token)
                    .count(),
            )
            .unwrap_or(u32::MAX);
            if renewed.len() == live.len() {
                round.holders_renewed_ms = renewed.iter().max().map(|&at| elapsed_ms(kill_ns, at));
            }
            if !settled {
                errors.push("some holders neither renewed nor lost their lease".into());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Restart the killed node from its data directory; the round ends
    // when all three agree on one leader.
    cluster.spawn(leader)?;
    let spawned_ns = monotonic_ns();
    match stable_leader(cluster, SETTLE_TIMEOUT, Duration::from_millis(10)) {
        Ok((now_leader, now_epoch)) => {
            round.rejoined_ms = Some(elapsed_ms(spawned_ns, monotonic_ns()));
            if round.new_leader.is_some()
                && (Some(now_leader), Some(now_epoch)) != (round.new_leader, round.new_epoch)
            {
                errors.push(format!(
                    "the leadership moved on to node {now_leader} in epoch {now_epoch} before the killed node rejoined"
                ));
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    if !errors.is_empty() {
        round.error = Some(errors.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn parse(argv: &[&str]) -> Result<FailoverArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("failover").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn defaults_are_the_issues_lan_profile() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.rounds, 20);
        assert_eq!(
            args.replication,
            vec![Replication::Quorum, Replication::None]
        );
        assert_eq!(args.holders, 16);
        assert_eq!(args.holder_ttl, Duration::from_secs(10));
        assert_eq!(args.renew_every(), Duration::from_nanos(3_333_333_333));
        assert_eq!(args.heartbeat, Duration::from_millis(50));
        assert_eq!(args.election_timeout, Duration::from_millis(500));
        assert_eq!(args.max_ttl, Duration::from_secs(30));
        assert_eq!(args.lock_delay_max, Duration::from_secs(10));
        assert_eq!(args.probe_interval, Duration::from_millis(5));
        // The grace of none, (30 + 10 + 0.5) s x 1.01, plus 30 s.
        assert_eq!(args.round_timeout(), Duration::from_millis(70_905));
        args.check().unwrap();
        let spec = args.spec(Replication::Quorum);
        assert_eq!(spec.nodes, 3);
        assert!(matches!(spec.placement, Placement::Spread { .. }));
    }

    #[test]
    fn replication_modes_parse_as_the_config_key_does() {
        let args = parse(&["--replication", "none", "--rounds", "3"]).unwrap();
        assert_eq!(args.replication, vec![Replication::None]);
        assert_eq!(args.rounds, 3);
        let args = parse(&["--replication", "QUORUM,none"]).unwrap();
        assert_eq!(
            args.replication,
            vec![Replication::Quorum, Replication::None]
        );
        let e = parse(&["--replication", "raft"]).unwrap_err().to_string();
        assert!(e.contains("expected \"quorum\" or \"none\""), "{e}");
        let e = parse(&["--holder-ttl", "ten"]).unwrap_err().to_string();
        assert!(e.contains("holder-ttl"), "{e}");
    }

    #[test]
    fn settings_that_cannot_be_measured_are_refused() {
        let refused = |argv: &[&str]| format!("{:#}", parse(argv).unwrap().check().unwrap_err());
        assert!(refused(&["--rounds", "0"]).contains("--rounds"));
        assert!(refused(&["--max-ttl", "500ms", "--holder-ttl", "400ms"]).contains("--max-ttl"));
        assert!(refused(&["--holder-ttl", "60s"]).contains("--holder-ttl"));
        assert!(refused(&["--holder-ttl", "50ms"]).contains("--holder-ttl"));
        assert!(refused(&["--renew-every", "10s"]).contains("--renew-every"));
        assert!(refused(&["--probe-interval", "0s"]).contains("--probe-interval"));
        // The server's own rule: election_timeout >= 3 x heartbeat.
        assert!(refused(&["--election-timeout", "100ms"]).contains("election_timeout"));
        // A short profile for smoke runs is fine.
        parse(&[
            "--max-ttl",
            "2s",
            "--lock-delay-max",
            "0s",
            "--holder-ttl",
            "1s",
        ])
        .unwrap()
        .check()
        .unwrap();
    }
}

//! `palisade-fencing-proxy`: NBD in front of storage, fencing stale writers.
//!
//! ```text
//! palisade-fencing-proxy --config proxy.toml            # serve
//! palisade-fencing-proxy --config proxy.toml check      # validate the config
//! palisade-fencing-proxy --config proxy.toml fences     # durable fences (proxy stopped)
//! palisade-fencing-proxy --config proxy.toml repair EXPORT TOKEN
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use palisade_fencing_proxy::config::{BackendSpec, NbdAddr, ProxyConfig};
use palisade_fencing_proxy::failpoints::Failpoints;
use palisade_fencing_proxy::fence::{Fence, FenceError, FenceStore};
use palisade_fencing_proxy::limits::{self, Nofile};
use palisade_fencing_proxy::supervise::Supervision;
use palisade_fencing_proxy::{metrics, server};
use palisade_host::clock::monotonic_ms;
use palisade_host::heartbeat;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// The Palisade fencing proxy: an NBD server that refuses writes from
/// holders whose fencing token is stale.
#[derive(Parser, Debug)]
#[command(name = "palisade-fencing-proxy", version, about)]
struct Cli {
    /// The proxy's config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Arm the test hooks (`PALISADE_PROXY_TEST_*` environment variables;
    /// tests only).
    #[arg(long, hide = true)]
    failpoints: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve NBD (the default).
    Serve,
    /// Validate the config file and print the exports.
    Check,
    /// Print each export's durable fence. The proxy must be stopped (it
    /// holds the state directory's lock); while it runs, /metrics shows
    /// the fences.
    Fences,
    /// Write a fresh fence for EXPORT at TOKEN, replacing damaged state.
    /// Use at least the highest token the lease service ever issued for the
    /// export's resource. The proxy must be stopped.
    Repair {
        /// The export's name.
        export: String,
        /// The new fence.
        token: u64,
    },
}

fn main() -> ExitCode {
    // Before any thread exists (mallopt is not thread-safe before then).
    let allocator_tuned = limits::tune_allocator();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not for journald or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    if !allocator_tuned {
        tracing::debug!("malloc tunables not set (not glibc, or refused): memory a flood of connections used may stay resident");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-fencing-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to what `connections_max` needs, or
/// warns that it cannot.
fn check_nofile(connections_max: usize) {
    match limits::ensure_nofile(connections_max) {
        Nofile::Enough { soft } => {
            tracing::debug!(soft, connections_max, "RLIMIT_NOFILE is enough");
        }
        Nofile::Raised { was, now } => info!(
            was,
            now,
            connections_max,
            "raised the soft RLIMIT_NOFILE from {was} to {now} for proxy.connections_max = {connections_max}"
        ),
        Nofile::Short {
            soft,
            needed,
            usable,
            why,
        } => warn!(
            soft,
            needed,
            usable,
            connections_max,
            "RLIMIT_NOFILE is {soft} ({why}), but proxy.connections_max = {connections_max} needs about {needed} (two per connection): about {usable} connections fit, accepts beyond fail; raise the limit (LimitNOFILE= in the unit, ulimit -n) or lower proxy.connections_max"
        ),
    }
}

fn open_store(config: &ProxyConfig) -> Result<FenceStore> {
    let dir = config.resolve(&config.proxy.state_dir);
    FenceStore::open(&dir).map_err(|e| match e {
        FenceError::Locked { dir } => anyhow::anyhow!(
            "the fence state in {} is locked by a running proxy: stop it first (two proxies on one state directory would fence apart)",
            dir.display()
        ),
        other => anyhow::anyhow!("opening the fence state: {other}"),
    })
}

fn run(cli: Cli) -> Result<()> {
    let config = ProxyConfig::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            for export in &config.exports {
                let backend = match config.backend(export) {
                    BackendSpec::File { path, size } => format!(
                        "file {}{}",
                        path.display(),
                        size.map(|s| format!(" ({s} bytes if created)"))
                            .unwrap_or_default()
                    ),
                    BackendSpec::Nbd {
                        addr: NbdAddr::Tcp(addr),
                        export,
                    } => format!("nbd://{addr}/{export}"),
                    BackendSpec::Nbd {
                        addr: NbdAddr::Unix(path),
                        export,
                    } => format!("nbd+unix:///{export}?socket={}", path.display()),
                };
                println!(
                    "export {}: tenant {}, resource {}, {backend}",
                    export.name, export.tenant, export.resource
                );
            }
            println!(
                "config ok: NBD on {}, lease service {}",
                config.proxy.listen, config.lease_service.endpoint
            );
            println!(
                "limits: {} connections (needs about {} file descriptors), handshake {} ms, idle {} ms, read-only idle {} ms; lease service: call {} ms, attempt {} ms, watch {} ms, require_check = {}",
                config.proxy.connections_max,
                limits::nofile_needed(config.proxy.connections_max),
                config.proxy.handshake_timeout.as_millis(),
                config.proxy.idle_timeout.as_millis(),
                config.proxy.read_only_idle_timeout.as_millis(),
                config.lease_service.timeout.as_millis(),
                config.lease_service.attempt_timeout().as_millis(),
                config.lease_service.watch_wait.as_millis(),
                config.lease_service.require_check,
            );
            Ok(())
        }
        Command::Fences => {
            let store = open_store(&config)?;
            for export in &config.exports {
                match store.load(&export.name) {
                    Fence::Known(fence) => println!("{} {fence}", export.name),
                    Fence::Damaged(damage) => println!("{} DAMAGED: {damage}", export.name),
                }
            }
            Ok(())
        }
        Command::Repair { export, token } => {
            if !config.exports.iter().any(|e| e.name == export) {
                anyhow::bail!("no export {export:?} in {}", cli.config.display());
            }
            let store = open_store(&config)?;
            let before = store.load(&export);
            store
                .repair(&export, token)
                .with_context(|| format!("repairing the fence of {export}"))?;
            let before = match before {
                Fence::Known(fence) => fence.to_string(),
                Fence::Damaged(damage) => format!("damaged ({damage})"),
            };
            println!("{export}: fence was {before}, now {token} (durable)");
            Ok(())
        }
        Command::Serve => {
            check_nofile(config.proxy.connections_max);
            let failpoints = Failpoints::from_env(cli.failpoints);
            failpoints.arm_stall();
            let supervision = Supervision::from_env()?;
            supervision.stop_on_signals()?;
            let store = Arc::new(open_store(&config)?);
            let link = server::lease_link(&config)?;
            let (prepared, registry) = server::prepare(&config, &store)?;
            let metrics = match config.proxy.metrics {
                Some(addr) => Some(
                    metrics::Endpoint::bind(addr, registry)
                        .with_context(|| format!("serving metrics on {addr}"))?,
                ),
                None => None,
            };
            server::start_watches(&config, &prepared, &store, &link);
            let beats = heartbeat::slots(1, monotonic_ms());
            supervision.start_watchdog(beats.clone())?;
            let ready = supervision.ready_callback(config.exports.len());
            server::run(
                &config,
                prepared,
                store,
                link,
                beats,
                metrics,
                &failpoints,
                ready,
            )?;
            Ok(())
        }
    }
}

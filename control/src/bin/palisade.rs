//! `palisade`: run a node (`serve`) or talk to one (`acquire`, `renew`,
//! `release`, `check`, `status`); `tune` advises on timing.

#[path = "palisade/tune.rs"]
mod tune;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use palisade_client::cli::{self, ClientCommand};
use palisade_control::node::{default_data_dir, Node, StartOptions};
use palisade_control::supervise::Supervision;
use palisade_host::clock::monotonic_ms;
use palisade_tuning::{Config, FsSource, TenantCredential};
use tracing::info;

/// Palisade: time-bounded leases with fencing tokens.
#[derive(Parser, Debug)]
#[command(name = "palisade", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no flags: the built-in single-node config on
    /// 127.0.0.1:7400.
    Serve {
        /// Config file (TOML). Flags below override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Client listen address, e.g. 127.0.0.1:7400 (port 0: any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (epoch file and lock).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Admin (metrics) listen address, or "off" (overrides admin.listen).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Write {"endpoint", "pid", "epoch", ...} as JSON here once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Honour failpoint files in the data directory (tests only).
        #[arg(long, hide = true)]
        failpoints: bool,
    },
    /// Make a tenant credential line for the server's config from a secret
    /// (read from --secret-file, or the first line of stdin).
    TenantCredential {
        /// File holding the secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Measure RTTs to the configured peers over the peer transport (or
    /// read them with --samples) and recommend heartbeat_interval,
    /// election_timeout and max_ttl (see docs/OPERATIONS.md, "Tuning").
    Tune(tune::TuneArgs),
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file; names every bad key. Exit 0 if valid.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the built-in default config.
    Default,
}

/// A failed assertion is a broken safety invariant: take the whole node
/// down rather than let the other cores keep granting.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        None => Ok(Config::builtin_default()),
        Some(path) => Config::load(path, &FsSource)
            .map_err(|errors| anyhow::anyhow!("invalid config {}:\n{errors}", path.display())),
    }
}

fn write_ready_file(path: &Path, node: &Node) -> Result<()> {
    let body = serde_json::json!({
        "endpoint": node.local_addr().to_string(),
        "peer": node.peer_addr().map(|a| a.to_string()),
        "pid": std::process::id(),
        "epoch": node.epoch(),
        "admin": node.admin_addr().map(|a| a.to_string()),
        "grants_from_unix_ms": node.grants_from_unix_ms(),
        "data_dir": node.data_dir(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{body}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    failpoints: bool,
) -> Result<()> {
    let mut config = load_config(config.as_deref())?;
    if let Some(listen) = listen {
        config.listen.client = listen;
    }
    if let Some(admin) = admin_listen {
        config.admin.listen = match admin.trim() {
            off if off.eq_ignore_ascii_case("off") => None,
            addr => Some(addr.parse().with_context(|| {
                format!(
                    "--admin-listen {addr:?}: expected IP:port (like 127.0.0.1:7401) or \"off\""
                )
            })?),
        };
    }
    config
        .validate()
        .map_err(|errors| anyhow::anyhow!("invalid --listen / --admin-listen:\n{errors}"))?;
    palisade_control::logging::init(&config.log)?;
    abort_on_panic();
    if failpoints {
        // Tests run a node whose clock drifts by setting this.
        if let Some(ppm) = std::env::var("PALISADE_TEST_CLOCK_RATE_PPM")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            palisade_host::clock::set_rate_ppm(ppm);
            tracing::warn!(
                ppm,
                "test failpoint: this node's clock runs at a drifted rate"
            );
        }
    }
    let data_dir = data_dir
        .or_else(|| config.data_dir_resolved())
        .unwrap_or_else(default_data_dir);
    if failpoints {
        palisade_control::supervise::arm_core_stall_failpoint(&data_dir)?;
    }
    let mut supervision = Supervision::from_env()?;
    supervision.starting();
    info!(data_dir = %data_dir.display(), "starting");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut node = Node::start_with(&config, data_dir, StartOptions { failpoints })?;
    info!(
        endpoint = %node.local_addr(),
        admin = %node.admin_addr().map_or_else(|| "off".to_owned(), |a| a.to_string()),
        epoch = node.epoch(),
        "palisade serving"
    );
    if let Some(path) = ready_file {
        write_ready_file(&path, &node)?;
    }
    let result = node.run_until_with(|node| {
        supervision.poll(node, monotonic_ms());
        stop.load(Ordering::SeqCst)
    });
    supervision.stopping();
    info!("shutting down");
    node.shutdown();
    Ok(result?)
}

fn tenant_credential(secret_file: Option<PathBuf>, iterations: u32) -> Result<()> {
    let secret = match secret_file {
        Some(path) => {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading stdin")?;
            line.into_bytes()
        }
    };
    let secret = secret.trim_ascii_end();
    if secret.len() < 16 {
        bail!("the secret must be at least 16 bytes; generate one with `head -c 32 /dev/urandom | base64`");
    }
    let mut salt = vec![0u8; 16];
    getrandom::fill(&mut salt).context("reading the OS random source")?;
    let stored = palisade_proto::auth::derive_stored(secret, &salt, iterations);
    let credential = TenantCredential {
        iterations,
        salt,
        stored_key: stored.stored_key,
        server_key: stored.server_key,
    };
    credential.check().map_err(|why| anyhow::anyhow!(why))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "credential = \"{}\"", credential.to_text())?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(command) => {
            let code = cli::run(&command);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Serve {
            config,
            listen,
            admin_listen,
            data_dir,
            ready_file,
            failpoints,
        } => serve(
            config,
            listen,
            admin_listen,
            data_dir,
            ready_file,
            failpoints,
        ),
        Command::TenantCredential {
            secret_file,
            iterations,
        } => tenant_credential(secret_file, iterations),
        Command::Tune(args) => tune::run(&args),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => load_config(Some(&file)).map(|_| println!("{}: valid", file.display())),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", Config::builtin_default().to_toml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Starting and running one node: lock the data directory, move to a new
//! epoch, publish leadership with its grace period, start the data plane,
//! then serve control requests (epoch rollover) until told to stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_dataplane::clock::{monotonic_ms, unix_ms};
use palisade_dataplane::leadership::{Leadership, LeadershipView};
use palisade_dataplane::server::{core_count, Cpus, Server, ServerOptions};
use palisade_dataplane::service::{CoreStats, ServiceConfig, Shared, Tenant};
use palisade_dataplane::table::{KeyHasher, LeaseTable};
use palisade_proto::auth::StoredCredential;
use palisade_proto::Role;
use palisade_tuning::{Config, CoreSelection};
use tracing::{error, info, warn};

use crate::epoch::EpochStore;

/// How often the control loop looks for work.
const CONTROL_TICK: Duration = Duration::from_millis(10);

/// A running node.
#[derive(Debug)]
pub struct Node {
    store: EpochStore,
    shared: Arc<Shared>,
    server: Server,
    data_dir: PathBuf,
}

/// Where the node keeps its state when neither `--data-dir` nor the config
/// names one: systemd's `$STATE_DIRECTORY`; else `/var/lib/palisade` for
/// root (the same place the systemd unit uses, so a node run by hand and as
/// a service share one epoch); else `$XDG_STATE_HOME/palisade`, else
/// `~/.local/state/palisade`, else `./palisade-data`.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/palisade");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("palisade");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/palisade");
    }
    PathBuf::from("palisade-data")
}

fn cpus(selection: &CoreSelection) -> Cpus {
    match selection {
        CoreSelection::All => Cpus::All,
        CoreSelection::Count(n) => Cpus::Count(usize::from(*n)),
        CoreSelection::Cpus(list) => Cpus::List(list.iter().map(|&c| usize::from(c)).collect()),
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Node {
    /// Starts a node from `config`, keeping state in `data_dir`.
    pub fn start(config: &Config, data_dir: PathBuf) -> Result<Node> {
        // Everything that can fail on configuration comes before the epoch
        // bump, so a bad config does not use up epochs.
        let selection = cpus(&config.node.cores);
        let cores = core_count(&selection).context("placing data-plane cores")?;
        let (store, started) = EpochStore::open_and_bump(&data_dir)?;
        let start_ms = monotonic_ms();
        let grace = if started.fresh {
            Duration::ZERO
        } else {
            config.grace_period()
        };
        let grants_from_ms =
            start_ms + u64::try_from(grace.as_millis()).expect("grace fits in u64 ms");
        if started.fresh {
            info!(dir = %data_dir.display(), epoch = started.epoch, "first start of this data directory: no grace period");
        } else {
            info!(
                dir = %data_dir.display(),
                epoch = started.epoch,
                grace_ms = grace.as_millis() as u64,
                "restarted: no grants until (max_ttl + lock_delay_max + election_timeout) x (1 + max_drift) has passed"
            );
        }

        let mut hash_key = [0u8; 16];
        getrandom::fill(&mut hash_key).context("reading the OS random source")?;
        let tenants = config
            .tenants
            .iter()
            .map(|t| Tenant {
                name: t.name.clone(),
                credential: t.credential.as_ref().map(|c| StoredCredential {
                    iterations: c.iterations,
                    salt: c.salt.clone(),
                    stored_key: c.stored_key,
                    server_key: c.server_key,
                }),
            })
            .collect();
        let leadership = Leadership::new(config.node.id);
        leadership.publish(LeadershipView {
            epoch: started.epoch,
            role: Role::Leader,
            leader_id: config.node.id,
            grants_from_ms,
            // A node alone is its own quorum: nothing to confirm.
            grants_until_ms: palisade_dataplane::leadership::TIME_MAX_MS,
        });
        let shared = Arc::new(Shared {
            table: LeaseTable::new(config.leases.table_capacity, KeyHasher::new(hash_key)),
            leadership,
            tenants,
            config: ServiceConfig {
                node_id: config.node.id,
                min_ttl_ms: millis_u32(config.leases.min_ttl),
                max_ttl_ms: millis_u32(config.leases.max_ttl),
                lock_delay_max_ms: millis_u32(config.leases.lock_delay_max),
                max_drift_ppm: (config.leases.max_drift * 1_000_000.0).ceil() as u32,
                pending_per_connection_max: config.limits.pending_per_connection_max,
                cores: u16::try_from(cores).context("too many cores")?,
                start_ms,
                unix_offset_ms: unix_ms() as i64 - start_ms as i64,
            },
            stats: (0..cores).map(|_| CoreStats::default()).collect(),
        });
        let options = ServerOptions {
            listen: config.listen.client,
            cpus: selection,
            preempt_timer: config.dataplane.preempt_timer,
            rpc_latency: config.dataplane.rpc_latency,
            dscp: config.dataplane.client_dscp,
            connections_max: config.limits.connections_max,
            waiters_max: config.limits.waiters_max,
            frame_payload_max: config.limits.frame_payload_max,
            handshake_timeout: config.limits.handshake_timeout,
            frame_timeout: config.limits.frame_timeout,
            sweep_interval: config.leases.sweep_interval,
            reclaim_after: config.leases.reclaim_after,
        };
        let server = Server::start(shared.clone(), options).context("starting the data plane")?;
        Ok(Node {
            store,
            shared,
            server,
            data_dir,
        })
    }

    /// The client address the node serves on.
    #[must_use]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The epoch grants are minted in now.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.shared.leadership.load().epoch
    }

    /// The published leadership word (the data plane's view of this node).
    #[must_use]
    pub fn leadership(&self) -> &Leadership {
        &self.shared.leadership
    }

    /// The data directory in use.
    #[must_use]
    pub fn data_dir(&self) -> &PathBuf {
        &self.data_dir
    }

    /// Unix ms from which grants are allowed.
    #[must_use]
    pub fn grants_from_unix_ms(&self) -> u64 {
        let lead = self.shared.leadership.load();
        unix_ms() + lead.grants_from_ms.saturating_sub(monotonic_ms())
    }

    /// One pass of control work: moves to a new epoch when the data plane
    /// used up a resource's token sequence.
    pub fn tick(&mut self) {
        if !self.shared.leadership.take_new_epoch_request() {
            return;
        }
        match self.store.bump() {
            Ok(epoch) => {
                let lead = self.shared.leadership.load();
                // The table keeps every lease: no grace is needed, only
                // the higher epoch (S1).
                self.shared
                    .leadership
                    .publish(LeadershipView { epoch, ..lead });
                warn!(
                    epoch,
                    "a resource used up its token sequence; moved to a new epoch"
                );
            }
            Err(e) => {
                // Without a durable new epoch nothing may be minted in one;
                // grants of exhausted resources keep failing until fixed.
                error!(error = %e, "could not persist a new epoch");
            }
        }
    }

    /// Runs control work until `stop` returns true.
    pub fn run_until(&mut self, mut stop: impl FnMut() -> bool) {
        while !stop() {
            self.tick();
            std::thread::sleep(CONTROL_TICK);
        }
    }

    /// Stops the data plane.
    pub fn shutdown(mut self) {
        self.server.stop();
        info!("node stopped");
    }
}

//! The config types, their built-in defaults and the methods other crates
//! call.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::credential::TenantCredential;
use crate::error::{ConfigErrors, ConfigIssue, Issues};
use crate::source::Source;
use crate::{parse, render, validate, ValueError};

/// The default client listener: loopback, so the default tenant needs no
/// credential.
pub const LISTEN_CLIENT_DEFAULT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7400);

/// The name of the one tenant in the built-in default.
pub const TENANT_NAME_DEFAULT: &str = "default";

/// The cluster name in the built-in default.
pub const CLUSTER_NAME_DEFAULT: &str = "palisade";

/// The default admin (metrics) listener: loopback, next to the client port.
pub const LISTEN_ADMIN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7401);

/// A whole, validated Palisade config file.
///
/// Get one from [`Config::load`] (binaries), [`Config::from_toml_str`]
/// (tests, embedded text) or [`Config::builtin_default`]. Every value in a
/// `Config` returned by those is within its documented range.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Who this node is and where it keeps its state.
    pub node: NodeConfig,
    /// Where it accepts connections.
    pub listen: ListenConfig,
    /// The cluster it is a member of and Raft timing.
    pub cluster: ClusterConfig,
    /// Lease timing and the lease table size.
    pub leases: LeaseConfig,
    /// Per-node and per-connection resource maxima.
    pub limits: LimitsConfig,
    /// Data plane scheduling and packet marking.
    pub dataplane: DataplaneConfig,
    /// Peer packet marking and the priority qdisc tree.
    pub qos: QosConfig,
    /// The tenants this node serves; never empty. A tenant's index in this
    /// list is its id (see [`Config::tenant`]).
    pub tenants: Vec<TenantConfig>,
    /// Logging.
    pub log: LogConfig,
    /// The admin HTTP endpoint (metrics).
    pub admin: AdminConfig,
    /// Folder of the file this came from (`None` for the built-in default);
    /// used to resolve relative paths.
    pub base_dir: Option<PathBuf>,
}

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node id, `1..=65535`. Default 1.
    pub id: u16,
    /// Where the node keeps its state, as written in the file. Use
    /// [`Config::data_dir_resolved`] to open it. Default `None` (no
    /// persistence).
    pub data_dir: Option<PathBuf>,
    /// Which CPU cores the data plane runs on. Default [`CoreSelection::All`].
    pub cores: CoreSelection,
}

/// Which CPU cores the data plane pins one executor to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSelection {
    /// Every core the process may run on (`cores = "all"`).
    All,
    /// This many cores, `1..=1024` (`cores = 4`).
    Count(u16),
    /// These CPU ids, unique, each `0..=4095` (`cores = [0, 2]`).
    Cpus(Vec<u16>),
}

/// The `[listen]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Address for client connections. Default `127.0.0.1:7400`. When it is
    /// not a loopback address every tenant must have a credential. When
    /// [`ClusterConfig::peers`] is not empty, this node's entry there must
    /// list the same address (unless the port is 0, as in tests).
    pub client: SocketAddr,
}

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster name, 1 to 64 bytes of `[A-Za-z0-9._-]`. Nodes refuse peers
    /// of another cluster. Default `"palisade"`.
    pub name: String,
    /// How often the leader sends heartbeats, `1ms..=10s`. Default 50ms.
    pub heartbeat_interval: Duration,
    /// How long a follower hears no leader before it starts an election,
    /// `10ms..=60s` and at least 3 x `heartbeat_interval`. Default 500ms.
    /// It adds to the grace period of a new leader.
    pub election_timeout: Duration,
    /// Log entries between snapshots, `100..=10000000`. Default 10000. A
    /// compaction also waits until the log grew by as many bytes as the
    /// last snapshot's lease state.
    pub snapshot_entries: u64,
    /// File holding the cluster secret, shared by every member: peers prove
    /// they know it (HMAC-SHA256 challenge-response) before any raft message
    /// is accepted. At least 16 bytes; trailing whitespace is ignored.
    /// Relative paths are resolved against the config file's folder. Default
    /// `None`: peers are not authenticated (the node warns at start when it
    /// has peers) and the peer port must be on a trusted network.
    pub secret_file: Option<PathBuf>,
    /// Every member of the cluster, this node included, with unique ids,
    /// peer addresses and client addresses. Default empty: a cluster of one
    /// (this node) with no peer transport. Use [`Config::members`] rather
    /// than reading it directly.
    pub peers: Vec<PeerConfig>,
}

/// One `[[cluster.peers]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// The member's node id, `1..=65535`; its [`NodeConfig::id`].
    pub id: u16,
    /// Its Raft transport address, an IP address and a non-zero port (host
    /// names are not resolved).
    pub peer: SocketAddr,
    /// Its client address, where clients are redirected to reach it when it
    /// leads. For this node, the same as [`ListenConfig::client`].
    pub client: SocketAddr,
}

/// One member of the cluster, as returned by [`Config::members`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub id: u16,
    /// Its Raft transport address; `None` in a cluster of one, which has no
    /// peer transport.
    pub peer: Option<SocketAddr>,
    /// Its client address.
    pub client: SocketAddr,
}

/// The `[leases]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// Longest lease a client may ask for, `10ms..=24h`. Default 30s.
    pub max_ttl: Duration,
    /// Shortest lease a client may ask for, `1ms..=max_ttl`. Default 100ms.
    pub min_ttl: Duration,
    /// Bound on the clock rate difference between any two machines, as a
    /// fraction: `0.0 <= max_drift < 0.5`. Default 0.01.
    pub max_drift: f64,
    /// Longest lock delay a client may ask for, `0..=65535ms` in whole
    /// milliseconds (the table stores it in 16 bits). Default 10s. It adds
    /// to the grace period after a restart or an election.
    pub lock_delay_max: Duration,
    /// Lease table size in leases, `1..=16777216`. Default 65536.
    pub table_capacity: u32,
    /// Free slots idle longer than this are reclaimed; at least 1s.
    /// Default 60s.
    pub reclaim_after: Duration,
    /// How often expired leases are swept, `10ms..=60s`. Default 1s.
    pub sweep_interval: Duration,
    /// Whether grants and releases go through the raft log. Default
    /// [`Replication::Quorum`].
    pub replication: Replication,
}

/// `leases.replication`: where lease state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Replication {
    /// Grants and releases are committed to the raft log (a majority
    /// persisted) before they are answered; a new leader or a restarted
    /// node keeps every lease, and grants at once for free resources.
    #[default]
    Quorum,
    /// Leases live only in the leader's memory: answered without waiting
    /// for a disk or a peer, lost on a leader change or a restart, after
    /// which the new leader grants nothing for the grace period.
    None,
}

impl Replication {
    /// The name used in the config file: `"quorum"` or `"none"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::None => "none",
        }
    }
}

impl FromStr for Replication {
    type Err = ValueError;

    /// Parses `quorum` or `none` in any letter case.
    fn from_str(text: &str) -> Result<Self, ValueError> {
        [Self::Quorum, Self::None]
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                ValueError::Keyword(format!(
                    "unknown replication mode {text:?}; expected \"quorum\" or \"none\""
                ))
            })
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Open client connections, at least 1. Default 10000.
    pub connections_max: u32,
    /// Requests waiting for a lease across the node, at least 1.
    /// Default 10000.
    pub waiters_max: u32,
    /// Largest frame payload in bytes, `1024..=1048576`. Default 16384.
    pub frame_payload_max: u32,
    /// Time a new connection has to finish its handshake, `10ms..=10m`.
    /// Default 1s.
    pub handshake_timeout: Duration,
    /// Time a frame that has started arriving has to complete, `10ms..=10m`.
    /// Default 10s.
    pub frame_timeout: Duration,
    /// Outstanding (waiting) requests per connection, at least 1.
    /// Default 1024.
    pub pending_per_connection_max: u32,
    /// Connections that have not finished the handshake, node-wide (split
    /// evenly over cores), at least 1. When full, the oldest unfinished
    /// handshake is closed to make room. Default 128.
    pub unauthenticated_max: u32,
    /// An authenticated connection with nothing pending that sends nothing
    /// for this long is closed, `1s..=24h`; keep it above `leases.max_ttl / 3`
    /// (a holder renews every third of its ttl).
    /// Default 60s.
    pub idle_timeout: Duration,
    /// A connection whose replies cannot be written for this long (the
    /// client stopped reading) is closed, `10ms..=10m`. Default 10s.
    pub write_stall_timeout: Duration,
    /// Queued acquires (`wait_ms > 0`) per connection, at least 1.
    /// Default 256.
    pub waiters_per_connection_max: u32,
    /// Longest `wait_ms` of an acquire, `0s..=24h`; a longer one is refused
    /// with `invalid_argument`. Default 5m.
    pub wait_max: Duration,
    /// Leases one tenant may hold on this node, at least 1. Default 32768.
    pub tenant_leases_max: u32,
    /// Acquires one tenant may have queued on this node, at least 1.
    /// Default 5000.
    pub tenant_waiters_max: u32,
    /// Authenticated connections one tenant may have open to this node, at
    /// least 1. Default 5000.
    pub tenant_connections_max: u32,
}

/// The `[dataplane]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// No effect: the glommio executor's preemption timer, from when the
    /// data plane ran on glommio (its cores are epoll loops now). Still
    /// parsed and checked (`100us..=100ms`, default 1ms) so that older files
    /// load; `palisade serve` logs that it is ignored when it differs from
    /// that default.
    pub preempt_timer: Duration,
    /// No effect: the latency target of glommio's lease RPC task queue
    /// (`10us..=100ms`, default 200us); see `preempt_timer`.
    pub rpc_latency: Duration,
    /// DSCP marked on client replies, `0..=63`. Default 46 (`EF`).
    pub client_dscp: u8,
    /// How long a data-plane core polls for its next request after its
    /// last one before it sleeps in `epoll_wait`, only while the core is
    /// busy (over 60 % of the last 10 ms on requests): a sleep and its
    /// wake-up (a context switch, and the CPU's own wake-up if it went
    /// idle) delay the request that ends it, and near saturation the
    /// requests queued behind it. `0s..=1ms`, default `0s`: never polls.
    /// Under light load it never polls either. Measured on the 2-CPU
    /// development VM, 30us gave no p99 gain and filled the core's idle
    /// time (bench/results/busy-poll/, run 6).
    pub busy_poll: Duration,
}

/// The `[qos]` section: how peer (raft) connections are marked, and the
/// qdisc tree that sends marked packets first when the node's own link is
/// congested. Client connections are marked with
/// [`DataplaneConfig::client_dscp`] (the file may also set it here, as
/// `qos.client_dscp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosConfig {
    /// Install the priority qdisc tree on [`QosConfig::interface`] at start
    /// and remove it at shutdown. Needs `CAP_NET_ADMIN`; without it the
    /// node logs that and serves anyway. When true, `interface` and
    /// `rate_bps` are required, and `peer_dscp` or
    /// [`DataplaneConfig::client_dscp`] must be non-zero. Default false.
    pub enabled: bool,
    /// The interface whose egress is shaped: a Linux interface name, 1 to
    /// 15 bytes, without `/`, `:` or whitespace. Default `None`.
    pub interface: Option<String>,
    /// The link rate in bits per second (`rate = "1gbit"` in the file), the
    /// ceiling of the tree's root class, `1mbit..=1tbit`. Set it a little
    /// below the physical rate so the queue builds in this tree rather than
    /// in the device. Default `None`.
    pub rate_bps: Option<u64>,
    /// DSCP marked on peer (raft) connections, inbound and outbound,
    /// `0..=63`. Default 48 (`CS6`, network control).
    pub peer_dscp: u8,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Unique name, 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The tenant's credential verifier. Required for every tenant when the
    /// client listener is not on loopback.
    pub credential: Option<TenantCredential>,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// Most verbose level written, for every target without its own
    /// directive. Default [`LogLevel::Info`].
    pub level: LogLevel,
    /// Per-target levels, written after the default level in `level`:
    /// `level = "info,palisade_control=debug"`. Targets are unique Rust
    /// module paths. Default none.
    pub targets: Vec<LogTarget>,
    /// How each line is written. Default [`LogFormat::Text`].
    pub format: LogFormat,
}

/// One per-target log directive, `target=level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// A Rust module path such as `palisade_control::node`: the directive
    /// covers it and every module below it.
    pub target: String,
    /// Most verbose level written for that target.
    pub level: LogLevel,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line, fields included, for log shippers.
    Json,
}

impl LogFormat {
    /// The name used in the config file: `"text"` or `"json"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = ValueError;

    /// Parses `text` or `json` in any letter case.
    fn from_str(text: &str) -> Result<Self, ValueError> {
        [Self::Text, Self::Json]
            .into_iter()
            .find(|format| format.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                ValueError::Keyword(format!(
                    "unknown log format {text:?}; expected \"text\" or \"json\""
                ))
            })
    }
}

impl LogConfig {
    /// The `level` key's text: the default level, then each target's
    /// directive, comma-separated (`"info,palisade_control=debug"`). It is
    /// also a `tracing_subscriber::EnvFilter` directive string.
    #[must_use]
    pub fn filter(&self) -> String {
        let mut text = self.level.as_str().to_owned();
        for target in &self.targets {
            text.push(',');
            text.push_str(&target.target);
            text.push('=');
            text.push_str(target.level.as_str());
        }
        text
    }

    /// Parses the `level` key's text: one optional bare level (the default
    /// for every other target, `info` when left out) and `target=level`
    /// directives, separated by commas.
    ///
    /// # Errors
    ///
    /// [`ValueError::LogFilter`]: what is wrong with the first bad
    /// directive, naming it.
    pub fn parse_filter(text: &str) -> Result<(LogLevel, Vec<LogTarget>), ValueError> {
        let mut level = None;
        let mut targets: Vec<LogTarget> = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(ValueError::LogFilter(format!(
                    "empty directive in {text:?}; write a level like \"info\" or \
                     directives like \"info,palisade_control=debug\""
                )));
            }
            match item.split_once('=') {
                None => {
                    if level.is_some() {
                        return Err(ValueError::LogFilter(format!(
                            "{text:?} has two default levels; give one bare level and \
                             target=level for the rest"
                        )));
                    }
                    level = Some(
                        item.parse::<LogLevel>()
                            .map_err(|error| ValueError::LogFilter(error.into()))?,
                    );
                }
                Some((target, target_level)) => {
                    let target = target.trim();
                    check_log_target(target).map_err(ValueError::LogFilter)?;
                    if targets.iter().any(|t| t.target == target) {
                        return Err(ValueError::LogFilter(format!(
                            "target {target:?} has two directives"
                        )));
                    }
                    let level = target_level.trim().parse::<LogLevel>().map_err(|reason| {
                        ValueError::LogFilter(format!("in directive {item:?}: {reason}"))
                    })?;
                    targets.push(LogTarget {
                        target: target.to_owned(),
                        level,
                    });
                }
            }
        }
        Ok((level.unwrap_or_default(), targets))
    }
}

/// A target is a Rust module path: `::`-separated identifiers of ASCII
/// letters, digits and `_`.
pub(crate) fn check_log_target(target: &str) -> Result<(), String> {
    let ident = |part: &str| {
        !part.is_empty()
            && !part.starts_with(|c: char| c.is_ascii_digit())
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if target.split("::").all(ident) {
        Ok(())
    } else {
        Err(format!(
            "log target {target:?} is not a Rust module path like palisade_control::node \
             (letters, digits, '_' and '::' only)"
        ))
    }
}

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin HTTP endpoint listens (`GET /metrics`, Prometheus
    /// text format). `None` (`listen = "off"`) serves none. Default
    /// `127.0.0.1:7401`. It must differ from [`ListenConfig::client`].
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(LISTEN_ADMIN_DEFAULT),
        }
    }
}

/// A log verbosity level, least verbose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation.
    #[default]
    Info,
    /// Detail for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Every level, least verbose first.
    pub const ALL: [Self; 5] = [
        Self::Error,
        Self::Warn,
        Self::Info,
        Self::Debug,
        Self::Trace,
    ];

    /// The name used in the config file and by `tracing` filters, like
    /// `"info"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = ValueError;

    /// Parses a level name in any letter case.
    fn from_str(text: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                ValueError::Keyword(format!(
                    "unknown log level {text:?}; expected one of: error, warn, info, debug, trace"
                ))
            })
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            data_dir: None,
            cores: CoreSelection::All,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            client: LISTEN_CLIENT_DEFAULT,
        }
    }
}

impl Default for ClusterConfig {
    /// A cluster of one named `"palisade"`.
    fn default() -> Self {
        Self {
            name: CLUSTER_NAME_DEFAULT.to_owned(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            snapshot_entries: 10_000,
            secret_file: None,
            peers: Vec::new(),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(30),
            min_ttl: Duration::from_millis(100),
            max_drift: 0.01,
            lock_delay_max: Duration::from_secs(10),
            table_capacity: 65_536,
            reclaim_after: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            replication: Replication::Quorum,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_max: 10_000,
            waiters_max: 10_000,
            frame_payload_max: 16_384,
            handshake_timeout: Duration::from_secs(1),
            frame_timeout: Duration::from_secs(10),
            pending_per_connection_max: 1024,
            unauthenticated_max: 128,
            idle_timeout: Duration::from_secs(60),
            write_stall_timeout: Duration::from_secs(10),
            waiters_per_connection_max: 256,
            wait_max: Duration::from_secs(300),
            tenant_leases_max: 32_768,
            tenant_waiters_max: 5_000,
            tenant_connections_max: 5_000,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            preempt_timer: Duration::from_millis(1),
            rpc_latency: Duration::from_micros(200),
            client_dscp: 46,
            busy_poll: Duration::ZERO,
        }
    }
}

impl Default for QosConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interface: None,
            rate_bps: None,
            peer_dscp: 48,
        }
    }
}

impl Default for TenantConfig {
    /// The tenant `"default"`, without a credential.
    fn default() -> Self {
        Self {
            name: TENANT_NAME_DEFAULT.to_owned(),
            credential: None,
        }
    }
}

impl Default for Config {
    /// Same as [`Config::builtin_default`].
    fn default() -> Self {
        Self::builtin_default()
    }
}

impl Config {
    /// The config used when there is no file: a single node (id 1, a
    /// cluster of one) serving clients on `127.0.0.1:7400` and metrics on
    /// `127.0.0.1:7401`, one tenant
    /// `"default"` without a credential, no data directory, and every other
    /// key at the default documented on its field.
    #[must_use]
    pub fn builtin_default() -> Self {
        Self {
            node: NodeConfig::default(),
            listen: ListenConfig::default(),
            cluster: ClusterConfig::default(),
            leases: LeaseConfig::default(),
            limits: LimitsConfig::default(),
            dataplane: DataplaneConfig::default(),
            qos: QosConfig::default(),
            tenants: vec![TenantConfig::default()],
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            base_dir: None,
        }
    }

    /// Reads the file at `path` from `source`, parses and validates it.
    ///
    /// Call once at startup. [`Config::base_dir`] becomes the folder that
    /// holds `path` (`"."` for a bare file name), so a relative `data_dir`
    /// is found next to the config file, not in the working directory.
    ///
    /// # Errors
    ///
    /// Every problem found: a read failure (key `(file)`, naming the path),
    /// a TOML syntax error (key `(file)`), or one issue per bad key.
    pub fn load(path: &Path, source: &dyn Source) -> Result<Self, ConfigErrors> {
        let text = source.read_to_string(path).map_err(|error| {
            ConfigIssue::new(
                parse::FILE_KEY,
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        let base_dir = match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Some(Path::new(".")),
            other => other,
        };
        Self::from_toml_str(&text, base_dir)
    }

    /// Parses and validates TOML text.
    ///
    /// Every section and key is optional; a missing one takes the built-in
    /// default. `base_dir` is stored as [`Config::base_dir`] and used to
    /// resolve relative paths.
    ///
    /// # Errors
    ///
    /// Every problem found, one [`ConfigIssue`] per bad key: unknown keys,
    /// wrong types, out-of-range values and broken cross-field rules. A
    /// TOML syntax error is a single issue with key `(file)`.
    pub fn from_toml_str(text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigErrors> {
        parse::parse_config(text, base_dir)
    }

    /// Checks every range and cross-field rule. Configs from
    /// [`load`](Self::load) and [`from_toml_str`](Self::from_toml_str) have
    /// already passed; call it after building or changing a `Config` by hand.
    ///
    /// # Errors
    ///
    /// Every rule broken, keyed as in a config file.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut issues = Issues::default();
        validate::validate(self, &mut issues);
        issues.into_result()
    }

    /// The data directory to open: [`NodeConfig::data_dir`] joined onto
    /// [`Config::base_dir`] when it is relative, as is when it is absolute or
    /// there is no base directory. `None` when no data directory is set.
    #[must_use]
    pub fn data_dir_resolved(&self) -> Option<PathBuf> {
        Some(self.resolve(self.node.data_dir.as_deref()?))
    }

    /// `path` joined onto [`Config::base_dir`] when it is relative.
    #[must_use]
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base_dir) if path.is_relative() => base_dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The cluster secret file to read: [`ClusterConfig::secret_file`]
    /// resolved like [`Config::data_dir_resolved`].
    #[must_use]
    pub fn secret_file_resolved(&self) -> Option<PathBuf> {
        Some(self.resolve(self.cluster.secret_file.as_deref()?))
    }

    /// Finds a tenant by exact name; returns its index (its tenant id) and
    /// its config. Call when a client names its tenant in the handshake.
    #[must_use]
    pub fn tenant(&self, name: &str) -> Option<(u32, &TenantConfig)> {
        let (index, tenant) = self
            .tenants
            .iter()
            .enumerate()
            .find(|(_, tenant)| tenant.name == name)?;
        Some((u32::try_from(index).ok()?, tenant))
    }

    /// The members of the cluster: [`ClusterConfig::peers`], or, when it
    /// is empty, just this node (with [`ListenConfig::client`] as its client
    /// address and no peer address). Call at startup to set up the Raft
    /// group and the table used to redirect clients to the leader.
    #[must_use]
    pub fn members(&self) -> Vec<Member> {
        if self.cluster.peers.is_empty() {
            return vec![Member {
                id: self.node.id,
                peer: None,
                client: self.listen.client,
            }];
        }
        self.cluster
            .peers
            .iter()
            .map(|peer| Member {
                id: peer.id,
                peer: Some(peer.peer),
                client: peer.client,
            })
            .collect()
    }

    /// This node's own peer listen address, if it is in a multi-node
    /// cluster: the `peer` of the [`ClusterConfig::peers`] entry whose id is
    /// [`NodeConfig::id`]. `None` when `peers` is empty (a cluster of one,
    /// no peer transport). Call at startup to bind the Raft transport.
    #[must_use]
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.cluster
            .peers
            .iter()
            .find(|peer| peer.id == self.node.id)
            .map(|peer| peer.peer)
    }

    /// How long a newly elected leader (or a restarted node) must grant
    /// nothing. A lease the previous leader granted may still run for
    /// `max_ttl` after the previous leader stops granting, which happens at
    /// most one `election_timeout` after it lost its quorum; and after the
    /// lease expires unreleased its lock delay (up to `lock_delay_max`)
    /// keeps the resource ungrantable. So
    /// `(max_ttl + lock_delay_max + election_timeout)` scaled by
    /// `1 + max_drift`, rounded up to the millisecond.
    ///
    /// The arithmetic is exact: `max_drift` is taken to the nearest part per
    /// billion, then integers only, so 30s at 0.01 is exactly 30.3s. Meant
    /// for a validated config; a drift outside `0.0..0.5` set by hand is
    /// clamped to 0 below and the result saturates at [`Duration::MAX`].
    #[must_use]
    pub fn grace_period(&self) -> Duration {
        const PARTS_PER_UNIT: u128 = 1_000_000_000;
        const NANOS_PER_MS: u128 = 1_000_000;
        let drift = self.leases.max_drift;
        debug_assert!(drift >= 0.0, "validated configs have max_drift >= 0");
        debug_assert!(drift < 0.5, "validated configs have max_drift < 0.5");
        // `as` saturates: NaN and negative drift become 0, huge drift u64::MAX.
        let drift_ppb = u128::from((drift * 1e9).round() as u64);
        // Three durations of at most u64::MAX seconds each fit in u128 nanos.
        let unscaled_nanos = self.leases.max_ttl.as_nanos()
            + self.leases.lock_delay_max.as_nanos()
            + self.cluster.election_timeout.as_nanos();
        let scaled = unscaled_nanos.saturating_mul(PARTS_PER_UNIT + drift_ppb);
        let grace_nanos = scaled.div_ceil(PARTS_PER_UNIT);
        let grace_ms = grace_nanos.div_ceil(NANOS_PER_MS);
        let grace = grace_ms.saturating_mul(NANOS_PER_MS);
        let grace = crate::duration::duration_from_nanos(grace).unwrap_or(Duration::MAX);
        debug_assert!(self
            .leases
            .max_ttl
            .checked_add(self.leases.lock_delay_max)
            .and_then(|sum| sum.checked_add(self.cluster.election_timeout))
            .is_none_or(|unscaled| grace >= unscaled));
        grace
    }

    /// Renders a complete, commented config file.
    ///
    /// For any valid config, [`from_toml_str`](Self::from_toml_str) of the
    /// result (with the same base directory) gives back an equal `Config`.
    /// [`Config::base_dir`] is not written: it comes from where the file is.
    /// Use it to print the defaults for an operator to edit.
    #[must_use]
    pub fn to_toml(&self) -> String {
        render::render(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_scales_and_rounds_up() {
        let mut config = Config::builtin_default();
        // (30s max_ttl + 10s lock_delay_max + 500ms election_timeout) x 1.01.
        assert_eq!(config.grace_period(), Duration::from_millis(40_905));
        config.leases.lock_delay_max = Duration::ZERO;
        assert_eq!(config.grace_period(), Duration::from_millis(30_805));
        config.cluster.election_timeout = Duration::ZERO;
        assert_eq!(config.grace_period(), Duration::from_millis(30_300));
        config.leases.max_drift = 0.0;
        assert_eq!(config.grace_period(), Duration::from_secs(30));
        config.leases.max_ttl = Duration::from_millis(10);
        config.leases.max_drift = 0.01;
        // 10.1ms rounds up to 11ms.
        assert_eq!(config.grace_period(), Duration::from_millis(11));
        config.leases.max_ttl = Duration::from_millis(100);
        config.leases.max_drift = 0.1;
        // Exactly 110ms: no spurious extra millisecond from float error.
        assert_eq!(config.grace_period(), Duration::from_millis(110));
        config.leases.max_ttl = Duration::from_secs(24 * 3600);
        config.leases.max_drift = 0.499_999;
        assert_eq!(
            config.grace_period(),
            Duration::from_millis(86_400_000 + 43_199_914)
        );
    }

    #[test]
    fn grace_period_saturates() {
        let mut config = Config::builtin_default();
        config.leases.max_ttl = Duration::MAX;
        assert_eq!(config.grace_period(), Duration::MAX);

        // Each term saturates on its own, and together they cannot overflow.
        let mut config = Config::builtin_default();
        config.cluster.election_timeout = Duration::MAX;
        assert_eq!(config.grace_period(), Duration::MAX);
        config.leases.max_ttl = Duration::MAX;
        config.leases.lock_delay_max = Duration::MAX;
        assert_eq!(config.grace_period(), Duration::MAX);
    }

    #[test]
    fn members_of_a_cluster_of_one() {
        let mut config = Config::builtin_default();
        config.node.id = 7;
        assert_eq!(
            config.members(),
            [Member {
                id: 7,
                peer: None,
                client: LISTEN_CLIENT_DEFAULT,
            }]
        );
        assert_eq!(config.peer_listen(), None);
    }

    #[test]
    fn members_of_a_listed_cluster() {
        let address = |text: &str| text.parse::<SocketAddr>().expect("literal");
        let mut config = Config::builtin_default();
        config.node.id = 2;
        config.cluster.peers = (1..=3)
            .map(|id| PeerConfig {
                id,
                peer: address(&format!("10.0.0.{id}:7421")),
                client: address(&format!("10.0.0.{id}:7411")),
            })
            .collect();
        let members = config.members();
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[1],
            Member {
                id: 2,
                peer: Some(address("10.0.0.2:7421")),
                client: address("10.0.0.2:7411"),
            }
        );
        let ids: Vec<u16> = members.iter().map(|member| member.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(config.peer_listen(), Some(address("10.0.0.2:7421")));

        // A list that is only this node still has a peer transport.
        config.cluster.peers.truncate(2);
        config.cluster.peers.remove(0);
        assert_eq!(config.members().len(), 1);
        assert_eq!(config.peer_listen(), Some(address("10.0.0.2:7421")));
    }

    #[test]
    fn tenant_lookup() {
        let mut config = Config::builtin_default();
        config.tenants.push(TenantConfig {
            name: "billing".to_owned(),
            credential: None,
        });
        assert_eq!(config.tenant("default").map(|(index, _)| index), Some(0));
        let (index, tenant) = config.tenant("billing").expect("billing exists");
        assert_eq!(index, 1);
        assert_eq!(tenant.name, "billing");
        assert!(config.tenant("Billing").is_none());
    }

    #[test]
    fn log_level_names() {
        for level in LogLevel::ALL {
            assert_eq!(level.as_str().parse::<LogLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.as_str());
        }
        assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warn));
        assert!("verbose".parse::<LogLevel>().is_err());
        assert!(LogLevel::Error < LogLevel::Trace);
    }

    #[test]
    fn log_filters_parse_and_render_back() {
        let (level, targets) = LogConfig::parse_filter(
            " warn , palisade_control=debug,palisade_dataplane::server=TRACE",
        )
        .expect("valid");
        assert_eq!(level, LogLevel::Warn);
        let log = LogConfig {
            level,
            targets,
            format: LogFormat::Json,
        };
        assert_eq!(
            log.filter(),
            "warn,palisade_control=debug,palisade_dataplane::server=trace"
        );
        assert_eq!(
            LogConfig::parse_filter("palisade_control=debug")
                .expect("valid")
                .0,
            LogLevel::Info,
            "no bare level: the default"
        );
        for (bad, says) in [
            ("", "empty directive"),
            ("info,", "empty directive"),
            ("info,debug", "two default levels"),
            ("verbose", "unknown log level"),
            ("palisade control=debug", "not a Rust module path"),
            ("palisade_control[span]=debug", "not a Rust module path"),
            ("a::=debug", "not a Rust module path"),
            ("9lives=debug", "not a Rust module path"),
            ("x=loud", "in directive \"x=loud\""),
            ("x=info,x=debug", "two directives"),
        ] {
            let reason = LogConfig::parse_filter(bad).expect_err(bad);
            assert!(reason.reason().contains(says), "{bad:?}: {reason}");
        }
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}

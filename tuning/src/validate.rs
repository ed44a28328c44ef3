//! Range rules and cross-field rules, checked on typed values.
//!
//! Each rule is defined once here. The TOML walker uses the same rules on
//! raw values (so `id = 70000` is reported as out of range rather than as
//! "does not fit in u16"), and [`validate`] re-checks the typed config, which
//! covers configs built by hand. Checks skip keys that already have an
//! issue, so nothing is reported twice and no rule fires on a stand-in value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{ClusterConfig, Config, CoreSelection, LeaseConfig, Replication};
use crate::credential::TenantCredential;
use crate::dscp::DSCP_MAX;
use crate::duration::format_duration;
use crate::error::Issues;
use crate::rate::format_rate;

/// The most tenants one config may list; a tenant's index is its id.
pub const TENANT_COUNT_MAX: usize = 65_536;

/// The longest tenant name, in characters.
pub const TENANT_NAME_CHARS_MAX: usize = 64;

/// The longest cluster name, in bytes.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;

/// An inclusive integer range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntRule {
    pub(crate) min: i64,
    pub(crate) max: i64,
    /// `max` is only the field type's limit, so messages say "at least min".
    pub(crate) open_max: bool,
}

impl IntRule {
    const fn between(min: i64, max: i64) -> Self {
        Self {
            min,
            max,
            open_max: false,
        }
    }

    /// Checks a `u64` field, which may not fit in `i64`.
    pub(crate) fn check_u64(&self, value: u64) -> Result<(), String> {
        match i64::try_from(value) {
            Ok(value) => self.check(value),
            Err(_) => Err(format!("must be {}, got {value}", self.describe_max())),
        }
    }

    const fn at_least_u32(min: i64) -> Self {
        Self {
            min,
            max: u32::MAX as i64,
            open_max: true,
        }
    }

    pub(crate) fn check(&self, value: i64) -> Result<(), String> {
        if value < self.min {
            return Err(format!("must be {}, got {value}", self.describe()));
        }
        if value > self.max {
            return Err(format!("must be {}, got {value}", self.describe_max()));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        if self.open_max {
            format!("at least {}", self.min)
        } else {
            format!("between {} and {}", self.min, self.max)
        }
    }

    fn describe_max(&self) -> String {
        if self.open_max {
            format!("at most {}", self.max)
        } else {
            self.describe()
        }
    }
}

/// An inclusive duration range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationRule {
    min: Duration,
    max: Option<Duration>,
    /// The value is stored in whole milliseconds.
    whole_ms: bool,
}

impl DurationRule {
    const fn between(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: Some(max),
            whole_ms: false,
        }
    }

    pub(crate) fn check(&self, value: Duration) -> Result<(), String> {
        let too_large = self.max.is_some_and(|max| value > max);
        if value < self.min || too_large {
            let range = match self.max {
                Some(max) => format!(
                    "between {} and {}",
                    format_duration(self.min),
                    format_duration(max)
                ),
                None => format!("at least {}", format_duration(self.min)),
            };
            return Err(format!("must be {range}, got {}", format_duration(value)));
        }
        if self.whole_ms && value.subsec_nanos() % 1_000_000 != 0 {
            return Err(format!(
                "must be a whole number of milliseconds (it is stored in milliseconds), got {}",
                format_duration(value)
            ));
        }
        Ok(())
    }
}

const fn ms(count: u64) -> Duration {
    Duration::from_millis(count)
}

const fn us(count: u64) -> Duration {
    Duration::from_micros(count)
}

pub(crate) const NODE_ID: IntRule = IntRule::between(1, u16::MAX as i64);
pub(crate) const CORE_COUNT: IntRule = IntRule::between(1, 1024);
pub(crate) const CPU_ID: IntRule = IntRule::between(0, 4095);

pub(crate) const HEARTBEAT_INTERVAL: DurationRule = DurationRule::between(ms(1), ms(10_000));
/// Its lower bound is also `3 x heartbeat_interval`, checked as a
/// cross-field rule.
pub(crate) const ELECTION_TIMEOUT: DurationRule = DurationRule::between(ms(10), ms(60_000));
pub(crate) const SNAPSHOT_ENTRIES: IntRule = IntRule::between(100, 10_000_000);
/// Heartbeats a follower may miss before it starts an election. Fewer, and
/// one late heartbeat would depose a healthy leader.
const HEARTBEATS_PER_ELECTION_MIN: u32 = 3;

pub(crate) const MAX_TTL: DurationRule = DurationRule::between(ms(10), ms(24 * 3600 * 1000));
/// Its upper bound is `max_ttl`, checked as a cross-field rule.
pub(crate) const MIN_TTL: DurationRule = DurationRule {
    min: ms(1),
    max: None,
    whole_ms: false,
};
pub(crate) const LOCK_DELAY_MAX: DurationRule = DurationRule {
    min: Duration::ZERO,
    max: Some(ms(u16::MAX as u64)),
    whole_ms: true,
};
pub(crate) const TABLE_CAPACITY: IntRule = IntRule::between(1, 1 << 24);
/// Largest `leases.table_capacity` with `leases.replication = "quorum"`: a
/// raft snapshot carries the whole replicated lease state, and a full
/// table of the longest names (355 bytes a lease encoded) must fit the
/// 512 MiB the raft log and the peer links accept for it
/// (`palisade_dataplane::replica::LEASE_STATE_LEN_MAX`; a test in
/// `control` holds the two together).
pub const TABLE_CAPACITY_REPLICATED_MAX: u32 = 1_500_000;
pub(crate) const RECLAIM_AFTER: DurationRule = DurationRule {
    min: ms(1000),
    max: None,
    whole_ms: false,
};
pub(crate) const SWEEP_INTERVAL: DurationRule = DurationRule::between(ms(10), ms(60_000));

pub(crate) const CONNECTIONS_MAX: IntRule = IntRule::at_least_u32(1);
pub(crate) const WAITERS_MAX: IntRule = IntRule::at_least_u32(1);
pub(crate) const FRAME_PAYLOAD_MAX: IntRule = IntRule::between(1024, 1 << 20);
pub(crate) const HANDSHAKE_TIMEOUT: DurationRule = DurationRule::between(ms(10), ms(600_000));
pub(crate) const FRAME_TIMEOUT: DurationRule = DurationRule::between(ms(10), ms(600_000));
pub(crate) const PENDING_PER_CONNECTION_MAX: IntRule = IntRule::at_least_u32(1);
pub(crate) const UNAUTHENTICATED_MAX: IntRule = IntRule::at_least_u32(1);
/// Keep it above `leases.max_ttl / 3`: a holder that renews every third of
/// its ttl then keeps its connection (otherwise its client reconnects at
/// each renewal, which works but costs a handshake).
pub(crate) const IDLE_TIMEOUT: DurationRule = DurationRule::between(ms(1000), ms(86_400_000));
pub(crate) const WRITE_STALL_TIMEOUT: DurationRule = DurationRule::between(ms(10), ms(600_000));
pub(crate) const WAITERS_PER_CONNECTION_MAX: IntRule = IntRule::at_least_u32(1);
/// `wait_ms` is a u32 on the wire; a day is far below its range.
pub(crate) const WAIT_MAX: DurationRule = DurationRule {
    min: Duration::ZERO,
    max: Some(ms(86_400_000)),
    whole_ms: true,
};
pub(crate) const TENANT_LEASES_MAX: IntRule = IntRule::at_least_u32(1);
pub(crate) const TENANT_WAITERS_MAX: IntRule = IntRule::at_least_u32(1);
pub(crate) const TENANT_CONNECTIONS_MAX: IntRule = IntRule::at_least_u32(1);

pub(crate) const PREEMPT_TIMER: DurationRule = DurationRule::between(us(100), ms(100));
pub(crate) const RPC_LATENCY: DurationRule = DurationRule::between(us(10), ms(100));
/// Polling longer than a millisecond between requests gains nothing a
/// sleep would cost (a wake-up is tens of µs) and burns the CPU.
pub(crate) const BUSY_POLL: DurationRule = DurationRule::between(Duration::ZERO, ms(1));
pub(crate) const CLIENT_DSCP: IntRule = IntRule::between(0, DSCP_MAX as i64);
pub(crate) const PEER_DSCP: IntRule = IntRule::between(0, DSCP_MAX as i64);

/// The slowest link rate the qdisc tree takes: its priority class is
/// guaranteed a tenth of it, and below 100kbit/s one full-size packet
/// takes over 100ms to send.
pub const QOS_RATE_BPS_MIN: u64 = 1_000_000;
/// The fastest link rate the qdisc tree takes (1tbit).
pub const QOS_RATE_BPS_MAX: u64 = 1_000_000_000_000;
/// The longest Linux interface name, in bytes (`IFNAMSIZ` less the NUL).
pub const INTERFACE_NAME_BYTES_MAX: usize = 15;

/// `0.0 <= max_drift < 0.5`: at 0.5 a lease could look expired on one
/// machine while a new one looks granted on another for a whole TTL.
pub(crate) fn check_max_drift(value: f64) -> Result<(), String> {
    if (0.0..0.5).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be a fraction from 0.0 up to (not including) 0.5, got {value}"
        ))
    }
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`: names appear in logs and
/// metrics labels, so they stay plain.
pub(crate) fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.chars().count() > TENANT_NAME_CHARS_MAX {
        return Err(format!(
            "must be at most {TENANT_NAME_CHARS_MAX} characters, got {}",
            name.chars().count()
        ));
    }
    check_plain_chars(name)
}

/// 1 to 64 bytes of `[A-Za-z0-9._-]`: nodes exchange the name on every
/// peer connection and it appears in logs, so it stays short and plain.
pub(crate) fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > CLUSTER_NAME_BYTES_MAX {
        return Err(format!(
            "must be at most {CLUSTER_NAME_BYTES_MAX} bytes, got {}",
            name.len()
        ));
    }
    check_plain_chars(name)
}

/// Only `[A-Za-z0-9._-]`.
fn check_plain_chars(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "{name:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Runs checks for keys that have no issue yet.
struct Checker<'a> {
    issues: &'a mut Issues,
}

impl Checker<'_> {
    fn check(&mut self, key: &str, result: impl FnOnce() -> Result<(), String>) {
        if self.issues.has(key) {
            return;
        }
        if let Err(reason) = result() {
            self.issues.push(key, reason);
        }
    }

    fn int(&mut self, key: &str, rule: IntRule, value: impl Into<i64>) {
        let value = value.into();
        self.check(key, || rule.check(value));
    }

    fn duration(&mut self, key: &str, rule: DurationRule, value: Duration) {
        self.check(key, || rule.check(value));
    }
}

/// Checks every rule on `config`, adding an issue for each one broken,
/// except on keys (or their parents) that `issues` already names.
pub(crate) fn validate(config: &Config, issues: &mut Issues) {
    let mut checker = Checker { issues };
    validate_node(config, &mut checker);
    validate_cluster(config, &mut checker);
    validate_leases(config, &mut checker);
    validate_limits(config, &mut checker);
    validate_dataplane(config, &mut checker);
    validate_qos(config, &mut checker);
    validate_tenants(config, &mut checker);
    validate_log(config, &mut checker);
    validate_admin(config, &mut checker);
}

fn validate_log(config: &Config, checker: &mut Checker<'_>) {
    let targets = &config.log.targets;
    checker.check("log.level", || {
        for (index, target) in targets.iter().enumerate() {
            crate::config::check_log_target(&target.target)?;
            if targets[..index].iter().any(|t| t.target == target.target) {
                return Err(format!("target {:?} has two directives", target.target));
            }
        }
        Ok(())
    });
}

/// The admin endpoint may not take the client port (both bound by this
/// node: one of them would fail, or share it through SO_REUSEPORT).
fn validate_admin(config: &Config, checker: &mut Checker<'_>) {
    let Some(admin) = config.admin.listen else {
        return;
    };
    let client = config.listen.client;
    if checker.issues.has("listen.client") || admin.port() == 0 {
        return;
    }
    checker.check("admin.listen", || {
        let same_ip = admin.ip() == client.ip()
            || admin.ip().is_unspecified()
            || client.ip().is_unspecified();
        if admin.port() == client.port() && same_ip {
            Err(format!(
                "must not use the client port of listen.client ({client}); the default is \
                 {}",
                crate::config::LISTEN_ADMIN_DEFAULT
            ))
        } else {
            Ok(())
        }
    });
}

fn validate_node(config: &Config, checker: &mut Checker<'_>) {
    let node = &config.node;
    checker.int("node.id", NODE_ID, node.id);
    if let Some(data_dir) = &node.data_dir {
        checker.check("node.data_dir", || {
            if data_dir.as_os_str().is_empty() {
                Err("must not be empty; leave it out for no data directory".to_owned())
            } else {
                Ok(())
            }
        });
    }
    match &node.cores {
        CoreSelection::All => {}
        CoreSelection::Count(count) => checker.int("node.cores", CORE_COUNT, *count),
        CoreSelection::Cpus(cpus) => {
            checker.check("node.cores", || {
                if cpus.is_empty() {
                    Err("the list of CPU ids must not be empty; use \"all\" for every core".into())
                } else {
                    Ok(())
                }
            });
            let mut first_index_by_cpu = HashMap::new();
            for (index, &cpu) in cpus.iter().enumerate() {
                let key = format!("node.cores[{index}]");
                checker.int(&key, CPU_ID, cpu);
                let first = *first_index_by_cpu.entry(cpu).or_insert(index);
                if first != index {
                    checker.check(&key, || {
                        Err(format!(
                            "duplicate CPU id {cpu}; node.cores[{first}] already lists it"
                        ))
                    });
                }
            }
        }
    }
}

fn validate_cluster(config: &Config, checker: &mut Checker<'_>) {
    let cluster = &config.cluster;
    checker.check("cluster.name", || check_cluster_name(&cluster.name));
    if let Some(file) = &cluster.secret_file {
        checker.check("cluster.secret_file", || {
            if file.as_os_str().is_empty() {
                Err("must not be empty; leave it out for unauthenticated peers".to_owned())
            } else {
                Ok(())
            }
        });
    }
    checker.duration(
        "cluster.heartbeat_interval",
        HEARTBEAT_INTERVAL,
        cluster.heartbeat_interval,
    );
    checker.duration(
        "cluster.election_timeout",
        ELECTION_TIMEOUT,
        cluster.election_timeout,
    );
    if !checker.issues.has("cluster.heartbeat_interval") {
        checker.check("cluster.election_timeout", || {
            check_election_timeout(cluster)
        });
    }
    checker.check("cluster.snapshot_entries", || {
        SNAPSHOT_ENTRIES.check_u64(cluster.snapshot_entries)
    });
    validate_peers(config, checker);
}

/// At least [`HEARTBEATS_PER_ELECTION_MIN`] heartbeat intervals.
fn check_election_timeout(cluster: &ClusterConfig) -> Result<(), String> {
    let min = cluster
        .heartbeat_interval
        .saturating_mul(HEARTBEATS_PER_ELECTION_MIN);
    if cluster.election_timeout >= min {
        return Ok(());
    }
    // As for min_ttl: an operator who raises only heartbeat_interval trips
    // over an election_timeout they never wrote; say so.
    let hint = if cluster.election_timeout == ClusterConfig::default().election_timeout {
        " (the default; set cluster.election_timeout higher)"
    } else {
        ""
    };
    Err(format!(
        "must be at least {HEARTBEATS_PER_ELECTION_MIN} x cluster.heartbeat_interval ({}), \
         that is {}, got {}{hint}",
        format_duration(cluster.heartbeat_interval),
        format_duration(min),
        format_duration(cluster.election_timeout)
    ))
}

fn validate_peers(config: &Config, checker: &mut Checker<'_>) {
    let peers = &config.cluster.peers;
    if peers.is_empty() {
        // A cluster of one: nothing to cross-check.
        return;
    }
    let mut first_index_by_id: HashMap<u16, usize> = HashMap::new();
    let mut first_index_by_peer: HashMap<SocketAddr, usize> = HashMap::new();
    let mut first_index_by_client: HashMap<SocketAddr, usize> = HashMap::new();
    for (index, peer) in peers.iter().enumerate() {
        let id_key = format!("cluster.peers[{index}].id");
        checker.int(&id_key, NODE_ID, peer.id);
        check_unique(
            checker,
            &id_key,
            "peer id",
            peer.id,
            index,
            &mut first_index_by_id,
        );

        let peer_key = format!("cluster.peers[{index}].peer");
        checker.check(&peer_key, || {
            if peer.peer.port() == 0 {
                Err(format!(
                    "port must not be 0: the other members connect to it, got {}",
                    peer.peer
                ))
            } else {
                Ok(())
            }
        });
        check_unique(
            checker,
            &peer_key,
            "peer address",
            peer.peer,
            index,
            &mut first_index_by_peer,
        );

        let client_key = format!("cluster.peers[{index}].client");
        check_unique(
            checker,
            &client_key,
            "client address",
            peer.client,
            index,
            &mut first_index_by_client,
        );
    }

    // With a bad id anywhere, this node's entry may be the bad one.
    let ids_known = !checker.issues.has("node.id")
        && (0..peers.len()).all(|index| !checker.issues.has(&format!("cluster.peers[{index}].id")));
    if !ids_known {
        return;
    }
    let node_id = config.node.id;
    let Some(index) = peers.iter().position(|peer| peer.id == node_id) else {
        checker.check("cluster.peers", || {
            Err(format!(
                "no entry has this node's id {node_id} (node.id); list every member of the \
                 cluster, this node included"
            ))
        });
        return;
    };

    // Tests bind port 0 and learn the real port only once listening.
    let listen_client = config.listen.client;
    if checker.issues.has("listen.client") || listen_client.port() == 0 {
        return;
    }
    let client = peers[index].client;
    checker.check(&format!("cluster.peers[{index}].client"), || {
        if client == listen_client {
            Ok(())
        } else {
            Err(format!(
                "this node's entry (id {node_id}) must list listen.client ({listen_client}), \
                 got {client}"
            ))
        }
    });
}

/// Reports `value` at `key` when an earlier entry (one without an issue on
/// the same field) already has it.
fn check_unique<T: std::hash::Hash + Eq + Copy + std::fmt::Display>(
    checker: &mut Checker<'_>,
    key: &str,
    what: &str,
    value: T,
    index: usize,
    first_index_by_value: &mut HashMap<T, usize>,
) {
    if checker.issues.has(key) {
        return;
    }
    let first = *first_index_by_value.entry(value).or_insert(index);
    if first != index {
        checker.check(key, || {
            Err(format!(
                "duplicate {what} {value}; cluster.peers[{first}] already uses it"
            ))
        });
    }
}

fn validate_leases(config: &Config, checker: &mut Checker<'_>) {
    let leases = &config.leases;
    checker.duration("leases.max_ttl", MAX_TTL, leases.max_ttl);
    checker.duration("leases.min_ttl", MIN_TTL, leases.min_ttl);
    if !checker.issues.has("leases.max_ttl") {
        checker.check("leases.min_ttl", || {
            if leases.min_ttl <= leases.max_ttl {
                Ok(())
            } else {
                // An operator who lowers only max_ttl trips over a min_ttl
                // they never wrote; say so.
                let hint = if leases.min_ttl == LeaseConfig::default().min_ttl {
                    " (the default; set leases.min_ttl lower)"
                } else {
                    ""
                };
                Err(format!(
                    "must not exceed leases.max_ttl ({}), got {}{hint}",
                    format_duration(leases.max_ttl),
                    format_duration(leases.min_ttl)
                ))
            }
        });
    }
    checker.check("leases.max_drift", || check_max_drift(leases.max_drift));
    checker.duration(
        "leases.lock_delay_max",
        LOCK_DELAY_MAX,
        leases.lock_delay_max,
    );
    checker.int(
        "leases.table_capacity",
        TABLE_CAPACITY,
        leases.table_capacity,
    );
    if leases.replication == Replication::Quorum {
        checker.check("leases.table_capacity", || {
            if leases.table_capacity <= TABLE_CAPACITY_REPLICATED_MAX {
                Ok(())
            } else {
                Err(format!(
                    "must be at most {TABLE_CAPACITY_REPLICATED_MAX} with leases.replication = \"quorum\", got {}: a raft snapshot carries every lease, and a full table of the longest names must fit in 512 MiB (use replication = \"none\" for a larger table)",
                    leases.table_capacity
                ))
            }
        });
    }
    checker.duration("leases.reclaim_after", RECLAIM_AFTER, leases.reclaim_after);
    checker.duration(
        "leases.sweep_interval",
        SWEEP_INTERVAL,
        leases.sweep_interval,
    );
}

fn validate_limits(config: &Config, checker: &mut Checker<'_>) {
    let limits = &config.limits;
    checker.int(
        "limits.connections_max",
        CONNECTIONS_MAX,
        limits.connections_max,
    );
    checker.int("limits.waiters_max", WAITERS_MAX, limits.waiters_max);
    checker.int(
        "limits.frame_payload_max",
        FRAME_PAYLOAD_MAX,
        limits.frame_payload_max,
    );
    checker.duration(
        "limits.handshake_timeout",
        HANDSHAKE_TIMEOUT,
        limits.handshake_timeout,
    );
    checker.duration("limits.frame_timeout", FRAME_TIMEOUT, limits.frame_timeout);
    checker.int(
        "limits.pending_per_connection_max",
        PENDING_PER_CONNECTION_MAX,
        limits.pending_per_connection_max,
    );
    checker.int(
        "limits.unauthenticated_max",
        UNAUTHENTICATED_MAX,
        limits.unauthenticated_max,
    );
    checker.duration("limits.idle_timeout", IDLE_TIMEOUT, limits.idle_timeout);
    checker.duration(
        "limits.write_stall_timeout",
        WRITE_STALL_TIMEOUT,
        limits.write_stall_timeout,
    );
    checker.int(
        "limits.waiters_per_connection_max",
        WAITERS_PER_CONNECTION_MAX,
        limits.waiters_per_connection_max,
    );
    checker.duration("limits.wait_max", WAIT_MAX, limits.wait_max);
    checker.int(
        "limits.tenant_leases_max",
        TENANT_LEASES_MAX,
        limits.tenant_leases_max,
    );
    checker.int(
        "limits.tenant_waiters_max",
        TENANT_WAITERS_MAX,
        limits.tenant_waiters_max,
    );
    checker.int(
        "limits.tenant_connections_max",
        TENANT_CONNECTIONS_MAX,
        limits.tenant_connections_max,
    );
}

fn validate_dataplane(config: &Config, checker: &mut Checker<'_>) {
    let dataplane = &config.dataplane;
    checker.duration(
        "dataplane.preempt_timer",
        PREEMPT_TIMER,
        dataplane.preempt_timer,
    );
    checker.duration("dataplane.rpc_latency", RPC_LATENCY, dataplane.rpc_latency);
    checker.duration("dataplane.busy_poll", BUSY_POLL, dataplane.busy_poll);
    checker.int("dataplane.client_dscp", CLIENT_DSCP, dataplane.client_dscp);
}

fn validate_qos(config: &Config, checker: &mut Checker<'_>) {
    let qos = &config.qos;
    checker.int("qos.peer_dscp", PEER_DSCP, qos.peer_dscp);
    if let Some(interface) = &qos.interface {
        checker.check("qos.interface", || check_interface_name(interface));
    }
    if let Some(rate) = qos.rate_bps {
        checker.check("qos.rate", || check_qos_rate(rate));
    }
    if !qos.enabled {
        return;
    }
    let required = [
        (
            "qos.interface",
            qos.interface.is_none(),
            "the interface whose egress to shape, like interface = \"eth0\"",
        ),
        (
            "qos.rate",
            qos.rate_bps.is_none(),
            "the link rate of the interface, like rate = \"1gbit\" (a little below the \
             physical rate)",
        ),
    ];
    for (key, missing, what) in required {
        if missing {
            checker.check(key, || {
                Err(format!("missing; qos.enabled = true needs {what}"))
            });
        }
    }
    if checker.issues.has("qos.peer_dscp") || checker.issues.has("dataplane.client_dscp") {
        return;
    }
    checker.check("qos.enabled", || {
        if qos.peer_dscp == 0 && config.dataplane.client_dscp == 0 {
            Err(
                "the qdisc tree sends marked packets first, but qos.peer_dscp and \
                 dataplane.client_dscp are both 0 (unmarked); mark one or disable qos"
                    .to_owned(),
            )
        } else {
            Ok(())
        }
    });
}

/// A name `ip link` would accept: 1 to 15 bytes, no `/`, `:` (alias
/// syntax) or whitespace, not `.` or `..`.
pub(crate) fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > INTERFACE_NAME_BYTES_MAX {
        return Err(format!(
            "{name:?} is {} bytes; Linux interface names are at most \
             {INTERFACE_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} contains {bad:?}, which no interface name has"
        ));
    }
    Ok(())
}

/// Within [`QOS_RATE_BPS_MIN`]..=[`QOS_RATE_BPS_MAX`].
fn check_qos_rate(rate: u64) -> Result<(), String> {
    if (QOS_RATE_BPS_MIN..=QOS_RATE_BPS_MAX).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "must be between {} and {}, got {}",
            format_rate(QOS_RATE_BPS_MIN),
            format_rate(QOS_RATE_BPS_MAX),
            format_rate(rate)
        ))
    }
}

fn validate_tenants(config: &Config, checker: &mut Checker<'_>) {
    let tenants = &config.tenants;
    checker.check("tenants", || {
        if tenants.is_empty() {
            Err("at least one [[tenants]] entry is required".to_owned())
        } else if tenants.len() > TENANT_COUNT_MAX {
            Err(format!(
                "at most {TENANT_COUNT_MAX} tenants are allowed, got {}",
                tenants.len()
            ))
        } else {
            Ok(())
        }
    });

    let mut first_index_by_name: HashMap<&str, usize> = HashMap::new();
    for (index, tenant) in tenants.iter().enumerate() {
        let name_key = format!("tenants[{index}].name");
        checker.check(&name_key, || check_tenant_name(&tenant.name));
        if !checker.issues.has(&name_key) {
            let first = *first_index_by_name.entry(&tenant.name).or_insert(index);
            if first != index {
                checker.check(&name_key, || {
                    Err(format!(
                        "duplicate tenant name {:?}; tenants[{first}] already uses it",
                        tenant.name
                    ))
                });
            }
        }
        if let Some(credential) = &tenant.credential {
            let key = format!("tenants[{index}].credential");
            checker.check(&key, || credential.check().map_err(String::from));
        }
    }

    if checker.issues.has("listen.client") || config.listen.client.ip().to_canonical().is_loopback()
    {
        return;
    }
    for (index, tenant) in tenants.iter().enumerate() {
        if tenant.credential.is_some() {
            continue;
        }
        let key = format!("tenants[{index}].credential");
        checker.check(&key, || Err(credential_required(config, &tenant.name)));
    }
}

fn credential_required(config: &Config, tenant_name: &str) -> String {
    let example = TenantCredential::ITERATIONS_MIN;
    format!(
        "a non-loopback listener (listen.client = {}) requires a credential for every tenant; \
         make one for {tenant_name:?} with `palisade tenant-credential` and set \
         credential = \"scram-sha256${example}$...\"",
        config.listen.client
    )
}

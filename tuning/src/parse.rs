//! Walks a parsed TOML table against the schema, collecting every issue.
//!
//! Why not `#[derive(Deserialize)]`: serde stops at the first error, and an
//! operator fixing a file wants every bad key at once. So the text is parsed
//! into a plain [`toml::Table`] and each section is walked by hand. The
//! walker reports unknown keys, wrong types and integers outside their range
//! (they would not fit the field), stores every good value over the built-in
//! default, and leaves the remaining range and cross-field rules to
//! [`validate`](crate::validate).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::config::{
    Config, CoreSelection, LogConfig, LogFormat, PeerConfig, Replication, TenantConfig,
};
use crate::credential::TenantCredential;
use crate::dscp::{parse_dscp, DSCP_EXPECTED};
use crate::duration::parse_duration;
use crate::error::{ConfigErrors, ConfigIssue, Issues};
use crate::rate::parse_rate;
use crate::validate::{self, IntRule};

/// The key of issues about the file as a whole.
pub(crate) const FILE_KEY: &str = "(file)";

/// The sections, in schema order.
pub(crate) const TOP_KEYS: &[&str] = &[
    "node",
    "listen",
    "cluster",
    "leases",
    "limits",
    "dataplane",
    "qos",
    "tenants",
    "log",
    "admin",
];
const NODE_KEYS: &[&str] = &["id", "data_dir", "cores"];
const LISTEN_KEYS: &[&str] = &["client"];
const CLUSTER_KEYS: &[&str] = &[
    "name",
    "heartbeat_interval",
    "election_timeout",
    "snapshot_entries",
    "secret_file",
    "peers",
];
const PEER_KEYS: &[&str] = &["id", "peer", "client"];
const LEASE_KEYS: &[&str] = &[
    "max_ttl",
    "min_ttl",
    "max_drift",
    "lock_delay_max",
    "table_capacity",
    "reclaim_after",
    "sweep_interval",
    "replication",
];
const LIMITS_KEYS: &[&str] = &[
    "connections_max",
    "waiters_max",
    "frame_payload_max",
    "handshake_timeout",
    "frame_timeout",
    "pending_per_connection_max",
    "unauthenticated_max",
    "idle_timeout",
    "write_stall_timeout",
    "waiters_per_connection_max",
    "wait_max",
    "tenant_leases_max",
    "tenant_waiters_max",
    "tenant_connections_max",
];
const DATAPLANE_KEYS: &[&str] = &["preempt_timer", "rpc_latency", "client_dscp", "busy_poll"];
const QOS_KEYS: &[&str] = &["enabled", "interface", "rate", "peer_dscp", "client_dscp"];
const TENANT_KEYS: &[&str] = &["name", "credential"];
const LOG_KEYS: &[&str] = &["level", "format"];
const ADMIN_KEYS: &[&str] = &["listen"];

/// Longest string value quoted back in a message, in characters.
const QUOTED_CHARS_MAX: usize = 40;

/// Parses `text` and checks every rule; see
/// [`Config::from_toml_str`](crate::Config::from_toml_str).
pub(crate) fn parse_config(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
    let root: Table = text.parse().map_err(|error| syntax_issue(text, &error))?;
    let mut issues = Issues::default();
    let mut config = Config::builtin_default();
    config.base_dir = base_dir.map(Path::to_path_buf);

    let root = Section {
        table: &root,
        path: String::new(),
    };
    root.report_unknown(TOP_KEYS, &mut issues);
    if let Some(node) = root.section("node", NODE_KEYS, &mut issues) {
        walk_node(&node, &mut config, &mut issues);
    }
    if let Some(listen) = root.section("listen", LISTEN_KEYS, &mut issues) {
        walk_listen(&listen, &mut config, &mut issues);
    }
    if let Some(cluster) = root.section("cluster", CLUSTER_KEYS, &mut issues) {
        walk_cluster(&cluster, &mut config, &mut issues);
    }
    if let Some(leases) = root.section("leases", LEASE_KEYS, &mut issues) {
        walk_leases(&leases, &mut config, &mut issues);
    }
    if let Some(limits) = root.section("limits", LIMITS_KEYS, &mut issues) {
        walk_limits(&limits, &mut config, &mut issues);
    }
    if let Some(dataplane) = root.section("dataplane", DATAPLANE_KEYS, &mut issues) {
        walk_dataplane(&dataplane, &mut config, &mut issues);
    }
    if let Some(qos) = root.section("qos", QOS_KEYS, &mut issues) {
        walk_qos(&qos, &root, &mut config, &mut issues);
    }
    walk_tenants(&root, &mut config, &mut issues);
    if let Some(log) = root.section("log", LOG_KEYS, &mut issues) {
        walk_log(&log, &mut config, &mut issues);
    }
    if let Some(admin) = root.section("admin", ADMIN_KEYS, &mut issues) {
        walk_admin(&admin, &mut config, &mut issues);
    }

    validate::validate(&config, &mut issues);
    issues.into_result().map(|()| config)
}

fn walk_node(node: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    node.int("id", validate::NODE_ID, &mut config.node.id, issues);
    if let Some(data_dir) = node.string("data_dir", issues) {
        config.node.data_dir = Some(PathBuf::from(data_dir));
    }
    if let Some((value, key)) = node.get("cores") {
        if let Some(cores) = cores_from(value, &key, issues) {
            config.node.cores = cores;
        }
    }
}

/// `"all"`, a count, or a list of CPU ids.
fn cores_from(value: &Value, key: &str, issues: &mut Issues) -> Option<CoreSelection> {
    match value {
        Value::String(text) if text.eq_ignore_ascii_case("all") => Some(CoreSelection::All),
        Value::Integer(count) => {
            let count = checked_int::<u16>(validate::CORE_COUNT, *count, key, issues)?;
            Some(CoreSelection::Count(count))
        }
        Value::Array(items) => {
            let mut cpus = Vec::with_capacity(items.len());
            let mut all_good = true;
            for (index, item) in items.iter().enumerate() {
                let item_key = format!("{key}[{index}]");
                let cpu = match item {
                    Value::Integer(cpu) => {
                        checked_int::<u16>(validate::CPU_ID, *cpu, &item_key, issues)
                    }
                    other => {
                        issues.push(
                            item_key,
                            format!(
                                "expected a CPU id (integer 0..=4095), got {}",
                                describe(other)
                            ),
                        );
                        None
                    }
                };
                match cpu {
                    Some(cpu) => cpus.push(cpu),
                    None => all_good = false,
                }
            }
            all_good.then_some(CoreSelection::Cpus(cpus))
        }
        other => {
            issues.push(
                key,
                format!(
                    "expected \"all\", a core count (integer 1..=1024) or a list of CPU ids \
                     like [0, 1], got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

fn walk_listen(listen: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    if let Some(address) = listen.address("client", issues) {
        config.listen.client = address;
    }
}

fn walk_cluster(cluster: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let target = &mut config.cluster;
    if let Some(name) = cluster.string("name", issues) {
        target.name = name.to_owned();
    }
    cluster.duration("heartbeat_interval", &mut target.heartbeat_interval, issues);
    cluster.duration("election_timeout", &mut target.election_timeout, issues);
    cluster.int(
        "snapshot_entries",
        validate::SNAPSHOT_ENTRIES,
        &mut target.snapshot_entries,
        issues,
    );
    if let Some(file) = cluster.string("secret_file", issues) {
        target.secret_file = Some(PathBuf::from(file));
    }
    let Some((value, key)) = cluster.get("peers") else {
        return;
    };
    let Value::Array(items) = value else {
        issues.push(
            key,
            format!(
                "expected a list of [[cluster.peers]] entries (note the double brackets), got {}",
                describe(value)
            ),
        );
        return;
    };
    // One entry per item, even for a bad item, as for tenants.
    target.peers = items
        .iter()
        .enumerate()
        .map(|(index, item)| peer_from(item, &format!("{key}[{index}]"), issues))
        .collect();
}

fn peer_from(item: &Value, path: &str, issues: &mut Issues) -> PeerConfig {
    // Stand-ins for missing or bad values; `validate` skips them because
    // their keys already have issues.
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut peer = PeerConfig {
        id: 0,
        peer: unspecified,
        client: unspecified,
    };
    let Value::Table(table) = item else {
        issues.push(
            path,
            format!(
                "expected a table with an id, a peer address and a client address, got {}",
                describe(item)
            ),
        );
        return peer;
    };
    let section = Section {
        table,
        path: path.to_owned(),
    };
    section.report_unknown(PEER_KEYS, issues);
    let require = |name: &str, what: &str, issues: &mut Issues| {
        if !table.contains_key(name) {
            issues.push(
                section.key(name),
                format!("missing; every [[cluster.peers]] entry needs {what}"),
            );
        }
    };
    require("id", "an id", issues);
    section.int("id", validate::NODE_ID, &mut peer.id, issues);
    require("peer", "a peer address", issues);
    if let Some(address) = section.address("peer", issues) {
        peer.peer = address;
    }
    require("client", "a client address", issues);
    if let Some(address) = section.address("client", issues) {
        peer.client = address;
    }
    peer
}

fn walk_leases(leases: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let target = &mut config.leases;
    leases.duration("max_ttl", &mut target.max_ttl, issues);
    leases.duration("min_ttl", &mut target.min_ttl, issues);
    if let Some((value, key)) = leases.get("max_drift") {
        match value {
            Value::Float(drift) => target.max_drift = *drift,
            // Integers are accepted so that `max_drift = 0` works; any other
            // integer is out of range and `validate` says so.
            Value::Integer(drift) => target.max_drift = *drift as f64,
            other => issues.push(
                key,
                format!("expected a number like 0.01, got {}", describe(other)),
            ),
        }
    }
    leases.duration("lock_delay_max", &mut target.lock_delay_max, issues);
    leases.int(
        "table_capacity",
        validate::TABLE_CAPACITY,
        &mut target.table_capacity,
        issues,
    );
    leases.duration("reclaim_after", &mut target.reclaim_after, issues);
    leases.duration("sweep_interval", &mut target.sweep_interval, issues);
    if let Some(text) = leases.string("replication", issues) {
        match text.parse::<Replication>() {
            Ok(mode) => target.replication = mode,
            Err(reason) => issues.push(leases.key("replication"), reason),
        }
    }
}

fn walk_limits(limits: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let target = &mut config.limits;
    limits.int(
        "connections_max",
        validate::CONNECTIONS_MAX,
        &mut target.connections_max,
        issues,
    );
    limits.int(
        "waiters_max",
        validate::WAITERS_MAX,
        &mut target.waiters_max,
        issues,
    );
    limits.int(
        "frame_payload_max",
        validate::FRAME_PAYLOAD_MAX,
        &mut target.frame_payload_max,
        issues,
    );
    limits.duration("handshake_timeout", &mut target.handshake_timeout, issues);
    limits.duration("frame_timeout", &mut target.frame_timeout, issues);
    limits.int(
        "pending_per_connection_max",
        validate::PENDING_PER_CONNECTION_MAX,
        &mut target.pending_per_connection_max,
        issues,
    );
    for (key, rule, field) in [
        (
            "unauthenticated_max",
            validate::UNAUTHENTICATED_MAX,
            &mut target.unauthenticated_max,
        ),
        (
            "waiters_per_connection_max",
            validate::WAITERS_PER_CONNECTION_MAX,
            &mut target.waiters_per_connection_max,
        ),
        (
            "tenant_leases_max",
            validate::TENANT_LEASES_MAX,
            &mut target.tenant_leases_max,
        ),
        (
            "tenant_waiters_max",
            validate::TENANT_WAITERS_MAX,
            &mut target.tenant_waiters_max,
        ),
        (
            "tenant_connections_max",
            validate::TENANT_CONNECTIONS_MAX,
            &mut target.tenant_connections_max,
        ),
    ] {
        limits.int(key, rule, field, issues);
    }
    limits.duration("idle_timeout", &mut target.idle_timeout, issues);
    limits.duration(
        "write_stall_timeout",
        &mut target.write_stall_timeout,
        issues,
    );
    limits.duration("wait_max", &mut target.wait_max, issues);
}

fn walk_dataplane(dataplane: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let target = &mut config.dataplane;
    dataplane.duration("preempt_timer", &mut target.preempt_timer, issues);
    dataplane.duration("rpc_latency", &mut target.rpc_latency, issues);
    dataplane.duration("busy_poll", &mut target.busy_poll, issues);
    dataplane.dscp(
        "client_dscp",
        validate::CLIENT_DSCP,
        &mut target.client_dscp,
        issues,
    );
}

fn walk_qos(qos: &Section<'_>, root: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let target = &mut config.qos;
    qos.boolean("enabled", &mut target.enabled, issues);
    if let Some(interface) = qos.string("interface", issues) {
        target.interface = Some(interface.to_owned());
    }
    if let Some(text) = qos.string("rate", issues) {
        match parse_rate(text) {
            Ok(rate) => target.rate_bps = Some(rate),
            Err(reason) => issues.push(qos.key("rate"), reason),
        }
    }
    qos.dscp(
        "peer_dscp",
        validate::PEER_DSCP,
        &mut target.peer_dscp,
        issues,
    );
    // `qos.client_dscp` is another name for `dataplane.client_dscp`, so
    // that every marking can be set in one section; one value, one home.
    let mut client_dscp = 0;
    if !qos.dscp(
        "client_dscp",
        validate::CLIENT_DSCP,
        &mut client_dscp,
        issues,
    ) {
        return;
    }
    let in_dataplane = root
        .get("dataplane")
        .and_then(|(value, _)| value.as_table())
        .is_some_and(|table| table.contains_key("client_dscp"));
    if issues.has("dataplane.client_dscp") {
        return;
    }
    if in_dataplane && config.dataplane.client_dscp != client_dscp {
        issues.push(
            qos.key("client_dscp"),
            format!(
                "is {client_dscp} but dataplane.client_dscp is {}; they are the same setting, \
                 set it in one place",
                config.dataplane.client_dscp
            ),
        );
        return;
    }
    config.dataplane.client_dscp = client_dscp;
}

fn walk_tenants(root: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let Some((value, key)) = root.get("tenants") else {
        return;
    };
    let Value::Array(items) = value else {
        issues.push(
            key,
            format!(
                "expected a list of [[tenants]] entries (note the double brackets), got {}",
                describe(value)
            ),
        );
        return;
    };
    // One entry per item, even for a bad item, so that later rules name the
    // same index as the file. The stand-ins are skipped by `validate`
    // because their keys already have issues.
    config.tenants = items
        .iter()
        .enumerate()
        .map(|(index, item)| tenant_from(item, &format!("{key}[{index}]"), issues))
        .collect();
}

fn tenant_from(item: &Value, path: &str, issues: &mut Issues) -> TenantConfig {
    let mut tenant = TenantConfig {
        name: String::new(),
        credential: None,
    };
    let Value::Table(table) = item else {
        issues.push(
            path,
            format!(
                "expected a table with a name and an optional credential, got {}",
                describe(item)
            ),
        );
        return tenant;
    };
    let section = Section {
        table,
        path: path.to_owned(),
    };
    section.report_unknown(TENANT_KEYS, issues);
    match section.string("name", issues) {
        Some(name) => tenant.name = name.to_owned(),
        None if !table.contains_key("name") => {
            issues.push(section.key("name"), "missing; every tenant needs a name");
        }
        None => {}
    }
    if let Some(text) = section.string("credential", issues) {
        match TenantCredential::parse(text) {
            Ok(credential) => tenant.credential = Some(credential),
            Err(reason) => issues.push(
                section.key("credential"),
                format!("invalid credential: {reason}; make one with `palisade tenant-credential`"),
            ),
        }
    }
    tenant
}

fn walk_log(log: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    if let Some(text) = log.string("level", issues) {
        match LogConfig::parse_filter(text) {
            Ok((level, targets)) => {
                config.log.level = level;
                config.log.targets = targets;
            }
            Err(reason) => issues.push(log.key("level"), reason),
        }
    }
    if let Some(text) = log.string("format", issues) {
        match text.parse::<LogFormat>() {
            Ok(format) => config.log.format = format,
            Err(reason) => issues.push(log.key("format"), reason),
        }
    }
}

/// `listen` is an address, or `"off"` for no admin endpoint.
fn walk_admin(admin: &Section<'_>, config: &mut Config, issues: &mut Issues) {
    let Some(text) = admin.string("listen", issues) else {
        return;
    };
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        config.admin.listen = None;
        return;
    }
    match text.parse::<SocketAddr>() {
        Ok(address) => config.admin.listen = Some(address),
        Err(_) => issues.push(
            admin.key("listen"),
            format!(
                "expected an IP address and port like \"127.0.0.1:7401\", or \"off\" for no \
                 admin endpoint, got {} (host names are not resolved)",
                quote(text)
            ),
        ),
    }
}

/// One table of the file and its dotted path (`""` for the root).
struct Section<'a> {
    table: &'a Table,
    path: String,
}

impl<'a> Section<'a> {
    /// The dotted key of `name` in this section. A key that is empty, or
    /// is not a bare TOML key, is shown quoted, as the file must spell it
    /// (an empty key would otherwise name nothing).
    fn key(&self, name: &str) -> String {
        let bare = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let name = if bare {
            name.to_owned()
        } else {
            format!("{name:?}")
        };
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Reports every key of this table that is not in `known`.
    fn report_unknown(&self, known: &[&str], issues: &mut Issues) {
        for name in self.table.keys() {
            if !known.contains(&name.as_str()) {
                issues.push(
                    self.key(name),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                );
            }
        }
    }

    /// The value of `name` and its dotted key, if present.
    fn get(&self, name: &str) -> Option<(&'a Value, String)> {
        self.table.get(name).map(|value| (value, self.key(name)))
    }

    /// The sub-table `name`, after reporting its unknown keys; `None` (with
    /// an issue) when it is not a table, `None` when it is absent.
    fn section(&self, name: &str, known: &[&str], issues: &mut Issues) -> Option<Section<'a>> {
        let (value, key) = self.get(name)?;
        let Value::Table(table) = value else {
            issues.push(
                &key,
                format!("expected a table ([{key}]), got {}", describe(value)),
            );
            return None;
        };
        let section = Section { table, path: key };
        section.report_unknown(known, issues);
        Some(section)
    }

    /// The string value of `name`; `None` (with an issue) for another type.
    fn string(&self, name: &str, issues: &mut Issues) -> Option<&'a str> {
        let (value, key) = self.get(name)?;
        match value {
            Value::String(text) => Some(text),
            other => {
                issues.push(key, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    /// The socket address `name` (an IP address and a port; host names are
    /// not resolved); `None` (with an issue) when it is not one.
    fn address(&self, name: &str, issues: &mut Issues) -> Option<SocketAddr> {
        let text = self.string(name, issues)?;
        match text.trim().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                issues.push(
                    self.key(name),
                    format!(
                        "expected an IP address and port like \"127.0.0.1:7400\" or \
                         \"[::1]:7400\", got {} (host names are not resolved)",
                        quote(text)
                    ),
                );
                None
            }
        }
    }

    /// Stores the duration `name` into `target` when present and readable.
    /// Its range is checked later by `validate`.
    fn duration(&self, name: &str, target: &mut Duration, issues: &mut Issues) {
        let Some((value, key)) = self.get(name) else {
            return;
        };
        match value {
            Value::String(text) => match parse_duration(text) {
                Ok(duration) => *target = duration,
                Err(reason) => issues.push(key, reason),
            },
            other => issues.push(
                key,
                format!(
                    "expected a duration string like \"10s\", got {}",
                    describe(other)
                ),
            ),
        }
    }

    /// Stores the boolean `name` into `target` when present and a boolean.
    fn boolean(&self, name: &str, target: &mut bool, issues: &mut Issues) {
        let Some((value, key)) = self.get(name) else {
            return;
        };
        match value {
            Value::Boolean(flag) => *target = *flag,
            other => issues.push(
                key,
                format!("expected true or false, got {}", describe(other)),
            ),
        }
    }

    /// Stores the DSCP `name` (a name like `"EF"` or a number within
    /// `rule`) into `target`; true when it was present and good.
    fn dscp(&self, name: &str, rule: IntRule, target: &mut u8, issues: &mut Issues) -> bool {
        let Some((value, key)) = self.get(name) else {
            return false;
        };
        let dscp = match value {
            Value::String(text) => parse_dscp(text).map_err(|reason| issues.push(&key, reason)),
            Value::Integer(number) => checked_int::<u8>(rule, *number, &key, issues).ok_or(()),
            other => {
                issues.push(
                    &key,
                    format!("expected {DSCP_EXPECTED}, got {}", describe(other)),
                );
                Err(())
            }
        };
        match dscp {
            Ok(dscp) => {
                *target = dscp;
                true
            }
            Err(()) => false,
        }
    }

    /// Stores the integer `name` into `target` when present, an integer and
    /// within `rule`.
    fn int<T: TryFrom<i64>>(&self, name: &str, rule: IntRule, target: &mut T, issues: &mut Issues) {
        let Some((value, key)) = self.get(name) else {
            return;
        };
        match value {
            Value::Integer(number) => {
                if let Some(number) = checked_int(rule, *number, &key, issues) {
                    *target = number;
                }
            }
            other => issues.push(key, format!("expected an integer, got {}", describe(other))),
        }
    }
}

/// Checks `number` against `rule` and narrows it; `None` (with an issue)
/// when out of range.
fn checked_int<T: TryFrom<i64>>(
    rule: IntRule,
    number: i64,
    key: &str,
    issues: &mut Issues,
) -> Option<T> {
    if let Err(reason) = rule.check(number) {
        issues.push(key, reason);
        return None;
    }
    let narrowed = T::try_from(number).ok();
    assert!(narrowed.is_some(), "rule for {key} fits its field type");
    narrowed
}

/// Describes a value for "got ..." in messages: its TOML type and, for
/// scalars, the value itself.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("string {}", quote(text)),
        Value::Integer(number) => format!("integer {number}"),
        Value::Float(number) => format!("float {number}"),
        Value::Boolean(flag) => format!("boolean {flag}"),
        Value::Datetime(datetime) => format!("datetime {datetime}"),
        Value::Array(_) => "array".to_owned(),
        Value::Table(_) => "table".to_owned(),
    }
}

/// Quotes a string for a message, shortened so one line stays readable.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTED_CHARS_MAX {
        format!("{text:?}")
    } else {
        let start: String = text.chars().take(QUOTED_CHARS_MAX).collect();
        format!("{start:?}...")
    }
}

/// One issue for a TOML syntax error, with its line and column.
fn syntax_issue(text: &str, error: &toml::de::Error) -> ConfigIssue {
    let message = error
        .message()
        .trim()
        .lines()
        .collect::<Vec<_>>()
        .join("; ");
    let reason = match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    };
    ConfigIssue::new(FILE_KEY, reason)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

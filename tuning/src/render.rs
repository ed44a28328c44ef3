//! Renders a [`Config`] as a complete, commented TOML file.
//!
//! Written by hand rather than through `toml::to_string` so the sections
//! come out in schema order with a short comment per key, which is what an
//! operator wants from `palisade config print-default`.

use std::fmt::Write as _;

use toml::Value;

use crate::config::{Config, CoreSelection};
use crate::dscp::dscp_name;
use crate::duration::format_duration;
use crate::rate::format_rate;

/// Renders `config`; see [`Config::to_toml`].
pub(crate) fn render(config: &Config) -> String {
    let mut out = Out::default();
    out.comment("Palisade configuration. Every key is optional; a missing key takes its default.");

    let node = &config.node;
    out.section("node");
    out.key("id", node.id, "1..=65535");
    match &node.data_dir {
        Some(data_dir) => out.key(
            "data_dir",
            string(&data_dir.to_string_lossy()),
            // A path built by hand that is not UTF-8 is written lossily:
            // TOML cannot hold it. Paths read from a file are always UTF-8.
            "relative paths are resolved against this file's folder",
        ),
        None => out.comment(
            "data_dir = \"data\"          # unset: the default location, named in the log",
        ),
    }
    let cores = match &node.cores {
        CoreSelection::All => string("all"),
        CoreSelection::Count(count) => count.to_string(),
        CoreSelection::Cpus(cpus) => {
            let ids: Vec<String> = cpus.iter().map(u16::to_string).collect();
            format!("[{}]", ids.join(", "))
        }
    };
    out.key(
        "cores",
        cores,
        "\"all\", a count 1..=1024, or a list of CPU ids like [0, 1]",
    );

    out.section("listen");
    out.key(
        "client",
        string(&config.listen.client.to_string()),
        "not loopback: every tenant needs a credential",
    );

    let cluster = &config.cluster;
    out.section("cluster");
    out.key(
        "name",
        string(&cluster.name),
        "1..=64 of [A-Za-z0-9._-]; peers of another cluster are refused",
    );
    out.key(
        "heartbeat_interval",
        duration(cluster.heartbeat_interval),
        "1ms ..= 10s",
    );
    out.key(
        "election_timeout",
        duration(cluster.election_timeout),
        "10ms ..= 60s, >= 3 x heartbeat_interval",
    );
    out.key(
        "snapshot_entries",
        cluster.snapshot_entries,
        "log entries between snapshots, 100 ..= 10000000",
    );
    match &cluster.secret_file {
        Some(file) => out.key(
            "secret_file",
            string(&file.to_string_lossy()),
            "the cluster secret peers prove they share; relative to this file's folder",
        ),
        None => {
            out.comment("secret_file = \"cluster.secret\"   # unset: peers are not authenticated")
        }
    }
    out.blank_line();
    if cluster.peers.is_empty() {
        // An example to uncomment, valid as it stands: this node alone,
        // with a peer transport.
        out.comment("Every member of the cluster, this node included. None: a cluster of one.");
        out.comment("[[cluster.peers]]");
        out.commented_key("id", config.node.id, "1..=65535, unique; one is node.id");
        out.commented_key(
            "peer",
            string(PEER_EXAMPLE),
            "raft transport address, IP:port, port != 0",
        );
        out.commented_key(
            "client",
            string(&config.listen.client.to_string()),
            "its client address; this node's is listen.client",
        );
    } else {
        out.comment("Every member of the cluster, this node included.");
    }
    for (index, peer) in cluster.peers.iter().enumerate() {
        if index > 0 {
            out.blank_line();
        }
        out.line("[[cluster.peers]]");
        out.key("id", peer.id, "1..=65535, unique; one is node.id");
        out.key(
            "peer",
            string(&peer.peer.to_string()),
            "raft transport address, IP:port, port != 0",
        );
        out.key(
            "client",
            string(&peer.client.to_string()),
            "its client address; this node's is listen.client",
        );
    }

    let leases = &config.leases;
    out.section("leases");
    out.key("max_ttl", duration(leases.max_ttl), "10ms ..= 24h");
    out.key("min_ttl", duration(leases.min_ttl), "1ms ..= max_ttl");
    out.key(
        "max_drift",
        float(leases.max_drift),
        "clock rate drift bound, 0.0 <= x < 0.5",
    );
    out.key(
        "lock_delay_max",
        duration(leases.lock_delay_max),
        "0 ..= 65535ms, whole milliseconds",
    );
    out.key(
        "table_capacity",
        leases.table_capacity,
        "leases, 1 ..= 16777216 (..= 1500000 replicated)",
    );
    out.key(
        "reclaim_after",
        duration(leases.reclaim_after),
        ">= 1s: idle free slots older than this are reclaimed",
    );
    out.key(
        "sweep_interval",
        duration(leases.sweep_interval),
        "10ms ..= 60s",
    );
    out.key(
        "replication",
        string(leases.replication.as_str()),
        "\"quorum\": grants and releases committed to the raft log (leases survive failover); \"none\": memory only, grace period after a leader change",
    );

    let limits = &config.limits;
    out.section("limits");
    out.key("connections_max", limits.connections_max, ">= 1");
    out.key("waiters_max", limits.waiters_max, ">= 1");
    out.key(
        "frame_payload_max",
        limits.frame_payload_max,
        "bytes, 1024 ..= 1048576",
    );
    out.key(
        "handshake_timeout",
        duration(limits.handshake_timeout),
        "10ms ..= 10m",
    );
    out.key(
        "frame_timeout",
        duration(limits.frame_timeout),
        "10ms ..= 10m: a started frame must complete within this",
    );
    out.key(
        "pending_per_connection_max",
        limits.pending_per_connection_max,
        ">= 1: outstanding requests per connection",
    );
    out.key(
        "unauthenticated_max",
        limits.unauthenticated_max,
        ">= 1: unfinished handshakes per node; when full the oldest is closed",
    );
    out.key(
        "idle_timeout",
        duration(limits.idle_timeout),
        "1s ..= 24h, above leases.max_ttl / 3: an authenticated connection with nothing pending is closed after this silence",
    );
    out.key(
        "write_stall_timeout",
        duration(limits.write_stall_timeout),
        "10ms ..= 10m: a connection whose replies cannot be written this long is closed",
    );
    out.key(
        "waiters_per_connection_max",
        limits.waiters_per_connection_max,
        ">= 1: queued acquires per connection",
    );
    out.key(
        "wait_max",
        duration(limits.wait_max),
        "0s ..= 24h: a longer acquire wait_ms is refused (invalid_argument)",
    );
    out.key(
        "tenant_leases_max",
        limits.tenant_leases_max,
        ">= 1: leases one tenant may hold (tenant_lease_quota)",
    );
    out.key(
        "tenant_waiters_max",
        limits.tenant_waiters_max,
        ">= 1: queued acquires of one tenant (tenant_waiter_quota)",
    );
    out.key(
        "tenant_connections_max",
        limits.tenant_connections_max,
        ">= 1: authenticated connections of one tenant (tenant_connection_quota)",
    );

    let dataplane = &config.dataplane;
    out.section("dataplane");
    out.key(
        "preempt_timer",
        duration(dataplane.preempt_timer),
        "100us ..= 100ms; no effect since the data plane left glommio (older files load)",
    );
    out.key(
        "rpc_latency",
        duration(dataplane.rpc_latency),
        "10us ..= 100ms; no effect since the data plane left glommio (older files load)",
    );
    out.key(
        "client_dscp",
        dscp(dataplane.client_dscp),
        "DSCP name (EF, CS0..CS7, AF11..AF43) or 0..=63",
    );
    out.key(
        "busy_poll",
        duration(dataplane.busy_poll),
        "0s ..= 1ms; a busy core polls this long for its next request before it sleeps (0s: never)",
    );

    let qos = &config.qos;
    out.section("qos");
    out.key(
        "enabled",
        qos.enabled,
        "install the priority qdisc tree at start (needs CAP_NET_ADMIN)",
    );
    match &qos.interface {
        Some(interface) => out.key(
            "interface",
            string(interface),
            "whose egress the tree shapes",
        ),
        None => out.commented_key(
            "interface",
            string("eth0"),
            "whose egress the tree shapes; required when enabled",
        ),
    }
    match qos.rate_bps {
        Some(rate) => out.key(
            "rate",
            string(&format_rate(rate)),
            "link rate, a little below the physical one",
        ),
        None => out.commented_key(
            "rate",
            string("1gbit"),
            "link rate, a little below the physical one; required when enabled",
        ),
    }
    out.key(
        "peer_dscp",
        dscp(qos.peer_dscp),
        "DSCP of raft peer connections",
    );
    out.comment("client_dscp: dataplane.client_dscp (either section may set it)");

    for tenant in &config.tenants {
        out.blank_line();
        out.line("[[tenants]]");
        out.key(
            "name",
            string(&tenant.name),
            "1..=64 of [A-Za-z0-9._-], unique",
        );
        if let Some(credential) = &tenant.credential {
            out.key(
                "credential",
                string(&credential.to_text()),
                "from `palisade tenant-credential`",
            );
        }
    }

    out.section("log");
    out.key(
        "level",
        string(&config.log.filter()),
        "error | warn | info | debug | trace, then target=level,...",
    );
    out.key(
        "format",
        string(config.log.format.as_str()),
        "text | json (one object per line)",
    );

    out.section("admin");
    let admin_listen = match config.admin.listen {
        Some(address) => address.to_string(),
        None => "off".to_owned(),
    };
    out.key(
        "listen",
        string(&admin_listen),
        "GET /metrics (Prometheus text); \"off\": none",
    );
    out.text
}

/// Where notes start on lines whose assignment is shorter than this.
const NOTE_COLUMN: usize = 34;

/// The peer address in the commented `[[cluster.peers]]` example.
const PEER_EXAMPLE: &str = "127.0.0.1:7421";

/// The file being written.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn blank_line(&mut self) {
        self.text.push('\n');
    }

    fn comment(&mut self, comment: &str) {
        self.line(&format!("# {comment}"));
    }

    fn section(&mut self, name: &str) {
        self.blank_line();
        self.line(&format!("[{name}]"));
    }

    /// Writes `name = value  # note`, notes lined up where values are
    /// short; `value` is already TOML.
    fn key(&mut self, name: &str, value: impl std::fmt::Display, note: &str) {
        let assignment = format!("{name} = {value}");
        writeln!(self.text, "{assignment:<NOTE_COLUMN$}  # {note}")
            .expect("writing to a String cannot fail");
    }

    /// Writes `# name = value  # note`, an example for the operator to
    /// uncomment, its note lined up with those of [`Out::key`].
    fn commented_key(&mut self, name: &str, value: impl std::fmt::Display, note: &str) {
        let assignment = format!("# {name} = {value}");
        writeln!(self.text, "{assignment:<NOTE_COLUMN$}  # {note}")
            .expect("writing to a String cannot fail");
    }
}

/// A TOML basic string, escaped by the toml crate.
fn string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// A DSCP by name when it has one (`"EF"`), else its number.
fn dscp(value: u8) -> String {
    match dscp_name(value) {
        Some(name) => string(name),
        None => value.to_string(),
    }
}

fn duration(value: std::time::Duration) -> String {
    string(&format_duration(value))
}

/// A TOML float that reads back as exactly `value`. Rust's `{:?}` is the
/// shortest text that round-trips and always has a `.` or an exponent, so
/// TOML reads it as a float; only the non-finite names differ.
fn float(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        format!("{value:?}")
    }
}

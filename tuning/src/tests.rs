//! Whole-file tests: text in, `Config` or every issue out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

mod cluster;
mod qos;

fn credential() -> TenantCredential {
    TenantCredential {
        iterations: 4096,
        salt: vec![7; 16],
        stored_key: [1; 32],
        server_key: [2; 32],
    }
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("literal address")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, None)
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!("expected {text:?} to be accepted, got:\n{errors}"),
    }
}

fn parse_err(text: &str) -> ConfigErrors {
    match parse(text) {
        Ok(config) => panic!("expected {text:?} to be rejected, got {config:?}"),
        Err(errors) => errors,
    }
}

/// `[section] key = value` is accepted.
fn accepts(section: &str, key: &str, value: &str) -> Config {
    parse_ok(&format!("[{section}]\n{key} = {value}\n"))
}

/// `[section] key = value` gives exactly one issue, on `section.key`.
fn rejects(section: &str, key: &str, value: &str) -> String {
    let errors = parse_err(&format!("[{section}]\n{key} = {value}\n"));
    assert_eq!(errors.0.len(), 1, "{section}.{key} = {value}:\n{errors}");
    assert_eq!(errors.0[0].key, format!("{section}.{key}"), "{errors}");
    errors.0[0].reason.clone()
}

#[test]
fn an_empty_or_odd_key_is_named_as_the_file_spells_it() {
    // Found by the `config` fuzz target: `""=""` was reported under an
    // empty name.
    let errors = parse_err("\"\" = \"\"\n[leases]\n\"max ttl\" = \"1s\"\n");
    assert!(errors.get("\"\"").is_some(), "{errors}");
    assert!(errors.get("leases.\"max ttl\"").is_some(), "{errors}");
}

#[test]
fn builtin_default_validates_and_round_trips() {
    let config = Config::builtin_default();
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.node.id, 1);
    assert_eq!(
        config.listen.client,
        "127.0.0.1:7400".parse::<SocketAddr>().expect("literal")
    );
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.tenants[0].name, "default");
    assert_eq!(config.tenants[0].credential, None);
    assert_eq!(config.base_dir, None);
    assert_eq!(Config::default(), config);

    let text = config.to_toml();
    assert_eq!(parse(&text), Ok(config.clone()), "rendered:\n{text}");
    // Every key is optional.
    assert_eq!(parse(""), Ok(config));
}

#[test]
fn cluster_defaults() {
    let config = Config::builtin_default();
    let cluster = &config.cluster;
    assert_eq!(cluster.name, "palisade");
    assert_eq!(cluster.name, CLUSTER_NAME_DEFAULT);
    assert_eq!(cluster.heartbeat_interval, Duration::from_millis(50));
    assert_eq!(cluster.election_timeout, Duration::from_millis(500));
    assert_eq!(cluster.snapshot_entries, 10_000);
    assert!(cluster.peers.is_empty());
    assert_eq!(*cluster, ClusterConfig::default());
    assert_eq!(
        parse("[cluster]\n").map(|config| config.cluster),
        Ok(cluster.clone())
    );

    // A cluster of one: this node, at its client listener, no peer transport.
    assert_eq!(
        config.members(),
        [Member {
            id: 1,
            peer: None,
            client: LISTEN_CLIENT_DEFAULT,
        }]
    );
    assert_eq!(config.peer_listen(), None);
    let config = parse_ok("[node]\nid = 9\n[listen]\nclient = \"[::1]:7409\"\n");
    assert_eq!(
        config.members(),
        [Member {
            id: 9,
            peer: None,
            client: address("[::1]:7409"),
        }]
    );

    // The empty peer list is written as a commented example, which reads
    // back as no peers and, uncommented, as this node alone with a peer
    // transport.
    let text = config.to_toml();
    assert!(text.contains("\n# [[cluster.peers]]\n"), "{text}");
    assert!(!text.contains("\n[[cluster.peers]]"), "{text}");
    assert_eq!(parse(&text), Ok(config.clone()), "rendered:\n{text}");
    let uncommented: String = text
        .lines()
        .map(|line| {
            let example = ["[[cluster.peers]]", "id =", "peer =", "client ="]
                .iter()
                .any(|start| line.starts_with(&format!("# {start}")));
            let line = if example { &line[2..] } else { line };
            format!("{line}\n")
        })
        .collect();
    let grown = parse_ok(&uncommented);
    assert_eq!(
        grown.members(),
        [Member {
            id: 9,
            peer: Some(address("127.0.0.1:7421")),
            client: address("[::1]:7409"),
        }]
    );
    assert_eq!(grown.peer_listen(), Some(address("127.0.0.1:7421")));
}

#[test]
fn every_field_round_trips() {
    let config = Config {
        node: NodeConfig {
            id: 65535,
            data_dir: Some(PathBuf::from("state dir/\"quoted\"\\node")),
            cores: CoreSelection::Cpus(vec![3, 0, 4095]),
        },
        listen: ListenConfig {
            client: "[fe80::1]:0".parse().expect("literal"),
        },
        cluster: ClusterConfig {
            name: format!("{}.-_Z9", "p".repeat(59)),
            heartbeat_interval: Duration::from_secs(10),
            election_timeout: Duration::from_secs(60),
            snapshot_entries: 10_000_000,
            secret_file: Some(PathBuf::from("secrets/cluster key")),
            peers: vec![
                PeerConfig {
                    id: 1,
                    peer: "10.0.0.1:1".parse().expect("literal"),
                    client: "10.0.0.1:0".parse().expect("literal"),
                },
                PeerConfig {
                    id: 65535,
                    peer: "[fe80::1]:65535".parse().expect("literal"),
                    // Not listen.client: its port 0 means a test picks one.
                    client: "[fe80::1]:7400".parse().expect("literal"),
                },
                PeerConfig {
                    id: 300,
                    peer: "[::ffff:10.0.0.3]:7421".parse().expect("literal"),
                    client: "0.0.0.0:7411".parse().expect("literal"),
                },
            ],
        },
        leases: LeaseConfig {
            max_ttl: Duration::from_nanos(10_000_000_001),
            min_ttl: Duration::from_micros(1500),
            max_drift: 0.123_456_789_012_345_67,
            lock_delay_max: Duration::ZERO,
            table_capacity: 1 << 24,
            reclaim_after: Duration::from_secs(86_400 * 365),
            sweep_interval: Duration::from_secs(60),
            replication: crate::Replication::None,
        },
        limits: LimitsConfig {
            connections_max: u32::MAX,
            waiters_max: 1,
            frame_payload_max: 1024,
            handshake_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_millis(10),
            pending_per_connection_max: 7,
            unauthenticated_max: 3,
            idle_timeout: Duration::from_secs(86_400),
            write_stall_timeout: Duration::from_millis(10),
            waiters_per_connection_max: 5,
            wait_max: Duration::ZERO,
            tenant_leases_max: 11,
            tenant_waiters_max: 13,
            tenant_connections_max: u32::MAX,
        },
        dataplane: DataplaneConfig {
            preempt_timer: Duration::from_micros(100),
            rpc_latency: Duration::from_millis(100),
            client_dscp: 1,
            busy_poll: Duration::from_micros(250),
        },
        qos: QosConfig {
            enabled: true,
            interface: Some("bond0.100".to_owned()),
            rate_bps: Some(2_500_000_001),
            peer_dscp: 63,
        },
        tenants: vec![
            TenantConfig {
                name: "a.b_c-D9".to_owned(),
                credential: Some(credential()),
            },
            TenantConfig {
                name: "x".repeat(64),
                credential: Some(TenantCredential {
                    iterations: 10_000_000,
                    salt: vec![0xff; 64],
                    stored_key: [0xee; 32],
                    server_key: [0; 32],
                }),
            },
        ],
        log: LogConfig {
            level: LogLevel::Trace,
            targets: vec![
                LogTarget {
                    target: "palisade_control::node".to_owned(),
                    level: LogLevel::Error,
                },
                LogTarget {
                    target: "raft".to_owned(),
                    level: LogLevel::Warn,
                },
            ],
            format: LogFormat::Json,
        },
        admin: AdminConfig {
            listen: Some("[::1]:65535".parse().expect("literal")),
        },
        base_dir: Some(PathBuf::from("/srv/palisade")),
    };
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.cluster.name.len(), CLUSTER_NAME_BYTES_MAX);
    let text = config.to_toml();
    assert_eq!(
        Config::from_toml_str(&text, Some(Path::new("/srv/palisade"))),
        Ok(config.clone()),
        "rendered:\n{text}"
    );

    // The other core selections and a named DSCP.
    let mut config = Config::builtin_default();
    config.node.cores = CoreSelection::Count(1024);
    config.dataplane.client_dscp = 34;
    config.leases.max_drift = 0.0;
    let text = config.to_toml();
    assert!(text.contains("client_dscp = \"AF41\""), "{text}");
    assert!(text.contains("max_drift = 0.0"), "{text}");
    assert_eq!(parse(&text), Ok(config));
}

#[test]
fn three_bad_keys_are_all_reported() {
    let errors = parse_err(
        r#"
        [node]
        id = 0

        [leases]
        max_ttl = 30

        [limits]
        frame_payload_max = 100
        "#,
    );
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        ["node.id", "leases.max_ttl", "limits.frame_payload_max"],
        "{errors}"
    );
    assert_eq!(
        errors
            .get("leases.max_ttl")
            .map(|issue| issue.reason.as_str()),
        Some("expected a duration string like \"10s\", got integer 30")
    );
    assert_eq!(
        errors.get("node.id").map(|issue| issue.reason.as_str()),
        Some("must be between 1 and 65535, got 0")
    );
    assert_eq!(
        errors.to_string(),
        "node.id: must be between 1 and 65535, got 0\n\
         leases.max_ttl: expected a duration string like \"10s\", got integer 30\n\
         limits.frame_payload_max: must be between 1024 and 1048576, got 100"
    );
}

#[test]
fn unknown_keys_and_sections() {
    let errors = parse_err(
        r#"
        colour = "red"
        [leases]
        max_tll = "1s"
        [lease]
        max_ttl = "1s"
        "#,
    );
    assert_eq!(errors.0.len(), 3, "{errors}");
    assert_eq!(
        errors
            .get("leases.max_tll")
            .map(|issue| issue.reason.as_str()),
        Some(
            "unknown key; expected one of: max_ttl, min_ttl, max_drift, lock_delay_max, \
             table_capacity, reclaim_after, sweep_interval, replication"
        )
    );
    assert_eq!(
        errors.get("lease").map(|issue| issue.reason.as_str()),
        Some(
            "unknown key; expected one of: node, listen, cluster, leases, limits, dataplane, \
             qos, tenants, log, admin"
        )
    );
    assert!(errors.has("colour"));
    // The unknown section's own keys are not reported again.
    assert!(!errors.has("lease.max_ttl"));

    let reason = rejects("dataplane", "dscp", "\"EF\"");
    assert!(reason.starts_with("unknown key; expected one of: preempt_timer"));
}

#[test]
fn wrong_types() {
    assert_eq!(
        rejects("node", "id", "\"1\""),
        "expected an integer, got string \"1\""
    );
    assert_eq!(
        rejects("node", "id", "1.0"),
        "expected an integer, got float 1"
    );
    assert_eq!(
        rejects("node", "data_dir", "[]"),
        "expected a string, got array"
    );
    assert_eq!(
        rejects("leases", "max_drift", "\"0.01\""),
        "expected a number like 0.01, got string \"0.01\""
    );
    assert_eq!(
        rejects("log", "level", "true"),
        "expected a string, got boolean true"
    );
    assert!(rejects("leases", "min_ttl", "{ a = 1 }").ends_with("got table"));
    assert!(rejects("leases", "min_ttl", "1979-05-27").ends_with("got datetime 1979-05-27"));
    let long = format!("\"{}\"", "x".repeat(100));
    let reason = rejects("node", "id", &long);
    assert!(reason.ends_with("xxx\"..."), "{reason}");
    assert!(reason.len() < 100, "{reason}");

    let errors = parse_err("leases = 5\nlimits = []\n");
    assert_eq!(
        errors.get("leases").map(|issue| issue.reason.as_str()),
        Some("expected a table ([leases]), got integer 5")
    );
    assert!(errors.has("limits"));
}

#[test]
fn integer_bounds() {
    assert_eq!(accepts("node", "id", "1").node.id, 1);
    assert_eq!(accepts("node", "id", "65535").node.id, 65535);
    assert_eq!(
        rejects("node", "id", "0"),
        "must be between 1 and 65535, got 0"
    );
    assert_eq!(
        rejects("node", "id", "65536"),
        "must be between 1 and 65535, got 65536"
    );
    assert!(rejects("node", "id", "-1").contains("between 1 and 65535"));

    let capacity = |config: Config| config.leases.table_capacity;
    assert_eq!(capacity(accepts("leases", "table_capacity", "1")), 1);
    assert_eq!(
        capacity(parse_ok(
            "[leases]\nreplication = \"none\"\ntable_capacity = 16777216\n"
        )),
        16_777_216
    );
    rejects("leases", "table_capacity", "0");
    rejects("leases", "table_capacity", "16777217");
    // Replicated (the default), a full table's snapshot must fit.
    assert_eq!(
        capacity(accepts("leases", "table_capacity", "1500000")),
        crate::TABLE_CAPACITY_REPLICATED_MAX
    );
    let reason = rejects("leases", "table_capacity", "1500001");
    assert!(
        reason.starts_with(
            "must be at most 1500000 with leases.replication = \"quorum\", got 1500001"
        ),
        "{reason}"
    );

    let payload = |config: Config| config.limits.frame_payload_max;
    assert_eq!(
        payload(accepts("limits", "frame_payload_max", "1024")),
        1024
    );
    assert_eq!(
        payload(accepts("limits", "frame_payload_max", "1048576")),
        1_048_576
    );
    rejects("limits", "frame_payload_max", "1023");
    rejects("limits", "frame_payload_max", "1048577");

    for key in [
        "connections_max",
        "waiters_max",
        "pending_per_connection_max",
        "unauthenticated_max",
        "waiters_per_connection_max",
        "tenant_leases_max",
        "tenant_waiters_max",
        "tenant_connections_max",
    ] {
        accepts("limits", key, "1");
        accepts("limits", key, "4294967295");
        assert_eq!(rejects("limits", key, "0"), "must be at least 1, got 0");
        assert_eq!(
            rejects("limits", key, "4294967296"),
            "must be at most 4294967295, got 4294967296"
        );
    }
}

#[test]
fn duration_bounds() {
    let cases = [
        ("leases", "max_ttl", "10ms", "9ms", "24h", "1441m"),
        (
            "leases",
            "sweep_interval",
            "10ms",
            "9999us",
            "60s",
            "60001ms",
        ),
        (
            "cluster",
            "heartbeat_interval",
            "1ms",
            "999us",
            "10s",
            "10001ms",
        ),
        (
            "cluster",
            "election_timeout",
            "10ms",
            "9ms",
            "60s",
            "60001ms",
        ),
        ("limits", "handshake_timeout", "10ms", "9ms", "10m", "601s"),
        ("limits", "frame_timeout", "10ms", "0s", "10m", "1h"),
        (
            "limits",
            "write_stall_timeout",
            "10ms",
            "9ms",
            "10m",
            "601s",
        ),
        ("limits", "idle_timeout", "1s", "999ms", "24h", "1441m"),
        ("limits", "wait_max", "0s", "0s", "24h", "1441m"),
        (
            "dataplane",
            "preempt_timer",
            "100us",
            "99us",
            "100ms",
            "101ms",
        ),
        (
            "dataplane",
            "rpc_latency",
            "10us",
            "9.999us",
            "100ms",
            "0.1001s",
        ),
        ("dataplane", "busy_poll", "0s", "0s", "1ms", "1001us"),
        (
            "leases",
            "lock_delay_max",
            "0ms",
            "0ms",
            "65535ms",
            "65536ms",
        ),
    ];
    for (section, key, low, too_low, high, too_high) in cases {
        // A max_ttl below the default min_ttl also needs a lower min_ttl;
        // the heartbeat and election bounds need the other one out of the
        // way of the 3 x heartbeat_interval rule.
        let key_line = |value: &str| match key {
            "max_ttl" => format!("min_ttl = \"1ms\"\n{key} = \"{value}\""),
            "heartbeat_interval" => format!("election_timeout = \"60s\"\n{key} = \"{value}\""),
            "election_timeout" => format!("heartbeat_interval = \"1ms\"\n{key} = \"{value}\""),
            _ => format!("{key} = \"{value}\""),
        };
        parse_ok(&format!("[{section}]\n{}\n", key_line(low)));
        parse_ok(&format!("[{section}]\n{}\n", key_line(high)));
        let mut bad = vec![too_high];
        if too_low != low {
            bad.push(too_low);
        }
        for value in bad {
            let errors = parse_err(&format!("[{section}]\n{}\n", key_line(value)));
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert_eq!(errors.0[0].key, format!("{section}.{key}"), "{errors}");
            assert!(
                errors.0[0].reason.starts_with("must be between"),
                "{errors}"
            );
        }
    }
    assert_eq!(
        rejects("leases", "max_ttl", "\"24h1ms\""),
        "unknown unit \"h1ms\" in duration \"24h1ms\"; use one of us, ms, s, m, h"
    );
    assert_eq!(
        rejects("leases", "max_ttl", "\"25h\""),
        "must be between 10ms and 24h, got 25h"
    );

    // Open-ended ranges.
    accepts("leases", "min_ttl", "\"1ms\"");
    assert_eq!(
        rejects("leases", "min_ttl", "\"999us\""),
        "must be at least 1ms, got 999us"
    );
    accepts("leases", "reclaim_after", "\"1s\"");
    accepts("leases", "reclaim_after", "\"10000h\"");
    assert_eq!(
        rejects("leases", "reclaim_after", "\"999ms\""),
        "must be at least 1s, got 999ms"
    );

    // Replication is one of two words.
    assert_eq!(
        accepts("leases", "replication", "\"none\"")
            .leases
            .replication,
        crate::Replication::None
    );
    assert_eq!(
        accepts("leases", "replication", "\"Quorum\"")
            .leases
            .replication,
        crate::Replication::Quorum
    );
    assert_eq!(
        rejects("leases", "replication", "\"raft\""),
        "unknown replication mode \"raft\"; expected \"quorum\" or \"none\""
    );
    let reason = rejects("leases", "replication", "1");
    assert!(reason.contains("expected a string"), "{reason}");

    // The lock delay is stored in whole milliseconds.
    let reason = rejects("leases", "lock_delay_max", "\"1.5ms\"");
    assert!(reason.contains("whole number of milliseconds"), "{reason}");
    let config = accepts("leases", "lock_delay_max", "\"0ms\"");
    assert_eq!(config.leases.lock_delay_max, Duration::ZERO);

    // Durations need a unit and must parse.
    let reason = rejects("leases", "max_ttl", "\"30\"");
    assert!(reason.contains("no unit"), "{reason}");
    assert!(reason.contains("\"30s\""), "{reason}");
    assert!(rejects("leases", "max_ttl", "\"-1s\"").contains("negative"));
    assert!(rejects("leases", "max_ttl", "\"soon\"").contains("invalid duration"));
    assert!(rejects("leases", "max_ttl", "\"99999999999999999999h\"").contains("too large"));
    let config = accepts("leases", "max_ttl", "\"1.5s\"");
    assert_eq!(config.leases.max_ttl, Duration::from_millis(1500));
}

#[test]
fn min_ttl_must_not_exceed_max_ttl() {
    let config = parse_ok("[leases]\nmax_ttl = \"1s\"\nmin_ttl = \"1s\"\n");
    assert_eq!(config.leases.min_ttl, config.leases.max_ttl);

    let errors = parse_err("[leases]\nmax_ttl = \"1s\"\nmin_ttl = \"1001ms\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(
        errors
            .get("leases.min_ttl")
            .map(|issue| issue.reason.as_str()),
        Some("must not exceed leases.max_ttl (1s), got 1001ms")
    );

    // A bad max_ttl is reported once, not again as a min_ttl knock-on.
    let errors = parse_err("[leases]\nmax_ttl = \"1ms\"\nmin_ttl = \"5ms\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.has("leases.max_ttl"));

    // A min_ttl above the default max_ttl is caught when max_ttl is absent.
    let errors = parse_err("[leases]\nmin_ttl = \"31s\"\n");
    assert!(errors.has("leases.min_ttl"));

    // A max_ttl below the default min_ttl says the default is the problem.
    let errors = parse_err("[leases]\nmax_ttl = \"50ms\"\n");
    assert_eq!(
        errors
            .get("leases.min_ttl")
            .map(|issue| issue.reason.as_str()),
        Some(
            "must not exceed leases.max_ttl (50ms), got 100ms \
             (the default; set leases.min_ttl lower)"
        )
    );
}

#[test]
fn max_drift_bounds() {
    let drift = |value: &str| accepts("leases", "max_drift", value).leases.max_drift;
    assert_eq!(drift("0.0"), 0.0);
    assert_eq!(drift("0"), 0.0);
    assert_eq!(drift("0.4999"), 0.4999);
    for bad in ["0.5", "1", "-0.1", "-1", "nan", "inf"] {
        let reason = rejects("leases", "max_drift", bad);
        assert!(
            reason.contains("0.0 up to (not including) 0.5"),
            "{bad}: {reason}"
        );
    }
}

#[test]
fn dscp_values() {
    let dscp = |value: &str| {
        accepts("dataplane", "client_dscp", value)
            .dataplane
            .client_dscp
    };
    assert_eq!(dscp("\"EF\""), 46);
    assert_eq!(dscp("\"cs6\""), 48);
    assert_eq!(dscp("\"AF41\""), 34);
    assert_eq!(dscp("\"0\""), 0);
    assert_eq!(dscp("0"), 0);
    assert_eq!(dscp("63"), 63);
    assert_eq!(
        rejects("dataplane", "client_dscp", "64"),
        "must be between 0 and 63, got 64"
    );
    rejects("dataplane", "client_dscp", "-1");
    let reason = rejects("dataplane", "client_dscp", "\"CS8\"");
    assert!(reason.contains("EF, CS0..CS7, AF11..AF43"), "{reason}");
    let reason = rejects("dataplane", "client_dscp", "true");
    assert!(reason.starts_with("expected a DSCP name"), "{reason}");
}

#[test]
fn core_selection() {
    let cores = |value: &str| accepts("node", "cores", value).node.cores;
    assert_eq!(cores("\"all\""), CoreSelection::All);
    assert_eq!(cores("1"), CoreSelection::Count(1));
    assert_eq!(cores("1024"), CoreSelection::Count(1024));
    assert_eq!(cores("[0, 4095]"), CoreSelection::Cpus(vec![0, 4095]));
    assert_eq!(
        rejects("node", "cores", "0"),
        "must be between 1 and 1024, got 0"
    );
    rejects("node", "cores", "1025");
    assert!(rejects("node", "cores", "\"some\"").starts_with("expected \"all\""));
    assert!(rejects("node", "cores", "[]").contains("must not be empty"));

    let errors = parse_err("[node]\ncores = [1, 4096, \"2\", 1, -1, 1]\n");
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        ["node.cores[1]", "node.cores[2]", "node.cores[4]"],
        "{errors}"
    );
    assert_eq!(
        errors
            .get("node.cores[1]")
            .map(|issue| issue.reason.as_str()),
        Some("must be between 0 and 4095, got 4096")
    );

    let errors = parse_err("[node]\ncores = [1, 2, 1, 1]\n");
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["node.cores[2]", "node.cores[3]"], "{errors}");
    assert_eq!(
        errors
            .get("node.cores[3]")
            .map(|issue| issue.reason.as_str()),
        Some("duplicate CPU id 1; node.cores[0] already lists it")
    );
}

#[test]
fn listen_and_credentials() {
    let credential_text = credential().to_text();

    // Loopback needs no credential, in either address family.
    for address in [
        "127.0.0.1:7400",
        "127.1.2.3:1",
        "[::1]:7400",
        "[::ffff:127.0.0.1]:7400",
    ] {
        accepts("listen", "client", &format!("\"{address}\""));
    }
    let config = accepts("listen", "client", "\"[::1]:7400\"");
    assert!(config.listen.client.is_ipv6());

    // Not loopback: every tenant without a credential is named.
    for address in ["0.0.0.0:7400", "10.0.0.5:7400", "[::]:7400"] {
        let errors = parse_err(&format!(
            "[listen]\nclient = \"{address}\"\n\
             [[tenants]]\nname = \"a\"\ncredential = \"{credential_text}\"\n\
             [[tenants]]\nname = \"b\"\n"
        ));
        assert_eq!(errors.0.len(), 1, "{errors}");
        let issue = errors
            .get("tenants[1].credential")
            .expect("tenant b is named");
        assert!(
            issue.reason.contains("non-loopback listener"),
            "{}",
            issue.reason
        );
        assert!(
            issue.reason.contains("palisade tenant-credential"),
            "{}",
            issue.reason
        );
    }

    // The default tenant gets the same treatment.
    let errors = parse_err("[listen]\nclient = \"0.0.0.0:7400\"\n");
    assert!(errors.has("tenants[0].credential"), "{errors}");

    // With a credential it is accepted.
    let config = parse_ok(&format!(
        "[listen]\nclient = \"0.0.0.0:7400\"\n\
         [[tenants]]\nname = \"default\"\ncredential = \"{credential_text}\"\n"
    ));
    assert_eq!(config.tenants[0].credential, Some(credential()));

    // A bad address is reported alone, without a credential knock-on.
    let errors = parse_err("[listen]\nclient = \"example.com:7400\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.0[0].reason.contains("host names are not resolved"));
    rejects("listen", "client", "\"127.0.0.1\"");
    rejects("listen", "client", "\"127.0.0.1:65536\"");
}

#[test]
fn tenant_rules() {
    let weak = TenantCredential {
        iterations: 1000,
        ..credential()
    }
    .to_text();
    let errors = parse_err(&format!(
        r#"
        [[tenants]]
        name = "a"
        [[tenants]]
        name = "bad name!"
        [[tenants]]
        name = "a"
        [[tenants]]
        credential = "scram-sha256$1$00$00$00"
        [[tenants]]
        name = "c"
        passwd = "hunter2"
        [[tenants]]
        name = "d"
        credential = "{weak}"
        [[tenants]]
        name = ""
        [[tenants]]
        name = 5
        "#
    ));
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "tenants[1].name",
            "tenants[2].name",
            "tenants[3].name",
            "tenants[3].credential",
            "tenants[4].passwd",
            "tenants[5].credential",
            "tenants[6].name",
            "tenants[7].name",
        ],
        "{errors}"
    );
    let reason = |key: &str| {
        errors
            .get(key)
            .map(|issue| issue.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        reason("tenants[3].name"),
        "missing; every tenant needs a name"
    );
    assert!(reason("tenants[3].credential").starts_with("invalid credential: "));
    assert_eq!(
        reason("tenants[4].passwd"),
        "unknown key; expected one of: name, credential"
    );
    assert_eq!(
        reason("tenants[1].name"),
        "\"bad name!\" contains ' '; use only letters, digits, '.', '_' and '-'"
    );
    assert_eq!(
        reason("tenants[2].name"),
        "duplicate tenant name \"a\"; tenants[0] already uses it"
    );
    assert_eq!(
        reason("tenants[5].credential"),
        "iterations must be between 4096 and 10000000, got 1000"
    );
    assert_eq!(reason("tenants[6].name"), "must not be empty");

    let long = format!("[[tenants]]\nname = \"{}\"\n", "x".repeat(65));
    assert!(parse_err(&long).has("tenants[0].name"));

    let errors = parse_err("tenants = []\n");
    assert_eq!(
        errors.get("tenants").map(|issue| issue.reason.as_str()),
        Some("at least one [[tenants]] entry is required")
    );
    let errors = parse_err("[tenants]\nname = \"a\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.0[0].reason.contains("double brackets"), "{errors}");
    let errors = parse_err("tenants = [\"a\"]\n");
    assert!(errors.has("tenants[0]"), "{errors}");
    assert_eq!(errors.0.len(), 1, "{errors}");

    let config = parse_ok("[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"B\"\n");
    assert_eq!(config.tenant("B").map(|(index, _)| index), Some(1));
}

#[test]
fn log_level() {
    assert_eq!(
        accepts("log", "level", "\"debug\"").log.level,
        LogLevel::Debug
    );
    assert_eq!(
        accepts("log", "level", "\"ERROR\"").log.level,
        LogLevel::Error
    );
    assert!(rejects("log", "level", "\"verbose\"").contains("error, warn, info, debug, trace"));
    let config = accepts("log", "level", "\"warn,palisade_control=debug\"");
    assert_eq!(config.log.level, LogLevel::Warn);
    assert_eq!(
        config.log.targets,
        [LogTarget {
            target: "palisade_control".to_owned(),
            level: LogLevel::Debug,
        }]
    );
    assert_eq!(config.log.filter(), "warn,palisade_control=debug");
    assert!(rejects("log", "level", "\"info,palisade-control=debug\"")
        .contains("not a Rust module path"));
    assert!(rejects("log", "level", "3").contains("expected a string"));
}

#[test]
fn log_format() {
    assert_eq!(Config::builtin_default().log.format, LogFormat::Text);
    assert_eq!(
        accepts("log", "format", "\"json\"").log.format,
        LogFormat::Json
    );
    assert!(rejects("log", "format", "\"yaml\"").contains("\"text\" or \"json\""));
    assert!(rejects("log", "format", "true").contains("expected a string"));
    let config = accepts("log", "format", "\"JSON\"");
    assert_eq!(parse(&config.to_toml()), Ok(config));
}

#[test]
fn admin_listen() {
    assert_eq!(
        Config::builtin_default().admin.listen,
        Some(LISTEN_ADMIN_DEFAULT)
    );
    assert_eq!(LISTEN_ADMIN_DEFAULT.to_string(), "127.0.0.1:7401");
    assert_eq!(accepts("admin", "listen", "\"off\"").admin.listen, None);
    assert_eq!(
        accepts("admin", "listen", "\"0.0.0.0:9100\"").admin.listen,
        Some(address("0.0.0.0:9100"))
    );
    // Port 0 picks a free port (tests), even next to a port-0 client.
    let config =
        parse_ok("[listen]\nclient = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(config.admin.listen, Some(address("127.0.0.1:0")));
    for config in [
        accepts("admin", "listen", "\"OFF\""),
        accepts("admin", "listen", "\"[::1]:7401\""),
    ] {
        assert_eq!(parse(&config.to_toml()), Ok(config.clone()));
    }
    assert!(rejects("admin", "listen", "\"localhost:7401\"").contains("or \"off\""));
    assert!(rejects("admin", "listen", "7401").contains("expected a string"));
    assert!(rejects("admin", "port", "7401").contains("unknown key; expected one of: listen"));

    // Not the client port.
    for text in [
        "[admin]\nlisten = \"127.0.0.1:7400\"\n",
        "[admin]\nlisten = \"0.0.0.0:7400\"\n",
        "[listen]\nclient = \"127.0.0.1:7401\"\n",
    ] {
        let errors = parse_err(text);
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(errors.has("admin.listen"), "{errors}");
        assert!(errors.0[0].reason.contains("client port"), "{errors}");
    }
    // Another address on the same port is fine.
    accepts("admin", "listen", "\"127.0.0.2:7400\"");
    let mut config = Config::builtin_default();
    config.admin.listen = Some(LISTEN_CLIENT_DEFAULT);
    assert!(config
        .validate()
        .expect_err("same port")
        .has("admin.listen"));
    config.admin.listen = None;
    assert_eq!(config.validate(), Ok(()));
    config.log.targets.push(LogTarget {
        target: "bad target".to_owned(),
        level: LogLevel::Info,
    });
    assert!(config.validate().expect_err("bad target").has("log.level"));
}

#[test]
fn data_dir_resolution() {
    let text = "[node]\ndata_dir = \"data/node1\"\n";
    let config = Config::from_toml_str(text, Some(Path::new("/etc/palisade"))).expect("valid");
    assert_eq!(config.node.data_dir, Some(PathBuf::from("data/node1")));
    assert_eq!(
        config.data_dir_resolved(),
        Some(PathBuf::from("/etc/palisade/data/node1"))
    );

    let config = Config::from_toml_str(
        "[node]\ndata_dir = \"/var/lib/palisade\"\n",
        Some(Path::new("/etc")),
    )
    .expect("valid");
    assert_eq!(
        config.data_dir_resolved(),
        Some(PathBuf::from("/var/lib/palisade"))
    );

    let config = parse_ok(text);
    assert_eq!(
        config.data_dir_resolved(),
        Some(PathBuf::from("data/node1"))
    );
    assert_eq!(Config::builtin_default().data_dir_resolved(), None);

    assert!(rejects("node", "data_dir", "\"\"").contains("must not be empty"));
}

#[test]
fn secret_file_resolution() {
    let config = Config::from_toml_str(
        "[cluster]\nsecret_file = \"keys/cluster.secret\"\n",
        Some(Path::new("/etc/palisade")),
    )
    .expect("valid");
    assert_eq!(
        config.secret_file_resolved(),
        Some(PathBuf::from("/etc/palisade/keys/cluster.secret"))
    );
    let config = Config::from_toml_str(
        "[cluster]\nsecret_file = \"/run/keys/palisade\"\n",
        Some(Path::new("/etc")),
    )
    .expect("valid");
    assert_eq!(
        config.secret_file_resolved(),
        Some(PathBuf::from("/run/keys/palisade"))
    );
    assert_eq!(Config::builtin_default().secret_file_resolved(), None);
    assert!(rejects("cluster", "secret_file", "\"\"").contains("must not be empty"));
    assert!(rejects("cluster", "secret_file", "7").contains("string"));
}

#[test]
fn load_uses_the_source_and_the_file_folder() {
    let source = MemSource::new()
        .with("/etc/palisade/node.toml", "[node]\ndata_dir = \"state\"\n")
        .with("node.toml", "[node]\ndata_dir = \"state\"\n");

    let config = Config::load(Path::new("/etc/palisade/node.toml"), &source).expect("valid");
    assert_eq!(config.base_dir, Some(PathBuf::from("/etc/palisade")));
    assert_eq!(
        config.data_dir_resolved(),
        Some(PathBuf::from("/etc/palisade/state"))
    );

    let config = Config::load(Path::new("node.toml"), &source).expect("valid");
    assert_eq!(config.base_dir, Some(PathBuf::from(".")));
    assert_eq!(config.data_dir_resolved(), Some(PathBuf::from("./state")));

    let errors = Config::load(Path::new("/etc/missing.toml"), &source).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].key, "(file)");
    assert!(errors.0[0].reason.contains("/etc/missing.toml"), "{errors}");
    assert!(errors.0[0].reason.contains("no such file"), "{errors}");
}

#[test]
fn syntax_errors_are_one_file_issue() {
    let errors = parse_err("[node]\nid = = 1\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].key, "(file)");
    assert!(
        errors.0[0]
            .reason
            .starts_with("invalid TOML at line 2, column"),
        "{errors}"
    );
    assert!(!errors.to_string().contains('\n'), "{errors}");

    let errors = parse_err("[node]\nid = 1\nid = 2\n");
    assert_eq!(errors.0[0].key, "(file)");
    assert!(errors.0[0].reason.contains("line 3"), "{errors}");
}

#[test]
fn validate_catches_hand_built_mistakes() {
    let mut config = Config::builtin_default();
    config.leases.min_ttl = Duration::from_secs(31);
    config.node.cores = CoreSelection::Cpus(vec![1, 1]);
    config.dataplane.client_dscp = 64;
    config.tenants.clear();
    let errors = config.validate().unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "node.cores[1]",
            "leases.min_ttl",
            "dataplane.client_dscp",
            "tenants"
        ],
        "{errors}"
    );
}

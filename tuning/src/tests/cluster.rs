//! `[cluster]`: members, peers, election and snapshot settings.

use super::*;

/// A `[node]` and `[listen]` for node `node_id` of a three-node cluster on
/// 10.0.0.1..3, followed by `[cluster]` with `cluster_lines` and the given
/// peers, each `(id, peer, client)`.
fn cluster_text(node_id: u16, cluster_lines: &str, peers: &[(i64, &str, &str)]) -> String {
    let mut text = format!(
        "[node]\nid = {node_id}\n\
         [listen]\nclient = \"127.0.0.1:741{node_id}\"\n\
         [cluster]\n{cluster_lines}\n"
    );
    for (id, peer, client) in peers {
        text.push_str(&format!(
            "[[cluster.peers]]\nid = {id}\npeer = \"{peer}\"\nclient = \"{client}\"\n"
        ));
    }
    text
}

/// Three members on loopback, ports 7421..=7423 (peer) and 7411..=7413
/// (client).
const THREE: [(i64, &str, &str); 3] = [
    (1, "127.0.0.1:7421", "127.0.0.1:7411"),
    (2, "127.0.0.1:7422", "127.0.0.1:7412"),
    (3, "127.0.0.1:7423", "127.0.0.1:7413"),
];

#[test]
fn three_node_cluster_where_node_2_is_this_node() {
    let text = cluster_text(
        2,
        "name = \"prod-eu.1\"\nheartbeat_interval = \"100ms\"\n\
         election_timeout = \"1s\"\nsnapshot_entries = 50000",
        &THREE,
    );
    let config = parse_ok(&text);
    assert_eq!(config.validate(), Ok(()));
    let cluster = &config.cluster;
    assert_eq!(cluster.name, "prod-eu.1");
    assert_eq!(cluster.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(cluster.election_timeout, Duration::from_secs(1));
    assert_eq!(cluster.snapshot_entries, 50_000);
    assert_eq!(
        cluster.peers[1],
        PeerConfig {
            id: 2,
            peer: address("127.0.0.1:7422"),
            client: address("127.0.0.1:7412"),
        }
    );

    let members = config.members();
    let expected: Vec<Member> = THREE
        .iter()
        .map(|&(id, peer, client)| Member {
            id: u16::try_from(id).expect("small id"),
            peer: Some(address(peer)),
            client: address(client),
        })
        .collect();
    assert_eq!(members, expected);
    assert_eq!(config.peer_listen(), Some(address("127.0.0.1:7422")));
    // (30s max_ttl + 10s lock_delay_max + 1s election_timeout) x 1.01.
    assert_eq!(config.grace_period(), Duration::from_millis(41_410));
}

#[test]
fn cluster_round_trips_with_three_peers() {
    let mut config = parse_ok(&cluster_text(3, "name = \"x\"", &THREE));
    config.cluster.peers[0].peer = address("[2001:db8::1]:7421");
    config.cluster.peers[0].client = address("[2001:db8::1]:7411");
    assert_eq!(config.validate(), Ok(()));
    let text = config.to_toml();
    assert_eq!(text.matches("\n[[cluster.peers]]\n").count(), 3, "{text}");
    assert!(!text.contains("# [[cluster.peers]]"), "{text}");
    assert!(text.contains("peer = \"[2001:db8::1]:7421\""), "{text}");
    assert_eq!(parse(&text), Ok(config), "rendered:\n{text}");
}

#[test]
fn cluster_name_and_ranges() {
    let name = |value: &str| accepts("cluster", "name", value).cluster.name;
    assert_eq!(name("\"a\""), "a");
    assert_eq!(name("\"A.b_c-9\""), "A.b_c-9");
    let longest = "n".repeat(CLUSTER_NAME_BYTES_MAX);
    assert_eq!(name(&format!("\"{longest}\"")), longest);
    assert_eq!(
        rejects("cluster", "name", &format!("\"{longest}n\"")),
        "must be at most 64 bytes, got 65"
    );
    assert_eq!(rejects("cluster", "name", "\"\""), "must not be empty");
    assert_eq!(
        rejects("cluster", "name", "\"prod/eu\""),
        "\"prod/eu\" contains '/'; use only letters, digits, '.', '_' and '-'"
    );
    // 33 two-byte characters: within 64 characters, not within 64 bytes.
    let wide = "é".repeat(33);
    assert!(rejects("cluster", "name", &format!("\"{wide}\"")).contains("bytes"));
    assert_eq!(
        rejects("cluster", "name", "7"),
        "expected a string, got integer 7"
    );

    let entries = |value: &str| {
        accepts("cluster", "snapshot_entries", value)
            .cluster
            .snapshot_entries
    };
    assert_eq!(entries("100"), 100);
    assert_eq!(entries("10000000"), 10_000_000);
    assert_eq!(
        rejects("cluster", "snapshot_entries", "99"),
        "must be between 100 and 10000000, got 99"
    );
    rejects("cluster", "snapshot_entries", "10000001");
    rejects("cluster", "snapshot_entries", "-1");
    assert_eq!(
        rejects("cluster", "heartbeat_interval", "50"),
        "expected a duration string like \"10s\", got integer 50"
    );
}

#[test]
fn election_timeout_is_at_least_three_heartbeats() {
    let config =
        parse_ok("[cluster]\nheartbeat_interval = \"50ms\"\nelection_timeout = \"150ms\"\n");
    assert_eq!(config.cluster.election_timeout, Duration::from_millis(150));
    // The default 500ms allows heartbeats up to a third of it.
    let config = accepts("cluster", "heartbeat_interval", "\"166ms\"");
    assert_eq!(
        config.cluster.heartbeat_interval,
        Duration::from_millis(166)
    );

    let errors =
        parse_err("[cluster]\nheartbeat_interval = \"50ms\"\nelection_timeout = \"149ms\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(
        errors
            .get("cluster.election_timeout")
            .map(|issue| issue.reason.as_str()),
        Some("must be at least 3 x cluster.heartbeat_interval (50ms), that is 150ms, got 149ms")
    );

    // A heartbeat_interval above a third of the default says the default
    // is the problem.
    let errors = parse_err("[cluster]\nheartbeat_interval = \"167ms\"\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(
        errors
            .get("cluster.election_timeout")
            .map(|issue| issue.reason.as_str()),
        Some(
            "must be at least 3 x cluster.heartbeat_interval (167ms), that is 501ms, got 500ms \
             (the default; set cluster.election_timeout higher)"
        )
    );

    // A bad heartbeat_interval is reported once, without a knock-on.
    let errors =
        parse_err("[cluster]\nheartbeat_interval = \"11s\"\nelection_timeout = \"10ms\"\n");
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["cluster.heartbeat_interval"], "{errors}");
}

#[test]
fn cluster_must_list_this_node() {
    let errors = parse_err(&cluster_text(4, "", &THREE));
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].key, "cluster.peers", "{errors}");
    assert_eq!(
        errors.0[0].reason,
        "no entry has this node's id 4 (node.id); list every member of the cluster, \
         this node included"
    );
    for node_id in 1..=3 {
        parse_ok(&cluster_text(node_id, "", &THREE));
    }
    // A one-entry list of this node is a cluster of one with a transport.
    let config = parse_ok(&cluster_text(1, "", &THREE[..1]));
    assert_eq!(config.peer_listen(), Some(address("127.0.0.1:7421")));

    // A bad id might be this node's: no guess about what is missing.
    let errors = parse_err(&cluster_text(
        2,
        "",
        &[THREE[0], (0, "127.0.0.1:7422", "127.0.0.1:7412")],
    ));
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["cluster.peers[1].id"], "{errors}");
    assert_eq!(errors.0[0].reason, "must be between 1 and 65535, got 0");
}

#[test]
fn cluster_peers_are_unique() {
    let errors = parse_err(&cluster_text(
        1,
        "",
        &[
            THREE[0],
            THREE[1],
            (1, "127.0.0.1:7424", "127.0.0.1:7414"),
            (4, "127.0.0.1:7422", "127.0.0.1:7415"),
            (5, "127.0.0.1:7425", "127.0.0.1:7412"),
            (2, "127.0.0.1:7421", "127.0.0.1:7411"),
        ],
    ));
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.peers[2].id",
            "cluster.peers[3].peer",
            "cluster.peers[4].client",
            "cluster.peers[5].id",
            "cluster.peers[5].peer",
            "cluster.peers[5].client",
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
        reason("cluster.peers[2].id"),
        "duplicate peer id 1; cluster.peers[0] already uses it"
    );
    assert_eq!(
        reason("cluster.peers[3].peer"),
        "duplicate peer address 127.0.0.1:7422; cluster.peers[1] already uses it"
    );
    assert_eq!(
        reason("cluster.peers[4].client"),
        "duplicate client address 127.0.0.1:7412; cluster.peers[1] already uses it"
    );
    assert_eq!(
        reason("cluster.peers[5].client"),
        "duplicate client address 127.0.0.1:7411; cluster.peers[0] already uses it"
    );

    // The same port on different IPs, or a peer address that is another
    // member's client address, is fine.
    parse_ok(&cluster_text(
        1,
        "",
        &[
            THREE[0],
            (2, "127.0.0.2:7421", "127.0.0.2:7411"),
            (3, "127.0.0.1:7412", "127.0.0.3:7421"),
        ],
    ));
}

#[test]
fn this_nodes_entry_lists_its_client_listener() {
    // Node 2 listens on 127.0.0.1:7412; its entry says 7419.
    let errors = parse_err(&cluster_text(
        2,
        "",
        &[THREE[0], (2, "127.0.0.1:7422", "127.0.0.1:7419"), THREE[2]],
    ));
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].key, "cluster.peers[1].client", "{errors}");
    assert_eq!(
        errors.0[0].reason,
        "this node's entry (id 2) must list listen.client (127.0.0.1:7412), got 127.0.0.1:7419"
    );
    // The other entries' clients are other nodes' listeners: not compared.
    parse_ok(&cluster_text(2, "", &THREE));

    // A listener on port 0 (tests) is not compared.
    let text = cluster_text(2, "", &THREE)
        .replace("127.0.0.1:7412\"\n[cluster]", "127.0.0.1:0\"\n[cluster]");
    let config = parse_ok(&text);
    assert_eq!(config.listen.client.port(), 0);
    assert_eq!(config.members()[1].client, address("127.0.0.1:7412"));

    // A bad listener is reported alone.
    let text = cluster_text(2, "", &THREE)
        .replace("127.0.0.1:7412\"\n[cluster]", "localhost:7412\"\n[cluster]");
    let errors = parse_err(&text);
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["listen.client"], "{errors}");
}

#[test]
fn cluster_addresses() {
    let peer_entry = |peer: &str, client: &str| {
        parse(&format!(
            "[[cluster.peers]]\nid = 1\npeer = {peer}\nclient = {client}\n"
        ))
    };
    let config = peer_entry("\"[::1]:7421\"", "\"127.0.0.1:7400\"").expect("valid");
    assert_eq!(config.peer_listen(), Some(address("[::1]:7421")));

    let rejected = |peer: &str, client: &str| -> ConfigErrors {
        let errors = peer_entry(peer, client).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        errors
    };
    let errors = rejected("\"node1.example:7421\"", "\"127.0.0.1:7400\"");
    assert_eq!(errors.0[0].key, "cluster.peers[0].peer");
    assert!(
        errors.0[0].reason.contains("host names are not resolved"),
        "{errors}"
    );
    let errors = rejected("\"127.0.0.1:7421\"", "\"localhost:7400\"");
    assert_eq!(errors.0[0].key, "cluster.peers[0].client");
    assert!(
        errors.0[0].reason.contains("host names are not resolved"),
        "{errors}"
    );
    let errors = rejected("\"127.0.0.1:0\"", "\"127.0.0.1:7400\"");
    assert_eq!(errors.0[0].key, "cluster.peers[0].peer");
    assert_eq!(
        errors.0[0].reason,
        "port must not be 0: the other members connect to it, got 127.0.0.1:0"
    );
    for bad in ["\"127.0.0.1\"", "\"127.0.0.1:65536\"", "\"\"", "7421"] {
        let errors = rejected(bad, "\"127.0.0.1:7400\"");
        assert_eq!(errors.0[0].key, "cluster.peers[0].peer", "{bad}: {errors}");
    }
}

#[test]
fn cluster_unknown_keys_and_shapes() {
    let errors = parse_err(&format!(
        "{}bogus = 1\n",
        cluster_text(1, "colour = \"red\"", &THREE)
    ));
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        ["cluster.colour", "cluster.peers[2].bogus"],
        "{errors}"
    );
    assert_eq!(
        errors.0[0].reason,
        "unknown key; expected one of: name, heartbeat_interval, election_timeout, \
         snapshot_entries, secret_file, peers"
    );
    assert_eq!(
        errors.0[1].reason,
        "unknown key; expected one of: id, peer, client"
    );

    let errors = parse_err(&format!(
        "{}[[cluster.peers]]\nid = 4\npeer = \"127.0.0.1:7424\"\nbogus = 1\n",
        cluster_text(1, "", &THREE[..1])
    ));
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        ["cluster.peers[1].bogus", "cluster.peers[1].client"],
        "{errors}"
    );
    assert_eq!(
        errors.0[1].reason,
        "missing; every [[cluster.peers]] entry needs a client address"
    );

    let errors = parse_err("[[cluster.peers]]\n");
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.peers[0].id",
            "cluster.peers[0].peer",
            "cluster.peers[0].client"
        ],
        "{errors}"
    );

    let errors = parse_err("[cluster.peers]\nid = 1\n");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].key, "cluster.peers");
    assert!(errors.0[0].reason.contains("double brackets"), "{errors}");

    let errors = parse_err("[cluster]\npeers = [1]\n");
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(keys, ["cluster.peers[0]"], "{errors}");
    assert_eq!(
        errors.0[0].reason,
        "expected a table with an id, a peer address and a client address, got integer 1"
    );

    let errors = parse_err("cluster = \"big\"\n");
    assert_eq!(
        errors.get("cluster").map(|issue| issue.reason.as_str()),
        Some("expected a table ([cluster]), got string \"big\"")
    );

    // An empty list is the same as none.
    assert_eq!(
        parse("[cluster]\npeers = []\n"),
        Ok(Config::builtin_default())
    );
}

#[test]
fn validate_catches_hand_built_cluster_mistakes() {
    let mut config = parse_ok(&cluster_text(2, "", &THREE));
    config.cluster.name = "a b".to_owned();
    config.cluster.heartbeat_interval = Duration::from_secs(1);
    config.cluster.snapshot_entries = u64::MAX;
    config.cluster.peers[0].id = 0;
    config.cluster.peers[1].peer = address("127.0.0.1:0");
    config.cluster.peers[2].client = config.cluster.peers[0].client;
    let errors = config.validate().unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.name",
            "cluster.election_timeout",
            "cluster.snapshot_entries",
            "cluster.peers[0].id",
            "cluster.peers[1].peer",
            "cluster.peers[2].client",
        ],
        "{errors}"
    );
    assert_eq!(
        errors
            .get("cluster.snapshot_entries")
            .map(|issue| issue.reason.as_str()),
        Some("must be between 100 and 10000000, got 18446744073709551615")
    );
}

//! `[qos]`: the priority qdisc tree and the client DSCP mark.

use super::*;

#[test]
fn qos_defaults() {
    let config = Config::builtin_default();
    assert!(!config.qos.enabled);
    assert_eq!(config.qos.interface, None);
    assert_eq!(config.qos.rate_bps, None);
    assert_eq!(config.qos.peer_dscp, 48, "CS6");
    assert_eq!(config.dataplane.client_dscp, 46, "EF");
    let text = config.to_toml();
    assert!(text.contains("[qos]\nenabled = false"), "{text}");
    assert!(text.contains("# interface = \"eth0\""), "{text}");
    assert!(text.contains("# rate = \"1gbit\""), "{text}");
    assert!(text.contains("peer_dscp = \"CS6\""), "{text}");
}

#[test]
fn qos_enabled() {
    let config = parse_ok(
        r#"
        [qos]
        enabled = true
        interface = "eth0"
        rate = "950mbit"
        peer_dscp = "AF41"
        "#,
    );
    assert!(config.qos.enabled);
    assert_eq!(config.qos.interface.as_deref(), Some("eth0"));
    assert_eq!(config.qos.rate_bps, Some(950_000_000));
    assert_eq!(config.qos.peer_dscp, 34);
    let text = config.to_toml();
    assert!(text.contains("rate = \"950mbit\""), "{text}");
    assert_eq!(parse(&text), Ok(config));

    // Enabled without an interface or a rate: both named.
    let errors = parse_err("[qos]\nenabled = true\n");
    assert_eq!(errors.0.len(), 2, "{errors}");
    let reason = &errors.get("qos.interface").expect("interface").reason;
    assert!(
        reason.starts_with("missing; qos.enabled = true"),
        "{reason}"
    );
    let reason = &errors.get("qos.rate").expect("rate").reason;
    assert!(reason.contains("like rate = \"1gbit\""), "{reason}");

    // Nothing marked: nothing to put first.
    let errors = parse_err(
        "[dataplane]\nclient_dscp = 0\n[qos]\nenabled = true\ninterface = \"eth0\"\n\
         rate = \"1gbit\"\npeer_dscp = \"CS0\"\n",
    );
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.has("qos.enabled"), "{errors}");

    // Interface and rate may be set while disabled (ready to switch on).
    let config = parse_ok("[qos]\ninterface = \"eth1\"\nrate = \"10gbit\"\n");
    assert!(!config.qos.enabled);
    assert_eq!(parse(&config.to_toml()), Ok(config));
}

#[test]
fn qos_values() {
    assert_eq!(
        rejects("qos", "enabled", "\"yes\""),
        "expected true or false, got string \"yes\""
    );
    for good in [
        "\"eth0\"",
        "\"enp3s0f1\"",
        "\"bond0.100\"",
        "\"x23456789012345\"",
    ] {
        accepts("qos", "interface", good);
    }
    for bad in [
        "\"\"",
        "\"x234567890123456\"",
        "\"eth0:1\"",
        "\"a/b\"",
        "\"a b\"",
        "\"..\"",
    ] {
        rejects("qos", "interface", bad);
    }
    assert!(rejects("qos", "interface", "1").starts_with("expected a string"));
    assert_eq!(
        accepts("qos", "rate", "\"1mbit\"").qos.rate_bps,
        Some(QOS_RATE_BPS_MIN)
    );
    assert_eq!(
        accepts("qos", "rate", "\"1tbit\"").qos.rate_bps,
        Some(QOS_RATE_BPS_MAX)
    );
    assert_eq!(
        rejects("qos", "rate", "\"999kbit\""),
        "must be between 1mbit and 1tbit, got 999kbit"
    );
    rejects("qos", "rate", "\"2tbit\"");
    assert!(rejects("qos", "rate", "\"1gbps\"").contains("bytes per second"));
    assert!(rejects("qos", "rate", "1000").starts_with("expected a string"));
    assert_eq!(accepts("qos", "peer_dscp", "\"cs7\"").qos.peer_dscp, 56);
    assert_eq!(accepts("qos", "peer_dscp", "0").qos.peer_dscp, 0);
    assert_eq!(
        rejects("qos", "peer_dscp", "64"),
        "must be between 0 and 63, got 64"
    );
    assert!(rejects("qos", "peer_dscp", "\"CS8\"").contains("EF, CS0..CS7"));

    // Hand-built mistakes are caught by `validate` too.
    let mut config = Config::builtin_default();
    config.qos.enabled = true;
    config.qos.interface = Some("eth0:1".to_owned());
    config.qos.rate_bps = Some(0);
    config.qos.peer_dscp = 64;
    let errors = config.validate().unwrap_err();
    assert_eq!(errors.0.len(), 3, "{errors}");
    assert!(errors.has("qos.interface"));
    assert!(errors.has("qos.rate"));
    assert!(errors.has("qos.peer_dscp"));
}

#[test]
fn qos_client_dscp_is_another_name_for_the_dataplane_key() {
    let config = accepts("qos", "client_dscp", "\"AF41\"");
    assert_eq!(config.dataplane.client_dscp, 34);
    // Written back in its home section, and read back equal.
    let text = config.to_toml();
    assert!(text.contains("[dataplane]"), "{text}");
    assert!(text.contains("client_dscp = \"AF41\""), "{text}");
    assert_eq!(parse(&text), Ok(config));

    // Both places, one value: fine. Two values: refused.
    let both = |dataplane: &str, qos: &str| {
        parse(&format!(
            "[dataplane]\nclient_dscp = {dataplane}\n[qos]\nclient_dscp = {qos}\n"
        ))
    };
    assert_eq!(
        both("\"EF\"", "46").map(|c| c.dataplane.client_dscp),
        Ok(46)
    );
    let errors = both("\"EF\"", "\"CS5\"").unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let reason = &errors.get("qos.client_dscp").expect("conflict").reason;
    assert_eq!(
        reason,
        "is 40 but dataplane.client_dscp is 46; they are the same setting, set it in one place"
    );
    // A bad dataplane value is reported once, not again as a conflict.
    let errors = both("99", "\"CS5\"").unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.has("dataplane.client_dscp"));
    assert_eq!(
        rejects("qos", "client_dscp", "64"),
        "must be between 0 and 63, got 64"
    );
}

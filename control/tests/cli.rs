//! The command sequence, through the real CLI against a real node.

mod common;

use common::{cli, sleep_ms, token, Server};

#[test]
fn lease_lifecycle_through_the_cli() {
    let server = Server::start("");
    let (code, first) = server.cli(&["acquire", "disk0", "--ttl", "10s"]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["status"], "granted");
    assert_eq!(first["resource"], "disk0");
    assert_eq!(first["ttl_ms"], 10_000);
    let t1 = token(&first);
    assert_eq!(t1 >> 32, first["epoch"].as_u64().expect("epoch"));

    // Busy: exit 2, names the current token and time left.
    let (code, busy) = server.cli(&["acquire", "disk0", "--ttl", "10s"]);
    assert_eq!(code, 2, "{busy}");
    assert_eq!(busy["status"], "busy");
    assert_eq!(token(&busy), t1);
    let left = busy["remaining_ms"].as_u64().expect("remaining_ms");
    assert!(left > 0 && left <= 10_000, "{busy}");

    let t1s = t1.to_string();
    let (code, renewed) = server.cli(&["renew", "disk0", &t1s, "--ttl", "10s"]);
    assert_eq!(code, 0, "{renewed}");
    assert_eq!(renewed["status"], "renewed");
    assert_eq!(token(&renewed), t1);

    let (code, current) = server.cli(&["check", "disk0", &t1s]);
    assert_eq!(code, 0, "{current}");
    assert_eq!(current["status"], "current");
    let stale_token = (t1 - 1).to_string();
    let (code, stale) = server.cli(&["check", "disk0", &stale_token]);
    assert_eq!(code, 3, "{stale}");
    assert_eq!(stale["status"], "stale");
    assert_eq!(stale["current_token"].as_u64(), Some(t1));

    let (code, released) = server.cli(&["release", "disk0", &t1s]);
    assert_eq!(code, 0, "{released}");
    assert_eq!(released["status"], "released");
    let (code, again) = server.cli(&["release", "disk0", &t1s]);
    assert_eq!(code, 3, "releasing twice is stale: {again}");

    let (code, second) = server.cli(&["acquire", "disk0", "--ttl", "10s"]);
    assert_eq!(code, 0, "{second}");
    assert!(token(&second) > t1, "S1: {second} after {t1}");
    let (code, old) = server.cli(&["check", "disk0", &t1s]);
    assert_eq!(code, 3, "{old}");
    assert_eq!(old["current_token"].as_u64(), Some(token(&second)));

    let (code, status) = server.cli(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["node"], 1);
    assert_eq!(status["role"], "leader");
    assert!(status["epoch"].as_u64().expect("epoch") >= 1);
    assert!(status["cores"].as_u64().expect("cores") >= 1);
    assert!(status["ops_served"].as_u64().expect("ops") >= 10);
    assert!(status["grants_from_ms"].as_u64().is_some());
    assert!(status["leases_held"].as_u64().is_some());
}

#[test]
fn idempotent_acquire_with_the_same_holder() {
    let server = Server::start("");
    let args = ["acquire", "job7", "--ttl", "5s", "--holder", "4242"];
    let (code, first) = server.cli(&args);
    assert_eq!(code, 0, "{first}");
    let (code, retry) = server.cli(&args);
    assert_eq!(code, 0, "a retry by the holder succeeds: {retry}");
    assert_eq!(token(&retry), token(&first));
    let (code, other) = server.cli(&["acquire", "job7", "--ttl", "5s", "--holder", "4343"]);
    assert_eq!(code, 2, "{other}");
}

#[test]
fn waiters_are_served_in_fifo_order() {
    let server = Server::start("");
    let (code, held) = server.cli(&["acquire", "q", "--ttl", "10s"]);
    assert_eq!(code, 0);
    let endpoint = server.endpoint.clone();
    let mut waiters = Vec::new();
    for i in 0..3 {
        let endpoint = endpoint.clone();
        waiters.push(std::thread::spawn(move || {
            let holder = (100 + i).to_string();
            let (code, value) = cli(
                &endpoint,
                &[
                    "acquire", "q", "--ttl", "10s", "--wait", "20s", "--holder", &holder,
                ],
            );
            (i, code, value)
        }));
        // Let each waiter queue before the next one arrives.
        wait_for_waiters(&server, i + 1);
    }
    let mut previous = token(&held);
    let mut order = Vec::new();
    for _ in 0..3 {
        let (code, released) = server.cli(&["release", "q", &previous.to_string()]);
        assert_eq!(code, 0, "{released}");
        // Find who got it: poll until some waiter holds a newer token.
        let mut next = None;
        for _ in 0..200 {
            let (code, peek) = server.cli(&["check", "q", "1"]);
            assert_eq!(code, 3);
            if let Some(current) = peek["current_token"].as_u64() {
                if current > previous {
                    next = Some(current);
                    break;
                }
            }
            sleep_ms(20);
        }
        let current = next.expect("a waiter was granted");
        previous = current;
        order.push(current);
    }
    let mut results: Vec<_> = waiters
        .into_iter()
        .map(|w| w.join().expect("waiter"))
        .collect();
    results.sort_by_key(|(i, _, _)| *i);
    for (i, (_, code, value)) in results.iter().enumerate() {
        assert_eq!(*code, 0, "waiter {i}: {value}");
        assert_eq!(
            token(value),
            order[i],
            "waiter {i} was not served in arrival order"
        );
        assert!(value["waited_ms"].as_u64().expect("waited") > 0);
    }
}

fn wait_for_waiters(server: &Server, count: u64) {
    for _ in 0..500 {
        let (_, status) = server.cli(&["status"]);
        if status["waiters"].as_u64() == Some(count) {
            return;
        }
        sleep_ms(10);
    }
    panic!("{count} waiters never queued");
}

#[test]
fn a_waiter_gives_up_at_its_deadline() {
    let server = Server::start("");
    let (code, held) = server.cli(&["acquire", "d", "--ttl", "10s"]);
    assert_eq!(code, 0);
    let (code, busy) = server.cli(&["acquire", "d", "--ttl", "1s", "--wait", "300ms"]);
    assert_eq!(code, 2, "{busy}");
    assert_eq!(busy["status"], "busy");
    assert_eq!(token(&busy), token(&held));
    assert!(busy["waited_ms"].as_u64().expect("waited") >= 300);
}

#[test]
fn expiry_hands_the_lease_to_the_next_waiter() {
    let server = Server::start("");
    let (code, held) = server.cli(&["acquire", "e", "--ttl", "500ms"]);
    assert_eq!(code, 0);
    // Nobody releases: the waiter gets it when the lease expires.
    let (code, next) = server.cli(&["acquire", "e", "--ttl", "1s", "--wait", "5s"]);
    assert_eq!(code, 0, "{next}");
    assert!(token(&next) > token(&held));
}

#[test]
fn errors_say_what_to_do() {
    let server = Server::start("");
    let (code, bad_ttl) = server.cli(&["acquire", "x", "--ttl", "1ms"]);
    assert_eq!(code, 1);
    assert_eq!(bad_ttl["error"], "invalid_argument");
    assert!(bad_ttl["message"]
        .as_str()
        .expect("message")
        .contains("range"));
    let (code, down) = cli("127.0.0.1:1", &["status"]);
    assert_eq!(code, 1);
    assert_eq!(down["error"], "connection");
    let (code, tenant) = server.cli(&["status", "--tenant", "nobody"]);
    assert_eq!(code, 1);
    assert_eq!(tenant["error"], "unknown_tenant");
}

#[test]
fn an_endpoint_list_moves_past_dead_nodes() {
    let server = Server::start("");
    // Port 9 (discard) on loopback: nothing listens, the connect fails.
    let list = format!("127.0.0.1:9,{}", server.endpoint);
    let (code, status) = cli(&list, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["role"], "leader");
    let (code, dead) = cli("127.0.0.1:9,127.0.0.1:10", &["status"]);
    assert_eq!(code, 1, "{dead}");
    assert_eq!(dead["error"], "connection", "{dead}");
    assert!(
        dead["message"]
            .as_str()
            .expect("message")
            .contains("127.0.0.1:10"),
        "the last failure is named: {dead}"
    );
}

#[test]
fn the_glommio_settings_of_older_files_load_and_are_named_as_ignored() {
    let server = Server::start("[dataplane]\npreempt_timer = \"2ms\"\nrpc_latency = \"1ms\"\n");
    let (code, _) = cli(&server.endpoint, &["acquire", "old-file", "--ttl", "5s"]);
    assert_eq!(code, 0, "an older file's node serves");
    assert!(
        server.log_text().contains("have no effect"),
        "{}",
        server.log_text()
    );
}

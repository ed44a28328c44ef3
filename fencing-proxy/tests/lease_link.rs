//! The proxy's link to the lease service, with real processes: a hung node
//! at the head of the endpoint list does not blind it, a restarted proxy
//! learns the newest token before it admits the fence's own, a lost watch
//! unconfirms the fence, and `require_check` decides what an unreachable
//! service means.

mod common;

use common::cluster::Cluster;
use common::{
    have, metric, now_ms, qemu_io, sleep_ms, wait_metric, Lease, Proxy, ProxySetup, Session,
};

fn ready() -> bool {
    have("qemu-io")
}

fn rw(url: &str) -> Vec<&str> {
    vec!["-f", "raw", url]
}

/// The disk holds `pattern` at `0..64k`, read without a token.
fn assert_holds(setup: &ProxySetup, pattern: &str) {
    let url = setup.url(None);
    let command = format!("read -P {pattern} 0 64k");
    let (ok, out) = qemu_io(&["-f", "raw", "-r", &url], &[&command]);
    assert!(ok, "the disk does not hold {pattern}: {out}");
}

/// Waits until the fence is at least `token`; the time it took, ms.
fn wait_fence(setup: &ProxySetup, token: u64, ms: u64) -> u64 {
    let start = now_ms();
    while metric(setup.metrics, "palisade_proxy_fence") < token {
        assert!(
            now_ms() < start + ms,
            "the fence never rose to {token} within {ms} ms"
        );
        sleep_ms(10);
    }
    now_ms() - start
}

#[test]
fn a_stopped_follower_at_the_head_of_the_list_does_not_blind_the_proxy() {
    if !ready() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(20_000);
    let hung = (leader + 1) % 3;
    // The proxy lists the follower first; it accepts TCP and never answers.
    let endpoints = cluster.endpoints_from(hung);
    cluster.signal(hung, libc::SIGSTOP);
    let mut holders = cluster.client(&cluster.endpoints_from(leader), 300);

    let tmp = tempfile::tempdir().expect("tmp");
    let mut setup = ProxySetup::file(tmp.path(), &endpoints);
    setup.lease_extra = "timeout = \"3s\"\nattempt_timeout = \"300ms\"\n".into();
    let proxy = Proxy::start(&setup, &[]);

    // A holds t1 for 1 s and writes; its handshake's check passes over
    // the stopped node.
    let t1 = Cluster::acquire(&mut holders, "disk0", 1_000);
    let mut a = Session::open(&setup.url(Some(t1)));
    a.send("write -P 0xaa 0 64k");
    a.wait_for("wrote 65536/65536", 1, 10_000);
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence"), t1);
    // A pauses past its ttl; B is granted t2.
    a.signal(libc::SIGSTOP);
    sleep_ms(1_300);
    let t2 = Cluster::acquire(&mut holders, "disk0", 3_000);
    assert!(t2 > t1, "S1: {t2} > {t1}");
    // The watch raises the fence on the grant alone, before B connects.
    let raised_ms = wait_fence(&setup, t2, 5_000);
    eprintln!("fence raised to t2 {raised_ms} ms after the grant returned");
    a.signal(libc::SIGCONT);
    a.send("write -P 0xab 0 64k");
    let out = a.wait_for("Operation not permitted", 1, 10_000);
    assert_eq!(out.matches("wrote").count(), 1, "{out}");
    let out = a.quit();
    assert_eq!(out.matches("wrote").count(), 1, "{out}");
    assert_holds(&setup, "0xaa");
    // B writes.
    let url = setup.url(Some(t2));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xbb 0 64k"]);
    assert!(ok, "B's write: {out}");
    assert_holds(&setup, "0xbb");
    assert_eq!(
        metric(setup.metrics, "palisade_proxy_fence_confirmed"),
        1,
        "{}",
        proxy.log_text()
    );
}

#[test]
fn a_restarted_proxy_learns_the_newest_token_before_it_admits_the_fences_own() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    // Writes under the fence's token wait up to 8 s for confirmation.
    setup.lease_extra = "timeout = \"8s\"\nattempt_timeout = \"200ms\"\n".into();
    let mut proxy = Proxy::start(&setup, &[]);
    let t1 = lease.acquire("disk0", "1s");
    let url = setup.url(Some(t1));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xaa 0 64k"]);
    assert!(ok, "A's write: {out}");
    proxy.stop();

    // While the proxy is down, A's lease lapses and B is granted t2.
    sleep_ms(1_300);
    let t2 = lease.acquire("disk0", "30s");
    assert!(t2 > t1);
    // The service hangs (accepts TCP, never answers) as the proxy comes
    // back with its durable fence t1.
    lease.signal(libc::SIGSTOP);
    let proxy = Proxy::start(&setup, &[]);
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence"), t1);
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence_confirmed"), 0);
    // A, unaware it was superseded, comes back with t1 == the fence.
    let a = std::thread::spawn(move || qemu_io(&rw(&url), &["write -P 0xab 0 64k"]));
    sleep_ms(1_500);
    lease.signal(libc::SIGCONT);
    let (ok, out) = a.join().expect("A");
    assert!(!ok, "A's stale write was admitted after the restart: {out}");
    assert!(out.contains("stale"), "{out}");
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence"), t2);
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence_confirmed"), 1);
    assert_holds(&setup, "0xaa");
    assert!(
        proxy
            .log_text()
            .contains("the lease service confirmed the fence"),
        "{}",
        proxy.log_text()
    );
}

#[test]
fn a_restarted_proxy_led_to_an_isolated_former_leader_still_refuses_the_superseded_holder() {
    if !ready() {
        return;
    }
    let cluster = Cluster::start(3);
    let old = cluster.wait_leader(20_000);
    // As reported: the proxy's list leads with the node that leads now
    // and will be cut off.
    let endpoints = cluster.endpoints_from(old);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut setup = ProxySetup::file(tmp.path(), &endpoints);
    setup.lease_extra = "timeout = \"8s\"\nattempt_timeout = \"300ms\"\n".into();
    let mut proxy = Proxy::start(&setup, &[]);
    let mut a_client = cluster.client(&endpoints, 300);
    let t1 = Cluster::acquire(&mut a_client, "disk0", 1_000);
    let url = setup.url(Some(t1));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xaa 0 64k"]);
    assert!(ok, "A's write: {out}");
    proxy.stop();

    // The leader loses its peers (its clients still reach it); the other
    // two elect a leader, which grants B t2 once A's lease lapsed.
    cluster.isolate(old, true);
    let mut b_client = cluster.client(&cluster.endpoints_except(old), 300);
    let t2 = Cluster::acquire(&mut b_client, "disk0", 3_000);
    assert!(t2 > t1, "S1: {t2} > {t1}");

    // The proxy comes back with its durable fence t1, its list leading
    // with the isolated former leader; A comes back with t1.
    let proxy = Proxy::start(&setup, &[]);
    let start_ms = now_ms();
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xab 0 64k"]);
    eprintln!(
        "A's handshake answered {} ms after the restart",
        now_ms() - start_ms
    );
    assert!(!ok, "A's stale write was admitted after the restart: {out}");
    assert!(out.contains("stale"), "{out}");
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence"), t2);
    assert_holds(&setup, "0xaa");
    assert!(
        proxy
            .log_text()
            .contains("the lease service confirmed the fence"),
        "{}",
        proxy.log_text()
    );
    cluster.isolate(old, false);
}

#[test]
fn with_the_service_gone_require_check_refuses_and_the_default_admits_and_logs() {
    if !ready() {
        return;
    }
    for require_check in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut lease = Lease::start(tmp.path());
        let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
        setup.lease_extra = format!(
            "timeout = \"1s\"\nattempt_timeout = \"200ms\"\nrequire_check = {require_check}\n"
        );
        let mut proxy = Proxy::start(&setup, &[]);
        let t1 = lease.acquire("disk0", "30s");
        let url = setup.url(Some(t1));
        let (ok, out) = qemu_io(&rw(&url), &["write -P 0xaa 0 64k"]);
        assert!(ok, "{out}");
        proxy.stop();
        lease.stop();

        let proxy = Proxy::start(&setup, &[]);
        let (ok, out) = qemu_io(&rw(&url), &["write -P 0xab 0 64k"]);
        let above = setup.url(Some(t1 + 1));
        let (above_ok, above_out) = qemu_io(&rw(&above), &["write -P 0xac 64k 4k"]);
        assert_eq!(metric(setup.metrics, "palisade_proxy_fence_confirmed"), 0);
        let log = proxy.log_text();
        if require_check {
            assert!(!ok, "require_check admitted an unconfirmed write: {out}");
            assert!(out.contains("require_check"), "{out}");
            assert!(!above_ok, "{above_out}");
            assert!(above_out.contains("could not vouch"), "{above_out}");
            assert_holds(&setup, "0xaa");
        } else {
            assert!(ok, "the default refused: {out}");
            assert!(above_ok, "{above_out}");
            assert_holds(&setup, "0xab");
            assert!(
                log.contains("admitted") && log.contains("require_check = false"),
                "{log}"
            );
        }
        assert!(log.contains("lost the lease service"), "{log}");
    }
}

#[test]
fn a_lost_watch_unconfirms_the_fence_until_the_service_answers_again() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.lease_extra =
        "timeout = \"1s\"\nattempt_timeout = \"200ms\"\nwatch_wait = \"1s\"\nrequire_check = true\n"
            .into();
    let proxy = Proxy::start(&setup, &[]);
    let t1 = lease.acquire("disk0", "30s");
    let mut a = Session::open(&setup.url(Some(t1)));
    a.send("write -P 0xaa 0 64k");
    a.wait_for("wrote 65536/65536", 1, 10_000);
    wait_metric(setup.metrics, "palisade_proxy_fence_confirmed", 1, 5_000);

    // The service hangs: the watch notices within watch_wait + timeout.
    lease.signal(libc::SIGSTOP);
    wait_metric(setup.metrics, "palisade_proxy_fence_confirmed", 0, 10_000);
    // Past `timeout` unconfirmed, require_check refuses the fence's token.
    sleep_ms(1_200);
    a.send("write -P 0xab 0 4k");
    a.wait_for("Operation not permitted", 1, 10_000);

    // It answers again: confirmed, and the holder writes.
    lease.signal(libc::SIGCONT);
    wait_metric(setup.metrics, "palisade_proxy_fence_confirmed", 1, 10_000);
    a.send("write -P 0xac 0 4k");
    let out = a.wait_for("wrote", 2, 10_000);
    assert_eq!(out.matches("Operation not permitted").count(), 1, "{out}");
    let out = a.quit();
    assert!(out.contains("wrote 4096/4096"), "{out}");
    let log = proxy.log_text();
    assert!(log.contains("lost the lease service"), "{log}");
}

//! What a client can make the proxy hold, with real sockets: the
//! connection limit, the handshake deadline, idle timeouts (read-only
//! connections included), a short `RLIMIT_NOFILE`, the logs about each
//! (rate-limited, no colour codes in a file), and the memory a flood of
//! timed-out connections leaves behind.

mod common;

use std::net::TcpStream;

use common::{
    closed_within, have, metrics, nbd_connect, nbd_go, now_ms, process_metric, qemu_io,
    raise_own_nofile, sleep_ms, Lease, Proxy, ProxySetup,
};

/// A proxy whose lease service does not exist: these tests need none
/// (read-only connections), except where they start one.
fn setup(dir: &std::path::Path, proxy_extra: &str) -> ProxySetup {
    let mut setup = ProxySetup::file(dir, "127.0.0.1:1");
    setup.proxy_extra = proxy_extra.into();
    setup
}

/// Lines of `log` that contain `needle`.
fn lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// The `count=N` field of a log line.
fn count_field(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

#[test]
fn stalled_trickling_and_idle_connections_are_closed_by_their_timeouts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let mut setup = setup(
        tmp.path(),
        "handshake_timeout = \"1s\"\nidle_timeout = \"2s\"\nread_only_idle_timeout = \"1s\"\n",
    );
    setup.lease_endpoint.clone_from(&lease.endpoint);
    let proxy = Proxy::start(&setup, &[]);

    // Silent after the greeting.
    let mut stalled = nbd_connect(setup.listen).expect("connect");
    // Trickles a byte of its flags every 300 ms: the deadline is for the
    // whole handshake, not per read.
    let mut trickler = nbd_connect(setup.listen).expect("connect");
    let trickled = std::thread::spawn(move || {
        use std::io::Write;
        // Valid bytes: the flags, then an NBD_OPT_GO with a long name.
        let name = [b'x'; 100];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"IHAVEOPT");
        bytes.extend_from_slice(&7u32.to_be_bytes());
        bytes.extend_from_slice(&(4 + 100 + 2u32).to_be_bytes());
        bytes.extend_from_slice(&100u32.to_be_bytes());
        bytes.extend_from_slice(&name);
        for byte in bytes {
            if trickler.write_all(&[byte]).is_err() {
                return true;
            }
            sleep_ms(300);
        }
        false
    });
    // A finished read-only handshake, then nothing.
    let mut read_only = nbd_go(setup.listen, "disk0").expect("read-only GO");
    // A writer (token connection), then nothing.
    let token = lease.acquire("disk0", "30s");
    let mut writer = nbd_go(setup.listen, &format!("disk0@{token}")).expect("GO with a token");

    assert!(closed_within(&mut stalled, 10_000), "a stalled handshake");
    assert!(
        closed_within(&mut read_only, 10_000),
        "an idle read-only client"
    );
    assert!(closed_within(&mut writer, 10_000), "an idle writer");
    assert!(trickled.join().expect("trickler"), "a trickling handshake");
    // The proxy counts a timed-out connection once its task has ended,
    // which may be just after the client saw the close: wait for it.
    let deadline = now_ms() + 10_000;
    while process_metric(setup.metrics, "palisade_proxy_connections_timed_out_total") < 4
        && now_ms() < deadline
    {
        sleep_ms(20);
    }
    assert!(
        process_metric(setup.metrics, "palisade_proxy_connections_timed_out_total") >= 4,
        "{}\n{}",
        metrics(setup.metrics),
        lines(&proxy.log_text(), "client").join("\n")
    );
    // Other clients are served meanwhile and after.
    if have("qemu-io") {
        let url = setup.url(Some(token));
        let (ok, out) = qemu_io(&["-f", "raw", &url], &["write -P 0x5a 0 4k"]);
        assert!(ok, "{out}");
    }
    let log = proxy.log_text();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
}

#[test]
fn connections_beyond_the_limit_are_refused_with_one_log_line_a_second() {
    let tmp = tempfile::tempdir().expect("tmp");
    let setup = setup(tmp.path(), "connections_max = 4\n");
    let proxy = Proxy::start(&setup, &[]);
    // The start-up probes have left.
    let deadline = now_ms() + 5_000;
    while process_metric(setup.metrics, "palisade_proxy_connections") > 0 {
        assert!(now_ms() < deadline, "start-up probes still open");
        sleep_ms(20);
    }
    let held: Vec<TcpStream> = (0..4)
        .map(|_| nbd_connect(setup.listen).expect("within the limit"))
        .collect();
    let start_ms = now_ms();
    let extra = 300;
    // Spread over more than two seconds: several lines, each counting.
    for _ in 0..extra {
        let mut stream = TcpStream::connect(setup.listen).expect("connect");
        assert!(closed_within(&mut stream, 5_000), "over the limit, open");
        sleep_ms(8);
    }
    let elapsed_s = (now_ms() - start_ms).div_ceil(1_000);
    sleep_ms(2_100);
    let log = proxy.log_text();
    let refusals = lines(&log, "too many NBD clients");
    eprintln!(
        "{extra} refusals in {elapsed_s} s: {} log lines: {refusals:#?}",
        refusals.len()
    );
    assert!(!refusals.is_empty(), "{log}");
    assert!(
        refusals.len() as u64 <= elapsed_s + 2,
        "more than one line a second: {refusals:#?}"
    );
    // The tail of the burst is reported a second later: every refusal
    // is counted once.
    let counted: u64 = refusals.iter().map(|l| count_field(l)).sum();
    assert_eq!(counted, extra, "{refusals:#?}");
    assert!(
        refusals.iter().any(|l| count_field(l) > 1),
        "no line counts several refusals: {refusals:#?}"
    );
    assert_eq!(
        process_metric(setup.metrics, "palisade_proxy_connections_refused_total"),
        extra
    );
    assert_eq!(
        process_metric(setup.metrics, "palisade_proxy_connections"),
        4
    );
    drop(held);
    // Room again.
    let deadline = now_ms() + 5_000;
    while nbd_go(setup.listen, "disk0").is_err() {
        assert!(now_ms() < deadline, "no room after the held clients left");
        sleep_ms(50);
    }
}

#[test]
fn short_of_file_descriptors_the_proxy_warns_at_start_and_backs_off_accepting() {
    let tmp = tempfile::tempdir().expect("tmp");
    let setup = setup(tmp.path(), "connections_max = 1024\n");

    // A soft limit below the hard one is raised at start.
    let mut proxy = Proxy::start_limited(&setup, &[], Some((40, 4096)));
    let log = proxy.log_text();
    assert!(
        log.contains("raised the soft RLIMIT_NOFILE from 40 to 2112"),
        "{log}"
    );
    proxy.stop();

    // Both at 40: a warning, then accepts fail once the descriptors run
    // out, backing off and logging once a second.
    let proxy = Proxy::start_limited(&setup, &[], Some((40, 40)));
    let log = proxy.log_text();
    assert!(
        log.contains("RLIMIT_NOFILE is 40") && log.contains("connections_max = 1024"),
        "{log}"
    );
    let start_ms = now_ms();
    let flood: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(setup.listen).ok())
        .collect();
    sleep_ms(3_000);
    let elapsed_s = (now_ms() - start_ms).div_ceil(1_000);
    let log = proxy.log_text();
    let failures = lines(&log, "accept failed");
    let errors = process_metric(setup.metrics, "palisade_proxy_accept_errors_total");
    eprintln!(
        "{} connections, {errors} failed accepts in {elapsed_s} s, {} log lines: {failures:#?}",
        flood.len(),
        failures.len()
    );
    assert!(!failures.is_empty(), "{log}");
    assert!(
        failures.len() as u64 <= elapsed_s + 1,
        "more than one line a second: {failures:#?}"
    );
    // Backing off: the old proxy retried every 10 ms (~100 a second).
    assert!(errors <= 20 * elapsed_s, "{errors} accepts failed");
    drop(flood);
    // Descriptors free again: new clients are served.
    let deadline = now_ms() + 10_000;
    while nbd_go(setup.listen, "disk0").is_err() {
        assert!(now_ms() < deadline, "not served after the flood left");
        sleep_ms(100);
    }
}

#[test]
fn a_flood_of_timed_out_connections_leaves_rss_near_its_baseline() {
    const WAVE: usize = 1_000;
    let nofile = raise_own_nofile(4 * WAVE as u64);
    let connections = if nofile >= 2 * WAVE as u64 + 64 {
        WAVE
    } else {
        eprintln!("only {nofile} file descriptors here: waves of 200");
        200
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let setup = setup(
        tmp.path(),
        "handshake_timeout = \"1s\"\nread_only_idle_timeout = \"1s\"\n",
    );
    let proxy = Proxy::start(&setup, &[]);
    sleep_ms(500);
    let baseline = proxy.rss_kib();
    let mut report = format!("VmRSS KiB: baseline {baseline}");
    // Wave 1: handshakes that stall. Waves 2 and 3: read-only clients
    // that finish the handshake (a backend handle and a transmission
    // buffer each) and idle.
    for wave in 1..=3 {
        let mut streams: Vec<TcpStream> = (0..connections)
            .map(|_| {
                if wave == 1 {
                    nbd_connect(setup.listen).expect("connect")
                } else {
                    nbd_go(setup.listen, "disk0").expect("read-only GO")
                }
            })
            .collect();
        let open = proxy.rss_kib();
        for stream in &mut streams {
            assert!(closed_within(stream, 20_000), "wave {wave}: not timed out");
        }
        drop(streams);
        sleep_ms(500);
        let after = proxy.rss_kib();
        report.push_str(&format!(
            ", wave {wave} ({connections}): {open} open, {after} after"
        ));
    }
    eprintln!("{report}");
    let timed_out = process_metric(setup.metrics, "palisade_proxy_connections_timed_out_total");
    assert_eq!(timed_out, 3 * connections as u64);
    let end = proxy.rss_kib();
    // Before the fix: 5 MiB at start, 265 MiB after such waves.
    assert!(
        end < baseline + 48 * 1024,
        "memory stayed resident after the flood: {report}"
    );
}

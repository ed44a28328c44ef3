//! S3 end to end: unmodified `qemu-io` / `qemu-img` clients write through the
//! real proxy to a file or a `qemu-nbd` upstream, with a real `palisade
//! serve` issuing the tokens.

mod common;

use common::{have, metric, qemu_io, sleep_ms, Lease, Proxy, ProxySetup, QemuNbd, Session};

const RO: &[&str] = &["-f", "raw", "-r"];

fn rw(url: &str) -> Vec<&str> {
    vec!["-f", "raw", url]
}

fn ready() -> bool {
    have("qemu-io") && have("qemu-img") && have("qemu-nbd")
}

/// A lease service and a proxy with one file-backed export.
struct Fixture {
    setup: ProxySetup,
    proxy: Proxy,
    lease: Lease,
    tmp: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    let proxy = Proxy::start(&setup, &[]);
    Fixture {
        setup,
        proxy,
        lease,
        tmp,
    }
}

/// The disk holds `pattern` at `0..64k`, read without a token.
fn assert_holds(setup: &ProxySetup, pattern: &str) {
    assert_holds_in(setup, pattern, "64k");
}

/// The disk holds `pattern` at `0..len` (a qemu-io length), read without
/// a token.
fn assert_holds_in(setup: &ProxySetup, pattern: &str, len: &str) {
    let url = setup.url(None);
    let mut args = RO.to_vec();
    args.push(&url);
    let command = format!("read -P {pattern} 0 {len}");
    let (ok, out) = qemu_io(&args, &[&command]);
    assert!(ok, "the disk does not hold {pattern}: {out}");
}

/// Holder A (token t1, ttl 1 s) connects and writes 0xaa at 0..64k, is
/// paused (SIGSTOP) past its ttl, and B acquires: returns A's session and
/// (t1, t2).
fn a_writes_then_pauses_past_its_ttl(lease: &Lease, setup: &ProxySetup) -> (Session, u64, u64) {
    let t1 = lease.acquire("disk0", "1s");
    let mut a = Session::open(&setup.url(Some(t1)));
    a.send("write -P 0xaa 0 64k");
    a.wait_for("wrote 65536/65536", 1, 10_000);
    a.signal(libc::SIGSTOP);
    sleep_ms(1_300);
    let t2 = lease.acquire("disk0", "30s");
    assert!(t2 > t1, "S1: {t2} > {t1}");
    (a, t1, t2)
}

/// B writes 0xbb at 0..64k with token t2.
fn b_writes(setup: &ProxySetup, t2: u64) {
    let url = setup.url(Some(t2));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xbb 0 64k"]);
    assert!(ok, "B's write: {out}");
}

/// Holder A writes, is paused past its ttl, B acquires (and writes, if
/// `b_connects`), A resumes: every write A sends fails with EPERM and the
/// disk holds B's data. Without `b_connects`, the proxy's watch alone must
/// raise the fence on B's grant.
fn stale_writer(setup_backend: impl FnOnce(&mut ProxySetup), b_connects: bool) {
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup_backend(&mut setup);
    let proxy = Proxy::start(&setup, &[]);

    let (mut a, _, t2) = a_writes_then_pauses_past_its_ttl(&lease, &setup);
    if b_connects {
        b_writes(&setup, t2);
    } else {
        // The watch raises the fence on the grant alone.
        let deadline = common::now_ms() + 5_000;
        while metric(setup.metrics, "palisade_proxy_fence") < t2 {
            assert!(
                common::now_ms() < deadline,
                "the grant never raised the fence"
            );
            sleep_ms(20);
        }
    }
    a.signal(libc::SIGCONT);
    // qemu-io reads one command per wakeup: send them one at a time.
    a.send("write -P 0xaa 0 64k");
    a.wait_for("Operation not permitted", 1, 10_000);
    a.send("write -P 0xaa 64k 4k");
    a.wait_for("Operation not permitted", 2, 10_000);
    // WRITE_ZEROES and TRIM are writes too.
    a.send("write -z 0 4k");
    a.wait_for("Operation not permitted", 3, 10_000);
    a.send("discard 0 4k");
    let out = a.wait_for("Operation not permitted", 4, 10_000);
    let out_end = a.quit();
    assert_eq!(
        out_end.matches("wrote").count(),
        1,
        "only A's first write succeeded: {out} / {out_end}"
    );
    if b_connects {
        assert_holds(&setup, "0xbb");
    } else {
        assert_holds(&setup, "0xaa");
    }
    // Nothing of A's later writes reached the disk.
    let url = setup.url(None);
    let mut args = RO.to_vec();
    args.push(&url);
    let (ok, out) = qemu_io(&args, &["read -P 0 64k 4k"]);
    assert!(ok, "a fenced write reached the disk: {out}");
    assert_eq!(
        metric(setup.metrics, "palisade_proxy_writes_fenced_total"),
        4
    );
    drop(proxy);
}

#[test]
fn a_paused_holder_is_fenced_and_the_disk_holds_the_new_holders_data() {
    if !ready() {
        return;
    }
    stale_writer(|_| {}, true);
}

#[test]
fn a_new_grant_fences_the_old_holder_before_the_new_one_connects() {
    if !ready() {
        return;
    }
    stale_writer(|_| {}, false);
}

#[test]
fn an_upstream_nbd_backend_is_fenced_the_same_way() {
    if !ready() {
        return;
    }
    upstream_is_fenced(false);
}

#[test]
fn an_upstream_on_a_unix_socket_is_fenced_the_same_way() {
    if !ready() {
        return;
    }
    upstream_is_fenced(true);
}

/// [`stale_writer`] through a real `qemu-nbd` upstream, on TCP or on a
/// Unix socket: B's data is read back through the proxy, A is refused,
/// and the bytes are in the upstream's file.
fn upstream_is_fenced(unix: bool) {
    let tmp = tempfile::tempdir().expect("tmp");
    let image = tmp.path().join("upstream.img");
    let file = std::fs::File::create(&image).expect("image");
    file.set_len(64 << 20).expect("size");
    let upstream = if unix {
        QemuNbd::start_unix(&image, "up", &tmp.path().join("up.sock"))
    } else {
        QemuNbd::start(&image, "up")
    };
    let lines = upstream.backend_lines();
    assert_eq!(lines.contains("nbd_socket"), unix, "{lines}");
    stale_writer(move |setup| setup.backend = lines, true);
    // The bytes went to the upstream's file.
    let (ok, out) = qemu_io(
        &["-f", "raw", "-r", image.to_str().expect("utf-8")],
        &["read -P 0xbb 0 64k"],
    );
    assert!(ok, "upstream file: {out}");
}

/// An export whose upstream socket does not exist: the proxy starts
/// (the upstream may come later), a client's handshake is refused with
/// the socket's path, and once a `qemu-nbd` listens there the same
/// config serves.
#[test]
fn a_missing_upstream_socket_refuses_the_handshake_naming_the_path() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let socket = tmp.path().join("later.sock");
    let mut setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    setup.backend = format!(
        "nbd_socket = \"{}\"\nnbd_export = \"up\"\n",
        socket.display()
    );
    let proxy = Proxy::start(&setup, &[]);
    let token = lease.acquire("disk0", "30s");
    let url = setup.url(Some(token));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xcc 0 4k"]);
    assert!(!ok, "wrote without an upstream: {out}");
    let why = format!("connecting to unix:{}", socket.display());
    assert!(out.contains(&why), "the client is not told {why:?}: {out}");
    let log = proxy.log_text();
    assert!(log.contains(&why), "the log does not say {why:?}: {log}");
    // The upstream comes up: no restart of the proxy needed.
    let image = tmp.path().join("upstream.img");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(1 << 20)
        .expect("size");
    let _upstream = QemuNbd::start_unix(&image, "up", &socket);
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xcc 0 4k"]);
    assert!(ok, "through the upstream once it listens: {out}");
    assert_holds_in(&setup, "0xcc", "4k");
}

#[test]
fn the_fence_survives_a_proxy_restart_without_the_lease_service() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let mut lease = Lease::start(tmp.path());
    let setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    let mut proxy = Proxy::start(&setup, &[]);
    let (mut a, t1, t2) = a_writes_then_pauses_past_its_ttl(&lease, &setup);
    b_writes(&setup, t2);

    // Restart the proxy with the lease service gone: only the durable
    // fence can refuse A now.
    proxy.stop();
    lease.stop();
    let _proxy = Proxy::start(&setup, &[]);
    a.signal(libc::SIGCONT);
    a.send("write -P 0xaa 0 64k");
    let _ = a.quit();
    // A reconnects with its old token: refused at the handshake.
    let url = setup.url(Some(t1));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xaa 0 64k"]);
    assert!(!ok, "a stale token was accepted after a restart: {out}");
    assert!(out.contains("stale"), "{out}");
    assert_holds(&setup, "0xbb");
    // B goes on writing through the restarted proxy.
    let url = setup.url(Some(t2));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0xbc 64k 4k"]);
    assert!(ok, "B after the restart: {out}");
}

#[test]
fn older_writes_in_flight_reach_the_disk_before_the_new_holders_first_write() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let lease = Lease::start(tmp.path());
    let setup = ProxySetup::file(tmp.path(), &lease.endpoint);
    let t1 = lease.acquire("disk0", "1s");
    // A's writes are held 2.5 s inside the proxy after the gate admitted
    // them: B's write arrives while A's is in flight.
    let _proxy = Proxy::start(
        &setup,
        &[("PALISADE_PROXY_TEST_WRITE_DELAY", format!("{t1}:2500"))],
    );
    let mut a = Session::open(&setup.url(Some(t1)));
    a.send("write -P 0xaa 0 64k");
    sleep_ms(1_100);
    let t2 = lease.acquire("disk0", "30s");
    b_writes(&setup, t2);
    // A's write had passed the fence: it is acknowledged, and it landed
    // before B's, so B's data is what the disk holds.
    a.wait_for("wrote 65536/65536", 1, 10_000);
    a.send("write -P 0xaa 0 4k");
    let out = a.wait_for("Operation not permitted", 1, 10_000);
    assert_eq!(out.matches("wrote").count(), 1, "{out}");
    assert_holds(&setup, "0xbb");
}

#[test]
fn qemu_img_convert_copies_a_larger_image_through_the_proxy() {
    if !ready() {
        return;
    }
    // Bind every field: an unbound one would be dropped (a proxy killed,
    // a directory removed) at the end of the statement.
    let Fixture {
        setup,
        proxy: _proxy,
        lease,
        tmp,
    } = fixture();
    // 48 MiB of varied bytes with holes: random blocks, zero runs.
    let source = tmp.path().join("source.img");
    let mut bytes = vec![0u8; 48 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, chunk) in bytes.chunks_mut(64 << 10).enumerate() {
        if i % 5 == 3 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    // The tail beyond 48 MiB stays zero in the 64 MiB export.
    bytes.resize(64 << 20, 0);
    std::fs::write(&source, &bytes).expect("source");
    let token = lease.acquire("disk0", "30s");
    let target = setup.url(Some(token));
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", "-W"])
        .arg(&source)
        .arg(&target)
        .status()
        .expect("qemu-img convert");
    assert!(status.success(), "qemu-img convert through the proxy");
    let output = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&source)
        .arg(setup.url(None))
        .output()
        .expect("qemu-img compare");
    assert!(
        output.status.success(),
        "images differ: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    // And the backing file itself holds the bytes.
    assert_eq!(
        std::fs::read(tmp.path().join("disk0.img")).expect("disk"),
        bytes
    );
}

#[test]
fn hostile_clients_do_not_disturb_the_proxy() {
    use std::io::{Read, Write};
    if !ready() {
        return;
    }
    let Fixture {
        setup,
        mut proxy,
        lease,
        tmp: _tmp,
    } = fixture();
    let token = lease.acquire("disk0", "30s");
    // One client stalls mid-handshake while others misbehave.
    let mut stalled = std::net::TcpStream::connect(setup.listen).expect("connect");
    let mut greeting = [0u8; 18];
    stalled.read_exact(&mut greeting).expect("greeting");
    stalled.write_all(&[0, 0]).expect("half the flags");
    for garbage in [
        vec![0xffu8; 4096],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        // Fixed newstyle flags, then an option with a huge length.
        [
            &3u32.to_be_bytes()[..],
            b"IHAVEOPT",
            &7u32.to_be_bytes(),
            &u32::MAX.to_be_bytes(),
        ]
        .concat(),
    ] {
        let mut s = std::net::TcpStream::connect(setup.listen).expect("connect");
        let _ = s.write_all(&garbage);
        let mut sink = Vec::new();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.read_to_end(&mut sink);
    }
    // A name that is not an export, a malformed token.
    for url in [
        format!("nbd://{}/nope", setup.listen),
        format!("nbd://{}/disk0@12ab", setup.listen),
    ] {
        let (ok, out) = qemu_io(&rw(&url), &["read 0 4k"]);
        assert!(!ok, "{url}: {out}");
    }
    // A token the lease service never issued, above the fence: the service
    // answers, so it is refused and the fence does not rise to it.
    let forged = setup.url(Some(token + 1_000));
    let (ok, out) = qemu_io(&rw(&forged), &["write -P 0x66 0 64k"]);
    assert!(!ok, "an unissued token was accepted: {out}");
    assert!(out.contains("not the current lease"), "{out}");
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence"), token);
    // The good client still works.
    let url = setup.url(Some(token));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0x11 0 64k"]);
    assert!(ok, "{out}");
    assert!(proxy.alive(), "{}", proxy.log_text());
    assert_holds(&setup, "0x11");
    drop(stalled);
}

#[test]
fn damaged_fence_state_refuses_writes_until_an_operator_repairs_it() {
    if !ready() {
        return;
    }
    let Fixture {
        setup,
        mut proxy,
        lease,
        tmp,
    } = fixture();
    let token = lease.acquire("disk0", "30s");
    let url = setup.url(Some(token));
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0x22 0 64k"]);
    assert!(ok, "{out}");
    proxy.stop();
    // Scribble over the fence file: header and both slots.
    let fence = tmp.path().join("state").join(format!(
        "fence-{}",
        b"disk0"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let len = std::fs::metadata(&fence).expect("fence file").len();
    std::fs::write(&fence, vec![0x5a; usize::try_from(len).expect("len")]).expect("scribble");

    let mut proxy = Proxy::start(&setup, &[]);
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0x33 0 64k"]);
    assert!(!ok, "a write was accepted on damaged fence state: {out}");
    assert!(out.contains("damaged"), "{out}");
    assert_eq!(metric(setup.metrics, "palisade_proxy_fence_damaged"), 1);
    // Reads without a token still work; the data is intact.
    assert_holds(&setup, "0x22");
    assert!(
        proxy.log_text().contains("repair"),
        "the log tells the operator what to do"
    );
    proxy.stop();

    // Repair to the newest token the service issued, then the holder goes on.
    let status = std::process::Command::new(common::PROXY)
        .arg("--config")
        .arg(setup.config_path())
        .args(["repair", "disk0", &token.to_string()])
        .status()
        .expect("repair");
    assert!(status.success());
    let _proxy = Proxy::start(&setup, &[]);
    let (ok, out) = qemu_io(&rw(&url), &["write -P 0x33 0 64k"]);
    assert!(ok, "after repair: {out}");
    let stale = setup.url(Some(token - 1));
    let (ok, out) = qemu_io(&rw(&stale), &["write -P 0x44 0 64k"]);
    assert!(!ok, "{out}");
    assert_holds(&setup, "0x33");
}

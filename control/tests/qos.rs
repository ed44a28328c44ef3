//! QoS end to end: the product's socket marking and qdisc tree, on a real
//! rate-limited link between two network namespaces, with heartbeat
//! round trips measured while bulk TCP saturates the link.
//!
//! The namespace tests need root and `ip netns`; without them they print
//! SKIP and pass. Namespace and interface names are unique per run and are
//! deleted by a guard, also when a test fails. Print the figures with
//! `cargo test -p palisade-control --test qos -- --nocapture`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_control::qos::{self, classify_root, QosError, RootQdisc, TcFailure, TreePlan};
use palisade_control::transport::Transport;
use palisade_host::clock::monotonic_ns;
use palisade_host::mark;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use socket2::{Domain, SockRef, Socket, Type};

/// The shaped link: slow enough that 16 flows keep a queue of tens of ms.
const RATE_BPS: u64 = 10_000_000;
/// Bulk TCP flows. Linux's TCP small queues let one local flow put only
/// about two packets into the qdisc at a time, so a single flow never
/// builds a standing queue on its own host; many flows do (as a backup
/// job's parallel streams would).
const BULK_FLOWS: usize = 16;
/// Packets the qdisc's leaves hold (the veth's `txqueuelen`).
const QUEUE_PACKETS: u32 = 100;
const HEARTBEAT_BYTES: usize = 64;
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(20);
const SAMPLES: usize = 200;
/// Bulk runs this long before heartbeats are measured, to fill the queue.
const BULK_WARMUP: Duration = Duration::from_secs(2);
const ECHO_PORT: u16 = 7501;
const SINK_PORT: u16 = 7502;
/// DSCP of the heartbeats: CS6, as peer connections are marked.
const HEARTBEAT_DSCP: u8 = 48;

static LABS: AtomicUsize = AtomicUsize::new(0);

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Two namespaces, `a` (the sender: heartbeats and bulk) and `b`, joined
/// by a veth pair; deleted on drop.
struct Lab {
    a: String,
    b: String,
    /// The veth end in `a`, whose egress is shaped.
    va: String,
}

impl Lab {
    /// A fresh lab, or `None` (after printing why) when this process cannot
    /// make one.
    fn new() -> Option<Lab> {
        if !rustix::process::geteuid().is_root() {
            println!("SKIP: network namespaces need root");
            return None;
        }
        let id = format!(
            "{}{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let a = format!("palisade-qos-{id}-a");
        let b = format!("palisade-qos-{id}-b");
        if let Err(e) = run("ip", &["netns", "add", &a]) {
            println!("SKIP: ip netns is unavailable: {e}");
            return None;
        }
        let lab = Lab {
            a,
            b,
            va: format!("pqa{id}"),
        };
        // From here the guard deletes whatever was made.
        lab.set_up().expect("setting up the namespaces");
        Some(lab)
    }

    fn set_up(&self) -> Result<(), String> {
        let (a, b, va) = (self.a.as_str(), self.b.as_str(), self.va.as_str());
        let vb = format!("pqb{}", &va[3..]);
        run("ip", &["netns", "add", b])?;
        run(
            "ip",
            &[
                "link", "add", va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
            ],
        )?;
        for (ns, dev, v4, v6) in [
            (a, va, "10.201.0.1/24", "fd00:201::1/64"),
            (b, &vb, "10.201.0.2/24", "fd00:201::2/64"),
        ] {
            run("ip", &["-n", ns, "addr", "add", v4, "dev", dev])?;
            run("ip", &["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        let queue = QUEUE_PACKETS.to_string();
        run("ip", &["-n", a, "link", "set", va, "txqueuelen", &queue])?;
        // One segment per packet, as on the wire: a 64 KiB GSO packet
        // would hold the 10 Mbit/s link for 52 ms whatever the priority.
        run("ip", &["-n", a, "link", "set", va, "gso_max_segs", "1"])?;
        Ok(())
    }

    fn tc_a(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", &self.a, "tc"];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn root_a(&self) -> RootQdisc {
        let json = self
            .tc_a(&["-j", "qdisc", "show", "dev", &self.va, "root"])
            .expect("tc show");
        classify_root(&json).expect("tc json")
    }

    /// The rate limit without priorities: one htb class at the link rate.
    fn shape_without_qos(&self) {
        let rate = palisade_tuning::format_rate(RATE_BPS);
        let va = self.va.as_str();
        self.tc_a(&[
            "qdisc", "add", "dev", va, "root", "handle", "1:", "htb", "default", "1",
        ])
        .expect("root");
        self.tc_a(&[
            "class", "add", "dev", va, "parent", "1:", "classid", "1:1", "htb", "rate", &rate,
            "ceil", &rate, "quantum", "60000",
        ])
        .expect("class");
    }

    fn unshape(&self) {
        self.tc_a(&["qdisc", "del", "dev", &self.va, "root"])
            .expect("removing the shaping");
    }

    fn plan(&self) -> TreePlan {
        // The default marks: EF for clients, CS6 for peers.
        TreePlan::new(&self.va, RATE_BPS, &[46, 48])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so both.
        for ns in [&self.a, &self.b] {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `f` on a new thread that has moved into network namespace `ns`
/// (a thread's network namespace is its own; the rest of the test process
/// stays where it is). Threads and processes it starts inherit it.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).expect("setns");
        f()
    })
}

/// Accepts on `port` of every address in namespace `ns` until `stop`,
/// handing each connection to `serve` on its own thread.
fn serve_in(
    ns: &str,
    port: u16,
    stop: &Arc<AtomicBool>,
    serve: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    in_netns(ns, move || {
        let listener = TcpListener::bind(("::", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut served = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    let serve = serve.clone();
                    served.push(std::thread::spawn(move || serve(stream)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        for thread in served {
            let _ = thread.join();
        }
    })
}

/// The far end: an echo server for heartbeats (its replies marked like a
/// peer's) and a sink that counts bulk bytes.
struct FarEnd {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl FarEnd {
    fn start(ns: &str) -> FarEnd {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let echo_stop = stop.clone();
        let echo = serve_in(ns, ECHO_PORT, &stop, move |mut stream| {
            favour_this_thread();
            let ipv6 = stream.local_addr().is_ok_and(|addr| addr.is_ipv6());
            mark::mark(&SockRef::from(&stream), ipv6, HEARTBEAT_DSCP).expect("mark");
            stream.set_nodelay(true).expect("nodelay");
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = [0u8; HEARTBEAT_BYTES];
            while !echo_stop.load(Ordering::SeqCst) {
                match stream.read_exact(&mut buf) {
                    Ok(()) => stream.write_all(&buf).expect("echo"),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        let counter = received.clone();
        let sink_stop = stop.clone();
        let sink = serve_in(ns, SINK_PORT, &stop, move |mut stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            while !sink_stop.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        FarEnd {
            stop,
            received,
            threads: vec![echo, sink],
        }
    }
}

impl Drop for FarEnd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Unmarked bulk TCP flows from namespace `ns` to `to`, until dropped.
struct Bulk {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Bulk {
    fn start(ns: &str, to: SocketAddr) -> Bulk {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..BULK_FLOWS)
            .map(|_| {
                let stop = stop.clone();
                in_netns(ns, move || {
                    let mut stream = TcpStream::connect(to).expect("bulk connect");
                    stream
                        .set_write_timeout(Some(Duration::from_millis(200)))
                        .expect("timeout");
                    let chunk = vec![0x5a_u8; 1 << 16];
                    while !stop.load(Ordering::SeqCst) {
                        match stream.write(&chunk) {
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(e) => panic!("bulk write: {e}"),
                        }
                    }
                })
            })
            .collect();
        Bulk { stop, threads }
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Heartbeat round trips from namespace `ns` to `to`, in nanoseconds: a
/// `HEARTBEAT_BYTES` message every `HEARTBEAT_INTERVAL` on one connection
/// marked by the product's own marking function.
fn heartbeats(ns: &str, to: SocketAddr, samples: usize) -> Vec<u64> {
    in_netns(ns, move || {
        favour_this_thread();
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
        let marked =
            mark::mark(&SockRef::from(&socket), to.is_ipv6(), HEARTBEAT_DSCP).expect("mark");
        assert_eq!(marked.dscp, HEARTBEAT_DSCP);
        socket
            .connect_timeout(&to.into(), Duration::from_secs(5))
            .expect("heartbeat connect");
        let mut stream: TcpStream = socket.into();
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rtts = Vec::with_capacity(samples);
        let mut buf = [0u8; HEARTBEAT_BYTES];
        for sample in 0..samples {
            buf[0] = sample as u8;
            let sent = monotonic_ns();
            stream.write_all(&buf).expect("heartbeat");
            stream.read_exact(&mut buf).expect("echo");
            rtts.push(monotonic_ns() - sent);
            assert_eq!(buf[0], sample as u8);
            std::thread::sleep(HEARTBEAT_INTERVAL);
        }
        rtts
    })
    .join()
    .expect("heartbeat thread")
}

/// Raises this thread's CPU priority (nice -10, root only): the test
/// machine may be busy compiling, and the experiment measures the network
/// queue, not the scheduler. Both ends of the heartbeat get it, in every
/// phase alike.
fn favour_this_thread() {
    // On Linux this applies to the calling thread only.
    let _ = rustix::process::setpriority_process(None, -10);
}

/// p50 and p99 of round trips, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Rtt {
    p50_ms: f64,
    p99_ms: f64,
}

impl Rtt {
    fn of(mut rtts: Vec<u64>) -> Rtt {
        assert!(!rtts.is_empty());
        rtts.sort_unstable();
        let at = |percent: usize| {
            let rank = (rtts.len() * percent).div_ceil(100).max(1);
            rtts[rank - 1] as f64 / 1e6
        };
        Rtt {
            p50_ms: at(50),
            p99_ms: at(99),
        }
    }
}

/// Heartbeats while bulk saturates the link; also the bulk rate reached.
fn measure_under_load(lab: &Lab, far: &FarEnd, to: SocketAddr) -> (Rtt, f64) {
    let sink: SocketAddr = "10.201.0.2:7502".parse().expect("literal");
    let bulk = Bulk::start(&lab.a, sink);
    std::thread::sleep(BULK_WARMUP);
    let (bytes_before, start_ns) = (far.received.load(Ordering::Relaxed), monotonic_ns());
    let rtts = heartbeats(&lab.a, to, SAMPLES);
    let bytes = far.received.load(Ordering::Relaxed) - bytes_before;
    let seconds = (monotonic_ns() - start_ns) as f64 / 1e9;
    drop(bulk);
    (Rtt::of(rtts), bytes as f64 * 8.0 / seconds / 1e6)
}

#[test]
fn priority_tree_keeps_heartbeats_out_of_the_bulk_queue() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let far = FarEnd::start(&lab.b);
    let v4: SocketAddr = "10.201.0.2:7501".parse().expect("literal");
    let v6: SocketAddr = "[fd00:201::2]:7501".parse().expect("literal");
    let rate_mbit = RATE_BPS as f64 / 1e6;

    lab.shape_without_qos();
    let idle = Rtt::of(heartbeats(&lab.a, v4, SAMPLES));
    let (off, off_mbit) = measure_under_load(&lab, &far, v4);
    lab.unshape();

    // The product's tree, installed by its own code from inside `a` and
    // removed when the guard drops there.
    let (installed_tx, installed_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let plan = lab.plan();
    let installer = in_netns(&lab.a, move || {
        let installed = qos::install(&plan).expect("installing the tree");
        installed_tx.send(()).expect("signal");
        let _ = done_rx.recv();
        drop(installed);
    });
    installed_rx.recv().expect("the tree is installed");
    assert_eq!(lab.root_a(), RootQdisc::Ours);
    let (on, on_mbit) = measure_under_load(&lab, &far, v4);
    let (on_v6, on_v6_mbit) = measure_under_load(&lab, &far, v6);
    let classes = lab
        .tc_a(&["-s", "class", "show", "dev", &lab.va])
        .expect("class stats");
    done_tx.send(()).expect("signal");
    installer.join().expect("installer");
    assert_eq!(
        lab.root_a(),
        RootQdisc::Default,
        "the guard removed the tree"
    );

    println!("link {rate_mbit} Mbit/s (htb), {BULK_FLOWS} unmarked bulk TCP flows, {SAMPLES} CS6 heartbeats of {HEARTBEAT_BYTES} B every {HEARTBEAT_INTERVAL:?}");
    println!(
        "idle (no bulk)        p50 {:8.3} ms  p99 {:8.3} ms",
        idle.p50_ms, idle.p99_ms
    );
    println!(
        "QoS off, bulk {off_mbit:5.2} Mbit/s  p50 {:8.3} ms  p99 {:8.3} ms",
        off.p50_ms, off.p99_ms
    );
    println!(
        "QoS on,  bulk {on_mbit:5.2} Mbit/s  p50 {:8.3} ms  p99 {:8.3} ms",
        on.p50_ms, on.p99_ms
    );
    println!(
        "QoS on, IPv6 heartbeats, bulk {on_v6_mbit:5.2} Mbit/s  p50 {:8.3} ms  p99 {:8.3} ms",
        on_v6.p50_ms, on_v6.p99_ms
    );
    println!("tree counters during the QoS-on runs:\n{classes}");

    // The experiment is only meaningful if bulk filled the link.
    for (phase, mbit) in [
        ("QoS off", off_mbit),
        ("QoS on", on_mbit),
        ("QoS on IPv6", on_v6_mbit),
    ] {
        assert!(
            mbit > rate_mbit / 2.0,
            "{phase}: bulk reached only {mbit:.2} of {rate_mbit} Mbit/s; the link was not saturated"
        );
    }
    // Wide margins: the effect is an order of magnitude.
    assert!(
        off.p99_ms > idle.p99_ms,
        "a saturated link without priorities must delay heartbeats: idle {idle:?}, off {off:?}"
    );
    assert!(
        on.p99_ms < off.p99_ms / 2.0,
        "the tree must keep heartbeats out of the bulk queue: off {off:?}, on {on:?}"
    );
    assert!(
        on_v6.p99_ms < off.p99_ms / 2.0,
        "the IPv6 filter must too: off {off:?}, on {on_v6:?}"
    );
}

#[test]
fn a_stale_tree_is_replaced_and_a_foreign_one_left_alone() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let plan = lab.plan();
    let outcome = in_netns(&lab.a, move || {
        // A run that crashed leaves its tree: the next one replaces it.
        std::mem::forget(qos::install(&plan).expect("first install"));
        let second = qos::install(&plan).expect("replacing a stale tree of ours");
        drop(second);
        plan
    })
    .join()
    .expect("thread");
    assert_eq!(lab.root_a(), RootQdisc::Default);

    lab.shape_without_qos();
    let plan = outcome;
    let refused = in_netns(&lab.a, move || qos::install(&plan).map(|_| ()))
        .join()
        .expect("thread");
    match refused {
        Err(QosError::Foreign { kind, handle, .. }) => {
            assert_eq!((kind.as_str(), handle.as_str()), ("htb", "1:"));
        }
        other => panic!("expected a refusal to touch a foreign qdisc, got {other:?}"),
    }
    assert!(
        matches!(lab.root_a(), RootQdisc::Foreign { .. }),
        "the operator's qdisc is still there"
    );
}

#[test]
fn without_cap_net_admin_the_tree_is_not_installed_and_says_why() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let plan = lab.plan();
    let outcome = in_netns(&lab.a, move || {
        // `tc`, run as root, would get every capability back on exec
        // unless this thread's bounding set lacks it.
        rustix::thread::remove_capability_from_bounding_set(
            rustix::thread::CapabilitySet::NET_ADMIN,
        )
        .expect("drop CAP_NET_ADMIN from the bounding set");
        qos::install(&plan).map(|_| ())
    })
    .join()
    .expect("thread");
    match outcome {
        Err(QosError::Tc {
            failure: TcFailure::NoPermission,
            command,
        }) => {
            assert!(command.starts_with("tc qdisc add"), "{command}");
        }
        other => panic!("expected NoPermission, got {other:?}"),
    }
    assert_eq!(lab.root_a(), RootQdisc::Default);
    let missing = lab.plan();
    let missing = TreePlan::new("pq-nosuch", 1_000_000, missing.priority_dscps());
    match in_netns(&lab.a, move || qos::install(&missing).map(|_| ()))
        .join()
        .expect("thread")
    {
        Err(QosError::Tc {
            failure: TcFailure::NoDevice,
            ..
        }) => {}
        other => panic!("expected NoDevice, got {other:?}"),
    }
}

#[test]
fn the_node_installs_its_tree_at_start_and_removes_it_at_shutdown() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let config = format!(
        "[qos]\nenabled = true\ninterface = \"{}\"\nrate = \"10mbit\"\n",
        lab.va
    );
    let start = |config: String| {
        // `palisade serve` in namespace `a`: it inherits the thread's.
        in_netns(&lab.a, move || common::Server::start(&config))
            .join()
            .expect("thread")
    };

    // A node killed outright leaves its tree; the next start replaces it.
    let mut crashed = start(config.clone());
    assert_eq!(lab.root_a(), RootQdisc::Ours);
    assert!(
        crashed
            .log_text()
            .contains("qos: priority qdisc tree installed"),
        "{}",
        crashed.log_text()
    );
    crashed.kill9();
    assert_eq!(lab.root_a(), RootQdisc::Ours, "SIGKILL leaves the tree");

    let mut server = start(config);
    assert_eq!(lab.root_a(), RootQdisc::Ours);
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = server.child.wait().expect("wait");
    let log = server.log_text();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("qos: replacing the qdisc tree a previous run left"),
        "{log}"
    );
    assert!(
        log.contains("qos: removed the priority qdisc tree"),
        "{log}"
    );
    assert_eq!(
        lab.root_a(),
        RootQdisc::Default,
        "shutdown removed the tree"
    );
}

/// `ss`'s `tos:0x..` and `class_id:0x..` (the priority) for the sockets
/// matching `filter`.
fn socket_marks(filter: &str) -> Option<(u32, u32)> {
    let mut args = vec!["-tnH", "--tos", "state", "established"];
    args.extend(filter.split_whitespace());
    let out = run("ss", &args).ok()?;
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .and_then(|hex| u32::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
    };
    Some((field("tos:")?, field("class_id:")?))
}

#[test]
fn peer_sockets_carry_the_configured_mark_both_ways() {
    if run("ss", &["-V"]).is_err() {
        println!("SKIP: ss (iproute2) is not installed");
        return;
    }
    // CS5: priority 6, which needs no capability, so the figures are the
    // same for every user.
    let dscp = 40;
    let peer = TcpListener::bind("127.0.0.1:0").expect("bind");
    let doorbell = std::sync::Arc::new(palisade_host::doorbell::Doorbell::new().expect("eventfd"));
    let transport = Transport::start_with_dscp(
        1,
        "palisade",
        b"",
        "127.0.0.1:0".parse().expect("literal"),
        &[(2, peer.local_addr().expect("addr"))],
        doorbell,
        dscp,
    )
    .expect("transport");
    let expected = (u32::from(dscp) << 2, mark::priority_for_dscp(dscp));
    // The transport marks an accepted socket on its reader thread: poll
    // until the marks appear (or report the last ones seen).
    let wait_for = |filter: String| {
        let mut seen = None;
        for _ in 0..100 {
            seen = socket_marks(&filter);
            if seen == Some(expected) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    };
    // Outbound: the transport dials the peer.
    let (_dialed, from) = peer.accept().expect("the transport dials");
    let outbound = wait_for(format!("sport = :{}", from.port()));
    // Inbound: a connection to the transport.
    let inbound_stream = TcpStream::connect(transport.local_addr()).expect("connect");
    let port = inbound_stream.local_addr().expect("addr").port();
    let inbound = wait_for(format!("dport = :{port}"));
    transport.stop();
    assert_eq!(outbound, Some(expected), "outbound (tos, priority)");
    assert_eq!(inbound, Some(expected), "inbound (tos, priority)");
}

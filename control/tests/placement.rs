//! Where a real `palisade serve` runs its threads, read from
//! `/proc/<pid>/task/*/status` (`Cpus_allowed_list`):
//! - when `node.cores` leaves a CPU over, the data-plane core runs alone on
//!   its CPU and every other thread of the node (the control thread, the
//!   admin endpoint's thread, the peer transport's acceptor and writer, and a reader
//!   the acceptor spawns later) runs on the CPUs left over, never on the
//!   core's;
//! - when none is left over, every thread stays where it was, sharing the
//!   cores' CPUs, and the node says so;
//! - an idle node's control thread wakes only for its ticks and its admin
//!   acceptor not at all (`voluntary_ctxt_switches`), so that where they
//!   share a core's CPU they preempt it no more than their work asks.

mod common;

use std::net::TcpStream;

use common::{sleep_ms, Server};
use palisade_host::affinity::{allowed_cpus, parse_cpu_list, spare_cpus};

/// One thread of a process, as `/proc` shows it.
#[derive(Debug)]
struct Thread {
    tid: String,
    name: String,
    cpus: Vec<usize>,
    /// Sleeps it woke from (`voluntary_ctxt_switches`).
    wake_ups: u64,
}

/// The threads of process `pid` (a thread that ends while they are read
/// is left out).
fn threads(pid: u32) -> Vec<Thread> {
    let mut threads = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    for task in tasks {
        let path = task.expect("task entry").path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue;
        };
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in status");
        threads.push(Thread {
            tid: path
                .file_name()
                .expect("tid")
                .to_string_lossy()
                .into_owned(),
            name: name.trim().to_string(),
            cpus: parse_cpu_list(list).expect("a CPU list"),
            wake_ups: status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .expect("voluntary_ctxt_switches in status")
                .trim()
                .parse()
                .expect("a count"),
        });
    }
    threads
}

/// Whether `thread` carries the thread name `name` (the kernel keeps the
/// first 15 bytes: `palisade-peer-accept` shows as `palisade-peer-a`).
fn named(thread: &Thread, name: &str) -> bool {
    thread.name == name[..name.len().min(15)]
}

fn is_core(thread: &Thread) -> bool {
    // Each data-plane core's thread is `palisade-core-<n>`.
    thread.name.starts_with("palisade-core")
}

/// `palisade_control_pinned` from the node's admin endpoint.
fn control_pinned(server: &Server) -> String {
    let admin = server.ready["admin"].as_str().expect("admin address");
    palisade_testkit::metric_sample(admin, "palisade_control_pinned")
        .expect("palisade_control_pinned on the admin endpoint")
}

#[test]
fn the_control_plane_stays_off_the_data_plane_core_when_a_cpu_is_spare() {
    let allowed = allowed_cpus().expect("this test's CPU mask");
    if allowed.len() < 2 {
        eprintln!(
            "skipped: this test may run on {} CPU(s) ({allowed:?}); a spare CPU needs at least 2",
            allowed.len()
        );
        return;
    }
    // CPU 0 on most machines: the first this process may use.
    let core_cpu = allowed[0];
    let spare = spare_cpus(&allowed, &[core_cpu]);
    // A member of a two-node cluster, so that the peer transport runs; the
    // other member never starts (nothing listens on its port).
    let client = palisade_testkit::free_port();
    let config = format!(
        "[node]\nid = 1\ncores = [{core_cpu}]\n\n[listen]\nclient = \"127.0.0.1:{client}\"\n\n\
         [cluster]\nname = \"test\"\n\n\
         [[cluster.peers]]\nid = 1\npeer = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{client}\"\n\n\
         [[cluster.peers]]\nid = 2\npeer = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{}\"\n",
        palisade_testkit::free_port(),
        palisade_testkit::free_port(),
        palisade_testkit::free_port(),
    );
    let server = Server::start(&config);
    let pid = server.child.id();
    // A connection to the peer port: the acceptor, pinned by inheritance,
    // spawns a reader for it after the node started. It waits for a
    // handshake that never comes, long enough to be seen.
    let peer = server.ready["peer"].as_str().expect("peer address");
    let _link = TcpStream::connect(peer).expect("connect to the peer port");
    let expected = [
        "palisade",
        "palisade-admin",
        "palisade-peer-accept",
        "palisade-peer-2",
        "palisade-peer-in",
    ];
    let mut seen = threads(pid);
    for _ in 0..250 {
        if expected
            .iter()
            .all(|name| seen.iter().any(|t| named(t, name)))
        {
            break;
        }
        sleep_ms(20);
        seen = threads(pid);
    }
    for name in expected {
        assert!(
            seen.iter().any(|t| named(t, name)),
            "no thread {name}: {seen:#?}"
        );
    }
    assert!(seen.iter().any(is_core), "no data-plane core: {seen:#?}");
    for thread in &seen {
        if is_core(thread) {
            assert_eq!(
                thread.cpus,
                vec![core_cpu],
                "a data-plane thread runs on its CPU only: {thread:?}"
            );
        } else {
            assert!(
                !thread.cpus.contains(&core_cpu),
                "thread {} ({}) may run on the data-plane core's CPU {core_cpu}: {thread:?}",
                thread.name,
                thread.tid
            );
            assert_eq!(
                thread.cpus, spare,
                "every other thread runs on the CPUs left over: {thread:?}"
            );
        }
    }
    assert_eq!(control_pinned(&server), "1");
    assert!(
        server
            .log_text()
            .contains("control plane pinned off the data-plane cores"),
        "{}",
        server.log_text()
    );
}

#[test]
fn without_a_spare_cpu_every_thread_shares_the_data_plane_cores() {
    let allowed = allowed_cpus().expect("this test's CPU mask");
    let cpu = allowed[0].to_string();
    // `cores = "all"` under a one-CPU mask: one core, nothing left over.
    let server = Server::start_under("", &["taskset", "-c", &cpu]);
    let seen = threads(server.child.id());
    assert!(seen.iter().any(is_core), "no data-plane core: {seen:#?}");
    for thread in &seen {
        assert_eq!(thread.cpus, vec![allowed[0]], "{thread:?}");
    }
    assert_eq!(control_pinned(&server), "0");
    let log = server.log_text();
    assert!(
        log.contains("no CPU is left over for the control plane")
            && log.contains("set node.cores to fewer CPUs"),
        "{log}"
    );
}

/// Wake-ups so far of `pid`'s threads named `name`, summed.
fn wake_ups(pid: u32, name: &str) -> u64 {
    threads(pid)
        .iter()
        .filter(|thread| named(thread, name))
        .map(|thread| thread.wake_ups)
        .sum()
}

#[test]
fn an_idle_node_wakes_its_control_and_admin_threads_only_as_their_work_asks() {
    // Where no CPU is spare these threads share a core's CPU, and each of
    // their wake-ups preempts it. One node, default heartbeat (50 ms).
    let server = Server::start("");
    let pid = server.child.id();
    // Past the start's own work (campaign, takeover).
    sleep_ms(500);
    let (control, admin) = (wake_ups(pid, "palisade"), wake_ups(pid, "palisade-admin"));
    sleep_ms(2_000);
    let control = wake_ups(pid, "palisade") - control;
    let admin = wake_ups(pid, "palisade-admin") - admin;
    // A tick every 50 ms is 40 in 2 s; a loop that also woke every 10 ms
    // to look around would show about 200. A late tick only lowers it.
    assert!(
        control <= 60,
        "the idle control thread woke {control} times in 2 s"
    );
    // The acceptor sleeps until a scrape or its stop (no scrape came).
    assert!(
        admin <= 1,
        "the idle admin acceptor woke {admin} times in 2 s"
    );
}

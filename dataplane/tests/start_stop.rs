//! Issue 16: a rare data-plane start-up hang under CPU load.
//!
//! The slow tests here are ignored; `scripts/start_stop_hang.sh` runs them
//! next to CPU hogs, which is what makes the hang likely:
//!
//! - `start_and_stop_many_times` starts and stops [`Server`] many times
//!   (`PALISADE_STARTS`, default 200) and fails on the first start that
//!   does not answer within `PALISADE_HANG_S` (default 10) seconds, after
//!   printing every thread's kernel state.
//!
//! The cause was glommio 0.9 parking an executor with runnable tasks; the
//! data plane no longer runs on glommio (its cores are plain epoll loops),
//! and the test stays to show that starts and stops under load keep
//! answering.
#![cfg(feature = "server")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use palisade_dataplane::server::{core_count, Cpus, Server, StartHooks};
use palisade_host::clock::monotonic_ms;

mod common;
use common::{options, shared};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints every thread's state, kernel wait channel and system call.
fn dump_threads() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let read = |f: &str| {
            std::fs::read_to_string(path.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .unwrap_or('?');
        eprintln!(
            "  tid {} {:<16} state {} wchan {} syscall {}",
            task.file_name().to_string_lossy(),
            read("comm"),
            state,
            read("wchan"),
            read("syscall").split(' ').next().unwrap_or("")
        );
    }
}

#[test]
#[ignore = "slow: hundreds of starts; scripts/start_stop_hang.sh runs it under load (issue 16)"]
fn start_and_stop_many_times() {
    let starts = env_u64("PALISADE_STARTS", 200);
    let hang_after = Duration::from_secs(env_u64("PALISADE_HANG_S", 10));
    let cores = core_count(&Cpus::All).expect("cores");
    let mut slowest_ms = 0;
    let mut errors = 0;
    for i in 0..starts {
        let (tx, rx) = mpsc::channel();
        let began_ms = monotonic_ms();
        let worker = std::thread::spawn(move || {
            let result = Server::start(shared(cores), options());
            let _ = tx.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            drop(result);
        });
        match rx.recv_timeout(hang_after) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                eprintln!(
                    "start {i}: error after {} ms: {e}",
                    monotonic_ms() - began_ms
                );
            }
            Err(_) => {
                eprintln!(
                    "start {i}: HANG: no answer after {hang_after:?} (pid {})",
                    std::process::id()
                );
                dump_threads();
                panic!("start {i} of {starts} hung");
            }
        }
        worker.join().expect("start thread");
        slowest_ms = slowest_ms.max(monotonic_ms() - began_ms);
    }
    eprintln!("{starts} starts, 0 hangs, {errors} errors, slowest start+stop {slowest_ms} ms");
    assert_eq!(errors, 0);
}

#[test]
fn start_and_stop_are_prompt() {
    let cores = core_count(&Cpus::All).expect("cores");
    let began_ms = monotonic_ms();
    let mut server = Server::start(shared(cores), options()).expect("start");
    let started_ms = monotonic_ms();
    server.stop();
    let stopped_ms = monotonic_ms();
    assert!(
        started_ms - began_ms < 10_000,
        "start took {} ms",
        started_ms - began_ms
    );
    // The stop is a wake, not a poll: no core waits out a timer first.
    assert!(
        stopped_ms - started_ms < 2_000,
        "stop took {} ms",
        stopped_ms - started_ms
    );
}

#[test]
fn a_start_whose_core_never_listens_fails_within_its_bound() {
    let cores = core_count(&Cpus::All).expect("cores");
    let release = Arc::new(AtomicBool::new(false));
    let hooks = StartHooks {
        start_timeout: Some(Duration::from_millis(1_000)),
        stop_timeout: Some(Duration::from_millis(1_000)),
        wedge: Some((0, release.clone())),
        vanish: None,
    };
    let began_ms = monotonic_ms();
    let result = Server::start_with_hooks(shared(cores), options(), hooks);
    let took_ms = monotonic_ms() - began_ms;
    release.store(true, Ordering::SeqCst);
    let error = result.expect_err("a core never listens").to_string();
    // Start timeout plus stop timeout, and scheduling slack.
    assert!(took_ms < 4_000, "took {took_ms} ms: {error}");
    assert!(
        took_ms >= 1_000,
        "gave up early, after {took_ms} ms: {error}"
    );
    assert!(error.contains("listened within"), "{error}");
    // The wedged core ignores the shutdown flag; the others (waiting for it
    // in the mesh join) do stop.
    assert!(error.contains("1 core threads did not stop"), "{error}");
}

#[test]
fn a_core_thread_that_ends_early_fails_the_start_at_once() {
    let cores = core_count(&Cpus::All).expect("cores");
    let hooks = StartHooks {
        vanish: Some(0),
        ..StartHooks::default()
    };
    let began_ms = monotonic_ms();
    let result = Server::start_with_hooks(shared(cores), options(), hooks);
    let took_ms = monotonic_ms() - began_ms;
    let error = result.expect_err("a core thread ended").to_string();
    assert!(took_ms < 5_000, "took {took_ms} ms: {error}");
    assert!(error.contains("ended before it listened"), "{error}");
}

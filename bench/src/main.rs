//! `palisade-bench`: load generators for Palisade.
//!
//! One load engine (`compare::engine`: one epoll thread, sans-IO codecs
//! per system) runs every load. `palisade-bench load` drives a node (or
//! Redis) with closed-loop acquire+release cycles on random resources over
//! N connections, and reports throughput and latency percentiles.
//! `palisade-bench compare` is the open-loop tail-latency comparison with
//! Redis, etcd, ZooKeeper and an io_uring echo floor. It measures; it
//! never asserts a number. `palisade-bench failover` kills
//! the leader of a real three-node cluster round after round, with live
//! lease holders, and measures election, the first grant and lost leases.
#![warn(missing_docs)]
// Unsafe only in the io_uring echo loop (`compare::uring_echo`: the
// provided-buffer ring and the submission queue), allowed there alone.
#![deny(unsafe_code)]

mod compare;
mod failover;
mod load;
mod nbd;

use clap::{Parser, Subcommand};

/// Palisade load generators.
#[derive(Parser, Debug)]
#[command(name = "palisade-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Closed-loop acquire+release cycles on random resources.
    Load(load::LoadArgs),
    /// Random writes against NBD targets (the fencing proxy vs direct).
    Nbd(nbd::NbdArgs),
    /// Open-loop tail-latency comparison with Redis, etcd, ZooKeeper and
    /// the echo floor; writes RESULTS.md, results.json and plots.
    Compare(compare::CompareArgs),
    /// One open-loop run at a fixed rate against a running server.
    OpenLoop(compare::OpenLoopArgs),
    /// The io_uring echo server that is the latency floor.
    EchoServer(compare::echo::EchoServerArgs),
    /// Leader kills on a three-node cluster with live holders, per
    /// `leases.replication` mode; writes RESULTS.md and results.json.
    Failover(failover::FailoverArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::run(&args),
        Command::Nbd(args) => nbd::run(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::OpenLoop(args) => compare::open_loop(&args),
        Command::EchoServer(args) => compare::echo::serve(&args),
        Command::Failover(args) => failover::run(&args),
    }
}

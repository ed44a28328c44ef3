//! `palisade-bench`: load generators for Palisade.
//!
//! `palisade-bench load` drives a node with closed-loop acquire+release
//! cycles on random resources over N connections from one glommio
//! executor pinned to a CPU, and reports throughput and latency
//! percentiles. It measures; it never asserts a number.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod compare;
mod epoll;
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load::run(&args),
        Command::Nbd(args) => nbd::run(&args),
    }
}

//! Probes of the machine under the replicated-grant target, measured in the
//! same run as the systems: the disk's `fdatasync` latency in the directory
//! the nodes keep their logs in, and one loopback round trip between two
//! threads on the servers' CPU (where the cluster's nodes talk to each
//! other). Issue 17 bounds a replicated grant's p99 by twice their sum:
//! with `leases.replication = "quorum"` an acquire is answered after the
//! leader's log write is durable and (in a cluster) a follower's append came
//! back, so neither the echo floor nor Redis is its yardstick.
//!
//! It must never be mistaken for a system: its numbers go to the report's
//! `probes`, not to a cell.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use palisade_host::clock::monotonic_ns;
use serde::{Deserialize, Serialize};

use super::report::Percentiles;

/// What the probes measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Probes {
    /// Where the syncs went (the nodes' temporary data directories' parent).
    pub(crate) fsync_dir: String,
    /// One 4 KiB `pwrite` + `fdatasync` each, appending to a file as a log
    /// does (µs).
    pub(crate) fdatasync: Percentiles,
    /// One 64-byte request and its echo over loopback TCP, both ends pinned
    /// to the servers' CPU (µs).
    pub(crate) round_trip: Percentiles,
}

impl Probes {
    /// The replicated-grant bound: 2 × (fdatasync p99 + round-trip p99), µs.
    pub(crate) fn grant_bound_us(&self) -> f64 {
        2.0 * (self.fdatasync.p99 + self.round_trip.p99)
    }
}

/// Runs both probes: `syncs` syncs in a temporary directory made where the
/// benchmark's nodes make theirs, `trips` round trips on `cpu`.
pub(crate) fn run(syncs: usize, trips: usize, cpu: usize) -> Result<Probes> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-fsync-")
        .tempdir()
        .context("making a temporary directory for the fsync probe")?;
    let fdatasync = fsync(dir.path(), syncs)?;
    let round_trip = round_trip(trips, cpu)?;
    Ok(Probes {
        fsync_dir: dir
            .path()
            .parent()
            .map_or_else(String::new, |p| p.display().to_string()),
        fdatasync,
        round_trip,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// `count` appends of 4 KiB, each made durable with `fdatasync` before the
/// next, as the control loop persists a log entry.
fn fsync(dir: &Path, count: usize) -> Result<Percentiles> {
    let path = dir.join("probe.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let block = [0x5a_u8; 4096];
    let mut h = histogram();
    for i in 0..count {
        let start = monotonic_ns();
        file.write_all_at(&block, (i as u64) * 4096)
            .with_context(|| format!("writing {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", path.display()))?;
        h.saturating_record(monotonic_ns().saturating_sub(start).max(1));
    }
    Ok(Percentiles::of(&h))
}

/// `count` round trips of 64 bytes between this thread and an echo thread,
/// both pinned to `cpu`.
fn round_trip(count: usize, cpu: usize) -> Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the round-trip probe")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::Builder::new()
        .name("probe-echo".into())
        .spawn(move || -> std::io::Result<()> {
            // Pinning is best effort: an unpinned probe still measures a
            // round trip, only a less comparable one.
            let _ = palisade_host::affinity::pin_current_thread(&[cpu]);
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            loop {
                match stream.read_exact(&mut buf) {
                    Ok(()) => stream.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .context("starting the round-trip probe's echo thread")?;
    let measured = (|| -> Result<Percentiles> {
        let pinned = palisade_host::affinity::allowed_cpus().ok();
        let _ = palisade_host::affinity::pin_current_thread(&[cpu]);
        let mut stream = TcpStream::connect(addr).context("connecting the round-trip probe")?;
        stream.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        let mut h = histogram();
        // A few unrecorded trips first: connection set-up, cold caches.
        for i in 0..count + 100 {
            let start = monotonic_ns();
            stream.write_all(&buf)?;
            stream.read_exact(&mut buf)?;
            if i >= 100 {
                h.saturating_record(monotonic_ns().saturating_sub(start).max(1));
            }
        }
        if let Some(cpus) = pinned {
            let _ = palisade_host::affinity::pin_current_thread(&cpus);
        }
        Ok(Percentiles::of(&h))
    })();
    if measured.is_err() {
        // The echo thread may still wait in accept: let it through.
        let _ = TcpStream::connect(addr);
    }
    let ended = echo.join();
    let p = measured?;
    match ended {
        Ok(Ok(())) => Ok(p),
        Ok(Err(e)) => Err(e).context("the round-trip probe's echo thread"),
        Err(_) => anyhow::bail!("the round-trip probe's echo thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_something_positive() {
        let p = run(20, 200, 0).expect("probes run");
        assert_eq!(p.fdatasync.count, 20);
        assert_eq!(p.round_trip.count, 200);
        assert!(p.fdatasync.p50 > 0.0 && p.round_trip.p50 > 0.0, "{p:?}");
        assert!(p.grant_bound_us() >= 2.0 * p.fdatasync.p99);
    }
}

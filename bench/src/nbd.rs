//! `palisade-bench nbd`: 4 KiB random writes against NBD targets, measured
//! in one run so their ratios are fair.
//!
//! Each target gets the same load in turn, several rounds alternating
//! targets (A B C A B C ...) so that drift of the shared machine hits all of
//! them alike. Per target: `connections` blocking clients, each one write
//! in flight at a time (closed loop), random block-aligned offsets over the
//! export. Every round trip (request sent → reply read) is recorded.
//!
//! The client speaks fixed newstyle, `NBD_OPT_GO`, simple replies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use palisade_host::clock::monotonic_ns;

fn duration(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    palisade_tuning::parse_duration(text)
}

/// Arguments of `palisade-bench nbd`.
#[derive(clap::Args, Debug, Clone)]
pub struct NbdArgs {
    /// Targets as `LABEL=HOST:PORT/EXPORT` (the export name may carry
    /// `@TOKEN`). Ratios are against the first.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrent connections per target.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time per target per round.
    #[arg(long, default_value = "3s", value_parser = duration)]
    duration: Duration,
    /// Rounds (each target once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write size in bytes.
    #[arg(long, default_value_t = 4096)]
    block: u32,
    /// Bytes of the export to spread writes over (default: all of it).
    #[arg(long)]
    span: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

struct Target {
    label: String,
    addr: String,
    export: String,
}

fn parse_target(text: &str) -> Result<Target> {
    let (label, rest) = text
        .split_once('=')
        .with_context(|| format!("--target {text:?}: want LABEL=HOST:PORT/EXPORT"))?;
    let (addr, export) = rest
        .split_once('/')
        .with_context(|| format!("--target {text:?}: want LABEL=HOST:PORT/EXPORT"))?;
    Ok(Target {
        label: label.into(),
        addr: addr.into(),
        export: export.into(),
    })
}

/// One negotiated NBD connection.
struct Conn {
    stream: TcpStream,
    size: u64,
    cookie: u64,
}

fn read_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Conn {
    fn open(addr: &str, export: &str) -> Result<Conn> {
        let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        if &greeting[..8] != b"NBDMAGIC" || &greeting[8..16] != b"IHAVEOPT" {
            bail!("{addr} is not a newstyle NBD server");
        }
        stream.write_all(&1u32.to_be_bytes())?; // FIXED_NEWSTYLE
        let mut option = Vec::new();
        option.extend_from_slice(b"IHAVEOPT");
        option.extend_from_slice(&7u32.to_be_bytes()); // GO
        let len = u32::try_from(4 + export.len() + 2).context("export name")?;
        option.extend_from_slice(&len.to_be_bytes());
        option.extend_from_slice(&u32::try_from(export.len())?.to_be_bytes());
        option.extend_from_slice(export.as_bytes());
        option.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&option)?;
        let mut size = None;
        loop {
            let mut header = [0u8; 20];
            stream.read_exact(&mut header)?;
            let kind = read_u32(&header[12..]);
            let len = read_u32(&header[16..]) as usize;
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data)?;
            match kind {
                1 => break, // ACK
                3 if len >= 12 && read_u16(&data) == 0 => size = Some(read_u64(&data[2..])),
                3 => {}
                k if k & (1 << 31) != 0 => bail!(
                    "{addr}/{export} refused: {}",
                    String::from_utf8_lossy(&data)
                ),
                other => bail!("unexpected option reply {other}"),
            }
        }
        Ok(Conn {
            stream,
            size: size.context("server sent no export size")?,
            cookie: 0,
        })
    }

    /// One WRITE, waiting for its reply.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.cookie += 1;
        let mut request = Vec::with_capacity(28 + data.len());
        request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&1u16.to_be_bytes()); // WRITE
        request.extend_from_slice(&self.cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&u32::try_from(data.len())?.to_be_bytes());
        request.extend_from_slice(data);
        self.stream.write_all(&request)?;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        if read_u32(&reply) != 0x6744_6698 || read_u64(&reply[8..]) != self.cookie {
            bail!("bad reply");
        }
        let error = read_u32(&reply[4..]);
        if error != 0 {
            bail!("write failed with NBD error {error}");
        }
        Ok(())
    }

    fn close(mut self) {
        let mut request = Vec::with_capacity(28);
        request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&2u16.to_be_bytes()); // DISC
        request.extend_from_slice(&[0u8; 20]);
        let _ = self.stream.write_all(&request);
    }
}

/// Runs one target for `duration`: (histogram of ns, writes).
fn measure(target: &Target, args: &NbdArgs, seed: u64) -> Result<(Histogram<u64>, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..args.connections {
        let mut conn = Conn::open(&target.addr, &target.export)?;
        let stop = stop.clone();
        let block = u64::from(args.block);
        let span = args.span.unwrap_or(conn.size).min(conn.size);
        let blocks = (span / block).max(1);
        let data = vec![0x5au8 ^ (c as u8); args.block as usize];
        let mut x = seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        threads.push(std::thread::spawn(
            move || -> Result<(Histogram<u64>, u64)> {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut writes = 0;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let offset = (x % blocks) * block;
                    let start = monotonic_ns();
                    conn.write(offset, &data)?;
                    histogram.record((monotonic_ns() - start).max(1))?;
                    writes += 1;
                }
                conn.close();
                Ok((histogram, writes))
            },
        ));
    }
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut writes = 0;
    for thread in threads {
        let (h, n) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))??;
        total.add(&h)?;
        writes += n;
    }
    Ok((total, writes))
}

/// `palisade-bench nbd`.
pub fn run(args: &NbdArgs) -> Result<()> {
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<_>>()?;
    if args.block == 0 || args.connections == 0 || args.rounds == 0 {
        bail!("--block, --connections and --rounds must be above 0");
    }
    let mut results: Vec<(Histogram<u64>, u64)> = Vec::new();
    for _ in &targets {
        results.push((Histogram::new_with_bounds(1, 60_000_000_000, 3)?, 0));
    }
    for round in 0..args.rounds {
        for (i, target) in targets.iter().enumerate() {
            let (h, n) = measure(target, args, (round * 31 + i) as u64 + 7)
                .with_context(|| format!("target {}", target.label))?;
            results[i].0.add(&h)?;
            results[i].1 += n;
        }
    }
    let seconds = args.duration.as_secs_f64() * args.rounds as f64;
    let base_rate = results[0].1 as f64 / seconds;
    let base_p99 = results[0].0.value_at_quantile(0.99) as f64;
    let mut rows = Vec::new();
    for (target, (h, n)) in targets.iter().zip(&results) {
        let rate = *n as f64 / seconds;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        rows.push(serde_json::json!({
            "target": target.label,
            "writes": n,
            "writes_per_s": rate.round(),
            "p50_us": us(0.5),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": h.max() as f64 / 1000.0,
            "throughput_vs_first": rate / base_rate,
            "p99_vs_first": h.value_at_quantile(0.99) as f64 / base_p99,
            "p99_added_us": (h.value_at_quantile(0.99) as f64 - base_p99) / 1000.0,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "block": args.block,
                "connections": args.connections,
                "rounds": args.rounds,
                "seconds_per_target": seconds,
                "targets": rows,
            })
        );
    } else {
        println!(
            "{}-byte random writes, {} connections x 1 in flight, {} rounds x {:?} per target",
            args.block, args.connections, args.rounds, args.duration
        );
        println!(
            "{:<16} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "target", "writes/s", "p50 us", "p99 us", "p999 us", "thr ratio", "p99 ratio"
        );
        for row in &rows {
            println!(
                "{:<16} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>10.3} {:>10.3}",
                row["target"].as_str().unwrap_or(""),
                row["writes_per_s"],
                row["p50_us"].as_f64().unwrap_or(0.0),
                row["p99_us"].as_f64().unwrap_or(0.0),
                row["p999_us"].as_f64().unwrap_or(0.0),
                row["throughput_vs_first"].as_f64().unwrap_or(0.0),
                row["p99_vs_first"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

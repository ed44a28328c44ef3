//! 4 KiB random writes against NBD targets with several requests in flight
//! per connection, for `bench/scripts/proxy-overhead.sh`.
//!
//! ```text
//! cargo run --release -p palisade-fencing-proxy --example nbd_pipeline_bench -- \
//!     --connections 4 --depth 16 --seconds 3 --rounds 5 \
//!     direct=127.0.0.1:10900/up proxy-upstream=127.0.0.1:10809/upstream@7
//! ```
//!
//! Each target gets the same load in turn, rounds alternating targets
//! (A B C A B C ...) so that drift of the shared machine hits all alike.
//! Per target: `connections` client threads, each keeping `depth` writes
//! in flight on its connection (closed loop: a reply sends the next write
//! at once; replies may come in any order and are matched by cookie).
//! Every round trip (request written → reply read) is recorded. Per round
//! and target it reports writes/s and p50/p99/p99.9; at the end the min
//! and median over rounds, and each target's ratios to the first target
//! in the same round (median over rounds).
//!
//! With `--settle FILE`, FILE (the image every target writes) is fsynced
//! before each target's turn, untimed: no target then runs while the
//! kernel writes back the dirty pages the one before it left (after a
//! file-backed proxy target, tens of thousands of writes a second).
//!
//! The client speaks fixed newstyle, `NBD_OPT_GO`, simple replies. It
//! checks every reply: magic, error, and that its cookie is in flight.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_host::clock::monotonic_ns;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;

type Result<T> = std::result::Result<T, String>;

struct Args {
    connections: usize,
    depth: usize,
    seconds: f64,
    rounds: usize,
    block: u32,
    settle: Option<String>,
    targets: Vec<(String, String, String)>,
}

fn usage() -> String {
    "usage: nbd_pipeline_bench [--connections N] [--depth D] [--seconds S] [--rounds R] [--block BYTES] [--settle FILE] LABEL=HOST:PORT/EXPORT..."
        .into()
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        connections: 4,
        depth: 1,
        seconds: 3.0,
        rounds: 3,
        block: 4096,
        settle: None,
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |text: String| text.parse::<f64>().map_err(|e| format!("{text}: {e}"));
        match arg.as_str() {
            "--connections" => args.connections = number(value("--connections")?)? as usize,
            "--depth" => args.depth = number(value("--depth")?)? as usize,
            "--seconds" => args.seconds = number(value("--seconds")?)?,
            "--rounds" => args.rounds = number(value("--rounds")?)? as usize,
            "--block" => args.block = number(value("--block")?)? as u32,
            "--settle" => args.settle = Some(value("--settle")?),
            "-h" | "--help" => return Err(usage()),
            target => {
                let (label, rest) = target.split_once('=').ok_or_else(usage)?;
                let (addr, export) = rest.split_once('/').ok_or_else(usage)?;
                args.targets
                    .push((label.into(), addr.into(), export.into()));
            }
        }
    }
    if args.targets.is_empty() || args.connections == 0 || args.depth == 0 || args.rounds == 0 {
        return Err(usage());
    }
    Ok(args)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Connects and negotiates `export`; returns the stream and the export size.
fn open(addr: &str, export: &str) -> Result<(TcpStream, u64)> {
    let io = |e: std::io::Error| format!("{addr}: {e}");
    let mut stream = TcpStream::connect(addr).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).map_err(io)?;
    if &greeting[..8] != b"NBDMAGIC" || &greeting[8..16] != b"IHAVEOPT" {
        return Err(format!("{addr} is not a newstyle NBD server"));
    }
    stream.write_all(&1u32.to_be_bytes()).map_err(io)?;
    let mut option = Vec::new();
    option.extend_from_slice(b"IHAVEOPT");
    option.extend_from_slice(&7u32.to_be_bytes()); // GO
    option.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    option.extend_from_slice(&(export.len() as u32).to_be_bytes());
    option.extend_from_slice(export.as_bytes());
    option.extend_from_slice(&0u16.to_be_bytes());
    stream.write_all(&option).map_err(io)?;
    let mut size = None;
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).map_err(io)?;
        let kind = u32_at(&header, 12);
        let mut data = vec![0u8; u32_at(&header, 16) as usize];
        stream.read_exact(&mut data).map_err(io)?;
        match kind {
            1 => break,
            3 if data.len() >= 12 && data[..2] == [0, 0] => size = Some(u64_at(&data, 2)),
            k if k & (1 << 31) != 0 => {
                return Err(format!(
                    "{addr}/{export} refused: {}",
                    String::from_utf8_lossy(&data)
                ))
            }
            _ => {}
        }
    }
    Ok((stream, size.ok_or("no export size")?))
}

fn request(out: &mut Vec<u8>, command: u16, cookie: u64, offset: u64, data: &[u8]) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// One connection's closed loop: (latencies in ns, writes).
fn client(
    addr: &str,
    export: &str,
    depth: usize,
    block: u32,
    seed: u64,
    stop: &AtomicBool,
) -> Result<Vec<u64>> {
    let (mut stream, size) = open(addr, export)?;
    let blocks = (size / u64::from(block)).max(1);
    let data = vec![0x5au8 ^ seed as u8; block as usize];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next_offset = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * u64::from(block)
    };
    // Slot i's write carries cookie i; its start time is started[i].
    let mut started = vec![0u64; depth];
    let mut busy = vec![false; depth];
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut out = Vec::with_capacity(depth * (28 + block as usize));
    let now = monotonic_ns();
    for slot in 0..depth {
        request(&mut out, CMD_WRITE, slot as u64, next_offset(), &data);
        started[slot] = now;
        busy[slot] = true;
    }
    let mut in_flight = depth;
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut input = vec![0u8; 64 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    while in_flight > 0 {
        let n = stream.read(&mut input[end..]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        end += n;
        let now = monotonic_ns();
        let stopping = stop.load(Ordering::Relaxed);
        out.clear();
        while end - start >= 16 {
            let reply = &input[start..start + 16];
            start += 16;
            if u32_at(reply, 0) != SIMPLE_REPLY_MAGIC {
                return Err("bad reply magic".into());
            }
            let error = u32_at(reply, 4);
            if error != 0 {
                return Err(format!("write failed with NBD error {error}"));
            }
            let slot = usize::try_from(u64_at(reply, 8)).unwrap_or(usize::MAX);
            if slot >= depth || !busy[slot] {
                return Err(format!("reply for cookie {slot}, which is not in flight"));
            }
            latencies.push(now - started[slot]);
            if stopping {
                busy[slot] = false;
                in_flight -= 1;
            } else {
                request(&mut out, CMD_WRITE, slot as u64, next_offset(), &data);
                started[slot] = now;
            }
        }
        input.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if !out.is_empty() {
            stream.write_all(&out).map_err(|e| e.to_string())?;
        }
    }
    out.clear();
    request(&mut out, CMD_DISC, 0, 0, &[]);
    let _ = stream.write_all(&out);
    Ok(latencies)
}

struct Round {
    writes_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

fn measure(args: &Args, target: &(String, String, String), seed: u64) -> Result<Round> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..args.connections)
        .map(|c| {
            let stop = stop.clone();
            let (addr, export) = (target.1.clone(), target.2.clone());
            let (depth, block) = (args.depth, args.block);
            std::thread::spawn(move || client(&addr, &export, depth, block, seed + c as u64, &stop))
        })
        .collect();
    let begin = monotonic_ns();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().map_err(|_| "client panicked")??);
    }
    let elapsed_s = (monotonic_ns() - begin) as f64 / 1e9;
    all.sort_unstable();
    let at = |q: f64| {
        let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        all.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Ok(Round {
        writes_per_s: all.len() as f64 / elapsed_s,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
    })
}

fn min_median(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (values[0], median)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut rounds: Vec<Vec<Round>> = (0..args.targets.len()).map(|_| Vec::new()).collect();
    println!(
        "{}-byte random writes, {} connections x {} in flight, {} rounds x {} s per target",
        args.block, args.connections, args.depth, args.rounds, args.seconds
    );
    println!(
        "{:<6} {:<16} {:>10} {:>9} {:>9} {:>9}",
        "round", "target", "writes/s", "p50 us", "p99 us", "p999 us"
    );
    for round in 0..args.rounds {
        for (i, target) in args.targets.iter().enumerate() {
            let seed = (round * 31 + i) as u64 * 1000 + 7;
            if let Some(path) = &args.settle {
                if let Err(e) = std::fs::File::open(path).and_then(|f| f.sync_all()) {
                    eprintln!("--settle {path}: {e}");
                    std::process::exit(1);
                }
            }
            match measure(&args, target, seed) {
                Ok(r) => {
                    println!(
                        "{:<6} {:<16} {:>10.0} {:>9.1} {:>9.1} {:>9.1}",
                        round + 1,
                        target.0,
                        r.writes_per_s,
                        r.p50_us,
                        r.p99_us,
                        r.p999_us
                    );
                    rounds[i].push(r);
                }
                Err(e) => {
                    eprintln!("target {}: {e}", target.0);
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "summary over {} rounds (min / median); ratios to {} in the same round (median)",
        args.rounds, args.targets[0].0
    );
    println!(
        "{:<16} {:>17} {:>17} {:>17} {:>10} {:>10}",
        "target", "writes/s", "p50 us", "p99 us", "thr ratio", "p99 ratio"
    );
    for (i, target) in args.targets.iter().enumerate() {
        let pick = |f: &dyn Fn(&Round) -> f64| -> Vec<f64> { rounds[i].iter().map(f).collect() };
        let (rate_min, rate_med) = min_median(&mut pick(&|r| r.writes_per_s));
        let (p50_min, p50_med) = min_median(&mut pick(&|r| r.p50_us));
        let (p99_min, p99_med) = min_median(&mut pick(&|r| r.p99_us));
        let mut thr: Vec<f64> = rounds[i]
            .iter()
            .zip(&rounds[0])
            .map(|(r, base)| r.writes_per_s / base.writes_per_s)
            .collect();
        let mut p99: Vec<f64> = rounds[i]
            .iter()
            .zip(&rounds[0])
            .map(|(r, base)| r.p99_us / base.p99_us)
            .collect();
        println!(
            "{:<16} {:>8.0}/{:<8.0} {:>8.1}/{:<8.1} {:>8.1}/{:<8.1} {:>10.3} {:>10.3}",
            target.0,
            rate_min,
            rate_med,
            p50_min,
            p50_med,
            p99_min,
            p99_med,
            min_median(&mut thr).1,
            min_median(&mut p99).1
        );
    }
}

//! Closed-loop load: each connection sends one request, waits for its
//! answer, sends the next. A cycle is an acquire of a random resource and,
//! if granted, its release; every request counts as one operation and its
//! round trip is recorded.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use palisade_proto::{
    access_response, encode_request, ArchivedResponse, Decoded, FrameBuf, RecvBuf, Request,
};
use rustix::time::{clock_gettime, ClockId};

pub(crate) fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn duration(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    palisade_tuning::parse_duration(text)
}

/// Arguments of `palisade-bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Node to load.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub(crate) endpoint: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub(crate) warmup: Duration,
    /// Resources to pick from at random.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) resources: u64,
    /// Lease ttl.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) ttl: Duration,
    /// CPU to pin the generator to.
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// Tenant.
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Client engine: `epoll` (one thread, one read and one write per
    /// request, like redis-benchmark) or `glommio` (io_uring executor).
    #[arg(long, default_value = "epoll")]
    engine: String,
    /// What to load: `palisade`, or `redis` (SET lock:<n> v NX PX <ttl>,
    /// epoll engine only).
    #[arg(long, default_value = "palisade")]
    pub(crate) target: String,
    /// Independent cycles in flight per connection (epoll engine).
    #[arg(long, default_value_t = 1)]
    pub(crate) pipeline: usize,
}

#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) ops: u64,
    pub(crate) grants: u64,
    pub(crate) busy: u64,
}

async fn read_response<'a>(
    stream: &mut TcpStream,
    rx: &'a mut RecvBuf,
    consumed: &mut usize,
) -> Result<&'a ArchivedResponse> {
    if *consumed > 0 {
        rx.consume(*consumed);
        *consumed = 0;
    }
    loop {
        if let Decoded::Frame { frame_len, .. } = rx.next_frame(1 << 16)? {
            *consumed = frame_len;
            break;
        }
        let n = stream.read(rx.spare()).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        rx.filled(n);
    }
    let Decoded::Frame { payload, .. } = rx.next_frame(1 << 16)? else {
        unreachable!("a whole frame was found above");
    };
    Ok(access_response(payload)?)
}

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    index: usize,
    args: LoadArgs,
    start_ns: u64,
    end_ns: u64,
    histogram: Rc<RefCell<Histogram<u64>>>,
    totals: Rc<RefCell<Totals>>,
) -> Result<()> {
    let mut stream = TcpStream::connect(args.endpoint.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", args.endpoint))?;
    stream
        .set_nodelay(true)
        .map_err(|e| anyhow::anyhow!("setting TCP_NODELAY: {e}"))?;
    let mut rx = RecvBuf::new(4096, 1 << 17);
    let mut tx = FrameBuf::with_capacity(512);
    let mut consumed = 0;
    let mut id = 1u64;
    encode_request(
        &mut tx,
        id,
        0,
        1 << 14,
        &Request::Hello {
            tenant: args.tenant.clone(),
            client_nonce: [0; 16],
            client_name: "palisade-bench".into(),
        },
    )?;
    stream.write_all(&tx).await?;
    match read_response(&mut stream, &mut rx, &mut consumed).await? {
        ArchivedResponse::Welcome(_) => {}
        other => bail!("handshake failed: {other:?}"),
    }
    let ttl_ms = u32::try_from(args.ttl.as_millis())?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let holder = index as u64 + 1;
    let mut resource = String::with_capacity(32);
    let mut local = Totals::default();
    let record = |sent: u64, done: u64, local: &mut Totals| {
        if sent >= start_ns && done <= end_ns {
            local.ops += 1;
            let _ = histogram.borrow_mut().record((done - sent).max(1));
        }
    };
    loop {
        let sent = now_ns();
        if sent >= end_ns {
            break;
        }
        resource.clear();
        use std::fmt::Write;
        let _ = write!(resource, "lock:{}", rng.next() % args.resources);
        id += 1;
        tx.clear();
        encode_request(
            &mut tx,
            id,
            0,
            1 << 14,
            &Request::Acquire {
                resource: resource.clone(),
                holder,
                ttl_ms,
                lock_delay_ms: 0,
                wait_ms: 0,
            },
        )?;
        stream.write_all(&tx).await?;
        let token = match read_response(&mut stream, &mut rx, &mut consumed).await? {
            ArchivedResponse::Granted { token, .. } => Some(token.to_native()),
            ArchivedResponse::Busy { .. } => None,
            other => bail!("acquire failed: {other:?}"),
        };
        let done = now_ns();
        record(sent, done, &mut local);
        let Some(token) = token else {
            local.busy += 1;
            continue;
        };
        local.grants += 1;
        let sent = now_ns();
        id += 1;
        tx.clear();
        encode_request(
            &mut tx,
            id,
            0,
            1 << 14,
            &Request::Release {
                resource: resource.clone(),
                token,
            },
        )?;
        stream.write_all(&tx).await?;
        match read_response(&mut stream, &mut rx, &mut consumed).await? {
            ArchivedResponse::Released { .. } => {}
            other => bail!("release failed: {other:?}"),
        }
        record(sent, now_ns(), &mut local);
    }
    let mut totals = totals.borrow_mut();
    totals.ops += local.ops;
    totals.grants += local.grants;
    totals.busy += local.busy;
    Ok(())
}

/// Runs the load and prints the result.
pub fn run(args: &LoadArgs) -> Result<()> {
    let (histogram, totals) = match args.engine.as_str() {
        "epoll" => crate::epoll::run(args)?,
        "glommio" => run_glommio(args)?,
        other => bail!("unknown --engine {other:?}; use epoll or glommio"),
    };
    report(args, &histogram, &totals);
    Ok(())
}

fn run_glommio(args: &LoadArgs) -> Result<(Histogram<u64>, Totals)> {
    let placement = match args.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let args = args.clone();
    let task_args = args.clone();
    let handle = LocalExecutorBuilder::new(placement)
        .name("palisade-bench")
        .preempt_timer(Duration::from_millis(1))
        .io_memory(512 << 10)
        .spawn(move || async move {
            let args = task_args;
            let histogram = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
            ));
            let totals = Rc::new(RefCell::new(Totals::default()));
            let start_ns = now_ns() + u64::try_from(args.warmup.as_nanos()).unwrap_or(0);
            let end_ns = start_ns + u64::try_from(args.duration.as_nanos()).unwrap_or(0);
            let tasks: Vec<_> = (0..args.connections)
                .map(|i| {
                    glommio::spawn_local(connection(
                        i,
                        args.clone(),
                        start_ns,
                        end_ns,
                        histogram.clone(),
                        totals.clone(),
                    ))
                })
                .collect();
            let mut first_error = None;
            for task in tasks {
                if let Err(e) = task.await {
                    first_error.get_or_insert(e);
                }
            }
            let histogram = histogram.borrow().clone();
            let totals = std::mem::take(&mut *totals.borrow_mut());
            (histogram, totals, first_error)
        })
        .map_err(|e| anyhow::anyhow!("starting the load executor: {e}"))?;
    let (histogram, totals, error) = handle
        .join()
        .map_err(|e| anyhow::anyhow!("load executor failed: {e}"))?;
    if let Some(e) = error {
        return Err(e.context("a load connection failed"));
    }
    Ok((histogram, totals))
}

fn report(args: &LoadArgs, histogram: &Histogram<u64>, totals: &Totals) {
    let seconds = args.duration.as_secs_f64();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let ops_per_s = totals.ops as f64 / seconds;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "target": args.target,
                "connections": args.connections,
                "pipeline": args.pipeline.max(1),
                "duration_s": seconds,
                "ops": totals.ops,
                "ops_per_s": ops_per_s.round(),
                "grants": totals.grants,
                "busy": totals.busy,
                "p50_us": us(0.5),
                "p99_us": us(0.99),
                "p999_us": us(0.999),
                "max_us": histogram.max() as f64 / 1000.0,
            })
        );
    } else {
        println!(
            "{} {} connections x {} in flight, {:.0} ops/s ({} ops in {seconds:.1}s; {} grants, {} busy)",
            args.target, args.connections, args.pipeline.max(1), ops_per_s, totals.ops, totals.grants, totals.busy
        );
        println!(
            "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(0.5),
            us(0.99),
            us(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
}

//! The load engine: one thread, nonblocking sockets, epoll, and one of
//! two schedules. Every load `palisade-bench` generates goes through it.
//!
//! **Open loop** ([`Schedule::Open`], `compare` and `open-loop`):
//! arrivals are spaced `1 / rate` apart and dealt to the connections in
//! turn. An arrival starts a cycle whether or not earlier requests have
//! been answered, so a server that stalls is charged for every arrival
//! that waits behind the stall (no coordinated omission): the first
//! request of a cycle is timed from its scheduled arrival, not from when
//! the engine got round to sending it; a release that follows a grant is
//! timed from the moment the grant was read, which is when it is due.
//! The engine spins (epoll with a zero timeout) while an arrival is due
//! within 2 ms, so its own timer is not a source of jitter; it is meant to
//! run pinned to a CPU of its own.
//!
//! **Closed loop** ([`Schedule::Closed`], `load`): each connection keeps
//! a fixed number of cycles in flight and starts the next one when one
//! ends, that is when the previous answer arrives; every request is timed
//! from when it was sent. It measures the throughput a number of clients
//! get, the way redis-benchmark does (one `write` and one `read` per batch
//! of ready requests on each connection).
//!
//! Every system is driven by this same loop through a [`Codec`]; the
//! codecs never see the clock. The engine never judges a result;
//! [`RunResult`] carries everything the sweep and the reports need.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use palisade_proto::FrameBuf;
use rustix::event::epoll;

use super::codec::{Codec, Held, Op, Outcome};
use palisade_host::clock::monotonic_ns;

/// What the arrivals do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Workload {
    /// Acquire a random resource out of many, release it if granted.
    Uncontended,
    /// Acquire one of a few resources every connection wants; release it
    /// if granted. Most attempts are answered busy.
    Contended,
    /// Renew one of the leases this connection holds (keepalive).
    Renew,
    /// Fencing check of one of the leases this connection holds.
    Check,
    /// Acquire a random resource out of many and never release it (the
    /// `SET NX PX` of redis-benchmark; `load --target redis`). Not part of
    /// the comparison.
    AcquireOnly,
}

impl Workload {
    pub(crate) const ALL: [Workload; 4] = [
        Workload::Uncontended,
        Workload::Contended,
        Workload::Renew,
        Workload::Check,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Uncontended => "uncontended",
            Workload::Contended => "contended",
            Workload::Renew => "renew",
            Workload::Check => "check",
            Workload::AcquireOnly => "acquire-only",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == text)
            .with_context(|| {
                format!("unknown workload {text:?}; use uncontended, contended, renew or check")
            })
    }

    /// Whether arrivals work on leases acquired before the clock starts.
    fn holds(self) -> bool {
        matches!(self, Workload::Renew | Workload::Check)
    }

    /// Whether a granted acquire is followed by its release.
    fn releases(self) -> bool {
        matches!(self, Workload::Uncontended | Workload::Contended)
    }
}

/// A xorshift generator: cheap, seeded, good enough to spread resources.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// When cycles start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Schedule {
    /// Open loop: this many arrivals (cycles) per second over all
    /// connections, whether or not earlier ones were answered.
    Open {
        /// Arrivals per second.
        rate: f64,
    },
    /// Closed loop: each connection keeps this many independent cycles in
    /// flight; one ends, the next starts.
    Closed {
        /// Cycles in flight per connection.
        in_flight: usize,
    },
}

/// One measured run.
#[derive(Clone, Debug)]
pub(crate) struct RunSpec {
    /// Where the system listens.
    pub(crate) addr: SocketAddr,
    /// Connections, opened before the clock starts.
    pub(crate) connections: usize,
    /// When cycles start.
    pub(crate) schedule: Schedule,
    /// Time run but not recorded, before `duration`.
    pub(crate) warmup: Duration,
    /// Recorded time.
    pub(crate) duration: Duration,
    /// What arrivals do.
    pub(crate) workload: Workload,
    /// Resources the uncontended and contended workloads draw from.
    pub(crate) resources: u64,
    /// Leases each connection holds for the renew and check workloads.
    pub(crate) held_per_connection: u64,
    /// Added to every resource number so runs do not share resources.
    pub(crate) resource_base: u64,
    /// CPU to pin the engine's thread to.
    pub(crate) cpu: Option<usize>,
    /// More requests than this unanswered at once: the system cannot keep
    /// up; the run stops and says so.
    pub(crate) outstanding_max: usize,
    /// How long to wait for answers after the last arrival.
    pub(crate) drain: Duration,
    /// Seeds the resource choice.
    pub(crate) seed: u64,
}

/// What a run measured. Latencies are in nanoseconds.
pub(crate) struct RunResult {
    /// Arrivals per second offered (0 for a closed loop).
    pub(crate) offered_rate: f64,
    /// Every request whose cycle arrived in the recorded window, timed
    /// from its intended send time.
    pub(crate) requests: Histogram<u64>,
    /// Every cycle that arrived in the recorded window, from its arrival
    /// to its last answer.
    pub(crate) cycles: Histogram<u64>,
    /// Recorded window in seconds.
    pub(crate) seconds: f64,
    /// Answers by kind, recorded window only.
    pub(crate) granted: u64,
    /// Acquires answered busy.
    pub(crate) busy: u64,
    /// Releases, renewals and checks answered done.
    pub(crate) done: u64,
    /// Renewals and checks answered stale.
    pub(crate) stale: u64,
    /// Requests of the recorded window never answered before the drain
    /// ended (also recorded in `requests` with the time they waited).
    pub(crate) unanswered: u64,
    /// Largest delay between an arrival's scheduled time and the engine
    /// writing it: the generator's own lag, which is charged to the
    /// system's latency. Large values mean the generator, not the system,
    /// was saturated (compare with the echo floor at the same rate).
    pub(crate) send_lag_max_ns: u64,
    /// Why the run was cut short, if it was.
    pub(crate) overloaded: Option<String>,
    /// The recorded window in slices of [`SLICE_NS`] by intended send
    /// time: where in the run the slow requests were.
    pub(crate) timeline: Vec<Slice>,
}

/// Width of a [`Slice`] of the timeline.
pub(crate) const SLICE_NS: u64 = 1_000_000;

/// The requests of one slice of the recorded window (by intended send
/// time).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slice {
    /// Requests answered.
    pub(crate) requests: u32,
    /// Sum of their latencies.
    pub(crate) sum_ns: u64,
    /// The slowest of them.
    pub(crate) max_ns: u64,
}

impl RunResult {
    /// Requests answered per second in the recorded window.
    pub(crate) fn request_rate(&self) -> f64 {
        (self.requests.len() - self.unanswered) as f64 / self.seconds
    }
}

struct Pending {
    op: Op,
    intended_ns: u64,
    cycle_ns: u64,
}

struct Conn {
    stream: TcpStream,
    codec: Box<dyn Codec>,
    rx: FrameBuf,
    rx_len: usize,
    tx: Vec<u8>,
    tx_sent: usize,
    /// Requests in flight, indexed by `id - base_id`.
    pending: VecDeque<Option<Pending>>,
    base_id: u64,
    next_id: u64,
    outstanding: usize,
    held: Vec<(u64, Held)>,
    replies: Vec<(u64, Outcome)>,
}

const RX_CHUNK: usize = 64 << 10;

impl Conn {
    fn connect(addr: SocketAddr, codec: Box<dyn Codec>) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut rx = FrameBuf::with_capacity(RX_CHUNK * 2);
        rx.resize(RX_CHUNK * 2, 0);
        Ok(Conn {
            stream,
            codec,
            rx,
            rx_len: 0,
            tx: Vec::with_capacity(RX_CHUNK),
            tx_sent: 0,
            pending: VecDeque::with_capacity(1024),
            base_id: 1,
            next_id: 1,
            outstanding: 0,
            held: Vec::new(),
            replies: Vec::with_capacity(256),
        })
    }

    fn send(&mut self, op: Op, intended_ns: u64, cycle_ns: u64) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.codec.encode(id, &op, &mut self.tx)?;
        self.pending.push_back(Some(Pending {
            op,
            intended_ns,
            cycle_ns,
        }));
        self.outstanding += 1;
        Ok(())
    }

    fn take(&mut self, id: u64) -> Result<Pending> {
        let index = id
            .checked_sub(self.base_id)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.pending.len());
        let pending = index
            .and_then(|i| self.pending[i].take())
            .with_context(|| format!("the server answered request {id}, which is not in flight"))?;
        while matches!(self.pending.front(), Some(None)) {
            self.pending.pop_front();
            self.base_id += 1;
        }
        self.outstanding -= 1;
        Ok(pending)
    }

    /// Writes what it can; keeps the rest for the next call.
    fn flush(&mut self) -> Result<()> {
        while self.tx_sent < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_sent..]) {
                Ok(0) => bail!("the server stopped accepting data"),
                Ok(n) => self.tx_sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("writing to the server"),
            }
        }
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
        Ok(())
    }

    fn has_unsent(&self) -> bool {
        self.tx_sent < self.tx.len()
    }

    /// Reads what is there and decodes it into `self.replies`. Returns
    /// false if nothing could be read now.
    fn receive(&mut self) -> Result<bool> {
        if self.rx.len() - self.rx_len < RX_CHUNK / 2 {
            let len = self.rx.len();
            self.rx.resize(len + RX_CHUNK, 0);
        }
        let n = match self.stream.read(&mut self.rx[self.rx_len..]) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e).context("reading from the server"),
        };
        self.rx_len += n;
        let used = self
            .codec
            .decode(&self.rx[..self.rx_len], &mut self.replies, &mut self.tx)?;
        if used > self.rx_len {
            bail!("codec consumed {used} of {} bytes", self.rx_len);
        }
        // Keep the unconsumed tail at the (aligned) front of the buffer.
        self.rx.copy_within(used..self.rx_len, 0);
        self.rx_len -= used;
        Ok(true)
    }

    /// Blocking exchange used before and after the clock: runs the
    /// handshake, or sends `ops` and waits for all their answers.
    fn exchange(&mut self, ops: &[Op], timeout: Duration) -> Result<Vec<Outcome>> {
        self.stream.set_nonblocking(false)?;
        self.stream.set_read_timeout(Some(timeout))?;
        let first = self.next_id;
        for op in ops {
            self.send(*op, 0, 0)?;
        }
        let mut outcomes = vec![None; ops.len()];
        let mut answered = 0;
        loop {
            self.flush()?;
            if self.codec.ready() && answered == ops.len() {
                break;
            }
            if !self.receive().context("waiting for the server to answer")? {
                bail!("no answer from the server within {timeout:?}");
            }
            let replies = std::mem::take(&mut self.replies);
            for (id, outcome) in &replies {
                self.take(*id)?;
                // Answers to requests of the measured run are dropped.
                if let Some(slot) = id.checked_sub(first).and_then(|s| usize::try_from(s).ok()) {
                    outcomes[slot] = Some(*outcome);
                    answered += 1;
                }
            }
            self.replies = replies;
            self.replies.clear();
        }
        self.stream.set_nonblocking(true)?;
        Ok(outcomes.into_iter().flatten().collect())
    }
}

/// Connects, runs the handshake, sends `ops` and waits for their answers
/// (closed-loop; for set-up and probes, never for measurement).
pub(crate) fn exchange_once(
    addr: SocketAddr,
    codec: &dyn Fn() -> Result<Box<dyn Codec>>,
    ops: &[Op],
) -> Result<Vec<Outcome>> {
    let mut conn = Conn::connect(addr, codec()?)?;
    conn.codec.start(&mut conn.tx)?;
    conn.exchange(&[], Duration::from_secs(5))
        .context("handshake")?;
    conn.exchange(ops, Duration::from_secs(5))
}

/// Opens the connections and runs their handshakes.
fn open(spec: &RunSpec, codec: &dyn Fn() -> Result<Box<dyn Codec>>) -> Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        let mut conn = Conn::connect(spec.addr, codec()?)?;
        conn.codec.start(&mut conn.tx)?;
        conn.exchange(&[], Duration::from_secs(10))
            .context("handshake")?;
        conns.push(conn);
    }
    Ok(conns)
}

/// Takes the leases the renew and check workloads work on.
fn acquire_held(spec: &RunSpec, conns: &mut [Conn]) -> Result<()> {
    for (index, conn) in conns.iter_mut().enumerate() {
        let first = spec.resource_base + index as u64 * spec.held_per_connection;
        let ops: Vec<Op> = (0..spec.held_per_connection)
            .map(|k| Op::Acquire {
                resource: first + k,
                holder: holder_id(index, k),
            })
            .collect();
        let outcomes = conn.exchange(&ops, Duration::from_secs(10))?;
        for (k, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Outcome::Granted(held) => conn.held.push((first + k as u64, held)),
                other => bail!(
                    "setting up held leases: resource {} answered {other:?}",
                    first + k as u64
                ),
            }
        }
    }
    Ok(())
}

/// Releases the held leases, so the next run starts clean.
fn release_held(conns: &mut [Conn]) -> Result<()> {
    for conn in conns {
        let ops: Vec<Op> = conn
            .held
            .iter()
            .map(|&(resource, held)| Op::Release { resource, held })
            .collect();
        conn.exchange(&ops, Duration::from_secs(10))?;
        conn.held.clear();
    }
    Ok(())
}

fn holder_id(connection: usize, n: u64) -> u64 {
    ((connection as u64 + 1) << 40) | (n & ((1 << 40) - 1))
}

/// When arrival number `n` is due: never (`u64::MAX`) for a closed loop,
/// whose interval is infinite.
fn arrival_ns(start_ns: u64, n: u64, interval_ns: f64) -> u64 {
    if !interval_ns.is_finite() {
        // Not `0 × ∞`, which is NaN and casts to 0: due at once.
        return u64::MAX;
    }
    start_ns.saturating_add((n as f64 * interval_ns) as u64)
}

/// Latencies up to an hour, 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

/// Records `ns`, clamped into the histogram's range (a wait longer than an
/// hour is recorded as an hour rather than failing the run).
fn record(h: &mut Histogram<u64>, ns: u64) {
    let ns = ns.clamp(1, h.high());
    h.saturating_record(ns);
}

/// The request that starts a cycle on connection `index`.
fn first_op(spec: &RunSpec, conn: &Conn, index: usize, rng: &mut Rng, holder_seq: &mut u64) -> Op {
    match spec.workload {
        Workload::Uncontended | Workload::Contended | Workload::AcquireOnly => {
            *holder_seq += 1;
            Op::Acquire {
                resource: spec.resource_base + rng.next() % spec.resources,
                holder: holder_id(index, *holder_seq),
            }
        }
        Workload::Renew | Workload::Check => {
            let (resource, held) = conn.held[(rng.next() % conn.held.len() as u64) as usize];
            if spec.workload == Workload::Renew {
                Op::Renew { resource, held }
            } else {
                Op::Check { resource, held }
            }
        }
    }
}

/// Runs one measurement.
pub(crate) fn run(spec: &RunSpec, codec: &dyn Fn() -> Result<Box<dyn Codec>>) -> Result<RunResult> {
    // Open loop: nanoseconds between arrivals. Closed loop: cycles per
    // connection, and no arrivals.
    let (interval_ns, in_flight) = match spec.schedule {
        Schedule::Open { rate } if rate.is_finite() && rate > 0.0 => (1e9 / rate, 0),
        Schedule::Open { rate } => bail!("rate must be positive, got {rate}"),
        Schedule::Closed { in_flight: 0 } => bail!("at least one cycle in flight is needed"),
        Schedule::Closed { in_flight } => (f64::INFINITY, in_flight),
    };
    if spec.connections == 0 {
        bail!("at least one connection is needed");
    }
    if spec.resources == 0 && !spec.workload.holds() {
        bail!("at least one resource is needed");
    }
    if let Some(cpu) = spec.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).context("pinning the engine")?;
    }
    let mut conns = open(spec, codec)?;
    if spec.workload.holds() {
        acquire_held(spec, &mut conns)?;
    }
    let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (index, conn) in conns.iter().enumerate() {
        epoll::add(
            &epoll_fd,
            conn.stream.as_fd(),
            epoll::EventData::new_u64(index as u64),
            epoll::EventFlags::IN,
        )?;
    }
    let mut rng = Rng(spec.seed | 1);
    let start_ns = monotonic_ns() + 1_000_000;
    let record_from = start_ns + u64::try_from(spec.warmup.as_nanos())?;
    let end_ns = record_from + u64::try_from(spec.duration.as_nanos())?;
    let drain_until = end_ns + u64::try_from(spec.drain.as_nanos())?;
    let mut result = RunResult {
        offered_rate: match spec.schedule {
            Schedule::Open { rate } => rate,
            Schedule::Closed { .. } => 0.0,
        },
        requests: histogram()?,
        cycles: histogram()?,
        seconds: spec.duration.as_secs_f64(),
        granted: 0,
        busy: 0,
        done: 0,
        stale: 0,
        unanswered: 0,
        send_lag_max_ns: 0,
        overloaded: None,
        timeline: vec![
            Slice::default();
            usize::try_from(spec.duration.as_nanos().div_ceil(u128::from(SLICE_NS)))?
        ],
    };
    let mut arrivals: u64 = 0;
    let mut next_conn = 0;
    let mut outstanding = 0usize;
    // The server answered a request with back-pressure (`Outcome::Overloaded`).
    let mut refused = false;
    let mut events = Vec::with_capacity(spec.connections.max(16));
    let mut holder_seq = 0u64;
    // A closed loop starts its cycles at once (the warm-up is not
    // recorded) and then one for each that ends.
    let first_ns = monotonic_ns();
    for (index, conn) in conns.iter_mut().enumerate() {
        for _ in 0..in_flight {
            let op = first_op(spec, conn, index, &mut rng, &mut holder_seq);
            conn.send(op, first_ns, first_ns)?;
            outstanding += 1;
        }
    }
    loop {
        let now = monotonic_ns();
        // Start every arrival that is due (open loop only).
        let mut due = arrival_ns(start_ns, arrivals, interval_ns);
        while due <= now && due < end_ns {
            let op = first_op(
                spec,
                &conns[next_conn],
                next_conn,
                &mut rng,
                &mut holder_seq,
            );
            conns[next_conn].send(op, due, due)?;
            outstanding += 1;
            result.send_lag_max_ns = result.send_lag_max_ns.max(now - due);
            next_conn = (next_conn + 1) % conns.len();
            arrivals += 1;
            due = arrival_ns(start_ns, arrivals, interval_ns);
        }
        let mut unsent = false;
        for conn in &mut conns {
            conn.flush()?;
            unsent |= conn.has_unsent();
        }
        if outstanding > spec.outstanding_max || refused {
            result.overloaded = Some(if refused {
                "the server pushed back: too many requests pending on a connection".to_string()
            } else {
                format!(
                    "more than {} requests unanswered at once",
                    spec.outstanding_max
                )
            });
            // Rates are per recorded second actually run.
            result.seconds = (now.saturating_sub(record_from) as f64 / 1e9).max(1e-3);
            break;
        }
        if now >= end_ns && (outstanding == 0 || now >= drain_until) {
            break;
        }
        // Wait for answers: spin if an arrival is due soon.
        let wait_ns = if unsent || due < end_ns && due <= now + 2_000_000 {
            0
        } else if due < end_ns {
            due - now - 1_000_000
        } else {
            1_000_000
        };
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(wait_ns.min(999_999_999))?,
        };
        events.clear();
        epoll::wait(
            &epoll_fd,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        )?;
        if events.is_empty() {
            continue;
        }
        for event in &events {
            let index = usize::try_from(event.data.u64())?;
            let conn = &mut conns[index];
            if !conn
                .receive()
                .with_context(|| format!("connection {index}"))?
            {
                continue;
            }
            // Stamped per read: bytes that arrived while earlier
            // connections were being handled are not timed early.
            let read_ns = monotonic_ns();
            let replies = std::mem::take(&mut conn.replies);
            for &(id, outcome) in &replies {
                let pending = conn.take(id)?;
                outstanding -= 1;
                let recorded = pending.cycle_ns >= record_from && pending.cycle_ns < end_ns;
                let mut cycle_over = true;
                match (pending.op, outcome) {
                    (Op::Acquire { resource, .. }, Outcome::Granted(held)) => {
                        result.granted += u64::from(recorded);
                        if spec.workload.releases() {
                            conn.send(Op::Release { resource, held }, read_ns, pending.cycle_ns)?;
                            outstanding += 1;
                            cycle_over = false;
                        }
                    }
                    (Op::Acquire { .. }, Outcome::Busy) => result.busy += u64::from(recorded),
                    (Op::Release { .. } | Op::Renew { .. } | Op::Check { .. }, Outcome::Done) => {
                        result.done += u64::from(recorded);
                    }
                    (Op::Release { .. } | Op::Renew { .. } | Op::Check { .. }, Outcome::Stale) => {
                        result.stale += u64::from(recorded);
                    }
                    (_, Outcome::Overloaded) => {
                        // Cut short below, as at the generator's own cap.
                        refused = true;
                        continue;
                    }
                    (op, outcome) => bail!("{op:?} was answered {outcome:?}"),
                }
                if recorded {
                    let latency = read_ns.saturating_sub(pending.intended_ns);
                    record(&mut result.requests, latency);
                    // A release sent after the window's end counts in its
                    // last slice.
                    let at = (pending.intended_ns.saturating_sub(record_from) / SLICE_NS) as usize;
                    let last = result.timeline.len().saturating_sub(1);
                    if let Some(slice) = result.timeline.get_mut(at.min(last)) {
                        slice.requests += 1;
                        slice.sum_ns += latency;
                        slice.max_ns = slice.max_ns.max(latency);
                    }
                    if cycle_over {
                        record(&mut result.cycles, read_ns.saturating_sub(pending.cycle_ns));
                    }
                }
                if cycle_over && in_flight > 0 && read_ns < end_ns {
                    let op = first_op(spec, conn, index, &mut rng, &mut holder_seq);
                    conn.send(op, read_ns, read_ns)?;
                    outstanding += 1;
                }
            }
            conn.replies = replies;
            conn.replies.clear();
            conn.flush()?;
        }
    }
    // Whatever is still in flight was never answered: record it with the
    // time it has waited so far, which is a lower bound.
    let last = monotonic_ns();
    for conn in &conns {
        for pending in conn.pending.iter().flatten() {
            if pending.cycle_ns >= record_from && pending.cycle_ns < end_ns {
                result.unanswered += 1;
                record(
                    &mut result.requests,
                    last.saturating_sub(pending.intended_ns),
                );
            }
        }
    }
    if (result.overloaded.is_some() || result.unanswered > 0) && spec.workload.releases() {
        // Best effort: the run's result stands whatever happens here (a
        // server that pushed back may also have closed the connection).
        let deadline = monotonic_ns() + u64::try_from(spec.drain.as_nanos())?;
        let unsettled = match settle(&epoll_fd, &mut conns, deadline) {
            Ok(0) => None,
            Ok(owed) => Some(format!(
                "{owed} requests still unanswered after the run and its drain"
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = unsettled {
            eprintln!(
                "compare: could not release every lease of a run cut short ({why}); they stay \
                 held for their ttl, and a later run on the same resources finds them busy"
            );
        }
    }
    if result.overloaded.is_none() && result.unanswered == 0 && spec.workload.holds() {
        release_held(&mut conns)?;
    }
    Ok(result)
}

/// After a run that was cut short or left requests unanswered: awaits the
/// answers still owed (unrecorded) until `deadline_ns`, and releases every
/// lease they grant. Acquire+release runs reuse one key space, and a lease
/// outlives its run by its ttl (60 s): left held, it would answer the next
/// runs' acquires busy, which cost the server less and send no release, so
/// a sweep step after a failed one would measure a lighter load than it
/// offered. Returns how many requests are still owed at the deadline.
fn settle(epoll_fd: &OwnedFd, conns: &mut [Conn], deadline_ns: u64) -> Result<usize> {
    let mut events = Vec::with_capacity(conns.len().max(16));
    loop {
        let mut owed = 0;
        let mut unsent = false;
        for conn in conns.iter_mut() {
            conn.flush()?;
            owed += conn.outstanding;
            unsent |= conn.has_unsent();
        }
        let now = monotonic_ns();
        if owed == 0 || now >= deadline_ns {
            return Ok(owed);
        }
        // Requests not yet written are retried each millisecond (the
        // connections wait for input only).
        let wait_ns = (deadline_ns - now).min(if unsent { 1_000_000 } else { 10_000_000 });
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(wait_ns)?,
        };
        events.clear();
        epoll::wait(
            epoll_fd,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        )?;
        for event in &events {
            let conn = &mut conns[usize::try_from(event.data.u64())?];
            if !conn.receive()? {
                continue;
            }
            let replies = std::mem::take(&mut conn.replies);
            for &(id, outcome) in &replies {
                let pending = conn.take(id)?;
                if let (Op::Acquire { resource, .. }, Outcome::Granted(held)) =
                    (pending.op, outcome)
                {
                    conn.send(Op::Release { resource, held }, 0, 0)?;
                }
            }
            conn.replies = replies;
            conn.replies.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::compare::codec::CodecConfig;
    use crate::compare::echo::EchoCodec;

    const SIZE: usize = 16;

    /// What the echo server below saw.
    #[derive(Default)]
    struct Seen {
        /// Most whole messages one read brought (the server answers all
        /// of them before it reads again: the client's requests in flight).
        burst_max: AtomicUsize,
        /// Messages per kind byte (1 acquire, 2 release).
        kinds: [AtomicUsize; 5],
    }

    /// A thread-per-connection echo server on loopback.
    fn echo_server(seen: Arc<Seen>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        let whole = pending.len() / SIZE * SIZE;
                        seen.burst_max.fetch_max(whole / SIZE, Ordering::Relaxed);
                        for message in pending[..whole].chunks(SIZE) {
                            seen.kinds[usize::from(message[8]).min(4)]
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        if stream.write_all(&pending[..whole]).is_err() {
                            return;
                        }
                        pending.drain(..whole);
                    }
                });
            }
        });
        addr
    }

    /// Two connections to `addr` over 100 resources, 300 ms recorded.
    fn spec(addr: SocketAddr, workload: Workload, schedule: Schedule) -> RunSpec {
        RunSpec {
            addr,
            connections: 2,
            schedule,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            workload,
            resources: 100,
            held_per_connection: 0,
            resource_base: 0,
            cpu: None,
            outstanding_max: usize::MAX,
            drain: Duration::from_secs(5),
            seed: 7,
        }
    }

    /// Runs `spec` with the echo protocol.
    fn run_echo(spec: &RunSpec) -> RunResult {
        let config = CodecConfig {
            ttl_ms: 1000,
            tenant: String::new(),
            echo_size: SIZE,
            secret: None,
        };
        run(spec, &|| Ok(Box::new(EchoCodec::new(&config)?))).unwrap()
    }

    fn closed(addr: SocketAddr, workload: Workload, in_flight: usize) -> RunResult {
        run_echo(&spec(addr, workload, Schedule::Closed { in_flight }))
    }

    #[test]
    fn a_closed_loop_keeps_its_cycles_in_flight_and_no_more() {
        let seen = Arc::new(Seen::default());
        let addr = echo_server(seen.clone());
        let result = closed(addr, Workload::Uncontended, 3);
        assert!(result.granted > 0, "cycles ran");
        assert_eq!(result.unanswered, 0);
        assert_eq!(result.offered_rate, 0.0);
        assert_eq!(result.overloaded, None);
        // Every grant is released (the echo grants every acquire), and a
        // connection never has more than its three requests unanswered.
        assert!(seen.kinds[2].load(Ordering::Relaxed) > 0);
        assert_eq!(
            seen.kinds[1].load(Ordering::Relaxed),
            seen.kinds[2].load(Ordering::Relaxed)
        );
        let burst = seen.burst_max.load(Ordering::Relaxed);
        assert!((1..=3).contains(&burst), "burst {burst}");
        // The timeline covers the recorded window and holds every
        // recorded request once, with the histogram's slowest.
        assert_eq!(result.timeline.len(), 300);
        let counted: u64 = result.timeline.iter().map(|s| u64::from(s.requests)).sum();
        assert_eq!(counted, result.requests.len());
        let slowest = result.timeline.iter().map(|s| s.max_ns).max().unwrap();
        assert!(result.requests.equivalent(slowest, result.requests.max()));
    }

    #[test]
    fn a_run_cut_short_releases_every_lease_it_was_granted() {
        let seen = Arc::new(Seen::default());
        let addr = echo_server(seen.clone());
        // More than none unanswered at once cuts the run short at its
        // first arrivals, with their acquires in flight.
        let mut spec = spec(
            addr,
            Workload::Uncontended,
            Schedule::Open { rate: 100_000.0 },
        );
        spec.outstanding_max = 0;
        let result = run_echo(&spec);
        assert!(result.overloaded.is_some(), "the run was cut short");
        // The echo grants every acquire; each was released before the run
        // returned.
        let acquires = seen.kinds[1].load(Ordering::Relaxed);
        assert!(acquires > 0);
        assert_eq!(seen.kinds[2].load(Ordering::Relaxed), acquires);
    }

    #[test]
    fn acquire_only_cycles_never_release() {
        let seen = Arc::new(Seen::default());
        let addr = echo_server(seen.clone());
        let result = closed(addr, Workload::AcquireOnly, 1);
        assert!(result.granted > 0);
        assert_eq!(result.done, 0);
        assert!(seen.kinds[1].load(Ordering::Relaxed) > 0);
        assert_eq!(seen.kinds[2].load(Ordering::Relaxed), 0);
        assert_eq!(seen.burst_max.load(Ordering::Relaxed), 1);
        // Requests answered = cycles: one request each.
        assert_eq!(result.requests.len(), result.cycles.len());
    }
}

//! The floor: a minimal io_uring echo server and its codec.
//!
//! The server (`palisade-bench echo-server`) runs on the same runtime as
//! Palisade's data plane (a glommio executor pinned to one CPU, io_uring
//! reads and writes) and sends back every byte it receives. No
//! request/response service on this loopback can answer faster, so its
//! latency at a given rate is the floor the others are compared against.
//!
//! `--runtime` picks the event loop under the same echo: `glommio` (the
//! floor, the default), `uring` (a ring of our own, [`super::uring_echo`])
//! or `epoll` (a Redis-style loop, [`super::epoll_echo`]). The last two are
//! candidates for the data plane's client sockets (issue 17), measured
//! beside glommio as the systems `echo-uring` and `echo-epoll`.
//!
//! Each request is `size` bytes: the request id (u64, little-endian), the
//! operation kind, zero padding. The reply is the same bytes. An acquire is
//! always "granted" (the echo does no lock work): the echo cycle has the
//! same shape and message count as a lock service's.
//!
//! For the harness's own test the server can also delay every message by a
//! fixed time, or stall once, answering each connection's messages in
//! order (`--delay-us`, `--stall-after`, `--stall-ms`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use super::codec::{Codec, CodecConfig, Held, Op, Outcome};

/// Smallest request: the id and the kind.
pub(crate) const ECHO_SIZE_MIN: usize = 9;

/// Client side of the echo protocol.
pub(crate) struct EchoCodec {
    size: usize,
}

impl EchoCodec {
    pub(crate) fn new(config: &CodecConfig) -> Result<EchoCodec> {
        if config.echo_size < ECHO_SIZE_MIN {
            bail!(
                "echo message size {} is below the minimum {ECHO_SIZE_MIN}",
                config.echo_size
            );
        }
        Ok(EchoCodec {
            size: config.echo_size,
        })
    }
}

fn kind_byte(op: &Op) -> u8 {
    match op {
        Op::Acquire { .. } => 1,
        Op::Release { .. } => 2,
        Op::Renew { .. } => 3,
        Op::Check { .. } => 4,
    }
}

impl Codec for EchoCodec {
    fn start(&mut self, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn ready(&self) -> bool {
        true
    }

    fn encode(&mut self, id: u64, op: &Op, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(kind_byte(op));
        out.resize(out.len() + self.size - ECHO_SIZE_MIN, 0);
        Ok(())
    }

    fn decode(
        &mut self,
        input: &[u8],
        replies: &mut Vec<(u64, Outcome)>,
        _out: &mut Vec<u8>,
    ) -> Result<usize> {
        let mut at = 0;
        while input.len() - at >= self.size {
            let message = &input[at..at + self.size];
            let id = u64::from_le_bytes(message[..8].try_into()?);
            let outcome = match message[8] {
                1 => Outcome::Granted(Held { token: id, aux: 0 }),
                2..=4 => Outcome::Done,
                other => bail!("echo server sent back kind {other}, which was never sent"),
            };
            replies.push((id, outcome));
            at += self.size;
        }
        Ok(at)
    }
}

/// The event loop under `echo-server`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoRuntime {
    /// A glommio 0.9 executor, the data plane's runtime today.
    Glommio,
    /// One thread and one ring of our own (`io-uring` crate): multishot
    /// accept and receive, provided buffers, one `io_uring_enter` a turn.
    Uring,
    /// A plain non-blocking epoll loop with read and write, like Redis's.
    Epoll,
}

/// What a plain echo loop (`uring`, `epoll`) counts, for tests.
#[derive(Debug, Default)]
pub(crate) struct EchoStats {
    /// Connections accepted and not yet closed.
    pub(crate) connections_open: AtomicUsize,
}

/// Arguments of `palisade-bench echo-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoServerArgs {
    /// The event loop: glommio (the echo floor), uring (our own ring) or
    /// epoll (a Redis-style loop). `uring` and `epoll` are plain echoes:
    /// they take none of the `--delay-us` / `--stall-*` modes.
    #[arg(long, value_enum, default_value_t = EchoRuntime::Glommio)]
    runtime: EchoRuntime,
    /// With `--runtime uring`: each enter waits for one completion past
    /// the sends it submits (one enter per lone request, not two).
    #[arg(long)]
    uring_wait_past_sends: bool,
    /// Address to listen on (port 0: any free port; the bound address is
    /// printed as `listening <addr>` on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// CPU to pin the server to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Message size, for `--delay-us` and `--stall-*` (which answer whole
    /// messages); a plain echo ignores message boundaries.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Answer every message this many microseconds after reading it, in
    /// order per connection (the harness test's known delay).
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Stall once, before answering this message of each connection
    /// (1-based; 0 = never).
    #[arg(long, default_value_t = 0)]
    stall_after: u64,
    /// How long the stall lasts, in milliseconds.
    #[arg(long, default_value_t = 0)]
    stall_ms: u64,
}

/// Runs the echo server until killed.
pub fn serve(args: &EchoServerArgs) -> Result<()> {
    if args.size < ECHO_SIZE_MIN {
        bail!("--size must be at least {ECHO_SIZE_MIN}");
    }
    if args.runtime != EchoRuntime::Glommio {
        return serve_plain(args);
    }
    let placement = match args.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let args = args.clone();
    let handle = LocalExecutorBuilder::new(placement)
        .name("palisade-echo")
        .preempt_timer(Duration::from_millis(100))
        .io_memory(512 << 10)
        .spawn(move || async move {
            let listener = TcpListener::bind(args.listen)
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
            let local = listener
                .local_addr()
                .map_err(|e| anyhow::anyhow!("reading the bound address: {e}"))?;
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "listening {local}");
            let _ = stdout.flush();
            accept_loop(listener, args).await
        })
        .map_err(|e| anyhow::anyhow!("starting the echo executor: {e}"))?;
    handle
        .join()
        .map_err(|e| anyhow::anyhow!("echo executor failed: {e:?}"))?
}

/// `--runtime uring` or `epoll`: one thread (this one), pinned to
/// `--cpu`, runs the loop. Prints `about <text>` (what the loop set up,
/// for the report) before `listening <addr>`.
fn serve_plain(args: &EchoServerArgs) -> Result<()> {
    if args.delay_us != 0 || args.stall_after != 0 {
        bail!("--delay-us and --stall-* need --runtime glommio");
    }
    if args.uring_wait_past_sends && args.runtime != EchoRuntime::Uring {
        bail!("--uring-wait-past-sends needs --runtime uring");
    }
    if let Some(cpu) = args.cpu {
        palisade_host::affinity::pin_current_thread(&[cpu])
            .map_err(|e| anyhow::anyhow!("pinning the echo loop to CPU {cpu}: {e}"))?;
    }
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let stats = EchoStats::default();
    let announce = |about: &str| {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "about {about}");
        let _ = writeln!(stdout, "listening {local}");
        let _ = stdout.flush();
        eprintln!("echo-server: {about}");
    };
    match args.runtime {
        EchoRuntime::Uring => {
            super::uring_echo::run(listener, &stats, args.uring_wait_past_sends, announce)
        }
        EchoRuntime::Epoll => super::epoll_echo::run(listener, &stats, announce),
        EchoRuntime::Glommio => unreachable!("glommio is served above"),
    }
}

async fn accept_loop(listener: TcpListener, args: EchoServerArgs) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let args = args.clone();
                glommio::spawn_local(async move {
                    let _ = connection(stream, &args).await;
                })
                .detach();
            }
            Err(e) => {
                eprintln!("echo-server: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, args: &EchoServerArgs) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 << 10];
    if args.delay_us == 0 && args.stall_after == 0 {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n]).await?;
        }
    }
    // Message-at-a-time mode: read whole messages, answer each after the
    // configured delay, in order.
    let delay = Duration::from_micros(args.delay_us);
    let mut filled = 0;
    let mut answered = 0u64;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let whole = filled / args.size * args.size;
        for message in buf[..whole].chunks(args.size) {
            answered += 1;
            if answered == args.stall_after {
                glommio::timer::sleep(Duration::from_millis(args.stall_ms)).await;
            }
            if !delay.is_zero() {
                glommio::timer::sleep(delay).await;
            }
            stream.write_all(message).await?;
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(size: usize) -> EchoCodec {
        EchoCodec::new(&CodecConfig {
            ttl_ms: 1000,
            tenant: "default".into(),
            echo_size: size,
            secret: None,
        })
        .unwrap()
    }

    #[test]
    fn replies_are_parsed_however_the_bytes_arrive() {
        let mut c = codec(24);
        let mut wire = Vec::new();
        c.encode(
            7,
            &Op::Acquire {
                resource: 1,
                holder: 9,
            },
            &mut wire,
        )
        .unwrap();
        let held = Held { token: 7, aux: 0 };
        c.encode(8, &Op::Release { resource: 1, held }, &mut wire)
            .unwrap();
        assert_eq!(wire.len(), 48);
        for split in 0..=wire.len() {
            let mut replies = Vec::new();
            let mut out = Vec::new();
            let used = c.decode(&wire[..split], &mut replies, &mut out).unwrap();
            assert_eq!(used, split / 24 * 24);
            let rest = c.decode(&wire[used..], &mut replies, &mut out).unwrap();
            assert_eq!(used + rest, 48);
            assert_eq!(
                replies,
                vec![(7, Outcome::Granted(held)), (8, Outcome::Done)]
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_kind_that_was_never_sent_is_an_error() {
        let mut c = codec(16);
        let mut wire = vec![0u8; 16];
        wire[8] = 9;
        let err = c
            .decode(&wire, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("kind 9"), "{err}");
        assert!(EchoCodec::new(&CodecConfig {
            ttl_ms: 1,
            tenant: String::new(),
            echo_size: 8,
            secret: None,
        })
        .is_err());
    }
}

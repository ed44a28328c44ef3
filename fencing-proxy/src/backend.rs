//! Where an export's bytes live: a local file or block device, or an
//! upstream NBD server the proxy forwards to, by TCP address or by the
//! Unix-domain socket of a server on the same host ([`NbdAddr`]). Both
//! transports share everything past the connect: the handshake, the
//! multiplexer, and how a lost connection fails calls; only TCP gets
//! `TCP_NODELAY`. The Unix socket spares the proxy TCP's loopback
//! protocol work, not its sends, receives and wake-ups: 1.8 to 3.3 µs of
//! its 17 to 18 µs of CPU per 4 KiB write, and 1.04x to 1.22x the TCP
//! upstream's writes/s at 4 in flight (bench/results/proxy-unix/).
//!
//! Backends only move bytes. They never decide whether a write may happen:
//! the gate did that before the call.
//!
//! Every method takes `&self`: a connection's request tasks call one
//! backend concurrently. A file backend hands each call to a thread of a
//! bounded pool of its own ([`file_io_pool`]: positional reads and writes
//! on the export's one file descriptor); an upstream backend multiplexes
//! them on its one connection (many requests sent, replies matched by
//! cookie, in whatever order the server sends them). A call returns once the backend
//! has the bytes: the file's write completed, or the upstream server
//! answered.
//!
//! Each client connection has an upstream connection of its own. Links
//! shared by an export's client connections were measured and not kept
//! (bench/results/proxy-upstream/): about 5 % more writes/s at 4 in flight
//! and 5 % fewer at 16 (qemu-nbd spent more CPU per write behind one link,
//! likely because its server takes a bounded number of requests, 16, of
//! one connection at a time), for reconnect and per-link flush rules that
//! a link of one's own does not need.
//!
//! Why the file's I/O runs on threads, even a 4 KiB write that the page
//! cache takes in microseconds: a file operation can block for as long as
//! the disk likes (a hung device, writeback throttling under many dirty
//! pages), and on the event-loop thread that would freeze every
//! connection, the heartbeat and with it the watchdog. Chosen by
//! measurement (bench/results/proxy-tokio/, 4 KiB random writes, 4
//! connections): with every call on the pool, the file export does 1.2x,
//! 2.1x and 2.5x the writes/s of direct qemu-nbd at 1, 4 and 16 in flight
//! (p99 below direct's), so the pool stays. What it costs: at 16 in
//! flight the glommio build, whose small reads and writes went to
//! io_uring on the loop's thread, did 1.24x the writes/s of this one
//! (1.4x to 1.5x with four pool threads, at about 3 us less CPU per
//! write). Inline writes would
//! block the loop under dirty-page throttling, and `RWF_NOWAIT` buffered
//! writes (which would say `EAGAIN` instead) fail with `EOPNOTSUPP` on
//! ext4 (kernel 6.18). `RWF_NOWAIT` reads work and would serve cached
//! reads inline, but the benchmark has no reads to measure them by; an
//! io_uring ring of the proxy's own, its eventfd in the loop, is what
//! would win the gap back. Neither is done.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

use crate::config::NbdAddr;
use crate::duplex::{split, ReadHalf, Signal, Stream, WriteHalf};
use crate::pool::{BufPool, LARGE};

/// Largest zero-fill buffer written at once for WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

/// An open backend for one connection.
#[derive(Debug)]
pub enum Backend {
    /// A local file or block device.
    File(FileBackend),
    /// An upstream NBD server.
    Nbd(NbdUpstream),
}

impl Backend {
    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        match self {
            Backend::File(f) => f.size,
            Backend::Nbd(n) => n.size,
        }
    }

    /// Whether TRIM / WRITE_ZEROES are supported.
    #[must_use]
    pub fn can_trim(&self) -> bool {
        match self {
            Backend::File(_) => true,
            Backend::Nbd(n) => n.flags & NBD_FLAG_SEND_TRIM != 0,
        }
    }

    /// Reads `len` bytes at `offset` (inside the size: the caller checked).
    pub async fn read(&self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self {
            Backend::File(f) => f.read(offset, len).await,
            Backend::Nbd(n) => n.call(NBD_CMD_READ, 0, offset, len, Vec::new()).await,
        }
    }

    /// Writes `data` at `offset`; with `fua`, durably before returning.
    pub async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write(offset, data, fua).await,
            Backend::Nbd(n) => {
                let len =
                    u32::try_from(data.len()).map_err(|_| upstream_err("request too large"))?;
                n.call(NBD_CMD_WRITE, fua_flag(fua), offset, len, data)
                    .await
                    .map(drop)
            }
        }
    }

    /// Makes every acknowledged write durable.
    pub async fn flush(&self) -> io::Result<()> {
        match self {
            Backend::File(f) => f.flush().await,
            Backend::Nbd(n) => n.call(NBD_CMD_FLUSH, 0, 0, 0, Vec::new()).await.map(drop),
        }
    }

    /// Discards a range (reads of it may return anything, here zeroes).
    pub async fn trim(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.zero(offset, len, true, fua).await,
            Backend::Nbd(n) => n
                .call(NBD_CMD_TRIM, fua_flag(fua), offset, len, Vec::new())
                .await
                .map(drop),
        }
    }

    /// Writes zeroes to a range; `no_hole` keeps it allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> io::Result<()> {
        match self {
            Backend::File(f) => f.zero(offset, len, !no_hole, fua).await,
            Backend::Nbd(n) => {
                let mut flags = fua_flag(fua);
                if no_hole {
                    flags |= NBD_CMD_FLAG_NO_HOLE;
                }
                n.call(NBD_CMD_WRITE_ZEROES, flags, offset, len, Vec::new())
                    .await
                    .map(drop)
            }
        }
    }

    /// Closes the backend once no call is running (an upstream server is
    /// told goodbye).
    pub async fn close(self) {
        if let Backend::Nbd(upstream) = self {
            upstream.disconnect().await;
        }
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua {
        NBD_CMD_FLAG_FUA
    } else {
        0
    }
}

/// The threads every file backend's calls run on: the blocking pool of a
/// runtime of their own, at most `threads` at once (more calls queue),
/// idle ones ending after `keep_alive`. The runtime itself is never
/// driven; only its pool is used. Apart from the event loop's blocking
/// pool, so a hung disk holds these threads and never the ones that
/// lease checks and fence raises need.
///
/// # Errors
///
/// The runtime could not be built.
pub fn file_io_pool(
    threads: usize,
    keep_alive: std::time::Duration,
) -> io::Result<tokio::runtime::Runtime> {
    assert!(threads > 0);
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(threads)
        .thread_keep_alive(keep_alive)
        .thread_name("proxy-file-io")
        .build()
}

/// A local file or block device: the export's one handle, used by every
/// connection, each call on a thread of the file I/O pool
/// ([`file_io_pool`]).
#[derive(Debug)]
pub struct FileBackend {
    file: Arc<std::fs::File>,
    /// Where large write payloads go once written.
    pool: Rc<BufPool>,
    /// The file I/O pool's runtime.
    io: tokio::runtime::Handle,
    size: u64,
}

/// Size of a file or block device (block devices report 0 in `stat`).
fn device_size(path: &Path) -> io::Result<u64> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::End(0))
}

/// Makes sure `path` exists, creating a file of `size` (fsynced with its
/// directory) when it does not. Returns its size. Called once at start.
pub fn prepare_file(path: &Path, size: Option<u64>) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(_) => device_size(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(size) = size else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} does not exist and the export names no size to create it with",
                        path.display()
                    ),
                ));
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            file.set_len(size)?;
            file.sync_all()?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(size)
        }
        Err(e) => Err(e),
    }
}

/// The export-wide handle on a file backend, opened once at start (one
/// file descriptor per export, not per connection).
pub fn open_shared(path: &Path) -> io::Result<Arc<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(Arc::new(file))
}

impl FileBackend {
    /// A connection's backend on the export's handle `file` ([`open_shared`]
    /// on the file [`prepare_file`] made sure exists) of `size` bytes; its
    /// calls run on `io`, the handle of the [`file_io_pool`].
    #[must_use]
    pub fn new(
        file: Arc<std::fs::File>,
        size: u64,
        pool: Rc<BufPool>,
        io: tokio::runtime::Handle,
    ) -> FileBackend {
        FileBackend {
            file,
            pool,
            io,
            size,
        }
    }

    /// Runs `f` on a thread of the file I/O pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        self.io
            .spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("backend I/O thread: {e}")))
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        let len = len as usize;
        self.blocking(move || {
            let mut out = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match file.read_at(&mut out[done..], offset + done as u64) {
                    // Past the end of a file that shrank underneath us:
                    // the rest reads as zeroes.
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await?
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        let file = self.file.clone();
        // The payload comes back for the pool (a large one is reused). A
        // file or block device writes short only when it is full (or past
        // a size limit), where a retry fails too: `write_all_at` reports it.
        let (data, written) = self
            .blocking(move || {
                let mut written = file.write_all_at(&data, offset);
                if fua && written.is_ok() {
                    written = file.sync_data();
                }
                (data, written)
            })
            .await?;
        self.pool.give(data);
        written
    }

    async fn flush(&self) -> io::Result<()> {
        let file = self.file.clone();
        self.blocking(move || file.sync_data()).await?
    }

    async fn zero(&self, offset: u64, len: u32, punch: bool, fua: bool) -> io::Result<()> {
        let file = self.file.clone();
        self.blocking(move || {
            use rustix::fs::FallocateFlags;
            let len = u64::from(len);
            let punched = punch
                && rustix::fs::fallocate(
                    &*file,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    offset,
                    len,
                )
                .is_ok();
            if !punched {
                // No hole punching here (a block device, a filesystem
                // without it, or NO_HOLE): write zeroes.
                let zeroes = vec![0; ZERO_CHUNK.min(len as usize)];
                let mut done = 0u64;
                while done < len {
                    let chunk = (len - done).min(ZERO_CHUNK as u64) as usize;
                    file.write_all_at(&zeroes[..chunk], offset + done)?;
                    done += chunk as u64;
                }
            }
            if fua {
                file.sync_data()?;
            }
            Ok(())
        })
        .await?
    }
}

// Upstream NBD client: fixed newstyle, NBD_OPT_GO, simple replies.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1;
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
const NBD_INFO_EXPORT: u16 = 0;
const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_DISC: u16 = 2;
const NBD_CMD_FLUSH: u16 = 3;
const NBD_CMD_TRIM: u16 = 4;
const NBD_CMD_WRITE_ZEROES: u16 = 6;
const NBD_CMD_FLAG_FUA: u16 = 1;
const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Longest option reply accepted from the upstream server.
const OPT_REPLY_MAX: u32 = 64 << 10;

/// Bytes read from the upstream server at once.
const RECEIVE_CHUNK: usize = 256 << 10;
/// A send batch buffer larger than this is not kept for the next batch.
const SEND_KEEP_MAX: usize = 4 << 20;
/// How long a goodbye may take to reach an upstream server that stopped
/// reading.
const DISCONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Length of a simple reply header.
const SIMPLE_REPLY_LEN: usize = 16;

/// A connection to an upstream NBD server, multiplexed: any number of
/// calls in flight (the caller bounds them), each request sent as soon as
/// the sender task gets to it (requests queued meanwhile go out in one
/// write), each reply matched to its call by cookie.
pub struct NbdUpstream {
    size: u64,
    flags: u16,
    mux: Rc<Mux>,
    /// Writes queued requests to the server. Dropping it cancels it.
    sender: AbortOnDrop,
    /// Reads replies and completes calls. Dropping it cancels it.
    receiver: AbortOnDrop,
}

impl std::fmt::Debug for NbdUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.mux.state.borrow();
        f.debug_struct("NbdUpstream")
            .field("size", &self.size)
            .field("flags", &self.flags)
            .field("in_flight", &state.pending.len())
            .field("broken", &state.broken)
            .finish_non_exhaustive()
    }
}

/// A spawned task that is cancelled when this handle is dropped (a tokio
/// `JoinHandle` alone would detach it).
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the calls, the sender and the receiver share.
#[derive(Debug, Default)]
struct Mux {
    state: RefCell<MuxState>,
    /// Wakes the sender: requests are queued.
    send_ready: Signal,
    /// Where large write payloads go once sent.
    pool: Rc<BufPool>,
}

#[derive(Debug, Default)]
struct MuxState {
    next_cookie: u64,
    /// What goes out before `send_buf`, in order: batches of encoded
    /// requests, and large write payloads, sent as they are (no copy).
    queued: VecDeque<Chunk>,
    /// Requests encoded and not yet handed to the socket (after `queued`).
    send_buf: Vec<u8>,
    /// Calls in flight, by cookie; an entry leaves when its call returns.
    pending: HashMap<u64, Pending>,
    /// Why the connection cannot be used any more; calls fail at once.
    broken: Option<String>,
    /// A goodbye is queued: the sender stops once it is written.
    closing: bool,
    /// Writes the sender handed to the socket (each a batch of requests or
    /// a large payload): what batching saves shows here.
    writes: u64,
}

#[derive(Debug)]
enum Chunk {
    /// Encoded requests (headers, small payloads).
    Batch(Vec<u8>),
    /// A large write payload, back to the pool once written.
    Payload(Vec<u8>),
}

#[derive(Debug)]
struct Pending {
    /// Data bytes that follow a successful reply (a READ's length).
    read_len: usize,
    /// The outcome, once the reply came (or the connection failed).
    done: Option<io::Result<Vec<u8>>>,
    waker: Option<Waker>,
}

impl Mux {
    /// Data length a reply for `cookie` carries when it succeeds, if the
    /// cookie is in flight and unanswered.
    fn read_len(&self, cookie: u64) -> Option<usize> {
        let state = self.state.borrow();
        let pending = state.pending.get(&cookie)?;
        pending.done.is_none().then_some(pending.read_len)
    }

    fn complete(&self, cookie: u64, result: io::Result<Vec<u8>>) {
        let waker = {
            let mut state = self.state.borrow_mut();
            let pending = state
                .pending
                .get_mut(&cookie)
                .expect("the receiver completes only cookies in flight");
            pending.done = Some(result);
            pending.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection failed: every unanswered call fails with `why`, and
    /// so does every later one.
    fn fail(&self, why: &str) {
        let wakers: Vec<Waker> = {
            let mut state = self.state.borrow_mut();
            state.broken.get_or_insert_with(|| why.to_owned());
            state
                .pending
                .values_mut()
                .filter(|p| p.done.is_none())
                .filter_map(|p| {
                    p.done = Some(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("upstream NBD connection failed: {why}"),
                    )));
                    p.waker.take()
                })
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

fn upstream_err(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn encode_request(
    out: &mut Vec<u8>,
    command: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    data: &[u8],
) {
    out.reserve(28 + data.len());
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// The sender task: writes whatever is queued, small requests batched in
/// one write, until a goodbye went out or the connection failed.
async fn send_requests(mux: Rc<Mux>, mut output: WriteHalf) {
    let mut spare = Vec::new();
    loop {
        let (next, closing) = {
            let mut state = mux.state.borrow_mut();
            let next = match state.queued.pop_front() {
                Some(chunk) => Some(chunk),
                None if !state.send_buf.is_empty() => Some(Chunk::Batch(std::mem::replace(
                    &mut state.send_buf,
                    std::mem::take(&mut spare),
                ))),
                None => None,
            };
            (next, state.closing)
        };
        let Some(chunk) = next else {
            if closing {
                return;
            }
            mux.send_ready.wait().await;
            continue;
        };
        let bytes = match &chunk {
            Chunk::Batch(bytes) | Chunk::Payload(bytes) => bytes,
        };
        if let Err(e) = output.write_all(bytes, None).await {
            mux.fail(&format!("sending: {e}"));
            return;
        }
        mux.state.borrow_mut().writes += 1;
        match chunk {
            Chunk::Batch(mut batch) if batch.capacity() <= SEND_KEEP_MAX => {
                batch.clear();
                spare = batch;
            }
            Chunk::Batch(_) => {}
            Chunk::Payload(payload) => mux.pool.give(payload),
        }
    }
}

/// The receiver task: completes calls as their replies arrive, until the
/// connection ends; then fails whatever is left.
async fn receive_replies(mux: Rc<Mux>, mut input: ReadHalf) {
    let why = match parse_replies(&mux, &mut input).await {
        Ok(()) => "the server closed the connection".to_owned(),
        Err(e) => e.to_string(),
    };
    mux.fail(&why);
}

async fn parse_replies(mux: &Mux, stream: &mut ReadHalf) -> io::Result<()> {
    let mut input = vec![0u8; RECEIVE_CHUNK];
    let (mut start, mut end) = (0usize, 0usize);
    // A READ reply whose data is still arriving: cookie, data so far, length.
    let mut partial: Option<(u64, Vec<u8>, usize)> = None;
    loop {
        loop {
            if let Some((_, data, want)) = partial.as_mut() {
                let take = (*want - data.len()).min(end - start);
                data.extend_from_slice(&input[start..start + take]);
                start += take;
                if data.len() < *want {
                    break;
                }
                let (cookie, data, _) = partial.take().expect("just matched");
                mux.complete(cookie, Ok(data));
                continue;
            }
            if end - start < SIMPLE_REPLY_LEN {
                break;
            }
            let head = &input[start..start + SIMPLE_REPLY_LEN];
            start += SIMPLE_REPLY_LEN;
            let magic = u32::from_be_bytes(head[0..4].try_into().expect("4"));
            let error = u32::from_be_bytes(head[4..8].try_into().expect("4"));
            let cookie = u64::from_be_bytes(head[8..16].try_into().expect("8"));
            if magic != SIMPLE_REPLY_MAGIC {
                return Err(upstream_err(format!(
                    "upstream NBD reply with magic {magic:#x}, not a simple reply"
                )));
            }
            let Some(read_len) = mux.read_len(cookie) else {
                return Err(upstream_err(format!(
                    "upstream NBD reply for cookie {cookie}, which is not in flight"
                )));
            };
            if error != 0 {
                // A simple reply to a failed READ carries no data.
                let error = i32::try_from(error).unwrap_or(libc::EIO);
                mux.complete(cookie, Err(io::Error::from_raw_os_error(error)));
            } else if read_len == 0 {
                mux.complete(cookie, Ok(Vec::new()));
            } else {
                partial = Some((cookie, Vec::with_capacity(read_len), read_len));
            }
        }
        // What is left is under one header: move it to the front.
        input.copy_within(start..end, 0);
        end -= start;
        start = 0;
        let n = stream
            .read(&mut input[end..], u64::MAX, "upstream NBD reply")
            .await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// The client side of the handshake on a fresh `stream` to `addr`: fixed
/// newstyle, `NBD_OPT_GO` for `export`. Returns the export's size and
/// transmission flags.
async fn negotiate(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    addr: &NbdAddr,
    export: &str,
) -> io::Result<(u64, u16)> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).await?;
    let magic = u64::from_be_bytes(greeting[0..8].try_into().expect("8"));
    let opt = u64::from_be_bytes(greeting[8..16].try_into().expect("8"));
    let flags = u16::from_be_bytes(greeting[16..18].try_into().expect("2"));
    if magic != NBDMAGIC || opt != IHAVEOPT || flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(upstream_err(format!(
            "{addr} is not a fixed-newstyle NBD server"
        )));
    }
    stream
        .write_all(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .await?;
    // NBD_OPT_GO: name length, name, no info requests.
    let name = export.as_bytes();
    let mut option = Vec::new();
    option.extend_from_slice(&IHAVEOPT.to_be_bytes());
    option.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    option.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    option.extend_from_slice(&(name.len() as u32).to_be_bytes());
    option.extend_from_slice(name);
    option.extend_from_slice(&0u16.to_be_bytes());
    stream.write_all(&option).await?;
    let mut size = None;
    let mut tflags = 0;
    loop {
        let mut head = [0u8; 20];
        stream.read_exact(&mut head).await?;
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8"));
        let reply = u32::from_be_bytes(head[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(head[16..20].try_into().expect("4"));
        if magic != OPT_REPLY_MAGIC || len > OPT_REPLY_MAX {
            return Err(upstream_err(format!("{addr}: bad option reply")));
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;
        if reply & NBD_REP_FLAG_ERROR != 0 {
            return Err(upstream_err(format!(
                "{addr} refused export {export:?}: {}",
                String::from_utf8_lossy(data.get(..).unwrap_or_default())
            )));
        }
        match reply {
            NBD_REP_INFO if data.len() >= 12 => {
                let kind = u16::from_be_bytes([data[0], data[1]]);
                if kind == NBD_INFO_EXPORT {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                    tflags = u16::from_be_bytes([data[10], data[11]]);
                }
            }
            NBD_REP_ACK => break,
            _ => {}
        }
    }
    let size = size.ok_or_else(|| upstream_err(format!("{addr} sent no export size")))?;
    Ok((size, tflags))
}

impl NbdUpstream {
    /// Connects to `addr` (TCP or a Unix socket) and negotiates `export`;
    /// large write payloads go back to `pool` once sent. Everything after
    /// the connect is the same for both transports.
    ///
    /// # Errors
    ///
    /// The server cannot be reached (the message names `addr`), is not a
    /// fixed-newstyle NBD server, or refuses the export.
    pub async fn connect(
        addr: &NbdAddr,
        export: &str,
        pool: Rc<BufPool>,
    ) -> io::Result<NbdUpstream> {
        let cannot_connect =
            |e: io::Error| io::Error::new(e.kind(), format!("connecting to {addr}: {e}"));
        let (stream, size, flags) = match addr {
            NbdAddr::Tcp(tcp) => {
                let mut stream = TcpStream::connect(tcp).await.map_err(cannot_connect)?;
                // A request waits for its reply: no Nagle delay (a Unix
                // socket has none).
                stream.set_nodelay(true)?;
                let (size, flags) = negotiate(&mut stream, addr, export).await?;
                (Stream::from(stream), size, flags)
            }
            NbdAddr::Unix(path) => {
                let mut stream = UnixStream::connect(path).await.map_err(cannot_connect)?;
                let (size, flags) = negotiate(&mut stream, addr, export).await?;
                (Stream::from(stream), size, flags)
            }
        };
        let (input, output) = split(stream);
        let mux = Rc::new(Mux {
            state: RefCell::new(MuxState {
                next_cookie: 1,
                ..MuxState::default()
            }),
            send_ready: Signal::default(),
            pool,
        });
        let sender = AbortOnDrop(tokio::task::spawn_local(send_requests(mux.clone(), output)));
        let receiver = AbortOnDrop(tokio::task::spawn_local(receive_replies(
            mux.clone(),
            input,
        )));
        Ok(NbdUpstream {
            size,
            flags,
            mux,
            sender,
            receiver,
        })
    }

    /// Sends one request (`payload` is a WRITE's data, empty otherwise)
    /// and waits for its reply: the data of a READ, an empty vector
    /// otherwise; the server's error as an `io::Error` carrying its error
    /// number.
    async fn call(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        let cookie = {
            let mut state = self.mux.state.borrow_mut();
            if let Some(why) = &state.broken {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("upstream NBD connection failed: {why}"),
                ));
            }
            let cookie = state.next_cookie;
            state.next_cookie += 1;
            // A large payload follows its header as a chunk of its own.
            let large = payload.len() >= LARGE;
            let inline: &[u8] = if large { &[] } else { &payload };
            encode_request(
                &mut state.send_buf,
                command,
                flags,
                cookie,
                offset,
                len,
                inline,
            );
            if large {
                let batch = std::mem::take(&mut state.send_buf);
                state.queued.push_back(Chunk::Batch(batch));
                state.queued.push_back(Chunk::Payload(payload));
            }
            let read_len = if command == NBD_CMD_READ {
                len as usize
            } else {
                0
            };
            state.pending.insert(
                cookie,
                Pending {
                    read_len,
                    done: None,
                    waker: None,
                },
            );
            cookie
        };
        self.mux.send_ready.notify();
        std::future::poll_fn(|cx| {
            let mut state = self.mux.state.borrow_mut();
            let pending = state
                .pending
                .get_mut(&cookie)
                .expect("a call's entry stays until the call returns");
            if let Some(result) = pending.done.take() {
                state.pending.remove(&cookie);
                return Poll::Ready(result);
            }
            pending.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Says goodbye to the upstream server. Call when no call is running.
    pub async fn disconnect(self) {
        {
            let mut state = self.mux.state.borrow_mut();
            if state.broken.is_none() {
                encode_request(&mut state.send_buf, NBD_CMD_DISC, 0, 0, 0, 0, &[]);
            }
            state.closing = true;
        }
        self.mux.send_ready.notify();
        // The goodbye is written, or the server stopped reading: either
        // way dropping the tasks (which cancels them) closes the socket.
        let mut sender = self.sender;
        let _ = tokio::time::timeout(DISCONNECT_WAIT, &mut sender.0).await;
        drop(sender);
        drop(self.receiver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A file I/O pool whose threads are all stuck (a hung disk) holds
    /// back only file calls: the event loop's timers and its own blocking
    /// pool (lease checks, fence raises) go on.
    #[test]
    fn a_stuck_file_io_pool_leaves_the_loop_and_its_blocking_pool_free() {
        let file_io = file_io_pool(1, std::time::Duration::from_secs(1)).expect("file I/O pool");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        // The pool's only thread waits until released, as on a hung disk.
        drop(file_io.handle().spawn_blocking(move || {
            let _ = stuck.recv();
        }));
        let file = tempfile::tempfile().expect("temp file");
        file.write_all_at(&[7u8; 4096], 0).expect("fill");
        let backend = FileBackend::new(
            Arc::new(file),
            4096,
            Rc::new(BufPool::default()),
            file_io.handle().clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&runtime, async move {
            let read = tokio::task::spawn_local(async move { backend.read(0, 4096).await });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!read.is_finished(), "the read waits for the stuck thread");
            let other = tokio::task::spawn_blocking(|| 7)
                .await
                .expect("blocking pool");
            assert_eq!(other, 7);
            release.send(()).expect("release the pool");
            let data = read.await.expect("task").expect("read");
            assert_eq!(data, vec![7u8; 4096]);
        });
    }

    /// A minimal upstream NBD server on a thread, on TCP or (with
    /// `socket_dir`) on a Unix socket in that folder: negotiates one
    /// export of `size` bytes, then answers every request it reads (writes
    /// and flushes with success), and returns how many requests it
    /// answered once the client says goodbye.
    fn fake_upstream(
        size: u64,
        socket_dir: Option<&Path>,
    ) -> (NbdAddr, std::thread::JoinHandle<usize>) {
        match socket_dir {
            None => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let server = std::thread::spawn(move || {
                    serve_fake(listener.accept().expect("accept").0, size)
                });
                (NbdAddr::Tcp(addr), server)
            }
            Some(dir) => {
                let path = dir.join("up.sock");
                let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
                let server = std::thread::spawn(move || {
                    serve_fake(listener.accept().expect("accept").0, size)
                });
                (NbdAddr::Unix(path), server)
            }
        }
    }

    /// The fake server's side of one connection (see [`fake_upstream`]).
    fn serve_fake(mut s: impl Read + Write, size: u64) -> usize {
        let mut greeting = Vec::new();
        greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
        greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&NBD_FLAG_FIXED_NEWSTYLE.to_be_bytes());
        s.write_all(&greeting).expect("greeting");
        let mut client_flags = [0u8; 4];
        s.read_exact(&mut client_flags).expect("client flags");
        let mut head = [0u8; 16];
        s.read_exact(&mut head).expect("option header");
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4"));
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).expect("option data");
        let option_reply = |s: &mut dyn Write, kind: u32, data: &[u8]| {
            let mut out = Vec::new();
            out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            s.write_all(&out).expect("option reply");
        };
        let mut info = Vec::new();
        info.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&NBD_FLAG_SEND_TRIM.to_be_bytes());
        option_reply(&mut s, NBD_REP_INFO, &info);
        option_reply(&mut s, NBD_REP_ACK, &[]);
        let mut answered = 0;
        loop {
            let mut request = [0u8; 28];
            if s.read_exact(&mut request).is_err() {
                return answered;
            }
            let command = u16::from_be_bytes([request[6], request[7]]);
            let cookie = &request[8..16];
            let len = u32::from_be_bytes(request[24..28].try_into().expect("4"));
            if command == NBD_CMD_DISC {
                return answered;
            }
            if command == NBD_CMD_WRITE {
                let mut payload = vec![0u8; len as usize];
                s.read_exact(&mut payload).expect("payload");
            }
            let mut reply = Vec::new();
            reply.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            reply.extend_from_slice(&0u32.to_be_bytes());
            reply.extend_from_slice(cookie);
            s.write_all(&reply).expect("reply");
            answered += 1;
        }
    }

    /// Calls started in one turn of the event loop go to the upstream
    /// server in one write, however many there are, on TCP and on a Unix
    /// socket alike.
    #[test]
    fn requests_ready_together_go_out_in_one_write() {
        let dir = tempfile::tempdir().expect("tmp");
        for socket_dir in [None, Some(dir.path())] {
            requests_ready_together_go_out_in_one_write_on(socket_dir);
        }
    }

    fn requests_ready_together_go_out_in_one_write_on(socket_dir: Option<&Path>) {
        const CALLS: usize = 8;
        let (addr, server) = fake_upstream(1 << 20, socket_dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let to = addr.clone();
        let writes = tokio::task::LocalSet::new().block_on(&runtime, async move {
            let pool = Rc::new(BufPool::default());
            let upstream = Rc::new(
                NbdUpstream::connect(&to, "disk", pool)
                    .await
                    .expect("connect"),
            );
            assert_eq!(upstream.size, 1 << 20);
            // Every call encodes its request before any task awaits the
            // socket: they are all ready when the sender runs.
            let calls: Vec<_> = (0..CALLS)
                .map(|i| {
                    let upstream = upstream.clone();
                    tokio::task::spawn_local(async move {
                        let offset = (i * 4096) as u64;
                        upstream
                            .call(NBD_CMD_WRITE, 0, offset, 4096, vec![i as u8; 4096])
                            .await
                    })
                })
                .collect();
            for call in calls {
                call.await.expect("task ran").expect("write answered");
            }
            let writes = upstream.mux.state.borrow().writes;
            let upstream = Rc::try_unwrap(upstream).expect("the calls are done");
            upstream.disconnect().await;
            writes
        });
        assert_eq!(server.join().expect("fake upstream"), CALLS, "{addr}");
        assert_eq!(
            writes, 1,
            "{addr}: {CALLS} ready requests took {writes} writes"
        );
    }

    /// An upstream socket path with nothing there: the error says which
    /// path, and that it is missing.
    #[test]
    fn a_missing_upstream_socket_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("nobody-listens.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addr = NbdAddr::Unix(path.clone());
        let err = tokio::task::LocalSet::new()
            .block_on(&runtime, async {
                NbdUpstream::connect(&addr, "up", Rc::new(BufPool::default())).await
            })
            .expect_err("nothing listens there");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("connecting to unix:{}: ", path.display())),
            "{text}"
        );
    }

    /// An upstream server that goes away fails the calls in flight and
    /// every later call, on either transport.
    #[test]
    fn a_lost_upstream_fails_every_call_on_either_transport() {
        let dir = tempfile::tempdir().expect("tmp");
        for socket_dir in [None, Some(dir.path())] {
            let (addr, server) = fake_upstream(1 << 20, socket_dir);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tokio::task::LocalSet::new().block_on(&runtime, async {
                let upstream = NbdUpstream::connect(&addr, "disk", Rc::new(BufPool::default()))
                    .await
                    .expect("connect");
                upstream
                    .call(NBD_CMD_FLUSH, 0, 0, 0, Vec::new())
                    .await
                    .expect("answered");
                // The fake server ends its connection on a goodbye; a
                // DISC sent as a call gets no reply, so the call fails
                // when the server closes.
                let err = upstream
                    .call(NBD_CMD_DISC, 0, 0, 0, Vec::new())
                    .await
                    .expect_err("the server closed");
                assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{addr}: {err}");
                let later = upstream
                    .call(NBD_CMD_FLUSH, 0, 0, 0, Vec::new())
                    .await
                    .expect_err("broken for good");
                assert!(
                    later
                        .to_string()
                        .contains("the server closed the connection"),
                    "{addr}: {later}"
                );
            });
            assert_eq!(server.join().expect("fake upstream"), 1, "{addr}");
        }
    }
}

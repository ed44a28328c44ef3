//! An async client on tokio. One connection carries any number of
//! concurrent calls: each gets a request id, a background task reads the
//! answers and hands each to its caller (pipelining).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use palisade_proto::frame::padded_len;
use palisade_proto::{
    decode_response, encode_request, Decoded, FrameBuf, FrameKind, RecvBuf, Request, Response,
    StatusInfo, Welcome, HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::blocking::{
    acquire_outcome, acquire_request, millis_u32, token_outcome, unexpected, AcquireOptions,
    ConnectOptions, RESPONSE_PAYLOAD_MAX,
};
use crate::clock::boottime_ms;
use crate::handshake::{Handshake, Step};
use crate::lease::{AcquireOutcome, TokenOutcome};
use crate::ClientError;

type Reply = oneshot::Sender<Result<Response, ClientError>>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Reply>,
    /// Acquires in flight: request id to resource.
    acquires: HashMap<u64, String>,
    /// Calls whose caller went away (timed out or was cancelled): the
    /// answer is dropped, and a late grant is released at once.
    abandoned: HashMap<u64, Option<String>>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
}

struct Inner {
    endpoint: String,
    /// Whole frames for the writer task. Callers never write to the socket
    /// themselves, so cancelling a call can never leave half a frame behind.
    frames: tokio::sync::mpsc::UnboundedSender<FrameBuf>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    welcome: OnceLock<Welcome>,
    request_timeout: Duration,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}

impl Inner {
    fn connection_error(&self, why: &str) -> ClientError {
        ClientError::Io {
            endpoint: self.endpoint.clone(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
        }
    }

    /// Marks the connection dead and fails every call waiting on it.
    fn close(&self, why: String) {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.closed.is_none() {
            pending.closed = Some(why.clone());
        }
        for (_, reply) in pending.waiting.drain() {
            let _ = reply.send(Err(self.connection_error(&why)));
        }
    }

    /// Encodes and queues one frame; returns its id.
    fn send(&self, request: &Request) -> Result<u64, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = FrameBuf::new();
        encode_request(&mut frame, id, 0, REQUEST_PAYLOAD_MAX, request)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        self.frames
            .send(frame)
            .map_err(|_| self.connection_error("connection closed"))?;
        Ok(id)
    }
}

/// Removes a call's pending entry if the call ends without its answer
/// (timeout, error or cancellation), remembering acquires so that a late
/// grant gets released.
struct CallGuard<'a> {
    inner: &'a Inner,
    id: u64,
    answered: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut pending = self.inner.pending.lock().expect("pending lock");
        pending.waiting.remove(&self.id);
        let resource = pending.acquires.remove(&self.id);
        pending.abandoned.insert(self.id, resource);
    }
}

/// A connected, authenticated async client. Cheap to clone; clones share
/// the connection. Lease calls follow redirects to the leader: the client
/// then reconnects there, for every clone.
#[derive(Clone)]
pub struct AsyncClient {
    link: Arc<Link>,
}

struct Link {
    options: ConnectOptions,
    current: Mutex<Arc<Inner>>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("endpoint", &self.current().endpoint)
            .finish_non_exhaustive()
    }
}

const REQUEST_PAYLOAD_MAX: u32 = 1 << 14;
const WAIT_MARGIN: Duration = Duration::from_secs(5);

impl AsyncClient {
    /// Connects and completes the handshake.
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
        let inner = open(options).await?;
        Ok(AsyncClient {
            link: Arc::new(Link {
                options: options.clone(),
                current: Mutex::new(inner),
            }),
        })
    }

    fn current(&self) -> Arc<Inner> {
        self.link.current.lock().expect("link lock").clone()
    }

    /// Runs `call` on the current connection, following redirects to the
    /// leader and waiting out moments without one, up to
    /// [`crate::blocking::REDIRECTS_MAX`] attempts.
    async fn follow_leader<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut pause = Duration::from_millis(25);
        let mut attempt = 1;
        loop {
            let inner = self.current();
            match call(inner.clone()).await {
                Err(ClientError::Redirect { endpoint, .. })
                    if attempt < crate::blocking::REDIRECTS_MAX =>
                {
                    if endpoint.is_empty() || endpoint == inner.endpoint {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    } else {
                        let mut options = self.link.options.clone();
                        options.endpoint = endpoint;
                        let fresh = open(&options).await?;
                        let mut current = self.link.current.lock().expect("link lock");
                        // Another clone may have moved on already.
                        if Arc::ptr_eq(&current, &inner) {
                            *current = fresh;
                        }
                    }
                }
                other => return other,
            }
            attempt += 1;
        }
    }
}

/// Connects to `options.endpoint` and completes the handshake.
async fn open(options: &ConnectOptions) -> Result<Arc<Inner>, ClientError> {
    {
        let io = |source| ClientError::Io {
            endpoint: options.endpoint.clone(),
            source,
        };
        let stream = tokio::time::timeout(
            options.connect_timeout,
            TcpStream::connect(options.endpoint.as_str()),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            endpoint: options.endpoint.clone(),
            timeout_ms: u64::try_from(options.connect_timeout.as_millis()).unwrap_or(u64::MAX),
        })?
        .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (read, write) = stream.into_split();
        let (frames, frames_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            endpoint: options.endpoint.clone(),
            frames,
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            welcome: OnceLock::new(),
            request_timeout: options.request_timeout,
            tasks: Mutex::new(Vec::new()),
        });
        let reader = tokio::spawn(read_loop(Arc::downgrade(&inner), read));
        let writer = tokio::spawn(write_loop(Arc::downgrade(&inner), write, frames_rx));
        inner
            .tasks
            .lock()
            .expect("tasks lock")
            .extend([reader, writer]);
        let (mut handshake, hello) = Handshake::start(options.identity.clone());
        let mut response = call_on(&inner, &hello, options.request_timeout).await?;
        loop {
            match handshake.on_response(response)? {
                Step::Send(request) => {
                    response = call_on(&inner, &request, options.request_timeout).await?;
                }
                Step::Done(welcome) => {
                    let _ = inner.welcome.set(welcome);
                    return Ok(inner);
                }
            }
        }
    }
}

impl Inner {
    fn drift_ppm(&self) -> u32 {
        self.welcome.get().map_or(0, |w| w.max_drift_ppm)
    }
}

impl AsyncClient {
    /// What the server said at the handshake.
    #[must_use]
    pub fn welcome(&self) -> Option<Welcome> {
        self.current().welcome.get().cloned()
    }

    /// Sends one request and waits up to the request timeout for its answer.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let inner = self.current();
        call_on(&inner, request, inner.request_timeout).await
    }

    /// Sends one request and waits up to `timeout`.
    pub async fn call_within(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        call_on(&self.current(), request, timeout).await
    }
}

/// Sends one request on `inner` and waits up to `timeout` for its answer.
async fn call_on(
    inner: &Arc<Inner>,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    {
        let inner = &**inner;
        let (tx, rx) = oneshot::channel();
        let id = {
            // Register before sending so the answer cannot outrun us.
            let mut pending = inner.pending.lock().expect("pending lock");
            if let Some(why) = &pending.closed {
                return Err(inner.connection_error(why));
            }
            let id = inner.send(request)?;
            pending.waiting.insert(id, tx);
            if let Request::Acquire { resource, .. } = request {
                pending.acquires.insert(id, resource.clone());
            }
            id
        };
        let mut guard = CallGuard {
            inner,
            id,
            answered: false,
        };
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => {
                guard.answered = true;
                result
            }
            Ok(Err(_)) => Err(inner.connection_error("connection closed before the answer")),
            Err(_) => Err(ClientError::Timeout {
                endpoint: inner.endpoint.clone(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        drop(guard);
        result
    }
}

impl AsyncClient {
    /// Acquires `resource`, following the leader.
    pub async fn acquire(
        &self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        let request = acquire_request(resource, &options)?;
        self.follow_leader(|inner| {
            let request = request.clone();
            async move {
                let send_ms = boottime_ms();
                let timeout = inner.request_timeout + options.wait + WAIT_MARGIN;
                let response = call_on(&inner, &request, timeout).await?;
                acquire_outcome(resource, &options, send_ms, inner.drift_ppm(), response)
            }
        })
        .await
    }

    /// Renews `token` on `resource` for `ttl` from now, following the leader.
    pub async fn renew(
        &self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let ttl_ms = millis_u32(ttl, "ttl")?;
        self.follow_leader(|inner| async move {
            let send_ms = boottime_ms();
            let request = Request::Renew {
                resource: resource.into(),
                token,
                ttl_ms,
            };
            let response = call_on(&inner, &request, inner.request_timeout).await?;
            token_outcome(resource, holder, send_ms, inner.drift_ppm(), response)
        })
        .await
    }

    /// Releases `token` on `resource`, following the leader.
    pub async fn release(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        self.follow_leader(|inner| async move {
            let request = Request::Release {
                resource: resource.into(),
                token,
            };
            let response = call_on(&inner, &request, inner.request_timeout).await?;
            token_outcome(resource, 0, 0, 0, response)
        })
        .await
    }

    /// Asks the leader whether `token` is the current lease on `resource`.
    pub async fn check(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        self.follow_leader(|inner| async move {
            let request = Request::Check {
                resource: resource.into(),
                token,
            };
            let response = call_on(&inner, &request, inner.request_timeout).await?;
            token_outcome(resource, 0, 0, 0, response)
        })
        .await
    }

    /// Node status.
    pub async fn status(&self) -> Result<StatusInfo, ClientError> {
        match self.call(&Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }
}

/// Writes queued frames until the connection or the client goes away.
async fn write_loop(
    inner: std::sync::Weak<Inner>,
    mut write: OwnedWriteHalf,
    mut frames: tokio::sync::mpsc::UnboundedReceiver<FrameBuf>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = write.write_all(&frame).await {
            if let Some(inner) = inner.upgrade() {
                inner.close(format!("write failed: {e}"));
            }
            return;
        }
    }
}

/// Reads answers and hands each to its caller until the connection ends,
/// then fails every call still waiting.
async fn read_loop(inner: std::sync::Weak<Inner>, mut read: OwnedReadHalf) {
    let frame_max = HEADER_LEN + padded_len(RESPONSE_PAYLOAD_MAX as usize);
    let mut rx = RecvBuf::new(4096, frame_max);
    let why = loop {
        let n = match read.read(rx.spare()).await {
            Ok(0) => break "server closed the connection".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        rx.filled(n);
        let Some(inner) = inner.upgrade() else { return };
        let mut failed = None;
        loop {
            match rx.next_frame(RESPONSE_PAYLOAD_MAX) {
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    failed = Some(format!("bad frame from server: {e}"));
                    break;
                }
                Ok(Decoded::Frame {
                    header,
                    payload,
                    frame_len,
                }) => {
                    if header.kind != FrameKind::Response {
                        failed = Some("server sent a request frame".into());
                        break;
                    }
                    let response = decode_response(payload);
                    rx.consume(frame_len);
                    let Ok(response) = response else {
                        failed = Some("server sent an invalid payload".into());
                        break;
                    };
                    if header.request_id == 0 {
                        // A connection-level error: everyone waiting gets it.
                        failed = Some(format!("{:?}", unexpected(response)));
                        break;
                    }
                    dispatch(&inner, header.request_id, response);
                }
            }
        }
        if let Some(why) = failed {
            break why;
        }
    };
    if let Some(inner) = inner.upgrade() {
        inner.close(why);
    }
}

/// Hands one answer to its caller, or releases a grant nobody waits for.
fn dispatch(inner: &Inner, id: u64, response: Response) {
    let mut pending = inner.pending.lock().expect("pending lock");
    pending.acquires.remove(&id);
    if let Some(reply) = pending.waiting.remove(&id) {
        let _ = reply.send(Ok(response));
        return;
    }
    if let Some(Some(resource)) = pending.abandoned.remove(&id) {
        if let Response::Granted { token, .. } = response {
            if let Ok(release_id) = inner.send(&Request::Release { resource, token }) {
                pending.abandoned.insert(release_id, None);
            }
        }
    }
}

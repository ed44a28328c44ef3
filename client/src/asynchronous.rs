//! An async client on tokio. One connection carries any number of
//! concurrent calls: each gets a request id, a background task reads the
//! answers and hands each to its caller (pipelining).
//!
//! Lease calls follow the leader across the endpoint list until their own
//! deadline, exactly as the blocking client does ([`crate::failover`]):
//! when the node fails (broken connection, no answer within the
//! per-attempt deadline) or redirects, the client connects elsewhere and
//! every clone moves to the new connection.

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
    acquire_outcome, acquire_request, list_page, list_request, millis_u32, release_outcome,
    token_outcome, unexpected, watch_end_ms, watched, AcquireOptions, ConnectOptions, ListPage,
    Watched, RESPONSE_PAYLOAD_MAX,
};
use crate::failover::{
    connection_is_dead, is_node_failure, millis, renew_attempt, Attempt, Endpoints, Next, Retry,
};
use crate::handshake::{Handshake, Step};
use crate::lease::{AcquireOutcome, Lease, TokenOutcome};
use crate::watch::{WatchEvent, WatchStep, WatchTracker};
use crate::ClientError;
use palisade_host::clock::boottime_ms;

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

    fn is_closed(&self) -> bool {
        self.pending.lock().expect("pending lock").closed.is_some()
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

    fn drift_ppm(&self) -> u32 {
        self.welcome.get().map_or(0, |w| w.max_drift_ppm)
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
/// the connection. Lease calls follow the leader across the endpoint list
/// (see the module docs): the client then reconnects, for every clone.
#[derive(Clone)]
pub struct AsyncClient {
    link: Arc<Link>,
}

struct Link {
    options: ConnectOptions,
    endpoints: Mutex<Endpoints>,
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

/// Where the next attempt of a call runs.
enum Want {
    /// On the current connection, or, if it is closed, on a new one to the
    /// endpoint after its own.
    Current,
    /// On a new connection to this endpoint (a redirect's leader).
    Endpoint(String),
    /// On the current connection if another call already replaced the one
    /// that failed with an open one; otherwise on a new connection to the
    /// endpoint after this one.
    After(String),
}

impl AsyncClient {
    /// Connects to the first endpoint of `options.endpoint` that completes
    /// the handshake within the per-attempt deadline, trying each once in
    /// order (see [`crate::Client::connect`]).
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
        let endpoints = Endpoints::parse(&options.endpoint)?;
        let inner = connect_pass(options, &endpoints, &endpoints.list()[0]).await?;
        Ok(AsyncClient {
            link: Arc::new(Link {
                options: options.clone(),
                endpoints: Mutex::new(endpoints),
                current: Mutex::new(inner),
            }),
        })
    }

    fn current(&self) -> Arc<Inner> {
        self.link.current.lock().expect("link lock").clone()
    }

    fn install(&self, inner: Arc<Inner>) {
        *self.link.current.lock().expect("link lock") = inner;
    }

    fn endpoint_after(&self, failed: &str) -> String {
        self.link
            .endpoints
            .lock()
            .expect("endpoints lock")
            .after(failed)
    }

    /// The endpoint of the current connection.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.current().endpoint.clone()
    }

    /// The endpoints this client may fail over to, in order.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.link
            .endpoints
            .lock()
            .expect("endpoints lock")
            .list()
            .to_vec()
    }

    /// The connection an attempt runs on, connecting within
    /// `deadline_ms` if it needs a new one.
    async fn connection(&self, want: Want, deadline_ms: u64) -> Result<Arc<Inner>, ClientError> {
        let endpoint = match want {
            Want::Current => {
                let current = self.current();
                if !current.is_closed() {
                    return Ok(current);
                }
                self.endpoint_after(&current.endpoint)
            }
            Want::After(failed) => {
                let current = self.current();
                if !current.is_closed() && current.endpoint != failed {
                    return Ok(current);
                }
                self.endpoint_after(&failed)
            }
            Want::Endpoint(endpoint) => endpoint,
        };
        let inner = open(&self.link.options, &endpoint, deadline_ms).await?;
        self.install(inner.clone());
        Ok(inner)
    }

    /// Runs `attempt` until it succeeds, fails for good, or `deadline_ms`
    /// passes, following the leader across the endpoint list as
    /// [`crate::failover`] describes.
    async fn follow<T, F, Fut>(&self, deadline_ms: u64, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<Inner>, Attempt) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.follow_within(deadline_ms, self.link.options.attempt_timeout, attempt)
            .await
    }

    /// [`AsyncClient::follow`] with another per-attempt deadline.
    async fn follow_within<T, F, Fut>(
        &self,
        deadline_ms: u64,
        budget: Duration,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Arc<Inner>, Attempt) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        if boottime_ms() >= deadline_ms {
            return Err(ClientError::Timeout {
                endpoint: self.current().endpoint.clone(),
                timeout_ms: 0,
            });
        }
        let count = self.link.endpoints.lock().expect("endpoints lock").len();
        let mut retry = Retry::new(deadline_ms, budget, count);
        let mut want = Want::Current;
        loop {
            let connect_deadline = retry.attempt_deadline_ms(boottime_ms());
            let target = match &want {
                Want::Endpoint(e) | Want::After(e) => e.clone(),
                Want::Current => self.current().endpoint.clone(),
            };
            let (error, endpoint, used) = match self.connection(want, connect_deadline).await {
                Err(e) => {
                    let failed = match &e {
                        ClientError::Io { endpoint, .. }
                        | ClientError::Timeout { endpoint, .. } => endpoint.clone(),
                        _ => target,
                    };
                    (e, failed, None)
                }
                Ok(inner) => match attempt(inner.clone(), retry.attempt(boottime_ms())).await {
                    Ok(value) => return Ok(value),
                    Err(e) => (e, inner.endpoint.clone(), Some(inner)),
                },
            };
            let next = retry.handle_error(boottime_ms(), &error, &endpoint, used.is_some());
            if let Some(inner) = &used {
                if connection_is_dead(&error) || matches!(next, Next::OtherNode { .. }) {
                    // Every call on a hung or broken connection moves on
                    // with this one. (A call that gives up at its own
                    // deadline leaves a live connection open, so that a
                    // late grant is still released.)
                    inner.close(format!("given up on {}: {error}", inner.endpoint));
                }
            }
            want = match next {
                Next::GiveUp => return Err(error),
                Next::Again { .. } if used.is_some() => Want::Current,
                Next::Again { .. } | Next::OtherNode { .. } => Want::After(endpoint),
                Next::Connect { ref endpoint, .. } => Want::Endpoint(endpoint.clone()),
            };
            tokio::time::sleep(Duration::from_millis(next.pause_ms())).await;
        }
    }

    fn call_deadline(&self, extra: Duration) -> u64 {
        boottime_ms() + millis(self.link.options.request_timeout + extra)
    }
}

/// One pass over the endpoint list, starting at `first`, until a node
/// completes the handshake (each within the per-attempt deadline).
async fn connect_pass(
    options: &ConnectOptions,
    endpoints: &Endpoints,
    first: &str,
) -> Result<Arc<Inner>, ClientError> {
    let mut endpoints = endpoints.clone();
    let mut endpoint = first.to_owned();
    let budget = millis(options.attempt_timeout.min(options.request_timeout)).max(1);
    let mut last = None;
    for _ in 0..endpoints.len() {
        match open(options, &endpoint, boottime_ms() + budget).await {
            Ok(inner) => return Ok(inner),
            Err(e) if is_node_failure(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
        endpoint = endpoints.after(&endpoint);
    }
    Err(last.expect("the list has at least one endpoint"))
}

/// Connects to `endpoint` and completes the handshake by `deadline_ms`.
async fn open(
    options: &ConnectOptions,
    endpoint: &str,
    deadline_ms: u64,
) -> Result<Arc<Inner>, ClientError> {
    let budget = Duration::from_millis(deadline_ms.saturating_sub(boottime_ms()));
    let timed_out = || ClientError::Timeout {
        endpoint: endpoint.to_owned(),
        timeout_ms: millis(budget),
    };
    let io = |source| ClientError::Io {
        endpoint: endpoint.to_owned(),
        source,
    };
    let stream = tokio::time::timeout(
        options.connect_timeout.min(budget),
        TcpStream::connect(endpoint),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let (read, write) = stream.into_split();
    let (frames, frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let inner = Arc::new(Inner {
        endpoint: endpoint.to_owned(),
        frames,
        pending: Mutex::new(Pending::default()),
        next_id: AtomicU64::new(1),
        welcome: OnceLock::new(),
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
    let mut response = call_until(&inner, &hello, deadline_ms).await?;
    loop {
        match handshake.on_response(response)? {
            Step::Send(request) => {
                response = call_until(&inner, &request, deadline_ms).await?;
            }
            Step::Done(welcome) => {
                let _ = inner.welcome.set(welcome);
                return Ok(inner);
            }
        }
    }
}

impl AsyncClient {
    /// What the server said at the handshake (the node of the current
    /// connection).
    #[must_use]
    pub fn welcome(&self) -> Option<Welcome> {
        self.current().welcome.get().cloned()
    }

    /// The current connection, reconnecting (one pass over the list) if
    /// it was lost.
    async fn connected(&self) -> Result<Arc<Inner>, ClientError> {
        let current = self.current();
        if !current.is_closed() {
            return Ok(current);
        }
        let first = self.endpoint_after(&current.endpoint);
        let endpoints = self.link.endpoints.lock().expect("endpoints lock").clone();
        let inner = connect_pass(&self.link.options, &endpoints, &first).await?;
        self.install(inner.clone());
        Ok(inner)
    }

    /// Sends one request and waits up to the request timeout for its
    /// answer, on the current connection (reconnecting first if it was
    /// lost; no failover: see [`AsyncClient::acquire`] and friends).
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.call_within(request, self.link.options.request_timeout)
            .await
    }

    /// Sends one request and waits up to `timeout`, like
    /// [`AsyncClient::call`].
    pub async fn call_within(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let inner = self.connected().await?;
        call_until(&inner, request, boottime_ms() + millis(timeout)).await
    }
}

/// Sends one request on `inner` and waits until `deadline_ms` for its
/// answer.
async fn call_until(
    inner: &Arc<Inner>,
    request: &Request,
    deadline_ms: u64,
) -> Result<Response, ClientError> {
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
    let timeout = Duration::from_millis(deadline_ms.saturating_sub(boottime_ms()));
    let result = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => {
            guard.answered = true;
            result
        }
        Ok(Err(_)) => Err(inner.connection_error("connection closed before the answer")),
        Err(_) => Err(ClientError::Timeout {
            endpoint: inner.endpoint.clone(),
            timeout_ms: millis(timeout),
        }),
    };
    drop(guard);
    result
}

/// Sends a request the server may hold for long (a waiting acquire, a
/// watch) and waits until `deadline_ms` for its answer. Whenever
/// `probe_ms` passes without the answer, a `Status` request must be
/// answered within `probe_ms`; if it is not, the node is taken for hung,
/// the connection is closed and the call ends with a timeout.
async fn call_probed(
    inner: &Arc<Inner>,
    request: &Request,
    deadline_ms: u64,
    probe_ms: u64,
) -> Result<Response, ClientError> {
    let call = call_until(inner, request, deadline_ms);
    tokio::pin!(call);
    loop {
        let quiet = tokio::time::sleep(Duration::from_millis(probe_ms));
        tokio::select! {
            result = &mut call => return result,
            () = quiet => {}
        }
        let probe = call_until(inner, &Request::Status, boottime_ms() + probe_ms);
        tokio::select! {
            result = &mut call => return result,
            probed = probe => {
                if let Err(e) = probed {
                    inner.close(format!("no answer to a liveness probe: {e}"));
                    return Err(ClientError::Timeout {
                        endpoint: inner.endpoint.clone(),
                        timeout_ms: probe_ms,
                    });
                }
            }
        }
    }
}

impl AsyncClient {
    /// Acquires `resource`, following the leader until the request timeout
    /// plus `options.wait` has passed. Retries keep the holder id, and a
    /// waiting acquire is queued again at a new leader with the wait that
    /// is left, as [`crate::Client::acquire`] describes.
    pub async fn acquire(
        &self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        acquire_request(resource, &options)?;
        let wait_end_ms = boottime_ms() + millis(options.wait);
        let deadline_ms = self.call_deadline(options.wait);
        self.follow(deadline_ms, |inner, attempt| async move {
            let send_ms = boottime_ms();
            let wait_ms = Attempt::wait_left_ms(send_ms, wait_end_ms);
            let request = acquire_request(
                resource,
                &AcquireOptions {
                    wait: Duration::from_millis(u64::from(wait_ms)),
                    ..options
                },
            )?;
            let due_ms = attempt.answer_due_ms(send_ms, wait_ms);
            let response = if wait_ms > 0 {
                call_probed(&inner, &request, due_ms, attempt.budget_ms).await?
            } else {
                call_until(&inner, &request, due_ms).await?
            };
            acquire_outcome(resource, &options, send_ms, inner.drift_ppm(), response)
        })
        .await
    }

    /// Renews `token` on `resource` for `ttl` from now, following the
    /// leader until the request timeout has passed. Keeping a lease alive,
    /// prefer [`AsyncClient::renew_lease`].
    pub async fn renew(
        &self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.renew_until(resource, token, ttl, holder, deadline_ms)
            .await
    }

    /// Renews `lease` for its ttl, following the leader until the lease's
    /// own `valid_until_ms` and never waiting past it (see
    /// [`crate::Client::renew_lease`]).
    pub async fn renew_lease(&self, lease: &Lease) -> Result<TokenOutcome, ClientError> {
        self.renew_until(
            &lease.resource,
            lease.token,
            Duration::from_millis(u64::from(lease.ttl_ms)),
            lease.holder,
            lease.valid_until_ms,
        )
        .await
    }

    async fn renew_until(
        &self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
        deadline_ms: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let ttl_ms = millis_u32(ttl, "ttl")?;
        let budget = renew_attempt(self.link.options.attempt_timeout, ttl);
        self.follow_within(deadline_ms, budget, |inner, attempt| async move {
            let send_ms = boottime_ms();
            let request = Request::Renew {
                resource: resource.into(),
                token,
                ttl_ms,
            };
            let response = call_until(&inner, &request, attempt.deadline_ms).await?;
            token_outcome(resource, holder, send_ms, inner.drift_ppm(), response)
        })
        .await
    }

    /// Releases `token` on `resource`, following the leader. A retried
    /// release that finds the lease already gone reports `Released`, as
    /// [`crate::Client::release`] describes.
    pub async fn release(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |inner, attempt| async move {
            let request = Request::Release {
                resource: resource.into(),
                token,
            };
            let response = call_until(&inner, &request, attempt.deadline_ms).await?;
            let outcome = token_outcome(resource, 0, 0, 0, response)?;
            Ok(release_outcome(token, attempt.maybe_delivered, outcome))
        })
        .await
    }

    /// Asks the leader whether `token` is the current lease on `resource`.
    pub async fn check(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |inner, attempt| async move {
            let request = Request::Check {
                resource: resource.into(),
                token,
            };
            let response = call_until(&inner, &request, attempt.deadline_ms).await?;
            token_outcome(resource, 0, 0, 0, response)
        })
        .await
    }

    /// Waits up to `wait` (at most 60 s) for a token above `after` to be
    /// issued for `resource`, following the leader, as
    /// [`crate::Client::watch`] does.
    pub async fn watch(
        &self,
        resource: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Watched, ClientError> {
        let wait_end_ms = watch_end_ms(resource, wait)?;
        let deadline_ms = self.call_deadline(wait);
        self.follow(deadline_ms, |inner, attempt| async move {
            let send_ms = boottime_ms();
            let wait_ms = Attempt::wait_left_ms(send_ms, wait_end_ms);
            let request = Request::Watch {
                resource: resource.into(),
                after,
                wait_ms,
            };
            let due_ms = attempt.answer_due_ms(send_ms, wait_ms);
            let response = if wait_ms > 0 {
                call_probed(&inner, &request, due_ms, attempt.budget_ms).await?
            } else {
                call_until(&inner, &request, due_ms).await?
            };
            watched(response)
        })
        .await
    }

    /// Follows `resource`'s leases as a [`futures_core::Stream`] of grants,
    /// releases and expiries of tokens above `after`, across leader
    /// changes (see [`crate::watch`]). An error item (no leader reachable
    /// within the request timeout) does not end the stream: the next item
    /// continues the watch. Dropping the stream stops it.
    #[must_use]
    pub fn watch_stream(&self, resource: &str, after: u64) -> WatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let client = self.clone();
        let resource = resource.to_owned();
        let task = tokio::spawn(async move {
            let mut tracker = WatchTracker::new(after);
            loop {
                let result = match tracker.step(boottime_ms()) {
                    WatchStep::Watch { after, wait_ms } => client
                        .watch(&resource, after, Duration::from_millis(u64::from(wait_ms)))
                        .await
                        .map(|watched| tracker.on_watched(boottime_ms(), watched)),
                    WatchStep::Check { token } => client
                        .check(&resource, token)
                        .await
                        .map(|outcome| tracker.on_check(boottime_ms(), &outcome)),
                };
                match result {
                    Ok(events) => {
                        for event in events {
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        // The calls already retried until their deadline.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        WatchStream { rx, task }
    }

    /// One page of the caller's tenant's live leases, from the leader, as
    /// [`crate::Client::list`] describes.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<ListPage, ClientError> {
        let request = list_request(prefix, after, limit)?;
        let deadline_ms = self.call_deadline(Duration::ZERO);
        let request = &request;
        self.follow(deadline_ms, |inner, attempt| async move {
            list_page(call_until(&inner, request, attempt.deadline_ms).await?)
        })
        .await
    }

    /// Status of the node this client is connected to (another endpoint of
    /// the list if that one fails).
    pub async fn status(&self) -> Result<StatusInfo, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |inner, attempt| async move {
            match call_until(&inner, &Request::Status, attempt.deadline_ms).await? {
                Response::Status(status) => Ok(status),
                other => Err(unexpected(other)),
            }
        })
        .await
    }
}

/// The `Stream` of [`AsyncClient::watch_stream`]. Dropping it stops the
/// watch.
#[derive(Debug)]
pub struct WatchStream {
    rx: tokio::sync::mpsc::Receiver<Result<WatchEvent, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl futures_core::Stream for WatchStream {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl WatchStream {
    /// The next change (`None` only if the watch task ended).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
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

//! A blocking client on std sockets. Requests can be pipelined: submit
//! several, then wait for their answers in any order.
//!
//! The lease calls ([`Client::acquire`], [`Client::renew`],
//! [`Client::renew_lease`], [`Client::release`], [`Client::check`],
//! [`Client::watch`], [`Client::status`]) follow the leader across the
//! endpoint list until their own deadline, as [`crate::failover`]
//! describes: the client reconnects by itself when its node fails or
//! redirects. The low-level calls ([`Client::submit`], [`Client::wait`],
//! [`Client::call`], [`Client::pipeline`]) use the current connection
//! only, since a raw request may not be safe to repeat; `submit`
//! reconnects first if the last connection was lost.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use palisade_proto::frame::padded_len;
use palisade_proto::{
    decode_response, encode_request, Decoded, FrameBuf, FrameKind, ListedLease, RecvBuf, Request,
    Response, Welcome, HEADER_LEN, LIST_LIMIT_MAX,
};

use crate::failover::{
    connection_is_dead, is_node_failure, millis, renew_attempt, split_endpoints, Attempt,
    Endpoints, Next, Retry, ATTEMPT_TIMEOUT_DEFAULT,
};
use crate::handshake::{Handshake, Identity, Step};
use crate::lease::{granted_valid_until, valid_until, AcquireOutcome, Lease, TokenOutcome};
use crate::watch::{WatchEvent, WatchStep, WatchTracker};
use crate::ClientError;
use palisade_host::clock::boottime_ms;

/// Largest response payload the client accepts.
pub const RESPONSE_PAYLOAD_MAX: u32 = 1 << 16;
/// Largest request payload the client sends.
const REQUEST_PAYLOAD_MAX: u32 = 1 << 14;
/// Shortest socket timeout (a zero timeout means "block" to std).
const SOCKET_TIMEOUT_MIN: Duration = Duration::from_millis(1);

/// Where and how to connect.
///
/// `endpoint` is one `host:port` or a comma-separated list of them (the
/// nodes of a cluster, in the order to try them). Every node redirects to
/// its leader, so any subset that contains a live node will do; the
/// client also follows redirects to leaders outside the list.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of a node, or a comma-separated list of nodes.
    pub endpoint: String,
    /// Who we are.
    pub identity: Identity,
    /// Time allowed for each TCP connect (also bounded by
    /// `attempt_timeout`, which covers connect and handshake together).
    pub connect_timeout: Duration,
    /// Time allowed for a call, across every node it tries (waiting
    /// acquires and watches get their wait added). Renewals through
    /// [`Client::renew_lease`] and the keepalive helpers use the lease's
    /// validity instead.
    pub request_timeout: Duration,
    /// Time allowed for one attempt at one node: a connect with its
    /// handshake, or one request's answer. A node that misses it counts as
    /// failed and the call moves to the next endpoint, so a node that
    /// accepts connections but never answers costs a caller about this
    /// long, not its whole `request_timeout`. Keep it well below
    /// `request_timeout` and above the cluster's commit latency. Default
    /// [`ATTEMPT_TIMEOUT_DEFAULT`] (1 s).
    pub attempt_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `endpoint` (one `host:port` or a comma-separated list)
    /// as tenant `tenant` without a secret.
    #[must_use]
    pub fn new(endpoint: impl Into<String>, tenant: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            endpoint: endpoint.into(),
            identity: Identity {
                tenant: tenant.into(),
                secret: None,
                client_name: format!("palisade-client/{}", env!("CARGO_PKG_VERSION")),
            },
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
        }
    }

    /// Options for several nodes, tried in this order.
    #[must_use]
    pub fn for_endpoints<I, S>(endpoints: I, tenant: impl Into<String>) -> ConnectOptions
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().trim().to_owned())
            .collect();
        ConnectOptions::new(list.join(","), tenant)
    }

    /// The endpoints `endpoint` names, in order.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        split_endpoints(&self.endpoint)
    }

    /// The same options with a tenant secret.
    #[must_use]
    pub fn with_secret(mut self, secret: Vec<u8>) -> ConnectOptions {
        self.identity.secret = Some(secret);
        self
    }

    /// The same options with another per-attempt deadline.
    #[must_use]
    pub fn with_attempt_timeout(mut self, attempt_timeout: Duration) -> ConnectOptions {
        self.attempt_timeout = attempt_timeout;
        self
    }
}

/// Parameters of an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    /// Lease duration.
    pub ttl: Duration,
    /// Holder id (non-zero); acquiring again with it while holding returns
    /// the same token.
    pub holder: u64,
    /// Keep the resource ungrantable this long after an unreleased expiry.
    pub lock_delay: Duration,
    /// Queue up to this long if busy (zero: answer at once).
    pub wait: Duration,
}

impl AcquireOptions {
    /// An acquire for `ttl` with a fresh random holder id, no wait.
    #[must_use]
    pub fn new(ttl: Duration) -> AcquireOptions {
        AcquireOptions {
            ttl,
            holder: random_holder(),
            lock_delay: Duration::ZERO,
            wait: Duration::ZERO,
        }
    }
}

/// A random non-zero holder id.
#[must_use]
pub fn random_holder() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

pub(crate) fn millis_u32(d: Duration, what: &str) -> Result<u32, ClientError> {
    u32::try_from(d.as_millis())
        .map_err(|_| ClientError::InvalidArgument(format!("{what} is too long")))
}

/// The answer to [`Client::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// Token of the current unexpired lease, 0 if none.
    pub current_token: u64,
    /// Highest token the leader issued for the resource, 0 if none.
    pub last_token: u64,
    /// Whether `last_token` passed `after` (false: the wait ran out).
    pub changed: bool,
}

/// One page of [`Client::list`]: live leases of the caller's tenant in
/// resource-name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The leases (resource, token, remaining ms, waiters queued).
    pub leases: Vec<ListedLease>,
    /// Pass as `after` for the next page.
    pub next_after: String,
    /// Whether another page may follow.
    pub more: bool,
}

/// Checks a watch's arguments; returns when its wait ends.
pub(crate) fn watch_end_ms(resource: &str, wait: Duration) -> Result<u64, ClientError> {
    palisade_proto::validate_resource(resource)
        .map_err(|why| ClientError::InvalidArgument(why.into()))?;
    millis_u32(wait, "watch wait")?;
    Ok(boottime_ms() + millis(wait))
}

pub(crate) fn watched(response: Response) -> Result<Watched, ClientError> {
    match response {
        Response::Watched {
            current_token,
            last_token,
            changed,
        } => Ok(Watched {
            current_token,
            last_token,
            changed,
        }),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn list_request(prefix: &str, after: &str, limit: u32) -> Result<Request, ClientError> {
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "list limit {limit} is outside 1..={LIST_LIMIT_MAX}"
        )));
    }
    Ok(Request::List {
        prefix: prefix.into(),
        after: after.into(),
        limit,
    })
}

pub(crate) fn list_page(response: Response) -> Result<ListPage, ClientError> {
    match response {
        Response::Listed {
            leases,
            next_after,
            more,
        } => Ok(ListPage {
            leases,
            next_after,
            more,
        }),
        other => Err(unexpected(other)),
    }
}

/// The blocking iterator of [`Client::watch_events`].
#[derive(Debug)]
pub struct WatchEvents<'a> {
    client: &'a mut Client,
    resource: String,
    tracker: WatchTracker,
    queue: std::collections::VecDeque<WatchEvent>,
}

impl Iterator for WatchEvents<'_> {
    type Item = Result<WatchEvent, ClientError>;

    /// The next change; blocks until there is one. An error (no leader
    /// reachable within the request timeout) leaves the watch where it
    /// was: calling `next` again continues it.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            match self.tracker.step(boottime_ms()) {
                WatchStep::Watch { after, wait_ms } => {
                    let wait = Duration::from_millis(u64::from(wait_ms));
                    match self.client.watch(&self.resource, after, wait) {
                        Ok(watched) => self
                            .queue
                            .extend(self.tracker.on_watched(boottime_ms(), watched)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                WatchStep::Check { token } => match self.client.check(&self.resource, token) {
                    Ok(outcome) => self
                        .queue
                        .extend(self.tracker.on_check(boottime_ms(), &outcome)),
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

/// A client of a Palisade node or cluster.
///
/// Holds at most one connection, to the node it last reached. Lease calls
/// follow the leader: on a redirect, a failed node or a missed per-attempt
/// deadline the client connects elsewhere by itself (see the module docs
/// and [`crate::failover`]).
#[derive(Debug)]
pub struct Client {
    conn: Option<Conn>,
    endpoints: Endpoints,
    /// Endpoint of the current (or the last) connection.
    endpoint: String,
    welcome: Welcome,
    request_timeout: Duration,
    attempt_timeout: Duration,
    options: ConnectOptions,
}

/// One connection to one node, after its handshake.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    endpoint: String,
    rx: RecvBuf,
    tx: FrameBuf,
    next_id: u64,
    early: HashMap<u64, Response>,
    /// Acquires in flight: request id to resource, so that a grant whose
    /// caller stopped waiting can be released.
    acquires: HashMap<u64, String>,
    /// Requests whose caller stopped waiting (timed out) and liveness
    /// probes: their answers are dropped, and a late grant is released at
    /// once.
    abandoned: HashMap<u64, Option<String>>,
    welcome: Welcome,
}

fn no_welcome() -> Welcome {
    Welcome {
        node_id: 0,
        epoch: 0,
        max_ttl_ms: 0,
        min_ttl_ms: 0,
        lock_delay_max_ms: 0,
        max_drift_ppm: 0,
        server_signature: None,
    }
}

fn timeout_error(endpoint: &str, timeout_ms: u64) -> ClientError {
    ClientError::Timeout {
        endpoint: endpoint.to_owned(),
        timeout_ms,
    }
}

impl Conn {
    /// Connects to `endpoint` and completes the handshake by `deadline_ms`.
    fn open(
        endpoint: &str,
        options: &ConnectOptions,
        deadline_ms: u64,
    ) -> Result<Conn, ClientError> {
        let start_ms = boottime_ms();
        let io = |source| ClientError::Io {
            endpoint: endpoint.to_owned(),
            source,
        };
        let addrs: Vec<_> = endpoint.to_socket_addrs().map_err(io)?.collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            let left_ms = deadline_ms.saturating_sub(boottime_ms());
            if left_ms == 0 {
                return Err(timeout_error(
                    endpoint,
                    deadline_ms - start_ms.min(deadline_ms),
                ));
            }
            let timeout = options.connect_timeout.min(Duration::from_millis(left_ms));
            match TcpStream::connect_timeout(&addr, timeout.max(SOCKET_TIMEOUT_MIN)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream =
            stream.ok_or_else(|| {
                io(last.unwrap_or_else(|| {
                    std::io::Error::other("the endpoint resolved to no address")
                }))
            })?;
        stream.set_nodelay(true).map_err(io)?;
        // A stopped peer whose receive window filled up must not block a
        // write for ever: that is a failed node too.
        stream
            .set_write_timeout(Some(options.attempt_timeout.max(SOCKET_TIMEOUT_MIN)))
            .map_err(io)?;
        let frame_max = HEADER_LEN + padded_len(RESPONSE_PAYLOAD_MAX as usize);
        let mut conn = Conn {
            stream,
            endpoint: endpoint.to_owned(),
            rx: RecvBuf::new(4096, frame_max),
            tx: FrameBuf::new(),
            next_id: 1,
            early: HashMap::new(),
            acquires: HashMap::new(),
            abandoned: HashMap::new(),
            welcome: no_welcome(),
        };
        let (mut handshake, hello) = Handshake::start(options.identity.clone());
        let id = conn.submit(&hello)?;
        let mut response = conn.wait(id, deadline_ms, None)?;
        loop {
            match handshake.on_response(response)? {
                Step::Send(request) => {
                    let id = conn.submit(&request)?;
                    response = conn.wait(id, deadline_ms, None)?;
                }
                Step::Done(welcome) => {
                    conn.welcome = welcome;
                    return Ok(conn);
                }
            }
        }
    }

    fn io_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    fn submit(&mut self, request: &Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        encode_request(&mut self.tx, id, 0, REQUEST_PAYLOAD_MAX, request)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if let Request::Acquire { resource, .. } = request {
            self.acquires.insert(id, resource.clone());
        }
        Ok(id)
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        if !self.tx.is_empty() {
            let result = self.stream.write_all(&self.tx);
            self.tx.clear();
            result.map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    /// Takes every whole frame out of the receive buffer; returns the
    /// answer to `id` if it came.
    fn drain(&mut self, id: u64) -> Result<Option<Response>, ClientError> {
        while let Decoded::Frame {
            header,
            payload,
            frame_len,
        } = self
            .rx
            .next_frame(RESPONSE_PAYLOAD_MAX)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            if header.kind != FrameKind::Response {
                return Err(ClientError::Protocol("server sent a request frame".into()));
            }
            let response =
                decode_response(payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
            self.rx.consume(frame_len);
            let acquired = self.acquires.remove(&header.request_id);
            if let Some(resource) = self.abandoned.remove(&header.request_id) {
                // Nobody waits for this answer any more. A grant must
                // not stay held by nobody: give it back.
                if let (Response::Granted { token, .. }, Some(resource)) = (&response, resource) {
                    let release = Request::Release {
                        resource,
                        token: *token,
                    };
                    let release_id = self.submit(&release)?;
                    self.abandoned.insert(release_id, None);
                }
                continue;
            }
            if header.request_id == id {
                return Ok(Some(response));
            }
            if let Some(resource) = acquired {
                // Keep it until its caller collects the answer.
                self.acquires.insert(header.request_id, resource);
            }
            if header.request_id == 0 {
                // Connection-level error (limits, timeouts): the server
                // closes after it.
                return Ok(Some(response));
            }
            self.early.insert(header.request_id, response);
        }
        Ok(None)
    }

    /// Waits for the answer to request `id` until `deadline_ms`.
    ///
    /// With `probe_ms`, the request may legitimately stay unanswered for
    /// long (a waiting acquire, a watch): whenever the connection has been
    /// silent for `probe_ms`, a `Status` request goes out, and if nothing
    /// at all arrives within `probe_ms` of it the node is taken for hung
    /// (stopped, or cut off) and the wait ends with a timeout.
    fn wait(
        &mut self,
        id: u64,
        deadline_ms: u64,
        probe_ms: Option<u64>,
    ) -> Result<Response, ClientError> {
        self.flush()?;
        if let Some(response) = self.early.remove(&id) {
            self.acquires.remove(&id);
            return Ok(response);
        }
        let start_ms = boottime_ms();
        let mut heard_ms = start_ms;
        let mut probe_sent_ms: Option<u64> = None;
        loop {
            if let Some(response) = self.drain(id)? {
                // `drain` may have queued the release of a late grant
                // behind this answer: send it now, not at the next call
                // (there may be none). A write error here means the
                // connection is broken; the next call reports it, and
                // this answer is still the caller's.
                let _ = self.flush();
                return Ok(response);
            }
            let now = boottime_ms();
            let mut wake_ms = deadline_ms;
            if let Some(probe_ms) = probe_ms {
                match probe_sent_ms {
                    Some(sent_ms) if now >= sent_ms + probe_ms => {
                        self.abandon(id);
                        return Err(timeout_error(&self.endpoint, now - start_ms));
                    }
                    Some(sent_ms) => wake_ms = wake_ms.min(sent_ms + probe_ms),
                    None if now >= heard_ms + probe_ms => {
                        let probe = self.submit(&Request::Status)?;
                        self.abandoned.insert(probe, None);
                        probe_sent_ms = Some(now);
                        wake_ms = wake_ms.min(now + probe_ms);
                    }
                    None => wake_ms = wake_ms.min(heard_ms + probe_ms),
                }
            }
            if now >= deadline_ms {
                self.abandon(id);
                return Err(timeout_error(
                    &self.endpoint,
                    deadline_ms.saturating_sub(start_ms),
                ));
            }
            self.flush()?;
            let read_timeout = Duration::from_millis(wake_ms.saturating_sub(now));
            self.stream
                .set_read_timeout(Some(read_timeout.max(SOCKET_TIMEOUT_MIN)))
                .map_err(|e| self.io_error(e))?;
            let spare = self.rx.spare();
            match self.stream.read(spare) {
                Ok(0) => {
                    return Err(self.io_error(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )))
                }
                Ok(n) => {
                    self.rx.filled(n);
                    heard_ms = boottime_ms();
                    probe_sent_ms = None;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// The caller of `id` stopped waiting: drop its answer when it comes,
    /// and give a late grant back.
    fn abandon(&mut self, id: u64) {
        let resource = self.acquires.remove(&id);
        self.abandoned.insert(id, resource);
    }

    /// Sends `request` and waits for its answer until `deadline_ms`.
    fn call(&mut self, request: &Request, deadline_ms: u64) -> Result<Response, ClientError> {
        let id = self.submit(request)?;
        self.wait(id, deadline_ms, None)
    }
}

impl Client {
    /// Connects to the first endpoint of `options.endpoint` that completes
    /// the handshake within the per-attempt deadline, trying each once in
    /// order. A node that cannot be reached, breaks the connection or does
    /// not answer in time is skipped; any other refusal (unknown tenant,
    /// failed authentication) is an answer and ends the connect.
    pub fn connect(options: &ConnectOptions) -> Result<Client, ClientError> {
        let endpoints = Endpoints::parse(&options.endpoint)?;
        let mut client = Client {
            conn: None,
            endpoint: endpoints.list()[0].clone(),
            endpoints,
            welcome: no_welcome(),
            request_timeout: options.request_timeout,
            attempt_timeout: options.attempt_timeout,
            options: options.clone(),
        };
        client.connect_pass(None)?;
        Ok(client)
    }

    /// One pass over the endpoint list, starting at `first` (or at the
    /// list's head), until a node completes the handshake.
    fn connect_pass(&mut self, first: Option<String>) -> Result<(), ClientError> {
        let mut endpoint = first.unwrap_or_else(|| self.endpoints.list()[0].clone());
        let budget = self.attempt_timeout.min(self.request_timeout);
        let mut last = None;
        for _ in 0..self.endpoints.len() {
            let deadline_ms = boottime_ms() + millis(budget).max(1);
            match Conn::open(&endpoint, &self.options, deadline_ms) {
                Ok(conn) => {
                    self.install(conn);
                    return Ok(());
                }
                Err(e) if is_node_failure(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
            endpoint = self.endpoints.after(&endpoint);
        }
        Err(last.expect("the list has at least one endpoint"))
    }

    fn install(&mut self, conn: Conn) {
        self.endpoint = conn.endpoint.clone();
        self.welcome = conn.welcome.clone();
        self.conn = Some(conn);
    }

    /// The current connection, reconnecting (one pass over the list,
    /// starting after the endpoint that failed) if it was lost.
    fn connected(&mut self) -> Result<&mut Conn, ClientError> {
        if self.conn.is_none() {
            let first = self.endpoints.after(&self.endpoint.clone());
            self.connect_pass(Some(first))?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Drops the connection if `result` says it is no use any more.
    fn keep_if_alive<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &result {
            if connection_is_dead(e) {
                self.conn = None;
            }
        }
        result
    }

    /// What the server said at the handshake (epoch, ttl bounds, drift):
    /// the node of the current, or the last, connection.
    #[must_use]
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Time allowed for a call.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Changes the time allowed for a call.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Time allowed for one attempt at one node.
    #[must_use]
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// Changes the time allowed for one attempt at one node.
    pub fn set_attempt_timeout(&mut self, timeout: Duration) {
        self.attempt_timeout = timeout;
        self.options.attempt_timeout = timeout;
    }

    /// The endpoint this client talks to (or last talked to, while it has
    /// no connection).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The endpoints this client may fail over to, in order.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        self.endpoints.list()
    }

    /// Whether the client holds a connection now (it reconnects by itself
    /// when it needs one).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Sends a request without waiting; returns its id for [`Client::wait`].
    /// Several submits in a row travel in one write. Reconnects first if
    /// the last connection was lost.
    pub fn submit(&mut self, request: &Request) -> Result<u64, ClientError> {
        self.connected()?.submit(request)
    }

    /// Writes every submitted request.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let result = conn.flush();
        self.keep_if_alive(result)
    }

    /// Waits for the answer to request `id` within `timeout`, on the
    /// connection it was submitted on. Does not fail over: an error means
    /// the answer is lost (the client reconnects at the next call).
    pub fn wait(&mut self, id: u64, timeout: Duration) -> Result<Response, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Io {
                endpoint: self.endpoint.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection this request was sent on is gone",
                ),
            });
        };
        let result = conn.wait(id, boottime_ms() + millis(timeout), None);
        self.keep_if_alive(result)
    }

    /// Sends one request and waits for its answer, on the current
    /// connection (no failover: see [`Client::acquire`] and friends).
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = self.submit(request)?;
        self.wait(id, self.request_timeout)
    }

    /// Sends all `requests` in one write, then collects their answers in
    /// order.
    pub fn pipeline(&mut self, requests: &[Request]) -> Result<Vec<Response>, ClientError> {
        let ids = requests
            .iter()
            .map(|r| self.submit(r))
            .collect::<Result<Vec<_>, _>>()?;
        ids.into_iter()
            .map(|id| self.wait(id, self.request_timeout))
            .collect()
    }

    /// Runs `attempt` until it succeeds, fails for good, or `deadline_ms`
    /// passes, following the leader across the endpoint list as
    /// [`crate::failover`] describes. Each attempt runs on a connected node
    /// and must respect the [`Attempt`] it is given.
    fn follow<T>(
        &mut self,
        deadline_ms: u64,
        attempt: impl FnMut(&mut Conn, Attempt) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.follow_within(deadline_ms, self.attempt_timeout, attempt)
    }

    /// [`Client::follow`] with another per-attempt deadline.
    fn follow_within<T>(
        &mut self,
        deadline_ms: u64,
        budget: Duration,
        mut attempt: impl FnMut(&mut Conn, Attempt) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if boottime_ms() >= deadline_ms {
            return Err(timeout_error(&self.endpoint, 0));
        }
        let mut retry = Retry::new(deadline_ms, budget, self.endpoints.len());
        let mut target: Option<String> = None;
        loop {
            let (error, endpoint, sent) = if self.conn.is_none() || target.is_some() {
                let endpoint = match target.take() {
                    Some(endpoint) => endpoint,
                    None => self.endpoints.after(&self.endpoint.clone()),
                };
                let deadline = retry.attempt_deadline_ms(boottime_ms());
                match Conn::open(&endpoint, &self.options, deadline) {
                    Ok(conn) => {
                        self.install(conn);
                        continue;
                    }
                    Err(e) => {
                        // Remember it, so that the next endpoint is the
                        // one after it.
                        self.endpoint.clone_from(&endpoint);
                        (e, endpoint, false)
                    }
                }
            } else {
                let conn = self.conn.as_mut().expect("connected");
                match attempt(conn, retry.attempt(boottime_ms())) {
                    Ok(value) => return Ok(value),
                    Err(e) => {
                        let endpoint = conn.endpoint.clone();
                        if connection_is_dead(&e) {
                            self.conn = None;
                        }
                        (e, endpoint, true)
                    }
                }
            };
            let next = retry.handle_error(boottime_ms(), &error, &endpoint, sent);
            match next {
                Next::GiveUp => return Err(error),
                Next::Again { .. } => {}
                Next::Connect { ref endpoint, .. } => target = Some(endpoint.clone()),
                Next::OtherNode { .. } => self.conn = None,
            }
            std::thread::sleep(Duration::from_millis(next.pause_ms()));
        }
    }

    fn call_deadline(&self, extra: Duration) -> u64 {
        boottime_ms() + millis(self.request_timeout + extra)
    }

    /// Acquires `resource`, following the leader until the request timeout
    /// plus `options.wait` has passed.
    ///
    /// Every attempt carries the same holder id, so a grant whose answer
    /// was lost (the node failed after committing it) comes back with the
    /// same token from the next leader. A waiting acquire that loses its
    /// node is queued again at the new leader with the wait that is left
    /// (its place in the old leader's queue is gone); the caller sees only
    /// the final answer. If the caller's deadline passes while the answer
    /// is still awaited on a live connection, a late grant is released at
    /// once; a grant lost with a failed connection expires after its ttl.
    pub fn acquire(
        &mut self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        acquire_request(resource, &options)?;
        let wait_end_ms = boottime_ms() + millis(options.wait);
        let deadline_ms = self.call_deadline(options.wait);
        self.follow(deadline_ms, |conn, attempt| {
            let send_ms = boottime_ms();
            let wait_ms = Attempt::wait_left_ms(send_ms, wait_end_ms);
            let request = acquire_request(
                resource,
                &AcquireOptions {
                    wait: Duration::from_millis(u64::from(wait_ms)),
                    ..options
                },
            )?;
            let id = conn.submit(&request)?;
            let probe_ms = (wait_ms > 0).then_some(attempt.budget_ms);
            let response = conn.wait(id, attempt.answer_due_ms(send_ms, wait_ms), probe_ms)?;
            acquire_outcome(
                resource,
                &options,
                send_ms,
                conn.welcome.max_drift_ppm,
                response,
            )
        })
    }

    /// Renews `token` on `resource` for `ttl` from now, following the
    /// leader until the request timeout has passed. Keeping a lease alive,
    /// prefer [`Client::renew_lease`], which never waits past the lease's
    /// validity.
    pub fn renew(
        &mut self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.renew_until(resource, token, ttl, holder, deadline_ms)
    }

    /// Renews `lease` for its ttl, following the leader (a new leader keeps
    /// the lease and its token) until the lease's own `valid_until_ms`:
    /// past it the lease is lost whatever a late answer would say, so no
    /// attempt is waited on beyond it. `Stale` means the lease is gone.
    pub fn renew_lease(&mut self, lease: &Lease) -> Result<TokenOutcome, ClientError> {
        self.renew_until(
            &lease.resource,
            lease.token,
            Duration::from_millis(u64::from(lease.ttl_ms)),
            lease.holder,
            lease.valid_until_ms,
        )
    }

    fn renew_until(
        &mut self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
        deadline_ms: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let ttl_ms = millis_u32(ttl, "ttl")?;
        let request = Request::Renew {
            resource: resource.into(),
            token,
            ttl_ms,
        };
        let budget = renew_attempt(self.attempt_timeout, ttl);
        self.follow_within(deadline_ms, budget, |conn, attempt| {
            let send_ms = boottime_ms();
            let response = conn.call(&request, attempt.deadline_ms)?;
            token_outcome(
                resource,
                holder,
                send_ms,
                conn.welcome.max_drift_ppm,
                response,
            )
        })
    }

    /// Releases `token` on `resource`, following the leader until the
    /// request timeout has passed.
    ///
    /// A release whose answer was lost may have been carried out. If a
    /// later attempt then finds the lease gone with no newer token issued
    /// (`Stale` with `last_token == token`), this returns
    /// [`TokenOutcome::Released`]: the lease is over and nobody else holds
    /// the resource, whether our first attempt or expiry ended it. A
    /// `Stale` with a newer `last_token` is returned as it is.
    pub fn release(&mut self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let request = Request::Release {
            resource: resource.into(),
            token,
        };
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |conn, attempt| {
            let response = conn.call(&request, attempt.deadline_ms)?;
            let outcome = token_outcome(resource, 0, 0, 0, response)?;
            Ok(release_outcome(token, attempt.maybe_delivered, outcome))
        })
    }

    /// Asks the leader whether `token` is the current lease on `resource`.
    pub fn check(&mut self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let request = Request::Check {
            resource: resource.into(),
            token,
        };
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |conn, attempt| {
            let response = conn.call(&request, attempt.deadline_ms)?;
            token_outcome(resource, 0, 0, 0, response)
        })
    }

    /// Waits up to `wait` (at most 60 s) for a token above `after` to be
    /// issued for `resource`, following the leader (asking a new leader
    /// with the wait that is left). A fencing proxy raises its fence with
    /// the answer.
    pub fn watch(
        &mut self,
        resource: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Watched, ClientError> {
        let wait_end_ms = watch_end_ms(resource, wait)?;
        let deadline_ms = self.call_deadline(wait);
        self.follow(deadline_ms, |conn, attempt| {
            let send_ms = boottime_ms();
            let wait_ms = Attempt::wait_left_ms(send_ms, wait_end_ms);
            let id = conn.submit(&Request::Watch {
                resource: resource.into(),
                after,
                wait_ms,
            })?;
            let probe_ms = (wait_ms > 0).then_some(attempt.budget_ms);
            watched(conn.wait(id, attempt.answer_due_ms(send_ms, wait_ms), probe_ms)?)
        })
    }

    /// Follows `resource`'s leases: an endless iterator of grants,
    /// releases and expiries of tokens above `after` (0: starting with the
    /// lease held now), across leader changes. See [`crate::watch`] for how
    /// releases and expiries are told apart.
    pub fn watch_events(&mut self, resource: &str, after: u64) -> WatchEvents<'_> {
        WatchEvents {
            client: self,
            resource: resource.to_owned(),
            tracker: WatchTracker::new(after),
            queue: std::collections::VecDeque::new(),
        }
    }

    /// One page of the caller's tenant's live leases whose names start with
    /// `prefix` and sort after `after` ("" = from the start), at most
    /// `limit` (1..=1000) of them, from the leader. Walk the table by
    /// passing each page's `next_after` while `more`.
    pub fn list(&mut self, prefix: &str, after: &str, limit: u32) -> Result<ListPage, ClientError> {
        let request = list_request(prefix, after, limit)?;
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |conn, attempt| {
            list_page(conn.call(&request, attempt.deadline_ms)?)
        })
    }

    /// Every live lease of the caller's tenant under `prefix`, fetched in
    /// pages of `page_limit`.
    pub fn list_all(
        &mut self,
        prefix: &str,
        page_limit: u32,
    ) -> Result<Vec<ListedLease>, ClientError> {
        let mut leases = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.list(prefix, &after, page_limit)?;
            leases.extend(page.leases);
            if !page.more {
                return Ok(leases);
            }
            after = page.next_after;
        }
    }

    /// Status of the node this client is connected to (another endpoint of
    /// the list if that one fails).
    pub fn status(&mut self) -> Result<palisade_proto::StatusInfo, ClientError> {
        let deadline_ms = self.call_deadline(Duration::ZERO);
        self.follow(deadline_ms, |conn, attempt| {
            match conn.call(&Request::Status, attempt.deadline_ms)? {
                Response::Status(status) => Ok(status),
                other => Err(unexpected(other)),
            }
        })
    }
}

/// A release's outcome, given whether an earlier attempt may have been
/// carried out: see [`Client::release`].
pub(crate) fn release_outcome(
    token: u64,
    maybe_delivered: bool,
    outcome: TokenOutcome,
) -> TokenOutcome {
    match outcome {
        TokenOutcome::Stale { last_token, .. } if maybe_delivered && last_token == token => {
            TokenOutcome::Released
        }
        other => other,
    }
}

pub(crate) fn acquire_request(
    resource: &str,
    options: &AcquireOptions,
) -> Result<Request, ClientError> {
    palisade_proto::validate_resource(resource)
        .map_err(|why| ClientError::InvalidArgument(why.into()))?;
    if options.holder == 0 {
        return Err(ClientError::InvalidArgument(
            "holder id must not be 0".into(),
        ));
    }
    Ok(Request::Acquire {
        resource: resource.into(),
        holder: options.holder,
        ttl_ms: millis_u32(options.ttl, "ttl")?,
        lock_delay_ms: millis_u32(options.lock_delay, "lock delay")?,
        wait_ms: millis_u32(options.wait, "wait")?,
    })
}

/// The error for a response that is not one of the expected answers: the
/// server's own error, or a protocol violation.
pub(crate) fn unexpected(response: Response) -> ClientError {
    match response {
        Response::Redirect {
            leader_id,
            endpoint,
        } => ClientError::Redirect {
            leader_id,
            endpoint,
        },
        Response::Error {
            code,
            retry_after_ms,
            message,
        } => ClientError::Server {
            code,
            retry_after_ms,
            message,
        },
        other => ClientError::Protocol(format!("unexpected response {other:?}")),
    }
}

pub(crate) fn acquire_outcome(
    resource: &str,
    options: &AcquireOptions,
    send_ms: u64,
    max_drift_ppm: u32,
    response: Response,
) -> Result<AcquireOutcome, ClientError> {
    match response {
        Response::Granted {
            token,
            ttl_ms,
            waited_ms,
        } => Ok(AcquireOutcome::Granted(Lease {
            resource: resource.into(),
            token,
            ttl_ms,
            holder: options.holder,
            // A waited grant started when the server granted it, at least
            // `waited_ms − 1` after our send time (see the function).
            valid_until_ms: granted_valid_until(send_ms, ttl_ms, waited_ms, max_drift_ppm),
            waited_ms,
        })),
        Response::Busy {
            token,
            remaining_ms,
            waiters,
            waited_ms,
        } => Ok(AcquireOutcome::Busy {
            token,
            remaining_ms,
            waiters,
            waited_ms,
        }),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn token_outcome(
    resource: &str,
    holder: u64,
    send_ms: u64,
    max_drift_ppm: u32,
    response: Response,
) -> Result<TokenOutcome, ClientError> {
    match response {
        Response::Renewed { token, ttl_ms } => Ok(TokenOutcome::Renewed(Lease {
            resource: resource.into(),
            token,
            ttl_ms,
            holder,
            valid_until_ms: valid_until(send_ms, ttl_ms, max_drift_ppm),
            waited_ms: 0,
        })),
        Response::Released { .. } => Ok(TokenOutcome::Released),
        Response::Current { remaining_ms, .. } => Ok(TokenOutcome::Current { remaining_ms }),
        Response::Stale {
            current_token,
            last_token,
        } => Ok(TokenOutcome::Stale {
            current_token,
            last_token,
        }),
        other => Err(unexpected(other)),
    }
}

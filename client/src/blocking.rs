//! A blocking client on std sockets. Requests can be pipelined: submit
//! several, then wait for their answers in any order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use palisade_proto::frame::padded_len;
use palisade_proto::{
    decode_response, encode_request, Decoded, FrameBuf, FrameKind, RecvBuf, Request, Response,
    Welcome, HEADER_LEN,
};

use crate::clock::boottime_ms;
use crate::handshake::{Handshake, Identity, Step};
use crate::lease::{valid_until, AcquireOutcome, Lease, TokenOutcome};
use crate::ClientError;

/// Largest response payload the client accepts.
pub const RESPONSE_PAYLOAD_MAX: u32 = 1 << 16;
/// Largest request payload the client sends.
const REQUEST_PAYLOAD_MAX: u32 = 1 << 14;
/// Added to a waiting acquire's `wait` for the client's own timeout.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of a node.
    pub endpoint: String,
    /// Who we are.
    pub identity: Identity,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for each answer (waiting acquires get their wait added).
    pub request_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `endpoint` as tenant `tenant` without a secret.
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
        }
    }

    /// The same options with a tenant secret.
    #[must_use]
    pub fn with_secret(mut self, secret: Vec<u8>) -> ConnectOptions {
        self.identity.secret = Some(secret);
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

/// A connected, authenticated client.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    endpoint: String,
    rx: RecvBuf,
    tx: FrameBuf,
    next_id: u64,
    early: HashMap<u64, Response>,
    /// Acquires in flight: request id to resource, so that a grant whose
    /// caller stopped waiting can be released.
    acquires: HashMap<u64, String>,
    /// Requests whose caller stopped waiting (timed out): their answers are
    /// dropped, and a late grant is released at once.
    abandoned: HashMap<u64, Option<String>>,
    welcome: Welcome,
    request_timeout: Duration,
    options: ConnectOptions,
}

/// Attempts of one call across redirects and leaderless moments.
pub const REDIRECTS_MAX: u32 = 8;
/// First pause when no leader is known; doubles up to 500 ms.
const LEADERLESS_PAUSE_MIN: Duration = Duration::from_millis(25);

impl Client {
    /// Connects and completes the handshake.
    pub fn connect(options: &ConnectOptions) -> Result<Client, ClientError> {
        let io = |source| ClientError::Io {
            endpoint: options.endpoint.clone(),
            source,
        };
        let addrs: Vec<_> = options.endpoint.to_socket_addrs().map_err(io)?.collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, options.connect_timeout) {
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
        let frame_max = HEADER_LEN + padded_len(RESPONSE_PAYLOAD_MAX as usize);
        let mut client = Client {
            stream,
            endpoint: options.endpoint.clone(),
            rx: RecvBuf::new(4096, frame_max),
            tx: FrameBuf::new(),
            next_id: 1,
            early: HashMap::new(),
            acquires: HashMap::new(),
            abandoned: HashMap::new(),
            welcome: Welcome {
                node_id: 0,
                epoch: 0,
                max_ttl_ms: 0,
                min_ttl_ms: 0,
                lock_delay_max_ms: 0,
                max_drift_ppm: 0,
                server_signature: None,
            },
            request_timeout: options.request_timeout,
            options: options.clone(),
        };
        let (mut handshake, hello) = Handshake::start(options.identity.clone());
        let mut response = client.call(&hello)?;
        loop {
            match handshake.on_response(response)? {
                Step::Send(request) => response = client.call(&request)?,
                Step::Done(welcome) => {
                    client.welcome = welcome;
                    return Ok(client);
                }
            }
        }
    }

    /// What the server said at the handshake (epoch, ttl bounds, drift).
    #[must_use]
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Time allowed for each answer.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Changes the time allowed for each answer.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// The endpoint this client talks to.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn io_error(&self, source: std::io::Error) -> ClientError {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout_ms: u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
            };
        }
        ClientError::Io {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// Sends a request without waiting; returns its id for [`Client::wait`].
    /// Several submits in a row travel in one write.
    pub fn submit(&mut self, request: &Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        encode_request(&mut self.tx, id, 0, REQUEST_PAYLOAD_MAX, request)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if let Request::Acquire { resource, .. } = request {
            self.acquires.insert(id, resource.clone());
        }
        Ok(id)
    }

    /// Writes every submitted request.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.tx.is_empty() {
            let result = self.stream.write_all(&self.tx);
            self.tx.clear();
            result.map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    /// Waits for the answer to request `id` within `timeout`.
    pub fn wait(&mut self, id: u64, timeout: Duration) -> Result<Response, ClientError> {
        self.flush()?;
        if let Some(response) = self.early.remove(&id) {
            self.acquires.remove(&id);
            return Ok(response);
        }
        let deadline = boottime_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
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
                    if let (Response::Granted { token, .. }, Some(resource)) = (&response, resource)
                    {
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
                    return Ok(response);
                }
                if let Some(resource) = acquired {
                    // Keep it until its caller collects the answer.
                    self.acquires.insert(header.request_id, resource);
                }
                if header.request_id == 0 {
                    // Connection-level error (limits, timeouts): the server
                    // closes after it.
                    return Ok(response);
                }
                self.early.insert(header.request_id, response);
            }
            let now = boottime_ms();
            if now >= deadline {
                let resource = self.acquires.remove(&id);
                self.abandoned.insert(id, resource);
                return Err(self.io_error(std::io::ErrorKind::TimedOut.into()));
            }
            self.flush()?;
            self.stream
                .set_read_timeout(Some(Duration::from_millis(deadline - now)))
                .map_err(|e| self.io_error(e))?;
            let spare = self.rx.spare();
            match self.stream.read(spare) {
                Ok(0) => {
                    return Err(self.io_error(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )))
                }
                Ok(n) => self.rx.filled(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Sends one request and waits for its answer.
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

    /// Runs `call`, following redirects to the leader (reconnecting to
    /// it) and waiting out moments without one, up to [`REDIRECTS_MAX`]
    /// attempts. Safe because a redirected request was not carried out.
    fn follow_leader<T>(
        &mut self,
        mut call: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut pause = LEADERLESS_PAUSE_MIN;
        let mut attempt = 1;
        loop {
            match call(self) {
                Err(ClientError::Redirect { endpoint, .. }) if attempt < REDIRECTS_MAX => {
                    if endpoint.is_empty() || endpoint == self.endpoint {
                        // An election is under way: give it a moment.
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(500));
                    } else {
                        let mut options = self.options.clone();
                        options.endpoint = endpoint;
                        options.request_timeout = self.request_timeout;
                        *self = Client::connect(&options)?;
                    }
                }
                other => return other,
            }
            attempt += 1;
        }
    }

    /// Acquires `resource`, following the leader.
    pub fn acquire(
        &mut self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        self.follow_leader(|client| client.acquire_here(resource, options))
    }

    fn acquire_here(
        &mut self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        let request = acquire_request(resource, &options)?;
        let send_ms = boottime_ms();
        let id = self.submit(&request)?;
        let response = self.wait(id, self.request_timeout + options.wait + WAIT_MARGIN)?;
        acquire_outcome(
            resource,
            &options,
            send_ms,
            self.welcome.max_drift_ppm,
            response,
        )
    }

    /// Renews `token` on `resource` for `ttl` from now, following the
    /// leader.
    pub fn renew(
        &mut self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        self.follow_leader(|client| client.renew_here(resource, token, ttl, holder))
    }

    fn renew_here(
        &mut self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let ttl_ms = millis_u32(ttl, "ttl")?;
        let send_ms = boottime_ms();
        let response = self.call(&Request::Renew {
            resource: resource.into(),
            token,
            ttl_ms,
        })?;
        token_outcome(
            resource,
            holder,
            send_ms,
            self.welcome.max_drift_ppm,
            response,
        )
    }

    /// Releases `token` on `resource`, following the leader.
    pub fn release(&mut self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        self.follow_leader(|client| {
            let response = client.call(&Request::Release {
                resource: resource.into(),
                token,
            })?;
            token_outcome(resource, 0, 0, 0, response)
        })
    }

    /// Asks the leader whether `token` is the current lease on `resource`.
    pub fn check(&mut self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        self.follow_leader(|client| {
            let response = client.call(&Request::Check {
                resource: resource.into(),
                token,
            })?;
            token_outcome(resource, 0, 0, 0, response)
        })
    }

    /// Waits up to `wait` (at most 60 s) for a token above `after` to be
    /// issued for `resource`, following the leader. A fencing proxy raises
    /// its fence with the answer.
    pub fn watch(
        &mut self,
        resource: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Watched, ClientError> {
        palisade_proto::validate_resource(resource)
            .map_err(|why| ClientError::InvalidArgument(why.into()))?;
        let wait_ms = millis_u32(wait, "watch wait")?;
        self.follow_leader(|client| {
            let id = client.submit(&Request::Watch {
                resource: resource.into(),
                after,
                wait_ms,
            })?;
            match client.wait(id, client.request_timeout + wait + WAIT_MARGIN)? {
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
        })
    }

    /// Node status.
    pub fn status(&mut self) -> Result<palisade_proto::StatusInfo, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
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
            // A waited grant started when the server granted it, which is
            // later than our send time: counting from send time is safe.
            valid_until_ms: valid_until(send_ms, ttl_ms, max_drift_ppm),
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

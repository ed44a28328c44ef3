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
    /// Why the connection is gone, once it is.
    closed: Option<String>,
}

struct Inner {
    endpoint: String,
    writer: tokio::sync::Mutex<(OwnedWriteHalf, FrameBuf)>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    welcome: OnceLock<Welcome>,
    request_timeout: Duration,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.reader.lock().expect("reader lock").take() {
            task.abort();
        }
    }
}

/// A connected, authenticated async client. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

const REQUEST_PAYLOAD_MAX: u32 = 1 << 14;
const WAIT_MARGIN: Duration = Duration::from_secs(5);

impl AsyncClient {
    /// Connects and completes the handshake.
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, ClientError> {
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
        let inner = Arc::new(Inner {
            endpoint: options.endpoint.clone(),
            writer: tokio::sync::Mutex::new((write, FrameBuf::new())),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            welcome: OnceLock::new(),
            request_timeout: options.request_timeout,
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_loop(Arc::downgrade(&inner), read));
        *inner.reader.lock().expect("reader lock") = Some(task);
        let client = AsyncClient { inner };
        let (mut handshake, hello) = Handshake::start(options.identity.clone());
        let mut response = client.call(&hello).await?;
        loop {
            match handshake.on_response(response)? {
                Step::Send(request) => response = client.call(&request).await?,
                Step::Done(welcome) => {
                    let _ = client.inner.welcome.set(welcome);
                    return Ok(client);
                }
            }
        }
    }

    /// What the server said at the handshake.
    #[must_use]
    pub fn welcome(&self) -> Option<&Welcome> {
        self.inner.welcome.get()
    }

    fn drift_ppm(&self) -> u32 {
        self.welcome().map_or(0, |w| w.max_drift_ppm)
    }

    /// Sends one request and waits up to the request timeout for its answer.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.call_within(request, self.inner.request_timeout).await
    }

    /// Sends one request and waits up to `timeout`.
    pub async fn call_within(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            if let Some(why) = &pending.closed {
                return Err(ClientError::Io {
                    endpoint: self.inner.endpoint.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotConnected, why.clone()),
                });
            }
            pending.waiting.insert(id, tx);
        }
        let written = {
            let mut guard = self.inner.writer.lock().await;
            let (write, buf) = &mut *guard;
            buf.clear();
            match encode_request(buf, id, 0, REQUEST_PAYLOAD_MAX, request) {
                Ok(_) => write
                    .write_all(buf)
                    .await
                    .map_err(|source| ClientError::Io {
                        endpoint: self.inner.endpoint.clone(),
                        source,
                    }),
                Err(e) => Err(ClientError::InvalidArgument(e.to_string())),
            }
        };
        if let Err(e) = written {
            self.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Io {
                endpoint: self.inner.endpoint.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "connection closed before the answer",
                ),
            }),
            Err(_) => {
                self.forget(id);
                Err(ClientError::Timeout {
                    endpoint: self.inner.endpoint.clone(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .waiting
            .remove(&id);
    }

    /// Acquires `resource`.
    pub async fn acquire(
        &self,
        resource: &str,
        options: AcquireOptions,
    ) -> Result<AcquireOutcome, ClientError> {
        let request = acquire_request(resource, &options)?;
        let send_ms = boottime_ms();
        let response = self
            .call_within(
                &request,
                self.inner.request_timeout + options.wait + WAIT_MARGIN,
            )
            .await?;
        acquire_outcome(resource, &options, send_ms, self.drift_ppm(), response)
    }

    /// Renews `token` on `resource` for `ttl` from now.
    pub async fn renew(
        &self,
        resource: &str,
        token: u64,
        ttl: Duration,
        holder: u64,
    ) -> Result<TokenOutcome, ClientError> {
        let ttl_ms = millis_u32(ttl, "ttl")?;
        let send_ms = boottime_ms();
        let response = self
            .call(&Request::Renew {
                resource: resource.into(),
                token,
                ttl_ms,
            })
            .await?;
        token_outcome(resource, holder, send_ms, self.drift_ppm(), response)
    }

    /// Releases `token` on `resource`.
    pub async fn release(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let response = self
            .call(&Request::Release {
                resource: resource.into(),
                token,
            })
            .await?;
        token_outcome(resource, 0, 0, 0, response)
    }

    /// Asks whether `token` is the current lease on `resource`.
    pub async fn check(&self, resource: &str, token: u64) -> Result<TokenOutcome, ClientError> {
        let response = self
            .call(&Request::Check {
                resource: resource.into(),
                token,
            })
            .await?;
        token_outcome(resource, 0, 0, 0, response)
    }

    /// Node status.
    pub async fn status(&self) -> Result<StatusInfo, ClientError> {
        match self.call(&Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(other)),
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
                    let reply = inner
                        .pending
                        .lock()
                        .expect("pending lock")
                        .waiting
                        .remove(&header.request_id);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(response));
                    }
                }
            }
        }
        if let Some(why) = failed {
            break why;
        }
    };
    if let Some(inner) = inner.upgrade() {
        let mut pending = inner.pending.lock().expect("pending lock");
        pending.closed = Some(why.clone());
        for (_, reply) in pending.waiting.drain() {
            let _ = reply.send(Err(ClientError::Io {
                endpoint: inner.endpoint.clone(),
                source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.clone()),
            }));
        }
    }
}

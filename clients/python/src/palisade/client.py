"""The blocking client: plain sockets and threads.

One :class:`Client` keeps one connection (to one endpoint at a time) and
may be used from several threads at once: requests are pipelined on the
connection and a reader thread hands each answer to the thread that asked.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import _core
from ._core import EndpointsArg, Identity, SecretFile
from .errors import (
    ConnectionFailed,
    LeaseLost,
    LeaseStale,
    NoLeader,
    PalisadeError,
    ProtocolError,
    RequestTimeout,
    ServerError,
    is_retryable,
)
from .lease import HeldLease, Lease, RENEW_FRACTION, next_pause_ms, now_ms, retry_pause_ms
from .wire import (
    Check,
    Current,
    Error,
    ErrorCode,
    FrameError,
    FrameReader,
    Redirect,
    Release,
    Renew,
    Request,
    Response,
    Stale,
    Status,
    StatusInfo,
    LIST_LIMIT_MAX,
    List as ListRequest,
    Listed,
    ListedLease,
    Watch,
    Watched,
    Welcome,
    encode_request,
    validate_resource,
)

__all__ = ["Client", "KeepAlive"]


def _monotonic() -> float:
    return time.monotonic()


class _Waiter:
    __slots__ = ("event", "response", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: Optional[Response] = None
        self.error: Optional[BaseException] = None


class _Connection:
    """One TCP connection: a reader thread routes answers by request id."""

    def __init__(self, endpoint: str, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.welcome: Optional[Welcome] = None
        self._sock = sock
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiters: Dict[int, _Waiter] = {}
        self._broken: Optional[BaseException] = None
        self._reader = threading.Thread(target=self._read_loop, name=f"palisade-reader-{endpoint}", daemon=True)
        self._reader.start()

    @classmethod
    def open(cls, endpoint: str, identity: Identity, deadline: float) -> "_Connection":
        """Connects and completes the handshake before ``deadline``
        (monotonic seconds)."""
        host, port = _core.split_endpoint(endpoint)
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise RequestTimeout(f"no time left to connect to {endpoint}")
        try:
            sock = socket.create_connection((host, port), timeout=remaining)
        except socket.timeout:
            raise RequestTimeout(f"connecting to {endpoint} took longer than {remaining:.3f} s") from None
        except OSError as e:
            raise ConnectionFailed(f"connecting to {endpoint}: {e}") from e
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(endpoint, sock)
        try:
            handshake = _core.Handshake(identity)
            step: Union[Request, Welcome] = handshake.start()
            while not isinstance(step, Welcome):
                response = conn.request(step, deadline - _monotonic())
                step = handshake.on_response(response)
            conn.welcome = step
            return conn
        except BaseException:
            conn.close()
            raise

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def close(self, why: Optional[BaseException] = None) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = why or ConnectionFailed(f"connection to {self.endpoint} closed")
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.error = self._broken
            waiter.event.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def request(self, request: Request, timeout: float) -> Response:
        """Sends one request and waits up to ``timeout`` seconds for its
        answer. Raises ConnectionFailed, RequestTimeout, or ServerError for
        a connection-level error (request_id 0)."""
        if timeout <= 0:
            raise RequestTimeout(f"no time left for a request to {self.endpoint}")
        waiter = _Waiter()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            request_id = next(self._ids)
            self._waiters[request_id] = waiter
        frame = encode_request(request, request_id)
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as e:
            self.close(ConnectionFailed(f"sending to {self.endpoint}: {e}"))
        if not waiter.event.wait(timeout):
            with self._lock:
                self._waiters.pop(request_id, None)
            raise RequestTimeout(f"no answer from {self.endpoint} within {timeout:.3f} s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.response is not None
        return waiter.response

    def _read_loop(self) -> None:
        reader = FrameReader(_core.RESPONSE_PAYLOAD_MAX)
        why: BaseException
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    why = ConnectionFailed(f"{self.endpoint} closed the connection")
                    break
                reader.feed(data)
                while True:
                    item = reader.next_response()
                    if item is None:
                        break
                    header, response = item
                    if header.request_id == 0:
                        # Connection-level error: the server closes after it.
                        if isinstance(response, Error):
                            raise ServerError(
                                response.code, response.retry_after_ms, response.message, connection_level=True
                            )
                        raise ProtocolError(f"response {response!r} with request_id 0")
                    with self._lock:
                        waiter = self._waiters.pop(header.request_id, None)
                    if waiter is not None:
                        waiter.response = response
                        waiter.event.set()
                    # Else its caller gave up; a request that times out
                    # closes the connection, so nothing is left held.
        except FrameError as e:
            why = ProtocolError(f"{self.endpoint} sent an invalid frame: {e}")
        except PalisadeError as e:
            why = e
        except OSError as e:
            why = ConnectionFailed(f"connection to {self.endpoint} broke: {e}")
        self.close(why)


class Client:
    """A Palisade client for one tenant, over an endpoint list.

    ``endpoints`` is ``"host:port"``, ``"h1:p1,h2:p2"`` or a list. The
    client connects to the first that answers, follows ``Redirect`` to the
    leader, and moves on to the next endpoint when one is dead or does not
    answer within ``attempt_timeout`` seconds (connect, handshake or
    request; waiting acquires and watches get their wait added).

    ``secret`` (bytes or str) or ``secret_file`` (trailing whitespace
    removed) for tenants with a credential.

    Usable from several threads at once, and as a context manager.
    """

    def __init__(
        self,
        endpoints: EndpointsArg = "127.0.0.1:7400",
        *,
        tenant: str = "default",
        secret: Optional[Union[bytes, str]] = None,
        secret_file: Optional[SecretFile] = None,
        client_name: Optional[str] = None,
        attempt_timeout: float = 2.0,
        attempts_max: int = _core.ATTEMPTS_MAX,
        connect: bool = True,
    ) -> None:
        self._endpoints = _core.parse_endpoints(endpoints)
        self._identity = _core.make_identity(tenant, secret, secret_file, client_name)
        if attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        self.attempt_timeout = attempt_timeout
        self.attempts_max = max(1, attempts_max)
        self._lock = threading.RLock()
        self._conn: Optional[_Connection] = None
        self._index = 0
        self._preferred: Optional[str] = None
        self._closed = False
        if connect:
            self.connect()

    # ------------------------------------------------------------ plumbing

    @property
    def endpoints(self) -> List[str]:
        return list(self._endpoints)

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint of the current connection, if any."""
        conn = self._conn
        return conn.endpoint if conn is not None and not conn.broken else None

    @property
    def welcome(self) -> Welcome:
        """What the server said at the handshake (epoch, ttl bounds, drift)."""
        conn = self._connection(_monotonic() + self.attempt_timeout * len(self._endpoints))
        assert conn.welcome is not None
        return conn.welcome

    @property
    def tenant(self) -> str:
        return self._identity.tenant

    def connect(self) -> None:
        """Connects now (otherwise the first request does)."""
        self._connection(_monotonic() + self.attempt_timeout * (len(self._endpoints) + 1))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _candidates(self) -> List[str]:
        n = len(self._endpoints)
        ordered = [self._endpoints[(self._index + i) % n] for i in range(n)]
        if self._preferred is not None:
            ordered = [self._preferred] + [e for e in ordered if e != self._preferred]
        return ordered

    def _connection(self, deadline: float) -> _Connection:
        with self._lock:
            if self._closed:
                raise ConnectionFailed("the client is closed")
            if self._conn is not None and not self._conn.broken:
                return self._conn
            self._conn = None
            attempts: List[Tuple[str, BaseException]] = []
            for endpoint in self._candidates():
                now = _monotonic()
                if now >= deadline:
                    break
                try:
                    conn = _Connection.open(endpoint, self._identity, min(deadline, now + self.attempt_timeout))
                except (ConnectionFailed, RequestTimeout, ProtocolError) as e:
                    attempts.append((endpoint, e))
                    self._advance(endpoint)
                    continue
                except ServerError as e:
                    if not e.retryable:
                        raise
                    attempts.append((endpoint, e))
                    self._advance(endpoint)
                    continue
                self._conn = conn
                return conn
            detail = "; ".join(f"{ep}: {err}" for ep, err in attempts) or "deadline passed"
            raise ConnectionFailed(f"no endpoint answered ({detail})", attempts)

    def _advance(self, endpoint: str) -> None:
        """Moves on from a failed endpoint."""
        if endpoint == self._preferred:
            self._preferred = None
        if endpoint in self._endpoints:
            self._index = (self._endpoints.index(endpoint) + 1) % len(self._endpoints)

    def _drop(self, conn: _Connection, advance: bool, why: Optional[BaseException] = None) -> None:
        with self._lock:
            conn.close(why)
            if self._conn is conn:
                self._conn = None
            if advance:
                self._advance(conn.endpoint)

    def _redirect(self, conn: _Connection, endpoint: str) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
            conn.close(ConnectionFailed(f"redirected to {endpoint}"))
            self._preferred = endpoint

    def call(
        self,
        request: Request,
        *,
        extra_wait: float = 0.0,
        deadline: Optional[float] = None,
    ) -> Tuple[Response, int, Welcome]:
        """Sends ``request`` to the leader: follows redirects, waits out
        leaderless moments and moves past dead or hung endpoints, up to
        ``attempts_max`` attempts. Every lease request is safe to repeat
        (acquire by holder id; a redirected request was not carried out).

        Returns the answer, the client clock (ms) just before the answer's
        request was sent, and that connection's Welcome. ``deadline`` is
        in seconds from now for the whole call."""
        end = None if deadline is None else _monotonic() + deadline
        pause = _core.LEADERLESS_PAUSE_MIN_S
        last: Optional[PalisadeError] = None
        for _attempt in range(self.attempts_max):
            now = _monotonic()
            attempt_end = now + self.attempt_timeout + extra_wait
            if end is not None:
                if now >= end:
                    break
                attempt_end = min(attempt_end, end)
            try:
                conn = self._connection(attempt_end)
            except ConnectionFailed as e:
                last = e
                continue
            try:
                send_ms = now_ms()
                response = conn.request(request, attempt_end - _monotonic())
            except (ConnectionFailed, RequestTimeout) as e:
                # A dead or hung node: move on to the next endpoint.
                last = e
                self._drop(conn, advance=True, why=e)
                continue
            except ServerError as e:
                last = e
                self._drop(conn, advance=True, why=e)
                if not e.retryable:
                    raise
                continue
            except ProtocolError as e:
                self._drop(conn, advance=True, why=e)
                raise
            if isinstance(response, Redirect):
                if response.endpoint and response.endpoint != conn.endpoint:
                    self._redirect(conn, response.endpoint)
                    last = NoLeader(f"redirected to {response.endpoint}")
                    continue
                # An election is under way: give it a moment, then ask
                # the next member.
                last = NoLeader(f"{conn.endpoint} knows no leader")
                wait = pause if end is None else min(pause, max(end - _monotonic(), 0))
                time.sleep(wait)
                pause = min(pause * 2, _core.LEADERLESS_PAUSE_MAX_S)
                if len(self._endpoints) > 1:
                    self._drop(conn, advance=True, why=last)
                continue
            if (
                isinstance(response, Error)
                and response.code == ErrorCode.UNAVAILABLE
                and response.retry_after_ms <= _core.UNAVAILABLE_RETRY_MAX_MS
            ):
                # Leadership not confirmed right now (an election, a lapsed
                # quorum): not carried out, retry shortly, at the next
                # member if there is one.
                last = ServerError(response.code, response.retry_after_ms, response.message)
                wait = max(response.retry_after_ms / 1000, _core.LEADERLESS_PAUSE_MIN_S)
                if end is not None:
                    wait = min(wait, max(end - _monotonic(), 0))
                time.sleep(wait)
                if len(self._endpoints) > 1:
                    self._drop(conn, advance=True, why=last)
                continue
            assert conn.welcome is not None
            return response, send_ms, conn.welcome
        if last is None:
            raise RequestTimeout("the deadline passed before the request could be sent")
        raise last

    # ------------------------------------------------------------ lease API

    def acquire(
        self,
        resource: str,
        ttl: float,
        *,
        wait: float = 0.0,
        lock_delay: float = 0.0,
        holder: Optional[int] = None,
    ) -> Lease:
        """Takes the lease on ``resource`` for ``ttl`` seconds, queueing up
        to ``wait`` seconds if it is busy. Raises :class:`LeaseBusy` if not
        granted. Acquiring again with the same ``holder`` while holding
        returns the same token (safe retry)."""
        request = _core.acquire_request(resource, ttl, wait, lock_delay, holder)
        response, send_ms, welcome = self.call(request, extra_wait=wait)
        return _core.acquire_outcome(request, send_ms, welcome, response)

    def renew(self, lease: Lease, ttl: Optional[float] = None, *, deadline: Optional[float] = None) -> Lease:
        """Extends ``lease`` to ``ttl`` seconds from now (default: its own
        ttl). Raises :class:`LeaseStale` if it is no longer the live lease."""
        ttl_ms = lease.ttl_ms if ttl is None else _core.millis(ttl, "ttl")
        request = Renew(lease.resource, lease.token, ttl_ms)
        response, send_ms, welcome = self.call(request, deadline=deadline)
        return _core.renew_outcome(lease.resource, lease.token, lease.holder, send_ms, welcome, response)

    def release(
        self, resource: Union[str, Lease], token: Optional[int] = None, *, deadline: Optional[float] = None
    ) -> bool:
        """Gives a lease back. True if released; False if the token was not
        the live lease any more (expired and taken, or already released)."""
        if isinstance(resource, Lease):
            name, token = resource.resource, resource.token
        else:
            name = resource
        if token is None:
            raise ValueError("release needs a token")
        validate_resource(name)
        response, _, _ = self.call(Release(name, token), deadline=deadline)
        return _core.release_outcome(response)

    def check(self, resource: str, token: int) -> Union[Current, Stale]:
        """Whether ``token`` is the current, unexpired lease on ``resource``
        (answered by the leader): :class:`Current` or :class:`Stale`."""
        validate_resource(resource)
        response, _, _ = self.call(Check(resource, token))
        return _core.check_outcome(response)

    def watch(self, resource: str, after: int = 0, wait: float = 30.0) -> Watched:
        """Waits up to ``wait`` seconds (at most 60) for a token above
        ``after`` to be issued for ``resource``."""
        validate_resource(resource)
        if wait > _core.WATCH_WAIT_MAX_S:
            raise ValueError("watch wait is at most 60 s")
        response, _, _ = self.call(Watch(resource, after, _core.millis(wait, "wait")), extra_wait=wait)
        if isinstance(response, Watched):
            return response
        raise _core.unexpected(response)

    def list(self, prefix: str = "", after: str = "", limit: int = 100) -> Listed:
        """One page of this tenant's live leases whose names start with
        ``prefix`` and sort after ``after``, at most ``limit`` (1..=1000),
        in name order, from the leader. Continue with ``next_after`` while
        ``more``."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"list limit must be 1..={LIST_LIMIT_MAX}")
        response, _, _ = self.call(ListRequest(prefix, after, limit))
        if isinstance(response, Listed):
            return response
        raise _core.unexpected(response)

    def list_all(self, prefix: str = "", page_limit: int = 100) -> List[ListedLease]:
        """Every live lease of this tenant under ``prefix``, page by page."""
        leases: List[ListedLease] = []
        after = ""
        while True:
            page = self.list(prefix, after, page_limit)
            leases.extend(page.leases)
            if not page.more:
                return leases
            after = page.next_after

    def status(self) -> StatusInfo:
        """Status of the node this client is connected to (any node answers)."""
        end = _monotonic() + self.attempt_timeout * (len(self._endpoints) + 1)
        conn = self._connection(end)
        try:
            response = conn.request(Status(), self.attempt_timeout)
        except (ConnectionFailed, RequestTimeout) as e:
            self._drop(conn, advance=True, why=e)
            raise
        if isinstance(response, StatusInfo):
            return response
        raise _core.unexpected(response)

    def keep_alive(
        self,
        lease: Union[Lease, HeldLease],
        *,
        every: Optional[float] = None,
        on_lost: Optional[Callable[[LeaseLost], None]] = None,
    ) -> "KeepAlive":
        """Renews ``lease`` in a background thread until stopped; reports
        loss through ``on_lost`` and the returned keepalive's ``held``."""
        held = lease if isinstance(lease, HeldLease) else HeldLease(lease)
        if on_lost is not None:
            held.on_lost(on_lost)
        keepalive = KeepAlive(self, held, every)
        keepalive.start()
        return keepalive

    @contextlib.contextmanager
    def hold(
        self,
        resource: str,
        ttl: float,
        *,
        wait: float = 0.0,
        lock_delay: float = 0.0,
        holder: Optional[int] = None,
        every: Optional[float] = None,
        on_lost: Optional[Callable[[LeaseLost], None]] = None,
        raise_on_loss: bool = True,
    ) -> Iterator[HeldLease]:
        """Holds ``resource`` for the duration of a ``with`` block::

            with client.hold("disk0", ttl=10) as lease:
                write(data, token=lease.token)   # raises LeaseLost once lost

        Acquires (raising :class:`LeaseBusy` if not granted), renews in the
        background, and releases on exit. ``lease.token`` raises
        :class:`LeaseLost` as soon as the lease is lost or its validity ran
        out, so the body never uses an expired lease. If the lease was lost
        while the body ran, leaving the block raises :class:`LeaseLost`
        (unless ``raise_on_loss`` is False).
        """
        lease = self.acquire(resource, ttl, wait=wait, lock_delay=lock_delay, holder=holder)
        held = HeldLease(lease)
        if on_lost is not None:
            held.on_lost(on_lost)
        keepalive = KeepAlive(self, held, every)
        keepalive.start()
        try:
            yield held
        finally:
            keepalive.stop()
            lost = held.lost
            if lost is None or lost.reason != "stale":
                # Give it back (or cancel its lock delay), without holding
                # up the exit for long.
                with contextlib.suppress(PalisadeError):
                    self.release(held.lease, deadline=self.attempt_timeout)
        # Judged when the body ended: was the lease held all along?
        if raise_on_loss and lost is not None:
            raise lost


class KeepAlive:
    """Renews a :class:`HeldLease` from a daemon thread every ``every``
    seconds (default a third of its ttl, never later than halfway through
    its remaining validity). A renewal never waits past the lease's
    validity: loss is reported at that moment, not when a stuck call gives
    up. Stops when the lease is lost or :meth:`stop` is called."""

    def __init__(self, client: Client, held: HeldLease, every: Optional[float] = None) -> None:
        self.client = client
        self.held = held
        lease = held.lease
        self._every_ms = _core.millis(every, "every") if every is not None else lease.ttl_ms // RENEW_FRACTION
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"palisade-keepalive-{lease.resource}", daemon=True)
        #: Renewals that succeeded.
        self.renewals = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: Optional[float] = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> "KeepAlive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        held = self.held
        pause_ms = next_pause_ms(held.lease, self._every_ms)
        while not self._stop.wait(pause_ms / 1000):
            lease = held.lease
            remaining_ms = lease.remaining_ms
            if remaining_ms <= 0:
                held._mark_lost(LeaseLost(lease, "expired", "validity ran out before a renewal succeeded"))
                return
            try:
                renewed = self.client.renew(lease, deadline=remaining_ms / 1000)
            except LeaseStale as e:
                held._mark_lost(LeaseLost(lease, "stale", f"current token {e.current_token}"))
                return
            except PalisadeError as e:
                if not is_retryable(e):
                    held._mark_lost(LeaseLost(lease, "expired", f"renewal failed: {e}"))
                    return
                if not lease.valid:
                    held._mark_lost(LeaseLost(lease, "expired", f"renewals failed until the validity ran out: {e}"))
                    return
                pause_ms = retry_pause_ms(lease, self._every_ms)
                continue
            self.renewals += 1
            held._renewed(renewed)
            pause_ms = next_pause_ms(renewed, self._every_ms)

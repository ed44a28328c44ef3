"""The asyncio client. Same behaviour as :class:`palisade.Client`, with
``await``: requests from many tasks are pipelined on one connection and a
reader task hands each answer to the task that asked."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from typing import AsyncIterator, Callable, Dict, List, Optional, Tuple, Union

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

__all__ = ["AsyncClient", "AsyncKeepAlive"]


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


class _AsyncConnection:
    def __init__(self, endpoint: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.endpoint = endpoint
        self.welcome: Optional[Welcome] = None
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiters: Dict[int, "asyncio.Future[Response]"] = {}
        self._broken: Optional[BaseException] = None
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def open(cls, endpoint: str, identity: Identity, deadline: float) -> "_AsyncConnection":
        host, port = _core.split_endpoint(endpoint)
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise RequestTimeout(f"no time left to connect to {endpoint}")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), remaining)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"connecting to {endpoint} took longer than {remaining:.3f} s") from None
        except OSError as e:
            raise ConnectionFailed(f"connecting to {endpoint}: {e}") from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(endpoint, reader, writer)
        try:
            handshake = _core.Handshake(identity)
            step: Union[Request, Welcome] = handshake.start()
            while not isinstance(step, Welcome):
                response = await conn.request(step, deadline - _monotonic())
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
        if self._broken is None:
            self._broken = why or ConnectionFailed(f"connection to {self.endpoint} closed")
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for future in waiters:
            if not future.done():
                future.set_exception(self._broken)
        self._writer.close()
        if not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    async def request(self, request: Request, timeout: float) -> Response:
        if timeout <= 0:
            raise RequestTimeout(f"no time left for a request to {self.endpoint}")
        if self._broken is not None:
            raise self._broken
        request_id = next(self._ids)
        future: "asyncio.Future[Response]" = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        deadline = _monotonic() + timeout
        try:
            self._writer.write(encode_request(request, request_id))
            await asyncio.wait_for(self._writer.drain(), timeout)
            return await asyncio.wait_for(future, max(deadline - _monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no answer from {self.endpoint} within {timeout:.3f} s") from None
        except OSError as e:
            self.close(ConnectionFailed(f"sending to {self.endpoint}: {e}"))
            raise self._broken from e  # type: ignore[misc]
        finally:
            self._waiters.pop(request_id, None)

    async def _read_loop(self) -> None:
        frames = FrameReader(_core.RESPONSE_PAYLOAD_MAX)
        why: BaseException
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    why = ConnectionFailed(f"{self.endpoint} closed the connection")
                    break
                frames.feed(data)
                while True:
                    item = frames.next_response()
                    if item is None:
                        break
                    header, response = item
                    if header.request_id == 0:
                        if isinstance(response, Error):
                            raise ServerError(
                                response.code, response.retry_after_ms, response.message, connection_level=True
                            )
                        raise ProtocolError(f"response {response!r} with request_id 0")
                    future = self._waiters.pop(header.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except asyncio.CancelledError:
            return
        except FrameError as e:
            why = ProtocolError(f"{self.endpoint} sent an invalid frame: {e}")
        except PalisadeError as e:
            why = e
        except OSError as e:
            why = ConnectionFailed(f"connection to {self.endpoint} broke: {e}")
        self.close(why)


class AsyncClient:
    """The asyncio twin of :class:`palisade.Client`::

        async with AsyncClient(["10.0.0.1:7400", "10.0.0.2:7400"]) as client:
            async with client.hold("disk0", ttl=10) as lease:
                await write(data, token=lease.token)

    Connects lazily (or with ``await client.connect()``).
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
    ) -> None:
        self._endpoints = _core.parse_endpoints(endpoints)
        self._identity = _core.make_identity(tenant, secret, secret_file, client_name)
        if attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        self.attempt_timeout = attempt_timeout
        self.attempts_max = max(1, attempts_max)
        self._conn: Optional[_AsyncConnection] = None
        self._connecting: Optional[asyncio.Lock] = None
        self._index = 0
        self._preferred: Optional[str] = None
        self._closed = False

    @property
    def endpoints(self) -> List[str]:
        return list(self._endpoints)

    @property
    def endpoint(self) -> Optional[str]:
        conn = self._conn
        return conn.endpoint if conn is not None and not conn.broken else None

    @property
    def tenant(self) -> str:
        return self._identity.tenant

    async def connect(self) -> Welcome:
        """Connects now; returns the server's Welcome."""
        conn = await self._connection(_monotonic() + self.attempt_timeout * (len(self._endpoints) + 1))
        assert conn.welcome is not None
        return conn.welcome

    async def welcome(self) -> Welcome:
        return await self.connect()

    async def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _candidates(self) -> List[str]:
        n = len(self._endpoints)
        ordered = [self._endpoints[(self._index + i) % n] for i in range(n)]
        if self._preferred is not None:
            ordered = [self._preferred] + [e for e in ordered if e != self._preferred]
        return ordered

    def _advance(self, endpoint: str) -> None:
        if endpoint == self._preferred:
            self._preferred = None
        if endpoint in self._endpoints:
            self._index = (self._endpoints.index(endpoint) + 1) % len(self._endpoints)

    async def _connection(self, deadline: float) -> _AsyncConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
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
                    conn = await _AsyncConnection.open(
                        endpoint, self._identity, min(deadline, now + self.attempt_timeout)
                    )
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

    def _drop(self, conn: _AsyncConnection, advance: bool, why: Optional[BaseException] = None) -> None:
        conn.close(why)
        if self._conn is conn:
            self._conn = None
        if advance:
            self._advance(conn.endpoint)

    async def call(
        self, request: Request, *, extra_wait: float = 0.0, deadline: Optional[float] = None
    ) -> Tuple[Response, int, Welcome]:
        """See :meth:`palisade.Client.call`."""
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
                conn = await self._connection(attempt_end)
            except ConnectionFailed as e:
                last = e
                continue
            try:
                send_ms = now_ms()
                response = await conn.request(request, attempt_end - _monotonic())
            except (ConnectionFailed, RequestTimeout) as e:
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
                    self._drop(conn, advance=False, why=ConnectionFailed(f"redirected to {response.endpoint}"))
                    self._preferred = response.endpoint
                    last = NoLeader(f"redirected to {response.endpoint}")
                    continue
                last = NoLeader(f"{conn.endpoint} knows no leader")
                wait = pause if end is None else min(pause, max(end - _monotonic(), 0))
                await asyncio.sleep(wait)
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
                await asyncio.sleep(wait)
                if len(self._endpoints) > 1:
                    self._drop(conn, advance=True, why=last)
                continue
            assert conn.welcome is not None
            return response, send_ms, conn.welcome
        if last is None:
            raise RequestTimeout("the deadline passed before the request could be sent")
        raise last

    async def acquire(
        self,
        resource: str,
        ttl: float,
        *,
        wait: float = 0.0,
        lock_delay: float = 0.0,
        holder: Optional[int] = None,
    ) -> Lease:
        """See :meth:`palisade.Client.acquire`."""
        request = _core.acquire_request(resource, ttl, wait, lock_delay, holder)
        response, send_ms, welcome = await self.call(request, extra_wait=wait)
        return _core.acquire_outcome(request, send_ms, welcome, response)

    async def renew(self, lease: Lease, ttl: Optional[float] = None, *, deadline: Optional[float] = None) -> Lease:
        ttl_ms = lease.ttl_ms if ttl is None else _core.millis(ttl, "ttl")
        response, send_ms, welcome = await self.call(Renew(lease.resource, lease.token, ttl_ms), deadline=deadline)
        return _core.renew_outcome(lease.resource, lease.token, lease.holder, send_ms, welcome, response)

    async def release(
        self, resource: Union[str, Lease], token: Optional[int] = None, *, deadline: Optional[float] = None
    ) -> bool:
        if isinstance(resource, Lease):
            name, token = resource.resource, resource.token
        else:
            name = resource
        if token is None:
            raise ValueError("release needs a token")
        validate_resource(name)
        response, _, _ = await self.call(Release(name, token), deadline=deadline)
        return _core.release_outcome(response)

    async def check(self, resource: str, token: int) -> Union[Current, Stale]:
        validate_resource(resource)
        response, _, _ = await self.call(Check(resource, token))
        return _core.check_outcome(response)

    async def watch(self, resource: str, after: int = 0, wait: float = 30.0) -> Watched:
        validate_resource(resource)
        if wait > _core.WATCH_WAIT_MAX_S:
            raise ValueError("watch wait is at most 60 s")
        response, _, _ = await self.call(Watch(resource, after, _core.millis(wait, "wait")), extra_wait=wait)
        if isinstance(response, Watched):
            return response
        raise _core.unexpected(response)

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> Listed:
        """One page of this tenant's live leases whose names start with
        ``prefix`` and sort after ``after``, at most ``limit`` (1..=1000),
        in name order, from the leader. Continue with ``next_after`` while
        ``more``."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"list limit must be 1..={LIST_LIMIT_MAX}")
        response, _, _ = await self.call(ListRequest(prefix, after, limit))
        if isinstance(response, Listed):
            return response
        raise _core.unexpected(response)

    async def list_all(self, prefix: str = "", page_limit: int = 100) -> List[ListedLease]:
        """Every live lease of this tenant under ``prefix``, page by page."""
        leases: List[ListedLease] = []
        after = ""
        while True:
            page = await self.list(prefix, after, page_limit)
            leases.extend(page.leases)
            if not page.more:
                return leases
            after = page.next_after

    async def status(self) -> StatusInfo:
        conn = await self._connection(_monotonic() + self.attempt_timeout * (len(self._endpoints) + 1))
        try:
            response = await conn.request(Status(), self.attempt_timeout)
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
    ) -> "AsyncKeepAlive":
        """Renews ``lease`` in a background task until stopped."""
        held = lease if isinstance(lease, HeldLease) else HeldLease(lease)
        if on_lost is not None:
            held.on_lost(on_lost)
        keepalive = AsyncKeepAlive(self, held, every)
        keepalive.start()
        return keepalive

    @contextlib.asynccontextmanager
    async def hold(
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
    ) -> AsyncIterator[HeldLease]:
        """See :meth:`palisade.Client.hold`."""
        lease = await self.acquire(resource, ttl, wait=wait, lock_delay=lock_delay, holder=holder)
        held = HeldLease(lease)
        if on_lost is not None:
            held.on_lost(on_lost)
        keepalive = AsyncKeepAlive(self, held, every)
        keepalive.start()
        try:
            yield held
        finally:
            await keepalive.stop()
            lost = held.lost
            if lost is None or lost.reason != "stale":
                with contextlib.suppress(PalisadeError):
                    await self.release(held.lease, deadline=self.attempt_timeout)
        if raise_on_loss and lost is not None:
            raise lost


class AsyncKeepAlive:
    """The asyncio twin of :class:`palisade.KeepAlive`."""

    def __init__(self, client: AsyncClient, held: HeldLease, every: Optional[float] = None) -> None:
        self.client = client
        self.held = held
        self._every_ms = _core.millis(every, "every") if every is not None else held.lease.ttl_ms // RENEW_FRACTION
        self._task: Optional["asyncio.Task[None]"] = None
        self.renewals = 0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        held = self.held
        pause_ms = next_pause_ms(held.lease, self._every_ms)
        while True:
            await asyncio.sleep(pause_ms / 1000)
            lease = held.lease
            remaining_ms = lease.remaining_ms
            if remaining_ms <= 0:
                held._mark_lost(LeaseLost(lease, "expired", "validity ran out before a renewal succeeded"))
                return
            try:
                renewed = await self.client.renew(lease, deadline=remaining_ms / 1000)
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

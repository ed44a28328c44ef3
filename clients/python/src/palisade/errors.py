"""The client's exceptions. Lease outcomes a caller must handle (busy,
stale, lost) are exceptions too, so that code that ignores them stops
rather than carrying on without the lease."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from .wire import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from .lease import Lease

__all__ = [
    "PalisadeError",
    "ConnectionFailed",
    "RequestTimeout",
    "NoLeader",
    "ServerError",
    "ProtocolError",
    "AuthError",
    "LeaseBusy",
    "LeaseStale",
    "LeaseLost",
    "is_retryable",
]


class PalisadeError(Exception):
    """Base class of everything this package raises (besides ValueError and
    TypeError for bad arguments)."""

    _retryable = False

    @property
    def retryable(self) -> bool:
        """Whether retrying the same call later may succeed."""
        return self._retryable


class ConnectionFailed(PalisadeError):
    """No endpoint could be reached, or the connection broke. Retryable."""

    _retryable = True

    def __init__(self, message: str, attempts: Optional[List[Tuple[str, BaseException]]] = None):
        super().__init__(message)
        #: (endpoint, error) for each endpoint tried.
        self.attempts = attempts or []


class RequestTimeout(PalisadeError):
    """No answer within the deadline. Retryable."""

    _retryable = True


class NoLeader(PalisadeError):
    """Redirects or attempts ran out without reaching a serving leader
    (an election may be under way). Retryable."""

    _retryable = True


class ServerError(PalisadeError):
    """The server refused the request with an error code."""

    def __init__(self, code: ErrorCode, retry_after_ms: int, message: str, connection_level: bool = False):
        super().__init__(f"server refused ({code.wire_name}): {message}")
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.server_message = message
        #: True when the error came with request_id 0 (the server closed
        #: the connection after it).
        self.connection_level = connection_level

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class ProtocolError(PalisadeError):
    """The server sent something this client cannot use: a bug on one side."""


class AuthError(PalisadeError):
    """The handshake failed on the client's side: no secret for a tenant that
    needs one, a server that cannot prove it holds the tenant's record, or a
    server that did not ask for a credential the client holds."""


class LeaseBusy(PalisadeError):
    """Someone else holds the lease (or it is in its lock delay, or waiters
    come first)."""

    _retryable = True

    def __init__(self, resource: str, token: int, remaining_ms: int, waiters: bool, waited_ms: int):
        super().__init__(
            f"{resource!r} is busy: held by token {token} for {remaining_ms} ms"
            + (", waiters queued" if waiters else "")
        )
        self.resource = resource
        self.token = token
        self.remaining_ms = remaining_ms
        self.waiters = waiters
        self.waited_ms = waited_ms


class LeaseStale(PalisadeError):
    """The token is not (or no longer) the live lease."""

    def __init__(self, resource: str, token: int, current_token: int, last_token: int):
        super().__init__(
            f"token {token} on {resource!r} is stale (current {current_token}, last issued {last_token})"
        )
        self.resource = resource
        self.token = token
        self.current_token = current_token
        self.last_token = last_token


class LeaseLost(PalisadeError):
    """The lease can no longer be trusted: stop using the resource.

    ``reason`` is ``"stale"`` (the server says another token is current),
    ``"expired"`` (its validity ran out, renewals failing), or
    ``"released"``."""

    def __init__(self, lease: "Lease", reason: str, detail: str = ""):
        text = f"lease on {lease.resource!r} (token {lease.token}) lost: {reason}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)
        self.lease = lease
        self.reason = reason
        self.detail = detail


def is_retryable(error: BaseException) -> bool:
    """Whether retrying the same call later may succeed."""
    return isinstance(error, PalisadeError) and error.retryable

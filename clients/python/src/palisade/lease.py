"""Leases as the client sees them, and how long they may be trusted.

A lease is safe to use until ``send_time + ttl_ms × (1 − max_drift_ppm /
10^6) − 1 ms`` on the client's monotonic clock (PROTOCOL.md, "Validity on
the client"): the request left no earlier than ``send_time``, so the
server's interval started later; shaving the drift bound covers clocks
that run at different rates; the last millisecond covers the server's
clock, which counts whole milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from .errors import LeaseLost
from .wire import token_epoch, token_seq

__all__ = [
    "now_ms",
    "valid_until_ms",
    "SERVER_CLOCK_GRANULARITY_MS",
    "Lease",
    "HeldLease",
]

#: The server's clock granularity: its lease table counts whole milliseconds.
SERVER_CLOCK_GRANULARITY_MS = 1

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _boottime_ns() -> int:
    assert _BOOTTIME is not None
    return time.clock_gettime_ns(_BOOTTIME)


def _monotonic_ns() -> int:
    return time.monotonic_ns()


# CLOCK_BOOTTIME keeps counting through suspend (a laptop that slept through
# its lease must not wake up believing it still holds it); elsewhere the
# monotonic clock is the best there is.
_clock_ns: Callable[[], int] = _boottime_ns if _BOOTTIME is not None else _monotonic_ns


def now_ms() -> int:
    """Whole milliseconds on the client's monotonic (boot-time) clock."""
    return _clock_ns() // 1_000_000


def valid_until_ms(send_ms: int, ttl_ms: int, max_drift_ppm: int, waited_ms: int = 0) -> int:
    """``send_ms + ttl_ms × (1 − drift) − 1``, rounded down, never before
    ``send_ms``. For a ``Granted`` answer pass its ``waited_ms``: the time the
    acquire waited in the server's queue, less one millisecond (the server's
    clock counts whole milliseconds), counts in, since the lease began at the
    grant; otherwise an acquire that waited longer than its ttl would be
    invalid on arrival."""
    ppm = min(max(max_drift_ppm, 0), 1_000_000)
    span = ttl_ms + max(waited_ms - SERVER_CLOCK_GRANULARITY_MS, 0)
    shortened = span * (1_000_000 - ppm) // 1_000_000
    return send_ms + max(shortened - SERVER_CLOCK_GRANULARITY_MS, 0)


@dataclass(frozen=True)
class Lease:
    """A granted (or renewed) lease: one immutable snapshot."""

    resource: str
    #: Fencing token: pass it to every write at the resource.
    token: int
    ttl_ms: int
    #: Holder id the lease was acquired with (0 if unknown).
    holder: int
    #: Client clock (:func:`now_ms`) after which the lease is lost.
    valid_until_ms: int
    #: How long the acquire waited in the server's queue.
    waited_ms: int = 0

    def is_valid_at(self, at_ms: int) -> bool:
        return at_ms < self.valid_until_ms

    @property
    def valid(self) -> bool:
        """Whether the lease is still safe to use now."""
        return self.is_valid_at(now_ms())

    @property
    def remaining_ms(self) -> int:
        """Milliseconds of safe use left (0 once lost)."""
        return max(self.valid_until_ms - now_ms(), 0)

    @property
    def epoch(self) -> int:
        return token_epoch(self.token)

    @property
    def seq(self) -> int:
        return token_seq(self.token)


class HeldLease:
    """A lease kept alive in the background (see ``Client.hold``).

    Its :attr:`lease` moves forward with every renewal. Reading
    :attr:`token` (or calling :meth:`ensure`) raises :class:`LeaseLost`
    once the lease is lost or its validity ran out, whether or not the
    keepalive has noticed yet: the body of a ``hold`` block never gets a
    token it may no longer use.
    """

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._lost: Optional[LeaseLost] = None
        self._listeners: List[Callable[[LeaseLost], None]] = []

    @property
    def lease(self) -> Lease:
        """The latest snapshot (changes when renewed)."""
        return self._lease

    @property
    def resource(self) -> str:
        return self._lease.resource

    @property
    def lost(self) -> Optional[LeaseLost]:
        """Why the lease was lost, once it was; None while held."""
        if self._lost is None and not self._lease.valid:
            return LeaseLost(self._lease, "expired", "validity ran out before a renewal succeeded")
        return self._lost

    @property
    def valid(self) -> bool:
        """Whether the lease is still safe to use now."""
        return self._lost is None and self._lease.valid

    @property
    def remaining_ms(self) -> int:
        return 0 if self._lost is not None else self._lease.remaining_ms

    def ensure(self) -> int:
        """The token, if the lease is still safe to use; else raises
        :class:`LeaseLost`. Call it right before each use of the resource."""
        lost = self.lost
        if lost is not None:
            raise lost
        return self._lease.token

    @property
    def token(self) -> int:
        """Same as :meth:`ensure`."""
        return self.ensure()

    def on_lost(self, callback: Callable[[LeaseLost], None]) -> None:
        """Calls ``callback`` (from the keepalive's thread or task) when the
        keepalive finds the lease lost."""
        self._listeners.append(callback)

    # Called by keepalives.
    def _renewed(self, lease: Lease) -> None:
        if self._lost is None:
            self._lease = lease

    def _mark_lost(self, lost: LeaseLost) -> None:
        if self._lost is not None:
            return
        self._lost = lost
        for callback in self._listeners:
            try:
                callback(lost)
            except Exception:  # noqa: BLE001 - a listener must not kill the keepalive
                pass

    def __repr__(self) -> str:
        state = "held" if self.valid else "lost"
        return f"HeldLease({self._lease.resource!r}, token={self._lease.token}, {state})"


# Keepalive schedule, shared by the thread and the asyncio task.

#: Renew every ``ttl / RENEW_FRACTION`` unless told otherwise.
RENEW_FRACTION = 3
_RETRY_PAUSE_MIN_MS = 20


def next_pause_ms(lease: Lease, every_ms: int) -> int:
    """A third of the ttl, but never later than halfway through what is
    left of the validity."""
    return max(min(every_ms, lease.remaining_ms // 2), 0)


def retry_pause_ms(lease: Lease, every_ms: int) -> int:
    return max(min(every_ms // 4, 500, lease.remaining_ms // 2), _RETRY_PAUSE_MIN_MS)

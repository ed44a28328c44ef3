"""Palisade client: leases with fencing tokens, from Python.

Standard library only. Written from docs/PROTOCOL.md and the test vectors
in proto/vectors; it shares no code with the Rust side.

Blocking::

    from palisade import Client

    with Client(["127.0.0.1:7411", "127.0.0.1:7412", "127.0.0.1:7413"]) as client:
        with client.hold("disk0", ttl=10) as lease:
            storage.write(data, fencing_token=lease.token)

asyncio::

    from palisade.aio import AsyncClient

    async with AsyncClient("127.0.0.1:7400") as client:
        async with client.hold("disk0", ttl=10) as lease:
            await storage.write(data, fencing_token=lease.token)
"""

from ._core import __version__, random_holder
from .aio import AsyncClient, AsyncKeepAlive
from .client import Client, KeepAlive
from .errors import (
    AuthError,
    ConnectionFailed,
    LeaseBusy,
    LeaseLost,
    LeaseStale,
    NoLeader,
    PalisadeError,
    ProtocolError,
    RequestTimeout,
    ServerError,
    is_retryable,
)
from .lease import HeldLease, Lease, now_ms, valid_until_ms
from .wire import (
    Current,
    ErrorCode,
    Listed,
    ListedLease,
    Peer,
    Role,
    Stale,
    StatusInfo,
    Watched,
    Welcome,
    token_epoch,
    token_seq,
)

__all__ = [
    "__version__",
    "AsyncClient",
    "AsyncKeepAlive",
    "AuthError",
    "Client",
    "ConnectionFailed",
    "Current",
    "ErrorCode",
    "HeldLease",
    "KeepAlive",
    "Lease",
    "LeaseBusy",
    "LeaseLost",
    "LeaseStale",
    "Listed",
    "ListedLease",
    "NoLeader",
    "PalisadeError",
    "Peer",
    "ProtocolError",
    "RequestTimeout",
    "Role",
    "ServerError",
    "Stale",
    "StatusInfo",
    "Watched",
    "Welcome",
    "is_retryable",
    "now_ms",
    "random_holder",
    "token_epoch",
    "token_seq",
    "valid_until_ms",
]

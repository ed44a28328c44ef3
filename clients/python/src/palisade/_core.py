"""Logic shared by the blocking and the asyncio client: endpoints, the
handshake state machine, and turning responses into results."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from . import auth
from .errors import AuthError, LeaseBusy, LeaseStale, NoLeader, PalisadeError, ProtocolError, ServerError
from .lease import Lease, valid_until_ms
from .wire import (
    Acquire,
    Auth,
    Busy,
    Challenge,
    Current,
    Error,
    Granted,
    Hello,
    Redirect,
    Released,
    Renewed,
    Request,
    Response,
    Stale,
    Welcome,
    validate_resource,
    validate_tenant,
)

__version__ = "0.1.0"

#: Attempts of one call across redirects, leaderless moments and failed
#: endpoints.
ATTEMPTS_MAX = 8
#: First pause when no leader is known; doubles up to LEADERLESS_PAUSE_MAX_S.
LEADERLESS_PAUSE_MIN_S = 0.025
LEADERLESS_PAUSE_MAX_S = 0.5
#: ``unavailable`` answers with a retry hint up to this long are retried
#: within a call (elections, a lapsed quorum); longer ones (a grace period)
#: go to the caller.
UNAVAILABLE_RETRY_MAX_MS = 1000
#: Largest response payload accepted.
RESPONSE_PAYLOAD_MAX = 1 << 16
#: Longest watch wait the server accepts.
WATCH_WAIT_MAX_S = 60.0

EndpointsArg = Union[str, Sequence[str]]
SecretFile = Union[str, "os.PathLike[str]"]


def parse_endpoints(endpoints: EndpointsArg) -> List[str]:
    """``"h1:p1,h2:p2"`` or a list of ``host:port`` strings."""
    if isinstance(endpoints, str):
        items = endpoints.split(",")
    else:
        items = list(endpoints)
    out = [e.strip() for e in items if e and e.strip()]
    if not out:
        raise ValueError("no endpoint given")
    for e in out:
        split_endpoint(e)
    return out


def split_endpoint(endpoint: str) -> Tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass
class Identity:
    tenant: str
    secret: Optional[bytes]
    client_name: str

    def __repr__(self) -> str:  # never print the secret
        secret = "<redacted>" if self.secret is not None else None
        return f"Identity(tenant={self.tenant!r}, secret={secret}, client_name={self.client_name!r})"


def make_identity(
    tenant: str,
    secret: Optional[Union[bytes, str]],
    secret_file: Optional[SecretFile],
    client_name: Optional[str],
) -> Identity:
    validate_tenant(tenant)
    if secret is not None and secret_file is not None:
        raise ValueError("pass secret or secret_file, not both")
    value: Optional[bytes] = None
    if secret_file is not None:
        value = auth.read_secret_file(secret_file)
    elif isinstance(secret, str):
        value = secret.encode("utf-8")
    elif secret is not None:
        value = bytes(secret)
    name = client_name if client_name is not None else f"palisade-python/{__version__}"
    if len(name.encode("utf-8")) > 128:
        raise ValueError("client_name is longer than 128 bytes")
    return Identity(tenant, value, name)


class Handshake:
    """The client half of the handshake (PROTOCOL.md, "Handshake and
    credentials"): ``start()`` gives the Hello; feed each answer to
    ``on_response`` until it returns a Welcome."""

    def __init__(self, identity: Identity, client_nonce: Optional[bytes] = None) -> None:
        self.identity = identity
        self.client_nonce = client_nonce if client_nonce is not None else secrets.token_bytes(16)
        self._expected_signature: Optional[bytes] = None

    def start(self) -> Hello:
        return Hello(self.identity.tenant, self.client_nonce, self.identity.client_name)

    def on_response(self, response: Response) -> Union[Request, Welcome]:
        ident = self.identity
        if isinstance(response, Challenge):
            if ident.secret is None:
                raise AuthError(
                    f"tenant {ident.tenant!r} requires a credential: pass secret= or secret_file="
                )
            if self._expected_signature is not None:
                raise ProtocolError("second challenge")
            message = auth.auth_message(
                ident.tenant, self.client_nonce, response.server_nonce, response.salt, response.iterations
            )
            keys = auth.derive_keys(ident.secret, response.salt, response.iterations)
            proof, self._expected_signature = auth.client_proof(keys, message)
            return Auth(proof)
        if isinstance(response, Welcome):
            if ident.secret is not None and self._expected_signature is None:
                raise AuthError(
                    f"the server accepted tenant {ident.tenant!r} without asking for its credential;"
                    " refusing to continue (wrong endpoint, or the tenant has no credential there:"
                    " drop the secret)"
                )
            if self._expected_signature is not None:
                got = response.server_signature
                if got is None or not auth.signatures_match(self._expected_signature, got):
                    raise AuthError("the server could not prove it holds this tenant's credential")
            return response
        if isinstance(response, Error):
            raise ServerError(response.code, response.retry_after_ms, response.message)
        raise ProtocolError(f"unexpected handshake response {response!r}")


def random_holder() -> int:
    """A random non-zero holder id."""
    while True:
        holder = secrets.randbits(64)
        if holder:
            return holder


def millis(seconds: float, what: str) -> int:
    if seconds < 0:
        raise ValueError(f"{what} must not be negative")
    ms = int(round(seconds * 1000))
    if ms > 0xFFFF_FFFF:
        raise ValueError(f"{what} is too long")
    return ms


def acquire_request(
    resource: str, ttl: float, wait: float, lock_delay: float, holder: Optional[int]
) -> Acquire:
    validate_resource(resource)
    if holder is None:
        holder = random_holder()
    if not 0 < holder < 1 << 64:
        raise ValueError("holder id must be a non-zero u64")
    return Acquire(
        resource=resource,
        holder=holder,
        ttl_ms=millis(ttl, "ttl"),
        lock_delay_ms=millis(lock_delay, "lock_delay"),
        wait_ms=millis(wait, "wait"),
    )


def unexpected(response: Response) -> PalisadeError:
    """The error for an answer that is not one of the expected ones."""
    if isinstance(response, Error):
        return ServerError(response.code, response.retry_after_ms, response.message)
    if isinstance(response, Redirect):
        return NoLeader(f"redirected to {response.endpoint!r} (leader {response.leader_id})")
    return ProtocolError(f"unexpected response {response!r}")


def acquire_outcome(request: Acquire, send_ms: int, welcome: Welcome, response: Response) -> Lease:
    if isinstance(response, Granted):
        # A waited grant started when the server granted it, at least
        # waited_ms - 1 after our send time (see valid_until_ms).
        return Lease(
            resource=request.resource,
            token=response.token,
            ttl_ms=response.ttl_ms,
            holder=request.holder,
            valid_until_ms=valid_until_ms(send_ms, response.ttl_ms, welcome.max_drift_ppm, response.waited_ms),
            waited_ms=response.waited_ms,
        )
    if isinstance(response, Busy):
        raise LeaseBusy(request.resource, response.token, response.remaining_ms, response.waiters, response.waited_ms)
    raise unexpected(response)


def renew_outcome(
    resource: str, token: int, holder: int, send_ms: int, welcome: Welcome, response: Response
) -> Lease:
    if isinstance(response, Renewed):
        return Lease(
            resource=resource,
            token=response.token,
            ttl_ms=response.ttl_ms,
            holder=holder,
            valid_until_ms=valid_until_ms(send_ms, response.ttl_ms, welcome.max_drift_ppm),
        )
    if isinstance(response, Stale):
        raise LeaseStale(resource, token, response.current_token, response.last_token)
    raise unexpected(response)


def release_outcome(response: Response) -> bool:
    if isinstance(response, Released):
        return True
    if isinstance(response, Stale):
        return False
    raise unexpected(response)


def check_outcome(response: Response) -> Union[Current, Stale]:
    if isinstance(response, (Current, Stale)):
        return response
    raise unexpected(response)

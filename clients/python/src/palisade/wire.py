"""The Palisade wire protocol, version 1, without I/O.

Frames and messages exactly as docs/PROTOCOL.md specifies them: a 24-byte
header, then a payload whose last bytes are the fixed-size *root* (40 bytes
for every request, 104 for every response), preceded by the out-of-line
bytes of long strings and vectors in field order.

Encoding functions return whole frames; :class:`FrameReader` turns a byte
stream back into headers and messages. Nothing here touches a socket or a
clock, so clients, servers and tests all share it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union, cast

__all__ = [
    "PROTOCOL_VERSION",
    "HEADER_LEN",
    "REQUEST_ROOT_LEN",
    "RESPONSE_ROOT_LEN",
    "PAYLOAD_LEN_MAX_HARD",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "NONCE_LEN",
    "RESOURCE_LEN_MAX",
    "TENANT_LEN_MAX",
    "CLIENT_NAME_LEN_MAX",
    "ErrorCode",
    "Role",
    "FrameError",
    "FrameHeader",
    "Hello",
    "Auth",
    "Acquire",
    "Renew",
    "Release",
    "Check",
    "Status",
    "Watch",
    "List",
    "Welcome",
    "Challenge",
    "Granted",
    "Busy",
    "Renewed",
    "Released",
    "Current",
    "Stale",
    "Peer",
    "StatusInfo",
    "Watched",
    "Redirect",
    "Error",
    "ListedLease",
    "Listed",
    "LIST_LIMIT_MAX",
    "Request",
    "Response",
    "encode_request",
    "encode_response",
    "encode_request_payload",
    "encode_response_payload",
    "decode_request_payload",
    "decode_response_payload",
    "parse_header",
    "FrameReader",
    "validate_resource",
    "validate_tenant",
    "token_epoch",
    "token_seq",
]

PROTOCOL_VERSION = 1
HEADER_LEN = 24
REQUEST_ROOT_LEN = 40
RESPONSE_ROOT_LEN = 104
#: Hard upper bound on any payload, whatever a server is configured to.
PAYLOAD_LEN_MAX_HARD = 1 << 20
KIND_REQUEST = 1
KIND_RESPONSE = 2
NONCE_LEN = 16
RESOURCE_LEN_MAX = 256
TENANT_LEN_MAX = 64
CLIENT_NAME_LEN_MAX = 128

_INLINE_MAX = 8
_OUT_OF_LINE_MAX = (1 << 30) - 1
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class ErrorCode(enum.IntEnum):
    """The closed set of error codes (PROTOCOL.md, "Error codes")."""

    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    FRAME_TOO_LARGE = 3
    UNKNOWN_TENANT = 4
    AUTH_FAILED = 5
    NOT_AUTHENTICATED = 6
    INVALID_ARGUMENT = 7
    TABLE_FULL = 8
    TOO_MANY_WAITERS = 9
    UNAVAILABLE = 10
    NOT_LEADER = 11
    TOO_MANY_CONNECTIONS = 12
    TIMEOUT = 13
    INTERNAL = 14
    TENANT_LEASE_QUOTA = 15
    TENANT_WAITER_QUOTA = 16
    TENANT_CONNECTION_QUOTA = 17
    SLOW_DOWN = 18

    @property
    def wire_name(self) -> str:
        """The protocol's snake_case name (``table_full``)."""
        return self.name.lower()

    @property
    def closes_connection(self) -> bool:
        """Whether the server closes the connection after this code
        (``invalid_argument`` also closes when it answers ``Hello``)."""
        return self in _CLOSING

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later."""
        return self in _RETRYABLE

    @classmethod
    def from_wire_name(cls, name: str) -> "ErrorCode":
        return cls[name.upper()]


_CLOSING = frozenset(
    {
        ErrorCode.MALFORMED,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.UNKNOWN_TENANT,
        ErrorCode.AUTH_FAILED,
        ErrorCode.NOT_AUTHENTICATED,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.TIMEOUT,
        ErrorCode.TENANT_CONNECTION_QUOTA,
        ErrorCode.SLOW_DOWN,
    }
)
_RETRYABLE = frozenset(
    {
        ErrorCode.TABLE_FULL,
        ErrorCode.TOO_MANY_WAITERS,
        ErrorCode.UNAVAILABLE,
        ErrorCode.NOT_LEADER,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.TENANT_LEASE_QUOTA,
        ErrorCode.TENANT_WAITER_QUOTA,
        ErrorCode.TENANT_CONNECTION_QUOTA,
        ErrorCode.SLOW_DOWN,
    }
)


class Role(enum.IntEnum):
    """A node's role as ``StatusInfo`` reports it."""

    LEADER = 1
    FOLLOWER = 2
    CANDIDATE = 3


class FrameError(Exception):
    """Bytes that are not a valid frame or message. ``code`` is the error
    code a server answers such bytes with."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Hello:
    tenant: str
    client_nonce: bytes
    client_name: str


@dataclass(frozen=True)
class Auth:
    proof: bytes


@dataclass(frozen=True)
class Acquire:
    resource: str
    holder: int
    ttl_ms: int
    lock_delay_ms: int = 0
    wait_ms: int = 0


@dataclass(frozen=True)
class Renew:
    resource: str
    token: int
    ttl_ms: int


@dataclass(frozen=True)
class Release:
    resource: str
    token: int


@dataclass(frozen=True)
class Check:
    resource: str
    token: int


@dataclass(frozen=True)
class Status:
    """The ``Status`` request (no fields); the answer is :class:`StatusInfo`."""


@dataclass(frozen=True)
class Watch:
    resource: str
    after: int
    wait_ms: int


@dataclass(frozen=True)
class List:
    """One page of the tenant's live leases: names starting with
    ``prefix``, sorting after ``after``, at most ``limit`` (1..=1000)."""

    prefix: str
    after: str
    limit: int


@dataclass(frozen=True)
class Welcome:
    node_id: int
    epoch: int
    max_ttl_ms: int
    min_ttl_ms: int
    lock_delay_max_ms: int
    max_drift_ppm: int
    server_signature: Optional[bytes] = None


@dataclass(frozen=True)
class Challenge:
    salt: bytes
    iterations: int
    server_nonce: bytes


@dataclass(frozen=True)
class Granted:
    token: int
    ttl_ms: int
    waited_ms: int


@dataclass(frozen=True)
class Busy:
    token: int
    remaining_ms: int
    waiters: bool
    waited_ms: int


@dataclass(frozen=True)
class Renewed:
    token: int
    ttl_ms: int


@dataclass(frozen=True)
class Released:
    token: int


@dataclass(frozen=True)
class Current:
    token: int
    remaining_ms: int


@dataclass(frozen=True)
class Stale:
    current_token: int
    last_token: int


@dataclass(frozen=True)
class Peer:
    id: int
    endpoint: str


@dataclass(frozen=True)
class StatusInfo:
    """The ``Status`` response."""

    node_id: int
    role: Role
    epoch: int
    leader_id: int
    cores: int
    leases_held: int
    ops_served: int
    connections: int
    waiters: int
    grants_from_unix_ms: int
    grace_remaining_ms: int
    uptime_ms: int
    table_capacity: int
    peers: Tuple[Peer, ...] = field(default_factory=tuple)
    version: str = ""


@dataclass(frozen=True)
class Watched:
    current_token: int
    last_token: int
    changed: bool


@dataclass(frozen=True)
class ListedLease:
    resource: str
    token: int
    remaining_ms: int
    waiters: bool


@dataclass(frozen=True)
class Listed:
    """Answer to :class:`List`: leases in name order; pass ``next_after``
    as the next page's ``after`` while ``more``."""

    leases: Tuple[ListedLease, ...] = field(default_factory=tuple)
    next_after: str = ""
    more: bool = False


@dataclass(frozen=True)
class Redirect:
    leader_id: int
    endpoint: str


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    retry_after_ms: int
    message: str


Request = Union[Hello, Auth, Acquire, Renew, Release, Check, Status, Watch, List]
Response = Union[
    Welcome,
    Challenge,
    Granted,
    Busy,
    Renewed,
    Released,
    Current,
    Stale,
    StatusInfo,
    Watched,
    Redirect,
    Error,
    Listed,
]

# ------------------------------------------------------------------ layout
#
# Each variant: (tag, class, fields). A field is (name, offset from the
# start of the root, kind), in declaration order, which is also the order
# of the out-of-line data. Offsets and kinds are PROTOCOL.md's tables.

_U8, _BOOL, _U16K, _U32K, _U64K = "u8", "bool", "u16", "u32", "u64"
_STR, _VEC_U8, _VEC_PEER, _OPT32 = "string", "vec_u8", "vec_peer", "option32"
_B16, _B32, _ROLE, _CODE = "bytes16", "bytes32", "role", "code"
_VEC_LEASE = "vec_lease"

_Field = Tuple[str, int, str]
_Variant = Tuple[int, type, Tuple[_Field, ...]]

_REQUESTS: Tuple[_Variant, ...] = (
    (0, Hello, (("tenant", 4, _STR), ("client_nonce", 12, _B16), ("client_name", 28, _STR))),
    (1, Auth, (("proof", 1, _B32),)),
    (
        2,
        Acquire,
        (
            ("resource", 4, _STR),
            ("holder", 16, _U64K),
            ("ttl_ms", 24, _U32K),
            ("lock_delay_ms", 28, _U32K),
            ("wait_ms", 32, _U32K),
        ),
    ),
    (3, Renew, (("resource", 4, _STR), ("token", 16, _U64K), ("ttl_ms", 24, _U32K))),
    (4, Release, (("resource", 4, _STR), ("token", 16, _U64K))),
    (5, Check, (("resource", 4, _STR), ("token", 16, _U64K))),
    (6, Status, ()),
    (7, Watch, (("resource", 4, _STR), ("after", 16, _U64K), ("wait_ms", 24, _U32K))),
    (8, List, (("prefix", 4, _STR), ("after", 12, _STR), ("limit", 20, _U32K))),
)

_RESPONSES: Tuple[_Variant, ...] = (
    (
        0,
        Welcome,
        (
            ("node_id", 4, _U16K),
            ("epoch", 8, _U32K),
            ("max_ttl_ms", 12, _U32K),
            ("min_ttl_ms", 16, _U32K),
            ("lock_delay_max_ms", 20, _U32K),
            ("max_drift_ppm", 24, _U32K),
            ("server_signature", 28, _OPT32),
        ),
    ),
    (1, Challenge, (("salt", 4, _VEC_U8), ("iterations", 12, _U32K), ("server_nonce", 16, _B16))),
    (2, Granted, (("token", 8, _U64K), ("ttl_ms", 16, _U32K), ("waited_ms", 20, _U32K))),
    (
        3,
        Busy,
        (
            ("token", 8, _U64K),
            ("remaining_ms", 16, _U32K),
            ("waiters", 20, _BOOL),
            ("waited_ms", 24, _U32K),
        ),
    ),
    (4, Renewed, (("token", 8, _U64K), ("ttl_ms", 16, _U32K))),
    (5, Released, (("token", 8, _U64K),)),
    (6, Current, (("token", 8, _U64K), ("remaining_ms", 16, _U32K))),
    (7, Stale, (("current_token", 8, _U64K), ("last_token", 16, _U64K))),
    (
        8,
        StatusInfo,
        (
            ("node_id", 8, _U16K),
            ("role", 10, _ROLE),
            ("epoch", 12, _U32K),
            ("leader_id", 16, _U16K),
            ("cores", 18, _U16K),
            ("leases_held", 24, _U64K),
            ("ops_served", 32, _U64K),
            ("connections", 40, _U32K),
            ("waiters", 48, _U64K),
            ("grants_from_unix_ms", 56, _U64K),
            ("grace_remaining_ms", 64, _U64K),
            ("uptime_ms", 72, _U64K),
            ("table_capacity", 80, _U32K),
            ("peers", 84, _VEC_PEER),
            ("version", 92, _STR),
        ),
    ),
    (9, Watched, (("current_token", 8, _U64K), ("last_token", 16, _U64K), ("changed", 24, _BOOL))),
    (10, Redirect, (("leader_id", 2, _U16K), ("endpoint", 4, _STR))),
    (11, Error, (("code", 1, _CODE), ("retry_after_ms", 4, _U32K), ("message", 8, _STR))),
    (12, Listed, (("leases", 4, _VEC_LEASE), ("next_after", 12, _STR), ("more", 20, _BOOL))),
)

LIST_LIMIT_MAX = 1000

_PEER_LEN = 12
_PEER_ENDPOINT_AT = 4
# A ListedLease element: resource (string) at 0, token u64 at 8,
# remaining_ms u32 at 16, waiters bool at 20; 24 bytes, 8-aligned.
_LEASE_LEN = 24

_BY_CLASS: Dict[type, _Variant] = {v[1]: v for v in _REQUESTS + _RESPONSES}
_REQUEST_BY_TAG: Dict[int, _Variant] = {v[0]: v for v in _REQUESTS}
_RESPONSE_BY_TAG: Dict[int, _Variant] = {v[0]: v for v in _RESPONSES}
_REQUEST_CLASSES = tuple(v[1] for v in _REQUESTS)
_RESPONSE_CLASSES = tuple(v[1] for v in _RESPONSES)

# ---------------------------------------------------------------- encoding


def _pad(out: bytearray, align: int) -> None:
    out.extend(b"\x00" * ((-len(out)) % align))


def _utf8(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    data = value.encode("utf-8")
    if len(data) > _OUT_OF_LINE_MAX:
        raise ValueError(f"{what} is too long for the wire")
    return data


def _check_int(value: object, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{what} = {value} is outside 0..={limit}")
    return value


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) != length:
        raise ValueError(f"{what} must be {length} bytes, not {len(data)}")
    return data


def _string_repr(data: bytes, target: Optional[int], at: int) -> bytes:
    """The 8 bytes of a string field at payload position ``at``; ``target``
    is where its out-of-line bytes start (None when inline)."""
    if len(data) <= _INLINE_MAX:
        return data + b"\xff" * (_INLINE_MAX - len(data))
    assert target is not None
    n = len(data)
    word = (n & 0x3F) | 0x80 | ((n & ~0x3F) << 2)
    return struct.pack("<Ii", word, target - at)


def _encode_payload(message: object, root_len: int) -> bytes:
    variant = _BY_CLASS.get(type(message))
    if variant is None:
        raise TypeError(f"not a protocol message: {message!r}")
    tag, _cls, fields = variant
    out = bytearray()
    values: Dict[str, object] = {}
    targets: Dict[str, int] = {}
    peer_targets: List[Optional[int]] = []
    peer_data: List[Tuple[int, bytes]] = []
    # 1. Out-of-line data, in field order.
    for name, _off, kind in fields:
        value = getattr(message, name)
        if kind == _STR:
            data = _utf8(value, name)
            values[name] = data
            if len(data) > _INLINE_MAX:
                targets[name] = len(out)
                out += data
        elif kind == _VEC_U8:
            data = bytes(value)
            if len(data) > _U32:
                raise ValueError(f"{name} is too long")
            values[name] = data
            targets[name] = len(out)
            out += data
        elif kind == _VEC_PEER:
            for peer in value:
                endpoint = _utf8(peer.endpoint, "peer endpoint")
                peer_data.append((_check_int(peer.id, _U16, "peer id"), endpoint))
                if len(endpoint) > _INLINE_MAX:
                    peer_targets.append(len(out))
                    out += endpoint
                else:
                    peer_targets.append(None)
            _pad(out, 4)
            targets[name] = len(out)
            for (peer_id, endpoint), target in zip(peer_data, peer_targets):
                element = len(out)
                out += struct.pack("<H", peer_id) + b"\x00\x00"
                out += _string_repr(endpoint, target, element + _PEER_ENDPOINT_AT)
            values[name] = len(peer_data)
        elif kind == _VEC_LEASE:
            leases = list(value)
            names = [_utf8(lease.resource, "lease resource") for lease in leases]
            lease_targets: List[Optional[int]] = []
            for data in names:
                if len(data) > _INLINE_MAX:
                    lease_targets.append(len(out))
                    out += data
                else:
                    lease_targets.append(None)
            _pad(out, 8)
            targets[name] = len(out)
            for lease, data, target in zip(leases, names, lease_targets):
                element = len(out)
                out += _string_repr(data, target, element)
                out += struct.pack(
                    "<QIB3x",
                    _check_int(lease.token, _U64, "lease token"),
                    _check_int(lease.remaining_ms, _U32, "lease remaining_ms"),
                    1 if lease.waiters else 0,
                )
            values[name] = len(leases)
        else:
            values[name] = value
    # 2. Align the root.
    _pad(out, 8)
    root_at = len(out)
    root = bytearray(root_len)
    root[0] = tag
    # 3. The root's fields.
    for name, off, kind in fields:
        value = values[name]
        at = root_at + off
        if kind == _STR:
            assert isinstance(value, bytes)
            root[off : off + 8] = _string_repr(value, targets.get(name), at)
        elif kind == _VEC_U8:
            assert isinstance(value, bytes)
            struct.pack_into("<iI", root, off, targets[name] - at, len(value))
        elif kind in (_VEC_PEER, _VEC_LEASE):
            assert isinstance(value, int)
            struct.pack_into("<iI", root, off, targets[name] - at, value)
        elif kind == _U64K:
            struct.pack_into("<Q", root, off, _check_int(value, _U64, name))
        elif kind == _U32K:
            struct.pack_into("<I", root, off, _check_int(value, _U32, name))
        elif kind == _U16K:
            struct.pack_into("<H", root, off, _check_int(value, _U16, name))
        elif kind == _U8:
            root[off] = _check_int(value, 0xFF, name)
        elif kind == _BOOL:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be bool")
            root[off] = 1 if value else 0
        elif kind == _B16:
            root[off : off + 16] = _check_bytes(value, 16, name)
        elif kind == _B32:
            root[off : off + 32] = _check_bytes(value, 32, name)
        elif kind == _OPT32:
            if value is not None:
                root[off] = 1
                root[off + 1 : off + 33] = _check_bytes(value, 32, name)
        elif kind == _ROLE:
            root[off] = int(Role(cast(int, value)))
        elif kind == _CODE:
            root[off] = int(ErrorCode(cast(int, value)))
        else:  # pragma: no cover - the tables above are closed
            raise AssertionError(kind)
    out += root
    assert len(out) % 8 == 0
    return bytes(out)


def encode_request_payload(request: Request) -> bytes:
    """The payload (no header) of one request."""
    if not isinstance(request, _REQUEST_CLASSES):
        raise TypeError(f"not a request: {request!r}")
    return _encode_payload(request, REQUEST_ROOT_LEN)


def encode_response_payload(response: Response) -> bytes:
    """The payload (no header) of one response."""
    if not isinstance(response, _RESPONSE_CLASSES):
        raise TypeError(f"not a response: {response!r}")
    return _encode_payload(response, RESPONSE_ROOT_LEN)


def _frame(kind: int, request_id: int, group: int, payload: bytes) -> bytes:
    _check_int(request_id, _U64, "request_id")
    _check_int(group, _U32, "group")
    header = struct.pack(
        "<IBBHQII", len(payload), PROTOCOL_VERSION, kind, 0, request_id, group, 0
    )
    return header + payload + b"\x00" * ((-len(payload)) % 8)


def encode_request(request: Request, request_id: int, group: int = 0) -> bytes:
    """A whole request frame. ``request_id`` must not be 0 (PROTOCOL.md,
    "Frame"): the server reserves 0 for connection-level errors."""
    if request_id == 0:
        raise ValueError("request_id 0 is reserved for connection-level errors")
    return _frame(KIND_REQUEST, request_id, group, encode_request_payload(request))


def encode_response(response: Response, request_id: int, group: int = 0) -> bytes:
    """A whole response frame (for servers and tests)."""
    return _frame(KIND_RESPONSE, request_id, group, encode_response_payload(response))


# ---------------------------------------------------------------- decoding


class _Window:
    """rkyv's validator: out-of-line objects must lie in [lo, hi), in
    order, each starting at or after the end of the previous one."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def claim(self, start: int, length: int, align: int, what: str) -> None:
        end = start + length
        if start < self.lo or end > self.hi:
            raise FrameError(
                f"{what}: out-of-line bytes {start}..{end} lie outside {self.lo}..{self.hi}"
                " (they must precede the root, in field order)"
            )
        if start % align:
            raise FrameError(f"{what}: misaligned at {start}")
        self.lo = end


def _read_string(buf: bytes, at: int, window: _Window, what: str) -> str:
    first = buf[at]
    if first & 0xC0 != 0x80:
        raw = buf[at : at + _INLINE_MAX]
        end = raw.find(b"\xff")
        data = raw if end < 0 else raw[:end]
    else:
        word, offset = struct.unpack_from("<Ii", buf, at)
        length = (word & 0x3F) | ((word & ~0xFF) >> 2)
        if length <= _INLINE_MAX:
            raise FrameError(f"{what}: out-of-line string of only {length} bytes")
        start = at + offset
        window.claim(start, length, 1, what)
        data = buf[start : start + length]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(f"{what}: invalid UTF-8 ({e})") from None


def _elements(
    buf: bytes, at: int, window: _Window, name: str, element_len: int, align: int
) -> List[Tuple[int, _Window]]:
    """The element positions of the vector field at ``at``, each with the
    window its out-of-line strings must lie in. The array itself must fit
    the current window, start aligned, and the strings its elements point
    to must lie before it; afterwards the window starts past the array."""
    offset, count = struct.unpack_from("<iI", buf, at)
    start = at + offset
    end = start + count * element_len
    if start < window.lo or end > window.hi or start % align:
        raise FrameError(f"{name}: array {start}..{end} outside {window.lo}..{window.hi}")
    inner = _Window(window.lo, start)
    window.lo = end
    return [(start + i * element_len, inner) for i in range(count)]


def _decode_payload(
    payload: bytes, root_len: int, by_tag: Dict[int, _Variant], what: str
) -> object:
    buf = bytes(payload)
    n = len(buf)
    if n < root_len:
        raise FrameError(f"{what} payload of {n} bytes is shorter than the {root_len}-byte root")
    root_at = n - root_len
    if root_at % 8:
        raise FrameError(f"{what} root at {root_at} is not 8-aligned")
    tag = buf[root_at]
    variant = by_tag.get(tag)
    if variant is None:
        raise FrameError(f"unknown {what} tag {tag}")
    _tag, cls, fields = variant
    window = _Window(0, root_at)
    kwargs: Dict[str, object] = {}
    for name, off, kind in fields:
        at = root_at + off
        value: object
        if kind == _STR:
            value = _read_string(buf, at, window, name)
        elif kind == _VEC_U8:
            offset, count = struct.unpack_from("<iI", buf, at)
            start = at + offset
            window.claim(start, count, 1, name)
            value = buf[start : start + count]
        elif kind == _VEC_PEER:
            peers = []
            for element, inner in _elements(buf, at, window, name, _PEER_LEN, 4):
                (peer_id,) = struct.unpack_from("<H", buf, element)
                endpoint = _read_string(buf, element + _PEER_ENDPOINT_AT, inner, "peer endpoint")
                peers.append(Peer(peer_id, endpoint))
            value = tuple(peers)
        elif kind == _VEC_LEASE:
            leases = []
            for element, inner in _elements(buf, at, window, name, _LEASE_LEN, 8):
                resource = _read_string(buf, element, inner, "lease resource")
                token, remaining_ms, waiters = struct.unpack_from("<QIB", buf, element + 8)
                if waiters > 1:
                    raise FrameError(f"lease waiters: bool byte {waiters}")
                leases.append(ListedLease(resource, token, remaining_ms, waiters == 1))
            value = tuple(leases)
        elif kind == _U64K:
            (value,) = struct.unpack_from("<Q", buf, at)
        elif kind == _U32K:
            (value,) = struct.unpack_from("<I", buf, at)
        elif kind == _U16K:
            (value,) = struct.unpack_from("<H", buf, at)
        elif kind == _U8:
            value = buf[at]
        elif kind == _BOOL:
            if buf[at] > 1:
                raise FrameError(f"{name}: bool byte {buf[at]}")
            value = buf[at] == 1
        elif kind == _B16:
            value = buf[at : at + 16]
        elif kind == _B32:
            value = buf[at : at + 32]
        elif kind == _OPT32:
            if buf[at] == 0:
                value = None
            elif buf[at] == 1:
                value = buf[at + 1 : at + 33]
            else:
                raise FrameError(f"{name}: option tag {buf[at]}")
        elif kind == _ROLE:
            try:
                value = Role(buf[at])
            except ValueError:
                raise FrameError(f"unknown role {buf[at]}") from None
        elif kind == _CODE:
            try:
                value = ErrorCode(buf[at])
            except ValueError:
                raise FrameError(f"unknown error code {buf[at]}") from None
        else:  # pragma: no cover
            raise AssertionError(kind)
        kwargs[name] = value
    return cls(**kwargs)


def decode_request_payload(payload: bytes) -> Request:
    """Validates and decodes a request payload (exact length, no padding)."""
    return _decode_payload(payload, REQUEST_ROOT_LEN, _REQUEST_BY_TAG, "request")  # type: ignore[return-value]


def decode_response_payload(payload: bytes) -> Response:
    """Validates and decodes a response payload (exact length, no padding)."""
    return _decode_payload(payload, RESPONSE_ROOT_LEN, _RESPONSE_BY_TAG, "response")  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameHeader:
    payload_len: int
    kind: int
    request_id: int
    group: int

    @property
    def frame_len(self) -> int:
        """Bytes the whole frame occupies, padding included."""
        return HEADER_LEN + ((self.payload_len + 7) & ~7)


def parse_header(header: bytes, payload_len_max: int = PAYLOAD_LEN_MAX_HARD) -> FrameHeader:
    """Checks a 24-byte header as the server does: version, kind, reserved
    fields and length, before anything else."""
    if len(header) < HEADER_LEN:
        raise FrameError("short header")
    payload_len, version, kind, flags, request_id, group, reserved = struct.unpack_from(
        "<IBBHQII", header
    )
    if version != PROTOCOL_VERSION:
        raise FrameError(
            f"unsupported protocol version {version}", ErrorCode.UNSUPPORTED_VERSION
        )
    if kind not in (KIND_REQUEST, KIND_RESPONSE):
        raise FrameError(f"unknown frame kind {kind}")
    if flags or reserved:
        raise FrameError("reserved header fields are not zero")
    limit = min(payload_len_max, PAYLOAD_LEN_MAX_HARD)
    if payload_len > limit:
        raise FrameError(
            f"payload of {payload_len} bytes exceeds the maximum of {limit}",
            ErrorCode.FRAME_TOO_LARGE,
        )
    if payload_len == 0:
        raise FrameError("empty payload")
    return FrameHeader(payload_len, kind, request_id, group)


class FrameReader:
    """Splits a byte stream into frames. Feed it what the socket returns;
    take frames out with :meth:`next_frame` until it returns None."""

    def __init__(self, payload_len_max: int = 1 << 16) -> None:
        self._buf = bytearray()
        self._max = payload_len_max

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Optional[Tuple[FrameHeader, bytes]]:
        """The next whole frame's header and exact payload, or None."""
        if len(self._buf) < HEADER_LEN:
            return None
        header = parse_header(bytes(self._buf[:HEADER_LEN]), self._max)
        if len(self._buf) < header.frame_len:
            return None
        payload = bytes(self._buf[HEADER_LEN : HEADER_LEN + header.payload_len])
        del self._buf[: header.frame_len]
        return header, payload

    def next_response(self) -> Optional[Tuple[FrameHeader, Response]]:
        """The next whole response frame, decoded, or None."""
        frame = self.next_frame()
        if frame is None:
            return None
        header, payload = frame
        if header.kind != KIND_RESPONSE:
            raise FrameError("the server sent a request frame")
        return header, decode_response_payload(payload)


# -------------------------------------------------------------- validation


def validate_resource(resource: str) -> None:
    """Raises ValueError unless ``resource`` is 1..=256 UTF-8 bytes without
    control characters (the server answers such names invalid_argument)."""
    data = resource.encode("utf-8")
    if not data:
        raise ValueError("resource name is empty")
    if len(data) > RESOURCE_LEN_MAX:
        raise ValueError("resource name is longer than 256 bytes")
    if any(_is_control(c) for c in resource):
        raise ValueError("resource name contains control characters")


def _is_control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def validate_tenant(tenant: str) -> None:
    """Raises ValueError unless ``tenant`` is 1..=64 bytes of [A-Za-z0-9._-]."""
    if not 1 <= len(tenant) <= TENANT_LEN_MAX:
        raise ValueError("tenant name must be 1 to 64 bytes")
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in tenant):
        raise ValueError("tenant name may only contain A-Z a-z 0-9 . _ -")


def token_epoch(token: int) -> int:
    """Epoch part of a fencing token (high 32 bits)."""
    return token >> 32


def token_seq(token: int) -> int:
    """Sequence part of a fencing token (low 32 bits)."""
    return token & _U32


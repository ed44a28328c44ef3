"""The tenant credential proof (PROTOCOL.md, "Handshake and credentials").

SCRAM-SHA-256 style: the client proves it knows the tenant secret without
sending it, bound to both sides' nonces, and checks the server's
signature in return.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Tuple, Union

__all__ = [
    "AuthKeys",
    "derive_keys",
    "auth_message",
    "client_proof",
    "signatures_match",
    "trim_secret",
    "read_secret_file",
]

_AUTH_PREFIX = b"palisade-auth-v1"
# Rust's u8::is_ascii_whitespace: not the vertical tab (0x0b), unlike
# Python's bytes.rstrip().
_SECRET_TRAILING_WHITESPACE = b" \t\n\x0c\r"


@dataclass(frozen=True)
class AuthKeys:
    """The keys derived from a secret, salt and iteration count."""

    salted_secret: bytes
    client_key: bytes
    stored_key: bytes
    server_key: bytes


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def derive_keys(secret: bytes, salt: bytes, iterations: int) -> AuthKeys:
    """PBKDF2-HMAC-SHA256 to 32 bytes, then the client, stored and server
    keys."""
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations, dklen=32)
    client_key = _hmac(salted, b"Client Key")
    return AuthKeys(
        salted_secret=salted,
        client_key=client_key,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=_hmac(salted, b"Server Key"),
    )


def auth_message(
    tenant: str, client_nonce: bytes, server_nonce: bytes, salt: bytes, iterations: int
) -> bytes:
    """The bytes both sides sign: the prefix, then tenant, nonces and salt
    each preceded by its length (u32 LE), then the iterations (u32 LE)."""
    out = bytearray(_AUTH_PREFIX)
    for part in (tenant.encode("utf-8"), client_nonce, server_nonce, salt):
        out += struct.pack("<I", len(part))
        out += part
    out += struct.pack("<I", iterations)
    return bytes(out)


def client_proof(keys: AuthKeys, message: bytes) -> Tuple[bytes, bytes]:
    """The proof to send in ``Auth`` and the server signature to expect in
    ``Welcome``."""
    signature = _hmac(keys.stored_key, message)
    proof = bytes(a ^ b for a, b in zip(keys.client_key, signature))
    return proof, _hmac(keys.server_key, message)


def signatures_match(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected, got)


def trim_secret(data: bytes) -> bytes:
    """A secret file's contents as the tenant secret: trailing ASCII
    whitespace (space, tab, newline, form feed, carriage return) removed."""
    return data.rstrip(_SECRET_TRAILING_WHITESPACE)


def read_secret_file(path: Union[str, "os.PathLike[str]"]) -> bytes:
    """Reads a tenant secret file the way the server's tools do."""
    with open(path, "rb") as f:
        secret = trim_secret(f.read())
    if not secret:
        raise ValueError(f"secret file {os.fspath(path)} is empty")
    return secret

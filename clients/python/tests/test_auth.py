"""The credential proof against proto/vectors/auth.json, and the client
half of the handshake."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

import support  # noqa: F401
from support import VECTORS_DIR

from palisade import AuthError, ServerError, auth, wire
from palisade._core import Handshake, make_identity


def vectors():  # type: ignore[no-untyped-def]
    path = VECTORS_DIR / "auth.json"
    if not path.exists():
        raise unittest.SkipTest(f"{path} not found")
    return json.loads(path.read_text())["vectors"]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


class AuthVectors(unittest.TestCase):
    def test_every_step(self) -> None:
        for v in vectors():
            with self.subTest(v["name"]):
                secret = auth.trim_secret(h(v["secret_file"]))
                self.assertEqual(secret, h(v["secret"]))
                keys = auth.derive_keys(secret, h(v["salt"]), v["iterations"])
                self.assertEqual(keys.salted_secret.hex(), v["salted_secret"])
                self.assertEqual(keys.client_key.hex(), v["client_key"])
                self.assertEqual(keys.stored_key.hex(), v["stored_key"])
                self.assertEqual(keys.server_key.hex(), v["server_key"])
                message = auth.auth_message(
                    v["tenant"], h(v["client_nonce"]), h(v["server_nonce"]), h(v["salt"]), v["iterations"]
                )
                self.assertEqual(message.hex(), v["auth_message"])
                proof, signature = auth.client_proof(keys, message)
                self.assertEqual(proof.hex(), v["proof"])
                self.assertEqual(signature.hex(), v["server_signature"])
                self.assertEqual(
                    v["credential"],
                    f"scram-sha256${v['iterations']}${v['salt']}${v['stored_key']}${v['server_key']}",
                )

    def test_handshake_sends_the_vector_proof(self) -> None:
        v = vectors()[0]
        identity = make_identity(v["tenant"], h(v["secret"]), None, "test")
        handshake = Handshake(identity, client_nonce=h(v["client_nonce"]))
        hello = handshake.start()
        self.assertEqual(hello, wire.Hello(v["tenant"], h(v["client_nonce"]), "test"))
        step = handshake.on_response(wire.Challenge(h(v["salt"]), v["iterations"], h(v["server_nonce"])))
        self.assertEqual(step, wire.Auth(h(v["proof"])))
        welcome = wire.Welcome(1, 1, 30000, 100, 10000, 10000, h(v["server_signature"]))
        self.assertEqual(handshake.on_response(welcome), welcome)

    def test_a_wrong_or_missing_server_signature_is_refused(self) -> None:
        v = vectors()[0]
        for signature in (None, b"\x00" * 32):
            handshake = Handshake(make_identity(v["tenant"], h(v["secret"]), None, None), h(v["client_nonce"]))
            handshake.start()
            handshake.on_response(wire.Challenge(h(v["salt"]), v["iterations"], h(v["server_nonce"])))
            with self.assertRaises(AuthError):
                handshake.on_response(wire.Welcome(1, 1, 30000, 100, 10000, 10000, signature))

    def test_a_secret_the_server_never_asks_for_is_refused(self) -> None:
        handshake = Handshake(make_identity("billing", b"secret-secret-secret", None, None))
        handshake.start()
        with self.assertRaises(AuthError):
            handshake.on_response(wire.Welcome(1, 1, 30000, 100, 10000, 10000, None))

    def test_a_challenge_without_a_secret_is_refused(self) -> None:
        handshake = Handshake(make_identity("billing", None, None, None))
        handshake.start()
        with self.assertRaises(AuthError):
            handshake.on_response(wire.Challenge(b"salt", 1, b"\x00" * 16))

    def test_errors_during_the_handshake_are_server_errors(self) -> None:
        handshake = Handshake(make_identity("nobody", None, None, None))
        handshake.start()
        with self.assertRaises(ServerError) as caught:
            handshake.on_response(wire.Error(wire.ErrorCode.UNKNOWN_TENANT, 0, "unknown tenant"))
        self.assertEqual(caught.exception.code, wire.ErrorCode.UNKNOWN_TENANT)

    def test_secret_files_lose_trailing_ascii_whitespace_only(self) -> None:
        self.assertEqual(auth.trim_secret(b"abc \t\r\n\x0c"), b"abc")
        # Rust's is_ascii_whitespace leaves the vertical tab alone.
        self.assertEqual(auth.trim_secret(b"abc\x0b\n"), b"abc\x0b")
        self.assertEqual(auth.trim_secret(b"  abc"), b"  abc")
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s"
            path.write_bytes(b"correct horse battery staple\n")
            self.assertEqual(auth.read_secret_file(path), b"correct horse battery staple")
            path.write_bytes(b"\n\n")
            with self.assertRaises(ValueError):
                auth.read_secret_file(path)


if __name__ == "__main__":
    unittest.main()

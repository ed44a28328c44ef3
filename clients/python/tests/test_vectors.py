"""The codec against proto/vectors: every frame byte for byte, every value,
every refusal."""

from __future__ import annotations

import json
import unittest
from typing import Any, Dict

import support  # noqa: F401  (puts src/ on the path)
from support import VECTORS_DIR

from palisade import wire
from palisade.wire import ErrorCode, FrameError, FrameReader, Role


def load(name: str) -> Dict[str, Any]:
    path = VECTORS_DIR / name
    if not path.exists():
        raise unittest.SkipTest(f"{path} not found (set PALISADE_VECTORS_DIR)")
    with open(path) as f:
        return json.load(f)


REQUESTS = {
    "Hello": wire.Hello,
    "Auth": wire.Auth,
    "Acquire": wire.Acquire,
    "Renew": wire.Renew,
    "Release": wire.Release,
    "Check": wire.Check,
    "Status": wire.Status,
    "Watch": wire.Watch,
    "List": wire.List,
}
RESPONSES = {
    "Welcome": wire.Welcome,
    "Challenge": wire.Challenge,
    "Granted": wire.Granted,
    "Busy": wire.Busy,
    "Renewed": wire.Renewed,
    "Released": wire.Released,
    "Current": wire.Current,
    "Stale": wire.Stale,
    "Status": wire.StatusInfo,
    "Watched": wire.Watched,
    "Redirect": wire.Redirect,
    "Error": wire.Error,
    "Listed": wire.Listed,
}
BYTES_FIELDS = ("client_nonce", "proof", "salt", "server_nonce")


def message(vector: Dict[str, Any]) -> Any:
    fields = dict(vector["message"])
    kind = fields.pop("type")
    table = REQUESTS if vector["direction"] == "request" else RESPONSES
    for key in BYTES_FIELDS:
        if key in fields:
            fields[key] = bytes.fromhex(fields[key])
    if fields.get("server_signature") is not None:
        fields["server_signature"] = bytes.fromhex(fields["server_signature"])
    if "peers" in fields:
        fields["peers"] = tuple(wire.Peer(p["id"], p["endpoint"]) for p in fields["peers"])
    if "leases" in fields:
        fields["leases"] = tuple(
            wire.ListedLease(l["resource"], l["token"], l["remaining_ms"], l["waiters"]) for l in fields["leases"]
        )
    if "role" in fields:
        fields["role"] = Role[fields["role"].upper()]
    if "code" in fields:
        code = ErrorCode.from_wire_name(fields["code"])
        assert int(code) == fields.pop("code_value"), vector["name"]
        fields["code"] = code
    return table[kind](**fields)


class FrameVectors(unittest.TestCase):
    doc: Dict[str, Any]

    @classmethod
    def setUpClass(cls) -> None:
        cls.doc = load("frames.json")

    def test_constants_match(self) -> None:
        self.assertEqual(self.doc["protocol_version"], wire.PROTOCOL_VERSION)
        self.assertEqual(self.doc["request_root_len"], wire.REQUEST_ROOT_LEN)
        self.assertEqual(self.doc["response_root_len"], wire.RESPONSE_ROOT_LEN)
        self.assertEqual(self.doc["request_tags"], list(REQUESTS))
        self.assertEqual(self.doc["response_tags"], list(RESPONSES))

    def test_every_frame_encodes_and_decodes_exactly(self) -> None:
        for vector in self.doc["vectors"]:
            with self.subTest(vector["name"]):
                msg = message(vector)
                frame = bytes.fromhex(vector["frame"])
                request_id = vector["request_id"]
                if vector["direction"] == "request":
                    encoded = wire.encode_request(msg, request_id, vector["group"])
                    decoded = wire.decode_request_payload(frame[24 : 24 + vector["payload_len"]])
                    kind, root = wire.KIND_REQUEST, wire.REQUEST_ROOT_LEN
                    tags = list(REQUESTS)
                else:
                    encoded = wire.encode_response(msg, request_id, vector["group"])
                    decoded = wire.decode_response_payload(frame[24 : 24 + vector["payload_len"]])
                    kind, root = wire.KIND_RESPONSE, wire.RESPONSE_ROOT_LEN
                    tags = list(RESPONSES)
                self.assertEqual(encoded.hex(), frame.hex())
                self.assertEqual(decoded, msg)
                header = wire.parse_header(frame[:24])
                self.assertEqual(header.kind, kind)
                self.assertEqual(header.request_id, request_id)
                self.assertEqual(header.group, vector["group"])
                self.assertEqual(header.payload_len, vector["payload_len"])
                self.assertEqual(header.frame_len, len(frame))
                self.assertEqual(vector["payload_len"] - root, vector["root_offset"])
                tag = frame[24 + vector["root_offset"]]
                self.assertEqual(tags[tag], vector["message"]["type"])

    def test_vectors_cover_every_variant_and_code(self) -> None:
        seen = set()
        codes = set()
        for vector in self.doc["vectors"]:
            msg = message(vector)
            seen.add((vector["direction"], type(msg)))
            if isinstance(msg, wire.Error):
                codes.add(msg.code)
        for cls in REQUESTS.values():
            self.assertIn(("request", cls), seen)
        for cls in RESPONSES.values():
            self.assertIn(("response", cls), seen)
        self.assertEqual(codes, set(ErrorCode))

    def test_a_stream_of_frames_in_odd_pieces(self) -> None:
        responses = [v for v in self.doc["vectors"] if v["direction"] == "response"]
        stream = b"".join(bytes.fromhex(v["frame"]) for v in responses)
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), 13):
            reader.feed(stream[i : i + 13])
            while True:
                item = reader.next_response()
                if item is None:
                    break
                got.append(item)
        self.assertEqual(len(got), len(responses))
        for (header, msg), vector in zip(got, responses):
            self.assertEqual(header.request_id, vector["request_id"])
            self.assertEqual(msg, message(vector))
        self.assertEqual(reader.buffered, 0)


class InvalidVectors(unittest.TestCase):
    def test_invalid_payloads_are_refused(self) -> None:
        doc = load("invalid.json")
        for vector in doc["invalid_payloads"]:
            with self.subTest(vector["name"]):
                frame = bytes.fromhex(vector["frame"])
                header = wire.parse_header(frame[:24])
                payload = frame[24 : 24 + header.payload_len]
                decode = (
                    wire.decode_request_payload
                    if vector["direction"] == "request"
                    else wire.decode_response_payload
                )
                with self.assertRaises(FrameError):
                    decode(payload)

    def test_invalid_headers_are_refused_with_the_servers_code(self) -> None:
        doc = load("invalid.json")
        for vector in doc["invalid_headers"]:
            with self.subTest(vector["name"]):
                frame = bytes.fromhex(vector["frame"])
                with self.assertRaises(FrameError) as caught:
                    wire.parse_header(frame[:24])
                self.assertEqual(caught.exception.code.wire_name, vector["server_error"])


class EncoderRules(unittest.TestCase):
    def test_request_id_0_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            wire.encode_request(wire.Status(), 0)

    def test_out_of_range_values_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            wire.encode_request(wire.Acquire("r", 1 << 64, 1), 1)
        with self.assertRaises(ValueError):
            wire.encode_request(wire.Acquire("r", 1, 1 << 32), 1)
        with self.assertRaises(ValueError):
            wire.encode_request(wire.Auth(b"short"), 1)

    def test_string_lengths_around_the_inline_limit(self) -> None:
        for n in (0, 1, 7, 8, 9, 63, 64, 65, 255, 256, 1000):
            resource = "x" * n
            payload = wire.encode_request_payload(wire.Check(resource, 7))
            self.assertEqual(len(payload) % 8, 0)
            self.assertEqual(wire.decode_request_payload(payload), wire.Check(resource, 7))

    def test_validation_helpers(self) -> None:
        wire.validate_resource("jobs/2026/11/übung")
        for bad in ("", "x" * 257, "a\nb", "a\x00b", "a\x85b"):
            with self.assertRaises(ValueError):
                wire.validate_resource(bad)
        wire.validate_tenant("team-a.prod_1")
        for bad in ("", "a b", "t" * 65, "ü"):
            with self.assertRaises(ValueError):
                wire.validate_tenant(bad)


if __name__ == "__main__":
    unittest.main()

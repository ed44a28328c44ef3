#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

Deterministic: running it again rewrites the same files. Sources:
- proto/vectors/frames.json and invalid.json (frames and payloads, byte for
  byte as docs/PROTOCOL.md defines them);
- fuzz/seed-sources/real-node.raft.log, a raft.log written by a real
  `palisade serve` (kept as it is; see README.md for how it was made),
  from which this script derives a version 1 file and torn variants;
- the fence file and MANIFEST formats of fencing-proxy/src/fence/ (checked
  against files the store itself wrote);
- the shipped configs (tuning/profiles/, examples/cluster3/) and the
  built-in default (fuzz/seed-sources/builtin-default.toml, from
  `palisade config default`).

Each target's input layout is described at the top of its
fuzz_targets/<target>.rs; the helpers below follow those layouts.
"""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent
REPO = FUZZ.parent
SEEDS = FUZZ / "seeds"


def out(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(bytes(data))


def u16(v):
    return struct.pack("<H", v)


def blob(data):
    data = bytes(data)
    assert len(data) <= 0xFFFF
    return u16(len(data)) + data


vectors = json.loads((REPO / "proto/vectors/frames.json").read_text())["vectors"]
invalid = json.loads((REPO / "proto/vectors/invalid.json").read_text())
frames = {v["name"]: bytes.fromhex(v["frame"]) for v in vectors}


def with_request_id(frame, request_id):
    frame = bytearray(frame)
    frame[8:16] = struct.pack("<Q", request_id)
    return bytes(frame)


def payload(frame):
    (n,) = struct.unpack_from("<I", frame, 0)
    return frame[24 : 24 + n]


# ---- frame: [limit choice][chunk seed] stream -------------------------------
LIMIT_16K = 4
requests = [v for v in vectors if v["direction"] == "request"]
responses = [v for v in vectors if v["direction"] == "response"]
for v in vectors:
    out("frame", v["name"], bytes([LIMIT_16K, 7]) + frames[v["name"]])
out("frame", "pipelined-requests", bytes([LIMIT_16K, 13]) + b"".join(frames[v["name"]] for v in requests))
out("frame", "pipelined-responses", bytes([3, 29]) + b"".join(frames[v["name"]] for v in responses))
for v in invalid["invalid_headers"]:
    out("frame", "invalid-" + v["name"], bytes([7, 1]) + bytes.fromhex(v["frame"]))
out("frame", "truncated", bytes([LIMIT_16K, 3]) + frames["hello_out_of_line"][:50])

# ---- message: the payload ---------------------------------------------------
for v in vectors:
    out("message", v["name"], payload(frames[v["name"]]))
for v in invalid["invalid_payloads"]:
    out("message", "invalid-" + v["name"], payload(bytes.fromhex(v["frame"])))

# ---- service: operations ----------------------------------------------------
# op byte: low two bits the connection (0..2), high three bits the action:
# 0 raw frame (u16 blob), 1 time (u16 ms, multiplier choice), 2 leadership,
# 3 close, 4..7 a request built from choices.
def req(conn, kind, *choices):
    return bytes([0x80 | conn, kind]) + bytes(choices)


def hello(conn, tenant_choice):
    # tenant choice, 16-byte client nonce, client name choice
    return req(conn, 0, tenant_choice) + bytes(range(16)) + b"\x00"


def acquire(conn, resource=0, holder=0, ttl=2, lock_delay=0, wait=0):
    # resource choice; holder: [1,2,3,0,MAX]; ttl: [100,1000,5000,30000,0,99,30001];
    # lock delay: [0,0,2000,60000,60001]; wait: [0,0,0,500]
    return req(conn, 2, resource, holder, ttl, lock_delay, wait)


def token_req(conn, kind, resource=0, token=0, *more):
    return req(conn, kind, resource, token, *more)


def advance(ms, mult=0):
    return bytes([0x20]) + u16(ms) + bytes([mult])


basic = (
    hello(0, 0)
    + acquire(0)
    + token_req(0, 5)  # check token[0]
    + token_req(0, 3, 0, 0, 2)  # renew token[0] for 30000
    + req(0, 6)  # status
    + req(0, 7, 0, 0, 0)  # watch, answer at once
    + token_req(0, 4)  # release
    + token_req(0, 5)  # check again: stale
)
out("service", "basic", basic)
contention = (
    hello(0, 0)
    + hello(1, 0)
    + hello(2, 2)
    + acquire(0, holder=0, ttl=1, lock_delay=2)
    + acquire(1, holder=1)
    + acquire(2, holder=1)  # another tenant: its own key
    + advance(1500)
    + acquire(1, holder=1)  # still in the lock delay
    + advance(2500)
    + acquire(1, holder=1)
    + acquire(0, holder=0)
    + token_req(1, 5)
)
out("service", "contention", contention)
auth = hello(0, 1) + req(0, 1, 1) + acquire(0) + token_req(0, 5) + hello(1, 1) + req(1, 1, 0)
out("service", "billing-auth", auth)
terms = (
    hello(0, 0)
    + acquire(0, ttl=3, lock_delay=3)
    + bytes([0x40, 0, 1])  # new term, grace, confirmed for ever
    + acquire(0, holder=1)
    + token_req(0, 5)
    + advance(1000, 2)  # 100 s
    + acquire(0, holder=1)
    + bytes([0x40, 1]) + u16(10)  # quorum confirmation lapses in 100 ms
    + advance(200)
    + token_req(0, 5)
    + bytes([0x40, 2, 1, 1])  # follower of node 2
    + acquire(0)
    + bytes([0x40, 3])  # candidate
    + req(0, 6)
)
out("service", "terms", terms)
raw = bytes([0x00]) + blob(frames["hello_inline"])
for name in ["acquire_inline", "check", "renew", "release", "status", "watch", "acquire_256_bytes"]:
    raw += bytes([0x00]) + blob(with_request_id(frames[name], 2))
out("service", "raw-frames", raw)
out("service", "before-hello", bytes([0x00]) + blob(frames["acquire_inline"]) + hello(1, 3) + hello(2, 4))

# ---- client_handshake: [identity: bit 0 = with secret] server stream --------
welcome = with_request_id(frames["welcome_no_signature"], 1)
out("client_handshake", "welcome", b"\x00" + welcome)
out("client_handshake", "welcome-connection-level", b"\x00" + with_request_id(frames["welcome_no_signature"], 0))
out("client_handshake", "challenge-then-welcome",
    b"\x01" + with_request_id(frames["challenge"], 1) + with_request_id(frames["welcome_signature"], 2))
out("client_handshake", "challenge-without-secret", b"\x00" + with_request_id(frames["challenge"], 1))
out("client_handshake", "welcome-without-challenge", b"\x01" + welcome)
out("client_handshake", "error", b"\x00" + with_request_id(frames["error_code_unknown_tenant"], 1))
out("client_handshake", "redirect", b"\x00" + with_request_id(frames["redirect"], 1))
out("client_handshake", "early-answers",
    b"\x00" + with_request_id(frames["granted"], 7) + with_request_id(frames["status_with_peers"], 3) + welcome)

# ---- NBD --------------------------------------------------------------------
NBD_IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED = 1, 2, 3, 5, 6, 7, 8
CLIENT_FLAGS = struct.pack(">I", 0b11)


def option(opt, data=b""):
    return struct.pack(">QII", NBD_IHAVEOPT, opt, len(data)) + data


def go_data(name, infos=()):
    name = name.encode()
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def request(cmd, offset, length, cookie=1, flags=0, data=b""):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + data


READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES = 0, 1, 2, 3, 4, 6
transmission = (
    request(READ, 0, 512, 1)
    + request(WRITE, 4096, 8, 2, 0, b"abcdefgh")
    + request(FLUSH, 0, 0, 3)
    + request(TRIM, 8192, 4096, 4)
    + request(WRITE_ZEROES, 0, 4096, 5, 2)
    + request(WRITE, 1 << 20, 16, 6, 0, bytes(16))  # beyond the end
    + request(99, 0, 0, 7)
    + request(DISC, 0, 0, 8)
)
# Export answer: Ok (0), then export_info choices: size [0,512,4096,1M,1T,..],
# flags u16, min [1,1,512,4096,65536], preferred shift, max kind (+ byte).
EXPORT_OK_1M = bytes([0, 3]) + struct.pack("<H", 0x01FF) + bytes([0, 0, 0])
EXPORT_OK_ALIGNED = bytes([0, 3]) + struct.pack("<H", 0x006D) + bytes([3, 1, 1, 3])
EXPORT_UNKNOWN = bytes([2])


def handshake_seed(name, stream, answers, options_count=3, seed=5):
    out("nbd_handshake", name, bytes([options_count, seed, len(answers)]) + answers + stream)


handshake_seed("go", CLIENT_FLAGS + option(OPT_GO, go_data("disk0")) + transmission, EXPORT_OK_1M)
handshake_seed(
    "structured-list-info-go",
    CLIENT_FLAGS
    + option(OPT_STRUCTURED)
    + option(OPT_LIST)
    + option(OPT_INFO, go_data("disk0", [1, 3]))
    + option(OPT_GO, go_data("disk0@4294967297", [0]))
    + transmission,
    EXPORT_OK_ALIGNED + EXPORT_OK_1M + bytes([1]),
)
handshake_seed("export-name", CLIENT_FLAGS + option(OPT_EXPORT_NAME, b"disk0") + transmission, EXPORT_OK_1M)
handshake_seed("export-name-zeroes", struct.pack(">I", 1) + option(OPT_EXPORT_NAME, b"disk0"), EXPORT_OK_1M)
handshake_seed("refused-then-go", CLIENT_FLAGS + option(OPT_GO, go_data("nope")) + option(OPT_GO, go_data("disk0")),
               EXPORT_UNKNOWN + EXPORT_OK_1M)
handshake_seed("abort", CLIENT_FLAGS + option(OPT_STARTTLS) + option(99, b"xyz") + option(OPT_ABORT), b"")
handshake_seed("oldstyle-client", struct.pack(">I", 0), b"")


def transmission_seed(name, stream, info, structured=0, seed=9):
    out("nbd_transmission", name, bytes([3]) + info + bytes([structured, seed]) + stream)


INFO_1M_ALL = bytes([3]) + struct.pack("<H", 0x01FD) + bytes([0, 0, 0])
INFO_ALIGNED_RO = bytes([2]) + struct.pack("<H", 0x006F) + bytes([3, 0, 1, 0])
transmission_seed("all-commands", transmission, INFO_1M_ALL)
transmission_seed("all-commands-structured", transmission, INFO_1M_ALL, 1)
transmission_seed("read-only-aligned", transmission, INFO_ALIGNED_RO)
transmission_seed("oversized-write", request(WRITE, 0, 1 << 20, 1), INFO_1M_ALL)
transmission_seed("bad-magic", b"\x00" * 28, INFO_1M_ALL)

# ---- raftlog ----------------------------------------------------------------
def record(kind, data):
    crc = zlib.crc32(bytes([kind]) + data) & 0xFFFFFFFF
    return struct.pack("<II", len(data), crc) + bytes([kind]) + data


def records(data):
    at = 0
    while at + 9 <= len(data):
        n, _crc = struct.unpack_from("<II", data, at)
        kind = data[at + 8]
        yield kind, data[at + 9 : at + 9 + n]
        at += 9 + n


real = (FUZZ / "seed-sources" / "real-node.raft.log").read_bytes()
recs = list(records(real))
assert recs[0][0] == 0 and recs[0][1].startswith(b"palisade-raft-v2"), "a version 2 header first"
header = recs[0][1]
assert header[16:18] == struct.pack("<H", 1) and header[18:] == b"fuzz", "node 1 of cluster fuzz"
out("raftlog", "real-node", b"\x00" + real)
out("raftlog", "torn-tail", b"\x00" + real[: len(real) - 5])
out("raftlog", "garbage-tail", b"\x00" + real + b"\x00" * 7 + b"\xff" * 20)
# Version 1: the same items as top-level records under a v1 header.
v1 = record(0, b"palisade-raft-v1" + header[16:])
for kind, data in recs[1:]:
    assert kind == 5
    items = data[8:]
    at = 0
    while at < len(items):
        (n,) = struct.unpack_from("<I", items, at)
        v1 += record(items[at + 4], items[at + 5 : at + 5 + n])
        at += 5 + n
out("raftlog", "version-1", b"\x00" + v1)
# Framed mode: [mode: 1 framed, 2 header, 4 tail][count] (kind, blob)*.
framed = bytes([3, len(recs) - 1]) + b"".join(bytes([k]) + blob(d) for k, d in recs[1:])
out("raftlog", "framed", framed)
out("raftlog", "framed-torn", bytes([7, len(recs) - 1]) + b"".join(bytes([k]) + blob(d) for k, d in recs[1:]) + b"\x05\x00\x00")

# ---- fence ------------------------------------------------------------------
def fence_file(name, slots):
    name = name.encode()
    head = b"PLSDFNC1" + struct.pack("<II", 1, len(name)) + name
    head += struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)
    blocks = [head.ljust(4096, b"\x00")]
    for seq, fence in slots:
        slot = b"PLSDSLOT" + struct.pack("<QQI", seq, fence, zlib.crc32(name) & 0xFFFFFFFF)
        slot += struct.pack("<I", zlib.crc32(slot) & 0xFFFFFFFF)
        blocks.append(slot.ljust(4096, b"\x00"))
    return b"".join(blocks)


def manifest(names):
    text = b"PLSDMAN1\n" + b"".join(n.encode().hex().encode() + b"\n" for n in sorted(names))
    return text + b"crc %08x\n" % (zlib.crc32(text) & 0xFFFFFFFF)


# Mode bits: 1 file, 2 file from the template, 4 fix checksums, 8 manifest,
# 16 manifest from the template, 32 the file copied as another export's.
FILE, TEMPLATE, FIX, MANIFEST, MANIFEST_TEMPLATE, COPY = 1, 2, 4, 8, 16, 32
out("fence", "template", bytes([FILE | TEMPLATE | MANIFEST | MANIFEST_TEMPLATE, 0]))
out("fence", "template-one-byte", bytes([FILE | TEMPLATE | MANIFEST | MANIFEST_TEMPLATE, 1, 0]) + u16(4096 + 17) + b"\x07")
out("fence", "template-seq-field-fixed", bytes([FILE | TEMPLATE | FIX | MANIFEST | MANIFEST_TEMPLATE, 1, 1, 0, 0, 2, 1]))
out("fence", "template-truncated", bytes([FILE | TEMPLATE | MANIFEST | MANIFEST_TEMPLATE, 1, 2]) + u16(4096 + 40))
out("fence", "missing-file", bytes([MANIFEST | MANIFEST_TEMPLATE]))
out("fence", "no-manifest", bytes([FILE | TEMPLATE, 0]))
out("fence", "copied", bytes([FILE | TEMPLATE | COPY | MANIFEST | MANIFEST_TEMPLATE, 0]))
valid = fence_file("disk0", [(2, 9), (2, 9)])
torn = fence_file("disk0", [(3, 12), (2, 9)])
out("fence", "raw-valid", bytes([FILE | MANIFEST]) + blob(valid) + blob(manifest(["disk0"])))
out("fence", "raw-torn-b", bytes([FILE | MANIFEST]) + blob(torn) + blob(manifest(["disk0"])))
out("fence", "raw-other-export", bytes([FILE | MANIFEST]) + blob(fence_file("disk1", [(1, 4), (1, 4)])) + blob(manifest(["disk0", "disk1"])))
out("fence", "raw-corrupt-manifest", bytes([FILE | MANIFEST]) + blob(valid) + blob(manifest(["disk0"])[:-3]))

# ---- config -----------------------------------------------------------------
for path in sorted((REPO / "tuning/profiles").glob("*.toml")) + sorted((REPO / "examples/cluster3").glob("*.toml")):
    out("config", path.parent.name + "-" + path.name, path.read_bytes())
out("config", "invalid-keys", b"[node]\nid = 0\n[leases]\nmax_ttl = 30\ncolour = \"red\"\n")
out("config", "tenants", b'[[tenants]]\nname = "billing"\ncredential = "scram-sha256$4096$c2FsdA==$AAAA$BBBB"\n[[tenants]]\nname = "default"\n')
out("config", "builtin-default.toml", (FUZZ / "seed-sources" / "builtin-default.toml").read_bytes())

"""Real processes for the live tests: `palisade serve` (one node or a
cluster), `palisade-fencing-proxy`, a TCP forwarder that can go silent, a
listener that never answers, and a minimal NBD client.

Binaries come from $PALISADE_BIN_DIR, else the repository's
target/release, else target/debug (scripts/test.sh builds them first).
Tests that need one skip, printing why, when it is missing.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
REPO_ROOT = PACKAGE_ROOT.parent.parent
VECTORS_DIR = Path(os.environ.get("PALISADE_VECTORS_DIR", REPO_ROOT / "proto" / "vectors"))

# Importable without installing the package.
sys.path.insert(0, str(PACKAGE_ROOT / "src"))

from palisade import Client, Role  # noqa: E402


def find_binary(name: str) -> Optional[Path]:
    dirs: List[Path] = []
    if os.environ.get("PALISADE_BIN_DIR"):
        dirs.append(Path(os.environ["PALISADE_BIN_DIR"]))
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    dirs += [target / "release", target / "debug"]
    for d in dirs:
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str) -> Path:
    """The binary's path, or skip the test with the reason printed."""
    path = find_binary(name)
    if path is None:
        reason = (
            f"{name} not built (looked in $PALISADE_BIN_DIR, target/release, target/debug);"
            f" run `cargo build --release --bin {name}` or scripts/test.sh"
        )
        print(f"SKIP: {reason}", file=sys.stderr)
        raise unittest.SkipTest(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def credential_line(secret_file: Path, iterations: int = 4096) -> str:
    """`palisade tenant-credential --secret-file F`: the `credential = ...` line."""
    out = subprocess.run(
        [str(require_binary("palisade")), "tenant-credential", "--secret-file", str(secret_file),
         "--iterations", str(iterations)],
        check=True,
        capture_output=True,
        text=True,
    )
    line = out.stdout.strip()
    assert line.startswith('credential = "scram-sha256$'), line
    return line


class Node:
    """A single `palisade serve` on a free loopback port with a fresh data
    directory (default config plus ``config``)."""

    def __init__(self, config: str = "", work: Optional[Path] = None) -> None:
        self._tmp = None
        if work is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="palisade-py-")
            work = Path(self._tmp.name)
        self.work = work
        self.bin = require_binary("palisade")
        self.config_path = work / "palisade.toml"
        self.config_path.write_text(config)
        self.ready_path = work / "ready.json"
        self.log_path = work / "server.log"
        self.data_dir = work / "data"
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.endpoint = ""
        self.start()

    def start(self) -> None:
        if self.ready_path.exists():
            self.ready_path.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.bin), "serve", "--config", str(self.config_path), "--listen", "127.0.0.1:0",
             "--admin-listen", "off", "--data-dir", str(self.data_dir), "--ready-file", str(self.ready_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"palisade serve exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"palisade serve did not become ready: {self.log()}")
            time.sleep(0.02)
        self.endpoint = json.loads(self.ready_path.read_text())["endpoint"]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


CLUSTER_SECRET = "correct horse battery staple\n"


class Cluster:
    """Three (or ``size``) `palisade serve` nodes on free loopback ports,
    configured like examples/cluster3 with short timings."""

    def __init__(self, size: int = 3, extra: str = "", heartbeat_ms: int = 20, election_ms: int = 200) -> None:
        self.bin = require_binary("palisade")
        self._tmp = tempfile.TemporaryDirectory(prefix="palisade-py-cluster-")
        self.dir = Path(self._tmp.name)
        self.ids = list(range(1, size + 1))
        self.client_ports = {i: free_port() for i in self.ids}
        self.peer_ports = {i: free_port() for i in self.ids}
        self.procs: Dict[int, subprocess.Popen] = {}  # type: ignore[type-arg]
        (self.dir / "cluster.secret").write_text(CLUSTER_SECRET)
        for i in self.ids:
            text = (
                f"[node]\nid = {i}\ncores = 1\ndata_dir = \"data{i}\"\n\n"
                f"[listen]\nclient = \"127.0.0.1:{self.client_ports[i]}\"\n\n"
                f"[cluster]\nname = \"pytest\"\nheartbeat_interval = \"{heartbeat_ms}ms\"\n"
                f"election_timeout = \"{election_ms}ms\"\nsecret_file = \"cluster.secret\"\n\n"
                f"[admin]\nlisten = \"off\"\n"
            )
            for j in self.ids:
                text += (
                    f"\n[[cluster.peers]]\nid = {j}\npeer = \"127.0.0.1:{self.peer_ports[j]}\"\n"
                    f"client = \"127.0.0.1:{self.client_ports[j]}\"\n"
                )
            text += "\n" + extra + "\n"
            (self.dir / f"node{i}.toml").write_text(text)
        for i in self.ids:
            self.start(i)

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.client_ports[i]}"

    def endpoints(self) -> List[str]:
        return [self.endpoint(i) for i in self.ids]

    def start(self, i: int) -> None:
        log = open(self.dir / f"node{i}.log", "ab")
        self.procs[i] = subprocess.Popen(
            [str(self.bin), "serve", "--config", str(self.dir / f"node{i}.toml")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log(self, i: int) -> str:
        try:
            return (self.dir / f"node{i}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def status(self, i: int):  # type: ignore[no-untyped-def]
        """Node i's StatusInfo, or None if it does not answer."""
        try:
            with Client(self.endpoint(i), attempt_timeout=0.5, attempts_max=1) as c:
                return c.status()
        except Exception:  # noqa: BLE001
            return None

    def leader(self, timeout: float = 20.0, among: Optional[List[int]] = None) -> int:
        """Waits until one live node leads and every other live node follows it."""
        live = among or [i for i in self.ids if i in self.procs]

        def settled() -> Optional[int]:
            statuses = {i: self.status(i) for i in live}
            if any(s is None for s in statuses.values()):
                return None
            leaders = [i for i, s in statuses.items() if s.role == Role.LEADER]
            if len(leaders) != 1:
                return None
            if all(s.leader_id == leaders[0] for s in statuses.values()):
                return leaders[0]
            return None

        try:
            return wait_for(settled, timeout, "a leader")
        except AssertionError:
            logs = "\n".join(f"--- node {i}\n{self.log(i)}" for i in live)
            raise AssertionError(f"no leader within {timeout} s\n{logs}") from None

    def serving_leader(self, timeout: float = 30.0, among: Optional[List[int]] = None) -> int:
        """Waits for a leader that grants: past any grace period it owes
        (a leader not elected in the cluster's first term)."""
        deadline = time.monotonic() + timeout
        leader = self.leader(timeout, among)

        def granting() -> bool:
            status = self.status(leader)
            return status is not None and status.role == Role.LEADER and status.grace_remaining_ms == 0

        wait_for(granting, max(deadline - time.monotonic(), 1.0), "the leader's grace period to end")
        return leader

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i)
        self._tmp.cleanup()


class SilentListener:
    """A TCP port that completes the TCP handshake (the kernel does) and
    then never answers: a hung node."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = "127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class Forwarder:
    """Forwards TCP to ``upstream``; :meth:`cut` makes it silently swallow
    everything in both directions (a partition that leaves sockets open)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.endpoint = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.cut_event = threading.Event()
        self._closed = threading.Event()
        self._sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.cut_event.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                self._sockets.append(client)  # accepted, never served
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                if not self.cut_event.is_set():
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            if self.cut_event.is_set():
                continue
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


class FencingProxy:
    """`palisade-fencing-proxy` with one file-backed export ``disk0`` for
    tenant default's resource disk0, like examples/proxy."""

    def __init__(self, lease_endpoint: str, work: Path) -> None:
        self.bin = require_binary("palisade-fencing-proxy")
        self.work = work
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = work / "proxy.toml"
        self.config.write_text(
            f"[proxy]\nlisten = \"127.0.0.1:{self.port}\"\nmetrics = \"127.0.0.1:{self.metrics_port}\"\n"
            f"state_dir = \"state\"\n\n[lease_service]\nendpoint = \"{lease_endpoint}\"\ntimeout = \"1s\"\n\n"
            "[[exports]]\nname = \"disk0\"\ntenant = \"default\"\nresource = \"disk0\"\n"
            "file = \"disk0.img\"\nsize = \"1MiB\"\n"
        )
        log = open(work / "proxy.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.bin), "--config", str(self.config)], stdout=subprocess.DEVNULL, stderr=log
        )
        log.close()

        def greets() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    return s.recv(8) == b"NBDMAGIC"
            except OSError:
                return False

        wait_for(greets, 30, "the proxy's NBD greeting")

    def metric(self, name: str) -> Optional[int]:
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            text = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                text += chunk
        prefix = f'{name}{{export="disk0"}} '
        for line in text.decode(errors="replace").splitlines():
            if line.startswith(prefix):
                return int(float(line[len(prefix):]))
        return None

    def log(self) -> str:
        try:
            return (self.work / "proxy.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------- a tiny NBD client

NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
EPERM = 1


class NbdRefused(Exception):
    def __init__(self, reply_type: int, message: str) -> None:
        super().__init__(f"NBD option refused (0x{reply_type:08x}): {message}")
        self.reply_type = reply_type


class NbdClient:
    """Fixed-newstyle handshake with NBD_OPT_GO, simple replies only."""

    def __init__(self, port: int, export: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._handle = 0
        magic, opt_magic, flags = struct.unpack(">QQH", self._read(18))
        assert magic == 0x4E42444D41474943 and opt_magic == 0x49484156454F5054, "not an NBD server"
        assert flags & 1, "server is not fixed-newstyle"
        self.sock.sendall(struct.pack(">I", 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, NBD_OPT_GO, len(data)) + data)
        self.size = 0
        self.flags = 0
        while True:
            _magic, _opt, reply, length = struct.unpack(">QIII", self._read(20))
            body = self._read(length)
            if reply & 0x8000_0000:
                self.sock.close()
                raise NbdRefused(reply, body.decode(errors="replace"))
            if reply == NBD_REP_INFO and len(body) >= 12 and struct.unpack(">H", body[:2])[0] == 0:
                self.size, self.flags = struct.unpack(">QH", body[2:12])
            if reply == NBD_REP_ACK:
                break

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("NBD server closed the connection")
            out += chunk
        return out

    def _request(self, cmd: int, offset: int, length: int, data: bytes = b"") -> Tuple[int, bytes]:
        self._handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, self._handle, offset, length) + data)
        magic, error, handle = struct.unpack(">IIQ", self._read(16))
        assert magic == 0x67446698, f"unexpected reply magic {magic:#x}"
        assert handle == self._handle
        payload = self._read(length) if cmd == NBD_CMD_READ and error == 0 else b""
        return error, payload

    def write(self, offset: int, data: bytes) -> int:
        """The NBD error code (0 = written)."""
        return self._request(NBD_CMD_WRITE, offset, len(data), data)[0]

    def read(self, offset: int, length: int) -> bytes:
        error, data = self._request(NBD_CMD_READ, offset, length)
        if error:
            raise OSError(error, "NBD read failed")
        return data

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, NBD_CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.sock.close()

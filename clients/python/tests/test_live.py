"""The client against a real single-node `palisade serve` (default config,
free port, temp data directory) with an extra credentialed tenant; and the
protocol's documented behaviour checked at the byte level."""

from __future__ import annotations

import asyncio
import socket
import struct
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import List, Optional, Tuple

import support
from support import Forwarder, Node, SilentListener, credential_line, free_port

from palisade import (
    AuthError,
    Client,
    ConnectionFailed,
    Current,
    ErrorCode,
    LeaseBusy,
    LeaseLost,
    LeaseStale,
    Role,
    ServerError,
    Stale,
    now_ms,
    token_epoch,
    wire,
)
from palisade.aio import AsyncClient

NODE: Optional[Node] = None
TMP: Optional[tempfile.TemporaryDirectory] = None  # type: ignore[type-arg]
GOOD_SECRET = Path("/nonexistent/good.secret")  # set by setUpModule
BAD_SECRET = Path("/nonexistent/bad.secret")


def setUpModule() -> None:
    global NODE, TMP, GOOD_SECRET, BAD_SECRET
    support.require_binary("palisade")
    TMP = tempfile.TemporaryDirectory(prefix="palisade-py-live-")
    work = Path(TMP.name)
    GOOD_SECRET = work / "good.secret"
    BAD_SECRET = work / "bad.secret"
    GOOD_SECRET.write_text("correct horse battery staple\n")
    BAD_SECRET.write_text("incorrect horse battery staple\n")
    config = (
        "[leases]\nmax_ttl = \"30s\"\nmin_ttl = \"100ms\"\nlock_delay_max = \"10s\"\n\n"
        "[[tenants]]\nname = \"default\"\n\n"
        f"[[tenants]]\nname = \"billing\"\n{credential_line(GOOD_SECRET)}\n"
    )
    assert "correct horse" not in config
    NODE = Node(config, work=work)


def tearDownModule() -> None:
    if NODE is not None:
        NODE.close()
    if TMP is not None:
        TMP.cleanup()


def endpoint() -> str:
    assert NODE is not None
    return NODE.endpoint


_names = iter(range(1_000_000))


def fresh(prefix: str) -> str:
    """A resource name no other test uses."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


class LeaseLifecycle(unittest.TestCase):
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.client = Client(endpoint())

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def test_welcome_reports_the_nodes_limits(self) -> None:
        w = self.client.welcome
        self.assertEqual((w.max_ttl_ms, w.min_ttl_ms, w.lock_delay_max_ms), (30_000, 100, 10_000))
        self.assertEqual(w.max_drift_ppm, 10_000)
        self.assertIsNone(w.server_signature)
        self.assertGreaterEqual(w.epoch, 1)

    def test_acquire_busy_renew_check_release(self) -> None:
        r = fresh("cycle")
        sent = now_ms()
        lease = self.client.acquire(r, ttl=10)
        self.assertEqual(token_epoch(lease.token), self.client.welcome.epoch)
        self.assertEqual(lease.ttl_ms, 10_000)
        # Validity: send time + ttl × (1 − 1 %) − 1 ms, from a send time
        # no earlier than ours.
        self.assertGreaterEqual(lease.valid_until_ms, sent + 9_899)
        self.assertLessEqual(lease.valid_until_ms, now_ms() + 9_899)
        with self.assertRaises(LeaseBusy) as busy:
            self.client.acquire(r, ttl=10)
        self.assertEqual(busy.exception.token, lease.token)
        self.assertGreater(busy.exception.remaining_ms, 9_000)
        check = self.client.check(r, lease.token)
        self.assertIsInstance(check, Current)
        # A renewal never promises more than the ttl the lease was granted
        # with: the answer carries what was applied, and validity follows it.
        # Sent at least a millisecond after the acquire (the three requests
        # above can all fit in one), so its validity is strictly later.
        time.sleep(0.002)
        renewed = self.client.renew(lease, ttl=20)
        self.assertEqual(renewed.token, lease.token)
        self.assertEqual(renewed.ttl_ms, 10_000)
        self.assertGreater(renewed.valid_until_ms, lease.valid_until_ms)
        stale = self.client.check(r, lease.token + 1)
        self.assertEqual(stale, Stale(current_token=lease.token, last_token=lease.token))
        self.assertTrue(self.client.release(renewed))
        self.assertFalse(self.client.release(renewed))
        with self.assertRaises(LeaseStale):
            self.client.renew(lease)
        after = self.client.check(r, lease.token)
        self.assertEqual(after, Stale(current_token=0, last_token=lease.token))
        again = self.client.acquire(r, ttl=1)
        self.assertGreater(again.token, lease.token, "S1: tokens only grow")
        self.client.release(again)

    def test_the_same_holder_gets_the_same_token(self) -> None:
        r = fresh("retry")
        first = self.client.acquire(r, ttl=5, holder=77)
        second = self.client.acquire(r, ttl=5, holder=77)
        self.assertEqual(first.token, second.token)
        self.client.release(first)

    def test_a_waiting_acquire_is_granted_when_the_holder_releases(self) -> None:
        r = fresh("queue")
        lease = self.client.acquire(r, ttl=10)
        result: List[object] = []
        with Client(endpoint()) as other:
            waiter = threading.Thread(target=lambda: result.append(other.acquire(r, ttl=5, wait=10)))
            waiter.start()
            time.sleep(0.3)
            self.assertTrue(self.client.release(lease))
            waiter.join(15)
        self.assertEqual(len(result), 1)
        granted = result[0]
        self.assertGreater(granted.token, lease.token)  # type: ignore[attr-defined]
        self.assertGreaterEqual(granted.waited_ms, 200)  # type: ignore[attr-defined]

    def test_a_wait_that_runs_out_is_busy(self) -> None:
        r = fresh("waitout")
        lease = self.client.acquire(r, ttl=10)
        start = time.monotonic()
        with self.assertRaises(LeaseBusy) as busy:
            self.client.acquire(r, ttl=5, wait=0.3)
        self.assertGreaterEqual(time.monotonic() - start, 0.29)
        self.assertTrue(busy.exception.waiters)
        self.assertGreaterEqual(busy.exception.waited_ms, 290)
        self.client.release(lease)

    def test_lock_delay_after_an_expiry(self) -> None:
        r = fresh("delay")
        self.client.acquire(r, ttl=0.2, lock_delay=1.5)
        time.sleep(0.4)
        with self.assertRaises(LeaseBusy):
            self.client.acquire(r, ttl=1)
        time.sleep(1.5)
        self.client.release(self.client.acquire(r, ttl=1))

    def test_watch_answers_on_a_new_grant(self) -> None:
        r = fresh("watch")
        first = self.client.acquire(r, ttl=0.3)
        got: List[wire.Watched] = []
        with Client(endpoint()) as watcher:
            t = threading.Thread(target=lambda: got.append(watcher.watch(r, after=first.token, wait=10)))
            t.start()
            time.sleep(0.5)  # the first lease expires
            second = self.client.acquire(r, ttl=5)
            t.join(10)
        self.assertEqual(got, [wire.Watched(current_token=second.token, last_token=second.token, changed=True)])
        unchanged = self.client.watch(r, after=second.token, wait=0.2)
        self.assertFalse(unchanged.changed)
        self.client.release(second)

    def test_invalid_arguments_leave_the_connection_open(self) -> None:
        with Client(endpoint()) as c:
            before = c.endpoint
            with self.assertRaises(ServerError) as err:
                c.acquire(fresh("short"), ttl=0.05)
            self.assertEqual(err.exception.code, ErrorCode.INVALID_ARGUMENT)
            self.assertFalse(err.exception.retryable)
            with self.assertRaises(ServerError) as err:
                c.acquire(fresh("delay"), ttl=1, lock_delay=11)
            self.assertEqual(err.exception.code, ErrorCode.INVALID_ARGUMENT)
            self.assertEqual(c.endpoint, before)
            self.assertEqual(c.status().role, Role.LEADER)
        with self.assertRaises(ValueError):
            self.client.watch("r", wait=61)
        with self.assertRaises(ValueError):
            self.client.acquire("", ttl=1)

    def test_status(self) -> None:
        s = self.client.status()
        self.assertEqual(s.role, Role.LEADER)
        self.assertEqual(s.leader_id, s.node_id)
        self.assertEqual(s.grace_remaining_ms, 0)
        self.assertEqual(s.table_capacity, 65_536)
        self.assertEqual([p.id for p in s.peers], [s.node_id])
        self.assertTrue(s.version)

    def test_threads_share_one_connection(self) -> None:
        errors: List[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(15):
                    lease = self.client.acquire(f"thread-{i}", ttl=5)
                    assert self.client.release(lease)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])


class Tenants(unittest.TestCase):
    def test_a_credentialed_tenant_proves_its_secret(self) -> None:
        with Client(endpoint(), tenant="billing", secret_file=GOOD_SECRET) as c:
            self.assertIsNotNone(c.welcome.server_signature)
            lease = c.acquire(fresh("billing"), ttl=5)
            self.assertTrue(c.release(lease))
        with Client(endpoint(), tenant="billing", secret="correct horse battery staple") as c:
            c.status()

    def test_a_wrong_secret_is_refused(self) -> None:
        with self.assertRaises(ServerError) as err:
            Client(endpoint(), tenant="billing", secret_file=BAD_SECRET)
        self.assertEqual(err.exception.code, ErrorCode.AUTH_FAILED)

    def test_a_missing_secret_or_an_unneeded_one_is_refused(self) -> None:
        with self.assertRaises(AuthError):
            Client(endpoint(), tenant="billing")
        with self.assertRaises(AuthError):
            Client(endpoint(), tenant="default", secret_file=GOOD_SECRET)

    def test_an_unknown_tenant_is_refused(self) -> None:
        with self.assertRaises(ServerError) as err:
            Client(endpoint(), tenant="nobody")
        self.assertEqual(err.exception.code, ErrorCode.UNKNOWN_TENANT)

    def test_tenants_never_see_each_others_leases(self) -> None:
        r = fresh("shared")
        with Client(endpoint()) as mine, Client(endpoint(), tenant="billing", secret_file=GOOD_SECRET) as theirs:
            lease = mine.acquire(r, ttl=10)
            self.assertEqual(theirs.check(r, lease.token), Stale(current_token=0, last_token=0))
            self.assertFalse(theirs.release(r, lease.token))
            their_lease = theirs.acquire(r, ttl=10)
            self.assertIsInstance(mine.check(r, lease.token), Current)
            theirs.release(their_lease)
            mine.release(lease)

    def test_list_pages_through_the_tenants_own_leases(self) -> None:
        prefix = fresh("list") + "/"
        with Client(endpoint()) as mine, Client(endpoint(), tenant="billing", secret_file=GOOD_SECRET) as theirs:
            held = [mine.acquire(f"{prefix}{i:02}", ttl=10) for i in range(7)]
            their_lease = theirs.acquire(f"{prefix}theirs", ttl=10)
            leases = mine.list_all(prefix, page_limit=3)
            self.assertEqual([(l.resource, l.token) for l in leases], [(h.resource, h.token) for h in held])
            page = mine.list(prefix, limit=2)
            self.assertTrue(page.more)
            self.assertEqual(page.next_after, f"{prefix}01")
            self.assertEqual([l.resource for l in theirs.list_all(prefix)], [f"{prefix}theirs"])
            with self.assertRaises(ValueError):
                mine.list(limit=0)
            for lease in held:
                mine.release(lease)
            theirs.release(their_lease)
            self.assertEqual(mine.list_all(prefix), [])


class RawProtocol(unittest.TestCase):
    """What PROTOCOL.md says the server does, checked byte for byte."""

    def connect(self) -> socket.socket:
        host, port = endpoint().rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        return s

    def read_frame(self, s: socket.socket) -> Tuple[wire.FrameHeader, wire.Response]:
        reader = wire.FrameReader()
        while True:
            item = reader.next_frame()
            if item is not None:
                header, payload = item
                return header, wire.decode_response_payload(payload)
            data = s.recv(65536)
            if not data:
                raise ConnectionError("closed")
            reader.feed(data)

    def assert_closed(self, s: socket.socket) -> None:
        s.settimeout(5)
        try:
            self.assertEqual(s.recv(1), b"", "the server should have closed the connection")
        except ConnectionResetError:
            pass

    def hello(self, s: socket.socket, tenant: str = "default", request_id: int = 1) -> wire.Response:
        s.sendall(wire.encode_request(wire.Hello(tenant, b"\x01" * 16, "raw"), request_id))
        return self.read_frame(s)[1]

    def test_request_id_0_is_answered_with_id_0(self) -> None:
        with self.connect() as s:
            self.assertIsInstance(self.hello(s), wire.Welcome)
            payload = wire.encode_request_payload(wire.Status())
            frame = struct.pack("<IBBHQII", len(payload), 1, 1, 0, 0, 0, 0) + payload
            s.sendall(frame)
            header, response = self.read_frame(s)
            # Indistinguishable from a connection-level error frame but for
            # its body: clients must not use id 0.
            self.assertEqual(header.request_id, 0)
            self.assertIsInstance(response, wire.StatusInfo)
            s.sendall(wire.encode_request(wire.Status(), 2))
            header, _ = self.read_frame(s)
            self.assertEqual(header.request_id, 2)

    def test_every_response_payload_is_root_sized_plus_out_of_line_data(self) -> None:
        with self.connect() as s:
            self.hello(s)
            s.sendall(wire.encode_request(wire.Release("nothing-here", 5), 7))
            reader = wire.FrameReader()
            while reader.buffered < 24 + 104:
                reader.feed(s.recv(65536))
            header, payload = reader.next_frame()  # type: ignore[misc]
            self.assertEqual((header.request_id, header.payload_len), (7, 104))
            self.assertEqual(wire.decode_response_payload(payload), wire.Stale(0, 0))

    def test_invalid_argument_in_answer_to_hello_closes(self) -> None:
        with self.connect() as s:
            s.sendall(wire.encode_request(wire.Hello("bad name", b"\x00" * 16, "raw"), 5))
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 5)
            self.assertIsInstance(response, wire.Error)
            self.assertEqual(response.code, ErrorCode.INVALID_ARGUMENT)  # type: ignore[union-attr]
            self.assert_closed(s)
        with self.connect() as s:
            s.sendall(wire.encode_request(wire.Hello("default", b"\x00" * 16, "n" * 129), 6))
            _, response = self.read_frame(s)
            self.assertEqual(response.code, ErrorCode.INVALID_ARGUMENT)  # type: ignore[union-attr]
            self.assert_closed(s)

    def test_a_second_hello_is_invalid_but_keeps_the_connection(self) -> None:
        with self.connect() as s:
            self.hello(s)
            response = self.hello(s, request_id=2)
            self.assertEqual(response.code, ErrorCode.INVALID_ARGUMENT)  # type: ignore[union-attr]
            s.sendall(wire.encode_request(wire.Status(), 3))
            header, status = self.read_frame(s)
            self.assertEqual(header.request_id, 3)
            self.assertIsInstance(status, wire.StatusInfo)

    def test_a_request_before_hello_is_not_authenticated(self) -> None:
        with self.connect() as s:
            s.sendall(wire.encode_request(wire.Status(), 9))
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 9)
            self.assertEqual(response.code, ErrorCode.NOT_AUTHENTICATED)  # type: ignore[union-attr]
            self.assert_closed(s)

    def test_a_malformed_payload_is_answered_with_its_id_and_closes(self) -> None:
        bad = bytearray(wire.encode_request(wire.Status(), 11))
        bad[24] = 9  # no such request tag
        with self.connect() as s:
            self.hello(s)
            s.sendall(bytes(bad))
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 11)
            self.assertEqual(response.code, ErrorCode.MALFORMED)  # type: ignore[union-attr]
            self.assert_closed(s)

    def test_a_bad_header_is_a_connection_level_error(self) -> None:
        frame = bytearray(wire.encode_request(wire.Status(), 12))
        frame[4] = 2  # version
        with self.connect() as s:
            s.sendall(bytes(frame))
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 0)
            self.assertEqual(response.code, ErrorCode.UNSUPPORTED_VERSION)  # type: ignore[union-attr]
            self.assert_closed(s)
        frame = bytearray(wire.encode_request(wire.Status(), 13))
        frame[0:4] = struct.pack("<I", 1 << 20)
        with self.connect() as s:
            s.sendall(bytes(frame))
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 0)
            self.assertEqual(response.code, ErrorCode.FRAME_TOO_LARGE)  # type: ignore[union-attr]
            self.assert_closed(s)

    def test_the_server_accepts_the_vector_frames(self) -> None:
        # The recorded Acquire/Check/Watch frames, as bytes, after a handshake.
        import json

        doc = json.loads((support.VECTORS_DIR / "frames.json").read_text())
        frames = {v["name"]: bytes.fromhex(v["frame"]) for v in doc["vectors"]}
        with self.connect() as s:
            self.hello(s)
            s.sendall(frames["acquire_256_bytes"])
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 7)
            self.assertIsInstance(response, wire.Granted)
            s.sendall(frames["check_out_of_line"])
            header, response = self.read_frame(s)
            self.assertEqual(header.request_id, 11)
            self.assertIsInstance(response, wire.Stale)


class HoldAndKeepAlive(unittest.TestCase):
    def test_hold_renews_and_releases(self) -> None:
        r = fresh("hold")
        with Client(endpoint()) as c:
            # A ttl of seconds: a loaded machine's stalls cannot eat a
            # whole renewal margin; 4 s is still several renewals.
            with c.hold(r, ttl=3.0) as held:
                token = held.token
                for _ in range(8):
                    time.sleep(0.5)
                    self.assertEqual(held.token, token)
                self.assertGreater(held.lease.valid_until_ms, now_ms())
            self.assertEqual(c.check(r, token), Stale(current_token=0, last_token=token))

    def test_hold_on_a_busy_resource_raises(self) -> None:
        r = fresh("holdbusy")
        with Client(endpoint()) as c:
            lease = c.acquire(r, ttl=5)
            with self.assertRaises(LeaseBusy):
                with c.hold(r, ttl=1):
                    self.fail("the body must not run")
            c.release(lease)

    def test_loss_is_reported_by_the_validity_and_nobody_overlaps(self) -> None:
        r = fresh("lost")
        forwarder = Forwarder(endpoint())
        lost: List[Tuple[int, LeaseLost]] = []
        try:
            with Client(forwarder.endpoint, attempt_timeout=0.3) as c, Client(endpoint()) as other:
                with self.assertRaises(LeaseLost) as exit_error:
                    with c.hold(r, ttl=1.0, on_lost=lambda e: lost.append((now_ms(), e))) as held:
                        time.sleep(0.5)
                        self.assertTrue(held.valid)
                        forwarder.cut()
                        # Another client takes the lease as soon as the
                        # server lets it.
                        second = other.acquire(r, ttl=5, wait=5)
                        granted_at = now_ms()
                        valid_until = held.lease.valid_until_ms
                        self.assertGreaterEqual(granted_at, valid_until, "the old holder's view overlaps the new grant")
                        with self.assertRaises(LeaseLost):
                            _ = held.token
                        self.assertFalse(held.valid)
                        wait_until = time.monotonic() + 2
                        while not lost and time.monotonic() < wait_until:
                            time.sleep(0.01)
                self.assertEqual(exit_error.exception.reason, "expired")
                self.assertEqual(len(lost), 1)
                reported_at, error = lost[0]
                # The keepalive reports at the validity's end (give the
                # scheduler some slack on a busy machine).
                self.assertLessEqual(reported_at, valid_until + 300)
                self.assertIn(error.reason, ("expired",))
                self.assertGreater(second.token, held.lease.token)
                other.release(second)
        finally:
            forwarder.close()

    def test_a_stale_renewal_is_loss(self) -> None:
        r = fresh("stale")
        with Client(endpoint()) as c:
            lease = c.acquire(r, ttl=1)
            # Someone else's view: released behind the keepalive's back.
            keepalive = c.keep_alive(lease, every=0.1)
            time.sleep(0.25)
            self.assertTrue(keepalive.held.valid)
            c.release(lease)
            support.wait_for(lambda: keepalive.held.lost is not None, 3, "loss")
            self.assertEqual(keepalive.held.lost.reason, "stale")  # type: ignore[union-attr]
            keepalive.stop()


class Endpoints(unittest.TestCase):
    def test_a_dead_endpoint_is_skipped_at_once(self) -> None:
        dead = f"127.0.0.1:{free_port()}"
        start = time.monotonic()
        with Client([dead, endpoint()], attempt_timeout=2) as c:
            self.assertEqual(c.endpoint, endpoint())
            c.release(c.acquire(fresh("dead"), ttl=1))
        self.assertLess(time.monotonic() - start, 1.5)

    def test_a_hung_endpoint_is_left_after_the_attempt_deadline(self) -> None:
        hung = SilentListener()
        try:
            start = time.monotonic()
            with Client([hung.endpoint, endpoint()], attempt_timeout=0.5) as c:
                elapsed = time.monotonic() - start
                self.assertEqual(c.endpoint, endpoint())
                self.assertGreaterEqual(elapsed, 0.45)
                self.assertLess(elapsed, 3)
        finally:
            hung.close()

    def test_a_node_that_hangs_mid_session_is_left_too(self) -> None:
        forwarder = Forwarder(endpoint())
        try:
            with Client([forwarder.endpoint, endpoint()], attempt_timeout=0.5) as c:
                self.assertEqual(c.endpoint, forwarder.endpoint)
                forwarder.cut()
                start = time.monotonic()
                lease = c.acquire(fresh("midhang"), ttl=2)
                self.assertLess(time.monotonic() - start, 3)
                self.assertEqual(c.endpoint, endpoint())
                c.release(lease)
        finally:
            forwarder.close()

    def test_no_endpoint_at_all(self) -> None:
        with self.assertRaises(ConnectionFailed) as err:
            Client([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], attempt_timeout=0.5)
        self.assertEqual(len(err.exception.attempts), 2)


class Asyncio(unittest.TestCase):
    def run_async(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run(asyncio.wait_for(coro, 60))

    def test_the_lease_cycle(self) -> None:
        async def main() -> None:
            r = fresh("async")
            async with AsyncClient(endpoint()) as c:
                lease = await c.acquire(r, ttl=5)
                with self.assertRaises(LeaseBusy):
                    await c.acquire(r, ttl=5)
                self.assertIsInstance(await c.check(r, lease.token), Current)
                renewed = await c.renew(lease)
                self.assertEqual(renewed.token, lease.token)
                watched = await c.watch(r, after=0, wait=0)
                self.assertEqual(watched.last_token, lease.token)
                listed = await c.list_all(r)
                self.assertEqual([(l.resource, l.token) for l in listed], [(r, lease.token)])
                self.assertTrue(await c.release(lease))
                self.assertFalse(await c.release(lease))
                status = await c.status()
                self.assertEqual(status.role, Role.LEADER)

        self.run_async(main())

    def test_many_tasks_pipeline_on_one_connection(self) -> None:
        async def main() -> None:
            async with AsyncClient(endpoint()) as c:
                async def one(i: int) -> None:
                    for _ in range(10):
                        lease = await c.acquire(f"task-{i}", ttl=5)
                        assert await c.release(lease)

                await asyncio.gather(*(one(i) for i in range(16)))

        self.run_async(main())

    def test_hold_renews_and_a_cut_is_loss(self) -> None:
        async def main() -> None:
            r = fresh("asynchold")
            async with AsyncClient(endpoint()) as c:
                # Several renewals; a ttl of seconds, so a loaded machine's
                # scheduling stalls cannot eat a whole renewal margin.
                async with c.hold(r, ttl=3.0) as held:
                    token = held.token
                    await asyncio.sleep(4.0)
                    self.assertEqual(held.token, token)
                self.assertIsInstance(await c.check(r, token), Stale)
            forwarder = Forwarder(endpoint())
            try:
                async with AsyncClient(forwarder.endpoint, attempt_timeout=0.3) as c:
                    with self.assertRaises(LeaseLost):
                        async with c.hold(r, ttl=0.5) as held:
                            forwarder.cut()
                            await asyncio.sleep(1.0)
                            self.assertFalse(held.valid)
            finally:
                forwarder.close()

        self.run_async(main())

    def test_a_hung_endpoint_is_left(self) -> None:
        hung = SilentListener()

        async def main() -> None:
            async with AsyncClient([hung.endpoint, endpoint()], attempt_timeout=0.5) as c:
                self.assertEqual(c.endpoint, endpoint())

        try:
            self.run_async(main())
        finally:
            hung.close()

    def test_a_node_that_hangs_mid_session_is_left(self) -> None:
        forwarder = Forwarder(endpoint())

        async def main() -> None:
            async with AsyncClient([forwarder.endpoint, endpoint()], attempt_timeout=0.5) as c:
                self.assertEqual(c.endpoint, forwarder.endpoint)
                forwarder.cut()
                start = time.monotonic()
                lease = await c.acquire(fresh("asyncmidhang"), ttl=2)
                self.assertLess(time.monotonic() - start, 3)
                self.assertEqual(c.endpoint, endpoint())
                await c.release(lease)

        try:
            self.run_async(main())
        finally:
            forwarder.close()


if __name__ == "__main__":
    unittest.main()

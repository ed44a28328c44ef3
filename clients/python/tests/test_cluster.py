"""The client against a real three-node cluster (like examples/cluster3, on
free ports with short timings): redirects, endpoint lists with dead and
hung members, and a leader failover under a held lease."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import unittest
from typing import List, Optional

import support
from support import Cluster, SilentListener, free_port

from palisade import Client, Current, LeaseBusy, LeaseLost, Role, now_ms, wire
from palisade.aio import AsyncClient

# Short leases so that a new leader's grace period, (max_ttl +
# lock_delay_max + election_timeout) x (1 + max_drift), is a few seconds.
EXTRA = '[leases]\nmax_ttl = "2s"\nmin_ttl = "100ms"\nlock_delay_max = "500ms"\n'


class ClusterCase(unittest.TestCase):
    """Each test class gets its own fresh cluster."""

    cluster_: Optional[Cluster] = None

    @classmethod
    def setUpClass(cls) -> None:
        support.require_binary("palisade")
        cls.cluster_ = Cluster(3, EXTRA)
        try:
            cls.cluster_.serving_leader()
        except BaseException:
            cls.cluster_.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster_ is not None:
            cls.cluster_.close()


class Redirects(ClusterCase):
    def test_status_lists_every_member(self) -> None:
        c = self.cluster_
        assert c is not None
        leader = c.leader()
        for i in c.ids:
            status = c.status(i)
            assert status is not None
            self.assertEqual(status.node_id, i)
            self.assertEqual(status.leader_id, leader)
            self.assertEqual(status.role, Role.LEADER if i == leader else Role.FOLLOWER)
            self.assertEqual({(p.id, p.endpoint) for p in status.peers}, {(j, c.endpoint(j)) for j in c.ids})

    def test_a_follower_redirects_to_the_leader(self) -> None:
        c = self.cluster_
        assert c is not None
        leader = c.leader()
        follower = next(i for i in c.ids if i != leader)
        host, port = c.endpoint(follower).rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            reader = wire.FrameReader()
            s.sendall(wire.encode_request(wire.Hello("default", b"\x00" * 16, "raw"), 1))
            s.sendall(wire.encode_request(wire.Check("disk0", 1), 2))
            answers = []
            while len(answers) < 2:
                reader.feed(s.recv(65536))
                while True:
                    item = reader.next_response()
                    if item is None:
                        break
                    answers.append(item)
        self.assertIsInstance(answers[0][1], wire.Welcome)
        header, redirect = answers[1]
        self.assertEqual(header.request_id, 2)
        self.assertEqual(redirect, wire.Redirect(leader_id=leader, endpoint=c.endpoint(leader)))

    def test_the_client_follows_redirects_from_any_member(self) -> None:
        c = self.cluster_
        assert c is not None
        leader = c.leader()
        for first in c.ids:
            order = [c.endpoint(first)] + [c.endpoint(i) for i in c.ids if i != first]
            with Client(order) as client:
                r = f"redirect-{first}"
                lease = client.acquire(r, ttl=1)
                self.assertEqual(client.endpoint, c.endpoint(leader))
                self.assertIsInstance(client.check(r, lease.token), Current)
                self.assertTrue(client.release(lease))

    def test_dead_and_hung_members_are_passed_over(self) -> None:
        c = self.cluster_
        assert c is not None
        leader = c.leader()
        hung = SilentListener()
        try:
            endpoints = [f"127.0.0.1:{free_port()}", hung.endpoint] + c.endpoints()
            start = time.monotonic()
            with Client(endpoints, attempt_timeout=0.5) as client:
                lease = client.acquire("passed-over", ttl=1)
                self.assertLess(time.monotonic() - start, 5)
                self.assertEqual(client.endpoint, c.endpoint(leader))
                client.release(lease)
        finally:
            hung.close()

    def test_asyncio_follows_redirects(self) -> None:
        c = self.cluster_
        assert c is not None
        leader = c.leader()
        follower = next(i for i in c.ids if i != leader)

        async def main() -> None:
            async with AsyncClient([c.endpoint(follower)] + c.endpoints()) as client:
                lease = await client.acquire("async-redirect", ttl=1)
                self.assertEqual(client.endpoint, c.endpoint(leader))
                watched = await client.watch("async-redirect", after=0, wait=0)
                self.assertEqual(watched.last_token, lease.token)
                await client.release(lease)

        asyncio.run(asyncio.wait_for(main(), 30))


class Failover(ClusterCase):
    def test_a_held_lease_across_a_leader_failure_is_kept_or_lost_loudly(self) -> None:
        c = self.cluster_
        assert c is not None
        old = c.leader()
        lost: List[LeaseLost] = []
        with Client(c.endpoints(), attempt_timeout=0.5) as holder, Client(c.endpoints(), attempt_timeout=0.5) as other:
            with _Either() as outcome:
                with holder.hold("failover", ttl=1.5, on_lost=lost.append, raise_on_loss=True) as held:
                    token = held.token
                    c.kill(old)
                    new = c.leader(timeout=30, among=[i for i in c.ids if i != old])
                    self.assertNotEqual(new, old)
                    # A new holder asks the new leader, waiting out its
                    # grace period if it has one.
                    try:
                        second = other.acquire("failover", ttl=1, wait=10)
                    except LeaseBusy:
                        second = None
                    granted_at = now_ms()
                    if second is not None:
                        # Granted to someone else: the old holder must have
                        # stopped trusting its lease by then (S2).
                        self.assertGreater(second.token, token, "S1 across the failover")
                        self.assertGreaterEqual(granted_at, held.lease.valid_until_ms)
                        self.assertFalse(held.valid)
                        with self.assertRaises(LeaseLost):
                            _ = held.token
                    else:
                        # The lease survived the failover: same token, renewed
                        # at the new leader.
                        self.assertTrue(held.valid)
                        self.assertEqual(held.token, token)
            if outcome.error is not None:
                self.assertIsInstance(outcome.error, LeaseLost)
                self.assertEqual(len(lost), 1)
                print(f"\nfailover: the lease was lost loudly ({outcome.error}) and regranted after its validity", file=sys.stderr)
            else:
                print("\nfailover: the lease survived the leader change with its token", file=sys.stderr)
            # The client found the new leader.
            status = other.status()
            self.assertEqual(status.role, Role.LEADER)
            self.assertNotEqual(status.node_id, old)


class _Either:
    """Context manager recording (instead of raising) a LeaseLost."""

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None

    def __enter__(self) -> "_Either":
        return self

    def __exit__(self, kind, value, tb) -> bool:  # type: ignore[no-untyped-def]
        if isinstance(value, LeaseLost):
            self.error = value
            return True
        return False


if __name__ == "__main__":
    unittest.main()

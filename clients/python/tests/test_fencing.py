"""Fencing end to end: tokens from the Python client, enforced by the real
`palisade-fencing-proxy` in front of a file, driven over NBD from Python.
A writer whose token went stale gets EPERM and changes nothing."""

from __future__ import annotations

import tempfile
import time
import unittest
from pathlib import Path

import support
from support import EPERM, FencingProxy, NbdClient, NbdRefused, Node, wait_for

from palisade import Client, Stale

BLOCK = 4096


class StaleWriter(unittest.TestCase):
    def setUp(self) -> None:
        support.require_binary("palisade")
        support.require_binary("palisade-fencing-proxy")
        self.tmp = tempfile.TemporaryDirectory(prefix="palisade-py-fence-")
        work = Path(self.tmp.name)
        (work / "lease").mkdir()
        self.node = Node("", work=work / "lease")
        self.proxy = FencingProxy(self.node.endpoint, work)
        self.client = Client(self.node.endpoint)

    def tearDown(self) -> None:
        self.client.close()
        self.proxy.close()
        self.node.close()
        self.tmp.cleanup()

    def test_a_stale_writer_gets_eperm_and_the_disk_holds_the_new_holders_data(self) -> None:
        # A holds the lease and writes through the proxy with its token.
        first = self.client.acquire("disk0", ttl=0.5)
        a = NbdClient(self.proxy.port, f"disk0@{first.token}")
        try:
            self.assertEqual(a.write(0, b"\xaa" * BLOCK), 0)
            # A stalls past its lease; B is granted a newer token.
            time.sleep(0.6)
            with Client(self.node.endpoint) as other:
                second = other.acquire("disk0", ttl=30)
            self.assertGreater(second.token, first.token)
            self.assertEqual(self.client.check("disk0", first.token), Stale(second.token, second.token))
            # The proxy learns of the grant by watching the lease service,
            # before B writes anything.
            wait_for(
                lambda: (self.proxy.metric("palisade_proxy_fence") or 0) >= second.token,
                10,
                "the proxy's fence to reach the new token",
            )
            b = NbdClient(self.proxy.port, f"disk0@{second.token}")
            try:
                self.assertEqual(b.write(0, b"\xbb" * BLOCK), 0)
            finally:
                b.close()
            # A wakes up and writes again: refused, nothing changes.
            self.assertEqual(a.write(0, b"\xaa" * BLOCK), EPERM)
            self.assertEqual(a.write(BLOCK, b"\xaa" * BLOCK), EPERM)
        finally:
            a.close()
        # A cannot even reconnect with its old token.
        with self.assertRaises(NbdRefused):
            NbdClient(self.proxy.port, f"disk0@{first.token}")
        reader = NbdClient(self.proxy.port, "disk0")  # read-only, no token
        try:
            self.assertEqual(reader.read(0, BLOCK), b"\xbb" * BLOCK)
            self.assertEqual(reader.read(BLOCK, BLOCK), b"\x00" * BLOCK)
            self.assertEqual(reader.write(0, b"\xcc" * BLOCK), EPERM)
        finally:
            reader.close()


if __name__ == "__main__":
    unittest.main()

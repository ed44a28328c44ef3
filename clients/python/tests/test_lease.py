"""Validity arithmetic (PROTOCOL.md, "Validity on the client") and the
held-lease handle, without a server."""

from __future__ import annotations

import time
import unittest

import support  # noqa: F401

from palisade import HeldLease, Lease, LeaseLost, now_ms, valid_until_ms
from palisade.lease import next_pause_ms, retry_pause_ms


class Validity(unittest.TestCase):
    def test_the_documented_examples(self) -> None:
        self.assertEqual(valid_until_ms(1_000, 10_000, 0), 10_999)
        self.assertEqual(valid_until_ms(1_000, 10_000, 10_000), 10_899)
        self.assertEqual(valid_until_ms(0, 1, 10_000), 0)
        self.assertEqual(valid_until_ms(5, 1, 0), 5)
        self.assertEqual(valid_until_ms(5, 0, 0), 5)

    def test_a_waited_grant_counts_its_wait_less_a_millisecond(self) -> None:
        # The same figures as the Rust client's test.
        self.assertEqual(valid_until_ms(1_000, 10_000, 10_000, waited_ms=0), 10_899)
        self.assertEqual(valid_until_ms(1_000, 10_000, 10_000, waited_ms=1), 10_899)
        self.assertEqual(valid_until_ms(1_000, 3_000, 10_000, waited_ms=20_000), 23_768)
        for ttl, waited, ppm in [(1, 1, 0), (10, 2, 0), (1_000, 5_000, 999_999)]:
            server_end = 1_000 + waited - 1 + ttl
            self.assertLessEqual(valid_until_ms(1_000, ttl, ppm, waited_ms=waited), server_end)

    def test_a_fast_server_clock_and_its_millisecond_never_overlap_the_client(self) -> None:
        # The worst case the Rust client's test checks: a leader whose
        # clock runs 0.9 % fast, a 300 ms lease, a request that arrives the
        # instant it was sent, every phase between the two clocks'
        # millisecond boundaries.
        ttl_ms = 300
        for phase_us in range(0, 1000, 10):
            for send_us in range(1000, 3000, 10):
                server_floor_us = (send_us + phase_us) // 1000 * 1000 - phase_us
                regrant_us = server_floor_us + ttl_ms * 1000 / 1.009
                client_end_us = valid_until_ms(send_us // 1000, ttl_ms, 10_000) * 1000
                self.assertLessEqual(client_end_us, regrant_us, (phase_us, send_us))

    def test_the_clock_is_monotonic_milliseconds(self) -> None:
        a = now_ms()
        time.sleep(0.01)
        b = now_ms()
        self.assertGreaterEqual(b - a, 9)


class Held(unittest.TestCase):
    def lease(self, valid_for_ms: int) -> Lease:
        return Lease("disk0", 42, 1000, 7, now_ms() + valid_for_ms)

    def test_token_is_refused_once_the_validity_ran_out(self) -> None:
        held = HeldLease(self.lease(50))
        self.assertTrue(held.valid)
        self.assertEqual(held.token, 42)
        time.sleep(0.06)
        self.assertFalse(held.valid)
        with self.assertRaises(LeaseLost) as caught:
            _ = held.token
        self.assertEqual(caught.exception.reason, "expired")

    def test_a_renewal_moves_the_validity_and_loss_is_final(self) -> None:
        held = HeldLease(self.lease(10))
        seen = []
        held.on_lost(seen.append)
        held._renewed(self.lease(10_000))
        self.assertGreater(held.remaining_ms, 5_000)
        held._mark_lost(LeaseLost(held.lease, "stale"))
        self.assertEqual(len(seen), 1)
        self.assertFalse(held.valid)
        held._renewed(self.lease(10_000))  # too late: stays lost
        with self.assertRaises(LeaseLost):
            held.ensure()

    def test_renewal_schedule(self) -> None:
        lease = self.lease(9_000)
        self.assertEqual(next_pause_ms(lease, 3_000), 3_000)
        short = self.lease(1_000)
        self.assertLessEqual(next_pause_ms(short, 3_000), 500)
        self.assertGreaterEqual(retry_pause_ms(self.lease(0), 3_000), 20)


if __name__ == "__main__":
    unittest.main()

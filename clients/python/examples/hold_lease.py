"""Hold a lease while doing work, passing the fencing token with every write.

    python examples/hold_lease.py --endpoints 127.0.0.1:7400 disk0
    python examples/hold_lease.py --endpoints 127.0.0.1:7411,127.0.0.1:7412,127.0.0.1:7413 disk0
    python examples/hold_lease.py --tenant billing --secret-file billing.secret disk0
"""

from __future__ import annotations

import argparse
import sys
import time

from palisade import Client, LeaseBusy, LeaseLost


def write_block(block: int, token: int) -> None:
    """Stands in for storage that checks fencing tokens (see the fencing
    proxy): every write carries the token it was made under."""
    print(f"write block {block} with fencing token {token}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("resource")
    parser.add_argument("--endpoints", default="127.0.0.1:7400", help="comma-separated host:port list")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--secret-file")
    parser.add_argument("--ttl", type=float, default=10.0, help="seconds")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to queue if busy")
    args = parser.parse_args()

    with Client(args.endpoints, tenant=args.tenant, secret_file=args.secret_file) as client:
        try:
            with client.hold(args.resource, ttl=args.ttl, wait=args.wait) as lease:
                print(f"holding {args.resource!r}: token {lease.token}, valid for {lease.remaining_ms} ms")
                for block in range(5):
                    # lease.token raises LeaseLost the moment the lease can
                    # no longer be trusted: never write with a dead token.
                    write_block(block, lease.token)
                    time.sleep(1)
        except LeaseBusy as busy:
            print(f"busy: held by token {busy.token} for {busy.remaining_ms} ms", file=sys.stderr)
            return 2
        except LeaseLost as lost:
            print(f"lost the lease mid-work ({lost.reason}): stop and recover", file=sys.stderr)
            return 3
    print("released")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Follow a resource's fencing token with asyncio, as a fencing proxy does:
raise the local fence to every new token as soon as it is issued.

    python examples/async_watch.py --endpoints 127.0.0.1:7400 disk0
"""

from __future__ import annotations

import argparse
import asyncio

from palisade import PalisadeError, is_retryable
from palisade.aio import AsyncClient


async def follow(endpoints: str, resource: str) -> None:
    fence = 0
    async with AsyncClient(endpoints) as client:
        while True:
            try:
                watched = await client.watch(resource, after=fence, wait=30)
            except PalisadeError as e:
                if not is_retryable(e):
                    raise
                await asyncio.sleep(0.5)
                continue
            if watched.changed:
                fence = watched.last_token
                print(f"fence raised to {fence} (live lease: {watched.current_token or 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("resource")
    parser.add_argument("--endpoints", default="127.0.0.1:7400")
    args = parser.parse_args()
    try:
        asyncio.run(follow(args.endpoints, args.resource))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

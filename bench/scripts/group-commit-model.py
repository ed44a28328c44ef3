#!/usr/bin/env python3
"""A bare group-commit loop on this disk: what a replicated grant's p99 can be
at best, with nothing of Palisade in the way (issue 17, replicated grants).

Open-loop arrivals at RATE/s go into a queue; WORKERS threads each take
everything queued, write it as one record into a preallocated file
(`pwrite`) and `fdatasync` it; requests complete in log order (a batch
is answered once it and every earlier batch are durable). With `--pairs`
every arrival is an acquire and its completion starts a release 30 us
later (what `palisade-bench`'s uncontended workload does), so a release
usually finds a sync in flight and waits for it and then its own.

Prints the requests' p50 / p90 / p99 / p99.9 and the syncs' own, from the
same run. Python releases the GIL in `pwrite` and `fdatasync`; its own
overhead is a few microseconds per request, below what is measured here.

Usage: group-commit-model.py DIR RATE [--workers N] [--seconds S] [--pairs]
"""

import argparse
import os
import threading
import time


def percentiles(values):
    values = sorted(values)
    n = len(values)
    pick = lambda q: values[min(n - 1, int(n * q))]
    return "p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f us" % (
        pick(0.5), pick(0.9), pick(0.99), pick(0.999))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("rate", type=int, help="arrivals per second")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pairs", action="store_true")
    args = parser.parse_args()

    path = os.path.join(args.dir, "group-commit-model.log")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, 256 << 20)
    cv = threading.Condition()
    queue, finished, latencies, syncs = [], {}, [], []
    state = {"offset": 0, "seq": 0, "done": 0, "stop": False}

    def worker():
        while True:
            with cv:
                while not queue and not state["stop"]:
                    cv.wait()
                if state["stop"] and not queue:
                    return
                batch = queue[:]
                queue.clear()
                offset = state["offset"]
                state["offset"] += 100 * len(batch)
                seq = state["seq"]
                state["seq"] += 1
            began = time.perf_counter()
            os.pwrite(fd, b"x" * (100 * len(batch)), offset)
            os.fdatasync(fd)
            ended = time.perf_counter()
            with cv:
                syncs.append((ended - began) * 1e6)
                finished[seq] = batch
                while state["done"] in finished:
                    now = time.perf_counter()
                    for arrived, acquire in finished.pop(state["done"]):
                        latencies.append((now - arrived) * 1e6)
                        if acquire and args.pairs:
                            queue.append((now + 30e-6, False))
                            cv.notify()
                    state["done"] += 1

    workers = [threading.Thread(target=worker) for _ in range(args.workers)]
    for w in workers:
        w.start()
    start = time.perf_counter()
    arrivals = 0
    while True:
        due = start + arrivals / args.rate
        now = time.perf_counter()
        if now - start > args.seconds:
            break
        if now < due:
            time.sleep(max(0.0, due - now - 50e-6))
            continue
        with cv:
            queue.append((due, True))
            cv.notify()
        arrivals += 1
    with cv:
        state["stop"] = True
        cv.notify_all()
    for w in workers:
        w.join()
    os.close(fd)
    os.unlink(path)
    print("rate %d/s workers %d%s: %d requests in %d syncs; requests %s; syncs %s" % (
        args.rate, args.workers, " pairs" if args.pairs else "", len(latencies),
        len(syncs), percentiles(latencies), percentiles(syncs)))


if __name__ == "__main__":
    main()

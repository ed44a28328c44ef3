#!/usr/bin/env python3
"""Ways to make a small log append durable on this disk, one after another,
each N times (issue 17: is there a cheaper durable write than the raft log's
`pwrite` + `fdatasync` into space reserved with `fallocate`?).

  append+fdatasync      128-byte appends growing the file (what the probe of
                        `palisade-bench compare` does, with 4 KiB)
  fallocated+fdatasync  128-byte writes into space reserved with fallocate
                        (what the raft log does)
  zeroed+fdatasync      the same into space written with zeros beforehand
  zeroed O_DSYNC        buffered writes with O_DSYNC, zeroed space
  RWF_DSYNC             pwritev2(RWF_DSYNC) into fallocated space
  O_DIRECT|O_DSYNC      4 KiB direct writes, zeroed space
  O_DIRECT (not durable) 4 KiB direct writes without DSYNC: the device's
                        write alone, for reference

Usage: sync-variants.py DIR [N] [ROUNDS]
"""

import mmap
import os
import sys
import time


def main():
    directory = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    path = os.path.join(directory, "sync-variants.log")
    aligned = mmap.mmap(-1, 4096)
    aligned.write(b"y" * 4096)
    small = b"y" * 128

    def prepare(kind):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        if kind == "fallocated":
            os.posix_fallocate(fd, 0, 64 << 20)
        elif kind == "zeroed":
            os.write(fd, b"\0" * (count * 4096 + 4096))
            os.fsync(fd)
        os.close(fd)

    def run(name, kind, flags, write):
        prepare(kind)
        fd = os.open(path, os.O_RDWR | flags)
        latencies = []
        for i in range(count):
            began = time.perf_counter()
            write(fd, i)
            latencies.append((time.perf_counter() - began) * 1e6)
        os.close(fd)
        latencies.sort()
        pick = lambda q: latencies[min(count - 1, int(count * q))]
        print("%-24s p50 %6.0f p90 %6.0f p99 %6.0f p99.9 %6.0f us" % (
            name, pick(0.5), pick(0.9), pick(0.99), pick(0.999)))

    def pwrite_sync(fd, i):
        os.pwrite(fd, small, i * 128)
        os.fdatasync(fd)

    for _ in range(rounds):
        run("append+fdatasync", "empty", 0, pwrite_sync)
        run("fallocated+fdatasync", "fallocated", 0, pwrite_sync)
        run("zeroed+fdatasync", "zeroed", 0, pwrite_sync)
        run("zeroed O_DSYNC", "zeroed", os.O_DSYNC,
            lambda fd, i: os.pwrite(fd, small, i * 128))
        run("RWF_DSYNC", "fallocated", 0,
            lambda fd, i: os.pwritev(fd, [small], i * 128, os.RWF_DSYNC))
        run("O_DIRECT|O_DSYNC", "zeroed", os.O_DIRECT | os.O_DSYNC,
            lambda fd, i: os.pwrite(fd, aligned, i * 4096))
        run("O_DIRECT (not durable)", "zeroed", os.O_DIRECT,
            lambda fd, i: os.pwrite(fd, aligned, i * 4096))
    os.unlink(path)


if __name__ == "__main__":
    main()

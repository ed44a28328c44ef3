#!/usr/bin/env python3
"""How a durable append costs on this disk, by how the space it lands in was
reserved: `pwrite` of BATCH bytes at the end of what was written, then
`fdatasync`, COUNT times, into a file that was
  append     not reserved (each write extends the file),
  fallocate  reserved with fallocate (blocks unwritten until written),
  zerofill   reserved by writing zeros and syncing them;
the three in turn, ROUNDS times. Prints p50/p90/p99/p99.9/mean in µs.
The raft log's own writes (RaftLog::sync) do the same syscalls.

usage: fsync-modes.py DIR COUNT BATCH [ROUNDS]   (DIR on the disk to measure)
"""
import os, sys, time

def run(directory, name, count, batch):
    path = os.path.join(directory, f"fsync-modes-{name}")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    size = count * batch + (1 << 20)
    if name == "fallocate":
        os.posix_fallocate(fd, 0, size)
    elif name == "zerofill":
        for at in range(0, size, 1 << 20):
            os.pwrite(fd, b"\0" * (1 << 20), at)
    os.fsync(fd)
    data = b"x" * batch
    took = []
    for i in range(count):
        began = time.perf_counter_ns()
        os.pwrite(fd, data, i * batch)
        os.fdatasync(fd)
        took.append(time.perf_counter_ns() - began)
    os.close(fd)
    os.unlink(path)
    took.sort()
    q = lambda f: took[int(f * (len(took) - 1))] / 1000
    return (f"{name:10s} p50 {q(.5):5.0f} p90 {q(.9):5.0f} p99 {q(.99):5.0f} "
            f"p99.9 {q(.999):6.0f} mean {sum(took) / len(took) / 1000:5.0f}")

def main():
    directory, count, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    for r in range(rounds):
        for name in ("append", "fallocate", "zerofill"):
            print(batch, r, run(directory, name, count, batch), flush=True)

main()

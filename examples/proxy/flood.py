#!/usr/bin/env python3
"""Flood a fencing proxy with COUNT NBD connections that stall in the
handshake (read the greeting, send nothing), wait up to WAIT_S seconds for
the proxy to close them, and print the proxy's VmRSS (from
/proc/PID/status) at each step. Run it against the same proxy several
times to see whether memory comes back.

usage: flood.py PID HOST:PORT [COUNT] [WAIT_S] [--ro]
  --ro: finish a read-only NBD_OPT_GO for export disk0 first, then idle.

How the figures in docs/OPERATIONS.md ("Memory") were taken, with
handshake_timeout and read_only_idle_timeout at 5s (the proxy's own
limit test, fencing-proxy/tests/limits.rs, does the same in Rust):

  palisade-fencing-proxy --config proxy.toml &
  python3 flood.py $! 127.0.0.1:10809 1000 40
  python3 flood.py $! 127.0.0.1:10809 1000 40
  python3 flood.py $! 127.0.0.1:10809 1000 40 --ro
"""
import socket, struct, sys, time

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1

def go(sock, name=b"disk0"):
    sock.sendall(struct.pack(">I", 3))  # fixed newstyle | no zeroes
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    sock.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)
    # replies until NBD_REP_ACK (1)
    while True:
        hdr = recv_exact(sock, 20)
        _, _, rep, length = struct.unpack(">QIII", hdr)
        recv_exact(sock, length)
        if rep == 1:
            return True
        if rep & 0x80000000:
            return False

def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

def main():
    pid = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    wait_s = float(sys.argv[4]) if len(sys.argv) > 4 else 40
    ro = "--ro" in sys.argv
    print(f"baseline VmRSS {rss_kib(pid)} KiB")
    socks = []
    refused = 0
    for _ in range(count):
        s = socket.create_connection((host, int(port)))
        s.settimeout(10)
        try:
            greeting = recv_exact(s, 18)
            assert greeting[:8] == b"NBDMAGIC"
            if ro and not go(s):
                refused += 1
        except (EOFError, ConnectionResetError, socket.timeout):
            refused += 1
        socks.append(s)
    time.sleep(1)
    print(f"{count} connections open ({refused} refused/closed): VmRSS {rss_kib(pid)} KiB")
    t0 = time.time()
    # wait until the proxy closed them all (or wait_s passed)
    closed = 0
    for s in socks:
        left = max(0.1, wait_s - (time.time() - t0))
        s.settimeout(left)
        try:
            if s.recv(1) == b"":
                closed += 1
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed += 1
    print(f"after {time.time()-t0:.1f} s: {closed} closed by the proxy: VmRSS {rss_kib(pid)} KiB")
    for s in socks:
        s.close()
    time.sleep(3)
    print(f"all closed, 3 s later: VmRSS {rss_kib(pid)} KiB")

main()

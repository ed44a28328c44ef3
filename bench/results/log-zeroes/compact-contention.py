#!/usr/bin/env python3
"""Log syncs beside compactions: thread A appends BATCH bytes + fdatasync in a loop
(into a zero-filled file, as the raft log now does); thread B every INTERVAL s writes a new
file of STATE bytes, then TAIL bytes of zeros, and fsyncs it (a compaction). Prints A's sync
percentiles for TAIL=0 and TAIL=tail, alternating."""
import os, sys, time, threading
d, seconds, batch, state, tail, interval, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
def run(tail):
    p=os.path.join(d,'log'); fd=os.open(p, os.O_RDWR|os.O_CREAT|os.O_TRUNC, 0o600)
    size=64<<20
    for at in range(0,size,1<<20): os.pwrite(fd, b'\0'*(1<<20), at)
    os.fsync(fd)
    stop=time.monotonic()+seconds; lat=[]; data=b'x'*batch
    def compactor():
        n=0
        while time.monotonic()<stop:
            time.sleep(interval)
            q=os.path.join(d,f'tmp{n%2}'); f=os.open(q, os.O_WRONLY|os.O_CREAT|os.O_TRUNC, 0o600)
            os.write(f, b's'*state)
            z=b'\0'*(1<<20); left=tail
            while left>0:
                k=min(left,len(z)); os.write(f, z[:k]); left-=k
            os.fsync(f); os.close(f); n+=1
    t=threading.Thread(target=compactor); t.start()
    i=0
    while time.monotonic()<stop:
        b=time.perf_counter_ns(); os.pwrite(fd, data, i*batch); os.fdatasync(fd); lat.append(time.perf_counter_ns()-b); i+=1
        if (i+1)*batch>=size: i=0
    t.join(); os.close(fd)
    lat.sort(); q=lambda x: lat[int(x*(len(lat)-1))]/1000
    return f'tail {tail>>10:6d} KiB: syncs {len(lat):6d} p50 {q(.5):5.0f} p99 {q(.99):6.0f} p99.9 {q(.999):7.0f} max {lat[-1]/1000:7.0f} us'
for r in range(rounds):
    for t in (0, tail):
        print(r, run(t), flush=True)

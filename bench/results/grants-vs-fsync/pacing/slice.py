#!/usr/bin/env python3
"""slice.py TID NS: set a SCHED_OTHER thread's EEVDF slice (sched_attr.sched_runtime)."""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
tid, ns = int(sys.argv[1]), int(sys.argv[2])
attr = struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, ns, 0, 0, 0, 0)
buf = ctypes.create_string_buffer(attr, 56)
r = libc.syscall(314, tid, buf, 0)
if r != 0:
    e = ctypes.get_errno(); print("sched_setattr failed:", os.strerror(e)); sys.exit(1)
out = ctypes.create_string_buffer(56)
r = libc.syscall(315, tid, out, 56, 0)
print("runtime now", struct.unpack("IIQiIQQQII", out.raw)[5])

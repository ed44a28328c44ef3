#!/usr/bin/env bash
# CPU time per write of two proxy builds (and of qemu-nbd for `direct`)
# (UPSTREAM_ONLY=1 leaves out the file targets; binaries come from
# CARGO_TARGET_DIR when it is set):
# 4 KiB random writes, 4 connections, DEPTH in flight, targets in turn
# (direct, new-upstream, base-upstream, new-file, base-file), one load
# round of SECONDS each, ROUNDS times. Per target: the load's line, the
# serving process's utime+stime over the round divided by the writes
# (proxy_cpu_us_per_write; for `direct` it is qemu-nbd's), qemu-nbd's
# utime+stime per write (qemu_cpu_us_per_write: what the upstream server
# costs behind each target), and the machine's idle share over the round.
#   usage: cpu-per-write.sh NEWBIN BASEBIN DEPTH SECONDS ROUNDS [TARGET_TO_PERF]
# With TARGET_TO_PERF (e.g. new-upstream), `perf record -e cpu-clock -g` of
# that target's process goes to /tmp/wtproxy-perf-TARGET.data; with STAT=1,
# `perf stat` of syscall counts per target to /tmp/wtproxy-stat-TARGET.txt.
# Needs the release binaries of palisade and the load example (run
# bench/scripts/proxy-overhead.sh once, or cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../../.."
newbin=$1; basebin=$2; depth=$3; seconds=$4; rounds=$5; perf=${6:-}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
bin=${CARGO_TARGET_DIR:-target}/release; load=$bin/examples/nbd_pipeline_bench
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
truncate -s 256M "$work/disk.img"
lease_port=$(free_port); nbd_port=$(free_port); p1=$(free_port); p2=$(free_port)
: >"$work/palisade.toml"
"$bin/palisade" serve --config "$work/palisade.toml" --listen "127.0.0.1:$lease_port" --admin-listen off --data-dir "$work/lease" >"$work/lease.log" 2>&1 &
qemu-nbd -f raw --persistent --shared=64 -b 127.0.0.1 -p "$nbd_port" -x up "$work/disk.img" & qpid=$!
cfg() { cat <<TOML
[proxy]
listen = "127.0.0.1:$1"
state_dir = "$2"
[lease_service]
endpoint = "127.0.0.1:$lease_port"
[[exports]]
name = "file"
tenant = "default"
resource = "bench-file"
file = "disk.img"
[[exports]]
name = "upstream"
tenant = "default"
resource = "bench-upstream"
nbd = "127.0.0.1:$nbd_port"
nbd_export = "up"
TOML
}
cfg $p1 s1 >"$work/p1.toml"; cfg $p2 s2 >"$work/p2.toml"
for _ in $(seq 100); do "$bin/palisade" status --endpoint "127.0.0.1:$lease_port" >/dev/null 2>&1 && break; sleep 0.1; done
RUST_LOG=warn "$newbin" --config "$work/p1.toml" >"$work/p1.log" 2>&1 & pid1=$!
RUST_LOG=warn "$basebin" --config "$work/p2.toml" >"$work/p2.log" 2>&1 & pid2=$!
for port in $p1 $p2; do for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done; done
token() { "$bin/palisade" acquire "$1" --ttl 30s --json --endpoint "127.0.0.1:$lease_port" | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])'; }
tf=$(token bench-file); tu=$(token bench-upstream)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
tck=$(getconf CLK_TCK)
for r in $(seq $rounds); do
targets=("direct $qpid $nbd_port/up" "new-upstream $pid1 $p1/upstream@$tu" "base-upstream $pid2 $p2/upstream@$tu")
[ -n "${UPSTREAM_ONLY:-}" ] || targets+=("new-file $pid1 $p1/file@$tf" "base-file $pid2 $p2/file@$tf")
for t in "${targets[@]}"; do
  set -- $t
  c0=$(cpu $2); q0=$(cpu $qpid); i0=$(awk '/^cpu /{print $5+$6}' /proc/stat); a0=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  if [ -n "${STAT:-}" ]; then perf stat -e 'syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_futex,context-switches' -p $2 -o /tmp/wtproxy-stat-$1.txt -- sleep $((seconds-1)) >/dev/null 2>&1 & fi
  if [ -n "$perf" ] && [ "$1" = "$perf" ]; then
    perf record -e cpu-clock -g -p $2 -o /tmp/wtproxy-perf-$1.data -- sleep $((seconds-1)) >/dev/null 2>&1 &
  fi
  out=$("$load" --connections 4 --depth $depth --seconds $seconds --rounds 1 "$1=127.0.0.1:$3" | grep -E "^1 ")
  c1=$(cpu $2); q1=$(cpu $qpid); i1=$(awk '/^cpu /{print $5+$6}' /proc/stat); a1=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  w=$(echo "$out" | awk '{print $3}')
  echo "$out  proxy_cpu_us_per_write=$(echo "scale=2; ($c1-$c0)*1000000/$tck/($w*$seconds)" | bc) qemu_cpu_us_per_write=$(echo "scale=2; ($q1-$q0)*1000000/$tck/($w*$seconds)" | bc) idle_pct=$(( (i1-i0)*100/(a1-a0) ))"
done
done
sleep 1

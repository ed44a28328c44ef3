#!/usr/bin/env bash
# Syscalls per 4 KiB write of the proxy and of the qemu-nbd behind it
# (perf stat on the syscalls:sys_enter_* tracepoints of each process, over
# the middle SECONDS-2 s of a SECONDS s load), targets proxy-unix (the proxy
# forwarding to a qemu-nbd on a Unix socket) and direct (qemu-nbd on TCP),
# 4 connections at 1, 4 and 16 in flight. Set-up as cpu-per-write.sh.
#   usage: syscalls-per-write.sh PROXYBIN SECONDS
# Needs the release binaries of palisade and the load example in
# CARGO_TARGET_DIR (or target/): run bench/scripts/proxy-overhead.sh once.
set -euo pipefail
cd "$(dirname "$0")/../../.."
proxy_bin=$1; seconds=$2
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
bin=${CARGO_TARGET_DIR:-target}/release; load=$bin/examples/nbd_pipeline_bench
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
truncate -s 256M "$work/disk.img"
lease_port=$(free_port); nbd_port=$(free_port); proxy_port=$(free_port)
: >"$work/palisade.toml"
"$bin/palisade" serve --config "$work/palisade.toml" --listen "127.0.0.1:$lease_port" \
    --admin-listen off --data-dir "$work/lease" >"$work/lease.log" 2>&1 &
qemu-nbd -f raw --persistent --shared=64 -b 127.0.0.1 -p "$nbd_port" -x up "$work/disk.img" &
tcp_pid=$!
qemu-nbd --image-opts --persistent --shared=64 -k "$work/nbd.sock" -x up \
    "driver=raw,file.driver=file,file.filename=$work/disk.img,file.locking=off" &
unix_pid=$!
cat >"$work/proxy.toml" <<TOML
[proxy]
listen = "127.0.0.1:$proxy_port"
state_dir = "state"
[lease_service]
endpoint = "127.0.0.1:$lease_port"
[[exports]]
name = "upstream"
tenant = "default"
resource = "bench-upstream"
nbd = "127.0.0.1:$nbd_port"
nbd_export = "up"
[[exports]]
name = "unix"
tenant = "default"
resource = "bench-unix"
nbd_socket = "$work/nbd.sock"
nbd_export = "up"
TOML
for _ in $(seq 100); do
    "$bin/palisade" status --endpoint "127.0.0.1:$lease_port" >/dev/null 2>&1 && [ -S "$work/nbd.sock" ] && break
    sleep 0.1
done
RUST_LOG=warn "$proxy_bin" --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break; sleep 0.1; done
token() {
    "$bin/palisade" acquire "$1" --ttl 30s --json --endpoint "127.0.0.1:$lease_port" |
        python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])'
}
t_up=$(token bench-upstream); t_unix=$(token bench-unix)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
idle_ticks() { awk '/^cpu /{print $5+$6}' /proc/stat; }
all_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
hz=$(getconf CLK_TCK)
for depth in 1 4 16; do
for target in "proxy-unix $unix_pid $proxy_port/unix@$t_unix" "direct $tcp_pid $nbd_port/up"; do
    set -- $target
    ( sleep 1; perf stat -e 'syscalls:sys_enter_*' -p $proxy_pid -o "$work/stat.txt" -- sleep $((seconds-2)) ) &
    sp=$!
    ( sleep 1; perf stat -e 'syscalls:sys_enter_*' -p $2 -o "$work/qstat.txt" -- sleep $((seconds-2)) ) &
    sq=$!
    line=$("$load" --connections 4 --depth "$depth" --seconds "$seconds" --rounds 1 "$1=127.0.0.1:$3" | grep -E "^1 ")
    wait $sp $sq
    writes=$(echo "$line" | awk '{print $3}')
    echo "== depth $depth $1: $line"
    for f in stat qstat; do
      echo "-- $f (per write, counted over $((seconds-2)) s)"
      awk -v w=$writes -v s=$((seconds-2)) '/syscalls:sys_enter_/ {gsub(",","",$1); if ($1+0>0) printf "   %-40s %8.3f\n", $2, $1/(w*s)}' "$work/$f.txt" | sort -k2 -nr | head -8
    done
done
done

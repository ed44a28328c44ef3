#!/usr/bin/env bash
# First loopback load measurement: Palisade vs Redis, same machine, same run.
#
# - Redis (Debian's redis-server) on CPU 0, loaded by
#   `redis-benchmark -c 32 -r 100000 -n 1000000 SET lock:__rand_int__ v NX PX 10000`
#   pinned to CPU 1.
# - Palisade with one data-plane core on CPU 0, loaded by
#   `palisade-bench load` (32 connections, closed-loop acquire+release cycles
#   on 100000 random resources) pinned to CPU 1.
#
# Needs redis-server and redis-tools: `apt-get install redis-server redis-tools`.
# Usage: bench/scripts/first-load.sh [duration, default 20s]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-20s}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
    echo "redis-server/redis-benchmark missing: apt-get install redis-server redis-tools" >&2
    exit 1
}
cargo build --release --locked -p palisade-control -p palisade-bench

echo "== machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

echo "== redis (server CPU 0, redis-benchmark CPU 1)"
taskset -c 0 redis-server --port 6390 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
taskset -c 1 redis-benchmark -p 6390 -c 32 -r 100000 -n 1000000 \
    SET lock:__rand_int__ v NX PX 10000 2>&1 | tr '\r' '\n' | \
    sed -n '/throughput summary/,/^$/p; /Latency by percentile/,/^$/p' | \
    grep -E "throughput|avg|^ +[0-9]|99\.(9|90)[0-9]*% <=|^ *50\.000% <=|^ *99\.000% <=" | head -12
redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true

echo "== palisade (one data-plane core on CPU 0, palisade-bench on CPU 1)"
cat >"$work/palisade.toml" <<TOML
[node]
cores = [0]
[leases]
table_capacity = 1000000
TOML
./target/release/palisade serve --config "$work/palisade.toml" --data-dir "$work/data" \
    --listen 127.0.0.1:7490 --admin-listen off --ready-file "$work/ready.json" 2>"$work/palisade.log" &
for _ in $(seq 100); do [ -f "$work/ready.json" ] && break; sleep 0.05; done
load() { ./target/release/palisade-bench load --connections 32 --resources 100000 \
    --duration "$duration" --warmup 2s --cpu 1 "$@"; }
load --endpoint 127.0.0.1:7490

echo "== the same client against both: palisade-bench, 32 connections, 1 and 32 cycles in flight"
taskset -c 0 redis-server --port 6390 --save "" --appendonly no --dir "$work" \
    >"$work/redis2.log" 2>&1 &
for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
for depth in 1 32; do
    load --target redis --endpoint 127.0.0.1:6390 --pipeline "$depth"
    load --endpoint 127.0.0.1:7490 --pipeline "$depth"
done
redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true

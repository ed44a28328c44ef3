#!/usr/bin/env bash
# How the profiles here were taken: one echo runtime on CPU 0 loaded by
# open-loop on CPU 1 (1 connection, RATE arrivals/s, 64-byte messages),
# perf record -e cpu-clock -g on the server for 2 s of the run.
# Usage (from the repository root, under the bench lock):
#   flock /tmp/bench.lock nice -n -10 bench/results/echo-runtimes/profiles/profile.sh RUNTIME RATE OUT.data
#   perf report -i OUT.data --no-children --sort sym --stdio -g none
set -euo pipefail
B=target/release/palisade-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
$B echo-server --runtime "$1" --cpu 0 >"$out" 2>/dev/null &
pid=$!
sleep 0.5
addr=$(sed -n 's/^listening //p' "$out")
$B open-loop --system echo --echo-size 64 --endpoint "$addr" --rate "$2" --connections 1 \
    --duration 4s --warmup 1s --cpu 1 --json >/dev/null &
load=$!
sleep 1.5
perf record -e cpu-clock -F 2000 -g -p $pid -o "$3" -- sleep 2
wait $load
kill $pid

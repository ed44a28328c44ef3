#!/usr/bin/env bash
# Voluntary and involuntary context switches and CPU ticks of one echo
# server over 2 s of a 20 000 arrivals/s run (1 connection, 80 000
# requests in the window). /proc/PID/status counts the main thread only,
# which is the loop for --runtime uring and epoll (glommio's executor is
# another thread: it shows 0).
# Usage (repository root, under the bench lock):
#   flock /tmp/bench.lock nice -n -10 bench/results/echo-runtimes/profiles/switches.sh --runtime uring [--uring-wait-past-sends]
set -euo pipefail
B=target/release/palisade-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
$B echo-server "$@" --cpu 0 >"$out" 2>/dev/null &
pid=$!
sleep 0.5
addr=$(sed -n 's/^listening //p' "$out")
$B open-loop --system echo --echo-size 64 --endpoint "$addr" --rate 20000 --connections 1 \
    --duration 4s --warmup 1s --cpu 1 --json >/dev/null &
load=$!
sleep 1.5
c1=$(awk '/ctxt_switches/{printf "%s ", $2}' /proc/$pid/status); t1=$(awk '{print $14+$15}' /proc/$pid/stat)
sleep 2
c2=$(awk '/ctxt_switches/{printf "%s ", $2}' /proc/$pid/status); t2=$(awk '{print $14+$15}' /proc/$pid/stat)
wait $load
kill $pid
echo "$*: switches (voluntary involuntary) $c1-> $c2; ticks $((t2-t1)) in 2 s (80 000 requests)"

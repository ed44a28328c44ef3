#!/usr/bin/env bash
# Issue 16: runs the data plane's start/stop loop (or, with TEST set, another
# test of dataplane/tests/start_stop.rs) next to CPU hogs, which is what
# made a glommio executor park with runnable tasks (the data plane ran on
# glommio then; its cores are epoll loops now).
#
# Usage: scripts/start_stop_hang.sh [starts] [hogs]
# Prints the test's summary; a hang prints the stuck threads and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
starts=${1:-500}
hogs=${2:-4}
test=${TEST:-start_and_stop_many_times}
bin=$(cargo test -q -p palisade-dataplane --test start_stop --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*start_stop[^"]*\)".*/\1/p' | tail -1)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in $(seq "$hogs"); do
    (while :; do :; done) &
    pids+=($!)
done
PALISADE_STARTS=$starts "$bin" --ignored --nocapture --exact "$test"

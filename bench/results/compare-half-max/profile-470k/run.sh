#!/bin/bash
# Profiles palisade-none's server at RATE arrivals/s, 1 connection: perf record -e cpu-clock -g
# of the server process for 3 s in the middle of a 6 s fixed-rate run.
set -e
RATE=${1:-100000}; OUT=${2:-/tmp/prof}
BIN=${PALISADE_BIN:-/tmp/palisade-d33}; BENCH=${BENCH_BIN:-/tmp/palisade-bench-d33}
$BENCH compare --palisade-bin $BIN --no-sweep --rates $RATE --rounds 1 --duration 6s --warmup 1s \
    --systems palisade-none --workloads uncontended --connections 1 --out $OUT/compare > $OUT/compare.log 2>&1 &
CMP=$!
for i in $(seq 50); do PID=$(pgrep -f "$(basename $BIN) serve" | head -1); [ -n "$PID" ] && break; sleep 0.1; done
sleep 3
perf record -e cpu-clock -g -p $PID -o $OUT/perf.data -- sleep 3 2> $OUT/perf-record.log
wait $CMP
perf report -i $OUT/perf.data --no-children --sort dso,sym --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | grep "%" | head -60 > $OUT/top.txt
perf report -i $OUT/perf.data --no-children --sort dso --stdio 2>/dev/null | grep "%" | head -10 > $OUT/dso.txt

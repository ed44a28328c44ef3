#!/bin/bash
# perf sched of a quorum node at 2000 arrivals/s (whole process on CPU 0, generator on CPU 1):
# the control thread's (palisade-main) scheduling delays and the core's runs, per build.
cd /work/main
BIN=$1; OUT=$2
D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/nodeq.toml > /tmp/perf1/run.toml
taskset -c 0 $BIN serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate 2000 --workload uncontended --duration 6s --warmup 1s --cpu 1 > $OUT.load 2>&1 &
L=$!
sleep 2
perf sched record -o /tmp/perf1/sched.data -- sleep 3 2>/dev/null >/dev/null
wait $L
kill $PID; wait $PID 2>/dev/null
perf sched timehist -i /tmp/perf1/sched.data --cpu 0 2>/dev/null > $OUT.timehist
# The control thread carries the binary's name (palisade-<build>), not "palisade-main".
python3 "$(dirname "$0")/th.py" $OUT.timehist
grep -o 'p50.*' $OUT.load | head -1

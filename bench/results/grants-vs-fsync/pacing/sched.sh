#!/bin/bash
# perf sched of a quorum node at 2000 arrivals/s (whole process on CPU 0, generator on CPU 1)
cd /work/main
D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/nodeq.toml > /tmp/perf1/run.toml
taskset -c 0 ${BIN:-/tmp/palisade-main} serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate 2000 --workload uncontended --duration 5s --warmup 1s --cpu 1 2>&1 | grep -o "p50.*" &
L=$!
sleep 2
perf sched record -o /tmp/perf1/sched.data -- sleep 3 2>/dev/null >/dev/null
wait $L
ps -L -o tid,comm -p $PID > /tmp/perf1/threads.txt
kill $PID; wait $PID 2>/dev/null

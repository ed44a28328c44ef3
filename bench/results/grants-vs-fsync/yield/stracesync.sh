#!/bin/bash
cd /work/main
D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/${CONF:-nodeq.toml} > /tmp/perf1/run.toml
taskset -c 0 ${BIN:-/tmp/palisade-yield} serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate 2000 --workload uncontended --duration 6s --warmup 1s --cpu 1 2>&1 | grep -o "p50.*" &
L=$!
sleep 2
timeout -s INT 3 strace -f -T -e trace=fdatasync,fsync,renameat2,rename -p $PID -o /tmp/perf1/trace.txt 2>/dev/null
wait $L
kill $PID; wait $PID 2>/dev/null

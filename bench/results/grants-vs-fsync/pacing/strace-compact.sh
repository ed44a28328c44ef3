#!/bin/bash
cd /work/main
D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/nodeq.toml > /tmp/perf1/run.toml
taskset -c 0 /tmp/palisade-paced serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate 2000 --workload uncontended --duration 6s --warmup 1s --cpu 1 2>&1 | grep -o "p50.*" &
L=$!
sleep 2
timeout 4 strace -tt -T -p $PID -e trace=fsync,fdatasync,rename,renameat,renameat2,fallocate,openat,close,unlink -o /tmp/perf1/strace-compact.txt
wait $L
kill $PID; wait $PID 2>/dev/null

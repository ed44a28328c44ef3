#!/bin/bash
# single node, CONF (nodeq.toml|noden.toml), data dir DATA, whole process on CPUS (0)
cd /work/main
D=${DATA:-/tmp/perf1/data}
rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/${CONF:-nodeq.toml} > /tmp/perf1/run.toml
taskset -c ${CPUS:-0} ${BIN:-/tmp/palisade-main} serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate ${RATE:-2000} --workload uncontended --duration ${DUR:-5s} --warmup 1s --cpu 1 2>&1 | grep -o "p50.*"
kill $PID; wait $PID 2>/dev/null

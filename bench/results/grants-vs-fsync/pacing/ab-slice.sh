#!/bin/bash
# alternate: control thread with the default slice vs SLICE ns; one quorum node on CPU 0, 2000 arrivals/s
cd /work/main
for r in $(seq 1 ${ROUNDS:-6}); do
  for v in default short; do
    D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
    sed "s#/tmp/perf1/data#$D#" /tmp/perf1/${CONF:-nodeq.toml} > /tmp/perf1/run.toml
    taskset -c 0 ${BIN:-/tmp/palisade-main} serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
    PID=$!
    sleep 1.5
    [ $v = short ] && python3 /tmp/perf1/slice.py $PID ${SLICE:-100000} > /dev/null
    echo "$r $v $(target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate ${RATE:-2000} --workload uncontended --duration ${DUR:-4s} --warmup 1s --cpu 1 2>&1 | grep -o 'p50.*')"
    kill $PID; wait $PID 2>/dev/null
  done
done

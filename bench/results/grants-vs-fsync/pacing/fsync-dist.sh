#!/bin/bash
cd /work/main
D=/work/main/target/pdata; rm -rf $D; mkdir -p $D
sed "s#/tmp/perf1/data#$D#" /tmp/perf1/${CONF:-nodeq.toml} > /tmp/perf1/run.toml
taskset -c 0 ${BIN:-/tmp/palisade-main} serve --config /tmp/perf1/run.toml > /tmp/perf1/serve.log 2>&1 &
PID=$!
sleep 1.5
target/release/palisade-bench open-loop --endpoint 127.0.0.1:7499 --rate ${RATE:-2000} --workload uncontended --duration 6s --warmup 1s --cpu 1 2>&1 | grep -o "p50.*" &
L=$!
sleep 2
perf record -e 'syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync,syscalls:sys_enter_pwrite64,syscalls:sys_exit_pwrite64,syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_ppoll,syscalls:sys_exit_ppoll' -p $PID -o /tmp/perf1/fs.data -- sleep 4 2>/dev/null >/dev/null
wait $L
kill $PID; wait $PID 2>/dev/null
perf script -i /tmp/perf1/fs.data -F tid,time,event 2>/dev/null > /tmp/perf1/fs.txt

#!/bin/bash
BIN=$1
/tmp/bench-head compare --palisade-bin $BIN --no-sweep --rates 100000 --rounds 1 --duration 6s --warmup 1s --systems palisade-none --workloads uncontended --connections 1 --out /tmp/sched-out > /tmp/sched.log 2>&1 &
sleep 4.5
perf record -e sched:sched_switch -C 0 -o /tmp/sched.data -- sleep 2 2>/dev/null
wait
perf script -i /tmp/sched.data 2>/dev/null | grep "prev_comm=palisade-core-0" | grep "prev_state=R" | sed -E 's/.*next_comm=([^ ]+).*/\1/' | sort | uniq -c | sort -rn | head -15

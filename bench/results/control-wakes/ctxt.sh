#!/bin/bash
# ctxt.sh BIN: one 100k x1 fixed-rate run; samples per-thread CPU ticks and context switches of the server over 2 s.
BIN=$1
/tmp/bench-head compare --palisade-bin $BIN --no-sweep --rates 100000 --rounds 1 --duration 6s --warmup 1s --systems palisade-none --workloads uncontended --connections 1 --out /tmp/ctxt-out > /tmp/ctxt.log 2>&1 &
for i in $(seq 100); do p=$(pgrep -f "$(basename $BIN) serve"); [ -n "$p" ] && break; sleep 0.1; done
sleep 3
snap(){ for t in /proc/$p/task/*; do echo "$(cat $t/comm) $(awk '{print $14+$15}' $t/stat) $(grep -h ctxt $t/status | awk '{print $2}' | tr '\n' ' ')"; done; }
snap > /tmp/s1; sleep 2; snap > /tmp/s2
paste /tmp/s1 /tmp/s2 | awk '{printf "%-20s cpu_ticks %d vol %d invol %d\n",$1,$6-$2,$7-$3,$8-$4}'
wait; grep "x1:" /tmp/ctxt.log

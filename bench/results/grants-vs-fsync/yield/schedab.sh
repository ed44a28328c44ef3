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
python3 - $OUT.timehist <<'PY'
import sys
main=[];core=[]
for line in open(sys.argv[1]):
    f=line.split()
    if len(f)<6: continue
    name=f[2]
    try:
        wait,sch,run=float(f[-3]),float(f[-2]),float(f[-1])
    except ValueError: continue
    if name.startswith('palisade-main'): main.append(sch)
    if name.startswith('palisade-core-0'): core.append(run)
def q(xs,p):
    xs=sorted(xs); return xs[min(len(xs)-1,int(p*len(xs)))] if xs else 0
print("control sch delay: n %d p50 %.3f p99 %.3f p99.9 %.3f max %.3f ms; >0.5ms %d; >2ms %d | core runs >0.8ms %d max %.3f"%(
  len(main),q(main,.5),q(main,.99),q(main,.999),max(main or [0]),sum(x>0.5 for x in main),sum(x>2 for x in main),
  sum(x>0.8 for x in core),max(core or [0])))
PY
grep -o 'p50.*' $OUT.load | head -1

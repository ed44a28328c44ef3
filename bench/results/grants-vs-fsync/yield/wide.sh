#!/bin/bash
cd /work/main
for r in $(seq 1 ${ROUNDS:-3}); do
  for b in ${BINS:-base yield}; do
    target/release/palisade-bench compare --palisade-bin /tmp/palisade-$b --no-sweep --rates ${RATES:-2000,10000} --rounds 1 \
      --duration 3s --warmup 1s --systems palisade,palisade-cluster --workloads uncontended --connections 1,32 --out /tmp/ab/wide-$b-$r > /tmp/ab/wide-$b-$r.log 2>&1
    echo "$r $b $(grep -E 'probes' /tmp/ab/wide-$b-$r.log)"
    grep -E 'uncontended x' /tmp/ab/wide-$b-$r.log | sed "s/^/$r $b /"
  done
done

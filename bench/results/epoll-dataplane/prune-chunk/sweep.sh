#!/bin/bash
cd /work/main
for r in $(seq 1 ${ROUNDS:-3}); do
  for b in ${BINS:-p16 s128}; do
    target/release/palisade-bench compare --palisade-bin /tmp/palisade-$b --no-sweep --rates ${RATES:-20000,100000} --rounds 1 \
      --duration 3s --warmup 1s --systems palisade-none --workloads uncontended --connections ${CONNS:-1} --out /tmp/ab/sw-$b-$r > /tmp/ab/sw-$b-$r.log 2>&1
    grep -E 'palisade-none uncontended' /tmp/ab/sw-$b-$r.log | sed "s/^/$r $b /"
  done
done

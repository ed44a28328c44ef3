#!/bin/bash
cd /work/main
for r in $(seq 1 ${ROUNDS:-3}); do
  for b in ${BINS:-main nonames}; do
    if [ $b = nonames ]; then export PALISADE_NO_NAMES=1; else unset PALISADE_NO_NAMES; fi
    target/release/palisade-bench compare --palisade-bin /tmp/palisade-$b --no-sweep --rates ${RATES:-20000,100000} --rounds 1 \
      --duration 3s --warmup 1s --systems palisade-none --workloads uncontended --connections 1 --out /tmp/ab/names-$b-$r > /tmp/ab/names-$b-$r.log 2>&1
    grep -E 'palisade-none uncontended' /tmp/ab/names-$b-$r.log | sed "s/^/$r $b /"
  done
done

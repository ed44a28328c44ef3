#!/bin/bash
cd /work/main
for r in $(seq 1 ${ROUNDS:-6}); do
  for b in ${BINS:-main paced}; do
    target/release/palisade-bench compare --palisade-bin /tmp/palisade-$b --no-sweep --rates 2000 --rounds 1 \
      --duration 4s --warmup 1s --systems palisade --workloads uncontended --connections 1 --out /tmp/ab/$b-$r > /tmp/ab/$b-$r.log 2>&1
    echo "$r $b $(grep -E 'probes' /tmp/ab/$b-$r.log) | $(grep -E 'palisade uncontended x1' /tmp/ab/$b-$r.log)"
  done
done

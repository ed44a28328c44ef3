#!/bin/bash
# A/B of old (5113b6a, /tmp/pal-head) and new (7b6cf62, /tmp/pal-7b6) at 100k x1, both slot orders, twice
# (bench: /tmp/bench-head, built from 5113b6a; results under /work/notes/s19, copied here)
B=/tmp/bench-head
for i in 1 2; do
for order in new-first old-first; do
  if [ $order = new-first ]; then A=/tmp/pal-7b6; Bb=/tmp/pal-head; else A=/tmp/pal-head; Bb=/tmp/pal-7b6; fi
  D=/work/notes/s19/ab-$order-$i
  flock /tmp/bench.lock nice -n -10 $B compare --palisade-bin $A --palisade-b-bin $Bb --busy-poll 0s --no-sweep --rates 100000 --rounds 12 --duration 3s --warmup 1s --systems palisade-none,palisade-none-b,echo --workloads uncontended --connections 1 --out $D > $D.txt 2>&1
done; done

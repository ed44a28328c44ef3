#!/bin/bash
cd /work/main
B=target/release/palisade-bench
O=bench/results/epoll-dataplane/prune-chunk
for r in 1 2; do
  $B compare --palisade-bin /tmp/palisade-prune16 --no-sweep --rates 20000,100000 --rounds 2 --duration 3s --warmup 1s \
      --systems palisade-none,echo,echo-epoll,redis --workloads uncontended --connections 1,32 --out $O/prune16-$r > /dev/null 2>&1
  $B compare --palisade-bin /tmp/palisade-main --no-sweep --rates 20000,100000 --rounds 2 --duration 3s --warmup 1s \
      --systems palisade-none --workloads uncontended --connections 1,32 --out $O/main-$r > /dev/null 2>&1
  echo round $r done
done

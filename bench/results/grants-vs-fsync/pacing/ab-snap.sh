#!/bin/bash
# alternate default compaction (10k entries) and none, 2000 arrivals/s, quorum, one node on CPU 0
for r in 1 2 3 4; do
  for c in nodeq nodeq-nosnap; do
    echo "round $r $c: $(CONF=$c.toml DUR=${DUR:-4s} RATE=${RATE:-2000} /tmp/perf1/lat3.sh)"
  done
done

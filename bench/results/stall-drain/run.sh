#!/bin/bash
# How fast palisade-none and the glommio echo work off the backlog of a stall of their own.
#
# One node (replication "none", the compare's table) and the echo, both on CPU 0; palisade-bench
# open-loop on CPU 1, 1 connection, uncontended acquire+release, 5 s recorded after 1 s of
# warm-up. During each run the server is stopped (SIGSTOP, ~10 ms, SIGCONT) three times, about
# 1.5, 2.5 and 3.5 s into the recorded window. Each run writes its timeline (open-loop
# --timeline); drain.py reads them.
#
# SYSTEMS (default "palisade echo") may also name redis (Debian's redis-server, no persistence,
# as the compare runs it).
#
# usage: run.sh OUT_DIR ROUNDS RATE...   (as root, nothing else running; under flock /tmp/bench.lock)
set -e
OUT=$1; ROUNDS=$2; shift 2
PAL=${PAL:-target/release/palisade}; BENCH=${BENCH:-target/release/palisade-bench}
mkdir -p "$OUT"
DATA=$(mktemp -d)
cat > "$OUT/palisade.toml" <<TOML
# the compare's palisade-none node (bench/src/compare/systems.rs, ClusterSpec::compare)
[node]
id = 1
cores = [0]
data_dir = "$DATA"
[listen]
client = "127.0.0.1:7450"
[leases]
max_ttl = "120s"
table_capacity = 262144
replication = "none"
[limits]
tenant_leases_max = 262144
[log]
level = "warn"
[admin]
listen = "off"
[[tenants]]
name = "default"
TOML
taskset -c 0 "$PAL" serve --config "$OUT/palisade.toml" 2> "$OUT/palisade.stderr" & P=$!
taskset -c 0 "$BENCH" echo-server --listen 127.0.0.1:7451 --cpu 0 > /dev/null 2>&1 & E=$!
R=
case " ${SYSTEMS:=palisade echo} " in *" redis "*)
  taskset -c 0 redis-server --port 7452 --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
      --logfile "" --dir "$DATA" > /dev/null 2>&1 & R=$!;;
esac
trap 'kill -9 $P $E $R 2>/dev/null; rm -rf "$DATA"' EXIT
sleep 2
stall() { for t in 2.5 1.0 1.0; do sleep "$t"; kill -STOP "$1"; sleep 0.01; kill -CONT "$1"; done; }
for round in $(seq "$ROUNDS"); do
  for RATE in "$@"; do
    # Alternate the order of the systems.
    systems=$SYSTEMS; [ $((round % 2)) = 0 ] && systems=$(echo $SYSTEMS | tr ' ' '\n' | tac | tr '\n' ' ')
    for sys in $systems; do
      case $sys in
        palisade) port=7450; pid=$P;;
        echo) port=7451; pid=$E;;
        redis) port=7452; pid=$R;;
      esac
      taskset -c 0 bash -c "$(declare -f stall); stall $pid" & S=$!
      "$BENCH" open-loop --endpoint 127.0.0.1:$port --system "$sys" --rate "$RATE" --duration 5s \
          --warmup 1s --cpu 1 --timeline "$OUT/$sys-$RATE-r$round.csv" | sed "s/^/$sys r$round: /"
      wait $S
    done
  done
done

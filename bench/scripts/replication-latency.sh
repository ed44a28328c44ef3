#!/usr/bin/env bash
# Grant and renew latency of one node with leases.replication = "quorum"
# and "none", side by side: the same binary, the server on CPU 0 and the
# open-loop generator (`palisade-bench open-loop`) on CPU 1, a fresh data
# directory per mode, ROUNDS rounds alternating the modes. Prints one line
# per run; min and median are for the reader (docs/OPERATIONS.md,
# "leases.replication: the trade-off").
#
#   bench/scripts/replication-latency.sh [ROUNDS] [RATES] [WORKLOADS]
#   (defaults: 3, "1000 10000", "uncontended renew check")
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
RATES=${2:-"1000 10000"}
WORKLOADS=${3:-"uncontended renew check"}
BIN=target/release
cargo build --release --bin palisade --bin palisade-bench >/dev/null
WORK=$(mktemp -d)
trap 'pkill -f "$WORK/" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=17490
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for mode in quorum none; do
    cat > "$WORK/$mode.toml" <<CONF
[node]
id = 1
cores = 1
[listen]
client = "127.0.0.1:$PORT"
[admin]
listen = "off"
[leases]
max_ttl = "120s"
replication = "$mode"
CONF
    rm -rf "$WORK/data-$mode"
    taskset -c 0 "$BIN/palisade" serve --config "$WORK/$mode.toml" --data-dir "$WORK/data-$mode" 2>"$WORK/$mode.log" &
    server=$!
    for _ in $(seq 100); do
      "$BIN/palisade" status --endpoint "127.0.0.1:$PORT" >/dev/null 2>&1 && break
      sleep 0.05
    done
    for rate in $RATES; do
      for workload in $WORKLOADS; do
        RUST_BACKTRACE=0 taskset -c 1 "$BIN/palisade-bench" open-loop --endpoint "127.0.0.1:$PORT" \
          --rate "$rate" --workload "$workload" --duration 5s --json 2>&1 |
          python3 -c '
import json, sys
text = sys.stdin.read()
try:
    d = json.loads(text)
    q = d["requests"]
    print("round %s %-6s %6s/s %-11s p50 %6.0f  p99 %6.0f  p99.9 %7.0f us  unanswered %s" % (
        sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], q["p50"], q["p99"], q["p99_9"], d.get("unanswered")))
except Exception:
    cause = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith(" ")][:3]
    print("round %s %s %s %s: failed: %s" % (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], " / ".join(cause)))
' "$round" "$mode" "$rate" "$workload"
      done
    done
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

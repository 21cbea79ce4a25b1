#!/usr/bin/env bash
# Soak (not in CI): mixed Predict (diabetes) and Sentiment load from `torchwire-bench load` for
# SECS seconds (default 1800), 1% of each stream's requests deliberately malformed, against a
# release server pinned to core 0 (clients on core 1). Samples the server's RSS every 30 s and
# prints requests served, gRPC codes seen, and RSS at the start, middle and end with the
# least-squares slope. Needs `make build build-bench models`.
#   benches/soak.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
B=./target/release/torchwire
L=./target/release/torchwire-bench
A=127.0.0.1:50131
out=$(mktemp -d)
taskset -c 0 $B serve --model-dir models --grpc-addr $A --metrics-addr off --log-level warn \
  --max-loaded-models 4 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until .venv/grpcurl -plaintext -d '{"service":""}' $A grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; do
  sleep 0.05
done
# Load both models before measuring, so the first sample is the loaded steady state.
.venv/grpcurl -plaintext -d '{"model":"diabetes"}' $A torchwire.v1.Admin/LoadModel >/dev/null
.venv/grpcurl -plaintext -d '{"model":"sentiment"}' $A torchwire.v1.Admin/LoadModel >/dev/null

common=(--addr "http://$A" --duration "$secs" --warmup 0 --malformed-percent 1 --json)
taskset -c 1 $L load --rpc predict --model diabetes --concurrency 4 "${common[@]}" > "$out/predict.json" &
p1=$!
taskset -c 1 $L load --rpc sentiment --model sentiment --concurrency 4 "${common[@]}" > "$out/sentiment.json" &
p2=$!

t0=$(date +%s)
echo "t_s,rss_kb" > "$out/rss.csv"
while kill -0 $p1 2>/dev/null || kill -0 $p2 2>/dev/null; do
  now=$(( $(date +%s) - t0 ))
  echo "$now,$(awk '/VmRSS/ {print $2}' /proc/$pid/status)" >> "$out/rss.csv"
  sleep 30
done
wait $p1 $p2
kill -TERM $pid; wait $pid || true
trap - EXIT

python3 - "$out" "$secs" <<'EOF'
import csv, json, sys
out, secs = sys.argv[1], float(sys.argv[2])
rows = [(float(r["t_s"]), float(r["rss_kb"])) for r in csv.DictReader(open(f"{out}/rss.csv"))]
for name in ("predict", "sentiment"):
    r = json.load(open(f"{out}/{name}.json"))
    total = sum(r["codes"].values())
    print(f"{name}: {total} requests in {secs:.0f} s, {r['requests_per_s']:.1f} OK/s, codes {r['codes']}")
n = len(rows)
mid = rows[n // 2]
xs, ys = [x for x, _ in rows], [y for _, y in rows]
mx, my = sum(xs) / n, sum(ys) / n
slope = sum((x - mx) * (y - my) for x, y in rows) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
print(f"RSS kB: start {rows[0][1]:.0f} (t={rows[0][0]:.0f} s), middle {mid[1]:.0f} (t={mid[0]:.0f} s), "
      f"end {rows[-1][1]:.0f} (t={rows[-1][0]:.0f} s); {n} samples; slope {slope * 3600:.1f} kB/hour")
print(f"samples: {out}/rss.csv")
EOF

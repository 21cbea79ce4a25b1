#!/usr/bin/env bash
# Sentiment at 16 clients through torchwire against the raw batch-16 forward pass, measured
# alternately — raw, server, raw, server, ... — so that a noisy shared host slows both sides of
# each pair alike. The suite measures its limits once, at the start; on a host whose speed
# drifts during the run its Sentiment ratio is only as good as that one moment.
#
# Usage: bash benches/interleaved.sh [PAIRS] (default 5). Needs `make models build build-bench`.
# Prints each pair (raw texts/s, server req/s, ratio) and the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-5}
BIN=target/release/torchwire
BENCH=target/release/torchwire-bench
PY=.venv/bin/python
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

taskset -c 0 "$BIN" serve --model-dir models --grpc-addr "127.0.0.1:$PORT" --metrics-addr off \
    --cpu-only --intra-op-threads 1 --log-level warn &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    $PY -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.1)" 2>/dev/null && break
    sleep 0.1
done
# The first call loads the model; 3 s of warm-up also lets the batch sizes settle.
taskset -c 1 "$BENCH" load --addr "http://127.0.0.1:$PORT" --rpc sentiment --model sentiment \
    --concurrency 16 --duration 1 --warmup 3 --json > /dev/null

ratios=()
for i in $(seq 1 "$PAIRS"); do
    raw=$(taskset -c 0 "$BENCH" raw --model-dir models --model sentiment --batch 16 --iters 40 \
        --threads 1 --json | tail -1 | $PY -c 'import json, sys; print(json.load(sys.stdin)["rows_per_s"])')
    srv=$(taskset -c 1 "$BENCH" load --addr "http://127.0.0.1:$PORT" --rpc sentiment --model sentiment \
        --concurrency 16 --duration 4 --warmup 1 --json | tail -1 \
        | $PY -c 'import json, sys; r = json.load(sys.stdin); assert set(r["codes"]) == {"OK"}, r["codes"]; print(r["requests_per_s"])')
    ratio=$($PY -c "print(f'{$srv / $raw:.3f}')")
    ratios+=("$ratio")
    echo "pair $i: raw batch 16 $raw texts/s, torchwire c=16 $srv req/s, ratio $ratio"
done
$PY -c "import statistics, sys; r = sorted(map(float, sys.argv[1:])); print(f'median ratio {statistics.median(r):.3f} (min {r[0]:.3f}, max {r[-1]:.3f}) over {len(r)} pairs')" "${ratios[@]}"

#!/usr/bin/env bash
# perf_analyzer 2.51.0 (from the tritonclient wheel) drives torchwire and the Python grpcio +
# torch baseline peer (python-grpc/ in $TORCHWIRE_PEERS_DIR, default ../shared/peers) over the
# same protocol, KServe v2 gRPC, on the same TorchScript file, at concurrency 1, 4 and 16.
# Server pinned to core 0, perf_analyzer to core 1. Needs `make build models`; installs the
# peer and perf_analyzer's two libraries.
# Usage: benches/kserve.sh [requests per measurement window, default 10000]
# (async mode with count windows: perf_analyzer 2.51 never settles in synchronous time-window
# mode at ~20k req/s on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-10000}
model=${MODEL:-diabetes}
features=${FEATURES:-7}
peers=${TORCHWIRE_PEERS_DIR:-../shared/peers}
bash scripts/setup-triton.sh
[ -d .venv-peers/python-grpc ] || bash "$peers/setup.sh" "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" .venv-peers
export LD_LIBRARY_PATH=$PWD/.venv-triton/lib/python3.11/site-packages/nvidia/cuda_runtime/lib
pa() { # pa URL NAME: one bounded run per concurrency (perf_analyzer keeps every timestamp, so
  # an unbounded search for stability can grow without limit)
  for c in 1 4 16; do
    timeout 120 taskset -c 1 .venv-triton/bin/perf_analyzer -m "$2" -i grpc -u "$1" --concurrency-range "$c" \
      --async --measurement-mode count_windows --measurement-request-count "$window" --max-trials 6 --stability-percentage 50 2>&1 | grep -E "^Concurrency: " || echo "concurrency $c: no stable result"
  done
}
wait_port() { # wait_port ADDR PID
  until .venv/grpcurl -plaintext "$1" list >/dev/null 2>&1; do
    kill -0 "$2" 2>/dev/null || { echo "server on $1 exited" >&2; exit 1; }
    sleep 0.1
  done
}

echo "## torchwire ($model)"
taskset -c 0 ./target/release/torchwire serve --model-dir models --grpc-addr 127.0.0.1:50095 --metrics-addr off \
  --cpu-only --intra-op-threads 1 --log-level warn &
tw=$!
wait_port 127.0.0.1:50095 $tw
pa 127.0.0.1:50095 "$model"
kill -TERM $tw; wait $tw || true

echo "## Python grpcio + torch baseline ($model, 4 workers, 1 torch thread)"
PYTHONPATH=$PWD/.venv-peers/python-grpc taskset -c 0 .venv-peers/python-grpc/bin/python "$peers/python-grpc/server.py" \
  --port 50096 --torch-threads 1 --workers 4 --tabular "models/$model/1/model.pt" --tabular-name "$model" \
  --features "$features" --text models/sentiment/1/model.pt --tokenizer models/sentiment/tokenizer.json >/dev/null 2>&1 &
py=$!
wait_port 127.0.0.1:50096 $py
pa 127.0.0.1:50096 "$model"
kill $py; wait $py || true

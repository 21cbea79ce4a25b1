#!/usr/bin/env bash
# Deadlines + batching benchmark (one run, one machine): Sentiment throughput and latency at
# concurrency 1, 4, 16, 64 with batching on (the CPU default, 8 texts) and off
# (--max-batch-size 1), next to the raw libtorch forward pass of the same TorchScript file
# measured in-process at the same batch sizes; then the tabular model at twice its capacity
# (open loop), showing p99 of admitted requests and how fast rejections come back.
#
# Server pinned to core 0, load generator to core 1 (taskset), libtorch at one intra-op thread.
# Usage: benches/batching.sh [seconds per point, default 5]    (needs `make build build-bench models`)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
bin=./target/release/torchwire
bench_bin=./target/release/torchwire-bench
addr=127.0.0.1:50091
text_model=${TEXT_MODEL:-sentiment}
tab_model=${TAB_MODEL:-diabetes}

serve() { # serve EXTRA_FLAGS...
  taskset -c 0 "$bin" serve --model-dir models --grpc-addr "$addr" --metrics-addr off --cpu-only \
    --intra-op-threads 1 --log-level warn "$@" &
  pid=$!
  until .venv/grpcurl -plaintext -d '{"service":""}' "$addr" grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.05; done
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
bench() { taskset -c 1 "$bench_bin" load --addr "http://$addr" --duration "$secs" --warmup 1 "$@"; }

echo "## raw forward pass (in-process, 1 thread, core 0)"
taskset -c 0 "$bench_bin" raw --model-dir models --model "$text_model" --batch 1,4,8,16 --iters 100 --threads 1

for mode in on off; do
  if [ "$mode" = on ]; then serve; else serve --max-batch-size 1; fi
  echo "## Sentiment, batching $mode"
  for c in 1 4 16 64; do bench --rpc sentiment --model "$text_model" --concurrency "$c"; done
  stop
done

# Overload: a one-core load generator cannot push the tabular models past capacity (it tops out
# near the server's rate), so twice-capacity is shown on the Sentiment model, whose capacity a
# single core can double. The queue holds about two batches so admitted requests fit a 100 ms
# deadline; the rest must be refused at once.
over_model=${OVER_MODEL:-$text_model}
over_rpc=${OVER_RPC:-sentiment}
echo "## $over_model at twice its capacity"
serve --queue-capacity 16
cap=$(bench --rpc "$over_rpc" --model "$over_model" --concurrency 16 --json | sed -E 's/.*"requests_per_s":([0-9.]+).*/\1/')
echo "capacity (closed loop, concurrency 16, fits the queue): $cap req/s"
rate=$(awk -v c="$cap" 'BEGIN { printf "%.0f", 2 * c }')
rss0=$(grep VmRSS /proc/$pid/status | awk '{print $2}')
echo "open loop at $rate req/s, 100 ms deadline:"
bench --rpc "$over_rpc" --model "$over_model" --rate "$rate" --concurrency 2048 --timeout-ms 100
bench --rpc "$over_rpc" --model "$over_model" --rate "$rate" --concurrency 2048 --timeout-ms 100
rss=$(grep VmRSS /proc/$pid/status | awk '{print $2}')
echo "server RSS before / after two overload runs: ${rss0} / ${rss} kB"
stop

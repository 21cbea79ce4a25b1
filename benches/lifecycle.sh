#!/usr/bin/env bash
# Lifecycle figures: start to SERVING, idle RSS, first requests (cold, after LoadModel with and
# without warm-up, steady), load time and memory per bundled model, RSS with all loaded.
# Needs `make build models`. Usage: benches/lifecycle.sh
set -uo pipefail
cd "$(dirname "$0")/.."
G=.venv/grpcurl; B=./target/release/torchwire
A=127.0.0.1:50111
EXTRA=${EXTRA:-}
lm=$(mktemp)
rss() { grep VmRSS /proc/$1/status | awk '{print $2}'; }
D='{"model":"diabetes","rows":[{"features":{"npreg":2,"glu":148,"bp":72,"skin":35,"bmi":33.6,"ped":0.627,"age":50}}]}'
tot() { $G -plaintext -d "$2" $A torchwire.v1.Inference/$1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["timing"]["totalUs"])'; }
for warm in 0 2; do
  t0=$(date +%s%N)
  $B serve --model-dir models --grpc-addr $A --metrics-addr off --log-level warn --warmup-runs $warm --max-loaded-models 8 $EXTRA &
  pid=$!
  until $G -plaintext -d '{"service":""}' $A grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; do :; done
  t1=$(date +%s%N)
  echo "warmup_runs=$warm start_to_serving_ms=$(( (t1-t0)/1000000 )) idle_rss_kb=$(rss $pid)"
  echo "  first Predict diabetes (cold, includes load): total_us=$(tot Predict "$D")"
  echo "  second Predict: total_us=$(tot Predict "$D")"
  s=""; for i in $(seq 1 20); do s="$s $(tot Predict "$D")"; done
  echo "  steady Predict total_us (20): $(echo $s | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print "p50=" a[int(NR/2)+1] " min=" a[1] " max=" a[NR]}')"
  echo "  rss_kb with diabetes loaded: $(rss $pid)"
  if [ $warm = 2 ]; then
    for m in breast_cancer heart_disease sentiment sentiment-int8; do
      $G -plaintext -d "{\"model\":\"$m\"}" $A torchwire.v1.Admin/LoadModel > $lm
      echo "  load $m: load_ms=$(python3 -c 'import json; d=json.load(open("$lm")); print(d["devices"][0].get("loadMs"), "memory_bytes", d["devices"][0].get("memoryBytes"))')"
    done
    $G -plaintext -d '{"model":"diabetes"}' $A torchwire.v1.Admin/GetModel | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  load diabetes: load_ms", d["devices"][0].get("loadMs"))'
    echo "  rss_kb with all 5 models loaded: $(rss $pid)"
    S='{"model":"sentiment","text":"The service was quick and the food was really good."}'
    s=""; for i in $(seq 1 20); do s="$s $(tot Sentiment "$S")"; done
    echo "  steady Sentiment (12-token sentence) total_us: $(echo $s | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print "p50=" a[int(NR/2)+1] " min=" a[1]}')"
  else
    S='{"model":"sentiment","text":"The service was quick and the food was really good."}'
    echo "  first Sentiment (cold, no warm-up): total_us=$(tot Sentiment "$S")"
    echo "  second Sentiment: total_us=$(tot Sentiment "$S")"
  fi
  kill -TERM $pid; wait $pid
done
A=127.0.0.1:50112
tot() { $G -plaintext -d "$2" $A torchwire.v1.Inference/$1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["timing"]["totalUs"])'; }
S='{"model":"sentiment","text":"The service was quick and the food was really good."}'
D='{"model":"diabetes","rows":[{"features":{"npreg":2,"glu":148,"bp":72,"skin":35,"bmi":33.6,"ped":0.627,"age":50}}]}'
for warm in 0 2; do
  $B serve --model-dir models --grpc-addr $A --metrics-addr off --log-level warn --warmup-runs $warm --cpu-only &
  pid=$!
  until $G -plaintext -d '{"service":""}' $A grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; do :; done
  for m in sentiment diabetes; do $G -plaintext -d "{\"model\":\"$m\"}" $A torchwire.v1.Admin/LoadModel >/dev/null; done
  echo "warmup_runs=$warm (model loaded by LoadModel first):"
  echo "  Sentiment 1st=$(tot Sentiment "$S") 2nd=$(tot Sentiment "$S") 3rd=$(tot Sentiment "$S") us"
  echo "  Predict diabetes 1st=$(tot Predict "$D") 2nd=$(tot Predict "$D") 3rd=$(tot Predict "$D") us"
  kill -TERM $pid; wait $pid
done

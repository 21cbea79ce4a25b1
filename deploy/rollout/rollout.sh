#!/usr/bin/env bash
# Owns the rolling-update simulation (issue 18): three torchwire replicas behind HAProxy (Debian's
# gRPC-aware balancer: HTTP/2 to the backends, per-request round robin, active health checks),
# a constant-rate tabular load through it (deploy/rollout/loadgen.py), and the replicas replaced
# one at a time the way the Deployment in deploy/k8s does it. Prints failed requests and p99
# before (steady) and during the rollout, for a client without and with a gRPC retry policy.
#
#   deploy/rollout/rollout.sh [noretry|retry|both]          (default both)
#
# Replicas: the image (RUNNER=podman, the default; IMAGE, default torchwire:0.1.0-cpu when it
# exists, else torchwire:0.1.0; build them with scripts/image-check.sh [--cpu]) run read-only as
# uid 10001 on the host network, or the host binary (RUNNER=host, target/release/torchwire on
# ./models). Their environment is deploy/k8s/base/configmap.yaml's (preload breast_cancer,
# ready after preload, shutdown grace) with loopback ports.
#
# What a Deployment with maxSurge 1 / maxUnavailable 0 does, per old replica: start a new one;
# poll its gRPC health every startupProbe period until SERVING (readiness); add it to the
# balancer (HAProxy runtime API: what an endpoints update does for an Envoy/EDS-style balancer);
# then delete the old one: ENDPOINT_DELAY seconds later it leaves the balancer (endpoint removal
# propagating) while, in parallel, the preStop sleep runs, then SIGTERM, then SIGKILL at
# terminationGracePeriodSeconds. The preStop sleep, the grace period and the probe period are
# read from deploy/k8s/base/deployment.yaml, so the simulation follows the manifests.
# HAProxy also checks each replica's /readyz (same state as health "": not ready while preloading
# or draining) every second, and retries a request whose connection to a replica failed.
#
# Environment: PRESTOP_OVERRIDE and ENDPOINTS=0 (stress variants, below), RATE (1000/s), SECONDS_TOTAL (120), STEADY (30: seconds of load before the rollout),
# ENDPOINT_DELAY (1), LB_PORT (50300), BASE_PORT (50310: replica i serves gRPC on BASE_PORT+i,
# metrics on BASE_PORT+100+i), OUT (target/rollout). Needs root for podman, haproxy (Debian;
# installed when missing), python3-venv. Takes about 2.5 minutes per mode; not part of make test.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
modes=${1:-both}
[ "$modes" = both ] && modes="noretry retry"
RATE=${RATE:-1000}
SECONDS_TOTAL=${SECONDS_TOTAL:-120}
STEADY=${STEADY:-30}
ENDPOINT_DELAY=${ENDPOINT_DELAY:-1}
LB_PORT=${LB_PORT:-50300}
BASE_PORT=${BASE_PORT:-50310}
OUT=${OUT:-$root/target/rollout}
RUNNER=${RUNNER:-podman}
# The same podman settings as scripts/image-check.sh (runc, explicit ulimits; see there).
P=(podman --storage-driver vfs --cgroup-manager cgroupfs --events-backend none --runtime runc)
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
mkdir -p "$OUT"
log() { echo "rollout: $*" >&2; }

# ---- tools ---------------------------------------------------------------------------------------
venv=$root/.venv-tools
if [ ! -f "$venv/.torchwire-rollout-v1" ]; then
  log "installing grpcio and PyYAML into $venv (first run only)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q 'grpcio>=1.66,<2' 'PyYAML>=6,<7'
  touch "$venv/.torchwire-rollout-v1"
fi
PY=$venv/bin/python
command -v haproxy >/dev/null || { log "installing haproxy (apt-get)"; apt-get install -y -qq haproxy >/dev/null; }
GRPCURL=$root/.venv/grpcurl
[ -x "$GRPCURL" ] || { log "no $GRPCURL (run scripts/setup.sh)"; exit 1; }

# ---- what the manifests say -------------------------------------------------------------------------
read -r PRESTOP GRACE PROBE_PERIOD SHUTDOWN_GRACE PRELOAD < <("$PY" - <<'EOF'
import yaml
d = yaml.safe_load(open("deploy/k8s/base/deployment.yaml"))
cm = yaml.safe_load(open("deploy/k8s/base/configmap.yaml"))["data"]
pod = d["spec"]["template"]["spec"]
c = pod["containers"][0]
cmd = c["lifecycle"]["preStop"]["exec"]["command"]
assert cmd[0] == "sleep", cmd
print(cmd[1], pod["terminationGracePeriodSeconds"], c["startupProbe"]["periodSeconds"],
      cm["TORCHWIRE_SHUTDOWN_GRACE_SECS"], cm["TORCHWIRE_PRELOAD"])
EOF
)
# Stress variants (not what the manifests do): PRESTOP=0 sends SIGTERM at once; ENDPOINTS=0 never
# takes a deleted replica out of the balancer, which then learns only from its own checks.
PRESTOP=${PRESTOP_OVERRIDE:-$PRESTOP}
ENDPOINTS=${ENDPOINTS:-1}
log "from deploy/k8s: preStop sleep ${PRESTOP}s, terminationGracePeriodSeconds ${GRACE}, probe period ${PROBE_PERIOD}s, shutdown grace ${SHUTDOWN_GRACE}s, preload ${PRELOAD}"

if [ "$RUNNER" = podman ]; then
  if [ -z "${IMAGE:-}" ]; then
    IMAGE=torchwire:0.1.0
    "${P[@]}" image exists torchwire:0.1.0-cpu && IMAGE=torchwire:0.1.0-cpu
  fi
  "${P[@]}" image exists "$IMAGE" || { log "no image $IMAGE (scripts/image-check.sh)"; exit 1; }
  log "replicas: podman run $IMAGE"
else
  [ -x target/release/torchwire ] || cargo build --release --locked
  log "replicas: host binary target/release/torchwire"
fi

# ---- replicas ------------------------------------------------------------------------------------------
grpc_port() { echo $((BASE_PORT + $1)); }
metrics_port() { echo $((BASE_PORT + 100 + $1)); }

start_replica() { # slot
  local i=$1 env
  env=(TORCHWIRE_GRPC_ADDR="127.0.0.1:$(grpc_port "$i")" TORCHWIRE_METRICS_ADDR="127.0.0.1:$(metrics_port "$i")"
    TORCHWIRE_PRELOAD="$PRELOAD" TORCHWIRE_READY_AFTER_PRELOAD=true TORCHWIRE_SHUTDOWN_GRACE_SECS="$SHUTDOWN_GRACE"
    TORCHWIRE_CPU_ONLY=true TORCHWIRE_LOG_FORMAT=json TORCHWIRE_INTRA_OP_THREADS=1)
  if [ "$RUNNER" = podman ]; then
    local e=()
    for kv in "${env[@]}"; do e+=(-e "$kv"); done
    "${P[@]}" rm -f "tw-rollout-$i" >/dev/null 2>&1 || true
    "${P[@]}" run -d --name "tw-rollout-$i" "${ULIMITS[@]}" --read-only --tmpfs /tmp --user 10001:10001 --network host \
      --cap-drop ALL --security-opt no-new-privileges "${e[@]}" "$IMAGE" >/dev/null
  else
    rm -f "$OUT/replica-$i.rc"
    (
      env "${env[@]}" TORCHWIRE_MODEL_DIR=models target/release/torchwire serve >"$OUT/replica-$i.log" 2>&1 &
      echo $! >"$OUT/replica-$i.pid"
      wait $! && echo 0 >"$OUT/replica-$i.rc" || echo $? >"$OUT/replica-$i.rc"
    ) &
    sleep 0.1
  fi
}

signal_replica() { # slot signal
  if [ "$RUNNER" = podman ]; then
    "${P[@]}" kill --signal "$2" "tw-rollout-$1" >/dev/null 2>&1 || true
  else
    kill -s "$2" "$(cat "$OUT/replica-$1.pid")" 2>/dev/null || true
  fi
}

replica_running() { # slot
  if [ "$RUNNER" = podman ]; then
    [ "$("${P[@]}" inspect -f '{{.State.Running}}' "tw-rollout-$1" 2>/dev/null)" = true ]
  else
    kill -0 "$(cat "$OUT/replica-$1.pid")" 2>/dev/null
  fi
}

replica_exit_code() { # slot
  if [ "$RUNNER" = podman ]; then
    "${P[@]}" inspect -f '{{.State.ExitCode}}' "tw-rollout-$1"
  else
    sleep 0.2
    cat "$OUT/replica-$1.rc" 2>/dev/null || echo "?"
  fi
}

remove_replica() { # slot
  if [ "$RUNNER" = podman ]; then
    "${P[@]}" logs "tw-rollout-$1" >"$OUT/replica-$1.log" 2>&1 || true
    "${P[@]}" rm -f "tw-rollout-$1" >/dev/null 2>&1 || true
  else
    [ -f "$OUT/replica-$1.pid" ] && kill -s KILL "$(cat "$OUT/replica-$1.pid")" 2>/dev/null || true
  fi
}

wait_ready() { # slot: the startup probe, every PROBE_PERIOD seconds, up to 180 s
  local i=$1 n
  for n in $(seq 1 $((180 / PROBE_PERIOD))); do
    if "$GRPCURL" -plaintext -max-time 2 "127.0.0.1:$(grpc_port "$i")" grpc.health.v1.Health/Check 2>/dev/null |
      grep -q '"SERVING"'; then
      return 0
    fi
    replica_running "$i" || { log "replica $i exited while starting"; return 1; }
    sleep "$PROBE_PERIOD"
  done
  return 1
}

mark() { echo "$(date +%s.%N) $*" >>"$marks"; log "$*"; }

# ---- the balancer ----------------------------------------------------------------------------------------
lb_cmd() { # HAProxy runtime API command
  "$PY" -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b"\n"); print(s.makefile().read(), end="")' \
    "$OUT/haproxy.sock" "$1"
}

write_haproxy_cfg() {
  {
    cat <<EOF
# Generated by deploy/rollout/rollout.sh.
global
  maxconn 4096
  nbthread 1
  stats socket $OUT/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout check 2s
  # A request whose connection to a replica failed (closed listener, refused) goes to another.
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
frontend grpc
  bind 127.0.0.1:$LB_PORT proto h2
  default_backend torchwire
backend torchwire
  balance roundrobin
  # HAProxy 2.6 cannot send a gRPC health request (its check bodies stop at the first NUL byte of
  # the 5-byte gRPC frame), so it checks /readyz, which follows the same state as health "".
  # (check-proto h1 on a proto h2 server still checked over h2 here; http-check connect
  # proto h1 is what makes the check plain HTTP/1.1.)
  option httpchk
  http-check connect proto h1
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr host localhost
  http-check expect status 200
  default-server proto h2 check inter 1s fall 1 rise 1
EOF
    for i in 0 1 2 3 4 5; do
      echo "  server r$i 127.0.0.1:$(grpc_port "$i") port $(metrics_port "$i") disabled"
    done
  } >"$OUT/haproxy.cfg"
}

# ---- one run ---------------------------------------------------------------------------------------------
run_mode() { # noretry | retry
  local mode=$1 i
  marks=$OUT/$mode.marks
  : >"$marks"
  for i in 0 1 2 3 4 5; do remove_replica "$i"; done
  write_haproxy_cfg
  haproxy -c -q -f "$OUT/haproxy.cfg"
  haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy-$mode.log" 2>&1 &
  local lb_pid=$!
  sleep 0.5
  for i in 0 1 2; do start_replica "$i"; done
  for i in 0 1 2; do
    wait_ready "$i" || { log "replica $i never ready"; kill "$lb_pid"; return 1; }
    lb_cmd "set server torchwire/r$i state ready" >/dev/null
  done
  sleep 2
  mark "ready-3-replicas"
  local retry_flag=()
  [ "$mode" = retry ] && retry_flag=(--retry)
  "$PY" deploy/rollout/loadgen.py run --target "127.0.0.1:$LB_PORT" --rate "$RATE" --seconds "$SECONDS_TOTAL" \
    --out "$OUT/$mode.csv" "${retry_flag[@]}" >"$OUT/loadgen-$mode.log" 2>&1 &
  local load_pid=$!
  sleep "$STEADY"
  mark "rollout-start"
  local pids=()
  for i in 0 1 2; do
    local new=$((i + 3))
    mark "start r$new"
    start_replica "$new"
    wait_ready "$new" || { log "replica $new never ready"; break; }
    lb_cmd "set server torchwire/r$new state ready" >/dev/null
    mark "ready r$new (in the balancer)"
    mark "delete r$i"
    if [ "$ENDPOINTS" = 1 ]; then
      (
        sleep "$ENDPOINT_DELAY"
        lb_cmd "set server torchwire/r$i state maint" >/dev/null
        mark "r$i out of the balancer"
      ) &
      pids+=($!)
    fi
    (
      sleep "$PRESTOP"
      mark "SIGTERM r$i"
      signal_replica "$i" TERM
      local waited=0
      while replica_running "$i" && [ "$waited" -lt $(((GRACE - PRESTOP) * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
      done
      if replica_running "$i"; then
        mark "SIGKILL r$i (grace over)"
        signal_replica "$i" KILL
      fi
      mark "exit r$i code $(replica_exit_code "$i")"
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  mark "rollout-end"
  wait "$load_pid" || log "loadgen failed: $(tail -3 "$OUT/loadgen-$mode.log")"
  cat "$OUT/loadgen-$mode.log" >&2
  kill "$lb_pid" 2>/dev/null || true
  wait "$lb_pid" 2>/dev/null || true
  for i in 0 1 2 3 4 5; do remove_replica "$i"; done
  grep -h -o '"message":"[^"]*drain[^"]*"' "$OUT"/replica-[0-2].log 2>/dev/null | sort | uniq -c >&2 || true
  echo "== $mode ($RUNNER${IMAGE:+ $IMAGE}, $RATE req/s, preStop ${PRESTOP}s, endpoint removal $ENDPOINTS) marks:"
  awk -v t0="$(head -n1 "$marks" | cut -d' ' -f1)" '{ $1 = sprintf("%+7.2fs", $1 - t0); print }' "$marks"
  echo "== $mode report:"
  "$PY" deploy/rollout/loadgen.py report --records "$OUT/$mode.csv" --marks "$marks" | tee "$OUT/$mode.json"
}

for m in $modes; do
  run_mode "$m"
done

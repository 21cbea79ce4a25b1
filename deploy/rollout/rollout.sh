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
# What a node does that this one machine would otherwise get wrong (issue 18's p99 attempts; the
# figures are in deploy/README.md):
# - PRECREATE=1 (default): the new replicas' containers are created before the load starts and
#   only started at their turn. A node that has pulled the image creates a container in
#   milliseconds (overlayfs); podman's vfs driver copies all 690 MB of the image instead (2.5 s of
#   disk and CPU), which is not what a rollout costs. STORAGE=overlay uses podman's overlay driver
#   (a separate store under /var/lib/containers/overlay-store, the image copied in on first use)
#   instead; STORAGE=vfs (default) is the store scripts/image-check.sh builds into.
# - START_SHARES=64 (default; 0 = off): a replica starts with cgroup cpu.shares 64 (1/16 of the
#   default 1024) so its libtorch load and preload warm-up yield the CPU to the replicas that are
#   serving, and gets 1024 back (podman update) once ready, before it joins the balancer. (On a
#   real node the new pod has its own CPU request; here it shares 2 cores with the old ones.)
# - SLOWSTART (default 5s; 0 = off): HAProxy's slowstart, so a replica that joins the balancer
#   gets a share of requests that grows over that time instead of a third at once.
# - PIN=1 (default with 2 or more CPUs; 0 = off): the load generator and HAProxy on CPU 0 (in a
#   cluster the clients and the balancer are other machines), the replicas, podman and this
#   script on the other CPUs (the node). A neighbour hogging CPU 1 then hurts more: nothing
#   pinned can move away from it.
# Exits are watched through the container's pid (kill -0), not by running podman every 100 ms.
#
# Environment: PRESTOP_OVERRIDE and ENDPOINTS=0 (stress variants, below), RATE (1000/s),
# SECONDS_TOTAL (120), STEADY (30: seconds of load before the rollout), ENDPOINT_DELAY (1),
# LB_PORT (50300), BASE_PORT (50310: replica i serves gRPC on BASE_PORT+i, metrics on
# BASE_PORT+100+i), OUT (target/rollout), and the four above. Needs root for podman, haproxy
# (Debian; installed when missing), python3-venv. Takes about 2.5 minutes per mode; not part of
# make test.
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
PRECREATE=${PRECREATE:-1}
STORAGE=${STORAGE:-vfs}
START_SHARES=${START_SHARES:-64}
SLOWSTART=${SLOWSTART:-5s}
PIN=${PIN:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
# The same podman settings as scripts/image-check.sh (runc, explicit ulimits; see there).
PODMAN_OPTS=(--cgroup-manager cgroupfs --events-backend none --runtime runc)
VFS=(podman --storage-driver vfs "${PODMAN_OPTS[@]}")
case "$STORAGE" in
  vfs) P=("${VFS[@]}") ;;
  overlay) P=(podman --storage-driver overlay --root /var/lib/containers/overlay-store
    --runroot /run/containers/overlay-store "${PODMAN_OPTS[@]}") ;;
  *) echo "rollout: STORAGE is vfs or overlay, not $STORAGE" >&2; exit 2 ;;
esac
LB_PIN=() LOAD_PIN=() REPLICA_PIN=()
if [ "$PIN" = 1 ]; then
  # The client side (load generator, balancer) on CPU 0; everything of the "node" on CPU 1: the
  # replicas, and this script with what it runs (podman, conmon, probes), which inherit it.
  node_cpus=1-$(($(nproc) - 1))
  LB_PIN=(taskset -c 0) LOAD_PIN=(taskset -c 0) REPLICA_PIN=(--cpuset-cpus "$node_cpus")
  taskset -pc "$node_cpus" $$ >/dev/null
fi
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
    "${VFS[@]}" image exists torchwire:0.1.0-cpu && IMAGE=torchwire:0.1.0-cpu
  fi
  "${VFS[@]}" image exists "$IMAGE" || { log "no image $IMAGE (scripts/image-check.sh)"; exit 1; }
  if [ "$STORAGE" = overlay ]; then
    want=$("${VFS[@]}" image inspect -f '{{.Id}}' "$IMAGE")
    if [ "$("${P[@]}" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" != "$want" ]; then
      log "copying $IMAGE from the vfs store into the overlay store"
      "${P[@]}" pull -q "containers-storage:[vfs@/var/lib/containers/storage+/run/containers/storage]localhost/$IMAGE" >/dev/null
    fi
  fi
  log "replicas: podman ($STORAGE) $IMAGE"
else
  [ -x target/release/torchwire ] || cargo build --release --locked
  log "replicas: host binary target/release/torchwire"
fi

# ---- replicas ------------------------------------------------------------------------------------------
grpc_port() { echo $((BASE_PORT + $1)); }
metrics_port() { echo $((BASE_PORT + 100 + $1)); }

replica_env() { # slot -> REPLICA_ENV: deploy/k8s's configmap with loopback ports
  REPLICA_ENV=(TORCHWIRE_GRPC_ADDR="127.0.0.1:$(grpc_port "$1")" TORCHWIRE_METRICS_ADDR="127.0.0.1:$(metrics_port "$1")"
    TORCHWIRE_PRELOAD="$PRELOAD" TORCHWIRE_READY_AFTER_PRELOAD=true TORCHWIRE_SHUTDOWN_GRACE_SECS="$SHUTDOWN_GRACE"
    TORCHWIRE_CPU_ONLY=true TORCHWIRE_LOG_FORMAT=json TORCHWIRE_INTRA_OP_THREADS=1)
}

create_replica() { # slot: podman create (with vfs, the copy of the image); nothing for the host binary
  local i=$1 kv e=() shares=()
  [ "$RUNNER" = podman ] || return 0
  replica_env "$i"
  for kv in "${REPLICA_ENV[@]}"; do e+=(-e "$kv"); done
  [ "$START_SHARES" != 0 ] && shares=(--cpu-shares "$START_SHARES")
  "${P[@]}" rm -f "tw-rollout-$i" >/dev/null 2>&1 || true
  "${P[@]}" create --name "tw-rollout-$i" "${ULIMITS[@]}" --read-only --tmpfs /tmp --user 10001:10001 --network host \
    --cap-drop ALL --security-opt no-new-privileges "${shares[@]}" "${REPLICA_PIN[@]}" "${e[@]}" "$IMAGE" >/dev/null
}

start_replica() { # slot: starts the replica (creating its container first unless created ahead)
  local i=$1
  if [ "$RUNNER" = podman ]; then
    [ -f "$OUT/replica-$i.created" ] || create_replica "$i"
    rm -f "$OUT/replica-$i.created"
    "${P[@]}" start "tw-rollout-$i" >/dev/null
    "${P[@]}" inspect -f '{{.State.Pid}}' "tw-rollout-$i" >"$OUT/replica-$i.pid"
  else
    rm -f "$OUT/replica-$i.rc"
    replica_env "$i"
    (
      env "${REPLICA_ENV[@]}" TORCHWIRE_MODEL_DIR=models target/release/torchwire serve >"$OUT/replica-$i.log" 2>&1 &
      echo $! >"$OUT/replica-$i.pid"
      wait $! && echo 0 >"$OUT/replica-$i.rc" || echo $? >"$OUT/replica-$i.rc"
    ) &
    sleep 0.1
  fi
}

replica_ready() { # slot: full CPU weight back, now that it is warm (before it takes requests)
  if [ "$RUNNER" = podman ] && [ "$START_SHARES" != 0 ]; then
    "${P[@]}" update --cpu-shares 1024 "tw-rollout-$1" >/dev/null
  fi
}

signal_replica() { # slot signal
  if [ "$RUNNER" = podman ]; then
    "${P[@]}" kill --signal "$2" "tw-rollout-$1" >/dev/null 2>&1 || true
  else
    kill -s "$2" "$(cat "$OUT/replica-$1.pid")" 2>/dev/null || true
  fi
}

replica_running() { # slot: by pid (podman inspect costs ~30 ms of CPU a call, on the cores under load)
  kill -0 "$(cat "$OUT/replica-$1.pid")" 2>/dev/null
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
    rm -f "$OUT/replica-$1.created" "$OUT/replica-$1.pid"
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
  default-server proto h2 check inter 1s fall 1 rise 1$([ "$SLOWSTART" != 0 ] && echo " slowstart $SLOWSTART")
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
  "${LB_PIN[@]}" haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy-$mode.log" 2>&1 &
  local lb_pid=$!
  sleep 0.5
  for i in 0 1 2; do start_replica "$i"; done
  for i in 0 1 2; do
    wait_ready "$i" || { log "replica $i never ready"; kill "$lb_pid"; return 1; }
    replica_ready "$i"
    lb_cmd "set server torchwire/r$i state ready" >/dev/null
  done
  if [ "$RUNNER" = podman ] && [ "$PRECREATE" = 1 ]; then
    for i in 3 4 5; do create_replica "$i" && touch "$OUT/replica-$i.created"; done
    sync # the copies' dirty pages written back now, not under the measured load
  fi
  sleep 2
  load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
  mark "ready-3-replicas"
  local retry_flag=()
  [ "$mode" = retry ] && retry_flag=(--retry)
  "${LOAD_PIN[@]}" "$PY" deploy/rollout/loadgen.py run --target "127.0.0.1:$LB_PORT" --rate "$RATE" --seconds "$SECONDS_TOTAL" \
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
    replica_ready "$new"
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
  echo "== $mode ($RUNNER${IMAGE:+ $IMAGE} $STORAGE, $RATE req/s, preStop ${PRESTOP}s, endpoint removal $ENDPOINTS," \
    "created ahead $PRECREATE, start shares $START_SHARES, slowstart $SLOWSTART, pinned $PIN)" \
    "load average at start $load_at_start, at end $(cut -d' ' -f1-3 /proc/loadavg); marks:"
  awk -v t0="$(head -n1 "$marks" | cut -d' ' -f1)" '{ $1 = sprintf("%+7.2fs", $1 - t0); print }' "$marks"
  echo "== $mode report:"
  "$PY" deploy/rollout/loadgen.py report --records "$OUT/$mode.csv" --marks "$marks" | tee "$OUT/$mode.json"
}

for m in $modes; do
  run_mode "$m"
done

#!/usr/bin/env bash
# Owns `make image`: builds the container image of deploy/docker/Dockerfile on a machine that has
# no Docker engine and cannot pull base images, runs it, and smoke-tests it from the host.
#
#   scripts/image-check.sh [--cpu] [--no-run] [--keep]
#
# 1. tools: Debian's buildah, podman, runc and debootstrap (installed with apt-get when missing; root).
# 2. base: the runtime stage's FROM image (debian:bookworm-slim) made with debootstrap
#    (--variant=minbase, then slimmed like the official image: no docs, man pages, locales, apt
#    lists), imported with buildah and tagged under the name the Dockerfile uses. Made once;
#    BASE_REBUILD=1 makes it again. The mirror is $MIRROR, else the first Debian URI in this
#    machine's own apt sources.
# 3. artifacts: the release binary (cargo build --release --locked), the bundled models
#    (models/build.py) and the libraries (deploy/docker/collect-libs.sh, --cpu-only with --cpu),
#    staged in target/image/ — the build context of the Dockerfile's `prebuilt` target, which
#    takes host-built artifacts because the builder stage's Rust 1.95 image cannot be made here.
# 4. image: `buildah build --isolation chroot --storage-driver vfs --target prebuilt`, tagged
#    torchwire:0.1.0 (torchwire:0.1.0-cpu with --cpu); prints `buildah images` and the layers.
# 5. run (unless --no-run): `podman run` of the image as its own user (uid 10001), root file
#    system read-only (--read-only, a tmpfs on /tmp as the manifests give an emptyDir), models
#    from the image, host network on GRPC_PORT / METRICS_PORT (default 50151 / 9564); from the
#    host: health SERVING, a Predict (breast_cancer) and a Sentiment with the expected answers,
#    /metrics scraped, then SIGTERM -> exit 0 within the grace period. --keep leaves it running.
#
# Takes several minutes (the image holds ~3.3 GB of libtorch/CUDA libraries and vfs copies every
# layer), so it is not part of `make test`. Needs root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cpu=0 run=1 keep=0
for a in "$@"; do
  case "$a" in
    --cpu) cpu=1 ;;
    --no-run) run=0 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--cpu] [--no-run] [--keep]" >&2; exit 2 ;;
  esac
done
tag=${TAG:-torchwire:0.1.0}
[ "$cpu" = 1 ] && tag=${TAG:-torchwire:0.1.0-cpu}
base=debian:bookworm-slim
grpc_port=${GRPC_PORT:-50151}
metrics_port=${METRICS_PORT:-9564}
grace=${GRACE_SECS:-30}
stage=$root/target/image
B=(buildah --storage-driver vfs)
# podman with runc: Debian's crun refuses a host whose cgroups are in hybrid (v1 + v2) mode, runc
# runs on any. The ulimits are explicit because podman's defaults raise nofile / nproc above the
# hard limits, which a sandboxed root (like this machine's) may not do.
P=(podman --storage-driver vfs --cgroup-manager cgroupfs --events-backend none --runtime runc)
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
step() { echo "image-check: $*" >&2; }
die() { echo "image-check: FAIL: $*" >&2; exit 1; }

# ---- 1. tools ----------------------------------------------------------------------------------
missing=()
for t in buildah podman runc debootstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "install the Debian packages ${missing[*]} (needs root)"
  step "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- 2. base image -----------------------------------------------------------------------------
# The first `URIs:` (deb822) or `deb URL` line of the machine's sources that is not the security
# archive: debootstrap needs a plain mirror, and this script names none itself.
mirror_from_apt() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
  done | head -n1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $0 ~ /bookworm/ && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f"
  done | head -n1
}

if [ "${BASE_REBUILD:-0}" = 1 ] || ! "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  mirror=${MIRROR:-$(mirror_from_apt | head -n1)}
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list(.d); set MIRROR"
  rootfs=$(mktemp -d /var/tmp/torchwire-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  step "debootstrap --variant=minbase bookworm (mirror from the apt sources)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  # What the official slim image leaves out, and keeps out of later installs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  ctr=$("${B[@]}" from scratch)
  mnt=$("${B[@]}" mount "$ctr")
  cp -a "$rootfs/." "$mnt/"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --os linux --arch amd64 --cmd bash --created-by "debootstrap --variant=minbase bookworm, slimmed (scripts/image-check.sh)" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${B[@]}" commit -q --rm "$ctr" "docker.io/library/$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  trap - EXIT
  step "base image $base: $("${B[@]}" images --format '{{.Size}}' "$base")"
else
  step "base image $base already built (BASE_REBUILD=1 makes it again)"
fi

# ---- 3. artifacts --------------------------------------------------------------------------------
step "cargo build --release --locked"
cargo build --release --locked
# Idempotent: builds what is missing, moves an old flat build into version 1, else says
# "up to date" in a few seconds.
step "building the bundled models (models/build.py)"
.venv/bin/python models/build.py
step "staging the binary, libraries and models in $stage"
rm -rf "$stage"
mkdir -p "$stage/models"
cp target/release/torchwire "$stage/torchwire"
# Each model folder with its version folders (models/<name>/<N>/); the `*` glob skips dot-entries,
# so a version still being written (.<N>.tmp) stays out.
for d in models/*/; do
  if [ -f "$d/model.toml" ]; then
    n=$(basename "$d")
    mkdir -p "$stage/models/$n"
    cp -r "$d"* "$stage/models/$n/"
  fi
done
if [ "$cpu" = 1 ]; then
  bash deploy/docker/collect-libs.sh --cpu-only "$stage/torchwire" "$stage/lib"
else
  bash deploy/docker/collect-libs.sh "$stage/torchwire" "$stage/lib"
fi

# ---- 4. image ------------------------------------------------------------------------------------
step "buildah build --target prebuilt -t $tag"
# --layers: one layer per instruction, as docker makes them (and cached between runs).
"${B[@]}" build --isolation chroot --layers --pull=never --target prebuilt \
  -f "$root/deploy/docker/Dockerfile" -t "$tag" "$stage"
rm -rf "$stage"
"${B[@]}" images "$base"
"${B[@]}" images --noheading "$tag"
step "layers of $tag (buildah inspect):"
"${B[@]}" inspect --type image "$tag" |
  python3 -c 'import json,sys; i=json.load(sys.stdin); m=i["OCIv1"]
print("  config: user", m["config"].get("User"), "entrypoint", m["config"].get("Entrypoint"), "cmd", m["config"].get("Cmd"))
for h, l in zip([h for h in m["history"] if not h.get("empty_layer")], i["Manifest"] and json.loads(i["Manifest"])["layers"]):
    print("  %8.1f MB  %s" % (l["size"] / 1e6, h.get("created_by", "")[:110]))'

[ "$run" = 1 ] || exit 0

# ---- 5. run and smoke-test -----------------------------------------------------------------------
name=torchwire-image-check
"${P[@]}" rm -f "$name" >/dev/null 2>&1 || true
step "podman run --read-only --user 10001:10001 --network host $tag (gRPC :$grpc_port, metrics :$metrics_port)"
"${P[@]}" run -d --name "$name" "${ULIMITS[@]}" --read-only --tmpfs /tmp --user 10001:10001 --network host \
  --cap-drop ALL --security-opt no-new-privileges --stop-timeout "$((grace + 20))" \
  -e TORCHWIRE_GRPC_ADDR="127.0.0.1:$grpc_port" -e TORCHWIRE_METRICS_ADDR="127.0.0.1:$metrics_port" \
  -e TORCHWIRE_SHUTDOWN_GRACE_SECS="$grace" -e TORCHWIRE_CPU_ONLY=true \
  -e TORCHWIRE_PRELOAD=breast_cancer -e TORCHWIRE_READY_AFTER_PRELOAD=true \
  "$tag" >/dev/null
cleanup() { [ "$keep" = 1 ] || "${P[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
G=("$root/.venv/grpcurl" -plaintext)
addr=127.0.0.1:$grpc_port

ok=0
for _ in $(seq 1 120); do
  if "${G[@]}" "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then ok=1; break; fi
  [ "$("${P[@]}" inspect -f '{{.State.Running}}' "$name")" = true ] || break
  sleep 1
done
[ "$ok" = 1 ] || { "${P[@]}" logs "$name" | tail -20 >&2; die "health never SERVING"; }
step "health: SERVING"
step "inside: $("${P[@]}" exec "$name" sh -c 'echo "uid=$(id -u) gid=$(id -g)"; touch /x 2>&1 | head -c 80; echo; ls /models | tr "\n" " "')"

# Predict: Wisconsin breast cancer samples 0 (malignant) and 19 (benign), from scikit-learn's
# copy of the data set in the project venv; the answer must name both labels right.
req=$(.venv/bin/python -c '
import json
from sklearn.datasets import load_breast_cancer
d = load_breast_cancer()
rows = [{"features": {n.replace(" ", "_"): float(v) for n, v in zip(d.feature_names, d.data[i])}} for i in (0, 19)]
print(json.dumps({"model": "breast_cancer", "rows": rows}))')
out=$("${G[@]}" -d "$req" "$addr" torchwire.v1.Inference/Predict) || die "Predict failed: $out"
labels=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(" ".join(p["label"] for p in r["predictions"]), r["device"])' <<<"$out")
step "Predict breast_cancer [sample 0, sample 19] -> $labels"
[ "$labels" = "malignant benign cpu" ] || die "expected: malignant benign cpu"

out=$("${G[@]}" -d '{"texts":["I loved this film, a wonderful and moving story.","Terrible. A boring, badly acted waste of two hours."]}' \
  "$addr" torchwire.v1.Inference/Sentiment) || die "Sentiment failed: $out"
labels=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(" ".join("%s(%.3f)" % (x["label"], x["score"]) for x in r["results"]), r["model"])' <<<"$out")
step "Sentiment [praise, complaint] -> $labels"
case "$labels" in
  positive*" "negative*) ;;
  *) die "expected positive, then negative" ;;
esac

metrics=$(curl -sf "http://127.0.0.1:$metrics_port/metrics") || die "/metrics not scraped"
step "/metrics: $(grep -c '^torchwire_' <<<"$metrics") torchwire_ samples, e.g.:"
grep -E '^torchwire_requests_total' <<<"$metrics" | head -3 >&2

step "SIGTERM"
t0=$(date +%s.%N)
"${P[@]}" kill --signal TERM "$name" >/dev/null
code=$("${P[@]}" wait "$name")
t1=$(date +%s.%N)
secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
step "exit code $code after ${secs}s (grace ${grace}s)"
"${P[@]}" logs "$name" 2>&1 | tail -4
[ "$code" = 0 ] || die "exit code $code"
step "PASS: $tag"

#!/usr/bin/env bash
# Puts the shared libraries a torchwire binary needs at run time, out of the project venv
# (.venv: the torch==2.13.0 wheel and the nvidia-* wheels it depends on), into ONE flat folder,
# named by the soname the loader asks for. The runtime image points LD_LIBRARY_PATH at that
# folder (the binary's rpath names the builder's venv, which the runtime image does not have).
#
#   collect-libs.sh [--hardlink] [--cpu-only] BINARY DEST
#
# What goes in: every library `ldd BINARY` resolves inside the venv's site-packages (libtorch_cpu,
# libc10), plus the libraries opened with dlopen() only on a GPU (so ldd cannot see them), with
# their own dependencies: libtorch_cuda (torchwire loads it when an NVIDIA driver is present) and
# the CUDA libraries it links, libtorch_cuda_linalg (cuSOLVER), libcaffe2_nvrtc,
# libnvrtc-builtins, cuDNN's sub-libraries.
# System libraries (libc, libstdc++, libgcc_s) come from the runtime image's Debian; the NVIDIA
# driver's libcuda.so.1 comes from the host at run time (NVIDIA container toolkit). Fails when
# any other library does not resolve.
#
# --hardlink links instead of copying (same file system; tests/deploy uses it to check that the
# flat folder alone is enough, without copying gigabytes).
# --cpu-only leaves out what only a GPU opens (libtorch_cuda and the CUDA libraries behind it):
# the CPU image variant (about 0.45 GB of libraries instead of 3.3 GB). libtorch_cpu itself still
# links libcudart and libcupti (small), so those stay. On a GPU node such an image serves on CPU
# and logs that CUDA support did not load.
set -euo pipefail
mode=copy
cpu_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hardlink) mode=hardlink; shift ;;
    --cpu-only) cpu_only=1; shift ;;
    *) break ;;
  esac
done
if [ $# -ne 2 ]; then
  echo "usage: $0 [--hardlink] [--cpu-only] BINARY DEST" >&2
  exit 2
fi
bin=$1
dest=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
torch_lib=$(readlink -f "${TORCH_LIB:-$root/.venv/libtorch/lib}")
site=$(dirname "$(dirname "$torch_lib")")
[ -f "$torch_lib/libtorch_cpu.so" ] || { echo "collect-libs: no libtorch at $torch_lib (run scripts/setup.sh)" >&2; exit 1; }

# Loaded with dlopen() on a GPU only. Globs that match nothing (a CPU-only torch) drop out.
shopt -s nullglob
extras=(
  "$torch_lib"/libtorch_cuda.so
  "$torch_lib"/libtorch_cuda_linalg.so
  "$torch_lib"/libcaffe2_nvrtc.so
  "$site"/nvidia/cudnn/lib/libcudnn_*.so.9
  "$site"/nvidia/cu13/lib/libnvrtc-builtins.so.*
)
shopt -u nullglob
[ "$cpu_only" = 0 ] || extras=()

# "soname path" lines for everything ldd resolves under site-packages.
resolve() {
  local out missing
  out=$(ldd "$1")
  missing=$(grep 'not found' <<<"$out" | grep -v -E '^\s*libcuda\.so\.1 ' || true)
  if [ -n "$missing" ]; then
    echo "collect-libs: unresolved libraries of $1:" >&2
    echo "$missing" >&2
    exit 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' <<<"$out" | while read -r name path; do
    path=$(readlink -f "$path")
    case "$path" in "$site"/*) echo "$name $path" ;; esac
  done
}

list=$({
  resolve "$bin"
  for e in "${extras[@]}"; do
    echo "$(basename "$e") $(readlink -f "$e")"
    resolve "$e"
  done
} | sort -u)

mkdir -p "$dest"
count=0
while read -r name path; do
  case "$mode" in
    copy) cp -L "$path" "$dest/$name" ;;
    hardlink) ln -f "$path" "$dest/$name" ;;
  esac
  count=$((count + 1))
done <<<"$list"
echo "collect-libs: $count libraries in $dest ($(du -shL "$dest" | cut -f1))" >&2

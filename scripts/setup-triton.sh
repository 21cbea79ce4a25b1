#!/usr/bin/env bash
# Owns .venv-triton: tritonclient[grpc,http] 2.51.0 (it pins protobuf < 7, so it lives apart from the
# main venv) and pytest, for the KServe v2 client tests in tests/kserve/, plus what the wheel's
# perf_analyzer links (Debian's libb64-0d, the nvidia-cuda-runtime-cu12 wheel's libcudart), so
# tests/kserve runs perf_analyzer too, and selenium (WebDriver client for the status page's
# test in headless Chromium, tests/kserve/test_ui.py). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-triton"
stamp="$venv/.torchwire-triton-v3"
[ -f "$stamp" ] && exit 0
echo "setup-triton: creating $venv (tritonclient[grpc,http], pytest, selenium; first run only)" >&2
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q 'tritonclient[grpc,http]==2.51.0' 'pytest>=8,<10' 'numpy<3' \
  'selenium>=4.20,<5'
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
  else
    echo "setup-triton: perf_analyzer needs Debian's libb64-0d; install it as root" >&2
  fi
fi
"$venv/bin/pip" install --disable-pip-version-check -q 'nvidia-cuda-runtime-cu12==12.*'
touch "$stamp"

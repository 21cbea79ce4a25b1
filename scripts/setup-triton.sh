#!/usr/bin/env bash
# Owns .venv-triton: tritonclient[grpc] 2.51.0 (it pins protobuf < 7, so it lives apart from the
# main venv) and pytest, for the KServe v2 client tests in tests/kserve/. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-triton"
stamp="$venv/.torchwire-triton-v1"
[ -f "$stamp" ] && exit 0
echo "setup-triton: creating $venv (tritonclient[grpc], pytest; first run only)" >&2
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q 'tritonclient[grpc]==2.51.0' 'pytest>=8,<10' 'numpy<3'
touch "$stamp"

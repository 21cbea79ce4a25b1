#!/usr/bin/env bash
# Owns the Debian packages the test suite uses: `prometheus` (for promtool and a real
# Prometheus server in the observability tests). Idempotent: does nothing when promtool is
# already there. Needs root (CI and the dev machines run as root); otherwise says what to install.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-system: install Debian's 'prometheus' package (promtool, prometheus) for the tests" >&2
  exit 1
fi
echo "setup-system: installing Debian prometheus (promtool + server, for tests)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system Prometheus; the tests run their own on loopback ports.
if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi

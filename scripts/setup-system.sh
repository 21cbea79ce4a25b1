#!/usr/bin/env bash
# Owns the Debian packages the build and the test suite use: `prometheus` (for promtool and a
# real Prometheus server in the observability tests), `redis-server` (a real Redis for the
# response cache's shared-tier tests), the DejaVu fonts `torchwire-bench chart` draws its text
# with (read at run time; no font library is linked), and for `make bench` h2load
# (`nghttp2-client`, the suite's second load generator), `wrk` (its HTTP/1.1 client for
# TorchServe's REST API) and `perf` (`linux-perf`, CPU per
# request), and for the status page's browser test Debian's `chromium` and `chromium-driver`
# (headless, driven through WebDriver).
# Idempotent: installs only what is missing, and does nothing when everything is there. Needs
# root (CI and the dev machines run as root); otherwise says what to install.
set -euo pipefail
missing=()
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  missing+=(prometheus)
fi
if ! command -v redis-server >/dev/null; then
  missing+=(redis-server)
fi
for pkg in fonts-dejavu-core nghttp2-client wrk linux-perf chromium chromium-driver; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-system: install these Debian packages: ${missing[*]}" >&2
  exit 1
fi
echo "setup-system: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The prometheus package may start a system Prometheus; the tests run their own on loopback ports.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v service >/dev/null; then
  service prometheus stop >/dev/null 2>&1 || true
fi
# Likewise the redis-server package's own server: the tests start theirs on free ports.
if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v service >/dev/null; then
  service redis-server stop >/dev/null 2>&1 || true
fi

#!/usr/bin/env bash
# Owns the Rust tools the lint step uses beyond rustup's own (fmt, clippy): cargo-machete 0.9.2,
# which finds dependencies no source file uses, installed from crates.io into .cargo-tools/
# (project-local, not ~/.cargo/bin). Called by `make lint`; idempotent: a second run finds the
# pinned version in place and does nothing (the first one compiles it, about two minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.cargo-tools"
machete_version=0.9.2

if [ "$("$tools/bin/cargo-machete" --version 2>/dev/null)" != "$machete_version" ]; then
  echo "setup-tools: installing cargo-machete $machete_version into $tools (first run only)" >&2
  cargo install --locked --quiet --root "$tools" --version "$machete_version" cargo-machete
fi

"""Shared by the tests in tests/deploy (deploy/ checked offline): paths, the torchwire binary
under test, subprocess and HTTP helpers, a `torchwire serve` process wrapper, and look-ups in
rendered manifests. Holds no tests; the test modules import from it by name.

The tests are run by scripts/deploy-check.sh (`.venv-tools/bin/python -m pytest -q tests/deploy`),
which installs the tools. Needs: TORCHWIRE_BIN (default target/debug/torchwire), the project venv
(.venv: libtorch, grpcurl; scripts/setup.sh), promtool and prometheus (scripts/setup-system.sh),
kubectl (its built-in kustomize renders the overlays). Scratch files go to target/deploy-check/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORK = ROOT / "target" / "deploy-check"
TOOLS = Path(sys.executable).parent
BIN = Path(os.environ.get("TORCHWIRE_BIN", ROOT / "target" / "debug" / "torchwire"))
if not BIN.is_absolute():
    BIN = ROOT / BIN
GRPCURL = ROOT / ".venv" / "grpcurl"
TINY_ROW = {"age": 50, "bmi": 27, "glucose": 100, "systolic_bp": 120}


def run(cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, check, timeout: float = 60, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text() if log else ''}")
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{log.read_text()[-4000:] if log else ''}")


def clean_env(**extra) -> dict:
    """The environment without TORCHWIRE_* settings from the caller (they would override flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHWIRE_") and k != "RUST_LOG"}
    env.update(extra)
    return env


def need(path: Path, hint: str):
    if not path.exists():
        pytest.fail(f"{path} is missing: {hint}")


def grpcurl(addr: str, method: str, body: dict, *flags: str) -> subprocess.CompletedProcess:
    need(GRPCURL, "run scripts/setup.sh (it links grpcurl into .venv)")
    return run([GRPCURL, "-plaintext", *flags, "-d", json.dumps(body), addr, method], timeout=60)


class Server:
    """A `torchwire serve` process on loopback ports, stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], env: dict, binary: Path = BIN):
        need(binary, "build it first (cargo build --locked) or set TORCHWIRE_BIN")
        WORK.mkdir(parents=True, exist_ok=True)
        self.log = WORK / f"{name}.log"
        self.proc = subprocess.Popen(
            [str(binary), "serve", *args], cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )

    def wait_serving(self, grpc_addr: str, timeout: float = 90):
        def serving():
            r = grpcurl(grpc_addr, "grpc.health.v1.Health/Check", {"service": ""})
            return r.returncode == 0 and '"SERVING"' in r.stdout

        wait_for("gRPC health SERVING", serving, timeout, self.proc, self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in kinds(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def parse_cpu(q) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)

"""Starts and stops the real torchwire binary for the tests in this folder (TORCHWIRE_BIN, else
target/debug/torchwire): a free loopback port, CPU only, no metrics listener; ready once
`GET /v2/health/live` answers 200 on the port (gRPC and HTTP share it)."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TORCHWIRE_BIN", str(ROOT / "target" / "debug" / "torchwire"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: Path, *flags: str):
    """Serves `model_dir` (plus `flags`); returns (process, "127.0.0.1:<port>") once it is live."""
    port = free_port()
    proc = subprocess.Popen(
        [BIN, "serve", "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", "off", "--cpu-only",
         "--model-dir", str(model_dir), "--log-level", "warn", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/health/live", timeout=5) as r:
                if r.status == 200:
                    return proc, addr
        except OSError:
            pass
        assert proc.poll() is None, "torchwire exited"
        assert time.time() < deadline, "torchwire did not start"
        time.sleep(0.05)


def stop(proc) -> None:
    """SIGTERM, and the server must drain and exit 0."""
    proc.terminate()
    assert proc.wait(timeout=30) == 0

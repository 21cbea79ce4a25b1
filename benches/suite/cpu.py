"""Server CPU per request (issue 15): the server pinned to one core, h2load (Debian `nghttp2-client`)
on the other sending a fixed number of unary gRPC calls with a hand-encoded frame, one at a time, and
`perf stat -e task-clock,context-switches -p <server pid>` around exactly those calls. Prints CPU
microseconds and context switches per request for each server, measured in interleaved rounds
(A B A B ...) so a drifting host slows both alike.

    .venv/bin/python -m benches.suite.cpu [--n 20000] [--rounds 3] [--bin target/release/torchwire]
        [--extra=--inline-max-us=0] [--label NAME] [--rpc predict|sentiment]

Needs `perf` (Debian `linux-perf`), `h2load` and taskset; run as a user allowed to perf the server.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import wire
from .plan import CLIENT_CPU, ROOT, SERVER_CPU, SHORT_TEXT, TAB_MODEL, TEXT_MODEL

HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_frame(body: bytes) -> bytes:
    """The length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(body)) + body


def model_input(model: str) -> tuple[str, int]:
    text = (ROOT / "models" / model / "model.toml").read_text()
    name = re.search(r'\[\[inputs\]\]\s*name\s*=\s*"([^"]+)"', text)
    shape = re.search(r"shape\s*=\s*\[\s*-1\s*,\s*(\d+)\s*\]", text)
    return (name.group(1) if name else "input"), int(shape.group(1)) if shape else 1


def request(rpc: str) -> tuple[str, bytes]:
    """(path, protobuf body) of the request every call sends."""
    if rpc == "sentiment":
        return "/torchwire.v1.Inference/Sentiment", wire.tw_sentiment(TEXT_MODEL, SHORT_TEXT)
    name, features = model_input(TAB_MODEL)
    return "/torchwire.v1.Inference/Predict", wire.tw_predict(TAB_MODEL, name, features)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, path: str, body: bytes) -> subprocess.Popen:
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if wire.unary(port, path, body, timeout=30).ok or "floor" in " ".join(cmd):
                return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit(f"{cmd[0]} did not answer on port {port}")


def h2load(port: int, path: str, frame_file: Path, n: int) -> dict:
    out = subprocess.run(["taskset", "-c", CLIENT_CPU, "h2load", "-n", str(n), "-c", "1", "-m", "1",
                          "-d", str(frame_file), *HEADERS, f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+([\d.]+)(us|ms)\s+([\d.]+)(us|ms)\s+([\d.]+)(us|ms)", out)
    to_us = lambda v, u: float(v) * (1000 if u == "ms" else 1)  # noqa: E731
    return {"done": int(done.group(1)), "ok": int(done.group(2)), "rps": float(rps.group(1)),
            "mean_us": to_us(mean.group(5), mean.group(6)) if mean else None}


def measure(pid: int, port: int, path: str, frame_file: Path, n: int) -> dict:
    """perf stat on the server for exactly the h2load run."""
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        perf = subprocess.Popen(["perf", "stat", "-e", "task-clock,context-switches", "-x", ",", "-o", out.name,
                                 "-p", str(pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches
        load = h2load(port, path, frame_file, n)
        perf.send_signal(2)
        perf.wait()
        text = Path(out.name).read_text()
    clock = float(re.search(r"^([\d.]+),msec,task-clock", text, re.M).group(1))
    cs = float(re.search(r"^(\d+),,context-switches", text, re.M).group(1))
    # The 0.3 s before h2load starts and the moment after it ends are idle for the server.
    return {"cpu_us_per_req": clock * 1000 / load["done"], "cs_per_req": cs / load["done"], **load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="requests per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each server once per round)")
    ap.add_argument("--rpc", default="predict", choices=["predict", "sentiment"])
    ap.add_argument("--bin", action="append", help="torchwire binary (repeat to compare builds)")
    ap.add_argument("--extra", action="append", default=[], help="extra server flags, for every torchwire")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    path, body = request(a.rpc)
    bins = a.bin or [str(ROOT / "target/release/torchwire")]
    frame_file = Path(tempfile.mkstemp(suffix=".grpc")[1])
    frame_file.write_bytes(grpc_frame(body))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for b in bins:
            port = free_port()
            cmd = [b, "serve", "--model-dir", str(ROOT / "models"), "--grpc-addr", f"127.0.0.1:{port}",
                   "--metrics-addr", "off", "--cpu-only", "--intra-op-threads", "1", "--log-level", "warn", *a.extra]
            servers[b] = (start(cmd, port, path, body), port)
        if not a.no_floor and a.rpc == "predict":
            port = free_port()
            bench = ROOT / "target/release/torchwire-bench"
            servers["floor"] = (start([str(bench), "floor", "--grpc-addr", f"127.0.0.1:{port}"], port, path, body), port)
        for p, port in servers.values():  # warm-up, each
            h2load(port, path, frame_file, 2000)
        results: dict[str, list[dict]] = {k: [] for k in servers}
        for r in range(a.rounds):
            for k, (p, port) in servers.items():
                m = measure(p.pid, port, path, frame_file, a.n)
                results[k].append(m)
                print(f"round {r + 1} {k}: {m['cpu_us_per_req']:.1f} us CPU/req, {m['cs_per_req']:.2f} cs/req, "
                      f"{m['rps']:.0f} req/s, mean {m['mean_us']} us, {m['ok']}/{m['done']} ok", flush=True)
        for k, ms in results.items():
            cpu = [m["cpu_us_per_req"] for m in ms]
            cs = [m["cs_per_req"] for m in ms]
            print(f"{k}: median {statistics.median(cpu):.1f} us CPU/req (min {min(cpu):.1f}, max {max(cpu):.1f}), "
                  f"{statistics.median(cs):.2f} context switches/req")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait()
        os.unlink(frame_file)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""torchwire benchmark suite (`make bench`, issue #8): torchwire side by side with its limits and peers.

Limits: the raw libtorch forward pass in-process (`torchwire bench-raw`) and a bare tonic server that
answers constants (`torchwire bench-floor`). Peers (set up by the shared `peers/setup.sh`, as their own
documentation recommends): a Python grpcio + torch server and TorchServe 0.12. Every server is pinned to
core 0 and the load generator (`torchwire bench`) to core 1; every torch runs one intra-op thread.

Writes benches/results/<date>.json (machine, commands, every repetition, medians, targets, chart data),
benches/results/<date>.png (`torchwire bench-chart`), and the region of BENCHMARKS.md between
`<!-- suite:begin -->` and `<!-- suite:end -->`. `--quick` and `--only` runs write
benches/results/<date>-quick.{json,png,md} instead and leave BENCHMARKS.md alone.

Standard library only. Every server it starts runs in its own process group and is killed at exit.

    .venv/bin/python benches/suite.py                 # the full run, about 10 minutes
    .venv/bin/python benches/suite.py --quick         # 1 repetition of 1 s per point
    .venv/bin/python benches/suite.py --quick --only torchwire,floor --scenarios tab-c8
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = "0", "1"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
SHORT_TEXT = "The service was quick and the food was really good."  # `torchwire bench`'s default text
# Review-like texts of 118-126 tokens each (special tokens included) for the long-text scenario;
# kept under 128 so the peers, which truncate at 128, see the same tokens as torchwire.
LONG_TEXTS = [
    "We booked the restaurant for a family birthday after reading several glowing reviews, and the evening "
    "started well: the host found our table quickly, the room was warm and quiet, and the waiter explained the "
    "seasonal menu with real enthusiasm. Sadly the kitchen could not keep up. Our starters arrived after forty "
    "minutes, the soup was lukewarm, the fish was overcooked and dry, and the dessert we had ordered in advance "
    "was simply forgotten. The manager apologised and took the wine off the bill, which was kind, but honestly we "
    "will not be going back there again, not even for a quick lunch.",
    "I have flown with this airline for years and this trip reminded me exactly why I keep choosing them. "
    "Check-in took five minutes, the gate staff boarded families first without any fuss, and the crew greeted "
    "everyone by name. The seat was comfortable enough for a six hour flight, the entertainment system had plenty "
    "of recent films, and the meal was hot and surprisingly tasty. We landed twenty minutes early, my bag was "
    "among the first on the belt, and a friendly agent at the desk helped me rebook my connection in minutes. "
    "Excellent service from start to finish, thank you so much.",
    "This film has a wonderful cast and a beautiful score, yet it never quite decides what story it wants to "
    "tell. The first hour moves slowly through a family reunion in a snowy mountain town, with long scenes of "
    "dinners and arguments that go nowhere. Then, without warning, it turns into a thriller about a missing "
    "brother, and the tone changes so abruptly that I laughed at moments meant to be tense. The lead actress "
    "does her best with a thin script and the photography is often stunning, but by the end I felt tired rather "
    "than moved, and I would not watch it again.",
    "The hotel room was spotless and larger than the photos suggested, with a comfortable bed, blackout curtains "
    "and a quiet air conditioner, so we slept well every night. Breakfast offered fresh fruit, warm pastries and "
    "good coffee, and the staff at reception were patient with our many questions about trains and museums. The "
    "only real problem was the noise from the bar downstairs on the weekend, which lasted until two in the "
    "morning. Even so, the location near the old town and the kind service made it a great base for our week "
    "away, and we would happily book it again next year.",
]
TAB_MODEL, TEXT_MODEL = "heart_disease", "sentiment"
PEER_TAB, PEER_TEXT = "tabular", "sentiment"  # model names inside both peers
SERVER_LABEL = {
    "torchwire": "torchwire",
    "floor": "floor (bare tonic, constant answer)",
    "python": "Python grpcio + torch",
    "torchserve": "TorchServe 0.12",
    "torchserve-batch": "TorchServe 0.12, batching config",
}
GROUPS = ["raw", "floor", "torchwire", "python", "torchserve", "torchserve-batch"]


@dataclass
class Scenario:
    key: str
    group: str
    rpc: str
    concurrency: int
    rows: int = 1
    long: bool = False


SCENARIOS = [
    Scenario("tab-c1", "tabular", "predict", 1),
    Scenario("tab-c8", "tabular", "predict", 8),
    Scenario("tab-c64", "tabular", "predict", 64),
    Scenario("tab32-c8", "tabular32", "predict", 8, rows=32),
    Scenario("sent-c1", "sentiment", "sentiment", 1),
    Scenario("sent-c4", "sentiment", "sentiment", 4),
    Scenario("sent-c16", "sentiment", "sentiment", 16),
    Scenario("sent-c64", "sentiment", "sentiment", 64),
    Scenario("sent128-c4", "sentiment128", "sentiment", 4, long=True),
]
GROUP_TITLE = {
    "tabular": f"Tabular `{TAB_MODEL}`, 1 row per request",
    "tabular32": f"Tabular `{TAB_MODEL}`, 32 rows per request",
    "sentiment": f"Sentiment, one ~12-token sentence per request (\"{SHORT_TEXT}\")",
    "sentiment128": "Sentiment, one ~120-token review per request (4 texts in rotation)",
}
SERVER_SCENARIOS = {
    "floor": ["tabular", "tabular32"],
    "torchwire": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "python": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "torchserve": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "torchserve-batch": ["sentiment"],
}


class StepError(Exception):
    """A server or command failed: recorded in the results, and the suite goes on."""


# ---------------------------------------------------------------------------------------------
# A minimal gRPC-over-HTTP/2 unary client (h2c, no TLS), enough for health checks and one-off calls
# with hand-encoded protobuf. Success = a response message came back (gRPC sends none on errors).

def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix: int = 7) -> bytes:
    top = (1 << prefix) - 1
    if value < top:
        return bytes([value])
    out, value = [top], value - top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out + [value])


def _hpack_literal(name: str, value: str) -> bytes:  # literal without indexing, new name, no Huffman
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v


def grpc_unary(port: int, path: str, request: bytes, timeout: float = 10.0) -> tuple[bytes | None, float]:
    """One unary call on a fresh connection; returns (response message or None, seconds from request to end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = b"".join(_hpack_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")])
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0))
        t0 = time.perf_counter()
        s.sendall(_frame(1, 0x4, 1, headers) + _frame(0, 0x1, 1, body))
        buf, data = b"", b""

        def take(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                buf += chunk
            out, buf = buf[:n], buf[n:]
            return out

        while True:
            head = take(9)
            length, ftype, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = take(length)
            if ftype == 4 and not flags & 1:  # SETTINGS -> ACK
                s.sendall(_frame(4, 1, 0))
            elif ftype == 6 and not flags & 1:  # PING -> ACK
                s.sendall(_frame(6, 1, 0, payload))
            elif ftype == 7 or (ftype == 3 and sid == 1):  # GOAWAY / RST_STREAM
                break
            elif sid == 1 and ftype == 0:
                if flags & 0x8:  # padded
                    payload = payload[1:len(payload) - payload[0]]
                data += payload
                if flags & 1:
                    break
            elif sid == 1 and ftype == 1 and flags & 1:  # trailers (or trailers-only error)
                break
        elapsed = time.perf_counter() - t0
    if len(data) < 5:
        return None, elapsed
    return data[5:5 + int.from_bytes(data[1:5], "big")], elapsed


def health_status(port: int) -> int | None:
    """grpc.health.v1 Check("") status (1 = SERVING, 0 = UNKNOWN), -1 if answered with an error, None if down."""
    try:
        msg, _ = grpc_unary(port, "/grpc.health.v1.Health/Check", b"", timeout=1.0)
    except OSError:
        return None
    if msg is None:
        return -1
    return msg[1] if msg[:1] == b"\x08" else 0


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 127, v >> 7
        out.append(b | (128 if v else 0))
        if not v:
            return bytes(out)


def _pb_bytes(fieldno: int, b: bytes) -> bytes:
    return _varint(fieldno << 3 | 2) + _varint(len(b)) + b


def _pb_uint(fieldno: int, v: int) -> bytes:
    return _varint(fieldno << 3) + _varint(v)


def _pb_floats(fieldno: int, xs: list[float]) -> bytes:
    return _pb_bytes(fieldno, struct.pack(f"<{len(xs)}f", *xs))


def tw_predict(model: str, input_name: str, features: int) -> bytes:
    tensor = (_pb_bytes(1, input_name.encode()) + _pb_uint(2, 1)  # FLOAT32
              + _pb_bytes(3, _varint(1) + _varint(features)) + _pb_floats(4, [0.5] * features))
    return _pb_bytes(1, model.encode()) + _pb_bytes(3, tensor)


def tw_sentiment(model: str, text: str) -> bytes:
    return _pb_bytes(1, text.encode()) + _pb_bytes(3, model.encode())


def py_predict(model: str, features: int) -> bytes:
    return _pb_bytes(1, model.encode()) + _pb_uint(2, 1) + _pb_uint(3, features) + _pb_floats(4, [0.5] * features)


def py_classify(model: str, text: str) -> bytes:
    return _pb_bytes(1, model.encode()) + _pb_bytes(2, text.encode())


# ---------------------------------------------------------------------------------------------
# Processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for f in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                todo.extend(int(c) for c in Path(f).read_text().split())
            except OSError:
                pass
    return out


def cpus_allowed(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def proc_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(c.decode(errors="replace") for c in cmd[:3])[:120]
    except OSError:
        return "?"


class Server:
    """A server process in its own process group, logging to a file; stop() kills the whole group."""

    live: list["Server"] = []

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name, self.cmd, self.log = name, cmd, log
        self.logf = open(log, "ab")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self.stop_hooks: list = []
        Server.live.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def rss(self, tree: bool = False) -> dict:
        pids = process_tree(self.pid) if tree else [self.pid]
        procs = [{"pid": p, "cmd": proc_name(p), "rss_kb": rss_kb(p), "cpus": cpus_allowed(p)} for p in pids]
        return {"rss_kb": sum(p["rss_kb"] for p in procs), "processes": procs}

    def stop(self) -> None:
        for hook in self.stop_hooks:
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - the group kill below still runs
                print(f"  warning: stopping {self.name}: {e}", flush=True)
        self.stop_hooks = []
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                # the leader is gone; give the rest of the group the same signal once more
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                continue
        self.logf.close()
        if self in Server.live:
            Server.live.remove(self)


def stop_all() -> None:
    for s in list(Server.live):
        s.stop()


def _on_signal(signum, _frame):
    print(f"\nsignal {signum}: stopping servers", flush=True)
    stop_all()
    sys.exit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Statistics

def summarize(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def med(summary: dict | None, key: str = "median"):
    return None if summary is None else summary.get(key)


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def mb(kib: float) -> str:
    """VmRSS kB (KiB) as MB (10^6 bytes), the unit of the issue's target."""
    return f"{kib * 1024 / 1e6:,.0f}"


def para(text: str) -> str:
    """A prose paragraph wrapped at 100 columns, like the rest of BENCHMARKS.md."""
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)


def fmt_us(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def fmt_range(s: dict | None, digits: int = 0, scale: float = 1.0) -> str:
    if s is None:
        return "–"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s.get("n", 1) <= 1:
        return fmt_num(m, digits)
    return f"{fmt_num(m, digits)} [{fmt_num(lo, digits)}–{fmt_num(hi, digits)}]"


# ---------------------------------------------------------------------------------------------

class Suite:
    def __init__(self, args):
        self.args = args
        self.t_start = time.perf_counter()
        self.bin = Path(args.bin).resolve() if args.bin else ROOT / "target/release/torchwire"
        self.reps = args.reps or (1 if args.quick else 3)
        self.duration = args.duration or (1.0 if args.quick else 3.0)
        self.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
        self.only = set(args.only.split(",")) if args.only else set(GROUPS)
        unknown = self.only - set(GROUPS)
        if unknown:
            sys.exit(f"--only: unknown {sorted(unknown)}; choose from {GROUPS}")
        self.scenario_filter = set(args.scenarios.split(",")) if args.scenarios else None
        self.lifecycle = not args.no_lifecycle
        self.partial = args.quick or bool(args.only) or bool(args.scenarios) or args.no_lifecycle or self.reps < 3
        self.date = dt.date.today().isoformat()
        suffix = "-quick" if self.partial else ""
        self.results_dir = ROOT / "benches/results"
        self.json_path = self.results_dir / f"{self.date}{suffix}.json"
        self.png_path = self.results_dir / f"{self.date}{suffix}.png"
        self.md_path = ROOT / "BENCHMARKS.md" if not self.partial or args.write_doc else self.results_dir / f"{self.date}{suffix}.md"
        self.tmp = Path(tempfile.mkdtemp(prefix="torchwire-bench-"))
        self.peers_src = self.find_peers()
        self.peers_venv = ROOT / ".venv-peers"
        self.pin = (os.cpu_count() or 1) >= 2
        self.commands: list[dict] = []
        self.R: dict = {
            "suite": "benches/suite.py", "date": self.date, "quick": args.quick, "partial": self.partial,
            "settings": {"repetitions": self.reps, "duration_s": self.duration, "warmup_s": self.warmup,
                         "server_cpu": SERVER_CPU if self.pin else None, "client_cpu": CLIENT_CPU if self.pin else None,
                         "long_texts": LONG_TEXTS, "short_text": SHORT_TEXT},
            "raw": {}, "load": {}, "lifecycle": {}, "errors": {}, "notes": [], "commands": self.commands,
        }

    # -- helpers ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def taskset(self, cpu: str) -> list[str]:
        return ["taskset", "-c", cpu] if self.pin else []

    def find_peers(self) -> Path | None:
        for cand in (os.environ.get("TORCHWIRE_PEERS_DIR"), ROOT / "shared/peers", ROOT.parent / "shared/peers",
                     "/work/shared/peers"):
            if cand and (Path(cand) / "setup.sh").is_file():
                return Path(cand).resolve()
        return None

    def run_cmd(self, step: str, cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        rec = {"step": step, "cmd": shlex.join(str(c) for c in cmd)}
        self.commands.append(rec)
        try:
            env = dict(env or os.environ, RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0")
            p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired:
            rec.update(rc=None, s=round(time.perf_counter() - t0, 2))
            raise StepError(f"timed out after {timeout:.0f} s: {rec['cmd']}")
        rec.update(rc=p.returncode, s=round(time.perf_counter() - t0, 2))
        if check and p.returncode != 0:
            text = (p.stderr or p.stdout).strip().split("Stack backtrace:")[0].strip()
            rec["stderr"] = text[-2000:]
            lines = text.splitlines() or ["(no output)"]
            shown = lines[:4] + (["..."] + lines[-4:] if len(lines) > 8 else lines[4:])
            raise StepError(f"exit {p.returncode}: " + "\n".join(shown) + f"\n(command: {rec['cmd']})")
        return p

    def record_server_cmd(self, step: str, server: Server, env_note: str = "") -> None:
        self.commands.append({"step": step, "cmd": (env_note + " " if env_note else "") + shlex.join(server.cmd)})

    def error(self, key: str, msg: str) -> None:
        msg = str(msg).strip()
        self.R["errors"][key] = msg
        self.log(f"ERROR {key}: {msg}")

    def selected(self, sc: Scenario) -> bool:
        return self.scenario_filter is None or sc.key in self.scenario_filter or sc.group in self.scenario_filter

    # -- binary capabilities -------------------------------------------------------------------
    def detect(self) -> None:
        if not self.bin.is_file():
            sys.exit(f"{self.bin} not found: run `make build` first (or pass --bin)")
        top = subprocess.run([self.bin, "--help"], capture_output=True, text=True).stdout
        bench = subprocess.run([self.bin, "bench", "--help"], capture_output=True, text=True).stdout
        self.has = {
            "bench-floor": "bench-floor" in top, "bench-chart": "bench-chart" in top,
            "target": "--target" in bench, "features": "--features" in bench, "text-file": "--text-file" in bench,
        }
        self.R["binary"] = {"path": str(self.bin), "capabilities": self.has}
        missing = [k for k, v in self.has.items() if not v]
        if missing:
            self.log(f"note: {self.bin} lacks {', '.join(missing)} (an older build?); the parts that need them are "
                     "reported as errors")

    def model_input(self, model: str) -> tuple[str, int]:
        """(first input name, feature count) from the model's manifest."""
        text = (ROOT / "models" / model / "model.toml").read_text()
        name = re.search(r'\[\[inputs\]\]\s*name\s*=\s*"([^"]+)"', text)
        shape = re.search(r"shape\s*=\s*\[\s*-1\s*,\s*(\d+)\s*\]", text)
        if not shape:
            raise StepError(f"models/{model}/model.toml has no [-1, N] input shape")
        return (name.group(1) if name else "input"), int(shape.group(1))

    # -- machine facts -----------------------------------------------------------------------------
    def machine(self) -> None:
        def first(path: str, key: str) -> str | None:
            try:
                for line in Path(path).read_text().splitlines():
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"')
            except OSError:
                pass
            return None

        def out(cmd: list[str]) -> str | None:
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                return (p.stdout or p.stderr).strip() or None
            except (OSError, subprocess.TimeoutExpired):
                return None

        def dist_version(venv: Path, pkg: str) -> str | None:
            hits = glob.glob(str(venv / f"lib/python*/site-packages/{pkg}-*.dist-info"))
            return Path(hits[0]).name[len(pkg) + 1:-len(".dist-info")] if hits else None

        mem = first("/proc/meminfo", "MemTotal")
        java = out(["java", "-version"])
        self.R["machine"] = {
            "cpu_model": first("/proc/cpuinfo", "model name"),
            "cores": os.cpu_count(),
            "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
            "kernel": platform.release(),
            "os": first("/etc/os-release", "PRETTY_NAME="),
            "python": platform.python_version(),
        }
        self.R["versions"] = {
            "torchwire": out([str(self.bin), "--version"]),
            "torchwire_git": out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
            "torch": out([sys.executable, "-c", "import torch; print(torch.__version__)"]),
            "torchserve": dist_version(self.peers_venv / "torchserve", "torchserve"),
            "torch_model_archiver": dist_version(self.peers_venv / "torchserve", "torch_model_archiver"),
            "grpcio": dist_version(self.peers_venv / "python-grpc", "grpcio"),
            "java": java.splitlines()[0] if java else None,
        }
        m, v = self.R["machine"], self.R["versions"]
        self.log(f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB, Linux {m['kernel']}; "
                 f"{v['torchwire']}, torch {v['torch']}, TorchServe {v['torchserve']}")

    # -- the long texts --------------------------------------------------------------------------
    def write_texts(self) -> None:
        self.text_file = self.tmp / "long_texts.txt"
        self.text_file.write_text("\n".join(LONG_TEXTS) + "\n")
        counter = self.peers_venv / "python-grpc/bin/python"
        tok = ROOT / "models" / TEXT_MODEL / "tokenizer.json"
        if counter.exists() and tok.exists():  # token counts for the record (the suite itself needs no tokenizer)
            code = ("import sys, json; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); "
                    "t.no_truncation(); t.no_padding(); "
                    "print(json.dumps([len(t.encode(x).ids) for x in open(sys.argv[2]).read().splitlines()]))")
            p = subprocess.run([counter, "-c", code, tok, self.text_file, ], capture_output=True, text=True)
            if p.returncode == 0:
                self.R["settings"]["long_text_tokens"] = json.loads(p.stdout)
                p = subprocess.run([counter, "-c", code.replace("open(sys.argv[2]).read().splitlines()", "[sys.argv[2]]"),
                                    tok, SHORT_TEXT], capture_output=True, text=True)
                if p.returncode == 0:
                    self.R["settings"]["short_text_tokens"] = json.loads(p.stdout)[0]

    # -- raw forward pass -------------------------------------------------------------------------
    def step_raw(self) -> None:
        q = self.args.quick
        plans = [
            ("tabular", TAB_MODEL, "1,32", 200 if q else 2000, None),
            ("sentiment", TEXT_MODEL, "1,8,16", 10 if q else 50, None),
            ("sentiment128", TEXT_MODEL, "1,4", 5 if q else 25, LONG_TEXTS[0]),
        ]
        for key, model, batches, iters, text in plans:
            runs: dict[int, list[dict]] = {}
            for rep in range(self.reps):
                cmd = self.taskset(SERVER_CPU) + [self.bin, "bench-raw", "--model-dir", ROOT / "models", "--model", model,
                                                  "--batch", batches, "--iters", str(iters), "--threads", "1", "--json"]
                if text:
                    cmd += ["--text", text]
                try:
                    p = self.run_cmd(f"raw {key}", cmd, timeout=300)
                except StepError as e:
                    self.error(f"raw:{key}", e)
                    break
                for line in p.stdout.splitlines():
                    if line.startswith("{"):
                        j = json.loads(line)
                        runs.setdefault(int(j["batch"]), []).append(j)
            for batch, rs in sorted(runs.items()):
                self.R["raw"][f"{key}/b{batch}"] = {
                    "model": model, "batch": batch, "text": "long" if text else ("short" if key != "tabular" else None),
                    "runs": rs, "summary": {k: summarize([r.get(k) for r in rs])
                                            for k in ("forward_p50_us", "forward_p99_us", "prepare_p50_us", "rows_per_s")}}
                s = self.R["raw"][f"{key}/b{batch}"]["summary"]
                self.log(f"raw {key} batch {batch}: forward p50 {fmt_us(med(s['forward_p50_us']))}, "
                         f"{fmt_num(med(s['rows_per_s']), 1)} rows/s")

    # -- load ------------------------------------------------------------------------------------------
    def bench(self, server_key: str, port: int, target: str, sc: Scenario, server: Server) -> None:
        tab = sc.rpc == "predict"
        if target in ("python", "torchserve"):
            model = PEER_TAB if tab else PEER_TEXT
        else:
            model = TAB_MODEL if tab else TEXT_MODEL
        cmd = self.taskset(CLIENT_CPU) + [
            self.bin, "bench", "--addr", f"http://127.0.0.1:{port}", "--rpc", sc.rpc, "--model", model,
            "--concurrency", str(sc.concurrency), "--duration", f"{self.duration:g}", "--warmup", f"{self.warmup:g}",
            "--rows", str(sc.rows), "--json"]
        if self.has["target"]:
            cmd += ["--target", target]
        elif target != "torchwire":
            raise StepError(f"{self.bin} bench has no --target: cannot drive {target} (rebuild with `make build`)")
        if tab and (server_key != "torchwire") and self.has["features"]:
            cmd += ["--features", str(self.tab_features)]
        if sc.long:
            if self.has["text-file"]:
                cmd += ["--text-file", self.text_file]
            else:
                cmd += ["--text", LONG_TEXTS[0]]
                self.note_once("bench has no --text-file: the long-text scenario sent only the first long text")
        entry = self.R["load"].setdefault(server_key, {}).setdefault(sc.key, {
            "group": sc.group, "rpc": sc.rpc, "concurrency": sc.concurrency, "rows": sc.rows, "runs": [], "errors": []})
        for rep in range(self.reps):
            if not server.alive():
                raise StepError(f"{server.name} exited (rc {server.proc.returncode}); log tail:\n{server.tail()}")
            try:
                p = self.run_cmd(f"{server_key} {sc.key}", cmd, timeout=self.duration + self.warmup + 60)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                if not line:
                    raise StepError(f"no JSON from bench: {p.stdout[-300:]} {p.stderr[-300:]}")
                j = json.loads(line[-1])
                codes = j.get("codes") or {}
                j.setdefault("errors", sum(v for k, v in codes.items() if k.upper() != "OK"))
                if not j.get("requests_per_s"):
                    raise StepError(f"no request answered OK in {self.duration:g} s (codes {codes}); run: {line[-1][:300]}")
                entry["runs"].append(j)
            except StepError as e:
                entry["errors"].append(str(e))
                self.log(f"  {server_key} {sc.key} rep {rep + 1}: {e}")
        rs = entry["runs"]
        entry["summary"] = {k: summarize([r.get(k) for r in rs]) for k in
                            ("requests_per_s", "rows_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "errors")}
        s = entry["summary"]
        errs = sum(r.get("errors", 0) for r in rs)
        self.log(f"{server_key:<16} {sc.key:<11} {fmt_range(s['requests_per_s'], 0):>28} req/s  "
                 f"p50 {fmt_us(med(s['p50_us'])):>9}  p99 {fmt_us(med(s['p99_us'])):>9}"
                 + (f"  ({errs} request errors)" if errs else ""))

    def prime(self, server_key: str, sentiment, predict) -> None:
        """A few sequential requests to each model before the load runs, so that no server's first
        measured seconds pay model loading or TorchScript's profiling runs (the warm-up of each
        repetition then starts from a warm server for every peer alike)."""
        t0, ok, n = time.perf_counter(), True, 0
        for call in [predict] * 3 + [lambda: sentiment(SHORT_TEXT)] * 3 + [lambda t=t: sentiment(t) for t in LONG_TEXTS]:
            try:
                ok = call() and ok
            except OSError:
                ok = False
            n += 1
        self.log(f"{server_key}: primed with {n} sequential requests in {time.perf_counter() - t0:.2f} s"
                 + ("" if ok else " (some failed)"))

    @staticmethod
    def ts_post(url: str, body: dict) -> bool:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wants_load(self, server_key: str) -> bool:
        return any(sc.group in SERVER_SCENARIOS[server_key] and self.selected(sc) for sc in SCENARIOS)

    def run_load(self, server_key: str, port: int, target: str, server: Server) -> None:
        for sc in SCENARIOS:
            if sc.group in SERVER_SCENARIOS[server_key] and self.selected(sc):
                self.bench(server_key, port, target, sc, server)

    def note_once(self, note: str) -> None:
        if note not in self.R["notes"]:
            self.R["notes"].append(note)

    # -- waiting for readiness --------------------------------------------------------------------
    def wait_grpc(self, server: Server, port: int, timeout: float, accept_error: bool = False) -> float:
        """Seconds from exec to the first SERVING health answer (or any gRPC answer with accept_error)."""
        deadline = server.t0 + timeout
        while time.perf_counter() < deadline:
            st = health_status(port)
            if st == 1 or (accept_error and st is not None):
                return time.perf_counter() - server.t0
            if not server.alive():
                raise StepError(f"{server.name} exited (rc {server.proc.returncode}) before serving; log tail:\n{server.tail()}")
            time.sleep(0.002 if st is None else 0.005)
        raise StepError(f"{server.name} not serving after {timeout:.0f} s; log tail:\n{server.tail()}")

    def wait_http(self, server: Server, url: str, want: str, timeout: float) -> float:
        deadline = server.t0 + timeout
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if want in r.read().decode(errors="replace"):
                        return time.perf_counter() - server.t0
            except (OSError, urllib.error.URLError):
                pass
            if not server.alive():
                raise StepError(f"{server.name} exited (rc {server.proc.returncode}) before healthy; log tail:\n{server.tail()}")
            time.sleep(0.02)
        raise StepError(f"{server.name}: {url} not {want!r} after {timeout:.0f} s; log tail:\n{server.tail()}")

    # -- torchwire -----------------------------------------------------------------------------------
    def start_torchwire(self, label: str, extra: list[str] | None = None) -> tuple[Server, int, float]:
        port = free_port()
        cmd = self.taskset(SERVER_CPU) + [str(self.bin), "serve", "--model-dir", str(ROOT / "models"),
                                          "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", "off", "--cpu-only",
                                          "--intra-op-threads", "1", "--log-level", "warn"] + (extra or [])
        s = Server(label, cmd, self.tmp / f"{label}.log")
        self.record_server_cmd(label, s)
        return s, port, self.wait_grpc(s, port, 60)

    def step_torchwire(self) -> None:
        tab_input, feats = self.model_input(TAB_MODEL)
        life = self.R["lifecycle"].setdefault("torchwire", {"runs": []})
        if self.lifecycle:
            models = sorted(p.parent.name for p in (ROOT / "models").glob("*/model.toml"))
            for rep in range(self.reps):
                s, port, cold = self.start_torchwire("torchwire-cold", ["--max-loaded-models", str(max(5, len(models)))])
                try:
                    time.sleep(0.5)
                    run = {"cold_start_s": cold, "idle_rss_kb": s.rss()["rss_kb"]}
                    msg, t_tab = grpc_unary(port, "/torchwire.v1.Inference/Predict", tw_predict(TAB_MODEL, tab_input, feats))
                    run["first_predict_ms"] = t_tab * 1000 if msg is not None else None
                    msg2, t_txt = grpc_unary(port, "/torchwire.v1.Inference/Sentiment", tw_sentiment(TEXT_MODEL, SHORT_TEXT))
                    run["first_sentiment_ms"] = t_txt * 1000 if msg2 is not None else None
                    run["rss_two_models_kb"] = s.rss()["rss_kb"]
                    loaded = [TAB_MODEL, TEXT_MODEL]
                    for m in models:
                        if m in loaded:
                            continue
                        toml = (ROOT / "models" / m / "model.toml").read_text()
                        if 'kind = "text-classification"' in toml:
                            r, _ = grpc_unary(port, "/torchwire.v1.Inference/Sentiment", tw_sentiment(m, SHORT_TEXT))
                        else:
                            name, n = self.model_input(m)
                            r, _ = grpc_unary(port, "/torchwire.v1.Inference/Predict", tw_predict(m, name, n))
                        if r is not None:
                            loaded.append(m)
                        else:
                            self.note_once(f"torchwire: the request to model {m} failed; not counted as loaded")
                    run["all_loaded_rss_kb"], run["all_loaded_models"] = s.rss()["rss_kb"], loaded
                    life["runs"].append(run)
                    self.log(f"torchwire lifecycle rep {rep + 1}: cold start {cold * 1000:.0f} ms, idle RSS "
                             f"{mb(run['idle_rss_kb'])} MB, first Predict {fmt_num(run['first_predict_ms'], 1)} ms, "
                             f"first Sentiment {fmt_num(run['first_sentiment_ms'], 1)} ms, RSS with {len(loaded)} models "
                             f"{mb(run['all_loaded_rss_kb'])} MB")
                finally:
                    s.stop()
        if not self.wants_load("torchwire"):
            return
        s, port, _ = self.start_torchwire("torchwire")
        try:
            self.prime("torchwire", lambda text: grpc_unary(port, "/torchwire.v1.Inference/Sentiment",
                                                             tw_sentiment(TEXT_MODEL, text))[0] is not None,
                       lambda: grpc_unary(port, "/torchwire.v1.Inference/Predict",
                                          tw_predict(TAB_MODEL, tab_input, feats))[0] is not None)
            self.run_load("torchwire", port, "torchwire", s)
        finally:
            s.stop()

    def step_floor(self) -> None:
        if not self.has["bench-floor"]:
            raise StepError(f"{self.bin} has no bench-floor command (rebuild with `make build`)")
        if not self.wants_load("floor"):
            return
        port = free_port()
        cmd = self.taskset(SERVER_CPU) + [str(self.bin), "bench-floor", "--grpc-addr", f"127.0.0.1:{port}"]
        s = Server("floor", cmd, self.tmp / "floor.log")
        self.record_server_cmd("floor", s)
        try:
            self.wait_grpc(s, port, 30, accept_error=True)
            self.run_load("floor", port, "torchwire", s)
        finally:
            s.stop()

    # -- peers -------------------------------------------------------------------------------------------
    def setup_peers(self) -> None:
        if self.peers_src is None:
            raise StepError("peers folder not found (looked in $TORCHWIRE_PEERS_DIR, shared/peers, /work/shared/peers)")
        site = glob.glob(str(ROOT / ".venv/lib/python3*/site-packages"))
        if not site:
            raise StepError(".venv has no site-packages: run `make setup`")
        self.log("peers: setup.sh (idempotent)")
        self.run_cmd("peers setup", ["bash", self.peers_src / "setup.sh", site[0], self.peers_venv],
                     timeout=1800, cwd=ROOT)

    def step_python(self) -> None:
        py = self.peers_venv / "python-grpc/bin/python"
        env = dict(os.environ, PYTHONPATH=str(self.peers_venv / "python-grpc"))
        life = self.R["lifecycle"].setdefault("python", {"runs": []})
        _, feats = self.model_input(TAB_MODEL)

        def start(label: str) -> tuple[Server, int, float]:
            port = free_port()
            cmd = self.taskset(SERVER_CPU) + [
                str(py), str(self.peers_src / "python-grpc/server.py"), "--port", str(port), "--torch-threads", "1",
                "--workers", "4", "--tabular", str(ROOT / "models" / TAB_MODEL / "model.pt"), "--tabular-name", PEER_TAB,
                "--features", str(feats), "--text", str(ROOT / "models" / TEXT_MODEL / "model.pt"),
                "--text-name", PEER_TEXT, "--tokenizer", str(ROOT / "models" / TEXT_MODEL / "tokenizer.json")]
            s = Server(label, cmd, self.tmp / f"{label}.log", env=env)
            self.record_server_cmd(label, s, f"PYTHONPATH={env['PYTHONPATH']}")
            return s, port, self.wait_grpc(s, port, 120)

        if self.lifecycle:
            for rep in range(self.reps):
                s, port, cold = start("python-cold")
                try:
                    time.sleep(0.5)
                    run = {"cold_start_s": cold, "idle_rss_kb": s.rss(tree=True)["rss_kb"]}
                    m, t = grpc_unary(port, "/serving.v1.Predictor/Predict", py_predict(PEER_TAB, feats))
                    run["first_predict_ms"] = t * 1000 if m is not None else None
                    m, t = grpc_unary(port, "/serving.v1.Predictor/ClassifyText", py_classify(PEER_TEXT, SHORT_TEXT))
                    run["first_sentiment_ms"] = t * 1000 if m is not None else None
                    run["all_loaded_rss_kb"], run["all_loaded_models"] = s.rss(tree=True)["rss_kb"], [TAB_MODEL, TEXT_MODEL]
                    life["runs"].append(run)
                    self.log(f"python lifecycle rep {rep + 1}: cold start {cold:.2f} s, RSS {mb(run['idle_rss_kb'])} MB "
                             f"(both models load at start)")
                finally:
                    s.stop()
        if not self.wants_load("python"):
            return
        s, port, _ = start("python")
        try:
            self.prime("python", lambda text: grpc_unary(port, "/serving.v1.Predictor/ClassifyText",
                                                          py_classify(PEER_TEXT, text))[0] is not None,
                       lambda: grpc_unary(port, "/serving.v1.Predictor/Predict", py_predict(PEER_TAB, feats))[0] is not None)
            self.run_load("python", port, "python", s)
        finally:
            s.stop()

    def torchserve_store(self) -> Path:
        store = self.tmp / "model-store"
        if (store / "sentiment.mar").exists():
            return store
        store.mkdir(exist_ok=True)
        arch = self.peers_venv / "torchserve/bin/torch-model-archiver"
        h = self.peers_src / "torchserve/handlers"
        self.log("TorchServe: archiving the models (torch-model-archiver)")
        self.run_cmd("torchserve archive", [arch, "--model-name", PEER_TAB, "--version", "1.0", "--serialized-file",
                                            ROOT / "models" / TAB_MODEL / "model.pt", "--handler", h / "mlp_handler.py",
                                            "--export-path", store], timeout=300)
        self.run_cmd("torchserve archive", [arch, "--model-name", PEER_TEXT, "--version", "1.0", "--serialized-file",
                                            ROOT / "models" / TEXT_MODEL / "model.pt", "--handler", h / "text_handler.py",
                                            "--extra-files", ROOT / "models" / TEXT_MODEL / "tokenizer.json",
                                            "--export-path", store], timeout=300)
        return store

    def start_torchserve(self, label: str, config_name: str) -> tuple[Server, dict, float]:
        store = self.torchserve_store()
        ports = {p: free_port() for p in (8080, 8081, 8082, 7070, 7071)}
        text = (self.peers_src / "torchserve" / config_name).read_text().replace("MODEL_STORE", str(store))
        text = re.sub(r"(?<=[:=])(8080|8081|8082|7070|7071)\b", lambda m: str(ports[int(m.group(1))]), text)
        conf = self.tmp / f"{label}.properties"
        conf.write_text(text)
        logs = self.tmp / f"{label}-logs"
        logs.mkdir(exist_ok=True)
        ts = self.peers_venv / "torchserve/bin/torchserve"
        env = dict(os.environ, LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs), OMP_NUM_THREADS="1")
        cmd = self.taskset(SERVER_CPU) + [str(ts), "--start", "--foreground", "--ncs", "--ts-config", str(conf),
                                          "--model-store", str(store), "--disable-token-auth"]
        s = Server(label, cmd, self.tmp / f"{label}.log", env=env, cwd=self.tmp)
        self.record_server_cmd(label, s, f"LOG_LOCATION={logs} METRICS_LOCATION={logs} OMP_NUM_THREADS=1")

        def ts_stop() -> None:
            subprocess.run([str(ts), "--stop"], env=env, cwd=self.tmp, capture_output=True, timeout=60)
            for _ in range(100):  # --stop returns before the JVM is gone
                if not s.alive():
                    break
                time.sleep(0.1)
        s.stop_hooks.append(ts_stop)
        return s, ports, self.wait_http(s, f"http://127.0.0.1:{ports[8080]}/ping", "Healthy", 180)

    def step_torchserve(self, batch: bool = False) -> None:
        key = "torchserve-batch" if batch else "torchserve"
        _, feats = self.model_input(TAB_MODEL)
        if not batch and self.lifecycle:
            life = self.R["lifecycle"].setdefault(key, {"runs": []})
            for rep in range(self.reps):
                s, ports, cold = self.start_torchserve("torchserve-cold", "config.properties")
                try:
                    time.sleep(0.5)
                    tree = s.rss(tree=True)
                    launcher = tree["processes"][0]["rss_kb"]  # the `torchserve --foreground` CLI that waits on java
                    run = {"cold_start_s": cold, "idle_rss_kb": tree["rss_kb"] - launcher, "launcher_rss_kb": launcher,
                           "processes": tree["processes"]}
                    base = f"http://127.0.0.1:{ports[8080]}/predictions"
                    for name, body, k in ((PEER_TAB, {"features": [0.5] * feats}, "first_predict_ms"),
                                          (PEER_TEXT, {"texts": [SHORT_TEXT]}, "first_sentiment_ms")):
                        t0 = time.perf_counter()
                        try:
                            req = urllib.request.Request(f"{base}/{name}", data=json.dumps(body).encode(),
                                                         headers={"Content-Type": "application/json"})
                            urllib.request.urlopen(req, timeout=30).read()
                            run[k] = (time.perf_counter() - t0) * 1000
                        except (OSError, urllib.error.URLError) as e:
                            run[k] = None
                            self.note_once(f"TorchServe first request to {name} failed: {e}")
                    run["all_loaded_rss_kb"] = s.rss(tree=True)["rss_kb"] - launcher
                    run["all_loaded_models"] = [TAB_MODEL, TEXT_MODEL]
                    life["runs"].append(run)
                    self.log(f"torchserve lifecycle rep {rep + 1}: cold start {cold:.2f} s, RSS {mb(run['idle_rss_kb'])} MB "
                             f"(java + workers, {len(tree['processes']) - 1} processes; both models load at start)")
                finally:
                    s.stop()
        if not self.wants_load(key):
            return
        s, ports, _ = self.start_torchserve(key, "config_batch.properties" if batch else "config.properties")
        try:
            base = f"http://127.0.0.1:{ports[8080]}/predictions"
            self.prime(key, lambda text: self.ts_post(f"{base}/{PEER_TEXT}", {"texts": [text]}),
                       lambda: self.ts_post(f"{base}/{PEER_TAB}", {"features": [0.5] * feats}))
            self.run_load(key, ports[7070], "torchserve", s)
        finally:
            s.stop()

    # -- orchestration ---------------------------------------------------------------------------------
    def estimate_s(self) -> float:
        points = sum(1 for g in GROUPS if g in self.only and g in SERVER_SCENARIOS
                     for sc in SCENARIOS if sc.group in SERVER_SCENARIOS[g] and self.selected(sc))
        return points * self.reps * (self.duration + self.warmup + 0.4) + 40 * ("raw" in self.only) + 120

    def run(self) -> None:
        self.detect()
        self.tab_features = self.model_input(TAB_MODEL)[1]
        self.write_texts()
        self.log(f"plan: {', '.join(g for g in GROUPS if g in self.only)}; {self.reps} repetition(s) of "
                 f"{self.duration:g} s after {self.warmup:g} s warm-up; estimated {self.estimate_s() / 60:.1f} min")
        peers_ok = True
        if self.only & {"python", "torchserve", "torchserve-batch"}:
            try:
                self.setup_peers()
            except StepError as e:
                peers_ok = False
                for k in ("python", "torchserve", "torchserve-batch"):
                    if k in self.only:
                        self.error(k, f"peer setup failed: {e}")
        # After the peers' set-up: on a fresh machine their versions exist only from here on.
        self.machine()
        steps = [("raw", self.step_raw), ("floor", self.step_floor), ("torchwire", self.step_torchwire),
                 ("python", self.step_python), ("torchserve", self.step_torchserve),
                 ("torchserve-batch", lambda: self.step_torchserve(batch=True))]
        for key, fn in steps:
            if key not in self.only or (key in ("python", "torchserve", "torchserve-batch") and not peers_ok):
                continue
            if key == "torchserve-batch":
                left = self.args.budget_min * 60 - (time.perf_counter() - self.t_start)
                need = 4 * self.reps * (self.duration + self.warmup + 0.4) + 20
                if need > left:
                    self.error(key, f"skipped: {need:.0f} s needed, {left:.0f} s left of the {self.args.budget_min} min budget")
                    continue
            self.log(f"== {key}")
            try:
                fn()
            except StepError as e:
                self.error(key, e)
            finally:
                stop_all()
        self.finish()

    # -- results ----------------------------------------------------------------------------------------
    def load_sum(self, server: str, sc: str, metric: str = "requests_per_s") -> dict | None:
        return ((self.R["load"].get(server) or {}).get(sc) or {}).get("summary", {}).get(metric)

    def raw_sum(self, key: str, metric: str) -> dict | None:
        return (self.R["raw"].get(key) or {}).get("summary", {}).get(metric)

    def summarize_lifecycle(self) -> None:
        for srv, life in self.R["lifecycle"].items():
            runs = life["runs"]
            life["summary"] = {k: summarize([r.get(k) for r in runs]) for k in
                               ("cold_start_s", "idle_rss_kb", "first_predict_ms", "first_sentiment_ms", "all_loaded_rss_kb")}

    def targets(self) -> list[dict]:
        T = []

        def ratio(name: str, goal: str, num, den, want: float, what: str) -> None:
            n, d = med(num), med(den)
            r = n / d if n is not None and d else None
            T.append({"target": name, "goal": goal, "measured": what.format(n=n, d=d) if r is not None else None,
                      "value": r, "met": None if r is None else r >= want})

        tw8 = self.load_sum("torchwire", "tab-c8")
        ratio("Tabular c=8 req/s vs Python peer", "≥ 10×", tw8, self.load_sum("python", "tab-c8"), 10,
              "{n:,.0f} / {d:,.0f} req/s")
        ratio("Tabular c=8 req/s vs TorchServe", "≥ 20×", tw8, self.load_sum("torchserve", "tab-c8"), 20,
              "{n:,.0f} / {d:,.0f} req/s")
        ratio("Tabular c=8 req/s vs the floor server", "≥ 0.8×", tw8, self.load_sum("floor", "tab-c8"), 0.8,
              "{n:,.0f} / {d:,.0f} req/s")
        p_tw, p_fl = med(self.load_sum("torchwire", "tab-c1", "p50_us")), med(self.load_sum("floor", "tab-c1", "p50_us"))
        p_raw = med(self.raw_sum("tabular/b1", "forward_p50_us"))
        ov = p_tw - p_fl - p_raw if None not in (p_tw, p_fl, p_raw) else None
        T.append({"target": "Server overhead at c=1: torchwire p50 − floor p50 − raw forward p50 (batch 1)",
                  "goal": "≤ 50 µs", "value": ov, "met": None if ov is None else ov <= 50,
                  "measured": None if ov is None else f"{p_tw:.0f} − {p_fl:.0f} − {p_raw:.0f} = {ov:.0f} µs"})
        best = max((self.raw_sum(f"sentiment/b{b}", "rows_per_s") or {"median": 0} for b in (8, 16)),
                   key=lambda s: s["median"])
        tw16 = self.load_sum("torchwire", "sent-c16")
        ratio("Sentiment c=16 req/s vs the raw batched forward pass (best of batch 8/16, texts/s)", "≥ 0.9×",
              tw16, best if best["median"] else None, 0.9, "{n:,.1f} / {d:,.1f} texts/s")
        ratio("Sentiment c=16 req/s vs Python peer", "≥ 2×", tw16, self.load_sum("python", "sent-c16"), 2,
              "{n:,.1f} / {d:,.1f} req/s")
        life = (self.R["lifecycle"].get("torchwire") or {}).get("summary", {})
        cs = med(life.get("cold_start_s"))
        T.append({"target": "Cold start (exec → first SERVING health answer)", "goal": "≤ 0.5 s", "value": cs,
                  "measured": None if cs is None else f"{cs * 1000:.0f} ms", "met": None if cs is None else cs <= 0.5})
        rss = med(life.get("idle_rss_kb"))
        mb = None if rss is None else rss * 1024 / 1e6
        T.append({"target": "Idle RSS (after start, no request)", "goal": "≤ 150 MB", "value": mb,
                  "measured": None if mb is None else f"{mb:.0f} MB", "met": None if mb is None else mb <= 150})
        return T

    def chart(self) -> dict:
        def series(server: str, keys: list[tuple[int, str]], metric: str = "requests_per_s") -> dict | None:
            pts = []
            for x, sc in keys:
                s = self.load_sum(server, sc, metric)
                if s:
                    pts.append([x, s["median"], s["min"], s["max"]])
            return {"label": SERVER_LABEL[server], "points": pts} if pts else None

        tab = [(1, "tab-c1"), (8, "tab-c8"), (64, "tab-c64")]
        sent = [(1, "sent-c1"), (4, "sent-c4"), (16, "sent-c16"), (64, "sent-c64")]
        limits = []
        best = [(b, med(self.raw_sum(f"sentiment/b{b}", "rows_per_s"))) for b in (8, 16)]
        best = [x for x in best if x[1]]
        if best:
            b, v = max(best, key=lambda x: x[1])
            limits.append({"label": f"raw forward, batch {b} (texts/s)", "y": v})
        b1 = med(self.raw_sum("sentiment/b1", "rows_per_s"))
        if b1:
            limits.append({"label": "raw forward, batch 1 (texts/s)", "y": b1})
        return {
            "title": f"torchwire vs limits and peers — {self.R['machine']['cpu_model']}, server on 1 core ({self.date})",
            "panels": [
                {"title": f"Tabular ({TAB_MODEL}), 1 row per request", "x_label": "concurrency", "y_label": "requests/s",
                 "series": [s for s in (series(k, tab) for k in ("torchwire", "floor", "python", "torchserve")) if s],
                 "limits": []},
                {"title": "Sentiment, one ~12-token sentence per request", "x_label": "concurrency",
                 "y_label": "requests/s",
                 "series": [s for s in (series(k, sent) for k in ("torchwire", "python", "torchserve", "torchserve-batch")) if s],
                 "limits": limits},
            ],
        }

    def finish(self) -> None:
        self.summarize_lifecycle()
        self.R["targets"] = self.targets()
        self.R["chart"] = self.chart()
        self.R["wall_s"] = round(time.perf_counter() - self.t_start, 1)
        self.R["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.R, indent=1, ensure_ascii=False) + "\n")
        self.log(f"wrote {self.json_path.relative_to(ROOT)}")
        png = None
        if self.has.get("bench-chart"):
            try:
                self.run_cmd("chart", [self.bin, "bench-chart", "--results", self.json_path, "--out", self.png_path], timeout=120)
                png = self.png_path
                self.log(f"wrote {self.png_path.relative_to(ROOT)}")
            except StepError as e:
                self.log(f"chart not written: {e}")
        else:
            self.log(f"chart not written: {self.bin} has no bench-chart command yet")
        self.write_markdown(png)
        for t in self.R["targets"]:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            self.log(f"target {t['goal']:>7} {verdict:<12} {t['target']}: {t['measured'] or '–'}")
        if self.R["errors"]:
            self.log(f"{len(self.R['errors'])} part(s) failed: {', '.join(self.R['errors'])} (see the results file)")

    # -- markdown -------------------------------------------------------------------------------------------
    def markdown(self, png: Path | None) -> str:
        m, v, st = self.R["machine"], self.R["versions"], self.R["settings"]
        rel = lambda p: os.path.relpath(p, self.md_path.parent)  # noqa: E731
        L = [f"## The suite: torchwire against its limits and peers — `make bench`", ""]
        L.append(para(f"Run {self.date} by `make bench` (`benches/suite.py`"
                 + (", **quick/partial run**" if self.partial else "") + f", {self.R['wall_s'] / 60:.1f} min) on "
                 f"{m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB, {m['os']}, Linux {m['kernel']}; "
                 f"{v['torchwire']} ({v['torchwire_git']}), torch {v['torch']}, TorchServe {v['torchserve']}, "
                 f"grpcio {v['grpcio']}, {v['java']}."))
        L.append("")
        L.append(para(f"Servers pinned to core {SERVER_CPU} (their children too), the load generator (`torchwire bench`, "
                 f"closed loop, one HTTP/2 connection) to core {CLIENT_CPU}; one torch intra-op thread everywhere: "
                 "torchwire `--intra-op-threads 1` with its default batching, the Python peer `--torch-threads 1 "
                 "--workers 4`, TorchServe with the peers' `config.properties` (one worker per model, no batching) "
                 "and `OMP_NUM_THREADS=1`. The floor is `torchwire bench-floor`, a bare tonic server answering a "
                 "constant. Every figure is the median of "
                 f"{self.reps} repetition(s) of {self.duration:g} s after {self.warmup:g} s of warm-up, "
                 "[min–max] across them. Every request, command and repetition: "
                 f"[`{rel(self.json_path)}`]({rel(self.json_path)})."
                 + (f" Chart: [`{rel(png)}`]({rel(png)})." if png else "")))
        L.append("")
        if png:
            L += [f"![torchwire vs limits and peers]({rel(png)})", ""]
        if self.R["errors"]:
            L.append("Parts that failed in this run:")
            L.append("")
            for k, e in self.R["errors"].items():
                L.append(f"- {SERVER_LABEL.get(k, k)}: {e.splitlines()[0][:300]}")
            L.append("")
        L += ["### Targets", "", "| target | goal | measured | ratio | |", "|---|---|---|---:|---|"]
        for t in self.R["targets"]:
            val = t["value"]
            shown = f"{val:.2f}×" if val is not None and t["goal"].endswith("×") else ""
            verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            L.append(f"| {t['target']} | {t['goal']} | {t['measured'] or '–'} | {shown} | {verdict} |")
        L.append("")
        servers = ["torchwire", "floor", "python", "torchserve", "torchserve-batch"]
        for group in ("tabular", "tabular32", "sentiment", "sentiment128"):
            rows = []
            for sc in (s for s in SCENARIOS if s.group == group):
                for srv in servers:
                    if group not in SERVER_SCENARIOS[srv]:
                        continue
                    e = (self.R["load"].get(srv) or {}).get(sc.key)
                    if e and e.get("runs"):
                        s = e["summary"]
                        codes: dict[str, int] = {}
                        for r in e["runs"]:
                            for k, n in (r.get("codes") or {}).items():
                                if k.upper() != "OK":
                                    codes[k] = codes.get(k, 0) + n
                        errs = ", ".join(f"{n:,} {k}" for k, n in codes.items()) or (
                            f"{sum(r.get('errors', 0) for r in e['runs']):,}" if any(r.get("errors") for r in e["runs"]) else "")
                        unit = " rows/s" if sc.rows > 1 else ""
                        rate = fmt_range(s["rows_per_s"] if sc.rows > 1 else s["requests_per_s"], 0) + unit
                        rows.append(f"| {sc.concurrency} | {SERVER_LABEL[srv]} | {rate} | {fmt_us(med(s['p50_us']))} | "
                                    f"{fmt_us(med(s['p99_us']))} | {errs} |")
                    elif e and e.get("errors"):
                        rows.append(f"| {sc.concurrency} | {SERVER_LABEL[srv]} | failed: {e['errors'][0].splitlines()[0][:120]} | | | |")
                    elif srv in self.R["errors"]:
                        rows.append(f"| {sc.concurrency} | {SERVER_LABEL[srv]} | not measured (failed, see above) | | | |")
            if rows:
                col = "rows/s" if group == "tabular32" else "req/s"
                L += [f"### {GROUP_TITLE[group]}", "",
                      f"| concurrency | server | {col} median [min–max] | p50 | p99 | failed requests (all repetitions) |",
                      "|---:|---|---:|---:|---:|---:|"] + rows + [""]
                if group == "sentiment128" and st.get("long_text_tokens"):
                    L += [para(f"Long texts: {', '.join(map(str, st['long_text_tokens']))} tokens (special tokens "
                               f"included); the short sentence {st.get('short_text_tokens', '?')}."), ""]
        if self.R["raw"]:
            L += ["### Limits: raw forward pass in-process (`torchwire bench-raw`, 1 thread, core 0)", "",
                  "| model | input | batch | forward p50 | forward p99 | prepare p50 | rows or texts/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
            for key, r in self.R["raw"].items():
                s = r["summary"]
                inp = {"tabular": f"{self.tab_features} float32", "sentiment": "~12-token sentence",
                       "sentiment128": "~126-token review"}[key.split("/")[0]]
                L.append(f"| `{r['model']}` | {inp} | {r['batch']} | {fmt_us(med(s['forward_p50_us']))} | "
                         f"{fmt_us(med(s['forward_p99_us']))} | {fmt_us(med(s['prepare_p50_us']))} | "
                         f"{fmt_range(s['rows_per_s'], 1)} |")
            L.append("")
        if self.R["lifecycle"]:
            L += ["### Start-up and memory", "",
                  "| server | cold start (exec → serving) | first Predict | first Sentiment | idle RSS | RSS, models loaded |",
                  "|---|---:|---:|---:|---:|---:|"]
            for srv in ("torchwire", "python", "torchserve"):
                life = self.R["lifecycle"].get(srv)
                if not life or not life["runs"]:
                    if srv in self.R["errors"]:
                        L.append(f"| {SERVER_LABEL[srv]} | not measured (failed, see above) | | | | |")
                    continue
                s = life["summary"]
                n_models = len(life["runs"][-1].get("all_loaded_models", []))
                L.append(f"| {SERVER_LABEL[srv]} | {fmt_range(s['cold_start_s'], 2)} s | {fmt_range(s['first_predict_ms'], 1)} ms | "
                         f"{fmt_range(s['first_sentiment_ms'], 1)} ms | {fmt_range(s['idle_rss_kb'], 0, 1024 / 1e6)} MB | "
                         f"{fmt_range(s['all_loaded_rss_kb'], 0, 1024 / 1e6)} MB ({n_models} models) |")
            L += ["", para("Cold start: from exec to the first SERVING answer of `grpc.health.v1.Health/Check` (torchwire, "
                  "Python peer; polled every 2 ms) or to `GET /ping` answering Healthy (TorchServe; every 20 ms). "
                  "First request: client-side time of the first call on a fresh connection, after start-up — for "
                  "torchwire it includes loading the model (models load on first use); the peers load both models "
                  "before they serve. RSS: VmRSS 0.5 s after serving, no request yet (torchwire has no model "
                  "loaded then; the peers have theirs); for TorchServe the sum over the JVM frontend and its Python "
                  "workers. \"Models loaded\": torchwire with `--max-loaded-models 5` after one request to every "
                  "bundled model; the peers after one request to each of their two. MB = 10^6 bytes."), ""]
        for n in self.R["notes"]:
            L.append(para(f"Note: {n}"))
        if self.R["notes"]:
            L.append("")
        return "\n".join(L)

    def write_markdown(self, png: Path | None) -> None:
        region = self.markdown(png)
        if self.md_path.name != "BENCHMARKS.md":
            self.md_path.write_text(region + "\n")
            self.log(f"wrote {self.md_path.relative_to(ROOT)} (a quick/partial run leaves BENCHMARKS.md alone)")
            return
        doc = self.md_path.read_text() if self.md_path.exists() else "# Benchmarks\n"
        block = f"{BEGIN}\n{region}\n{END}"
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:  # after the title and its intro paragraph
            m = re.search(r"\n## ", doc)
            cut = m.start() + 1 if m else len(doc)
            doc = doc[:cut] + block + "\n\n" + doc[cut:]
        self.md_path.write_text(doc)
        self.log("updated BENCHMARKS.md")

    def cleanup(self) -> None:
        stop_all()
        if self.args.keep_tmp:
            print(f"kept {self.tmp}", flush=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repetition of 1 s (0.5 s warm-up); results go to *-quick.*")
    ap.add_argument("--only", help=f"comma-separated parts to run: {','.join(GROUPS)}")
    ap.add_argument("--scenarios", help="comma-separated scenario keys or groups, e.g. tab-c8,sentiment "
                    f"({', '.join(s.key for s in SCENARIOS)}); `none` for no load runs")
    ap.add_argument("--no-lifecycle", action="store_true", help="skip the cold-start / first-request / RSS measurements")
    ap.add_argument("--reps", type=int, help="repetitions per measurement (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="seconds measured per repetition (default 3, quick 1)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per repetition (default 1, quick 0.5)")
    ap.add_argument("--bin", help="torchwire binary (default target/release/torchwire)")
    ap.add_argument("--budget-min", type=float, default=15, help="skip the TorchServe batching run past this (default 15)")
    ap.add_argument("--write-doc", action="store_true", help="update BENCHMARKS.md even on a quick/partial run")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (server logs, model store)")
    args = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    if (os.cpu_count() or 1) >= 2:
        try:
            os.sched_setaffinity(0, {int(CLIENT_CPU)})  # keep this driver off the server's core
        except OSError:
            pass
    suite = Suite(args)
    try:
        suite.run()
    finally:
        suite.cleanup()


if __name__ == "__main__":
    main()

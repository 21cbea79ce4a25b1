"""The state one suite run shares: settings from the command line, the binaries, where results go, the
results record itself (`ctx.R`, written out as JSON at the end), and the small helpers every step uses
(logging, running a command and recording it, a judged one-off gRPC call).
"""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import wire
from .plan import (CLIENT_CPU, GROUPS, LONG_TEXTS, ROOT, SCENARIOS, SERVER_CPU, SERVER_SCENARIOS, SHORT_TEXT,
                   TEXT_MODEL, Scenario, StepError)


class Context:
    def __init__(self, args):
        self.args = args
        self.t_start = time.perf_counter()
        self.bin = Path(args.bin).resolve() if args.bin else ROOT / "target/release/torchwire"
        # The load generator, floor, raw timing and chart: beside --bin unless given.
        self.bench_bin = Path(args.bench_bin).resolve() if args.bench_bin else self.bin.with_name("torchwire-bench")
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
        self.md_path = (ROOT / "BENCHMARKS.md" if not self.partial or args.write_doc
                        else self.results_dir / f"{self.date}{suffix}.md")
        self.tmp = Path(tempfile.mkdtemp(prefix="torchwire-bench-"))
        self.peers_src: Path | None = None  # set by servers.setup_peers
        self.peers_venv = ROOT / ".venv-peers"
        self.pin = (os.cpu_count() or 1) >= 2
        self.commands: list[dict] = []
        self.tab_features = 0
        self.text_file = self.tmp / "long_texts.txt"
        self.R: dict = {
            "suite": "benches/suite.py", "date": self.date, "quick": args.quick, "partial": self.partial,
            "settings": {"repetitions": self.reps, "duration_s": self.duration, "warmup_s": self.warmup,
                         "server_cpu": SERVER_CPU if self.pin else None, "client_cpu": CLIENT_CPU if self.pin else None,
                         "long_texts": LONG_TEXTS, "short_text": SHORT_TEXT},
            "raw": {}, "load": {}, "lifecycle": {}, "errors": {}, "grpc_errors": {}, "notes": [],
            "commands": self.commands,
        }

    # -- logging and the record ----------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def error(self, key: str, msg) -> None:
        msg = str(msg).strip()
        self.R["errors"][key] = msg
        self.log(f"ERROR {key}: {msg}")

    def note_once(self, note: str) -> None:
        if note not in self.R["notes"]:
            self.R["notes"].append(note)

    # -- what runs ------------------------------------------------------------------------------
    def selected(self, sc: Scenario) -> bool:
        return self.scenario_filter is None or sc.key in self.scenario_filter or sc.group in self.scenario_filter

    def wants_load(self, server_key: str) -> bool:
        return any(sc.group in SERVER_SCENARIOS[server_key] and self.selected(sc) for sc in SCENARIOS)

    def taskset(self, cpu: str) -> list[str]:
        return ["taskset", "-c", cpu] if self.pin else []

    # -- commands and calls -----------------------------------------------------------------------
    def run_cmd(self, step: str, cmd: list, timeout: float, env: dict | None = None, cwd: Path | None = None,
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

    def record_server_cmd(self, step: str, cmd: list[str], env_note: str = "") -> None:
        self.commands.append({"step": step, "cmd": (env_note + " " if env_note else "") + shlex.join(cmd)})

    def grpc(self, key: str, port: int, path: str, body: bytes, timeout: float = 10.0) -> wire.Reply:
        """A one-off unary call (not load). A non-OK answer is counted under R["grpc_errors"][key] by code
        name; a connection failure is counted as UNAVAILABLE and answered as such."""
        try:
            reply = wire.unary(port, path, body, timeout)
        except OSError as e:
            reply = wire.Reply(wire.UNAVAILABLE, f"{type(e).__name__}: {e}")
        if not reply.ok:
            codes = self.R["grpc_errors"].setdefault(key, {})
            codes[reply.code] = codes.get(reply.code, 0) + 1
        return reply

    # -- inputs -------------------------------------------------------------------------------------
    def check_binaries(self) -> None:
        for path, how in ((self.bin, "`make build` (or pass --bin)"),
                          (self.bench_bin, "`cargo build --release --locked -p torchwire-bench` (or pass --bench-bin)")):
            if not path.is_file():
                sys.exit(f"{path} not found: run {how} first")
        self.R["binary"] = {"path": str(self.bin), "bench_path": str(self.bench_bin)}

    @staticmethod
    def model_input(model: str) -> tuple[str, int]:
        """(first input name, feature count) from the model's manifest."""
        text = (ROOT / "models" / model / "model.toml").read_text()
        name = re.search(r'\[\[inputs\]\]\s*name\s*=\s*"([^"]+)"', text)
        shape = re.search(r"shape\s*=\s*\[\s*-1\s*,\s*(\d+)\s*\]", text)
        if not shape:
            raise StepError(f"models/{model}/model.toml has no [-1, N] input shape")
        return (name.group(1) if name else "input"), int(shape.group(1))

    def write_texts(self) -> None:
        """The long texts, one per line, for `load --text-file`; their token counts for the record when the
        peers' venv has a tokenizer (the suite itself needs none)."""
        self.text_file.write_text("\n".join(LONG_TEXTS) + "\n")
        counter = self.peers_venv / "python-grpc/bin/python"
        tok = ROOT / "models" / TEXT_MODEL / "tokenizer.json"
        if not (counter.exists() and tok.exists()):
            return
        code = ("import sys, json; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); "
                "t.no_truncation(); t.no_padding(); "
                "print(json.dumps([len(t.encode(x).ids) for x in open(sys.argv[2]).read().splitlines()]))")
        p = subprocess.run([counter, "-c", code, tok, self.text_file], capture_output=True, text=True)
        if p.returncode == 0:
            self.R["settings"]["long_text_tokens"] = json.loads(p.stdout)
            p = subprocess.run([counter, "-c", code.replace("open(sys.argv[2]).read().splitlines()", "[sys.argv[2]]"),
                                tok, SHORT_TEXT], capture_output=True, text=True)
            if p.returncode == 0:
                self.R["settings"]["short_text_tokens"] = json.loads(p.stdout)[0]

    def machine(self) -> None:
        """The machine and the versions of everything measured, into R["machine"] and R["versions"]."""
        mem = _first("/proc/meminfo", "MemTotal")
        java = _out(["java", "-version"])
        self.R["machine"] = {
            "cpu_model": _first("/proc/cpuinfo", "model name"),
            "cores": os.cpu_count(),
            "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
            "kernel": platform.release(),
            "os": _first("/etc/os-release", "PRETTY_NAME="),
            "python": platform.python_version(),
        }
        self.R["versions"] = {
            "torchwire": _out([str(self.bin), "--version"]),
            "torchwire_bench": _out([str(self.bench_bin), "--version"]),
            "torchwire_git": _out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
            "torch": _out([sys.executable, "-c", "import torch; print(torch.__version__)"]),
            "torchserve": _dist_version(self.peers_venv / "torchserve", "torchserve"),
            "torch_model_archiver": _dist_version(self.peers_venv / "torchserve", "torch_model_archiver"),
            "grpcio": _dist_version(self.peers_venv / "python-grpc", "grpcio"),
            "java": java.splitlines()[0] if java else None,
        }
        m, v = self.R["machine"], self.R["versions"]
        self.log(f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB, Linux {m['kernel']}; "
                 f"{v['torchwire']}, torch {v['torch']}, TorchServe {v['torchserve']}")


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None


def _out(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (p.stdout or p.stderr).strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _dist_version(venv: Path, pkg: str) -> str | None:
    hits = glob.glob(str(venv / f"lib/python*/site-packages/{pkg}-*.dist-info"))
    return Path(hits[0]).name[len(pkg) + 1:-len(".dist-info")] if hits else None

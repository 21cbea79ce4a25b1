"""Issue 15's targets measured in interleaved rounds: every server a target compares runs at once (all
pinned to the server core; the idle ones sleep), and each round measures torchwire and what it is
compared with back to back (A B A B ...), so a host whose speed drifts slows both sides of a pair
alike. A target is the median of the per-round ratios, with their min and max. Two clients drive
the tabular targets: `torchwire-bench load` and h2load (Debian `nghttp2-client`, a hand-encoded gRPC
frame); `perf stat` on the server gives CPU per request. The suite's other (single-sided) figures
are not touched by this step.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from . import servers
from .context import Context
from .plan import CLIENT_CPU, PEER_TAB, PEER_TEXT, ROOT, SERVER_CPU, SHORT_TEXT, TAB_MODEL, TEXT_MODEL, StepError
from .wire import py_classify, py_predict, tw_predict, tw_sentiment

TW_PREDICT, TW_SENTIMENT = "/torchwire.v1.Inference/Predict", "/torchwire.v1.Inference/Sentiment"
PY_PREDICT, PY_CLASSIFY = "/serving.v1.Predictor/Predict", "/serving.v1.Predictor/ClassifyText"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def frame_file(ctx: Context, name: str, body: bytes) -> Path:
    """A file holding one length-prefixed gRPC message, for h2load's -d."""
    path = ctx.tmp / f"{name}.grpc"
    path.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
    return path


def ratio_summary(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class Pairs:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.secs = 1.0 if ctx.args.quick else 1.5
        self.rounds = 2 if ctx.args.quick else max(5, ctx.args.pairs or 5)
        self.ports: dict[str, int] = {}
        self.procs: list = []
        tab_input, feats = ctx.model_input(TAB_MODEL)
        self.feats = feats
        self.frames = {
            "torchwire": frame_file(ctx, "tw_predict", tw_predict(TAB_MODEL, tab_input, feats)),
            "floor": frame_file(ctx, "floor_predict", tw_predict(TAB_MODEL, tab_input, feats)),
            "python": frame_file(ctx, "py_predict", py_predict(PEER_TAB, feats)),
        }
        self.paths = {"torchwire": TW_PREDICT, "floor": TW_PREDICT, "python": PY_PREDICT}
        self.h2load = shutil.which("h2load")
        self.perf = shutil.which("perf")

    # -- the servers --------------------------------------------------------------------------
    def start(self, with_python: bool) -> None:
        s, port, _ = servers.start_torchwire(self.ctx, "pairs-torchwire")
        self.procs.append(s)
        self.ports["torchwire"] = port
        # First requests load both models (and time the fast path) before anything is measured.
        for _ in range(3):
            self.ctx.grpc("torchwire", port, TW_PREDICT, tw_predict(TAB_MODEL, *self.ctx.model_input(TAB_MODEL)))
            self.ctx.grpc("torchwire", port, TW_SENTIMENT, tw_sentiment(TEXT_MODEL, SHORT_TEXT))
        self.pid = {"torchwire": s.proc.pid}
        f, port = servers.start_floor(self.ctx)
        self.procs.append(f)
        self.ports["floor"] = port
        self.pid["floor"] = f.proc.pid
        if with_python:
            p, port, _ = servers.start_python(self.ctx, "pairs-python")
            self.procs.append(p)
            self.ports["python"] = port
            self.pid["python"] = p.proc.pid
            for _ in range(3):
                self.ctx.grpc("python", port, PY_PREDICT, py_predict(PEER_TAB, self.feats))
                self.ctx.grpc("python", port, PY_CLASSIFY, py_classify(PEER_TEXT, SHORT_TEXT))

    def stop(self) -> None:
        for s in self.procs:
            s.stop()

    # -- one measurement each -------------------------------------------------------------------
    def load(self, key: str, rpc: str, conc: int) -> dict:
        """`torchwire-bench load` against one server: its JSON (requests_per_s, p50_us, ...)."""
        target = "python" if key == "python" else "torchwire"
        tab = rpc == "predict"
        model = (PEER_TAB if tab else PEER_TEXT) if key == "python" else (TAB_MODEL if tab else TEXT_MODEL)
        cmd = self.ctx.taskset(CLIENT_CPU) + [
            self.ctx.bench_bin, "load", "--addr", f"http://127.0.0.1:{self.ports[key]}", "--rpc", rpc, "--model", model,
            "--concurrency", str(conc), "--duration", f"{self.secs:g}", "--warmup", "0.5", "--json", "--target", target]
        if tab and key != "torchwire":
            cmd += ["--features", str(self.feats)]
        p = self.ctx.run_cmd(f"pairs {key} {rpc} c{conc}", cmd, timeout=self.secs + 60)
        j = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
        bad = {k: v for k, v in (j.get("codes") or {}).items() if k.upper() != "OK"}
        if bad or not j.get("requests_per_s"):
            raise StepError(f"{key} {rpc} c{conc}: codes {j.get('codes')}")
        return j

    def raw(self, model: str, batch: int, iters: int) -> dict:
        cmd = self.ctx.taskset(SERVER_CPU) + [self.ctx.bench_bin, "raw", "--model-dir", ROOT / "models", "--model", model,
                                              "--batch", str(batch), "--iters", str(iters), "--threads", "1", "--json"]
        p = self.ctx.run_cmd(f"pairs raw {model} b{batch}", cmd, timeout=300)
        return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])

    def h2(self, key: str, conc: int, n: int | None, cpu: bool) -> dict:
        """h2load over `conc` connections, one call in flight each: `n` calls (with `cpu`, `perf stat` on
        the server for exactly those calls), or, for `n` None, for the run's seconds after 0.5 s of
        warm-up."""
        count = ["-n", str(n)] if n else ["-D", f"{int(self.secs * 1000)}ms", "--warm-up-time", "500ms"]
        cmd = self.ctx.taskset(CLIENT_CPU) + [self.h2load, *count, "-c", str(conc), "-m", "1",
                                              "-d", str(self.frames[key]), *GRPC_HEADERS,
                                              f"http://127.0.0.1:{self.ports[key]}{self.paths[key]}"]
        perf, out = None, None
        if cpu and self.perf:
            out = tempfile.NamedTemporaryFile("r", suffix=".perf", dir=self.ctx.tmp, delete=False)
            perf = subprocess.Popen([self.perf, "stat", "-e", "task-clock,context-switches", "-x", ",", "-o", out.name,
                                     "-p", str(self.pid[key])], stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        try:
            p = self.ctx.run_cmd(f"pairs h2load {key} c{conc}", cmd, timeout=120)
        finally:
            if perf:
                perf.send_signal(2)
                perf.wait()
        text = p.stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
        rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms)", text)
        if not (done and rps) or done.group(1) != done.group(2) or (n and int(done.group(1)) != n):
            raise StepError(f"h2load {key}: {text[-400:]}")
        r = {"requests_per_s": float(rps.group(1)), "done": int(done.group(1)),
             "mean_us": float(mean.group(1)) * (1000 if mean.group(2) == "ms" else 1) if mean else None}
        if perf:
            stat = Path(out.name).read_text()
            clock = re.search(r"^([\d.]+),msec,task-clock", stat, re.M)
            cs = re.search(r"^(\d+),,context-switches", stat, re.M)
            if clock and cs:
                r["cpu_us_per_req"] = float(clock.group(1)) * 1000 / r["done"]
                r["cs_per_req"] = float(cs.group(1)) / r["done"]
        return r

    # -- the rounds ---------------------------------------------------------------------------------
    def run(self) -> dict:
        py = "python" in self.ports
        runs: list[dict] = []
        n1 = 3000 if self.ctx.args.quick else 6000
        for r in range(self.rounds):
            rec: dict = {}
            rec["raw_tab_b1"] = self.raw(TAB_MODEL, 1, 2000)
            for key in ["torchwire", "floor"] + (["python"] if py else []):
                rec[f"load_tab_c8_{key}"] = self.load(key, "predict", 8)
                rec[f"load_tab_c1_{key}"] = self.load(key, "predict", 1)
            if self.h2load:
                for key in ["torchwire", "floor"] + (["python"] if py else []):
                    cpu = key != "python"
                    rec[f"h2_tab_c1_{key}"] = self.h2(key, 1, n1 if cpu else None, cpu=cpu)
                    rec[f"h2_tab_c8_{key}"] = self.h2(key, 8, None, cpu=False)
            rec["raw_sent_b1"] = self.raw(TEXT_MODEL, 1, 40)
            rec["load_sent_c1_torchwire"] = self.load("torchwire", "sentiment", 1)
            if py:
                rec["load_sent_c1_python"] = self.load("python", "sentiment", 1)
            rec["raw_sent_b16"] = self.raw(TEXT_MODEL, 16, 10)
            rec["load_sent_c16_torchwire"] = self.load("torchwire", "sentiment", 16)
            runs.append(rec)
            self.ctx.log(f"pairs round {r + 1}/{self.rounds}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in ratios(rec).items() if v is not None))
        per_round = [ratios(rec) for rec in runs]
        keys = sorted({k for pr in per_round for k in pr})
        return {"rounds": runs, "per_round": per_round,
                "summary": {k: ratio_summary([pr.get(k) for pr in per_round]) for k in keys}}


def ratios(rec: dict) -> dict:
    """The targets of one round (each a ratio or a difference of figures measured side by side)."""
    g = lambda k, f: rec.get(k, {}).get(f)  # noqa: E731
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    out = {
        "tab_c8_vs_floor": div(g("load_tab_c8_torchwire", "requests_per_s"), g("load_tab_c8_floor", "requests_per_s")),
        "tab_c8_vs_python": div(g("load_tab_c8_torchwire", "requests_per_s"), g("load_tab_c8_python", "requests_per_s")),
        "tab_c1_vs_floor": div(g("load_tab_c1_torchwire", "requests_per_s"), g("load_tab_c1_floor", "requests_per_s")),
        "tab_c1_vs_python": div(g("load_tab_c1_torchwire", "requests_per_s"), g("load_tab_c1_python", "requests_per_s")),
        "h2_tab_c8_vs_floor": div(g("h2_tab_c8_torchwire", "requests_per_s"), g("h2_tab_c8_floor", "requests_per_s")),
        "h2_tab_c8_vs_python": div(g("h2_tab_c8_torchwire", "requests_per_s"), g("h2_tab_c8_python", "requests_per_s")),
        "h2_tab_c1_vs_floor": div(g("h2_tab_c1_torchwire", "requests_per_s"), g("h2_tab_c1_floor", "requests_per_s")),
        "h2_tab_c1_vs_python": div(g("h2_tab_c1_torchwire", "requests_per_s"), g("h2_tab_c1_python", "requests_per_s")),
        "sent_c1_vs_python": div(g("load_sent_c1_torchwire", "requests_per_s"), g("load_sent_c1_python", "requests_per_s")),
        "sent_c16_vs_raw_b16": div(g("load_sent_c16_torchwire", "requests_per_s"), g("raw_sent_b16", "rows_per_s")),
    }
    tw, fl, raw = g("load_tab_c1_torchwire", "p50_us"), g("load_tab_c1_floor", "p50_us"), g("raw_tab_b1", "forward_p50_us")
    out["tab_c1_p50_gap_us"] = tw - fl - raw if None not in (tw, fl, raw) else None
    fwd, prep = g("raw_sent_b1", "forward_p50_us"), g("raw_sent_b1", "prepare_p50_us")
    out["sent_c1_p50_vs_raw"] = div(g("load_sent_c1_torchwire", "p50_us"), fwd + prep if None not in (fwd, prep) else None)
    ctw, cfl = g("h2_tab_c1_torchwire", "cpu_us_per_req"), g("h2_tab_c1_floor", "cpu_us_per_req")
    out["cpu_us_per_req_torchwire"] = ctw
    out["cpu_us_per_req_floor"] = cfl
    out["cs_per_req_torchwire"] = g("h2_tab_c1_torchwire", "cs_per_req")
    out["cs_per_req_floor"] = g("h2_tab_c1_floor", "cs_per_req")
    out["cpu_gap_us"] = ctw - cfl - raw if None not in (ctw, cfl, raw) else None
    return out


# Target name, key, how it is met, the bound, and its unit, as the report prints them.
TARGETS = [
    ("Tabular 8 clients / floor (torchwire-bench load)", "tab_c8_vs_floor", ">=", 0.8, "x"),
    ("Tabular 8 clients / Python peer (torchwire-bench load)", "tab_c8_vs_python", ">=", 10.0, "x"),
    ("Tabular 1 client / floor (torchwire-bench load)", "tab_c1_vs_floor", ">=", 0.8, "x"),
    ("Tabular 1 client: p50 - floor p50 - raw forward p50", "tab_c1_p50_gap_us", "<=", 25.0, "us"),
    ("Tabular 8 clients / floor (h2load)", "h2_tab_c8_vs_floor", ">=", 0.8, "x"),
    ("Tabular 8 clients / Python peer (h2load)", "h2_tab_c8_vs_python", ">=", 10.0, "x"),
    ("Tabular 1 client / floor (h2load)", "h2_tab_c1_vs_floor", ">=", 0.8, "x"),
    ("Server CPU per tabular request - floor's - raw forward (1 client, h2load, perf stat)", "cpu_gap_us", "<=", 15.0, "us"),
    ("Sentiment 1 client: p50 / (raw forward + tokenisation p50)", "sent_c1_p50_vs_raw", "<=", 1.05, "x"),
    ("Sentiment 1 client / Python peer (req/s)", "sent_c1_vs_python", ">=", 1.1, "x"),
    ("Sentiment 16 clients / raw batch-16 forward (texts/s)", "sent_c16_vs_raw_b16", ">=", 0.9, "x"),
]


def step_pairs(ctx: Context) -> None:
    p = Pairs(ctx)
    if ctx.peers_src is None:
        try:
            ctx.peers_src = servers.find_peers()
        except StepError:
            pass
    with_python = (ctx.peers_venv / "python-grpc/bin/python").exists() and ctx.peers_src is not None
    if not with_python:
        ctx.note_once("pairs: the Python peer is not set up; its ratios are left out")
    if not p.h2load:
        ctx.note_once("pairs: h2load not found (Debian nghttp2-client); its figures are left out")
    try:
        p.start(with_python)
        ctx.R["pairs"] = {"rounds_n": p.rounds, "secs": p.secs, **p.run()}
    finally:
        p.stop()


def table(R: dict) -> list[str]:
    """BENCHMARKS.md's table of the targets: median of the per-round ratios, min, max, met or not."""
    pr = R.get("pairs")
    if not pr:
        return []
    s = pr["summary"]
    fmt = lambda v, unit: "—" if v is None else (f"{v:.1f} µs" if unit == "us" else f"{v:.2f}×")  # noqa: E731
    lines = [f"Interleaved: {pr['rounds_n']} rounds, each measuring every side back to back "
             f"({pr['secs']:g} s load runs, h2load by request count); median of the per-round figures "
             "(min–max).", "",
             "| target | median | min | max | bound | met |", "|---|---:|---:|---:|---:|:---:|"]
    for name, key, op, bound, unit in TARGETS:
        v = s.get(key)
        if not v:
            lines.append(f"| {name} | not measured | | | {op} {fmt(bound, unit)} | — |")
            continue
        met = v["median"] >= bound if op == ">=" else v["median"] <= bound
        lines.append(f"| {name} | {fmt(v['median'], unit)} | {fmt(v['min'], unit)} | {fmt(v['max'], unit)} | "
                     f"{op} {fmt(bound, unit)} | {'yes' if met else '**no**'} |")
    cpu = {k: s.get(k) for k in ("cpu_us_per_req_torchwire", "cpu_us_per_req_floor", "cs_per_req_torchwire",
                                 "cs_per_req_floor")}
    if all(cpu.values()):
        lines += ["", f"Server CPU per request at 1 client (h2load, `perf stat -e task-clock,context-switches`): "
                  f"torchwire {cpu['cpu_us_per_req_torchwire']['median']:.1f} µs and "
                  f"{cpu['cs_per_req_torchwire']['median']:.2f} context switches, floor "
                  f"{cpu['cpu_us_per_req_floor']['median']:.1f} µs and {cpu['cs_per_req_floor']['median']:.2f} "
                  "(medians of the rounds)."]
    return lines

"""Issue 17's target in interleaved rounds: tabular Predict over HTTP/1.1 keep-alive JSON at 8 clients,
against the same torchwire's gRPC Predict and against TorchServe's REST API on the same model; 8
connections with one request in flight each. Each ratio compares two sides measured by the same client:
HTTP against gRPC with h2load (Debian `nghttp2-client`; `--h1` for HTTP/1.1 keep-alive, h2 with a
hand-encoded gRPC frame for gRPC), HTTP against TorchServe with wrk (Debian `wrk`; h2load counts every
TorchServe answer as failed: its status lines have no reason phrase). Each round measures every side
back to back, so a host whose speed drifts slows both sides of a ratio alike; a target is the median of
the per-round ratios, with their min and max.

Every side sends the same one row of 0.5s: torchwire JSON as a `PredictRequest` tensor (and, as an extra
column, as named-feature `rows`), KServe v2 REST JSON, the gRPC frame, and TorchServe's handler body
`{"features": [...]}`.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from . import servers
from .context import Context
from .pairs import GRPC_HEADERS, TW_PREDICT, frame_file, ratio_summary
from .plan import CLIENT_CPU, PEER_TAB, ROOT, TAB_MODEL, StepError
from .wire import tw_predict

JSON_HEADERS = ["-H", "content-type: application/json"]
CONC = 8


class HttpPairs:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.secs = 1.0 if ctx.args.quick else 2.0
        self.rounds = 2 if ctx.args.quick else max(5, ctx.args.pairs or 5)
        self.h2load = shutil.which("h2load")
        name, feats = ctx.model_input(TAB_MODEL)
        row = [0.5] * feats
        features = feature_names(TAB_MODEL)
        self.sides: dict[str, tuple[str, list[str], str]] = {}  # key -> (body file, headers, path)
        tensor = {"inputs": [{"name": name, "dtype": "FLOAT32", "shape": ["1", str(feats)], "floatData": row}]}
        self.add("http_v1", json.dumps(tensor), f"/v1/models/{TAB_MODEL}:predict")
        if len(features) == feats:
            rows = {"rows": [{"features": dict(zip(features, row))}]}
            self.add("http_v1_rows", json.dumps(rows), f"/v1/models/{TAB_MODEL}:predict")
        v2 = {"inputs": [{"name": name, "shape": [1, feats], "datatype": "FP32", "data": row}]}
        self.add("http_v2", json.dumps(v2), f"/v2/models/{TAB_MODEL}/infer")
        self.add("torchserve", json.dumps({"features": row}), f"/predictions/{PEER_TAB}")
        self.sides["http_v1_wrk"] = self.sides["http_v1"]
        self.wrk = shutil.which("wrk")
        self.lua = ctx.tmp / "post.lua"
        self.lua.write_text('wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
                            'local f = io.open(os.getenv("BODY"), "rb")\nwrk.body = f:read("*a")\nf:close()\n')
        grpc = frame_file(ctx, "http_grpc_predict", tw_predict(TAB_MODEL, name, feats))
        self.sides["grpc"] = (str(grpc), GRPC_HEADERS, TW_PREDICT)
        self.ports: dict[str, int] = {}
        self.procs: list = []

    def add(self, key: str, body: str, path: str) -> None:
        f = self.ctx.tmp / f"{key}.json"
        f.write_text(body)
        self.sides[key] = (str(f), JSON_HEADERS, path)

    def start(self, with_torchserve: bool) -> None:
        s, port, _ = servers.start_torchwire(self.ctx, "http-torchwire")
        self.procs.append(s)
        for key in ("grpc", "http_v1", "http_v1_rows", "http_v2") + (("http_v1_wrk",) if self.wrk else ()):
            self.ports[key] = port
        if with_torchserve and self.wrk:
            ts, ports, _ = servers.start_torchserve(self.ctx, "http-torchserve", "config.properties")
            self.procs.append(ts)
            self.ports["torchserve"] = ports[8080]
        # First requests load the model (and time the fast path) before anything is measured.
        for key in self.ports:
            self.measure(key, warm_up=True)

    def stop(self) -> None:
        for s in self.procs:
            s.stop()

    def measure(self, key: str, warm_up: bool = False) -> dict:
        if key in ("torchserve", "http_v1_wrk"):
            return self.wrk_run(key, 1 if warm_up else self.secs)
        return self.h2(key, n=20 if warm_up else None)

    def wrk_run(self, key: str, secs: float) -> dict:
        """wrk against one side for `secs` (its first connections' set-up included)."""
        body, _, path = self.sides[key]
        cmd = self.ctx.taskset(CLIENT_CPU) + [self.wrk, "-t1", "-c", str(CONC), "-d", f"{max(1, round(secs))}s", "-s",
                                              str(self.lua), f"http://127.0.0.1:{self.ports[key]}{path}"]
        text = self.ctx.run_cmd(f"http wrk {key}", cmd, timeout=120, env=dict(os.environ, BODY=body)).stdout
        rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text) or re.search(r"Socket errors: .*", text)
        if not rps or bad:
            raise StepError(f"wrk {key}: {text[-600:]}")
        return {"requests_per_s": float(rps.group(1))}

    def h2(self, key: str, n: int | None = None) -> dict:
        """h2load against one side: `n` requests, or the run's seconds after 0.5 s of warm-up."""
        body, headers, path = self.sides[key]
        count = ["-n", str(n)] if n else ["-D", f"{int(self.secs * 1000)}ms", "--warm-up-time", "500ms"]
        h1 = [] if key == "grpc" else ["--h1"]
        cmd = self.ctx.taskset(CLIENT_CPU) + [self.h2load, *h1, *count, "-c", str(CONC), "-m", "1", "-d", body,
                                              *headers, f"http://127.0.0.1:{self.ports[key]}{path}"]
        text = self.ctx.run_cmd(f"http h2load {key}", cmd, timeout=120).stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
        rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        if not (done and rps) or done.group(1) != done.group(2) or (codes and sum(map(int, codes.groups()[1:]))):
            raise StepError(f"h2load {key}: {text[-600:]}")
        return {"requests_per_s": float(rps.group(1)), "done": int(done.group(1))}

    def run(self) -> dict:
        runs = []
        keys = list(self.ports)
        for r in range(self.rounds):
            # Rotate the order, so no side always runs first in a round.
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            rec = {key: self.measure(key) for key in order}
            runs.append(rec)
            self.ctx.log(f"http round {r + 1}/{self.rounds}: " + ", ".join(
                f"{k} {v['requests_per_s']:.0f} req/s" for k, v in rec.items()))
        per_round = [ratios(rec) for rec in runs]
        names = sorted({k for pr in per_round for k in pr})
        rps = {k: ratio_summary([rec[k]["requests_per_s"] for rec in runs]) for k in keys}
        return {"rounds": runs, "per_round": per_round, "requests_per_s": rps,
                "summary": {k: ratio_summary([pr.get(k) for pr in per_round]) for k in names}}


def feature_names(model: str) -> list[str]:
    """The named features of the model's first input, from its manifest."""
    text = (ROOT / "models" / model / "model.toml").read_text()
    return re.findall(r'\{\s*name\s*=\s*"([^"]+)"\s*,\s*unit', text)


def ratios(rec: dict) -> dict:
    rps = lambda k: rec.get(k, {}).get("requests_per_s")  # noqa: E731
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    return {
        "http_vs_grpc": div(rps("http_v1"), rps("grpc")),
        "http_rows_vs_grpc": div(rps("http_v1_rows"), rps("grpc")),
        "http_v2_vs_grpc": div(rps("http_v2"), rps("grpc")),
        "http_vs_torchserve": div(rps("http_v1_wrk"), rps("torchserve")),
    }


TARGETS = [
    ("HTTP/1.1 JSON Predict (/v1, tensor) / gRPC Predict, same server (h2load)", "http_vs_grpc", 0.5),
    ("HTTP/1.1 JSON Predict (/v1, named-feature rows) / gRPC Predict (h2load)", "http_rows_vs_grpc", 0.5),
    ("HTTP/1.1 KServe v2 REST infer / gRPC Predict (h2load)", "http_v2_vs_grpc", 0.5),
    ("HTTP/1.1 JSON Predict (/v1, tensor) / TorchServe REST (wrk)", "http_vs_torchserve", 5.0),
]


def step_http(ctx: Context) -> None:
    p = HttpPairs(ctx)
    if not p.h2load:
        raise StepError("h2load not found (Debian nghttp2-client: scripts/setup-system.sh)")
    if ctx.peers_src is None:
        try:
            ctx.peers_src = servers.find_peers()
        except StepError:
            pass
    with_ts = (ctx.peers_venv / "torchserve/bin/torchserve").exists() and ctx.peers_src is not None
    if not with_ts:
        ctx.note_once("http: TorchServe is not set up; its ratios are left out")
    if not p.wrk:
        ctx.note_once("http: wrk not found (Debian wrk: scripts/setup-system.sh); the TorchServe ratio is left out")
    try:
        p.start(with_ts)
        ctx.R["http"] = {"rounds_n": p.rounds, "secs": p.secs, "clients": CONC, **p.run()}
    finally:
        p.stop()


def table(R: dict) -> list[str]:
    """BENCHMARKS.md's table for issue 17: median of the per-round ratios (min–max), met or not."""
    h = R.get("http")
    if not h:
        return []
    lines = [f"{h['clients']} keep-alive connections with one request in flight each, {h['rounds_n']} interleaved "
             f"rounds of {h['secs']:g} s per side; each ratio's two sides measured by the same client (h2load or "
             "wrk); median of the per-round ratios (min–max).", "",
             "| target | median | min | max | bound | met |", "|---|---:|---:|---:|---:|:---:|"]
    for name, key, bound in TARGETS:
        v = h["summary"].get(key)
        if not v:
            lines.append(f"| {name} | not measured | | | ≥ {bound:g}× | — |")
            continue
        lines.append(f"| {name} | {v['median']:.2f}× | {v['min']:.2f}× | {v['max']:.2f}× | ≥ {bound:g}× | "
                     f"{'yes' if v['median'] >= bound else '**no**'} |")
    shown = ", ".join(f"{k} {v['median']:,.0f}" for k, v in h["requests_per_s"].items() if v)
    lines += ["", f"Requests per second (medians of the rounds): {shown}."]
    return lines

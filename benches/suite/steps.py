"""The measured steps, one per part of `--only`: the raw forward pass (`torchwire-bench raw`), and for
each server the lifecycle (cold start, first requests, RSS) and the load scenarios
(`torchwire-bench load`, closed loop, on the client core). Each step appends what it measured to
ctx.R; a failure raises StepError, which the runner records and moves past.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable

from . import servers
from .context import Context
from .plan import (CLIENT_CPU, LONG_TEXTS, PEER_TAB, PEER_TEXT, ROOT, SCENARIOS, SERVER_CPU, SERVER_SCENARIOS,
                   SHORT_TEXT, TAB_MODEL, TEXT_MODEL, Scenario, StepError)
from .report import fmt_num, fmt_range, fmt_us, mb, med, summarize
from .wire import py_classify, py_predict, tw_predict, tw_sentiment

TW_PREDICT, TW_SENTIMENT = "/torchwire.v1.Inference/Predict", "/torchwire.v1.Inference/Sentiment"
PY_PREDICT, PY_CLASSIFY = "/serving.v1.Predictor/Predict", "/serving.v1.Predictor/ClassifyText"


# ---------------------------------------------------------------------------------------------
# The raw forward pass

def step_raw(ctx: Context) -> None:
    q = ctx.args.quick
    plans = [
        ("tabular", TAB_MODEL, "1,32", 200 if q else 2000, None),
        ("sentiment", TEXT_MODEL, "1,8,16", 10 if q else 50, None),
        ("sentiment128", TEXT_MODEL, "1,4", 5 if q else 25, LONG_TEXTS[0]),
    ]
    for key, model, batches, iters, text in plans:
        runs: dict[int, list[dict]] = {}
        for _ in range(ctx.reps):
            cmd = ctx.taskset(SERVER_CPU) + [ctx.bench_bin, "raw", "--model-dir", ROOT / "models", "--model", model,
                                             "--batch", batches, "--iters", str(iters), "--threads", "1", "--json"]
            if text:
                cmd += ["--text", text]
            try:
                p = ctx.run_cmd(f"raw {key}", cmd, timeout=300)
            except StepError as e:
                ctx.error(f"raw:{key}", e)
                break
            for line in p.stdout.splitlines():
                if line.startswith("{"):
                    j = json.loads(line)
                    runs.setdefault(int(j["batch"]), []).append(j)
        for batch, rs in sorted(runs.items()):
            ctx.R["raw"][f"{key}/b{batch}"] = {
                "model": model, "batch": batch, "text": "long" if text else ("short" if key != "tabular" else None),
                "runs": rs, "summary": {k: summarize([r.get(k) for r in rs])
                                        for k in ("forward_p50_us", "forward_p99_us", "prepare_p50_us", "rows_per_s")}}
            s = ctx.R["raw"][f"{key}/b{batch}"]["summary"]
            ctx.log(f"raw {key} batch {batch}: forward p50 {fmt_us(med(s['forward_p50_us']))}, "
                    f"{fmt_num(med(s['rows_per_s']), 1)} rows/s")
    step_formats(ctx)


def step_formats(ctx: Context) -> None:
    """TorchScript against the AOTInductor package of the same version (issue 20), in-process,
    in interleaved rounds (`torchwire-bench raw --compare-formats`): the tabular model at batch
    1 and 32, Sentiment at 1 and 16. Skipped for a model built without a model.pt2."""
    q = ctx.args.quick
    for key, model, batches, iters in [("tabular", TAB_MODEL, "1,32", 200 if q else 2000),
                                        ("sentiment", TEXT_MODEL, "1,16", 10 if q else 50)]:
        cmd = ctx.taskset(SERVER_CPU) + [ctx.bench_bin, "raw", "--model-dir", ROOT / "models", "--model", model,
                                         "--batch", batches, "--iters", str(iters), "--threads", "1",
                                         "--compare-formats", "--rounds", "3" if q else "5", "--json"]
        try:
            p = ctx.run_cmd(f"formats {key}", cmd, timeout=600)
        except StepError as e:
            ctx.error(f"formats:{key}", e)
            continue
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                j = json.loads(line)
                ctx.R.setdefault("formats", {})[f"{key}/b{j['batch']}"] = {"model": model, **j}
                ctx.log(f"formats {key} batch {j['batch']}: pt2/torchscript {j['pt2_over_torchscript_median']:.2f}")


# ---------------------------------------------------------------------------------------------
# Load

def load(ctx: Context, server_key: str, port: int, target: str, sc: Scenario, server: servers.Server) -> None:
    """One scenario against a running server, ctx.reps times; the load generator's JSON per repetition."""
    tab = sc.rpc == "predict"
    if target in ("python", "torchserve"):
        model = PEER_TAB if tab else PEER_TEXT
    else:
        model = TAB_MODEL if tab else TEXT_MODEL
    cmd = ctx.taskset(CLIENT_CPU) + [
        ctx.bench_bin, "load", "--addr", f"http://127.0.0.1:{port}", "--rpc", sc.rpc, "--model", model,
        "--concurrency", str(sc.concurrency), "--duration", f"{ctx.duration:g}", "--warmup", f"{ctx.warmup:g}",
        "--rows", str(sc.rows), "--json", "--target", target]
    if tab and server_key != "torchwire":
        cmd += ["--features", str(ctx.tab_features)]
    if sc.long:
        cmd += ["--text-file", ctx.text_file]
    entry = ctx.R["load"].setdefault(server_key, {}).setdefault(sc.key, {
        "group": sc.group, "rpc": sc.rpc, "concurrency": sc.concurrency, "rows": sc.rows, "runs": [], "errors": []})
    for rep in range(ctx.reps):
        if not server.alive():
            raise StepError(f"{server.name} exited (rc {server.proc.returncode}); log tail:\n{server.tail()}")
        try:
            p = ctx.run_cmd(f"{server_key} {sc.key}", cmd, timeout=ctx.duration + ctx.warmup + 60)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if not line:
                raise StepError(f"no JSON from the load generator: {p.stdout[-300:]} {p.stderr[-300:]}")
            j = json.loads(line[-1])
            codes = j.get("codes") or {}
            j.setdefault("errors", sum(v for k, v in codes.items() if k.upper() != "OK"))
            if not j.get("requests_per_s"):
                raise StepError(f"no request answered OK in {ctx.duration:g} s (codes {codes}); run: {line[-1][:300]}")
            entry["runs"].append(j)
        except StepError as e:
            entry["errors"].append(str(e))
            ctx.log(f"  {server_key} {sc.key} rep {rep + 1}: {e}")
    rs = entry["runs"]
    entry["summary"] = {k: summarize([r.get(k) for r in rs]) for k in
                        ("requests_per_s", "rows_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "errors")}
    s = entry["summary"]
    errs = sum(r.get("errors", 0) for r in rs)
    ctx.log(f"{server_key:<16} {sc.key:<11} {fmt_range(s['requests_per_s'], 0):>28} req/s  "
            f"p50 {fmt_us(med(s['p50_us'])):>9}  p99 {fmt_us(med(s['p99_us'])):>9}"
            + (f"  ({errs} request errors)" if errs else ""))


def run_load(ctx: Context, server_key: str, port: int, target: str, server: servers.Server) -> None:
    for sc in SCENARIOS:
        if sc.group in SERVER_SCENARIOS[server_key] and ctx.selected(sc):
            load(ctx, server_key, port, target, sc, server)


def prime(ctx: Context, server_key: str, sentiment: Callable[[str], bool], predict: Callable[[], bool]) -> None:
    """A few sequential requests to each model before the load runs, so that no server's first
    measured seconds pay model loading or TorchScript's profiling runs (the warm-up of each
    repetition then starts from a warm server for every peer alike)."""
    t0, failed, n = time.perf_counter(), 0, 0
    for call in [predict] * 3 + [lambda: sentiment(SHORT_TEXT)] * 3 + [lambda t=t: sentiment(t) for t in LONG_TEXTS]:
        try:
            failed += not call()
        except OSError:
            failed += 1
        n += 1
    codes = ctx.R["grpc_errors"].get(server_key)
    ctx.log(f"{server_key}: primed with {n} sequential requests in {time.perf_counter() - t0:.2f} s"
            + (f" ({failed} failed{': ' + str(codes) if codes else ''})" if failed else ""))


def ts_post(url: str, body: dict) -> bool:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


# ---------------------------------------------------------------------------------------------
# torchwire and the floor

def torchwire_lifecycle(ctx: Context, rep: int, tab_input: str) -> None:
    """One cold start: idle RSS, first Predict and Sentiment (each loads its model), then one request
    to every other bundled model and the RSS with all of them loaded."""
    models = sorted(p.parent.name for p in (ROOT / "models").glob("*/model.toml"))
    s, port, cold = servers.start_torchwire(ctx, "torchwire-cold", ["--max-loaded-models", str(max(5, len(models)))])
    try:
        time.sleep(0.5)
        run = {"cold_start_s": cold, "idle_rss_kb": s.rss()["rss_kb"]}
        r = ctx.grpc("torchwire", port, TW_PREDICT, tw_predict(TAB_MODEL, tab_input, ctx.tab_features))
        run["first_predict_ms"] = r.elapsed * 1000 if r.ok else None
        r = ctx.grpc("torchwire", port, TW_SENTIMENT, tw_sentiment(TEXT_MODEL, SHORT_TEXT))
        run["first_sentiment_ms"] = r.elapsed * 1000 if r.ok else None
        run["rss_two_models_kb"] = s.rss()["rss_kb"]
        loaded = [TAB_MODEL, TEXT_MODEL]
        for m in models:
            if m in loaded:
                continue
            if 'kind = "text-classification"' in (ROOT / "models" / m / "model.toml").read_text():
                r = ctx.grpc("torchwire", port, TW_SENTIMENT, tw_sentiment(m, SHORT_TEXT))
            else:
                name, n = ctx.model_input(m)
                r = ctx.grpc("torchwire", port, TW_PREDICT, tw_predict(m, name, n))
            if r.ok:
                loaded.append(m)
            else:
                ctx.note_once(f"torchwire: the request to model {m} failed ({r.code}); not counted as loaded")
        run["all_loaded_rss_kb"], run["all_loaded_models"] = s.rss()["rss_kb"], loaded
        ctx.R["lifecycle"]["torchwire"]["runs"].append(run)
        ctx.log(f"torchwire lifecycle rep {rep + 1}: cold start {cold * 1000:.0f} ms, idle RSS "
                f"{mb(run['idle_rss_kb'])} MB, first Predict {fmt_num(run['first_predict_ms'], 1)} ms, "
                f"first Sentiment {fmt_num(run['first_sentiment_ms'], 1)} ms, RSS with {len(loaded)} models "
                f"{mb(run['all_loaded_rss_kb'])} MB")
    finally:
        s.stop()


def step_torchwire(ctx: Context) -> None:
    tab_input, feats = ctx.model_input(TAB_MODEL)
    ctx.R["lifecycle"].setdefault("torchwire", {"runs": []})
    if ctx.lifecycle:
        for rep in range(ctx.reps):
            torchwire_lifecycle(ctx, rep, tab_input)
    if not ctx.wants_load("torchwire"):
        return
    s, port, _ = servers.start_torchwire(ctx, "torchwire")
    try:
        prime(ctx, "torchwire",
              lambda text: ctx.grpc("torchwire", port, TW_SENTIMENT, tw_sentiment(TEXT_MODEL, text)).ok,
              lambda: ctx.grpc("torchwire", port, TW_PREDICT, tw_predict(TAB_MODEL, tab_input, feats)).ok)
        run_load(ctx, "torchwire", port, "torchwire", s)
    finally:
        s.stop()


def step_floor(ctx: Context) -> None:
    if not ctx.wants_load("floor"):
        return
    s, port = servers.start_floor(ctx)
    try:
        run_load(ctx, "floor", port, "torchwire", s)
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------
# Peers

def step_python(ctx: Context) -> None:
    feats = ctx.tab_features
    life = ctx.R["lifecycle"].setdefault("python", {"runs": []})
    if ctx.lifecycle:
        for rep in range(ctx.reps):
            s, port, cold = servers.start_python(ctx, "python-cold")
            try:
                time.sleep(0.5)
                run = {"cold_start_s": cold, "idle_rss_kb": s.rss(tree=True)["rss_kb"]}
                r = ctx.grpc("python", port, PY_PREDICT, py_predict(PEER_TAB, feats))
                run["first_predict_ms"] = r.elapsed * 1000 if r.ok else None
                r = ctx.grpc("python", port, PY_CLASSIFY, py_classify(PEER_TEXT, SHORT_TEXT))
                run["first_sentiment_ms"] = r.elapsed * 1000 if r.ok else None
                run["all_loaded_rss_kb"], run["all_loaded_models"] = s.rss(tree=True)["rss_kb"], [TAB_MODEL, TEXT_MODEL]
                life["runs"].append(run)
                ctx.log(f"python lifecycle rep {rep + 1}: cold start {cold:.2f} s, RSS {mb(run['idle_rss_kb'])} MB "
                        f"(both models load at start)")
            finally:
                s.stop()
    if not ctx.wants_load("python"):
        return
    s, port, _ = servers.start_python(ctx, "python")
    try:
        prime(ctx, "python", lambda text: ctx.grpc("python", port, PY_CLASSIFY, py_classify(PEER_TEXT, text)).ok,
              lambda: ctx.grpc("python", port, PY_PREDICT, py_predict(PEER_TAB, feats)).ok)
        run_load(ctx, "python", port, "python", s)
    finally:
        s.stop()


def torchserve_lifecycle(ctx: Context, rep: int) -> None:
    """One cold start of TorchServe: RSS of the JVM and its workers (not the launcher), first requests."""
    s, ports, cold = servers.start_torchserve(ctx, "torchserve-cold", "config.properties")
    try:
        time.sleep(0.5)
        tree = s.rss(tree=True)
        launcher = tree["processes"][0]["rss_kb"]  # the `torchserve --foreground` CLI that waits on java
        run = {"cold_start_s": cold, "idle_rss_kb": tree["rss_kb"] - launcher, "launcher_rss_kb": launcher,
               "processes": tree["processes"]}
        base = f"http://127.0.0.1:{ports[8080]}/predictions"
        for name, body, k in ((PEER_TAB, {"features": [0.5] * ctx.tab_features}, "first_predict_ms"),
                              (PEER_TEXT, {"texts": [SHORT_TEXT]}, "first_sentiment_ms")):
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(f"{base}/{name}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=30).read()
                run[k] = (time.perf_counter() - t0) * 1000
            except (OSError, urllib.error.URLError) as e:
                run[k] = None
                ctx.note_once(f"TorchServe first request to {name} failed: {e}")
        run["all_loaded_rss_kb"] = s.rss(tree=True)["rss_kb"] - launcher
        run["all_loaded_models"] = [TAB_MODEL, TEXT_MODEL]
        ctx.R["lifecycle"]["torchserve"]["runs"].append(run)
        ctx.log(f"torchserve lifecycle rep {rep + 1}: cold start {cold:.2f} s, RSS {mb(run['idle_rss_kb'])} MB "
                f"(java + workers, {len(tree['processes']) - 1} processes; both models load at start)")
    finally:
        s.stop()


def step_torchserve(ctx: Context, batch: bool = False) -> None:
    key = "torchserve-batch" if batch else "torchserve"
    if not batch and ctx.lifecycle:
        ctx.R["lifecycle"].setdefault(key, {"runs": []})
        for rep in range(ctx.reps):
            torchserve_lifecycle(ctx, rep)
    if not ctx.wants_load(key):
        return
    s, ports, _ = servers.start_torchserve(ctx, key, "config_batch.properties" if batch else "config.properties")
    try:
        base = f"http://127.0.0.1:{ports[8080]}/predictions"
        prime(ctx, key, lambda text: ts_post(f"{base}/{PEER_TEXT}", {"texts": [text]}),
              lambda: ts_post(f"{base}/{PEER_TAB}", {"features": [0.5] * ctx.tab_features}))
        run_load(ctx, key, ports[7070], "torchserve", s)
    finally:
        s.stop()

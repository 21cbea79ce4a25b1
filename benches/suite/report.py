"""What a run produced, written out: summaries (median, min, max across repetitions), the targets of the
issue (met or missed), the chart data and its PNG (`torchwire-bench chart`), the results JSON, and the
tables of BENCHMARKS.md's suite region (between the `suite:begin` and `suite:end` markers), or a
separate .md for quick and partial runs.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import textwrap
import time
from pathlib import Path

from .context import Context
from .plan import (CLIENT_CPU, GROUP_TITLE, ROOT, SCENARIOS, SERVER_CPU, SERVER_LABEL, SERVER_SCENARIOS, TAB_MODEL,
                   StepError)

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


# ---------------------------------------------------------------------------------------------
# Statistics and number formats

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
# Results

def load_sum(ctx: Context, server: str, sc: str, metric: str = "requests_per_s") -> dict | None:
    return ((ctx.R["load"].get(server) or {}).get(sc) or {}).get("summary", {}).get(metric)


def raw_sum(ctx: Context, key: str, metric: str) -> dict | None:
    return (ctx.R["raw"].get(key) or {}).get("summary", {}).get(metric)


def summarize_lifecycle(ctx: Context) -> None:
    for srv, life in ctx.R["lifecycle"].items():
        runs = life["runs"]
        life["summary"] = {k: summarize([r.get(k) for r in runs]) for k in
                           ("cold_start_s", "idle_rss_kb", "first_predict_ms", "first_sentiment_ms", "all_loaded_rss_kb")}


def targets(ctx: Context) -> list[dict]:
    T = []

    def ratio(name: str, goal: str, num, den, want: float, what: str) -> None:
        n, d = med(num), med(den)
        r = n / d if n is not None and d else None
        T.append({"target": name, "goal": goal, "measured": what.format(n=n, d=d) if r is not None else None,
                  "value": r, "met": None if r is None else r >= want})

    tw8 = load_sum(ctx, "torchwire", "tab-c8")
    ratio("Tabular c=8 req/s vs Python peer", "≥ 10×", tw8, load_sum(ctx, "python", "tab-c8"), 10,
          "{n:,.0f} / {d:,.0f} req/s")
    ratio("Tabular c=8 req/s vs TorchServe", "≥ 20×", tw8, load_sum(ctx, "torchserve", "tab-c8"), 20,
          "{n:,.0f} / {d:,.0f} req/s")
    ratio("Tabular c=8 req/s vs the floor server", "≥ 0.8×", tw8, load_sum(ctx, "floor", "tab-c8"), 0.8,
          "{n:,.0f} / {d:,.0f} req/s")
    p_tw, p_fl = med(load_sum(ctx, "torchwire", "tab-c1", "p50_us")), med(load_sum(ctx, "floor", "tab-c1", "p50_us"))
    p_raw = med(raw_sum(ctx, "tabular/b1", "forward_p50_us"))
    ov = p_tw - p_fl - p_raw if None not in (p_tw, p_fl, p_raw) else None
    T.append({"target": "Server overhead at c=1: torchwire p50 − floor p50 − raw forward p50 (batch 1)",
              "goal": "≤ 50 µs", "value": ov, "met": None if ov is None else ov <= 50,
              "measured": None if ov is None else f"{p_tw:.0f} − {p_fl:.0f} − {p_raw:.0f} = {ov:.0f} µs"})
    best = max((raw_sum(ctx, f"sentiment/b{b}", "rows_per_s") or {"median": 0} for b in (8, 16)),
               key=lambda s: s["median"])
    tw16 = load_sum(ctx, "torchwire", "sent-c16")
    ratio("Sentiment c=16 req/s vs the raw batched forward pass (best of batch 8/16, texts/s)", "≥ 0.9×",
          tw16, best if best["median"] else None, 0.9, "{n:,.1f} / {d:,.1f} texts/s")
    ratio("Sentiment c=16 req/s vs Python peer", "≥ 2×", tw16, load_sum(ctx, "python", "sent-c16"), 2,
          "{n:,.1f} / {d:,.1f} req/s")
    life = (ctx.R["lifecycle"].get("torchwire") or {}).get("summary", {})
    cs = med(life.get("cold_start_s"))
    T.append({"target": "Cold start (exec → first SERVING health answer)", "goal": "≤ 0.5 s", "value": cs,
              "measured": None if cs is None else f"{cs * 1000:.0f} ms", "met": None if cs is None else cs <= 0.5})
    rss = med(life.get("idle_rss_kb"))
    mb = None if rss is None else rss * 1024 / 1e6
    T.append({"target": "Idle RSS (after start, no request)", "goal": "≤ 150 MB", "value": mb,
              "measured": None if mb is None else f"{mb:.0f} MB", "met": None if mb is None else mb <= 150})
    return T


def chart(ctx: Context) -> dict:
    def series(server: str, keys: list[tuple[int, str]], metric: str = "requests_per_s") -> dict | None:
        pts = []
        for x, sc in keys:
            s = load_sum(ctx, server, sc, metric)
            if s:
                pts.append([x, s["median"], s["min"], s["max"]])
        return {"label": SERVER_LABEL[server], "points": pts} if pts else None

    tab = [(1, "tab-c1"), (8, "tab-c8"), (64, "tab-c64")]
    sent = [(1, "sent-c1"), (4, "sent-c4"), (16, "sent-c16"), (64, "sent-c64")]
    limits = []
    best = [(b, med(raw_sum(ctx, f"sentiment/b{b}", "rows_per_s"))) for b in (8, 16)]
    best = [x for x in best if x[1]]
    if best:
        b, v = max(best, key=lambda x: x[1])
        limits.append({"label": f"raw forward, batch {b} (texts/s)", "y": v})
    b1 = med(raw_sum(ctx, "sentiment/b1", "rows_per_s"))
    if b1:
        limits.append({"label": "raw forward, batch 1 (texts/s)", "y": b1})
    return {
        "title": f"torchwire vs limits and peers — {ctx.R['machine']['cpu_model']}, server on 1 core ({ctx.date})",
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


def finish(ctx: Context) -> None:
    summarize_lifecycle(ctx)
    ctx.R["targets"] = targets(ctx)
    ctx.R["chart"] = chart(ctx)
    ctx.R["wall_s"] = round(time.perf_counter() - ctx.t_start, 1)
    ctx.R["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    ctx.json_path.write_text(json.dumps(ctx.R, indent=1, ensure_ascii=False) + "\n")
    ctx.log(f"wrote {ctx.json_path.relative_to(ROOT)}")
    png = None
    try:
        ctx.run_cmd("chart", [ctx.bench_bin, "chart", "--results", ctx.json_path, "--out", ctx.png_path], timeout=120)
        png = ctx.png_path
        ctx.log(f"wrote {ctx.png_path.relative_to(ROOT)}")
    except StepError as e:
        ctx.log(f"chart not written: {e}")
    write_markdown(ctx, png)
    for t in ctx.R["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        ctx.log(f"target {t['goal']:>7} {verdict:<12} {t['target']}: {t['measured'] or '–'}")
    if ctx.R["grpc_errors"]:
        ctx.log(f"one-off gRPC calls answered with an error, by code: {ctx.R['grpc_errors']}")
    if ctx.R["errors"]:
        ctx.log(f"{len(ctx.R['errors'])} part(s) failed: {', '.join(ctx.R['errors'])} (see the results file)")


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md

def markdown(ctx: Context, png: Path | None) -> str:
    L = md_header(ctx, png) + md_targets(ctx)
    for group in ("tabular", "tabular32", "sentiment", "sentiment128"):
        L += md_load_table(ctx, group)
    L += md_raw(ctx) + md_formats(ctx) + md_lifecycle(ctx)
    for n in ctx.R["notes"]:
        L.append(para(f"Note: {n}"))
    if ctx.R["notes"]:
        L.append("")
    return "\n".join(L)


def md_header(ctx: Context, png: Path | None) -> list[str]:
    m, v = ctx.R["machine"], ctx.R["versions"]
    rel = lambda p: os.path.relpath(p, ctx.md_path.parent)  # noqa: E731
    L = ["## The suite: torchwire against its limits and peers — `make bench`", ""]
    L.append(para(f"Run {ctx.date} by `make bench` (`benches/suite.py`"
             + (", **quick/partial run**" if ctx.partial else "") + f", {ctx.R['wall_s'] / 60:.1f} min) on "
             f"{m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB, {m['os']}, Linux {m['kernel']}; "
             f"{v['torchwire']} ({v['torchwire_git']}), torch {v['torch']}, TorchServe {v['torchserve']}, "
             f"grpcio {v['grpcio']}, {v['java']}."))
    L.append("")
    L.append(para(f"Servers pinned to core {SERVER_CPU} (their children too), the load generator "
             f"(`torchwire-bench load`, closed loop, one HTTP/2 connection) to core {CLIENT_CPU}; one torch "
             "intra-op thread everywhere: torchwire `--intra-op-threads 1` with its default batching, the Python "
             "peer `--torch-threads 1 --workers 4`, TorchServe with the peers' `config.properties` (one worker per "
             "model, no batching) and `OMP_NUM_THREADS=1`. The floor is `torchwire-bench floor`, a bare tonic "
             "server answering a constant. Every figure is the median of "
             f"{ctx.reps} repetition(s) of {ctx.duration:g} s after {ctx.warmup:g} s of warm-up, "
             "[min–max] across them. Every request, command and repetition: "
             f"[`{rel(ctx.json_path)}`]({rel(ctx.json_path)})."
             + (f" Chart: [`{rel(png)}`]({rel(png)})." if png else "")))
    L.append("")
    if png:
        L += [f"![torchwire vs limits and peers]({rel(png)})", ""]
    if ctx.R["errors"]:
        L.append("Parts that failed in this run:")
        L.append("")
        for k, e in ctx.R["errors"].items():
            L.append(f"- {SERVER_LABEL.get(k, k)}: {e.splitlines()[0][:300]}")
        L.append("")
    if ctx.R["grpc_errors"]:
        shown = "; ".join(f"{SERVER_LABEL.get(k, k)}: " + ", ".join(f"{n:,} {c}" for c, n in codes.items())
                          for k, codes in ctx.R["grpc_errors"].items())
        L += [para(f"One-off gRPC calls (first requests, priming) answered with an error, by grpc-status: {shown}."),
              ""]
    return L


def md_targets(ctx: Context) -> list[str]:
    from .pairs import table
    pairs = table(ctx.R)
    L = (["### Targets of issue 15, measured in interleaved rounds", ""] + pairs + [""]) if pairs else []
    from .http import table as http_table
    web = http_table(ctx.R)
    L += (["### Issue 17: HTTP/JSON against gRPC and TorchServe's REST API, interleaved", ""] + web + [""]) if web else []
    L += ["### Targets from the sequential runs" + (" (single-sided; the ratios above supersede theirs)" if pairs else ""),
          "", "| target | goal | measured | ratio | |", "|---|---|---|---:|---|"]
    for t in ctx.R["targets"]:
        val = t["value"]
        shown = f"{val:.2f}×" if val is not None and t["goal"].endswith("×") else ""
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        L.append(f"| {t['target']} | {t['goal']} | {t['measured'] or '–'} | {shown} | {verdict} |")
    L.append("")
    return L


def md_load_table(ctx: Context, group: str) -> list[str]:
    """One scenario group's table: a row per (concurrency, server) measured or failed."""
    rows = []
    for sc in (s for s in SCENARIOS if s.group == group):
        for srv in ["torchwire", "floor", "python", "torchserve", "torchserve-batch"]:
            if group not in SERVER_SCENARIOS[srv]:
                continue
            e = (ctx.R["load"].get(srv) or {}).get(sc.key)
            if e and e.get("runs"):
                rows.append(md_load_row(sc, srv, e))
            elif e and e.get("errors"):
                rows.append(f"| {sc.concurrency} | {SERVER_LABEL[srv]} | failed: {e['errors'][0].splitlines()[0][:120]} | | | |")
            elif srv in ctx.R["errors"]:
                rows.append(f"| {sc.concurrency} | {SERVER_LABEL[srv]} | not measured (failed, see above) | | | |")
    if not rows:
        return []
    col = "rows/s" if group == "tabular32" else "req/s"
    L = [f"### {GROUP_TITLE[group]}", "",
         f"| concurrency | server | {col} median [min–max] | p50 | p99 | failed requests (all repetitions) |",
         "|---:|---|---:|---:|---:|---:|"] + rows + [""]
    st = ctx.R["settings"]
    if group == "sentiment128" and st.get("long_text_tokens"):
        L += [para(f"Long texts: {', '.join(map(str, st['long_text_tokens']))} tokens (special tokens "
                   f"included); the short sentence {st.get('short_text_tokens', '?')}."), ""]
    return L


def md_load_row(sc, srv: str, e: dict) -> str:
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
    return (f"| {sc.concurrency} | {SERVER_LABEL[srv]} | {rate} | {fmt_us(med(s['p50_us']))} | "
            f"{fmt_us(med(s['p99_us']))} | {errs} |")


def md_raw(ctx: Context) -> list[str]:
    if not ctx.R["raw"]:
        return []
    L = [f"### Limits: raw forward pass in-process (`torchwire-bench raw`, 1 thread, core {SERVER_CPU})", "",
         "| model | input | batch | forward p50 | forward p99 | prepare p50 | rows or texts/s |",
         "|---|---|---:|---:|---:|---:|---:|"]
    for key, r in ctx.R["raw"].items():
        s = r["summary"]
        inp = {"tabular": f"{ctx.tab_features} float32", "sentiment": "~12-token sentence",
               "sentiment128": "~126-token review"}[key.split("/")[0]]
        L.append(f"| `{r['model']}` | {inp} | {r['batch']} | {fmt_us(med(s['forward_p50_us']))} | "
                 f"{fmt_us(med(s['forward_p99_us']))} | {fmt_us(med(s['prepare_p50_us']))} | "
                 f"{fmt_range(s['rows_per_s'], 1)} |")
    L.append("")
    return L


def md_formats(ctx: Context) -> list[str]:
    rows = ctx.R.get("formats") or {}
    if not rows:
        return []
    L = [f"### TorchScript vs AOTInductor `.pt2` (`torchwire-bench raw --compare-formats`, 1 thread, core {SERVER_CPU})",
         "", "Per interleaved round, the median forward pass of each format; the ratio is the median of the rounds'.", "",
         "| model | batch | TorchScript p50 per round | .pt2 p50 per round | .pt2 / TorchScript |", "|---|---:|---|---|---:|"]
    for r in rows.values():
        us = lambda v: ", ".join(fmt_us(x) for x in v)  # noqa: E731
        L.append(f"| `{r['model']}` | {r['batch']} | {us(r['torchscript_p50_us'])} | {us(r['pt2_p50_us'])} | "
                 f"{r['pt2_over_torchscript_median']:.2f} |")
    L.append("")
    return L


def md_lifecycle(ctx: Context) -> list[str]:
    if not ctx.R["lifecycle"]:
        return []
    L = ["### Start-up and memory", "",
         "| server | cold start (exec → serving) | first Predict | first Sentiment | idle RSS | RSS, models loaded |",
         "|---|---:|---:|---:|---:|---:|"]
    for srv in ("torchwire", "python", "torchserve"):
        life = ctx.R["lifecycle"].get(srv)
        if not life or not life["runs"]:
            if srv in ctx.R["errors"]:
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
    return L


def write_markdown(ctx: Context, png: Path | None) -> None:
    region = markdown(ctx, png)
    if ctx.md_path.name != "BENCHMARKS.md":
        ctx.md_path.write_text(region + "\n")
        ctx.log(f"wrote {ctx.md_path.relative_to(ROOT)} (a quick/partial run leaves BENCHMARKS.md alone)")
        return
    doc = ctx.md_path.read_text() if ctx.md_path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{region}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:  # after the title and its intro paragraph
        m = re.search(r"\n## ", doc)
        cut = m.start() + 1 if m else len(doc)
        doc = doc[:cut] + block + "\n\n" + doc[cut:]
    ctx.md_path.write_text(doc)
    ctx.log("updated BENCHMARKS.md")

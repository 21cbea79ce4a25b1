"""The suite's command line and running order: parse the flags, check the binaries, set up the peers
when they are wanted, run each selected step (a failed step is recorded and the next one runs), stop
every server, write the results. Servers are killed at exit and on SIGINT / SIGTERM / SIGHUP.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import time

from . import __doc__ as SUITE_DOC
from . import http, pairs, report, servers, steps
from .context import Context
from .plan import CLIENT_CPU, GROUPS, PEERS, SCENARIOS, SERVER_SCENARIOS, TAB_MODEL, StepError


def estimate_s(ctx: Context) -> float:
    points = sum(1 for g in GROUPS if g in ctx.only and g in SERVER_SCENARIOS
                 for sc in SCENARIOS if sc.group in SERVER_SCENARIOS[g] and ctx.selected(sc))
    rounds = 2 if ctx.args.quick else max(5, ctx.args.pairs or 5)
    pairs = 60 * rounds * ("pairs" in ctx.only)
    web = (40 + 14 * rounds) * ("http" in ctx.only)
    return points * ctx.reps * (ctx.duration + ctx.warmup + 0.4) + 40 * ("raw" in ctx.only) + 120 + pairs + web


def set_up_peers(ctx: Context) -> bool:
    """The peers' set-up, when any peer is selected; False (recorded per peer) when it failed."""
    if not ctx.only & set(PEERS):
        return True
    try:
        servers.setup_peers(ctx)
    except StepError as e:
        for k in PEERS:
            if k in ctx.only:
                ctx.error(k, f"peer setup failed: {e}")
        return False
    return True


def run(ctx: Context) -> None:
    ctx.check_binaries()
    if ctx.only & set(PEERS):
        try:
            servers.find_peers()
        except StepError as e:
            sys.exit(f"benches/suite.py: {e}")
    ctx.tab_features = ctx.model_input(TAB_MODEL)[1]
    ctx.write_texts()
    ctx.log(f"plan: {', '.join(g for g in GROUPS if g in ctx.only)}; {ctx.reps} repetition(s) of "
            f"{ctx.duration:g} s after {ctx.warmup:g} s warm-up; estimated {estimate_s(ctx) / 60:.1f} min")
    peers_ok = set_up_peers(ctx)
    # After the peers' set-up: on a fresh machine their versions exist only from here on.
    ctx.machine()
    order = [("raw", steps.step_raw), ("floor", steps.step_floor), ("torchwire", steps.step_torchwire),
             ("python", steps.step_python), ("torchserve", steps.step_torchserve),
             ("torchserve-batch", lambda c: steps.step_torchserve(c, batch=True)), ("pairs", pairs.step_pairs),
             ("http", http.step_http)]
    for key, fn in order:
        if key not in ctx.only or (key in PEERS and not peers_ok):
            continue
        if key == "torchserve-batch":
            left = ctx.args.budget_min * 60 - (time.perf_counter() - ctx.t_start)
            need = 4 * ctx.reps * (ctx.duration + ctx.warmup + 0.4) + 20
            if need > left:
                ctx.error(key, f"skipped: {need:.0f} s needed, {left:.0f} s left of the {ctx.args.budget_min} min budget")
                continue
        ctx.log(f"== {key}")
        try:
            fn(ctx)
        except StepError as e:
            ctx.error(key, e)
        finally:
            servers.stop_all()
    report.finish(ctx)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benches/suite.py", description=SUITE_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repetition of 1 s (0.5 s warm-up); results go to *-quick.*")
    ap.add_argument("--only", help=f"comma-separated parts to run: {','.join(GROUPS)}")
    ap.add_argument("--scenarios", help="comma-separated scenario keys or groups, e.g. tab-c8,sentiment "
                    f"({', '.join(s.key for s in SCENARIOS)}); `none` for no load runs")
    ap.add_argument("--no-lifecycle", action="store_true", help="skip the cold-start / first-request / RSS measurements")
    ap.add_argument("--reps", type=int, help="repetitions per measurement (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="seconds measured per repetition (default 3, quick 1)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per repetition (default 1, quick 0.5)")
    ap.add_argument("--bin", help="torchwire server binary (default target/release/torchwire)")
    ap.add_argument("--bench-bin", help="torchwire-bench binary: load generator, floor, raw timing, chart "
                    "(default: torchwire-bench beside --bin)")
    ap.add_argument("--pairs", type=int, help="interleaved rounds of the issue 15 and 17 targets (default 5, quick 2)")
    ap.add_argument("--budget-min", type=float, default=15, help="skip the TorchServe batching run past this (default 15)")
    ap.add_argument("--write-doc", action="store_true", help="update BENCHMARKS.md even on a quick/partial run")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (server logs, model store)")
    return ap.parse_args(argv)


def _on_signal(signum, _frame):
    print(f"\nsignal {signum}: stopping servers", flush=True)
    servers.stop_all()
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(servers.stop_all)
    if (os.cpu_count() or 1) >= 2:
        try:
            os.sched_setaffinity(0, {int(CLIENT_CPU)})  # keep this driver off the server's core
        except OSError:
            pass
    ctx = Context(args)
    try:
        run(ctx)
    finally:
        servers.stop_all()
        if args.keep_tmp:
            print(f"kept {ctx.tmp}", flush=True)
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)

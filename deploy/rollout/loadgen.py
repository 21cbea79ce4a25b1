"""Open-loop, constant-rate gRPC load for the rollout simulation (deploy/rollout/rollout.sh).

Owns: sending `torchwire.v1.Inference/Predict` (one breast_cancer row) at a fixed rate through
one gRPC channel, recording every request's scheduled time, status and latency, and the report
that splits those records into the phases rollout.sh marks. It does not start servers.

    loadgen.py run --target 127.0.0.1:50300 --rate 1000 --seconds 120 --out run.csv [--retry]
    loadgen.py report --records run.csv --marks marks.txt

Open loop: request i is due at t0 + i/rate whatever happened to the ones before it, and its
latency is measured from when it was due (so a stalled client or server is not hidden by the
generator waiting: no coordinated omission). `--retry` gives the channel a service config whose
retry policy retries UNAVAILABLE (gRPC's standard client retries, A6); without it, retries are
switched off (`grpc.enable_retries` 0, which also stops transparent retries).

Needs grpcio (rollout.sh installs it into .venv-tools). The request is encoded by hand (four
protobuf fields), so no generated code is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import struct
import sys
import time

METHOD = "/torchwire.v1.Inference/Predict"

# Wisconsin breast cancer sample 0 (malignant in the data set and by the model).
ROW = {
    "mean_radius": 17.99, "mean_texture": 10.38, "mean_perimeter": 122.8, "mean_area": 1001.0,
    "mean_smoothness": 0.1184, "mean_compactness": 0.2776, "mean_concavity": 0.3001,
    "mean_concave_points": 0.1471, "mean_symmetry": 0.2419, "mean_fractal_dimension": 0.07871,
    "radius_error": 1.095, "texture_error": 0.9053, "perimeter_error": 8.589, "area_error": 153.4,
    "smoothness_error": 0.006399, "compactness_error": 0.04904, "concavity_error": 0.05373,
    "concave_points_error": 0.01587, "symmetry_error": 0.03003, "fractal_dimension_error": 0.006193,
    "worst_radius": 25.38, "worst_texture": 17.33, "worst_perimeter": 184.6, "worst_area": 2019.0,
    "worst_smoothness": 0.1622, "worst_compactness": 0.6656, "worst_concavity": 0.7119,
    "worst_concave_points": 0.2654, "worst_symmetry": 0.4601, "worst_fractal_dimension": 0.1189,
}  # fmt: skip

RETRY_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "torchwire.v1.Inference"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


# ---- protobuf, by hand ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def predict_request(model: str, row: dict[str, float]) -> bytes:
    """PredictRequest{model = 1; rows = 4: Row{features = 1: map<string, double>}}."""
    features = b"".join(
        _field(1, _field(1, k.encode()) + _varint(2 << 3 | 1) + struct.pack("<d", v)) for k, v in row.items()
    )
    return _field(1, model.encode()) + _field(4, features)


# ---- load ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    import grpc  # noqa: PLC0415 (only `run` needs grpcio; `report` runs anywhere)

    options = [("grpc.enable_retries", 1 if args.retry else 0)]
    if args.retry:
        options.append(("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)))
    payload = predict_request(args.model, ROW)
    records: list[tuple[float, float, str]] = []
    details: list[str] = []  # the first failures' messages, for the log
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        await asyncio.wait_for(channel.channel_ready(), 30)

        async def one(due: float) -> None:
            try:
                await call(payload, timeout=args.timeout)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                if len(details) < 20:
                    details.append(f"{code}: {e.details()}")
            records.append((due, time.time() - due, code))

        n = int(args.rate * args.seconds)
        t0 = time.time() + 0.2
        tasks = set()
        for i in range(n):
            due = t0 + i / args.rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))
        sent_for = time.time() - t0
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["due_epoch", "latency_s", "code"])
        for due, lat, code in sorted(records):
            w.writerow([f"{due:.6f}", f"{lat:.6f}", code])
    bad = sum(1 for r in records if r[2] != "OK")
    print(f"loadgen: {len(records)} requests in {sent_for:.1f}s ({len(records) / sent_for:.0f}/s), {bad} failed")
    for d in details:
        print(f"loadgen: failed: {d}")
    return 0


# ---- report -------------------------------------------------------------------------------------


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    i = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def summarise(rows: list[tuple[float, float, str]]) -> dict:
    lat = sorted(r[1] for r in rows)
    codes: dict[str, int] = {}
    for r in rows:
        codes[r[2]] = codes.get(r[2], 0) + 1
    span = (rows[-1][0] - rows[0][0]) if len(rows) > 1 else 0
    return {
        "requests": len(rows),
        "rate": round(len(rows) / span, 1) if span else None,
        "failed": sum(v for k, v in codes.items() if k != "OK"),
        "codes": codes,
        "p50_ms": round(pct(lat, 50) * 1e3, 2),
        "p99_ms": round(pct(lat, 99) * 1e3, 2),
        "max_ms": round(lat[-1] * 1e3, 2) if lat else None,
    }


def report(args: argparse.Namespace) -> int:
    with open(args.records) as f:
        rows = [(float(r["due_epoch"]), float(r["latency_s"]), r["code"]) for r in csv.DictReader(f)]
    rows.sort()
    marks: dict[str, float] = {}
    origin = None  # the first mark: rollout.sh prints the marks relative to it
    with open(args.marks) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                marks.setdefault(parts[1], float(parts[0]))
                origin = float(parts[0]) if origin is None else origin
    start, end = marks["rollout-start"], marks["rollout-end"]
    warm = rows[0][0] + args.warmup
    phases = {
        "steady": [r for r in rows if warm <= r[0] < start],
        "rollout": [r for r in rows if start <= r[0] < end],
        "after": [r for r in rows if r[0] >= end],
        "all": [r for r in rows if r[0] >= warm],
    }
    out = {name: summarise(p) for name, p in phases.items() if p}
    out["rollout_seconds"] = round(end - start, 1)
    if "steady" in out and "rollout" in out:
        out["p99_ratio"] = round(out["rollout"]["p99_ms"] / out["steady"]["p99_ms"], 2)
    # The seconds of the rollout with the highest p99, timed like the printed marks, so a spike can
    # be matched to a replica starting or stopping.
    seconds: dict[int, list[float]] = {}
    for r in phases["rollout"]:
        seconds.setdefault(math.floor(r[0] - origin), []).append(r[1])
    worst = sorted(((pct(sorted(v), 99), t, len(v)) for t, v in seconds.items()), reverse=True)[:6]
    out["worst_seconds"] = [f"+{t}s: p99 {p * 1e3:.0f} ms ({n} req)" for p, t, n in sorted(worst, key=lambda w: w[1])]
    fails = [r for r in rows if r[2] != "OK"]
    if fails:
        out["failures_at"] = sorted({round(r[0] - start, 1) for r in fails})[:20]
    print(json.dumps(out, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="send load, write per-request records")
    r.add_argument("--target", required=True)
    r.add_argument("--rate", type=float, default=1000)
    r.add_argument("--seconds", type=float, default=60)
    r.add_argument("--timeout", type=float, default=10, help="per-request deadline, seconds")
    r.add_argument("--model", default="breast_cancer")
    r.add_argument("--retry", action="store_true", help="retry UNAVAILABLE (service config)")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report", help="split records into phases by marks")
    p.add_argument("--records", required=True)
    p.add_argument("--marks", required=True)
    p.add_argument("--warmup", type=float, default=5, help="seconds left out at the start")
    args = ap.parse_args()
    if args.cmd == "run":
        return asyncio.run(run(args))
    return report(args)


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite (`make bench`): torchwire side by side with its limits and peers.

Limits: the raw libtorch forward pass in-process (`torchwire-bench raw`) and a bare tonic server that
answers constants (`torchwire-bench floor`). Peers (set up by the shared `peers/setup.sh`, found through
$TORCHWIRE_PEERS_DIR or shared/peers inside or beside the checkout): a Python grpcio + torch server and
TorchServe 0.12. Every server is pinned to core 0 and the load generator (`torchwire-bench load`) to
core 1; every torch runs one intra-op thread. Last, the `pairs` step measures issue 15's ratio targets
in interleaved rounds: torchwire and what it is compared with (the floor, the raw pass, the Python
peer) run at once and are measured back to back in each round, at least 5 rounds; a target is the
median of the per-round ratios with min and max. Its tabular targets are driven by two clients,
`torchwire-bench load` and h2load (Debian `nghttp2-client`, a hand-encoded gRPC frame), and `perf stat`
gives the server's CPU per request. `cpu` (`python -m benches.suite.cpu`) measures CPU per request
alone, for comparing builds.

Writes benches/results/<date>.json (machine, commands, every repetition, medians, targets, chart data),
benches/results/<date>.png (`torchwire-bench chart`), and the region of BENCHMARKS.md between
`<!-- suite:begin -->` and `<!-- suite:end -->`. `--quick` and `--only` runs write
benches/results/<date>-quick.{json,png,md} instead and leave BENCHMARKS.md alone.

Standard library only. Every server it starts runs in its own process group and is killed at exit.
Modules: plan (what is measured), context (the run's settings and record), wire + hpack (the gRPC
client for one-off calls), servers (start, stop, wait), steps (the measurements), pairs (the interleaved targets), cpu (CPU per
request), report (tables, targets, chart, JSON, BENCHMARKS.md), main (flags and running order).

    .venv/bin/python benches/suite.py                 # the full run, about 14 minutes
    .venv/bin/python benches/suite.py --only pairs    # the interleaved targets alone, about 5 minutes
    .venv/bin/python benches/suite.py --quick         # 1 repetition of 1 s per point
    .venv/bin/python benches/suite.py --quick --only torchwire,floor --scenarios tab-c8
"""

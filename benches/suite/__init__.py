"""The benchmark suite (`make bench`): torchwire side by side with its limits and peers.

Limits: the raw libtorch forward pass in-process (`torchwire-bench raw`) and a bare tonic server that
answers constants (`torchwire-bench floor`). Peers (set up by the shared `peers/setup.sh`, found through
$TORCHWIRE_PEERS_DIR or shared/peers inside or beside the checkout): a Python grpcio + torch server and
TorchServe 0.12. Every server is pinned to core 0 and the load generator (`torchwire-bench load`) to
core 1; every torch runs one intra-op thread.

Writes benches/results/<date>.json (machine, commands, every repetition, medians, targets, chart data),
benches/results/<date>.png (`torchwire-bench chart`), and the region of BENCHMARKS.md between
`<!-- suite:begin -->` and `<!-- suite:end -->`. `--quick` and `--only` runs write
benches/results/<date>-quick.{json,png,md} instead and leave BENCHMARKS.md alone.

Standard library only. Every server it starts runs in its own process group and is killed at exit.
Modules: plan (what is measured), context (the run's settings and record), wire + hpack (the gRPC
client for one-off calls), servers (start, stop, wait), steps (the measurements), report (tables,
targets, chart, JSON, BENCHMARKS.md), main (flags and running order).

    .venv/bin/python benches/suite.py                 # the full run, about 10 minutes
    .venv/bin/python benches/suite.py --quick         # 1 repetition of 1 s per point
    .venv/bin/python benches/suite.py --quick --only torchwire,floor --scenarios tab-c8
"""

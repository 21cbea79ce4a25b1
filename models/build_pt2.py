"""`model.pt2` beside every built `model.pt` of the bundled models (AOTInductor, CPU), with the
parity check that decides whether it may be served. Called by models/build.py after its builds;
also runnable alone:

    .venv/bin/python models/build_pt2.py [--force] [NAME...]

For each published version folder models/<name>/<N>/ holding a model.pt and no up-to-date
model.pt2, the eager module is rebuilt from the TorchScript file's own weights (TabularMLP or
textmodel.TextClassifier; the architecture's integers are attributes the scripted module keeps),
exported with torch.export (dynamic batch 1..4096; text models also a dynamic sequence length
1..max_length, the position table) and compiled by models/pt2.py. Then the package and the
TorchScript file run the version's held-out inputs (tabular: the whole held-out split; text: the
first 200 held-out IMDB reviews and 100 held-out airline tweets, tokenized as the server does,
batched by length 16 at a time) and the largest absolute difference of their logits is written
to <N>/pt2_parity.json; over 1e-4 the package is deleted and the build fails.

Where the package measured faster than TorchScript with parity, the model serves it by default:
`format = "pt2"` is put at the top of its model.toml (SERVE_PT2 below; figures in
models/README.md). sentiment-int8 gets no package: its dynamically quantised Linear layers (quantize_dynamic) have
no torch.export path; it keeps serving TorchScript.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pt2  # noqa: E402
from textmodel import TextClassifier  # noqa: E402

PARITY_LIMIT = 1e-4
# Kinds whose packages serve by default (`torchwire-bench raw --compare-formats`, 1 thread,
# interleaved rounds, parity as checked here): heart_disease .pt2 / TorchScript 0.66 at batch 1
# and 0.71 at batch 32, every round under 0.73; sentiment 0.80 (0.72-0.94) at batch 1 and 0.90
# (0.86-0.95) at batch 16 over 7 rounds on a quiet host (on a busy one its medians were 0.87-0.95
# with single rounds either way). models/README.md has the tables.
SERVE_PT2 = {"tabular", "text-classification"}
FORMAT_LINE = 'format = "pt2"  # models/build_pt2.py: the AOTInductor package measured faster, same outputs\n'
NOT_EXPORTABLE = {"sentiment-int8": "dynamic int8 quantisation has no torch.export path"}
TEXT_IMDB, TEXT_TWEETS = 200, 100


def eager_tabular(ts: torch.jit.ScriptModule) -> torch.nn.Module:
    from build import TabularMLP

    sd = ts.state_dict()
    n_labels, hidden = sd["out.weight"].shape[0], sd["hidden.weight"].shape[0]
    m = TabularMLP(sd["mean"].numpy(), sd["std"].numpy(), n_labels, hidden=hidden)
    m.load_state_dict(sd)
    return m.eval()


def eager_text(ts: torch.jit.ScriptModule) -> TextClassifier:
    sd = ts.state_dict()
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})
    first = getattr(ts.encoder.layer, "0")
    m = TextClassifier(
        vocab=sd["embeddings.word_embeddings.weight"].shape[0],
        hidden=sd["embeddings.word_embeddings.weight"].shape[1],
        layers=layers,
        heads=int(first.heads),
        inter=sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_positions=sd["embeddings.position_embeddings.weight"].shape[0],
        n_labels=sd["classifier.weight"].shape[0],
        eps=float(ts.embeddings.LayerNorm.eps),
        id_modulo=int(ts.id_modulo),
    )
    m.load_state_dict(sd)
    return m.eval()


def tabular_parity(ts, package, x: np.ndarray) -> float:
    # Contiguous: the compiled code reads its inputs as row-major without checking their strides
    # (a held-out split from pandas is column-major; the server's tensors always are row-major).
    rows = torch.tensor(x, dtype=torch.float32).contiguous()
    with torch.inference_mode():
        worst = (ts(rows) - package(rows)).abs().max().item()
        for b in (1, 32):  # the batch sizes the speed comparison uses
            worst = max(worst, (ts(rows[:b]) - package(rows[:b])).abs().max().item())
    return worst


def text_parity(ts, package, seqs: List[List[int]]) -> float:
    from texttools import logits_in_batches

    a = logits_in_batches(ts, seqs, batch_size=16)
    b = logits_in_batches(lambda ids, mask: package(ids, mask), seqs, batch_size=16)
    return (a - b).abs().max().item()


def held_out_texts(max_length: int) -> List[List[int]]:
    import sentiment
    from texttools import encode, load_tokenizer, minilm_dir

    texts, _ = sentiment.load_imdb()
    _, tweets = sentiment.load_airline_tweets()
    imdb = texts[sentiment.N_TRAIN : sentiment.N_TRAIN + TEXT_IMDB]
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", max_length)
    return encode(tok, imdb + [t for t, _ in tweets[:TEXT_TWEETS]])


def export_version(
    name: str, vdir: Path, manifest: dict, held_out: Callable[[], object], force: bool
) -> Optional[Dict]:
    """Exports one version; returns its parity record (None: not exportable, skipped)."""
    ts_path, out = vdir / "model.pt", vdir / "model.pt2"
    record_path = vdir / "pt2_parity.json"
    if not force and not pt2.is_stale(out, ts_path) and record_path.exists():
        return json.loads(record_path.read_text())
    ts = torch.jit.load(str(ts_path)).eval()
    started = time.time()
    try:
        eager = eager_tabular(ts) if manifest["kind"] == "tabular" else eager_text(ts)
    except (KeyError, AttributeError, RuntimeError) as e:
        # Another architecture than TabularMLP / TextClassifier: it keeps serving TorchScript.
        print(f"models: {name}/{vdir.name}: no model.pt2: not rebuildable from model.pt ({e!r})", file=sys.stderr)
        return None
    if manifest["kind"] == "tabular":
        n = manifest["inputs"][0]["shape"][1]
        pt2.export_tabular(eager, n, out, name=manifest["inputs"][0]["name"])
        package = pt2.load_package(out)
        diff = tabular_parity(ts, package, held_out())
        what = "held-out split"
    else:
        names = [i["name"] for i in manifest["inputs"]]
        max_length = manifest["text"]["max_length"]
        pt2.export_text(eager, names, max_length, out)
        package = pt2.load_package(out)
        diff = text_parity(ts, package, held_out())
        what = f"first {TEXT_IMDB} held-out IMDB reviews + {TEXT_TWEETS} held-out airline tweets"
    record = {"max_abs_diff": diff, "inputs": what, "torch": pt2.torch_release(), "seconds": round(time.time() - started, 1)}
    if diff > PARITY_LIMIT:
        out.unlink()
        raise SystemExit(f"models: {name}: model.pt2 differs from model.pt by {diff:.2e} (> {PARITY_LIMIT}); deleted")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def export_all(names: List[str], tabular_held_out: Callable[[str], np.ndarray], force: bool = False) -> None:
    import tomllib

    text_cache: Dict[int, List[List[int]]] = {}
    for name in names:
        model_dir = HERE / name
        if name in NOT_EXPORTABLE or not (model_dir / "model.toml").exists():
            print(f"models: {name}: no model.pt2 ({NOT_EXPORTABLE.get(name, 'not built')})", file=sys.stderr)
            continue
        manifest = tomllib.loads((model_dir / "model.toml").read_text())
        exported = True
        for vdir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            if not (vdir / "model.pt").exists():
                continue
            if manifest["kind"] == "tabular":
                held_out = lambda: tabular_held_out(name)  # noqa: E731
            else:
                n = manifest["text"]["max_length"]
                held_out = lambda: text_cache.setdefault(n, held_out_texts(n))  # noqa: E731
            rec = export_version(name, vdir, manifest, held_out, force)
            if rec is None:
                exported = False
                continue
            print(f"models: {name}/{vdir.name}: model.pt2 parity max |diff| {rec['max_abs_diff']:.2e} "
                  f"on the {rec['inputs']}", file=sys.stderr, flush=True)
        if exported and manifest["kind"] in SERVE_PT2:
            serve_pt2(model_dir / "model.toml")


def serve_pt2(path: Path) -> None:
    """Puts `format = "pt2"` at the top of a manifest that lacks a format (written whole)."""
    import layout

    text = path.read_text()
    if any(line.startswith("format") for line in text.splitlines()):
        return
    lines = text.splitlines(keepends=True)
    # After the leading comment lines (build.py's header), before the first key.
    at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    layout.write_atomic(path, "".join(lines[:at] + [FORMAT_LINE] + lines[at:]))
    print(f"models: {path.parent.name}: serves model.pt2 by default", file=sys.stderr)


def main(argv=None) -> int:
    from build import BUILDERS, TABULAR_DATA

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="re-export packages that look up to date")
    ap.add_argument("names", nargs="*", help="models (default: all bundled)")
    args = ap.parse_args(argv)
    export_all(args.names or list(BUILDERS), lambda n: TABULAR_DATA[n]().x_test, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

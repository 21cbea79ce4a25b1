"""Replays every version's self-test in Python, as the server does after a load: each
`[[self_test]]` of models/<name>/<N>/version.toml (over model.toml) run through that version's
model.pt with torch.jit.load, eval, no_grad; every element within the tolerance. For checking a
version before publishing it, or goldens written by hand. Exit status 1 on any failure.

    .venv/bin/python models/check_goldens.py [--repository models] [NAME...]
"""

import argparse
import sys
import tomllib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import layout  # noqa: E402
from texttools import load_tokenizer  # noqa: E402


def effective_manifest(model_dir: Path, version: int) -> dict:
    """model.toml with the version's version.toml top-level keys replacing its own."""
    doc = tomllib.loads((model_dir / layout.MANIFEST).read_text())
    overlay = layout.version_dir(model_dir, version) / layout.VERSION_MANIFEST
    if overlay.exists():
        doc.update(tomllib.loads(overlay.read_text()))
    return doc


def outputs(model, manifest: dict, model_dir: Path, version_dir: Path, test: dict) -> list:
    if "rows" in test:
        with torch.no_grad():
            return model(torch.tensor(test["rows"], dtype=torch.float32)).tolist()
    tok_name = manifest["text"]["tokenizer"]
    tok_path = version_dir / tok_name if (version_dir / tok_name).exists() else model_dir / tok_name
    tok = load_tokenizer(tok_path, manifest["text"]["max_length"])
    got = []
    for text in test["texts"]:  # one at a time: batch 1, no padding
        enc = tok.encode(text)
        with torch.no_grad():
            got.append(model(torch.tensor([enc.ids]), torch.tensor([enc.attention_mask]))[0].tolist())
    return got


def check(model_dir: Path, version: int) -> bool:
    manifest = effective_manifest(model_dir, version)
    vdir = layout.version_dir(model_dir, version)
    tests = manifest.get("self_test", [])
    if not tests:
        print(f"{model_dir.name}/{version}: no self_test")
        return True
    model = torch.jit.load(str(vdir / layout.MODEL_FILE))
    model.eval()
    ok = True
    for i, test in enumerate(tests):
        got = outputs(model, manifest, model_dir, vdir, test)
        worst = max(abs(g - e) for gr, er in zip(got, test["expected"], strict=True)
                    for g, e in zip(gr, er, strict=True))
        passed = worst <= test["tolerance"]
        ok &= passed
        n = len(test.get("rows", test.get("texts", [])))
        print(f"{model_dir.name}/{version}: self_test[{i}] {n} inputs, largest difference {worst:.3g} "
              f"(tolerance {test['tolerance']:g}): {'ok' if passed else 'FAILED'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=HERE, help="the model repository (default: models/)")
    ap.add_argument("names", nargs="*", help="models to check (default: every folder with a model.toml)")
    args = ap.parse_args()
    dirs = [args.repository / n for n in args.names] or sorted(p.parent for p in args.repository.glob("*/model.toml"))
    ok = True
    for model_dir in dirs:
        for version in layout.versions(model_dir):
            ok &= check(model_dir, version)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

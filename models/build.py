"""Builds the bundled models of the repository in models/ from real data that registry packages
ship. Run in the project venv (the Makefile does): .venv/bin/python models/build.py [--force]

Each model gets models/<name>/model.pt (TorchScript), model.toml (manifest with provenance and
held-out metrics measured here). Artifacts are built, not committed (.gitignore). A model whose
files exist is skipped, so a second run does nothing.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


class TabularMLP(torch.nn.Module):
    """Standardisation baked in, so clients send raw values in the manifest's units."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_labels: int, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.hidden = torch.nn.Linear(len(mean), hidden)
        self.out = torch.nn.Linear(hidden, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.mean) / self.std
        return self.out(torch.relu(self.hidden(x)))


def train_tabular(x_train, y_train, n_labels, seed=0, epochs=400, weight_decay=1e-3):
    torch.manual_seed(seed)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    model = TabularMLP(mean, std, n_labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.long)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return model.eval()


def evaluate(model, x_test, y_test):
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(x_test, dtype=torch.float32)), dim=1).numpy()
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    auc = float(roc_auc_score(y_test, probs[:, 1]))
    return {"accuracy": round(accuracy, 4), "roc_auc": round(auc, 4)}


def write_tabular(name, model, features, labels, description, dataset, split, metrics):
    out = HERE / name
    out.mkdir(exist_ok=True)
    torch.jit.script(model).save(str(out / "model.pt"))
    feats = ",\n".join(f"  {{ name = {json.dumps(n)}, unit = {json.dumps(u)} }}" for n, u in features)
    metric_lines = "\n".join(f"{k} = {v}" for k, v in metrics.items())
    (out / "model.toml").write_text(
        f"""# Built by models/build.py; do not edit by hand.
kind = "tabular"
description = {json.dumps(description)}
labels = {json.dumps(labels)}
output = "logits"

[[inputs]]
name = "features"
dtype = "float32"
shape = [-1, {len(features)}]
features = [
{feats},
]

[provenance]
dataset = {json.dumps(dataset)}
split = {json.dumps(split)}

[provenance.metrics]
{metric_lines}
"""
    )


def build_breast_cancer(name):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    model = train_tabular(x_tr, y_tr, 2)
    metrics = evaluate(model, x_te, y_te)
    features = [(f.replace(" ", "_"), "") for f in data.feature_names]
    write_tabular(
        name,
        model,
        features,
        [str(t) for t in data.target_names],
        "Breast mass malignancy from 30 fine-needle-aspirate cell-nucleus measurements (MLP)",
        "Wisconsin Diagnostic Breast Cancer (569 cases), as shipped by scikit-learn (sklearn.datasets.load_breast_cancer)",
        f"stratified 80/20 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        metrics,
    )
    return metrics


BUILDERS = {"breast_cancer": build_breast_cancer}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild models that exist")
    ap.add_argument("names", nargs="*", help="models to build (default: all)")
    args = ap.parse_args()
    for name in args.names or BUILDERS:
        out = HERE / name
        if not args.force and (out / "model.pt").exists() and (out / "model.toml").exists():
            print(f"models: {name}: up to date", file=sys.stderr)
            continue
        started = time.time()
        print(f"models: {name}: building ...", file=sys.stderr, flush=True)
        metrics = BUILDERS[name](name)
        print(f"models: {name}: built in {time.time() - started:.1f}s, held-out {metrics}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

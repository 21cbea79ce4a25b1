"""The on-disk layout of the model repository, as models/build.py writes it and the server reads
it: version folders, the publish protocol, the move of an old flat build into version 1, and the
text of version.toml. Standard library only (no torch), so the tests run in milliseconds; callers
compute the goldens themselves and hand them in as plain lists.

    models/<name>/model.toml          manifest (and tokenizer.json, parity.json for text models)
    models/<name>/<N>/model.pt        version N (a positive integer), TorchScript
    models/<name>/<N>/version.toml    optional: its top-level keys replace model.toml's for N
    models/<name>/.<N>.tmp/           a version being written; never read by the server

Publish protocol: a version is written completely into `.<N>.tmp/` and then renamed to `<N>/`
(one rename on one file system), so a server polling the repository sees either no version N
or all of it. Files in the model folder itself (model.toml, tokenizer.json, parity.json) are
replaced by a rename from a dot-file, for the same reason. This module never deletes a published
version except when asked to replace it (build.py --force).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

MODEL_FILE = "model.pt"
MANIFEST = "model.toml"
VERSION_MANIFEST = "version.toml"


def version_dir(model_dir: Path, version: int) -> Path:
    """Where version `version` of the model lives once published."""
    return model_dir / str(version)


def staging_dir(model_dir: Path, version: int) -> Path:
    """Where version `version` is written before it is published (a dot-folder: the server skips
    it, and `.gitignore` / `.dockerignore` leave it out)."""
    return model_dir / f".{version}.tmp"


def versions(model_dir: Path) -> List[int]:
    """The published versions, ascending: folders whose name is a positive integer."""
    if not model_dir.is_dir():
        return []
    found = []
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0 and entry.name == str(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def is_built(model_dir: Path, version: int, shared_files: Iterable[str] = ()) -> bool:
    """A version counts as built when its model.pt and version.toml exist, and so do the model's
    manifest and any files the versions share (tokenizer.json, parity.json)."""
    folder = version_dir(model_dir, version)
    needed = [folder / MODEL_FILE, folder / VERSION_MANIFEST, model_dir / MANIFEST]
    needed += [model_dir / f for f in shared_files]
    return all(p.exists() for p in needed)


def has_flat_build(model_dir: Path) -> bool:
    """An old build.py's layout: model.pt beside model.toml and no version folder, which the
    server serves as version 1 and which `migrate_flat` moves into `1/`."""
    return (model_dir / MODEL_FILE).is_file() and (model_dir / MANIFEST).is_file() and not versions(model_dir)


def stage(model_dir: Path, version: int) -> Path:
    """A fresh, empty staging folder for `version` (what an interrupted build left there goes)."""
    tmp = staging_dir(model_dir, version)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(model_dir: Path, version: int, replace: bool = False) -> Path:
    """Renames the complete staging folder to `<version>/`. A version that exists is an error
    unless `replace`: then the old folder is renamed aside first, so between the two renames the
    version is briefly absent (to change what a running server serves, publish a new number)."""
    tmp, final = staging_dir(model_dir, version), version_dir(model_dir, version)
    missing = [f for f in (MODEL_FILE, VERSION_MANIFEST) if not (tmp / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{tmp}: cannot publish without {', '.join(missing)}")
    retired: Optional[Path] = None
    if final.exists():
        if not replace:
            raise FileExistsError(f"{final} exists; pass replace=True (build.py --force) to replace it")
        retired = model_dir / f".{version}.old.tmp"
        if retired.exists():
            shutil.rmtree(retired)
        os.rename(final, retired)
    os.rename(tmp, final)
    if retired is not None:
        shutil.rmtree(retired)
    return final


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (instant, no second copy of 90 MB), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def migrate_flat(model_dir: Path, version_toml: Callable[[Path], str]) -> Path:
    """Moves an old flat build's model.pt into version 1 without rebuilding it.

    The file is linked (or copied) into `.1.tmp/`, `version_toml(staged_model_pt)` returns the
    text of version.toml (the caller computes the goldens from the staged file), the folder is
    published as `1/`, and only then is the flat model.pt removed. So a polling server always
    finds the model: the flat file until `1/` appears, then `1/` (which it prefers)."""
    if not has_flat_build(model_dir):
        raise FileNotFoundError(f"{model_dir}: no flat model.pt to migrate (or version folders exist)")
    tmp = stage(model_dir, 1)
    link_or_copy(model_dir / MODEL_FILE, tmp / MODEL_FILE)
    write_atomic(tmp / VERSION_MANIFEST, version_toml(tmp / MODEL_FILE))
    final = publish(model_dir, 1)
    (model_dir / MODEL_FILE).unlink()
    return final


def drop_superseded_flat(model_dir: Path) -> bool:
    """Removes a flat model.pt once version folders exist (the server ignores it then). Returns
    whether there was one."""
    flat = model_dir / MODEL_FILE
    if flat.is_file() and versions(model_dir):
        flat.unlink()
        return True
    return False


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to a dot-file beside `path`, then renames it over `path`: a reader sees the
    old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    """shutil.copyfile through a dot-file and a rename (see write_atomic)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---- version.toml ---------------------------------------------------------------------------------


def toml_float(x: float) -> str:
    """A float as TOML, at full precision (repr round-trips a float64; float32 values widen
    exactly). Integers such as 63 are written 63.0, so they parse as floats."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"golden value {x} is not finite")
    return repr(x)


def toml_string(s: str) -> str:
    """A TOML basic string: JSON's escapes are a subset of TOML's."""
    return json.dumps(s, ensure_ascii=False)


def toml_rows(rows: Sequence[Sequence[float]]) -> str:
    return "[" + ", ".join("[" + ", ".join(toml_float(v) for v in row) + "]" for row in rows) + "]"


def self_test_table(expected: Sequence[Sequence[float]], tolerance: float,
                    rows: Optional[Sequence[Sequence[float]]] = None,
                    texts: Optional[Sequence[str]] = None) -> str:
    """One `[[self_test]]` entry: tabular `rows` or text `texts` (exactly one), the model's raw
    first output for each (`expected`), and the absolute per-element tolerance."""
    if (rows is None) == (texts is None):
        raise ValueError("a self-test has rows (tabular) or texts (text), not both or neither")
    inputs = rows if rows is not None else texts
    if len(inputs) != len(expected) or not expected:
        raise ValueError(f"{len(inputs)} inputs but {len(expected)} expected outputs")
    if texts is not None:
        first = "texts = [" + ", ".join(toml_string(t) for t in texts) + "]"
    else:
        first = f"rows = {toml_rows(rows)}"
    return (f"[[self_test]]\n{first}\nexpected = {toml_rows(expected)}\n"
            f"tolerance = {toml_float(tolerance)}\n")


def provenance_table(dataset: str, split: str, notes: str, metrics: Mapping[str, float]) -> str:
    """A complete `[provenance]` (a version.toml key replaces model.toml's whole table)."""
    metric_lines = "".join(f"{k} = {toml_float(v)}\n" for k, v in metrics.items())
    return (f"[provenance]\ndataset = {toml_string(dataset)}\nsplit = {toml_string(split)}\n"
            f"notes = {toml_string(notes)}\n\n[provenance.metrics]\n{metric_lines}")


def version_toml(header: str, self_tests: Sequence[str], provenance: str = "") -> str:
    """version.toml's text: a comment header, an optional `[provenance]`, then the self-tests."""
    parts = [header.rstrip("\n") + "\n"]
    if provenance:
        parts.append(provenance)
    parts.extend(self_tests)
    return "\n".join(parts)

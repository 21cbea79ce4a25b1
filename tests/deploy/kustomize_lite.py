"""Renders the deploy/k8s overlays without a kustomize binary, for machines without
`kubectl kustomize`. It supports only what deploy/k8s uses: `resources` (files and folders
holding a kustomization.yaml) and `patches` given by `path` or inline `patch`, each a strategic
merge patch naming its target by kind and metadata.name. Anything else is refused, so an overlay
that outgrows it fails loudly instead of rendering wrong. test_deploy.py checks that it renders
the same objects as `kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "patches"}

# Lists merged element by element on a key, as the Kubernetes strategic merge patch does for
# these fields; every other list is replaced whole (e.g. tolerations, HPA metrics, args).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


def _port_key(items: list) -> str | None:
    """Container ports merge on containerPort, Service ports on port."""
    if items and all(isinstance(i, dict) and "containerPort" in i for i in items):
        return "containerPort"
    if items and all(isinstance(i, dict) and "port" in i for i in items):
        return "port"
    return None


def merge(base, patch, field: str = ""):
    """Strategic-merge `patch` into a copy of `base`."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field) or (_port_key(base + patch) if field == "ports" else None)
        if key is None:
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for item in patch:
            for i, existing in enumerate(out):
                if existing.get(key) == item.get(key):
                    out[i] = merge(existing, item, field)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(folder: Path) -> list[dict]:
    """The objects the kustomization in `folder` produces."""
    folder = Path(folder)
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(k) - SUPPORTED
    if unsupported:
        raise ValueError(f"{folder}/kustomization.yaml: kustomize_lite does not support {sorted(unsupported)}")
    objects: list[dict] = []
    for res in k.get("resources", []):
        p = folder / res
        objects.extend(render(p) if p.is_dir() else _load_docs(p))
    for entry in k.get("patches", []):
        if set(entry) - {"path", "patch"}:
            raise ValueError(f"{folder}: only `path` and `patch` patches are supported: {entry}")
        docs = _load_docs(folder / entry["path"]) if "path" in entry else [yaml.safe_load(entry["patch"])]
        for patch in docs:
            kind, name = patch["kind"], patch["metadata"]["name"]
            hits = [i for i, o in enumerate(objects) if o["kind"] == kind and o["metadata"]["name"] == name]
            if len(hits) != 1:
                raise ValueError(f"{folder}: patch for {kind}/{name} matches {len(hits)} objects")
            objects[hits[0]] = merge(objects[hits[0]], patch)
    return objects

"""torch.export + AOTInductor packaging for torchwire: `model.pt2` beside `model.pt`.

    from pt2 import export_package
    export_package(module, (example,), ["features"], [{0: batch}], out / "model.pt2")

A package torchwire serves carries, in its AOTInductor metadata, what the server checks before
it runs anything (src/model/pt2/):

- `torchwire.inputs`: JSON, one entry per input in `forward` order: name, dtype (manifest
  spelling) and, per dimension, the [min, max] range `torch.export` proved (a static dimension
  is [n, n]). The compiled code does not check shapes; the server refuses a request outside
  these ranges with INVALID_ARGUMENT before the kernels run, and a package whose inputs do not
  match the manifest at load.
- `torchwire.torch_version`: the torch release that compiled it (no local suffix); the server
  refuses a package from another release.

Two things are done to the compiled package after `aoti_compile_and_package`:

- the shared object's `DT_NEEDED` entry for `libtorch.so` is pointed at `libtorch_cpu.so`
  (already needed). The wheel's `libtorch.so` is an empty stub that itself needs
  `libtorch_cuda.so`; the package uses no symbol of it, and torchwire maps the CUDA libraries
  only on machines with an NVIDIA driver (src/device.rs). Unpatched, a CPU-only server would
  fail to dlopen the package (`libtorch.so: cannot open shared object file`).
- debug sections are stripped (`strip --strip-debug`, when binutils is there) and entries are
  deflated, which takes a tiny model's package from ~1.5 MB to ~150 KB.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

DTYPES = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}


def torch_release() -> str:
    return torch.__version__.split("+")[0]


def input_ranges(ep: torch.export.ExportedProgram, names: Sequence[str]) -> list[dict[str, Any]]:
    """Each user input's dtype and per-dimension [min, max] as `torch.export` proved them."""
    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    if len(vals) != len(names):
        raise ValueError(f"{len(vals)} exported inputs for {len(names)} names")
    out = []
    for name, v in zip(names, vals):
        dims = []
        for d in v.shape:
            if isinstance(d, int):
                dims.append([d, d])
            else:
                vr = ep.range_constraints[d.node.expr]
                dims.append([int(vr.lower), int(vr.upper)])
        out.append({"name": name, "dtype": DTYPES[v.dtype], "dims": dims})
    return out


def retarget_libtorch(so: bytes) -> bytes:
    """Points a `DT_NEEDED libtorch.so` entry at the `libtorch_cpu.so` string (see above)."""
    b = bytearray(so)
    if b[:4] != b"\x7fELF" or b[4] != 2 or b[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF object")
    (shoff,) = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", b, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    dyn = next(s for s in secs if s[1] == 6)  # SHT_DYNAMIC
    strtab = secs[dyn[6]][4]  # sh_link: its string table's file offset

    def name(off: int) -> str:
        start = strtab + off
        return bytes(b[start : b.index(0, start)]).decode()

    needed = {}
    for i in range(dyn[5] // 16):
        pos = dyn[4] + i * 16
        tag, val = struct.unpack_from("<qQ", b, pos)
        if tag == 1:  # DT_NEEDED
            needed[name(val)] = (pos, val)
    if "libtorch.so" not in needed:
        return so
    if "libtorch_cpu.so" not in needed:
        raise ValueError("the package links libtorch.so but not libtorch_cpu.so")
    struct.pack_into("<Q", b, needed["libtorch.so"][0] + 8, needed["libtorch_cpu.so"][1])
    return bytes(b)


def strip_debug(so: bytes) -> bytes:
    strip = shutil.which("strip")
    if strip is None:
        return so
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.so"
        p.write_bytes(so)
        subprocess.run([strip, "--strip-debug", str(p)], check=True)
        return p.read_bytes()


def rewrite(src: Path, dst: Path, edit_json: Any = None) -> None:
    """Copies a package, patching its shared objects (and, for fault fixtures, the metadata
    JSON through `edit_json(dict) -> dict`)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".so"):
                data = strip_debug(retarget_libtorch(data))
            if edit_json is not None and info.filename.endswith("_metadata.json"):
                data = json.dumps(edit_json(json.loads(data))).encode()
            info = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)


def export_package(
    model: torch.nn.Module,
    example_inputs: tuple,
    names: Sequence[str],
    dynamic_shapes: Any,
    path: Path,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Exports `model` (eval mode) and compiles it with AOTInductor for the CPU into `path`,
    written whole (a temporary file renamed into place)."""
    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    meta = {
        "torchwire.inputs": json.dumps(input_ranges(ep, names)),
        "torchwire.torch_version": torch_release(),
    }
    meta.update(metadata or {})
    path = Path(path)
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw.pt2"
        torch._inductor.aoti_compile_and_package(
            ep, package_path=str(raw), inductor_configs={"aot_inductor.metadata": meta}
        )
        tmp = path.with_name(f".{path.name}.tmp")
        rewrite(raw, tmp)
        os.replace(tmp, path)
    return path


def load_package(path: Path):
    """The package as a callable (Python side of the parity checks)."""
    return torch._inductor.aoti_load_package(str(path))


# The server's default --max-rows: one request of any allowed size fits the exported batch range.
MAX_ROWS = 4096


def export_tabular(model: torch.nn.Module, n_features: int, path: Path, name: str = "features") -> Path:
    """A tabular model: one float32 input [batch, n_features], batch dynamic in 1..MAX_ROWS."""
    batch = torch.export.Dim("batch", min=1, max=MAX_ROWS)
    example = torch.linspace(0.5, 2.0, 4 * n_features).reshape(4, n_features)
    return export_package(model, (example,), [name], ({0: batch},), path)


def export_text(model: torch.nn.Module, names: Sequence[str], max_length: int, path: Path) -> Path:
    """A text model: int64 token tensors [batch, seq] in `names` order, batch dynamic in
    1..MAX_ROWS and seq in 1..max_length (its position table)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_ROWS)
    seq = torch.export.Dim("seq", min=1, max=max_length)
    ids = torch.full((3, 9), 1000, dtype=torch.int64)
    ids[:, 0] = 101
    ids[:, -1] = 102
    example = tuple(ids if n == "input_ids" else torch.ones_like(ids) if n == "attention_mask" else torch.zeros_like(ids) for n in names)
    return export_package(model, example, names, tuple({0: batch, 1: seq} for _ in names), path)


def is_stale(pt2: Path, source: Path) -> bool:
    """Whether `pt2` is missing or older than the TorchScript file it was exported beside
    (compiled packages are not byte-for-byte reproducible, so an unchanged one is kept)."""
    return not pt2.exists() or pt2.stat().st_mtime < source.stat().st_mtime

"""Offline checks of what goes into the container image and of the deploy linters: the runtime
library folder deploy/docker/collect-libs.sh assembles runs the binary on its own, and the
yamllint and hadolint configurations reject what they should. (Building and running the image
itself is scripts/image-check.sh, which needs root and minutes.) Helpers: deploy_helpers.py;
run by scripts/deploy-check.sh.
"""

from __future__ import annotations

import re
import shutil

import pytest
from deploy_helpers import (
    BIN,
    DEPLOY,
    TINY_ROW,
    TOOLS,
    WORK,
    Server,
    clean_env,
    free_port,
    grpcurl,
    need,
    run,
)


# ---------------------------------------------------------------------------------------------
# the runtime image's library layout (deploy/docker/collect-libs.sh)


# Shared libraries of debian:bookworm-slim's libc6, libstdc++6 and libgcc-s1.
SLIM_SYSTEM_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libstdc++.so.6", "libgcc_s.so.1",
}  # fmt: skip


def test_runtime_library_folder_alone_runs_the_binary():
    """What the Dockerfile's runtime stage does, minus Docker: the libraries collect-libs.sh
    picks, in one folder (hard links here), and a copy of the binary without its rpath to the
    venv. With LD_LIBRARY_PATH on that folder, every library resolves there or in the system,
    and the server answers a Predict."""
    need(BIN, "build it first (cargo build --locked) or set TORCHWIRE_BIN")
    runtime = WORK / "runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    r = run(["bash", DEPLOY / "docker" / "collect-libs.sh", "--hardlink", BIN, runtime / "lib"], timeout=120)
    assert r.returncode == 0, r.stderr
    binary = runtime / "torchwire"
    shutil.copy2(BIN, binary)
    r = run([TOOLS / "patchelf", "--remove-rpath", binary], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "not found" in run(["ldd", binary]).stdout, "the copy still finds libtorch through an rpath"

    env = clean_env(LD_LIBRARY_PATH=str(runtime / "lib"))
    out = run(["ldd", binary], env=env).stdout
    assert "not found" not in out, out
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m and not m.group(2).startswith(str(runtime / "lib") + "/"):
            # Anything else must be a library debian:bookworm-slim has (libc6, libstdc++6,
            # libgcc-s1), not one this machine happens to have installed.
            assert m.group(1) in SLIM_SYSTEM_LIBS, line

    grpc_addr = f"127.0.0.1:{free_port()}"
    args = ["--model-dir", "models/fixtures", "--grpc-addr", grpc_addr, "--metrics-addr", "off", "--cpu-only"]
    server = Server("runtime-layout", args, env, binary=binary)
    try:
        server.wait_serving(grpc_addr)
        r = grpcurl(grpc_addr, "torchwire.v1.Inference/Predict", {"model": "tiny_risk", "rows": [{"features": TINY_ROW}]})
        assert r.returncode == 0 and '"predictions"' in r.stdout, r.stdout + r.stderr
    finally:
        code = server.stop()
    assert code == 0, server.log.read_text()
    shutil.rmtree(runtime, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the linters reject what they should (their real runs are in scripts/deploy-check.sh)


def test_yamllint_config_rejects_duplicate_keys_and_yes():
    WORK.mkdir(parents=True, exist_ok=True)
    bad = WORK / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb: yes\n")
    r = run([TOOLS / "yamllint", "--strict", "-c", DEPLOY / ".yamllint", bad])
    assert r.returncode != 0
    assert "key-duplicates" in r.stdout and "truthy" in r.stdout, r.stdout


def test_hadolint_rejects_a_careless_dockerfile():
    hadolint = TOOLS / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint not installed")
    WORK.mkdir(parents=True, exist_ok=True)
    bad = WORK / "Dockerfile.bad"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    r = run([hadolint, bad])
    assert r.returncode != 0 and "DL3006" in r.stdout, r.stdout

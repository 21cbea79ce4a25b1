"""KServe v2 (Open Inference Protocol) through the real tritonclient against the real torchwire
binary serving the committed fixtures: health, metadata, config, inference equal to the native
RPCs (called through the real grpcurl), statistics, repository, and every error case; then a
temporary repository with two versions of one model (per-version metadata, readiness, config,
inference, statistics, a label added by a reload, bad versions); the fixtures' AOTInductor
packages (`.pt2`) answering as their TorchScript files do; then perf_analyzer without `-x`.

Run by `make test` (TORCHWIRE_BIN points at the built binary).
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
import grpc

import twserver  # noqa: E402  (this folder's server starter)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models" / "fixtures"
GRPCURL = str(ROOT / ".venv" / "grpcurl")
EXPECTED = json.loads((FIXTURES / "tiny_risk" / "expected.json").read_text())


def start_server(model_dir: Path):
    """Starts torchwire on `model_dir`; returns (process, url, gRPC client) once it is live."""
    proc, url = twserver.start(model_dir)
    return proc, url, grpcclient.InferenceServerClient(url)


stop_server = twserver.stop


@pytest.fixture(scope="module")
def server():
    proc, url, client = start_server(FIXTURES)
    yield url, client
    stop_server(proc)


def native(url: str, method: str, body: dict) -> dict:
    out = subprocess.run([GRPCURL, "-plaintext", "-d", json.dumps(body), url, f"torchwire.v1.Inference/{method}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_health_and_server_metadata(server):
    _, c = server
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("tiny_risk")
    md = c.get_server_metadata(as_json=True)
    assert md["name"] == "torchwire"
    assert {"model_repository", "statistics"} <= set(md["extensions"])


def test_model_metadata_and_config(server):
    _, c = server
    md = c.get_model_metadata("tiny_risk", as_json=True)
    assert md["platform"] == "pytorch_libtorch"
    assert md["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert md["outputs"][0]["name"] == "output_0"
    cfg = c.get_model_config("tiny_risk", as_json=True)["config"]
    assert cfg["platform"] == "pytorch_libtorch" and cfg["max_batch_size"] == 16
    assert cfg["input"][0]["dims"] == ["4"] and cfg["input"][0]["data_type"] == "TYPE_FP32"
    text = c.get_model_metadata("tiny_bert", as_json=True)
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1", "1"]}]


def test_tabular_infer_equals_native_predict_and_python(server):
    url, c = server
    rows = np.array(EXPECTED["rows"], dtype=np.float32)
    inp = grpcclient.InferInput("features", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    res = c.infer("tiny_risk", [inp], request_id="req-7")
    assert res.get_response().id == "req-7"
    logits = res.as_numpy("output_0")
    np.testing.assert_allclose(logits, np.array(EXPECTED["logits"]), rtol=1e-4, atol=1e-4)
    body = {"model": "tiny_risk", "inputs": [{"name": "features", "shape": list(rows.shape),
                                              "floatData": rows.flatten().tolist()}]}
    nat = native(url, "Predict", body)
    np.testing.assert_allclose(logits.flatten(), nat["outputs"][0]["floatData"], rtol=1e-6)
    probs = res.as_numpy("probabilities")
    for i, p in enumerate(nat["predictions"]):
        np.testing.assert_allclose(probs[i], [p["probabilities"][l] for l in EXPECTED["labels"]], rtol=1e-5)
    # Requested outputs filter the answer.
    only = c.infer("tiny_risk", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities")])
    assert only.as_numpy("output_0") is None and only.as_numpy("probabilities") is not None


def test_text_infer_with_bytes_equals_native_sentiment(server):
    url, c = server
    texts = ["I loved every minute of it.", "Terrible, slow and rude.", "café ☕ 東京"]
    inp = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    res = c.infer("tiny_bert", [inp])
    probs = res.as_numpy("probabilities")
    nat = native(url, "Sentiment", {"model": "tiny_bert", "texts": texts})
    for i, r in enumerate(nat["results"]):
        np.testing.assert_allclose(probs[i], [r["probabilities"]["negative"], r["probabilities"]["positive"]],
                                   rtol=1e-5, atol=1e-6)


def stub(url):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))


def test_typed_contents_are_accepted(server):
    url, _ = server
    req = service_pb2.ModelInferRequest(model_name="tiny_risk")
    t = req.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend(EXPECTED["rows"][0])
    resp = stub(url).ModelInfer(req)
    logits = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_allclose(logits, EXPECTED["logits"][0], rtol=1e-4, atol=1e-4)


def test_statistics_and_repository(server):
    _, c = server
    stats = c.get_inference_statistics("tiny_risk", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 1
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    assert set(index) == {"broken", "tiny_bert", "tiny_risk"}
    assert index["tiny_risk"]["state"] == "READY"
    c.unload_model("tiny_risk")
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    assert index["tiny_risk"]["state"] == "UNAVAILABLE"
    c.load_model("tiny_risk")
    assert c.is_model_ready("tiny_risk")
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    assert index["tiny_risk"]["state"] == "READY"
    with pytest.raises(InferenceServerException) as e:
        c.load_model("broken")
    assert "StatusCode.INTERNAL" in str(e.value) and "/" not in e.value.message()


def expect_error(fn, code, text):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    assert e.value.code() == code, e.value.details()
    assert text in e.value.details(), e.value.details()


def test_errors_are_clear(server):
    url, _ = server
    s = stub(url)
    ok_raw = np.array(EXPECTED["rows"][:1], dtype=np.float32).tobytes()

    def infer(name="tiny_risk", datatype="FP32", shape=(1, 4), raw=(ok_raw,), typed=None):
        req = service_pb2.ModelInferRequest(model_name=name)
        t = req.inputs.add(name="features", datatype=datatype, shape=list(shape))
        if typed is not None:
            t.contents.fp32_contents.extend(typed)
        req.raw_input_contents.extend(raw)
        return s.ModelInfer(req)

    expect_error(lambda: infer(name="nope"), grpc.StatusCode.NOT_FOUND, "model `nope` not found")
    # The fixtures are flat (version 1 only): another version is NOT_FOUND naming the served ones.
    expect_error(lambda: infer(name="tiny_risk@2"), grpc.StatusCode.NOT_FOUND, "served versions: 1")
    ready2 = service_pb2.ModelReadyRequest(name="tiny_risk", version="2")
    expect_error(lambda: s.ModelReady(ready2), grpc.StatusCode.NOT_FOUND, "has no version 2; served versions: 1")
    expect_error(lambda: infer(datatype="INT64"), grpc.StatusCode.INVALID_ARGUMENT, "takes float32, got int64")
    expect_error(lambda: infer(datatype="COMPLEX"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype")
    expect_error(lambda: infer(shape=(1, 5)), grpc.StatusCode.INVALID_ARGUMENT, "got 5 in dimension 1")
    expect_error(lambda: infer(raw=(ok_raw[:-1],)), grpc.StatusCode.INVALID_ARGUMENT, "needs 16 bytes, got 15")
    expect_error(lambda: infer(typed=[1.0, 2.0, 3.0, 4.0]), grpc.StatusCode.INVALID_ARGUMENT, "not both")
    expect_error(lambda: infer(shape=(-1, 4)), grpc.StatusCode.INVALID_ARGUMENT, "non-negative")
    nan = np.array([[np.nan, 1, 2, 3]], dtype=np.float32).tobytes()
    expect_error(lambda: infer(raw=(nan,)), grpc.StatusCode.INVALID_ARGUMENT, "NaN and Inf")
    bad_bytes = service_pb2.ModelInferRequest(model_name="tiny_bert")
    bad_bytes.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    bad_bytes.raw_input_contents.append(struct.pack("<I", 50) + b"short")
    expect_error(lambda: s.ModelInfer(bad_bytes), grpc.StatusCode.INVALID_ARGUMENT, "claims 50 bytes")
    # Still serving after all of that.
    assert len(infer().raw_output_contents) == 2


def test_timeout_parameter_tightens_the_deadline(server):
    url, _ = server
    req = service_pb2.ModelInferRequest(model_name="tiny_risk")
    req.inputs.add(name="features", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    req.parameters["timeout"].int64_param = -5
    expect_error(lambda: stub(url).ModelInfer(req), grpc.StatusCode.INVALID_ARGUMENT, "positive int64")
    req.parameters["timeout"].int64_param = 10_000_000
    req.parameters["priority"].int64_param = 1
    assert stub(url).ModelInfer(req).model_name == "tiny_risk"


# --- Versions: a temporary repository with tiny_risk's model twice, as versions 1 and 2 -------

@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """`<tmp>/m/model.toml` + `<tmp>/m/1/model.pt` + `<tmp>/m/2/model.pt`, both served."""
    repo = tmp_path_factory.mktemp("versioned")
    model = repo / "m"
    for v in ("1", "2"):
        (model / v).mkdir(parents=True)
        shutil.copy(FIXTURES / "tiny_risk" / "model.pt", model / v / "model.pt")
    # A top-level key: it has to come before the manifest's first table.
    manifest = 'version_policy = "all"\n' + (FIXTURES / "tiny_risk" / "model.toml").read_text()
    (model / "model.toml").write_text(manifest)
    proc, url, client = start_server(repo)
    yield url, client, model
    stop_server(proc)


def rows_input():
    rows = np.array(EXPECTED["rows"], dtype=np.float32)
    inp = grpcclient.InferInput("features", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def served_by(c, name="m", version=""):
    """Infers and returns the version the answer says it came from (checking the answer)."""
    res = c.infer(name, [rows_input()], model_version=version)
    np.testing.assert_allclose(res.as_numpy("output_0"), np.array(EXPECTED["logits"]), rtol=1e-4, atol=1e-4)
    assert res.get_response().model_name == "m"
    return res.get_response().model_version


def triton_error(fn) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value


def test_versions_metadata_ready_config(versioned):
    _, c, _ = versioned
    md = c.get_model_metadata("m", as_json=True)
    assert md["versions"] == ["1", "2"]
    assert c.get_model_metadata("m", "1", as_json=True)["versions"] == ["1", "2"]
    assert c.is_model_ready("m", "1") and c.is_model_ready("m", "2") and c.is_model_ready("m")
    e = triton_error(lambda: c.is_model_ready("m", "3"))
    assert e.status() == "StatusCode.NOT_FOUND" and "served versions: 1, 2" in e.message(), e
    for v in ("1", "2", ""):
        cfg = c.get_model_config("m", v, as_json=True)["config"]
        assert cfg["name"] == "m" and cfg["max_batch_size"] == 16 and cfg["input"][0]["dims"] == ["4"], cfg
    e = triton_error(lambda: c.get_model_config("m", "3"))
    assert e.status() == "StatusCode.NOT_FOUND", e
    index = [(m["name"], m["version"]) for m in c.get_model_repository_index(as_json=True)["models"]]
    assert index == [("m", "1"), ("m", "2")]


def test_versions_infer_per_version_and_default(versioned):
    _, c, _ = versioned
    assert served_by(c, version="1") == "1"
    assert served_by(c, version="2") == "2"
    assert served_by(c, version="") == "2", "no default_version: the latest"
    assert served_by(c, name="m@1") == "1"
    e = triton_error(lambda: served_by(c, name="m@1", version="2"))
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e


def stats_by_version(c, version=""):
    out = {}
    for s in c.get_inference_statistics("m", version, as_json=True)["model_stats"]:
        inf = s.get("inference_stats", {})
        success = int(inf.get("success", {}).get("count", 0))
        # perf_analyzer without -x finds the version it drove by its growing queue count.
        assert int(inf.get("queue", {}).get("count", 0)) == success, s
        out[s["version"]] = success
    return out


def test_versions_statistics(versioned):
    _, c, _ = versioned
    before = stats_by_version(c)
    assert set(before) == {"1", "2"}
    for _ in range(3):
        served_by(c, version="1")
    for _ in range(5):
        served_by(c, version="2")
    after = stats_by_version(c)
    assert (after["1"] - before["1"], after["2"] - before["2"]) == (3, 5), (before, after)
    only = stats_by_version(c, "1")
    assert list(only) == ["1"] and only["1"] == after["1"]


def test_versions_bad_versions_are_clear(versioned):
    _, c, _ = versioned
    for version, code, text in [
        ("0", "INVALID_ARGUMENT", "positive integer or a version label"),
        ("-1", "INVALID_ARGUMENT", "positive integer or a version label"),
        ("99999999999999999999999", "INVALID_ARGUMENT", "positive integer or a version label"),
        ("nope", "NOT_FOUND", "no version label `nope`"),
        ("3", "NOT_FOUND", "served versions: 1, 2"),
    ]:
        for call in (lambda: served_by(c, version=version), lambda: c.is_model_ready("m", version),
                     lambda: c.get_model_metadata("m", version), lambda: c.get_inference_statistics("m", version)):
            e = triton_error(call)
            assert e.status() == f"StatusCode.{code}" and text in e.message(), (version, e)
    e = triton_error(lambda: served_by(c, name="m@"))
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e
    assert served_by(c) == "2", "still serving"


def test_versions_label_after_reload(versioned):
    url, c, model = versioned
    e = triton_error(lambda: served_by(c, version="stable"))
    assert e.status() == "StatusCode.NOT_FOUND", e
    with open(model / "model.toml", "a") as f:
        f.write("\n[version_labels]\nstable = 1\n")
    subprocess.run([GRPCURL, "-plaintext", "-d", '{"wait": true}', url, "torchwire.v1.Admin/ReloadRepository"],
                   capture_output=True, text=True, check=True)
    assert served_by(c, version="stable") == "1"
    assert served_by(c, name="m@stable") == "1"
    assert served_by(c) == "2", "the default is still the latest"


# --- perf_analyzer (issue 15 item 5): drives the KServe front door without -x -----------------

PERF_ANALYZER = ROOT / ".venv-triton" / "bin" / "perf_analyzer"
CUDART = ROOT / ".venv-triton" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "nvidia" / "cuda_runtime" / "lib"


def perf_analyzer_env():
    """perf_analyzer's environment, or the reason it cannot run here (it links libb64 from
    Debian's libb64-0d and libcudart from the nvidia-cuda-runtime-cu12 wheel, as benches/kserve.sh
    installs them)."""
    if not PERF_ANALYZER.exists():
        return None, f"{PERF_ANALYZER} missing (bash scripts/setup-triton.sh)"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{CUDART}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    ldd = subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=env).stdout
    missing = [l.split()[0] for l in ldd.splitlines() if "not found" in l]
    if missing:
        return None, f"perf_analyzer's libraries are missing: {missing} (see benches/kserve.sh)"
    return env, None


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """tiny_risk and tiny_bert served from their AOTInductor packages (`format = "pt2"`)."""
    repo = tmp_path_factory.mktemp("pt2")
    for name in ("tiny_risk", "tiny_bert"):
        src, dst = FIXTURES / name, repo / name
        dst.mkdir()
        for f in ("model.pt2", "tokenizer.json"):
            if (src / f).exists():
                shutil.copy(src / f, dst / f)
        (dst / "model.toml").write_text('format = "pt2"\n' + (src / "model.toml").read_text())
    proc, url, client = start_server(repo)
    yield url, client
    stop_server(proc)


def test_pt2_packages_answer_tritonclient_like_torchscript(packages, server):
    _, c = packages
    _, ts = server
    rows = np.array(EXPECTED["rows"], dtype=np.float32)
    inp = grpcclient.InferInput("features", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    logits = c.infer("tiny_risk", [inp]).as_numpy("output_0")
    np.testing.assert_allclose(logits, EXPECTED["logits"], rtol=1e-4, atol=1e-4)
    texts = np.array([[b"I loved this film."], [b"The worst meal I have ever had."]], dtype=np.object_)
    outs = []
    for client in (c, ts):
        t = grpcclient.InferInput("text", [2, 1], "BYTES")
        t.set_data_from_numpy(texts)
        outs.append(client.infer("tiny_bert", [t]).as_numpy("probabilities"))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    # A width the model does not take (the manifest's, which the package was checked against at
    # load): INVALID_ARGUMENT before any kernel runs, and the model keeps serving.
    wide = grpcclient.InferInput("features", [1, 5], "FP32")
    wide.set_data_from_numpy(np.ones((1, 5), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        c.infer("tiny_risk", [wide])
    assert "INVALID_ARGUMENT" in str(e.value.status()), e.value
    assert c.infer("tiny_risk", [inp]).as_numpy("output_0").shape == (3, 3)


def test_perf_analyzer_without_version(server):
    env, why = perf_analyzer_env()
    if env is None:
        pytest.skip(why)
    url, _ = server
    out = subprocess.run(
        [str(PERF_ANALYZER), "-m", "tiny_risk", "-i", "grpc", "-u", url, "--concurrency-range", "1",
         # Brief and bounded: this checks that it finds the model's version, not the figures,
         # so any three windows of 50 requests count as stable on a busy two-core machine.
         "--measurement-mode", "count_windows", "--measurement-request-count", "50", "--max-trials", "5",
         "--stability-percentage", "1000"],
        capture_output=True, text=True, env=env, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "failed to find the requested model version" not in text, text
    m = re.search(r"^Concurrency: 1, throughput: ([0-9.]+) infer/sec", text, re.M)
    assert m and float(m.group(1)) > 0, text
    # The server side of its report comes from ModelStatistics for the version it found.
    assert re.search(r"Successful request count: [1-9]", text), text

"""KServe v2 REST (`/v2` on the gRPC port) through the real `tritonclient.http` against the real
torchwire binary serving the committed fixtures: health, metadata, readiness, config (with a
`/versions/1` path), inference with binary tensors (the client's default) and with JSON `data`
both ways, BYTES on tiny_bert, the outputs filter, answers equal to `tritonclient.grpc` on the
same port and to expected.json, statistics, the repository, and errors as
InferenceServerException with their HTTP status. Then README.md's HTTP examples (the block
between `<!-- http-examples -->` markers, and the Python example after it) run with the real
`curl` and the real client against the bundled models.

Run by `make test` (TORCHWIRE_BIN points at the built binary).
"""

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import twserver  # noqa: E402  (this folder's server starter)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models" / "fixtures"
BUNDLED = ROOT / "models"
EXPECTED = json.loads((FIXTURES / "tiny_risk" / "expected.json").read_text())
README = (ROOT / "README.md").read_text()


def start_server(model_dir: Path):
    """Starts torchwire on `model_dir`; returns (process, "127.0.0.1:<port>") once it is live."""
    return twserver.start(model_dir)


stop_server = twserver.stop


@pytest.fixture(scope="module")
def server():
    proc, url = start_server(FIXTURES)
    http, grpc = httpclient.InferenceServerClient(url), grpcclient.InferenceServerClient(url)
    yield http, grpc
    http.close()
    stop_server(proc)


def rows_input(binary=True):
    rows = np.array(EXPECTED["rows"], dtype=np.float32)
    inp = httpclient.InferInput("features", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    return inp


def grpc_rows_input():
    rows = np.array(EXPECTED["rows"], dtype=np.float32)
    inp = grpcclient.InferInput("features", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def http_error(fn) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value


# --- the KServe v2 REST API through tritonclient.http ----------------------------------------

def test_server_live_ready_and_metadata_as_over_grpc(server):
    http, grpc = server
    assert http.is_server_live() and http.is_server_ready()
    md = http.get_server_metadata()
    assert md["name"] == "torchwire"
    assert {"model_repository", "statistics"} <= set(md["extensions"])
    over_grpc = grpc.get_server_metadata(as_json=True)
    assert (md["version"], md["extensions"]) == (over_grpc["version"], over_grpc["extensions"])


def test_model_metadata_ready_and_config_with_and_without_a_version(server):
    http, grpc = server
    md = http.get_model_metadata("tiny_risk")
    assert md["name"] == "tiny_risk" and md["versions"] == ["1"] and md["platform"] == "pytorch_libtorch"
    # Triton's REST form: shapes as numbers (gRPC's JSON writes them as strings).
    assert md["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in md["outputs"]] == ["output_0", "probabilities"]
    assert http.get_model_metadata("tiny_risk", "1") == md
    over_grpc = grpc.get_model_metadata("tiny_risk", as_json=True)
    assert md["outputs"][0]["shape"] == [int(d) for d in over_grpc["outputs"][0]["shape"]]
    text = http.get_model_metadata("tiny_bert")
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]

    assert http.is_model_ready("tiny_risk") and http.is_model_ready("tiny_risk", "1")
    assert not http.is_model_ready("no_such_model")
    assert not http.is_model_ready("tiny_risk", "2")

    cfg = http.get_model_config("tiny_risk")
    assert cfg["name"] == "tiny_risk" and cfg["platform"] == "pytorch_libtorch" and cfg["max_batch_size"] == 16
    assert cfg["input"][0]["dims"] == ["4"] and cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert http.get_model_config("tiny_risk", "1") == cfg
    over_grpc = grpc.get_model_config("tiny_risk", as_json=True)["config"]
    assert cfg["max_batch_size"] == over_grpc["max_batch_size"]
    assert cfg["input"][0]["dims"] == over_grpc["input"][0]["dims"]
    e = http_error(lambda: http.get_model_config("tiny_risk", "2"))
    assert e.status() == "404" and "served versions: 1" in e.message(), e


def test_infer_tabular_with_binary_tensors_equals_grpc_and_expected(server):
    http, grpc = server
    res = http.infer("tiny_risk", [rows_input()], request_id="req-http-7")
    body = res.get_response()
    assert body["id"] == "req-http-7" and body["model_name"] == "tiny_risk" and body["model_version"] == "1"
    # The binary extension both ways: outputs came as raw bytes after the JSON header.
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in body["outputs"]), body
    logits = res.as_numpy("output_0")
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits, np.array(EXPECTED["logits"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.as_numpy("probabilities"), np.array(EXPECTED["probabilities"]), rtol=1e-4, atol=1e-4)
    over_grpc = grpc.infer("tiny_risk", [grpc_rows_input()])
    np.testing.assert_allclose(logits, over_grpc.as_numpy("output_0"), rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("probabilities"), over_grpc.as_numpy("probabilities"), rtol=1e-6)


def test_infer_tabular_with_json_data_in_and_out(server):
    http, _ = server
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("output_0", "probabilities")]
    res = http.infer("tiny_risk", [rows_input(binary=False)], outputs=outputs)
    body = res.get_response()
    for o in body["outputs"]:
        assert "data" in o and "binary_data_size" not in o.get("parameters", {}), o
        assert o["shape"] == [3, 3] and o["datatype"] == "FP32" and len(o["data"]) == 9, o
    np.testing.assert_allclose(res.as_numpy("output_0"), np.array(EXPECTED["logits"]), rtol=1e-4, atol=1e-4)
    binary = http.infer("tiny_risk", [rows_input()])
    np.testing.assert_allclose(res.as_numpy("probabilities"), binary.as_numpy("probabilities"), rtol=1e-6)


def test_infer_bytes_on_tiny_bert_equals_grpc(server):
    http, grpc = server
    texts = ["I loved every minute of it.", "Terrible, slow and rude.", "café ☕ 東京"]
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    results = []
    for binary in (True, False):
        inp = httpclient.InferInput("text", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(data, binary_data=binary)
        results.append(http.infer("tiny_bert", [inp]).as_numpy("probabilities"))
    g = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    g.set_data_from_numpy(data)
    over_grpc = grpc.infer("tiny_bert", [g]).as_numpy("probabilities")
    assert over_grpc.shape == (3, 2)
    for probs in results:
        np.testing.assert_allclose(probs, over_grpc, rtol=1e-5, atol=1e-6)


def test_requested_outputs_filter_the_answer(server):
    http, _ = server
    res = http.infer("tiny_risk", [rows_input()], outputs=[httpclient.InferRequestedOutput("probabilities")])
    assert [o["name"] for o in res.get_response()["outputs"]] == ["probabilities"]
    assert res.as_numpy("output_0") is None
    np.testing.assert_allclose(res.as_numpy("probabilities"), np.array(EXPECTED["probabilities"]), rtol=1e-4, atol=1e-4)


def success_count(http, model="tiny_risk"):
    stats = http.get_inference_statistics(model)["model_stats"]
    assert [s["name"] for s in stats] == [model], stats
    return stats[0]["inference_stats"]["success"]["count"], stats[0]["inference_count"]


def test_statistics_counts_grow_with_http_inferences(server):
    http, _ = server
    before_success, before_count = success_count(http)
    for _ in range(3):
        http.infer("tiny_risk", [rows_input()])
    after_success, after_count = success_count(http)
    assert after_success - before_success == 3
    # Triton counts each row of a batched request; torchwire counts requests (3 or 9 here).
    assert after_count - before_count >= 3
    every = {s["name"] for s in http.get_inference_statistics()["model_stats"]}
    assert {"tiny_risk", "tiny_bert"} <= every
    assert http.get_inference_statistics("tiny_risk", "1")["model_stats"][0]["version"] == "1"


def test_errors_are_exceptions_with_the_http_status_and_message(server):
    http, _ = server
    e = http_error(lambda: http.infer("no_such_model", [rows_input()]))
    assert e.status() == "404" and "model `no_such_model` not found" in e.message() and "tiny_risk" in e.message(), e
    e = http_error(lambda: http.get_model_metadata("no_such_model"))
    assert e.status() == "404" and "not found" in e.message(), e
    e = http_error(lambda: http.infer("tiny_risk", [rows_input()], model_version="2"))
    assert e.status() == "404" and "served versions: 1" in e.message(), e
    bad = httpclient.InferInput("features", [1, 5], "FP32")
    bad.set_data_from_numpy(np.ones((1, 5), dtype=np.float32))
    e = http_error(lambda: http.infer("tiny_risk", [bad]))
    assert e.status() == "400" and "got 5 in dimension 1" in e.message(), e
    # JSON data shorter than the shape it claims.
    short = httpclient.InferInput("features", [1, 4], "FP32")
    short.set_data_from_numpy(np.ones((1, 4), dtype=np.float32), binary_data=False)
    short.set_shape([2, 4])
    e = http_error(lambda: http.infer("tiny_risk", [short]))
    assert e.status() == "400" and "shape needs 8 elements; `data` has 4" in e.message(), e
    nan = httpclient.InferInput("features", [1, 4], "FP32")
    nan.set_data_from_numpy(np.array([[np.nan, 1, 2, 3]], dtype=np.float32))
    e = http_error(lambda: http.infer("tiny_risk", [nan]))
    assert e.status() == "400" and "NaN" in e.message(), e
    # Still serving after all of that.
    assert http.infer("tiny_risk", [rows_input()]).as_numpy("output_0").shape == (3, 3)


def repository_states(http):
    return {m["name"]: m["state"] for m in http.get_model_repository_index()}


def test_repository_index_load_and_unload(server):
    http, _ = server
    http.load_model("tiny_risk")
    states = repository_states(http)
    assert set(states) == {"broken", "tiny_bert", "tiny_risk"} and states["tiny_risk"] == "READY", states
    http.unload_model("tiny_risk")
    assert repository_states(http)["tiny_risk"] == "UNAVAILABLE"
    http.load_model("tiny_risk")
    assert repository_states(http)["tiny_risk"] == "READY" and http.is_model_ready("tiny_risk")
    e = http_error(lambda: http.load_model("broken"))
    assert e.status() == "500" and "failed to load" in e.message() and "/" not in e.message(), e
    e = http_error(lambda: http.unload_model("no_such_model"))
    assert e.status() == "404", e
    assert http.infer("tiny_risk", [rows_input()]).as_numpy("output_0").shape == (3, 3)


# --- README.md's HTTP examples, run as written against the bundled models ---------------------

def readme_examples():
    """[(command, comment lines)] from the block between the http-examples markers: a command
    runs until its line does not end in `\\` and its quotes are closed; the `#` lines after it
    are what the README says it answers."""
    m = re.search(r"<!-- http-examples -->\s*```sh\n(.*?)```\s*<!-- /http-examples -->", README, re.S)
    assert m, "README.md has no http-examples block"
    examples, pending = [], ""
    for line in m.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            if line.strip() and examples:
                examples[-1][1].append(line.lstrip()[1:].strip())
            continue
        if line.endswith("\\"):  # a continuation: the lines join with a space
            pending += line[:-1] + " "
            continue
        pending += line
        try:
            shlex.split(pending)
        except ValueError:  # an open quote: the newline is part of the argument
            pending += "\n"
            continue
        examples.append((pending, []))
        pending = ""
    assert not pending, f"unterminated command: {pending}"
    return examples


EXAMPLES = readme_examples()


def top_level_keys(comment: str):
    """The quoted keys at the first nesting level of the JSON-ish text in `comment` (which may
    hold `...` placeholders, so it is scanned, not parsed)."""
    keys, depth, i = [], 0, 0
    while i < len(comment):
        c = comment[i]
        if c == '"':
            end = comment.index('"', i + 1)
            while comment[end - 1] == "\\":
                end = comment.index('"', end + 1)
            if depth == 1 and comment[end + 1:].lstrip().startswith(":"):
                keys.append(comment[i + 1:end])
            i = end + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return keys


def test_the_readme_block_is_found_and_split():
    assert len(EXAMPLES) >= 6, EXAMPLES
    assert all(cmd.startswith("curl ") and "localhost:50051" in cmd for cmd, _ in EXAMPLES), EXAMPLES
    assert sum(" -i " in cmd for cmd, _ in EXAMPLES) == 1
    assert not any("\\" in cmd for cmd, _ in EXAMPLES), "continuation backslashes are joined"
    assert top_level_keys('{"a":1,"b":{"c":[{"d":2}]},"e":"x:y",...}') == ["a", "b", "e"]


@pytest.fixture(scope="module")
def bundled():
    if not (BUNDLED / "diabetes" / "model.toml").exists():
        pytest.skip("the bundled models are not built (run `make models`): models/diabetes/model.toml is absent")
    proc, url = start_server(BUNDLED)
    yield url
    stop_server(proc)


def run_example(command: str, url: str):
    """Runs one README command with the test server's address; returns (status, headers, body)."""
    command = command.replace("localhost:50051", url)
    with_headers = " -i " in command
    if not with_headers:
        command += " -w '\\n%{http_code}'"
    # Bytes, not text mode: text mode would turn the header block's CRLFs into LFs.
    out = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120)
    stdout = out.stdout.decode()
    assert out.returncode == 0, (command, stdout, out.stderr.decode())
    if with_headers:
        head, _, body = stdout.partition("\r\n\r\n")
        return head.splitlines()[0], head, body
    body, _, code = stdout.rpartition("\n")
    return code, "", body


@pytest.mark.parametrize("example", EXAMPLES, ids=[re.sub(r"\s+", " ", c)[:60] for c, _ in EXAMPLES])
def test_readme_http_example(example, bundled):
    command, comments = example
    status, _, body = run_example(command, bundled)
    answer = json.loads(body)
    assert isinstance(answer, dict), body
    if " -i " in command:
        assert comments and comments[0].startswith("HTTP/"), comments
        assert status == comments[0], (status, comments[0])
        said = " ".join(comments[1:])
    else:
        assert status == "200", (command, status, body)
        said = " ".join(comments)
    keys = top_level_keys(said)
    assert keys, f"the README shows no answer for {command!r}"
    missing = [k for k in keys if k not in answer]
    assert not missing, (command, missing, body)


def test_readme_python_example(bundled):
    m = re.search(r"<!-- /http-examples -->\s*```python\n(.*?)```", README, re.S)
    assert m and "tritonclient.http" in m.group(1), "README.md has no Python example after the curl block"
    code = m.group(1).replace("localhost:50051", bundled)
    out = subprocess.run([str(ROOT / ".venv-triton" / "bin" / "python"), "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    probs = [float(x) for x in re.findall(r"[0-9]*\.[0-9]+(?:e[-+]?[0-9]+)?", out.stdout)]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-4, out.stdout

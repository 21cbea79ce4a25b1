"""Offline checks of deploy/: the rendered Kubernetes overlays against the API schemas and the
server's real behaviour, the Prometheus configuration against a real Prometheus, the dashboard's
and alerts' metric names against a real torchwire's /metrics, the runtime image's library
layout, and negative cases proving the validators reject broken input.

Run by scripts/deploy-check.sh (`.venv-tools/bin/python -m pytest -q tests/deploy`), which
installs the tools. Needs: TORCHWIRE_BIN (default target/debug/torchwire), the project venv
(.venv: libtorch, grpcurl; scripts/setup.sh), promtool and prometheus (scripts/setup-system.sh),
kubectl (its built-in kustomize renders the overlays).
Scratch files go to target/deploy-check/.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
# The oldest and newest Kubernetes versions the manifests are checked against (native gRPC
# probes need 1.27; kubernetes-validate bundles schemas up to 1.37).
K8S_VERSIONS = ("1.29.0", "1.37.0")
WORK = ROOT / "target" / "deploy-check"
TOOLS = Path(sys.executable).parent
BIN = Path(os.environ.get("TORCHWIRE_BIN", ROOT / "target" / "debug" / "torchwire"))
if not BIN.is_absolute():
    BIN = ROOT / BIN
GRPCURL = ROOT / ".venv" / "grpcurl"
TINY_ROW = {"age": 50, "bmi": 27, "glucose": 100, "systolic_bp": 120}


# ---------------------------------------------------------------------------------------------
# helpers


def run(cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, check, timeout: float = 60, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text() if log else ''}")
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{log.read_text()[-4000:] if log else ''}")


def clean_env(**extra) -> dict:
    """The environment without TORCHWIRE_* settings from the caller (they would override flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHWIRE_") and k != "RUST_LOG"}
    env.update(extra)
    return env


def need(path: Path, hint: str):
    if not path.exists():
        pytest.fail(f"{path} is missing: {hint}")


def grpcurl(addr: str, method: str, body: dict, *flags: str) -> subprocess.CompletedProcess:
    need(GRPCURL, "run scripts/setup.sh (it links grpcurl into .venv)")
    return run([GRPCURL, "-plaintext", *flags, "-d", json.dumps(body), addr, method], timeout=60)


class Server:
    """A `torchwire serve` process on loopback ports, stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], env: dict, binary: Path = BIN):
        need(binary, "build it first (cargo build --locked) or set TORCHWIRE_BIN")
        WORK.mkdir(parents=True, exist_ok=True)
        self.log = WORK / f"{name}.log"
        self.proc = subprocess.Popen(
            [str(binary), "serve", *args], cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )

    def wait_serving(self, grpc_addr: str, timeout: float = 90):
        def serving():
            r = grpcurl(grpc_addr, "grpc.health.v1.Health/Check", {"service": ""})
            return r.returncode == 0 and '"SERVING"' in r.stdout

        wait_for("gRPC health SERVING", serving, timeout, self.proc, self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in kinds(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def parse_cpu(q) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


# ---------------------------------------------------------------------------------------------
# rendering the overlays


def kubectl_kustomize() -> str:
    """kubectl, whose `kustomize` subcommand (kustomize v5) renders the overlays. There is no
    fallback renderer: a home-made one drifts from what `kubectl apply -k` does."""
    kubectl = shutil.which("kubectl")
    if not kubectl or run([kubectl, "kustomize", "--help"], timeout=30).returncode != 0:
        pytest.fail("kubectl (with its built-in kustomize v5) is needed to render deploy/k8s: install kubectl")
    return kubectl


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[Path, list[dict]]]:
    """Each overlay rendered with `kubectl kustomize` to target/deploy-check/rendered-<overlay>.yaml."""
    WORK.mkdir(parents=True, exist_ok=True)
    kubectl = kubectl_kustomize()
    out = {}
    for name in OVERLAYS:
        r = run([kubectl, "kustomize", DEPLOY / "k8s" / "overlays" / name], timeout=60)
        assert r.returncode == 0, r.stderr
        path = WORK / f"rendered-{name}.yaml"
        path.write_text(r.stdout)
        out[name] = (path, [d for d in yaml.safe_load_all(r.stdout) if d])
    return out


# ---------------------------------------------------------------------------------------------
# schema validation


def kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess:
    return run([TOOLS / "kubernetes-validate", "--strict", "-k", version, path], timeout=120)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(rendered, overlay, version):
    path, docs = rendered[overlay]
    r = kubernetes_validate(path, version)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = r.stdout.count(" passed for resource ")
    assert passed == len(docs) == 6, r.stdout + r.stderr


def broken_deployment(rendered, tmp_name: str, mutate) -> Path:
    deployment = json.loads(json.dumps(one(rendered["cpu"][1], "Deployment")))
    mutate(deployment)
    path = WORK / tmp_name
    path.write_text(yaml.safe_dump(deployment))
    return path


def test_kubernetes_validate_rejects_misspelled_field(rendered):
    def misspell(d):
        spec = d["spec"]["template"]["spec"]
        spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")

    r = kubernetes_validate(broken_deployment(rendered, "broken-field.yaml", misspell), K8S_VERSIONS[-1])
    assert r.returncode != 0, r.stdout
    assert "terminationGracePeriodSecond" in r.stdout + r.stderr


def test_kubernetes_validate_rejects_string_for_int(rendered):
    def stringify(d):
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = "five"

    r = kubernetes_validate(broken_deployment(rendered, "broken-type.yaml", stringify), K8S_VERSIONS[-1])
    assert r.returncode != 0, r.stdout
    assert "five" in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# what the manifests say


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def config_data(docs: list[dict]) -> dict[str, str]:
    c = container(docs)
    (ref,) = c["envFrom"]
    return one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_shutdown_and_threads(rendered, overlay):
    docs = rendered[overlay][1]
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    c = container(docs)
    data = config_data(docs)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"

    grpc_port = int(data["TORCHWIRE_GRPC_ADDR"].rsplit(":", 1)[1])
    metrics_port = int(data["TORCHWIRE_METRICS_ADDR"].rsplit(":", 1)[1])
    assert data["TORCHWIRE_GRPC_ADDR"].startswith("0.0.0.0:") and data["TORCHWIRE_METRICS_ADDR"].startswith("0.0.0.0:")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": grpc_port, "service": ""}, probe

    # The kubelet must not SIGKILL before the preStop sleep and torchwire's own grace are over.
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = int(data.get("TORCHWIRE_SHUTDOWN_GRACE_SECS", "30"))
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + grace

    (threads,) = [e for e in c["env"] if e["name"] == "TORCHWIRE_INTRA_OP_THREADS"]
    ref = threads["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
    assert "cpu" in c["resources"]["limits"]

    assert data["TORCHWIRE_READY_AFTER_PRELOAD"] == "true" and data["TORCHWIRE_PRELOAD"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_hpa_and_pdb_select_the_pods(rendered, overlay):
    docs = rendered[overlay][1]
    dep = one(docs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()

    services = kinds(docs, "Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    cluster_ip = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(cluster_ip) == 1
    for s in services:
        assert s["spec"]["selector"].items() <= labels.items()
        grpc = [p for p in s["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc and grpc[0]["appProtocol"] == "kubernetes.io/h2c" and grpc[0]["targetPort"] == "grpc"

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["torchwire_inflight_requests"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_cpu_overlay_is_cpu_only(rendered):
    docs = rendered["cpu"][1]
    assert config_data(docs)["TORCHWIRE_CPU_ONLY"] == "true"
    assert "nvidia.com/gpu" not in json.dumps(docs)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}


def test_gpu_overlay_asks_for_a_gpu(rendered):
    docs = rendered["gpu"][1]
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    text = json.dumps(docs)
    assert "TORCHWIRE_CPU_ONLY" not in text and "--cpu-only" not in text
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "@cuda" in config_data(docs)["TORCHWIRE_PRELOAD"]


def cli_env_names() -> set[str]:
    return set(re.findall(r'env\s*=\s*"(TORCHWIRE_[A-Z0-9_]+)"', (ROOT / "src" / "cli.rs").read_text()))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_torchwire_variable_is_a_serve_flag(rendered, overlay):
    """clap ignores unknown variables, so a misspelt TORCHWIRE_* name would be silently lost."""
    docs = rendered[overlay][1]
    known = cli_env_names()
    assert "TORCHWIRE_PRELOAD" in known, "src/cli.rs parsing broke"
    used = {k for k in config_data(docs) if k.startswith("TORCHWIRE_")}
    used |= {e["name"] for e in container(docs).get("env", []) if e["name"].startswith("TORCHWIRE_")}
    assert used - known == set()


def test_rendered_cpu_config_boots_the_real_binary(rendered):
    """The CPU overlay's ConfigMap and downward-API thread count, as the pod's environment (loopback
    addresses, the fixtures and a fixture preload in place of the image's): the server reads them,
    turns health SERVING once the preload is ready, and exits 0 on SIGTERM."""
    docs = rendered["cpu"][1]
    c = container(docs)
    env = clean_env(**config_data(docs))
    threads = math.ceil(parse_cpu(c["resources"]["limits"]["cpu"]))  # resourceFieldRef, divisor 1
    grpc_addr, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    env.update(
        TORCHWIRE_INTRA_OP_THREADS=str(threads),
        TORCHWIRE_GRPC_ADDR=grpc_addr,
        TORCHWIRE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        TORCHWIRE_MODEL_DIR=str(ROOT / "models" / "fixtures"),
        TORCHWIRE_PRELOAD="tiny_risk",
        TORCHWIRE_LOG_FORMAT="json",
    )
    server = Server("configmap-boot", [], env)
    try:
        server.wait_serving(grpc_addr)
        assert http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200
        r = grpcurl(grpc_addr, "torchwire.v1.Inference/Predict", {"model": "tiny_risk", "rows": [{"features": TINY_ROW}]})
        assert r.returncode == 0 and '"device": "cpu"' in r.stdout, r.stdout + r.stderr
    finally:
        code = server.stop()
    log = server.log.read_text()
    assert code == 0, log
    assert "preloaded" in log, log


# ---------------------------------------------------------------------------------------------
# metric names: the dashboard, the alerts and the adapter rule against a real /metrics

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (enough PromQL for the queries in deploy/)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(0) in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (code) (rate(a_total{job=~"$job"}[$__rate_interval]))') == {"a_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m]))) > 0.5") == {"b_bucket"}
    assert metric_names("x unless y offset 15m or up == 0") == {"x", "y", "up"}
    assert metric_names("sum(rate(c_sum[1m])) by (model) / sum(rate(c_count[1m])) by (model) > 1e3") == {"c_sum", "c_count"}


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "torchwire.json").read_text())


def dashboard_exprs(d: dict) -> list[str]:
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def adapter_rules() -> list[dict]:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus-adapter.yaml").read_text())["rules"]["custom"]


def test_dashboard_has_the_panels():
    d = dashboard()
    titles = [p["title"] for p in d["panels"]]
    for want in ("Requests by code", "latency", "Queue depth", "Batch size", "Models loaded", "Memory", "Rejections"):
        assert any(want.lower() in t.lower() for t in titles), (want, titles)
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
    for p in d["panels"]:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    latency = next(p for p in d["panels"] if "latency" in p["title"].lower())
    quantiles = {re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1) for t in latency["targets"]}
    assert quantiles == {"0.5", "0.99"}
    memory = next(p for p in d["panels"] if p["title"] == "Memory")
    assert any("process_resident_memory_bytes" in t["expr"] for t in memory["targets"])
    rejections = next(p for p in d["panels"] if p["title"] == "Rejections")
    assert any("torchwire_rejected_requests_total" in t["expr"] for t in rejections["targets"])


@pytest.fixture(scope="module")
def live():
    """A real server on the fixtures (the brief's command line, plus --default-timeout-ms 1 so a
    request without a deadline expires) after traffic that makes every label vector the
    dashboard and alerts read appear: a deadline expiry, a good Predict, a model that fails to
    load and an invalid request (a rejection)."""
    grpc_addr, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    args = ["--model-dir", "models/fixtures", "--grpc-addr", grpc_addr, "--metrics-addr", f"127.0.0.1:{metrics_port}"]
    server = Server("metrics", [*args, "--cpu-only", "--default-timeout-ms", "1"], clean_env())
    try:
        server.wait_serving(grpc_addr)
        predict = "torchwire.v1.Inference/Predict"
        good = {"model": "tiny_risk", "rows": [{"features": TINY_ROW}]}
        outcomes = {
            # No grpc-timeout: the 1 ms default deadline passes while tiny_risk loads.
            "expired": grpcurl(grpc_addr, predict, good),
            "ok": grpcurl(grpc_addr, predict, good, "-max-time", "30"),
            "load_error": grpcurl(grpc_addr, predict, {"model": "broken", "rows": [{"features": {"x": 1}}]}, "-max-time", "30"),
            "invalid": grpcurl(grpc_addr, predict, {"model": "tiny_risk", "rows": [{"features": {"age": 1}}]}, "-max-time", "30"),
        }
        assert "DeadlineExceeded" in outcomes["expired"].stdout + outcomes["expired"].stderr
        assert outcomes["ok"].returncode == 0 and '"predictions"' in outcomes["ok"].stdout, outcomes["ok"].stderr
        assert "InvalidArgument" in outcomes["invalid"].stdout + outcomes["invalid"].stderr
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
        yield {"server": server, "grpc": grpc_addr, "metrics_port": metrics_port, "samples": samples, "text": text}
    finally:
        server.stop()


def declared_metrics() -> set[str]:
    return set(re.findall(r'"(torchwire_[a-z0-9_]+)"', (ROOT / "src" / "metrics.rs").read_text()))


def check_names(names: set[str], samples: set[str], where: str) -> set[str]:
    """Fails on a name that neither /metrics shows nor src/metrics.rs declares; returns the
    names accepted only because they are declared (label vectors not yet observed)."""
    declared = declared_metrics()
    only_declared, missing = set(), set()
    for n in sorted(names):
        if n in samples or n == "up":  # `up` is written by Prometheus itself
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n in declared or base in declared:
            only_declared.add(n)
        else:
            missing.add(n)
    assert not missing, f"{where} reads metrics torchwire does not export: {sorted(missing)}"
    if only_declared:
        print(f"{where}: declared in src/metrics.rs but not observed: {sorted(only_declared)}")
    return only_declared


def test_observed_metrics_are_declared(live):
    """The scrape parses, and the names declared in src/metrics.rs match what the server shows."""
    torchwire = {re.sub(r"_(bucket|sum|count)$", "", s) for s in live["samples"] if s.startswith("torchwire_")}
    assert torchwire <= declared_metrics()
    assert "process_resident_memory_bytes" in live["samples"]


def test_dashboard_metrics_exist(live):
    names = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard())))
    assert {"torchwire_requests_total", "process_resident_memory_bytes", "torchwire_rejected_requests_total"} <= names
    assert check_names(names, live["samples"], "dashboard") == set(), "traffic should make every dashboard metric appear"


def test_alert_and_adapter_metrics_exist(live):
    names = set().union(*(metric_names(e) for e in alert_exprs()))
    assert names == {
        "torchwire_requests_total",
        "torchwire_request_duration_seconds_bucket",
        "torchwire_deadline_exceeded_total",
        "torchwire_queue_depth",
        "torchwire_model_loads_total",
        "up",
    }
    check_names(names, live["samples"], "alerts.yml")
    for rule in adapter_rules():
        series = metric_names(rule["seriesQuery"])
        check_names(series, live["samples"], "prometheus-adapter.yaml")
    # The HPA reads what the adapter serves.
    hpa = yaml.safe_load((DEPLOY / "k8s" / "base" / "hpa.yaml").read_text())
    served = {r["name"]["as"] for r in adapter_rules()}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted <= served


# ---------------------------------------------------------------------------------------------
# Prometheus: configuration, rules, and a real Prometheus scraping through the relabelling


def promtool(*args, timeout=60) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if not exe:
        pytest.fail("promtool not found: run scripts/setup-system.sh (Debian's prometheus package)")
    return run([exe, *args], timeout=timeout)


def prometheus_config() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def with_file_sd(cfg: dict, sd_file: Path) -> dict:
    """The configuration with the pod job's kubernetes_sd_configs swapped for a file_sd_configs
    (same relabelling), and rule files made absolute."""
    cfg = json.loads(json.dumps(cfg))
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in cfg.get("rule_files", [])]
    for job in cfg["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
            job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    return cfg


def test_promtool_check_config():
    r = promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    if r.returncode == 0:
        return
    out = r.stdout + r.stderr
    # Debian builds Prometheus without Kubernetes service discovery, so its promtool rejects
    # the key itself. Check everything else: the same file with that one block swapped.
    assert "field kubernetes_sd_configs not found" in out, out
    WORK.mkdir(parents=True, exist_ok=True)
    sd_file = WORK / "check-config-sd.json"
    sd_file.write_text("[]")
    derived = WORK / "check-config-prometheus.yml"
    derived.write_text(yaml.safe_dump(with_file_sd(prometheus_config(), sd_file)))
    r = promtool("check", "config", derived)
    assert r.returncode == 0, r.stdout + r.stderr
    print("promtool lacks Kubernetes SD (Debian build): checked with kubernetes_sd_configs swapped for file_sd_configs")


def test_promtool_check_rules_rejects_broken_rules():
    WORK.mkdir(parents=True, exist_ok=True)
    broken = {
        "bad-promql.yml": "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum by (job (rate(x[5m]))\n",
        "bad-duration.yml": "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: ten minutes\n",
        "no-expr.yml": "groups:\n  - name: g\n    rules:\n      - alert: A\n        for: 5m\n",
    }
    for name, text in broken.items():
        (WORK / name).write_text(text)
        r = promtool("check", "rules", WORK / name)
        assert r.returncode != 0, f"{name} passed promtool check rules:\n{r.stdout}"


def test_promtool_test_rules_catches_a_wrong_expectation():
    """The unit tests have teeth: expecting the wrong severity fails them."""
    WORK.mkdir(parents=True, exist_ok=True)
    text = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    assert "severity: critical" in text
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", WORK / "alerts.yml")
    (WORK / "alerts_test.yml").write_text(text.replace("severity: critical", "severity: page"))
    r = promtool("test", "rules", WORK / "alerts_test.yml")
    assert r.returncode != 0, r.stdout


def test_prometheus_scrapes_pods_through_the_relabelling(live):
    """A real Prometheus runs prometheus.yml with the pod job fed by a file of what Kubernetes
    pod discovery would report (the same __meta_kubernetes_* labels): the annotated torchwire
    pod's two container ports collapse into one target on the annotated metrics port, labelled
    namespace and pod; other pods are dropped. Then the adapter's query gives a per-pod value,
    every alert rule evaluates cleanly, and the fixture `broken`, which failed to load, fires
    TorchwireModelLoadFailures from real metrics."""
    exe = shutil.which("prometheus")
    if not exe:
        pytest.fail("prometheus not found: run scripts/setup-system.sh (Debian's prometheus package)")
    prom_dir = WORK / "prometheus"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    mport = live["metrics_port"]
    pod_labels = {
        "__meta_kubernetes_namespace": "ml",
        "__meta_kubernetes_pod_name": "torchwire-0",
        "__meta_kubernetes_pod_node_name": "node-a",
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "torchwire",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": str(mport),
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }
    sd = [
        # Pod discovery yields one target per container port: grpc and metrics.
        {"targets": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{mport}"], "labels": pod_labels},
        # Not annotated for scraping.
        {"targets": ["127.0.0.2:8080"], "labels": {**pod_labels, "__meta_kubernetes_pod_ip": "127.0.0.2",
                                                     "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "false"}},
        # Annotated, but another application.
        {"targets": ["127.0.0.3:8080"], "labels": {**pod_labels, "__meta_kubernetes_pod_ip": "127.0.0.3",
                                                     "__meta_kubernetes_pod_label_app_kubernetes_io_name": "other"}},
    ]
    sd_file = prom_dir / "pods.json"
    sd_file.write_text(json.dumps(sd))
    cfg = with_file_sd(prometheus_config(), sd_file)
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in cfg["scrape_configs"]:
        if "static_configs" in job:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{mport}"]}]
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = prom_dir / "prometheus.log"
    proc = subprocess.Popen(
        [exe, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        def get(path):
            status, body = http_get(api + path)
            assert status == 200, body
            return json.loads(body)["data"]

        def pod_target():
            targets = get("/targets")
            pods = [t for t in targets["activeTargets"] if t["labels"]["job"] == "torchwire-pods"]
            return targets if pods and all(t["health"] == "up" for t in pods) else None

        targets = wait_for("the torchwire-pods target to be up", pod_target, 60, proc, log)
        (pod,) = [t for t in targets["activeTargets"] if t["labels"]["job"] == "torchwire-pods"]
        assert pod["scrapeUrl"] == f"http://127.0.0.1:{mport}/metrics"
        assert {k: pod["labels"][k] for k in ("namespace", "pod", "node", "instance")} == {
            "namespace": "ml", "pod": "torchwire-0", "node": "node-a", "instance": f"127.0.0.1:{mport}"}  # fmt: skip
        dropped = {t["discoveredLabels"]["__address__"] for t in targets["droppedTargets"]}
        assert {"127.0.0.2:8080", "127.0.0.3:8080"} <= dropped

        # The adapter's queries, with its template filled in as it would for this pod.
        (rule,) = adapter_rules()
        series = get("/series?" + urllib.parse.urlencode({"match[]": rule["seriesQuery"]}))
        assert any(s.get("pod") == "torchwire-0" and s.get("namespace") == "ml" for s in series), series
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", rule["name"]["as"])
            .replace("<<.LabelMatchers>>", 'namespace="ml",pod=~"torchwire-0"')
            .replace("<<.GroupBy>>", "pod")
        )
        result = get("/query?" + urllib.parse.urlencode({"query": query}))["result"]
        assert [r["metric"] for r in result] == [{"pod": "torchwire-0"}], result

        def rules_evaluated():
            groups = get("/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if len(rules) == 6 and all(r["health"] == "ok" for r in rules) else None

        wait_for("every alert rule to evaluate", rules_evaluated, 30, proc, log)

        def load_failure_alert():
            alerts = get("/alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "TorchwireModelLoadFailures"
                    and a["labels"].get("model") == "broken" and a["state"] == "firing"]  # fmt: skip

        wait_for("TorchwireModelLoadFailures for the broken fixture", load_failure_alert, 30, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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

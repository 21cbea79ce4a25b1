"""Offline checks of deploy/k8s: both overlays rendered with `kubectl kustomize`, validated with
kubernetes-validate --strict against the oldest and newest supported Kubernetes, what the
manifests promise (probes, shutdown timing, thread count, selectors, HPA, PDB, CPU/GPU
overlays), every TORCHWIRE_* variable a real `serve` flag, and the CPU overlay's configuration
booting the real binary. Helpers: deploy_helpers.py; run by scripts/deploy-check.sh.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    DEPLOY,
    ROOT,
    TINY_ROW,
    TOOLS,
    WORK,
    Server,
    clean_env,
    free_port,
    grpcurl,
    http_get,
    kinds,
    one,
    parse_cpu,
    run,
)

OVERLAYS = ("cpu", "gpu")
# The oldest and newest Kubernetes versions the manifests are checked against (native gRPC
# probes need 1.27; kubernetes-validate bundles schemas up to 1.37).
K8S_VERSIONS = ("1.29.0", "1.37.0")


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

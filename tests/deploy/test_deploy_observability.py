"""Offline checks of deploy/'s observability: the dashboard's, alerts' and adapter's metric names
against a real torchwire's /metrics after traffic, promtool on the configuration and rules (and
rejecting broken ones), and a real Prometheus scraping a pod through prometheus.yml's
relabelling, evaluating every alert and firing one from real metrics. Helpers:
deploy_helpers.py; run by scripts/deploy-check.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    DEPLOY,
    ROOT,
    TINY_ROW,
    WORK,
    Server,
    clean_env,
    free_port,
    grpcurl,
    http_get,
    run,
    wait_for,
)


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

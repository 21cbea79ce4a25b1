"""The status page (`GET /`, src/rest/ui/index.html) in headless Chromium against the real torchwire
binary serving the committed fixtures: it lists the models with their state per device, the
tiny_risk form built from the manifest's features predicts the label the JSON API gives, the
sentiment box classifies, the Stats charts draw once requests come in, it loads nothing from
another origin and logs no console error; with API keys it asks for one and works once given;
`--ui=false` turns it off.

Run by `make test` (TORCHWIRE_BIN points at the built binary; Chromium and chromedriver come
from Debian, installed by scripts/setup-system.sh). `TORCHWIRE_UI_SCREENSHOT=docs/status-page.png`
also runs `test_screenshot`, which serves the bundled models (built by `make models`) and saves
the page as the README shows it.
"""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import twserver  # noqa: E402  (this folder's server starter)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models" / "fixtures"
EXPECTED = json.loads((FIXTURES / "tiny_risk" / "expected.json").read_text())
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = "ui-test-key-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason=f"{CHROMIUM} or {CHROMEDRIVER} missing (bash scripts/setup-system.sh)")


def call(base: str, path: str, body=None, key=None):
    """One HTTP call; returns (status, headers, parsed JSON or the raw bytes)."""
    req = urllib.request.Request(base + path, method="GET" if body is None else "POST",
                                 data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    if (headers.get("content-type") or "").startswith("application/json"):
        return status, headers, json.loads(raw)
    return status, headers, raw


def start_server(model_dir: Path, *flags: str):
    """Starts torchwire on `model_dir` (plus `flags`); returns (process, base URL) once it is live."""
    proc, addr = twserver.start(model_dir, *flags)
    return proc, f"http://{addr}"


stop_server = twserver.stop


@pytest.fixture(scope="module")
def server():
    proc, base = start_server(FIXTURES)
    yield base
    stop_server(proc)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    # The viewport itself (the window size would include the browser's own bars).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def wait(driver, what: str, fn, timeout=30):
    """Polls `fn(driver)` until it is truthy; returns its value. The page re-renders its models
    table and charts on every poll (3 s), so an element `fn` found may be replaced before it is
    read: a stale element means "look again"."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: fn(d), message=what)


def find(driver, css: str):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found else None


def model_rows(driver) -> dict:
    """Each listed model's kind and its state per device, read in one pass (call it inside
    `wait`, which retries when a poll replaced the table meanwhile)."""
    return {
        r.get_attribute("data-model"): {
            "kind": r.get_attribute("data-kind"),
            "states": {b.get_attribute("data-device"): b.get_attribute("data-state")
                       for b in r.find_elements(By.CSS_SELECTOR, "[data-state]")},
        }
        for r in driver.find_elements(By.CSS_SELECTOR, "#models tr[data-model]")
    }


def fill_and_predict(driver, model: str, features: dict):
    form = wait(driver, f"the {model} form", lambda d: find(d, f'[data-predict-form="{model}"]'))
    for name, value in features.items():
        field = form.find_element(By.CSS_SELECTOR, f'input[data-feature="{name}"]')
        field.clear()
        field.send_keys(str(value))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def result_label(driver, css: str) -> str:
    """The label shown under `css` once an answer (or an error) is there."""
    box = wait(driver, f"an answer in {css}",
               lambda d: find(d, f"{css} [data-field=label]") or find(d, f"{css} .error"))
    assert box.get_attribute("data-field") == "label", box.text
    return box.text


def chart_shapes(driver, chart: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f'[data-chart="{chart}"] svg path, [data-chart="{chart}"] svg rect'))


def polls(driver) -> int:
    """Points in the requests-per-minute chart: one per poll since the page loaded."""
    svg = find(driver, '[data-chart="rpm"] svg')
    return int(svg.get_attribute("data-points")) if svg else 0


def console_problems(driver, allowed=()) -> list:
    """Browser log entries that are errors, or any script message, except network entries
    containing one of the `allowed` strings (a 4xx a test provoked on purpose)."""
    out = []
    for e in driver.get_log("browser"):
        if e.get("source") == "network" and any(a in e["message"] for a in allowed):
            continue
        if e["level"] == "SEVERE" or e.get("source") == "javascript":
            out.append(e)
    return out


def foreign_resources(driver, base: str) -> list:
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert names, "the page fetched nothing: the check below would pass vacuously"
    return [n for n in names if not n.startswith(base + "/")]


def test_page_lists_models_predicts_classifies_and_charts(server, browser):
    base = server
    status, headers, page = call(base, "/")
    assert status == 200 and headers["content-type"].startswith("text/html"), (status, headers)
    assert b"<script src" not in page and b"<link rel=\"stylesheet\"" not in page
    d = browser
    d.get(base + "/")

    rows = wait(d, "the fixture models listed", lambda d: (r := model_rows(d)) and set(r) >= {"tiny_risk"} and r)
    assert set(rows) == {"broken", "tiny_bert", "tiny_risk"}
    assert rows["tiny_risk"]["kind"] == "tabular"
    assert rows["tiny_bert"]["kind"] == "text-classification"
    states = rows["tiny_risk"]["states"]
    assert set(states) == {"cpu"} and states["cpu"] in ("UNLOADED", "LOADING", "READY"), states

    # A form for each tabular model, its fields the manifest's features with their units.
    forms = {f.get_attribute("data-predict-form") for f in d.find_elements(By.CSS_SELECTOR, "[data-predict-form]")}
    assert forms == {"broken", "tiny_risk"}
    labels = [l.text for l in d.find_elements(By.CSS_SELECTOR, '[data-predict-form="tiny_risk"] label')]
    assert labels == ["age (years)", "bmi (kg/m2)", "glucose (mg/dL)", "systolic_bp (mmHg)"]

    row = dict(zip(EXPECTED["features"], EXPECTED["rows"][1]))
    fill_and_predict(d, "tiny_risk", row)
    shown = result_label(d, '[data-predict-result="tiny_risk"]')
    status, _, api = call(base, "/v1/models/tiny_risk:predict", {"rows": [{"features": row}]})
    assert status == 200, api
    want = api["predictions"][0]
    logits = EXPECTED["logits"][1]
    assert shown == want["label"] == EXPECTED["labels"][logits.index(max(logits))]
    score = find(d, '[data-predict-result="tiny_risk"] [data-field=score]').text
    assert score == f"{want['score'] * 100:.1f}%"
    # The state follows the load the prediction caused.
    wait(d, "tiny_risk READY on cpu",
         lambda d: find(d, '#models tr[data-model="tiny_risk"] [data-device="cpu"][data-state="READY"]'))

    text = "What a wonderful, moving film."
    d.find_element(By.ID, "sentiment-text").send_keys(text)
    d.find_element(By.ID, "sentiment-button").click()
    shown = result_label(d, "#sentiment-result")
    status, _, api = call(base, "/v1/sentiment", {"texts": [text]})
    assert status == 200 and shown == api["results"][0]["label"] and shown in ("negative", "positive"), api

    for _ in range(5):
        assert call(base, "/v1/models/tiny_risk:predict", {"rows": [{"features": row}]})[0] == 200
    d.refresh()
    wait(d, "the latency bars", lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-chart="latency"] rect[data-percentile]')) >= 3)
    for chart in ("latency", "rpm", "memory"):
        wait(d, f"the {chart} chart drawn", lambda d: chart_shapes(d, chart) > 0)
    wait(d, "a second poll in the rpm history", lambda d: polls(d) >= 2)
    total = int(find(d, '[data-stat="totalRequests"]').text.replace(",", ""))
    assert total >= 8, total
    for stat in ("requestsPerMinute", "errorRatePercent", "uptimeSeconds", "processMemoryMb", "cpuPercent"):
        assert find(d, f'[data-stat="{stat}"]').text not in ("", "–"), stat

    assert foreign_resources(d, base) == []
    assert console_problems(d) == []

    # A missing feature: the server's message, shown in the form's result.
    fill_and_predict(d, "tiny_risk", {"age": 50, "bmi": "", "glucose": 90, "systolic_bp": 120})
    err = wait(d, "the error shown", lambda d: find(d, '[data-predict-result="tiny_risk"] .error'))
    assert "missing feature `bmi` (kg/m2)" in err.text and err.get_attribute("data-error") == "400", err.text
    assert console_problems(d, allowed=["tiny_risk:predict - Failed to load resource: the server responded with a status of 400"]) == []


def test_api_key_box(tmp_path, browser):
    keys = tmp_path / "keys"
    keys.write_text(f"# the status page test's key\n{KEY}\n")
    proc, base = start_server(FIXTURES, "--api-key-file", str(keys))
    try:
        status, _, page = call(base, "/")
        assert status == 200 and b"<html" in page, "the page itself needs no key"
        status, _, body = call(base, "/v1/models")
        assert status == 401 and body["error"], body
        d = browser
        d.get(base + "/")
        box = d.find_element(By.ID, "key-box")
        wait(d, "the key box shown", lambda d: box.is_displayed())
        assert model_rows(d) == {}

        d.find_element(By.ID, "api-key").send_keys("not-the-key-0123456789")
        d.find_element(By.ID, "key-button").click()
        wait(d, "the wrong key refused", lambda d: box.is_displayed() and "refused" in d.find_element(By.ID, "key-hint").text)

        d.find_element(By.ID, "api-key").send_keys(KEY)
        d.find_element(By.ID, "key-button").click()
        wait(d, "the models listed with the key", lambda d: "tiny_risk" in model_rows(d))
        assert not box.is_displayed()
        assert d.execute_script("return sessionStorage.getItem('torchwire.apiKey')") == KEY
        row = dict(zip(EXPECTED["features"], EXPECTED["rows"][0]))
        fill_and_predict(d, "tiny_risk", row)
        shown = result_label(d, '[data-predict-result="tiny_risk"]')
        status, _, api = call(base, "/v1/models/tiny_risk:predict", {"rows": [{"features": row}]}, key=KEY)
        assert status == 200 and shown == api["predictions"][0]["label"], api
        # A reload keeps the key for the tab.
        d.refresh()
        wait(d, "the models listed after a reload", lambda d: "tiny_risk" in model_rows(d))
        assert not d.find_element(By.ID, "key-box").is_displayed()
        assert console_problems(d, allowed=["the server responded with a status of 401"]) == []
    finally:
        stop_server(proc)


def test_ui_false_turns_the_page_off():
    proc, base = start_server(FIXTURES, "--ui=false")
    try:
        status, _, body = call(base, "/")
        assert status == 404, (status, body)
        assert call(base, "/v1/models")[0] == 200, "the JSON API stays on"
    finally:
        stop_server(proc)


@pytest.mark.skipif(not os.environ.get("TORCHWIRE_UI_SCREENSHOT"), reason="TORCHWIRE_UI_SCREENSHOT not set")
def test_screenshot(browser):
    """The README's picture: the bundled models after a few requests of each kind."""
    models = ROOT / "models"
    if not (models / "heart_disease" / "1" / "model.pt").exists():
        pytest.skip("bundled models not built (make models)")
    proc, base = start_server(models)
    try:
        d = browser
        d.get(base + "/")
        wait(d, "the models listed", lambda d: "heart_disease" in model_rows(d))
        # Loaded first, then the figures reset, so that they show requests rather than loads.
        for name in ("diabetes", "heart_disease", "sentiment"):
            assert call(base, f"/v1/models/{name}:load", {})[0] == 200
        assert call(base, "/v1/stats:reset", {})[0] == 200
        for text in ["A wonderful, moving film.", "Dull and far too long.", "The service was quick and friendly."]:
            assert call(base, "/v1/sentiment", {"texts": [text]})[0] == 200
        row = {"npreg": 2, "glu": 148, "bp": 72, "skin": 35, "bmi": 33.6, "ped": 0.627, "age": 50}
        for _ in range(6):
            call(base, "/v1/models/diabetes:predict", {"rows": [{"features": row}]})
        hd = {f: 0 for f in ("sex_male", "chest_pain_typical_angina", "chest_pain_atypical_angina",
                             "chest_pain_non_anginal", "rest_ecg_st_t_abnormality", "rest_ecg_lv_hypertrophy",
                             "st_slope_upsloping", "st_slope_downsloping", "thal_normal", "thal_fixed_defect",
                             "fasting_blood_sugar_over_120")}
        hd.update(age=63, sex_male=1, chest_pain_asymptomatic=1, rest_ecg_normal=1, st_slope_flat=1,
                  thal_reversable_defect=1, exercise_angina=1, resting_blood_pressure=145, serum_cholesterol=233,
                  max_heart_rate=150, st_depression=2.3, major_vessels_fluoroscopy=1)
        fill_and_predict(d, "heart_disease", hd)
        result_label(d, '[data-predict-result="heart_disease"]')
        d.find_element(By.ID, "sentiment-text").send_keys("A wonderful, moving film.")
        d.find_element(By.ID, "sentiment-button").click()
        result_label(d, "#sentiment-result")
        wait(d, "a few polls in the rpm chart", lambda d: polls(d) >= 6)
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(os.environ["TORCHWIRE_UI_SCREENSHOT"])
    finally:
        stop_server(proc)

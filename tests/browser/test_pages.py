"""The web pages a person uses, in a real browser: Debian's chromium driven by Playwright (never a
downloaded browser), against the running stack. Marked `browser` (`pytest -m browser` runs them
alone). Each page's screenshot is kept in test-artifacts/browser/ (ignored by git); a failing step says
which element it missed."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from test_user_paths import EXAMPLES, _ok, mlyard

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser, url: str, shot: str, auth: str | None = None, **viewport):
    """A new page at `url`; the Prefect UI of a stack with an auth string asks for it once, as a person
    would type it (`mlyard status` shows where it is kept)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000, **viewport})
    page.set_default_timeout(30_000)
    page.goto(url, wait_until="networkidle")
    login = page.get_by_placeholder("admin:pass")
    if auth:  # a new page asks; on a loaded machine its form can come after the network went quiet
        try:
            login.wait_for(state="visible", timeout=20_000)
        except Exception:  # noqa: BLE001 - no login asked for: the page is already in
            return page
        login.fill(auth)
        page.get_by_role("button", name="Login").click()
        page.wait_for_load_state("networkidle")
        page.goto(url, wait_until="networkidle")
    return page


def _see(page, text: str, shot: str) -> None:
    """Wait for `text` on the page; on a miss, the screenshot and which text it was."""
    try:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=30_000)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{shot}-missing.png"), full_page=True)
        raise AssertionError(f"{shot}: {text!r} never showed (screenshot {shot}-missing.png)") from None


def test_the_dashboard_page_shows_usage_and_charts(stack, browser):
    status = json.loads(_ok(mlyard("status", "--json")))
    page = _page(browser, status["dashboard"], "dashboard")
    for text in ("Service usage", "Monitoring", "Resource usage"):
        _see(page, text, "dashboard")
    for _ in range(3):  # the same counts as the CLI's, the page loaded between two equal reads of them (a
        # notebook of an earlier test may turn healthy, or a run end, meanwhile)
        before = json.loads(_ok(mlyard("dashboard", "--json")))["usage"]
        page.reload()
        _see(page, "Service usage", "dashboard")
        cards = dict(zip(page.locator(".card").all_inner_texts(), range(99)))
        shown = {re.sub(r"\s*\d+$", "", t.strip()): int(re.findall(r"\d+$", t.strip())[0]) for t in cards}
        usage = json.loads(_ok(mlyard("dashboard", "--json")))["usage"]
        if usage == before:
            break
    assert sorted(shown.values()) == sorted(usage[k] for k in ("notebooks_healthy", "trainings_complete",
                                                                "tunings_complete", "endpoints_active")), shown
    assert page.evaluate("() => document.scripts.length") == 0, "no JavaScript"
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)


def test_the_prefect_ui_lists_every_mlyard_deployment_and_runs_a_training_from_its_form(stack, browser, tmp_path):
    with urllib.request.urlopen(urllib.request.Request(
            f"{stack.api_url}/deployments/count", data=b"{}", method="POST",
            headers={"content-type": "application/json", **_auth(stack)}), timeout=10) as resp:
        total = int(resp.read())
    auth = stack.prefect_auth_string
    page = _page(browser, f"{stack.ui_url}/deployments", "deployments", auth)
    _see(page, f"{total} Deployments", "deployments")
    page.screenshot(path=str(SHOTS / "deployments.png"))

    # the training's Run form: every field a person fills, with its description
    dep = _deployment(stack, "train/local")
    page = _page(browser, f"{stack.ui_url}/deployments/deployment/{dep}/run", "train-form", auth, height=2400)
    for label in ("Name", "Source Uri", "Entry Point", "Hyperparameters", "Training name: lowercase letters",
                  "EM_HP_{KEY}", "EM_DATASET_{NAME}"):  # placeholders a browser would take for HTML tags before
        _see(page, label, "train-form")
    page.screenshot(path=str(SHOTS / "train-form.png"), full_page=True)
    assert page.get_by_text('Property is type "None"').count() == 0, "an optional field shows a str | None toggle"

    # filled as a person does, and Run: the run completes; a hyperparameter is a key and a value (no JSON)
    algo = tmp_path / "algo"
    shutil.copytree(EXAMPLES / "sklearn_digits", algo)
    fields = page.locator("textarea, input[type=text]")
    _fill_after(page, "Training name: lowercase letters", "from-browser")
    _fill_after(page, "Directory of the algorithm", str(algo))
    _fill_after(page, "Script inside source_uri", "train.py")
    _see(page, "Key and value", "train-form")
    page.get_by_role("button", name="Add item").first.click()  # the first list: hyperparameters
    _fill_label(page, "Key", "epochs")
    _fill_label(page, "Value", "1")
    assert fields.count() > 3
    page.get_by_role("button", name=re.compile("^Submit$|^Run$")).last.click()
    page.wait_for_url(re.compile(r".*/deployments/deployment/.*"), timeout=30_000)  # the UI goes back to it
    deadline, shown = time.monotonic() + 180, {"status": "never listed"}
    while time.monotonic() < deadline:
        found = [t for t in json.loads(_ok(mlyard("trainings", "list", "--json"))) if t["name"] == "from-browser"]
        if found and found[0]["status"] in ("COMPLETE", "FAIL TRAIN"):
            shown = found[0]
            break
        time.sleep(2)
    assert shown["status"] == "COMPLETE", shown
    spec = json.loads(_ok(mlyard("trainings", "show", shown["id"], "--json")))["spec"]
    assert spec["hyperparameters"] == {"epochs": 1}, "the form's pair, its value read as a number"
    page.goto(f"{stack.ui_url}/runs/flow-run/{shown['id']}", wait_until="networkidle")
    _see(page, "Completed", "train-run")
    _see(page, "epoch=1", "train-run")  # the script's own lines in the run's logs
    page.screenshot(path=str(SHOTS / "train-run.png"), full_page=True)


def _fill_label(page, label: str, value: str) -> None:
    """Type into the input under the field labelled exactly `label` (a pair's Key or Value)."""
    page.locator(f"xpath=//*[normalize-space(text())={json.dumps(label)}]/following::*[self::input or "
                 "self::textarea][1]").first.fill(value)


def _fill_after(page, description: str, value: str) -> None:
    """Type into the input that follows a field's description (how a person finds it)."""
    box = page.locator(f"xpath=//*[contains(text(), {json.dumps(description)})]/following::*[self::input or "
                       "self::textarea][1]").first
    box.fill(value)


def _auth(stack) -> dict[str, str]:
    import base64

    auth = getattr(stack, "prefect_auth_string", None)
    return {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def _deployment(stack, name: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(f"{stack.api_url}/deployments/name/{name}",
                                                       headers=_auth(stack)), timeout=10) as resp:
        return json.loads(resp.read())["id"]


FORMS = [("train/local", "core.specs.training:TrainingSpec", 0), ("tune/local", "core.specs.tuning:TuningSpec", 2),
         ("batch-inference/local", "core.specs.batch:BatchInferenceSpec", 0),
         ("evaluate/local", "core.specs.evaluation:EvaluationSpec", 0)]


def test_each_actions_run_form_shows_every_field_with_its_description_and_no_json(stack, browser):
    import importlib

    for deployment, model_path, nested_choices in FORMS:
        module, name = model_path.split(":")
        model = getattr(importlib.import_module(module), name)
        shot = deployment.replace("/", "-") + "-form"
        page = _page(browser, f"{stack.ui_url}/deployments/deployment/{_deployment(stack, deployment)}/run", shot,
                     stack.prefect_auth_string, height=2400)
        for field, info in model.model_fields.items():
            _see(page, info.title or field.replace("_", " ").title(), shot)  # the UI's label: the schema's title
            # the description's start, up to what the UI's Markdown would render otherwise (`code`, ->, {x})
            _see(page, re.split(r"[`{*_]|->", info.description or "")[0][:40].strip(), shot)
        editors = page.locator(".schema-form-property-kind-json, .p-code-input, .cm-editor")
        assert editors.count() == 0, f"{deployment}: {editors.count()} JSON editor(s) on the form"
        # a tuning's training and early stopping are a choice of the nested form or none (Use template, Off)
        assert page.get_by_text('Property is type "None"').count() == nested_choices, deployment
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        page.close()


def test_the_mlflow_pages_mlyard_links_to_and_the_batch_progress_in_prefect(stack, browser, tmp_path):
    """A training, its registered version with an alias and an evaluation of it, made from the CLI; then
    the MLflow pages the printed links open (the model-training view: a metric chart, the version with
    its alias, the evaluation's curves), with nothing sent beyond 127.0.0.1; and in the Prefect UI the
    evaluation's batch inference with its progress artifact."""
    trained = json.loads(_ok(mlyard("train", "-f", str(EXAMPLES / "train.yaml"), "--set", "name=web-digits",
                                    "--set", f"source_uri={EXAMPLES / 'sklearn_digits'}", "--set", "experiment=browser",
                                    "--set", "hyperparameters.epochs=2", "--json")))
    training = json.loads(_ok(mlyard("trainings", "show", trained["training_id"][:8], "--json")))
    version = json.loads(_ok(mlyard("models", "create", "web-digits", "--from-training", trained["training_id"][:8],
                                    "--alias", "champion", "--json")))
    evaluated = json.loads(_ok(mlyard("evaluate", "-f", str(EXAMPLES / "evaluate.yaml"), "--set", "name=web-eval",
                                      "--set", "model=web-digits@champion", "--set", f"output_uri={tmp_path / 'eval'}",
                                      "--set", f"input_uri={EXAMPLES / 'data' / 'digits-test.jsonl'}",
                                      "--json")))
    evaluation = json.loads(_ok(mlyard("evaluations", "show", evaluated["evaluation_id"][:8], "--json")))
    ui = _ok(mlyard("ui", "mlflow")).split()[-1]
    for link in (training["links"]["mlflow"], version["links"]["mlflow"], evaluation["links"]["mlflow"]):
        assert link.startswith(ui) and link.endswith("?workflowType=machine_learning"), link

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
    page.goto(ui, wait_until="load")  # a browser new to MLflow: the model-training view, no telemetry notice
    _see(page, "Model training", "mlflow-home")
    assert page.get_by_text("collects usage data").count() == 0, "MLflow's telemetry notice shows"
    stored = page.evaluate("() => Object.assign({}, window.localStorage)")
    assert stored.get("mlflow.workflowType_v1") == '"machine_learning"', stored
    assert stored.get("mlflow.settings.telemetry.enabled_v1") == "false", stored

    page.goto(training["links"]["mlflow"], wait_until="load")  # the training's run: its metric charts
    _see(page, "web-digits", "mlflow-training")
    page.get_by_role("tab", name="Model metrics").click()
    _see(page, "accuracy", "mlflow-training")
    page.locator("canvas, svg.main-svg").first.wait_for(state="visible")
    page.screenshot(path=str(SHOTS / "mlflow-training.png"))

    page.goto(version["links"]["mlflow"], wait_until="load")  # the version, with its alias
    _see(page, f"Version {version['version']}", "mlflow-version")
    _see(page, "champion", "mlflow-version")
    page.screenshot(path=str(SHOTS / "mlflow-version.png"))

    page.goto(evaluation["links"]["mlflow"], wait_until="load")  # the evaluation's metrics and its ROC curve
    _see(page, "roc_auc", "mlflow-evaluation")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("evaluation", exact=True).first.click()
    page.get_by_text("roc_curve.png", exact=True).first.click()
    curve = page.locator("img[src^='blob:']").first  # the artifact viewer shows the file it fetched
    curve.wait_for(state="visible")
    assert page.evaluate("(img) => img.naturalWidth", curve.element_handle()) > 100, "the ROC curve did not load"
    page.screenshot(path=str(SHOTS / "mlflow-evaluation.png"))
    assert hosts == {ui.split("/")[2]}, f"the MLflow pages reached beyond their server: {hosts}"
    page.close()

    page = _page(browser, f"{stack.ui_url}/deployments", "batch-run", stack.prefect_auth_string)  # signed in,
    page.goto(f"{stack.ui_url}/runs/flow-run/{evaluated['batch_id']}", wait_until="networkidle")  # then the run
    _see(page, "web-eval-batch", "batch-run")
    page.locator("li.p-tab", has_text="Artifacts").click()
    _see(page, "rows (0 failed)", "batch-run")  # the batch's progress artifact: 100.0% · 450 rows (0 failed) · ...
    _see(page, "100.0%", "batch-run")
    page.screenshot(path=str(SHOTS / "batch-progress.png"), full_page=True)
    page.close()


def test_a_notebooks_jupyterlab_page_lets_in_its_owner_only(stack, browser, tmp_path):
    spec = tmp_path / "nb.yaml"
    spec.write_text("name: web-lab\ninstance_type: cpu-2\nboot_storage_gb: 10\ndata_storage_gb: 5\n")
    _ok(mlyard("notebooks", "create", "-f", str(spec)))
    try:
        view = json.loads(_ok(mlyard("notebooks", "show", "web-lab", "--json")))
        assert view["status"] == "ACTIVE (HEALTHY)", view
        url = _ok(mlyard("notebooks", "open", "web-lab")).strip()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url.split("?")[0], wait_until="load")  # without the token: JupyterLab's own login, nothing else
        _see(page, "token", "notebook-no-token")
        assert page.locator(".jp-LauncherCard").count() == 0
        page.goto(url, wait_until="load")
        _see(page, "Launcher", "notebook")
        _see(page, "Python 3 (ipykernel)", "notebook")
        page.screenshot(path=str(SHOTS / "notebook.png"))
        page.close()
    finally:
        _ok(mlyard("notebooks", "delete", "web-lab"))


def test_a_schedules_upcoming_run_and_an_endpoints_statistics_in_their_pages(stack, browser, platform, models,
                                                                            tmp_path):
    import datetime as dt
    import urllib.error

    # a schedule whose next slot is 50 s away (the scheduler makes a run 60 s ahead), on the gpu pool (no
    # worker here: the run waits as Scheduled)
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1) + dt.timedelta(seconds=50)).isoformat()
    spec = tmp_path / "hourly.yaml"
    spec.write_text(json.dumps({"name": "web-hourly", "deployment": "train/gpu", "interval": {"every": 1, "unit": "hours"},
                                "start_time": start, "parameters": {"spec": {"name": "web-hourly", "source_uri": "/nowhere",
                                                                             "entry_point": "train.py"}}}))
    _ok(mlyard("schedules", "create", "-f", str(spec)))
    deadline, queued = time.monotonic() + 60, []
    while not queued and time.monotonic() < deadline:
        queued = json.loads(_ok(mlyard("schedules", "show", "web-hourly", "--json")))["queued"]
        time.sleep(1)
    assert queued, "the scheduler made no run ahead of the slot"
    try:
        page = _page(browser, f"{stack.ui_url}/deployments/deployment/{_deployment(stack, 'train/gpu')}", "upcoming",
                     stack.prefect_auth_string)
        page.locator("li.p-tab", has_text="Upcoming").click()
        slot = dt.datetime.fromisoformat(queued[0]["slot"]).strftime("%Y%m%dT%H%M%SZ")
        _see(page, f"web-hourly-{slot}", "upcoming")
        _see(page, "Scheduled for", "upcoming")
        page.screenshot(path=str(SHOTS / "schedule-upcoming.png"))
        page.close()
    finally:  # the run itself: cancelled by the scheduler once no worker started it (12 s after its slot here)
        _ok(mlyard("schedules", "disable", "web-hourly"))

    # an endpoint with some traffic: the dashboard's monitoring shows its calls, per stage
    platform.models.set_alias("web-clf", "champion", platform.models.create_from_directory(
        "web-clf", models["classifier"], "file://classifier").version)
    ep = tmp_path / "ep.yaml"
    ep.write_text("name: web-ep\nstage:\n  resources: [{model: web-clf@champion}]\n")
    view = json.loads(_ok(mlyard("endpoints", "create", "-f", str(ep), "--json")))
    try:
        token = json.loads(_ok(mlyard("endpoints", "tokens", "issue", "web-ep", "--json")))["token"]
        url = view["urls"]["default"]["web-clf"]
        for body in [{"instances": [[5.1, 3.5, 1.4, 0.2]]}] * 4 + [{"instances": "not rows"}]:
            req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
                "authorization": f"Bearer {token}", "content-type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30).read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 400, exc.code
        deadline, stages = time.monotonic() + 30, []
        while stages != [{"stage": "default", "successes": 4, "failures": 1}] and time.monotonic() < deadline:
            time.sleep(1)  # the gateway writes its statistics every few seconds
            board = json.loads(_ok(mlyard("dashboard", "--json")))["monitoring"]["top_endpoints"]
            stages = next((t["stages"] for t in board if t["endpoint"] == "web-ep"), [])
        assert stages == [{"stage": "default", "successes": 4, "failures": 1}], stages
        page = _page(browser, json.loads(_ok(mlyard("status", "--json")))["dashboard"], "endpoint-stats")
        row = page.locator("tr", has_text="web-ep").first
        assert row.inner_text().split("\t") == ["web-ep", "default", "4", "1"], row.inner_text()
        bars = page.locator("svg").first.text_content()  # the first chart: the top endpoints by calls
        assert "web-ep" in bars and "5" in bars, bars
        page.screenshot(path=str(SHOTS / "endpoint-stats.png"), full_page=True)
        page.close()
    finally:
        _ok(mlyard("endpoints", "delete", "web-ep"))

"""A person's way through the Prefect UI and the MLflow UI, in Debian's chromium against the running
stack (marked `browser`: `pytest -m browser` runs them alone): the deployments, a training run from its
Run form, then the pages the links mlyard prints open in MLflow, and a batch inference's progress."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request

import pytest
from browsing import (
    SHOTS,
    auth_headers,
    deployment_id,
    fill_after,
    fill_label,
    idle,
    open_page,
    prefect_page,
    see,
    value_after,
)
from test_user_paths import EXAMPLES, _ok, mlyard

pytestmark = pytest.mark.browser


def test_a_training_from_the_run_form_then_its_model_and_evaluation_in_mlflow(stack, browser, tmp_path):
    """The deployments list; the training's Run form, which starts from the example, changed as a person does
    (a Run Name, a hyperparameter's value, one more as a key and a value) and Run, until the run shows
    Completed with its logs. Then its version registered with an alias and evaluated from the CLI, and the
    MLflow pages the printed links open, in the model-training view: its metric charts, the version with its alias, the evaluation's ROC curve,
    with nothing sent beyond 127.0.0.1. Last, the evaluation's batch inference with its progress."""
    with urllib.request.urlopen(urllib.request.Request(
            f"{stack.api_url}/deployments/count", data=b"{}", method="POST",
            headers={"content-type": "application/json", **auth_headers(stack)}), timeout=10) as resp:
        total = int(resp.read())
    page = prefect_page(browser, stack, "/deployments", height=2400)
    see(page, f"{total} Deployments", "deployments")
    page.screenshot(path=str(SHOTS / "deployments.png"))

    # the training's Run form: every field a person fills, with its description
    page.goto(f"{stack.ui_url}/deployments/deployment/{deployment_id(stack, 'train/train-local')}/run", wait_until="networkidle")
    for label in ("Name", "Source Uri", "Entry Point", "Hyperparameters", "Training name: lowercase letters",
                  "EM_HP_{KEY}", "EM_DATASET_{NAME}"):  # placeholders a browser would take for HTML tags before
        see(page, label, "train-form")
    page.screenshot(path=str(SHOTS / "train-form.png"), full_page=True)
    assert page.get_by_text('Property is type "None"').count() == 0, "an optional field shows a str | None toggle"

    # it starts from the example a newcomer runs first (examples/train.yaml): its fields hold values, its
    # hyperparameters are pairs of inputs (not JSON)
    assert value_after(page, "Training name: lowercase letters") == "digits-sgd"
    assert value_after(page, "Directory of the algorithm") == str(EXAMPLES / "sklearn_digits")
    # changed as a person does, and Run: the run completes; a hyperparameter is a key and a value
    algo = tmp_path / "algo"
    shutil.copytree(EXAMPLES / "sklearn_digits", algo)
    page.locator(".flow-run-name-input input").fill("my-first-run")  # the Run Name, typed over Prefect's
    fill_after(page, "Training name: lowercase letters", "from-browser")
    fill_after(page, "Directory of the algorithm", str(algo))
    see(page, "Key and value", "train-form")
    fill_label(page, "Value", "2")  # the example's first pair: epochs
    page.get_by_role("button", name="Add item").first.click()  # the first list: hyperparameters
    fill_label(page, "Key", "alpha", last=True)
    fill_label(page, "Value", "0.0002", last=True)
    page.get_by_role("button", name=re.compile("^Submit$|^Run$")).last.click()
    # the UI goes back to the deployment once the run is made (the form's own URL is below it)
    page.wait_for_url(re.compile(r".*/deployments/deployment/[0-9a-f-]+/?(\?.*)?$"), timeout=30_000)
    idle(page)
    deadline, shown = time.monotonic() + 180, {"status": "never listed"}
    while time.monotonic() < deadline:
        found = [t for t in json.loads(_ok(mlyard("trainings", "list", "--json"))) if t["name"] == "from-browser"]
        if found and found[0]["status"] in ("COMPLETE", "FAIL TRAIN"):
            shown = found[0]
            break
        time.sleep(2)
    assert shown["status"] == "COMPLETE", shown
    training = json.loads(_ok(mlyard("trainings", "show", shown["id"][:8], "--json")))
    assert training["spec"]["hyperparameters"] == {"epochs": 2, "learning_rate": 0.001, "epoch_seconds": 0.3, "alpha": 0.0002}, \
        "the form's pairs, their values read as numbers"
    assert training["flow_run_name"] == "my-first-run", "the Run Name typed was replaced"
    page.goto(f"{stack.ui_url}/runs/flow-run/{shown['id']}", wait_until="networkidle")
    see(page, "Completed", "train-run")
    see(page, "epoch=2", "train-run")  # the script's own lines in the run's logs
    # its MLflow run one click away: a line of the logs, the run page's first tab, as a link
    assert page.locator(f"a[href='{training['links']['mlflow']}']").count() >= 1, "no link to the MLflow run in its logs"
    page.screenshot(path=str(SHOTS / "train-run.png"), full_page=True)
    idle(page)

    # its model, registered with an alias, and evaluated (from the CLI, as a user goes on)
    version = json.loads(_ok(mlyard("models", "create", "from-browser", "--from-training", shown["id"][:8],
                                    "--alias", "champion", "--json")))
    evaluated = json.loads(_ok(mlyard("evaluate", "-f", str(EXAMPLES / "evaluate.yaml"), "--set", "name=web-eval",
                                      "--set", "model=from-browser@champion", "--set", f"output_uri={tmp_path / 'eval'}",
                                      "--set", f"input_uri={EXAMPLES / 'data' / 'digits-test.jsonl'}", "--json")))
    evaluation = json.loads(_ok(mlyard("evaluations", "show", evaluated["evaluation_id"][:8], "--json")))
    opened = _ok(mlyard("ui", "mlflow"))  # its URL, and the sign-in it prints for the browser's prompt
    ui = opened.splitlines()[0].split()[-1]
    sign_in = re.search(r"sign-in: user (\S+), password (\S+) ", opened)
    assert sign_in, opened
    for link in (training["links"]["mlflow"], version["links"]["mlflow"], evaluation["links"]["mlflow"]):
        assert link.startswith(ui) and link.endswith("?workflowType=machine_learning"), link

    # the evaluation's batch inference in the Prefect UI: its progress artifact
    page.goto(f"{stack.ui_url}/runs/flow-run/{evaluated['batch_id']}", wait_until="networkidle")
    see(page, "web-eval-batch", "batch-run")
    page.locator("li.p-tab", has_text="Artifacts").click()
    see(page, "rows (0 failed)", "batch-run")  # the batch's progress artifact: 100.0% · 450 rows (0 failed) · ...
    see(page, "100.0%", "batch-run")
    page.screenshot(path=str(SHOTS / "batch-progress.png"), full_page=True)
    page.context.close()

    # MLflow, in a browser new to it: the model-training view, no telemetry notice, nothing sent elsewhere
    page = open_page(browser, ui, sign_in=(sign_in[1], sign_in[2]), width=1400)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
    see(page, "Model training", "mlflow-home")
    assert page.get_by_text("collects usage data").count() == 0, "MLflow's telemetry notice shows"
    stored = page.evaluate("() => Object.assign({}, window.localStorage)")
    assert stored.get("mlflow.workflowType_v1") == '"machine_learning"', stored
    assert stored.get("mlflow.settings.telemetry.enabled_v1") == "false", stored

    page.goto(training["links"]["mlflow"], wait_until="load")  # the training's run: its metric charts
    see(page, "from-browser", "mlflow-training")
    page.get_by_role("tab", name="Model metrics").click()
    see(page, "accuracy", "mlflow-training")
    page.locator("canvas, svg.main-svg").first.wait_for(state="visible")
    page.screenshot(path=str(SHOTS / "mlflow-training.png"))

    page.goto(version["links"]["mlflow"], wait_until="load")  # the version, with its alias
    see(page, f"Version {version['version']}", "mlflow-version")
    see(page, "champion", "mlflow-version")
    page.screenshot(path=str(SHOTS / "mlflow-version.png"))

    page.goto(evaluation["links"]["mlflow"], wait_until="load")  # the evaluation's metrics and its ROC curve
    see(page, "roc_auc", "mlflow-evaluation")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("evaluation", exact=True).first.click()
    page.get_by_text("roc_curve.png", exact=True).first.click()
    curve = page.locator("img[src^='blob:']").first  # the artifact viewer shows the file it fetched
    curve.wait_for(state="visible")
    assert page.evaluate("(img) => img.naturalWidth", curve.element_handle()) > 100, "the ROC curve did not load"
    page.screenshot(path=str(SHOTS / "mlflow-evaluation.png"))
    assert hosts == {ui.split("/")[2]}, f"the MLflow pages reached beyond their server: {hosts}"
    page.context.close()

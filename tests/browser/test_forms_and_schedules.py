"""The Prefect UI's Run form of each action, and a schedule's next run, in Debian's chromium against the
running stack (marked `browser`)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import time

import pytest
from browsing import SHOTS, deployment_id, prefect_page, see
from test_user_paths import _ok, mlyard

pytestmark = pytest.mark.browser

# the training's form is filled and run in test_prefect_and_mlflow.py; a tuning's training and early
# stopping are a choice of none (Use template, Off: nothing to fill, no 'Property is type "None"') or the form
FORMS = [("tune/tune-local", "mlyard.core.specs.tuning:TuningSpec", ("Use template", "Off")),
         ("batch-inference/batch-inference-local", "mlyard.core.specs.batch:BatchInferenceSpec", ()),
         ("evaluate/evaluate-local", "mlyard.core.specs.evaluation:EvaluationSpec", ())]


def test_each_actions_run_form_shows_every_field_with_its_description_and_no_json(stack, browser):
    page = prefect_page(browser, stack, "/deployments", height=2400)
    for deployment, model_path, none_choices in FORMS:
        module, name = model_path.split(":")
        model = getattr(importlib.import_module(module), name)
        shot = deployment.replace("/", "-") + "-form"
        page.goto(f"{stack.ui_url}/deployments/deployment/{deployment_id(stack, deployment)}/run", wait_until="networkidle")
        for field, info in model.model_fields.items():
            see(page, info.title or field.replace("_", " ").title(), shot)  # the UI's label: the schema's title
            # the description's start, up to what the UI's Markdown would render otherwise (`code`, ->, {x})
            see(page, re.split(r"[`{*_]|->", info.description or "")[0][:40].strip(), shot)
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        editors = page.locator(".schema-form-property-kind-json, .p-code-input, .cm-editor")
        assert editors.count() == 0, f"{deployment}: {editors.count()} JSON editor(s) on the form"
        for label in none_choices:
            see(page, label, shot)
        assert page.get_by_text('Property is type "None"').count() == 0, deployment
    page.context.close()


def test_a_schedules_next_run_shows_on_its_deployments_upcoming_tab(stack, browser, tmp_path):
    # the next slot 50 s away (the scheduler makes a run 60 s ahead), on the gpu pool: no worker serves it
    # here, so the run waits as Scheduled (and the scheduler cancels it 12 s after its slot in the tests)
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1) + dt.timedelta(seconds=50)).isoformat()
    spec = tmp_path / "hourly.yaml"
    spec.write_text(json.dumps({"name": "web-hourly", "deployment": "train/train-gpu", "interval": {"every": 1, "unit": "hours"},
                                "start_time": start, "parameters": {"spec": {"name": "web-hourly-{{ slot_name }}",
                                                                             "source_uri": "s3://nowhere/algo",
                                                                             "entry_point": "train.py"}}}))
    _ok(mlyard("schedules", "create", "-f", str(spec)))
    try:
        deadline, queued = time.monotonic() + 60, []
        while not queued and time.monotonic() < deadline:
            queued = json.loads(_ok(mlyard("schedules", "show", "web-hourly", "--json")))["queued"]
            time.sleep(1)
        assert queued, "the scheduler made no run ahead of the slot"
        page = prefect_page(browser, stack, f"/deployments/deployment/{deployment_id(stack, 'train/train-gpu')}")
        page.locator("li.p-tab", has_text="Upcoming").click()
        slot = dt.datetime.fromisoformat(queued[0]["slot"]).strftime("%Y%m%dt%H%M%Sz")
        see(page, f"web-hourly-{slot}", "upcoming")  # the run's one name: its training's, as trainings list shows it
        see(page, "Scheduled for", "upcoming")
        page.screenshot(path=str(SHOTS / "schedule-upcoming.png"))
        page.context.close()
    finally:
        _ok(mlyard("schedules", "disable", "web-hourly"))

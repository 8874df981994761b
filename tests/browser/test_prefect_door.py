"""A project member in the Prefect UI through mlyard's front door, in Debian's chromium: sent to sign in,
signed in with their key alone, they see their project's runs and not another project's, and the Run
button makes a training in their project that runs to Completed (marked `browser`)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from browsing import SHOTS, deployment_id, fill_after, fill_label, idle, open_page, see, value_after

from tests.mlyard.test_prefect_door import call
from tests.mlyard.test_workstation import _ok
from tests.test_user_paths import mlyard as owner
from tests.test_user_paths import user_dir

pytestmark = pytest.mark.browser
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_member_signs_in_sees_their_projects_runs_and_runs_a_training_from_the_run_form(stack, browser):
    from mlyard.core.settings import Settings

    door = Settings().door_url
    users = {}
    for name, project in (("gwen", "door-c"), ("hugo", "door-d")):
        _ok(owner("projects", "create", project))
        users[name] = json.loads(_ok(owner("users", "create", name, "--json")))
        _ok(owner("projects", "add-member", project, name, "--role", "editor"))
    for project in ("door-c", "door-d"):  # each one's folder in their project's storage
        shutil.copytree(EXAMPLES / "sklearn_digits", user_dir() / ".mlyard" / "projects" / project / "algo")
    algo = user_dir() / ".mlyard" / "projects" / "door-c" / "algo"
    train = deployment_id(stack, "train/train-local")
    status, _, hugos = call(f"{door}/api/deployments/{train}/create_flow_run", "POST", {
        "state": {"type": "SCHEDULED"}, "name": "hugos-secret-run", "parameters": {"spec": {
            "name": "hugo-train", "source_uri": str(user_dir() / ".mlyard" / "projects" / "door-d" / "algo"),
            "entry_point": "train.py", "hyperparameters": {"epochs": 1}}}},
        headers={"Authorization": f"Bearer {users['hugo']['key']}"})
    assert status == 201, hugos

    # a page of the door asks a person to sign in; their key signs them in and back to where they were going
    page = open_page(browser, f"{door}/deployments", width=1400)
    see(page, "Sign in to the Prefect UI", "door-sign-in")
    page.get_by_label("API key").fill("mly_000000000000_" + "A" * 43)
    page.get_by_role("button", name="Sign in").click()
    see(page, "unknown, expired or revoked", "door-sign-in")
    page.screenshot(path=str(SHOTS / "door-sign-in.png"))
    page.get_by_label("API key").fill(users["gwen"]["key"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{door}/deployments", timeout=30_000)
    see(page, "Deployments", "door-deployments")
    see(page, "add-endpoint-stage-local", "door-deployments")  # each row titled by what it does, A to Z
    page.get_by_placeholder("Search deployments").fill("train")
    see(page, "train-local", "door-deployments")
    assert page.get_by_text("rag-sync").count() == 0, "a deployment only an admin may run is listed"

    # the training's Run form, filled as a person does, and Run: the run is gwen's, in her project
    page.goto(f"{door}/deployments/deployment/{train}/run", wait_until="networkidle")
    see(page, "Training name: lowercase letters", "door-train-form")
    # empty for her, not the owner's example: her runs read her project's storage
    assert value_after(page, "Training name: lowercase letters") == "" == value_after(page, "Directory of the algorithm")
    page.locator(".flow-run-name-input input").fill("gwen-from-the-ui")
    fill_after(page, "Training name: lowercase letters", "gwen-train")
    fill_after(page, "Directory of the algorithm", str(algo))
    fill_after(page, "Script inside source_uri", "train.py")
    page.get_by_role("button", name="Add item").first.click()
    fill_label(page, "Key", "epochs")
    fill_label(page, "Value", "1")
    page.get_by_role("button", name=re.compile("^Submit$|^Run$")).last.click()
    page.wait_for_url(re.compile(r".*/deployments/deployment/[0-9a-f-]+/?(\?.*)?$"), timeout=30_000)
    idle(page)
    gwen = {"Authorization": f"Bearer {users['gwen']['key']}"}
    runs = call(f"{door}/api/flow_runs/filter", "POST", {"flow_runs": {"name": {"any_": ["gwen-from-the-ui"]}}},
                headers=gwen)[2]
    assert len(runs) == 1 and "mlyard.project:door-c" in runs[0]["tags"] and "mlyard.user:gwen" in runs[0]["tags"]
    deadline = time.monotonic() + 180
    while (state := call(f"{door}/api/flow_runs/{runs[0]['id']}", headers=gwen)[2]["state_type"]) != "COMPLETED":
        assert time.monotonic() < deadline and state not in ("FAILED", "CRASHED", "CANCELLED"), state
        time.sleep(2)
    page.goto(f"{door}/runs/flow-run/{runs[0]['id']}", wait_until="networkidle")
    see(page, "Completed", "door-run")
    see(page, "epoch=1", "door-run")  # the script's own lines, in the run's logs
    page.screenshot(path=str(SHOTS / "door-run.png"), full_page=True)

    # the runs list: hers, not hugo's; his run's page finds nothing
    page.goto(f"{door}/runs", wait_until="networkidle")
    see(page, "gwen-from-the-ui", "door-runs")
    assert page.get_by_text("hugos-secret-run").count() == 0, "another project's run is listed"
    page.screenshot(path=str(SHOTS / "door-runs.png"), full_page=True)
    page.goto(f"{door}/runs/flow-run/{hugos['id']}", wait_until="networkidle")
    idle(page)
    assert page.get_by_text("hugos-secret-run").count() == 0, "another project's run opens"
    page.context.close()


def test_a_member_opens_their_notebook_through_the_door_and_runs_code_in_it(stack, browser):
    """nina's notebook, made with her key: its JupyterLab opens in chromium once she signs in at the door with
    that key, with no token of its own, and a cell she runs prints its answer (the kernel's websocket
    through the door)."""
    _ok(owner("projects", "create", "door-n"))
    nina = json.loads(_ok(owner("users", "create", "nina", "--json")))
    _ok(owner("projects", "add-member", "door-n", "nina", "--role", "editor"))
    status, _, made = call(f"{stack.service_url}/v1/commands/notebooks_create", "POST", {"spec": {
        "name": "nina-lab", "instance_type": "cpu-2", "boot_storage_gb": 10, "data_storage_gb": 5}},
        headers={"Authorization": f"Bearer {nina['key']}"})
    assert status == 200 and made["owner"] == "nina", made
    try:
        deadline = time.monotonic() + 180
        while (view := json.loads(_ok(owner("notebooks", "show", "nina-lab", "--json"))))["status"] != "ACTIVE (HEALTHY)":
            assert time.monotonic() < deadline and "FAIL" not in view["status"], view
            time.sleep(1)
        page = open_page(browser, view["url"], width=1400)
        page.set_default_timeout(60_000)
        see(page, "Sign in", "door-notebook-sign-in")
        page.get_by_label("API key").fill(nina["key"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(view["url"] + "*", timeout=60_000)
        see(page, "Launcher", "door-notebook")
        page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
        editor = page.locator(".jp-Cell .cm-content").first
        editor.wait_for(state="visible")
        # its kernel's status, over the kernel's websocket through the door (a cell run before it has one is not run)
        page.get_by_text(re.compile(r"\(ipykernel\) \| Idle")).first.wait_for(state="visible")
        editor.click()
        page.keyboard.type("print(6 * 7)")
        page.keyboard.press("Shift+Enter")
        # the kernel ran it and answered over its websocket, through the door
        try:
            page.locator(".jp-OutputArea-output", has_text="42").first.wait_for(state="visible")
        except Exception:
            page.screenshot(path=str(SHOTS / "door-notebook-missing.png"))
            raise
        page.screenshot(path=str(SHOTS / "door-notebook.png"))
        page.context.close()
    finally:
        _ok(owner("notebooks", "delete", "nina-lab", "--wait"))

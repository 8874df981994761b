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

    # filled as a person does, and Run: the run completes
    algo = tmp_path / "algo"
    shutil.copytree(EXAMPLES / "sklearn_digits", algo)
    fields = page.locator("textarea, input[type=text]")
    _fill_after(page, "Training name: lowercase letters", "from-browser")
    _fill_after(page, "Directory of the algorithm", str(algo))
    _fill_after(page, "Script inside source_uri", "train.py")
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
    page.goto(f"{stack.ui_url}/runs/flow-run/{shown['id']}", wait_until="networkidle")
    _see(page, "Completed", "train-run")
    _see(page, "epoch=1", "train-run")  # the script's own lines in the run's logs
    page.screenshot(path=str(SHOTS / "train-run.png"), full_page=True)


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

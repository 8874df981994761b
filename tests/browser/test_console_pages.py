"""mlyard's own pages and the services it opens, in Debian's chromium against the running stack (marked
`browser`): the dashboard, an endpoint's statistics on it, and a notebook's JupyterLab."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from browsing import SHOTS, open_page, see
from test_user_paths import _ok, mlyard

pytestmark = pytest.mark.browser


def test_the_dashboard_page_shows_usage_and_charts(stack, browser):
    page = open_page(browser, json.loads(_ok(mlyard("status", "--json")))["dashboard"])
    for text in ("Service usage", "Monitoring", "Resource usage"):
        see(page, text, "dashboard")
    for _ in range(3):  # the same counts as the CLI's, the page loaded between two equal reads of them (a
        # notebook of an earlier test may turn healthy, or a run end, meanwhile)
        before = json.loads(_ok(mlyard("dashboard", "--json")))["usage"]
        page.reload()
        see(page, "Service usage", "dashboard")
        cards = page.locator(".card").all_inner_texts()
        shown = {re.sub(r"\s*\d+$", "", t.strip()): int(re.findall(r"\d+$", t.strip())[0]) for t in cards}
        usage = json.loads(_ok(mlyard("dashboard", "--json")))["usage"]
        if usage == before:
            break
    assert sorted(shown.values()) == sorted(usage[k] for k in ("notebooks_healthy", "trainings_complete",
                                                                "tunings_complete", "endpoints_active")), shown
    assert page.evaluate("() => document.scripts.length") == 0, "no JavaScript"
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
    page.context.close()


def test_an_endpoints_calls_successes_and_failures_on_the_dashboard(stack, browser, platform, models, tmp_path):
    """Over a period that starts with this test (the dashboard's chosen period: the stack's other endpoints,
    busier over the day, would fill the top three), the endpoint's calls as the gateway counted them."""
    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat(timespec="seconds")
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
            board = json.loads(_ok(mlyard("dashboard", "--since", since, "--json")))["monitoring"]["top_endpoints"]
            stages = next((t["stages"] for t in board if t["endpoint"] == "web-ep"), [])
        assert stages == [{"stage": "default", "successes": 4, "failures": 1}], stages
        page = open_page(browser, json.loads(_ok(mlyard("status", "--json")))["dashboard"]
                         + "&since=" + urllib.parse.quote(since))
        row = page.locator("tr", has_text="web-ep").first
        assert row.inner_text().split("\t") == ["web-ep", "default", "4", "1"], row.inner_text()
        bars = page.locator("svg").first.text_content()  # the first chart: the top endpoints by calls
        assert "web-ep" in bars and "5" in bars, bars
        page.screenshot(path=str(SHOTS / "endpoint-stats.png"), full_page=True)
        page.context.close()
    finally:
        _ok(mlyard("endpoints", "delete", "web-ep"))


def test_a_notebooks_jupyterlab_page_lets_in_its_owner_only(stack, browser, tmp_path):
    spec = tmp_path / "nb.yaml"
    spec.write_text("name: web-lab\ninstance_type: cpu-2\nboot_storage_gb: 10\ndata_storage_gb: 5\n")
    _ok(mlyard("notebooks", "create", "-f", str(spec)))
    try:
        view = json.loads(_ok(mlyard("notebooks", "show", "web-lab", "--json")))
        assert view["status"] == "ACTIVE (HEALTHY)", view
        url = _ok(mlyard("notebooks", "open", "web-lab")).strip()
        page = open_page(browser, url.split("?")[0])  # without the token: JupyterLab's own login, nothing else
        page.set_default_timeout(60_000)
        see(page, "token", "notebook-no-token")
        assert page.locator(".jp-LauncherCard").count() == 0
        page.goto(url, wait_until="load")
        see(page, "Launcher", "notebook")
        see(page, "Python 3 (ipykernel)", "notebook")
        page.screenshot(path=str(SHOTS / "notebook.png"))
        page.context.close()
    finally:
        _ok(mlyard("notebooks", "delete", "web-lab"))

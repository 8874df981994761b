"""What the browser tests share: Debian's chromium (never a downloaded browser), a page signed in to the
Prefect UI as a person signs in, and steps that say which text they missed, with a screenshot. Each
page's screenshot is kept in test-artifacts/browser/ (ignored by git)."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def open_page(browser, url: str, sign_in: tuple[str, str] | None = None, **viewport):
    """A page in a context of its own (its own storage: a browser new to the site) at `url`; `sign_in`, a
    user and password that the browser's own sign-in prompt is answered with (the MLflow UI's). Motion
    reduced, as a person may ask their system: the pages' animations otherwise keep chromium's
    compositor drawing while a test waits on the stack."""
    credentials = {"http_credentials": {"username": sign_in[0], "password": sign_in[1]}} if sign_in else {}
    page = browser.new_context(viewport={"width": 1280, "height": 1000, **viewport},
                               reduced_motion="reduce", **credentials).new_page()
    page.set_default_timeout(30_000)
    page.goto(url, wait_until="load")
    return page


def prefect_page(browser, stack, path: str = "/deployments", **viewport):
    """A page of the stack's Prefect UI at `path`, signed in as a person does once (the auth string that
    `mlyard status` says where to find); later `goto`s in it stay signed in."""
    page = open_page(browser, f"{stack.ui_url}{path}", **viewport)
    page.wait_for_load_state("networkidle")
    auth = getattr(stack, "prefect_auth_string", None)
    if auth:
        login = page.get_by_placeholder("admin:pass")
        try:  # a new page asks; on a loaded machine its form can come after the network went quiet
            login.wait_for(state="visible", timeout=20_000)
        except Exception:  # noqa: BLE001 - no login asked for: the page is already in
            return page
        login.fill(auth)
        page.get_by_role("button", name="Login").click()
        page.wait_for_load_state("networkidle")
        page.goto(f"{stack.ui_url}{path}", wait_until="networkidle")
    return page


def see(page, text: str, shot: str) -> None:
    """Wait for `text` on the page; on a miss, the screenshot and which text it was."""
    try:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=30_000)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{shot}-missing.png"), full_page=True)
        raise AssertionError(f"{shot}: {text!r} never showed (screenshot {shot}-missing.png)") from None


def fill_after(page, description: str, value: str) -> None:
    """Type into the input that follows a field's description (how a person finds it)."""
    page.locator(f"xpath=//*[contains(text(), {json.dumps(description)})]/following::*[self::input or "
                 "self::textarea][1]").first.fill(value)


def value_after(page, description: str) -> str:
    """What the input that follows a field's description holds."""
    return page.locator(f"xpath=//*[contains(text(), {json.dumps(description)})]/following::*[self::input or "
                        "self::textarea][1]").first.input_value()


def fill_label(page, label: str, value: str, last: bool = False) -> None:
    """Type into the input under the field labelled exactly `label` (a pair's Key or Value): the first one
    on the page, or the `last` (a pair just added)."""
    found = page.locator(f"xpath=//*[normalize-space(text())={json.dumps(label)}]/following::*[self::input or "
                         "self::textarea][1]")
    (found.last if last else found.first).fill(value)


def auth_headers(stack) -> dict[str, str]:
    auth = getattr(stack, "prefect_auth_string", None)
    return {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def deployment_id(stack, name: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(f"{stack.api_url}/deployments/name/{name}",
                                                       headers=auth_headers(stack)), timeout=10) as resp:
        return json.loads(resp.read())["id"]


def idle(page) -> None:
    """Leave the page while the test waits on the stack: an open Prefect page polls and redraws (its
    run graphs, its lists), which cost chromium more CPU than the test's own steps. The context keeps
    the sign-in."""
    page.goto("about:blank")

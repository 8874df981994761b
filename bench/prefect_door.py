"""What mlyard's front door to the Prefect UI (mlyard/prefect_door.py) costs a project member, against the
stack owner's direct way into Prefect (issue 54). Measured on a throwaway stack with default settings, each
pair taken alternately, in one run:

1. a UI page: the Prefect UI's runs page in Debian's chromium, from navigation until the run's name shows
   in the list: the owner directly (Prefect's own login) against a member signed in at the door;
2. the Run button's request (POST /api/deployments/{id}/create_flow_run): Prefect's own create against
   the door's, which makes the run through mlyard (the member's spec checked, confined to the project's
   storage and quota, tagged, recorded in the audit trail). The runs are scheduled a day ahead so that
   no run executes while the requests are measured;
3. a list (POST /api/flow_runs/filter, 50 runs): direct against narrowed to the member's project.

Run with `.venv/bin/python bench/prefect_door.py` (never part of the tests).
"""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _stack  # noqa: E402 - before Prefect is imported

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAGES, REQUESTS = 7, 20


def request(url: str, body: dict | None, headers: dict[str, str]) -> tuple[float, dict | list]:
    data = json.dumps(body).encode() if body is not None else None
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET", headers={
            "Content-Type": "application/json", **headers}), timeout=120) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - started, answer


def line(label: str, direct: list[float], door: list[float], unit: str = "ms") -> None:
    d, g = statistics.median(direct) * 1000, statistics.median(door) * 1000
    print(f"{label:<44} direct {d:8.1f} {unit}   door {g:8.1f} {unit}   door/direct {g / d:5.2f}x   "
          f"(median of {len(direct)} each)")


def main() -> None:
    settings = _stack.start()
    from mlyard import teams
    from mlyard.core.connection import read_state

    state = read_state(settings)
    assert state is not None and state.prefect_auth_string
    owner = {"Authorization": "Basic " + base64.b64encode(state.prefect_auth_string.encode()).decode()}
    teams.projects_create(name="bench")
    key = teams.users_create(name="bencher")["key"]
    teams.projects_add_member(project="bench", user="bencher", role="editor")
    member = {"Authorization": f"Bearer {key}"}
    algo = settings.home_dir / "projects" / "bench" / "algo"
    shutil.copytree(EXAMPLES / "sklearn_digits", algo)
    direct, door = state.api_url, f"{settings.door_url}/api"
    train = request(f"{direct}/deployments/name/train/train-local", None, owner)[1]["id"]  # type: ignore[index]
    spec = {"spec": {"name": "bench-door", "source_uri": str(algo), "entry_point": "train.py",
                     "hyperparameters": {"epochs": 1, "epoch_seconds": 0}}}
    _, made = request(f"{door}/deployments/{train}/create_flow_run", {"state": {"type": "SCHEDULED"},
                                                                        "name": "bench-shown", "parameters": spec}, member)
    deadline = time.monotonic() + 300
    while request(f"{door}/flow_runs/{made['id']}", None, member)[1]["state_type"] != "COMPLETED":  # type: ignore
        assert time.monotonic() < deadline, "the bench's run did not complete"
        time.sleep(1)

    # 3. a list, and 2. the Run button's request, alternately
    lists: tuple[list[float], list[float]] = ([], [])
    runs: tuple[list[float], list[float]] = ([], [])
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    for i in range(REQUESTS):
        lists[0].append(request(f"{direct}/flow_runs/filter", {"limit": 50}, owner)[0])
        lists[1].append(request(f"{door}/flow_runs/filter", {"limit": 50}, member)[0])
        body = {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}, "name": f"later-{i}",
                "parameters": spec}
        runs[0].append(request(f"{direct}/deployments/{train}/create_flow_run", body, owner)[0])
        runs[1].append(request(f"{door}/deployments/{train}/create_flow_run", body, member)[0])

    # 1. the runs page in chromium
    from playwright.sync_api import sync_playwright

    pages: tuple[list[float], list[float]] = ([], [])
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        signed = browser.new_context(reduced_motion="reduce").new_page()  # the owner, with Prefect's own login
        signed.goto(f"{state.ui_url}/runs", wait_until="networkidle")
        signed.get_by_placeholder("admin:pass").fill(state.prefect_auth_string)
        signed.get_by_role("button", name="Login").click()
        signed.wait_for_load_state("networkidle")
        at_door = browser.new_context(reduced_motion="reduce").new_page()  # the member, at the door
        at_door.goto(f"{settings.door_url}/runs", wait_until="load")
        at_door.get_by_label("API key").fill(key)
        at_door.get_by_role("button", name="Sign in").click()
        at_door.wait_for_load_state("networkidle")
        for _ in range(PAGES):
            for page, base, into in ((signed, state.ui_url, pages[0]), (at_door, settings.door_url, pages[1])):
                page.goto("about:blank")
                started = time.perf_counter()
                page.goto(f"{base}/runs", wait_until="commit")
                page.get_by_text("bench-shown").first.wait_for(state="visible", timeout=60_000)
                into.append(time.perf_counter() - started)
        browser.close()
    print("mlyard's front door to the Prefect UI: a member through it against the owner directly")
    line("the runs page in chromium, until the run shows", *pages)
    line("the Run button's request (create_flow_run)", *runs)
    line("a list of flow runs (flow_runs/filter, 50)", *lists)


if __name__ == "__main__":
    main()

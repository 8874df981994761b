"""`mlyard dashboard`: service usage, the busiest endpoints and the resources in use (mlyard/dashboard.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import JSON, ask, emit, guard, out


def _members_do_not_publish() -> None:
    from mlyard.core.errors import SpecError

    raise SpecError("--publish", True, "nothing with a member's key: the Prefect artifact is the platform's, an "
                    "admin publishes it")


def dashboard(
    since: str = typer.Option("24h", "--since", help="The monitoring period: 30m, 24h, 7d or an ISO time."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the page to this file."),
    publish: bool = typer.Option(False, "--publish", help="Also publish it as the Prefect artifact mlyard-dashboard."),
    as_json: bool = JSON,
) -> None:
    """Notebooks, trainings, tunings and endpoints in use; the top 3 endpoints by calls with each stage's
    successes and failures; per core type, the resources holding the most. `mlyard status` links the page."""
    from mlyard import dashboard as board
    from mlyard.core.settings import Settings

    if publish and Settings().api_key is not None:
        guard(_members_do_not_publish)
    data = guard(lambda: ask("dashboard", since=since))  # the warm mlyard API's answer, else here
    if html is not None:
        html.write_text(board.page(data))
        data["html"] = str(html.resolve())
    if publish:
        data["artifact"] = guard(lambda: board.publish(data))
    if as_json:
        emit(data, True)
        return
    u = data["usage"]
    out.print(f"notebooks ACTIVE (HEALTHY) {u['notebooks_healthy']}   trainings COMPLETE {u['trainings_complete']}   "
              f"tunings COMPLETE {u['tunings_complete']}   endpoints ACTIVE {u['endpoints_active']}", highlight=False)
    mon = data["monitoring"]
    rows = [{"endpoint": t["endpoint"], "stage": s["stage"], "successes": s["successes"], "failures": s["failures"]}
            for t in mon["top_endpoints"] for s in t["stages"]]
    emit(rows, False, ["endpoint", "stage", "successes", "failures"],
         title=f"top endpoints by calls, {mon['since']} to {mon['until']}", empty="no endpoint calls in the period")
    for core in ("CPU", "GPU"):
        emit(data["resources"][core], False, ["resource", "instance_type", "cpu", "gpu"],
             title=f"{core}: the resources holding the most", empty=f"no {core} resources in use")
    for key in ("html", "artifact"):
        if key in data:
            out.print(f"{key}: {data[key]}", highlight=False)

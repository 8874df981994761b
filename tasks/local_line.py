"""The local pool's line: on one machine at most `places` flow runs run at once (settings `local_runs`, else
a default from the machine's cores and memory); the others wait in a fair order, which the local worker
(mlyard/warm/worker.py) starts them in, and which `trainings show` and the dashboard tell.

The order is fair across projects, then across a project's members: the next place goes to the project
with the fewest runs holding places (ties: the one whose waiting run is oldest), within it to the member
with the fewest, and to that member's oldest run. So one member's 200 runs queued first do not keep another
project's one waiting behind them: it takes the next place that frees. A project at its quota of runs at
once (`projects set-quota --max-runs`) is passed over, as Kueue holds a cluster's Job for its queue's
quota, so its runs never hold a machine's place while they wait for their project's.

The line holds the runs of work (LINED: a training, a tuning, a batch inference, an evaluation, a pipeline
run, a RAG sync) that a person or a schedule started. A run that another run started (a tuning's trials,
a batch's workers, a pipeline's steps: tagged PARENT_TAG by tasks/orchestration.py) takes no place and
waits for none, as a Job's pods share its admission: its parent holds the place for them all, and no
parent can wait for ever on children that wait for its place. The platform's own short runs (an
endpoint's deploy, a promotion's steps, a notebook's action) take none either. These runs have places of
their own, CHILDREN_PER_PLACE times as many, taken in the order they are due: they wait only for each other,
so none waits for ever, and the flow-run processes at once stay bounded (each holds two of the embedded
Prefect server's 100 requests in flight for its whole life: its events and its cancellation observer).

A run left waiting is put in Prefect's own state for it (Scheduled, named AwaitingConcurrencySlot), with
the reason as its message: the Prefect UI shows both, and Prefect's late-run service leaves it alone
(that service marks only runs named Scheduled, and each mark is a write the database does not need).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from mlyard.core.access import PROJECT_TAG, USER_TAG, project_of_tags, user_of_tags
from mlyard.core.names import FLOW_BATCH, FLOW_EVALUATE, FLOW_PIPELINE_RUN, FLOW_RAG_SYNC, FLOW_TRAIN, FLOW_TUNE

WAITING = "AwaitingConcurrencySlot"  # Prefect's name for a scheduled run held by a concurrency limit
PARENT_TAG = "mlyard.parent:"  # on a run another flow run made: its parent's id
LINED = frozenset({FLOW_TRAIN, FLOW_TUNE, FLOW_BATCH, FLOW_EVALUATE, FLOW_PIPELINE_RUN, FLOW_RAG_SYNC})
HOLDING = ("PENDING", "RUNNING", "CANCELLING")  # a run in one of these holds a place
CHILDREN_PER_PLACE = 4  # places of the runs the line does not hold, per place of the line
PAGE = 200  # Prefect's largest page
MAX_SEEN = 5000  # waiting runs read for the order; any after them are behind all of these
GIB = 1 << 30


def default_places(cpus: int | None = None, memory_bytes: int | None = None) -> int:
    """Runs at once a machine carries by default: two per core, one per 2 GiB of memory, whichever is
    fewer, and at least 2 (a 2-core, 24 GiB machine: 4)."""
    cpus = cpus or len(os.sched_getaffinity(0))
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(2, min(2 * cpus, memory_bytes // (2 * GIB)))


def places(settings: Any) -> int:
    return settings.local_runs or default_places()


def reason(total: int) -> str:
    """What a waiting run waits for, as its state's message says it."""
    return (f"waits for one of this machine's {total} places (the local pool runs {total} at once: settings "
            "local_runs); `mlyard trainings show` says its place in line")


@dataclass(frozen=True)
class Run:
    """A run of the local pool as the line sees it."""

    id: str
    project: str
    user: str
    at: float  # when it is due (its expected start): the order within a member
    lined: bool = True  # False: it takes no place and waits for none (see the module)

    @classmethod
    def of(cls, flow_run: Any, flow: str | None) -> "Run":
        """`flow`: the name of the run's flow."""
        tags = flow_run.tags or ()
        due = flow_run.next_scheduled_start_time or flow_run.expected_start_time or flow_run.created
        lined = flow in LINED and not any(t.startswith(PARENT_TAG) for t in tags)
        return cls(str(flow_run.id), project_of_tags(tags), user_of_tags(tags) or "", due.timestamp() if due else 0.0,
                   lined)


def order(waiting: Iterable[Run], holding: Iterable[Run], quotas: dict[str, int | None] | None = None
          ) -> list[tuple[Run, str | None]]:
    """The waiting runs in the order they take places, each with None, or why it waits for more than a
    place (its project's quota). `holding`: the runs that hold places now. The order assumes each run it
    places keeps its place: it is the line as it stands."""
    quotas = quotas or {}
    by_project: Counter[str] = Counter(r.project for r in holding)
    by_user: Counter[tuple[str, str]] = Counter((r.project, r.user) for r in holding)
    lines: dict[str, dict[str, list[Run]]] = {}
    for run in sorted(waiting, key=lambda r: (r.at, r.id), reverse=True):  # each member's oldest last: pop()
        lines.setdefault(run.project, {}).setdefault(run.user, []).append(run)
    out: list[tuple[Run, str | None]] = []
    while lines:
        open_ = [p for p in lines if not (quotas.get(p) and by_project[p] >= quotas[p])]  # type: ignore[operator]
        if not open_:
            break
        project = min(open_, key=lambda p: (by_project[p], min(u[-1].at for u in lines[p].values()), p))
        users = lines[project]
        user = min(users, key=lambda u: (by_user[(project, u)], users[u][-1].at, u))
        out.append((users[user].pop(), None))
        by_project[project] += 1
        by_user[(project, user)] += 1
        if not users[user]:
            del users[user]
        if not users:
            del lines[project]
    held = sorted((r for users in lines.values() for line in users.values() for r in line), key=lambda r: (r.at, r.id))
    out.extend((r, f"its project {r.project}'s quota of {quotas[r.project]} run(s) at once is in use") for r in held)
    return out


def parent_tags() -> list[str]:
    """The tag a run made by this process takes when this process is a flow run: its parent (see the module)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return [f"{PARENT_TAG}{ctx.flow_run.id}"] if ctx is not None and ctx.flow_run is not None else []


def filters(pool: str, states: tuple[str, ...]) -> dict[str, Any]:
    """read_flow_runs' arguments for the pool's runs in `states`, oldest due first."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    return {"flow_run_filter": FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))),
            "work_pool_filter": WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            "sort": FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC}


def quotas() -> dict[str, int | None]:
    """Each project's runs at once (None: no limit), from the catalog."""
    from mlyard.core.settings import Settings
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.teams import Teams

    catalog = Catalog(Settings().catalog_db_url)
    try:
        return {p["name"]: p["max_runs"] for p in Teams(catalog).projects()}
    finally:
        catalog.dispose()


def read_line(client: Any, pool: str) -> tuple[list[Run], list[Run]]:
    """(waiting, holding): the pool's lined runs, read with Prefect's sync client."""
    flows: dict[Any, str] = {}

    def run(fr: Any) -> Run:
        if fr.flow_id not in flows:
            flows[fr.flow_id] = client.read_flow(fr.flow_id).name
        return Run.of(fr, flows[fr.flow_id])

    holding = [run(fr) for fr in client.read_flow_runs(**filters(pool, HOLDING), limit=PAGE)]
    waiting: list[Run] = []
    seen = 0
    while seen < MAX_SEEN:
        page = client.read_flow_runs(**filters(pool, ("SCHEDULED",)), limit=PAGE, offset=seen)
        waiting.extend(run(fr) for fr in page)
        seen += len(page)
        if len(page) < PAGE:
            break
    return [r for r in waiting if r.lined], [r for r in holding if r.lined]


def place_in_line(client: Any, pool: str, run_id: str, total: int) -> str | None:
    """Where a waiting run of the pool stands, in words ("3rd of 130 waiting; ..."), or None if it is not
    in the line (started, or a run that waits for no place)."""
    waiting, holding = read_line(client, pool)
    try:
        limits = quotas()
    except Exception:  # noqa: BLE001 - a caller who cannot read the catalog: the line without quotas
        limits = {}
    ranked = order(waiting, holding, limits)
    for at, (run, held) in enumerate(ranked, 1):
        if run.id == run_id:
            why = held or f"{len(holding)} of the machine's {total} places (settings local_runs) are taken"
            return f"{_nth(at)} of {len(ranked)} waiting; {why}"
    return None


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


__all__ = ["PARENT_TAG", "PROJECT_TAG", "USER_TAG", "WAITING", "Run", "default_places", "order", "place_in_line", "places",
           "read_line", "reason"]

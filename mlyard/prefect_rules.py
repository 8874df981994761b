"""Which Prefect API requests mlyard's front door (mlyard/prefect_door.py) lets a project member make, and
how it narrows them to the project they signed in to. Plain functions: no network, no Prefect.

Prefect's open-source server has one credential and no users. The front door holds that credential, and
people do not. An admin's requests pass through unchanged. A member's request passes only if this table
knows it; anything else is denied:

    rule        requests                                            what the door does
    free        GET health and versions, flows, work pools and      passes (no project's data in them)
                their queues and workers, the collections' schemas
                the forms read; POST the schema validation of a
                Run form
    runs named  POST flows' and work pools' filters, counts, pages  passes; one that asks by flow runs gets
                                                                    the project's tag added to them, one that
                                                                    asks by task runs is refused
    narrowed    POST the filters, counts, histories and pages of    adds the project's tag to the body's
                flow runs, task runs and artifacts                  flow-run filter ("all of", joined by "and")
    deployments POST the deployments' filters, counts and pages;    only the deployments a member may run
                GET one of them, its schedules                      (mlyard/member_runs.py member_spec)
    run         GET a flow run and its graph, states, inputs        when the run is the project's
    task run    GET a task run, its states                          when its flow run is the project's
    artifact    GET an artifact, the latest of a key                when its flow run is the project's
    logs        POST the logs' filter                               when every run it names is the project's
    events      POST the events' filter of given flow runs (a run's when every run it names is the project's
                page)
    empty       GET the server's settings, POST the flows' next     answered empty: Prefect's answer is not
    none        runs, the saved searches, automations of a thing    scoped by project (the UI shows nothing)
    counts      POST the UI's task-run counts of given flow runs    when every run it names is the project's
    start       POST create a deployment's flow run (Run)           made by mlyard as for the CLI: checked,
                                                                    tagged and recorded (mlyard/submit.py)
    cancel      POST set a flow run's state to CANCELLING           an editor's, on the project's run

Events, automations, variables, blocks, concurrency limits, the workers' own routes and every websocket
are denied to members: they are not scoped by project in Prefect, or they are the platform's.
"""

from __future__ import annotations

import re
from typing import Any

from mlyard.core.access import PROJECT_TAG

_ID = r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"

RULES: list[tuple[str, re.Pattern[str], str]] = [(m, re.compile(f"^/api{p}$"), rule) for m, p, rule in (
    ("GET", r"/(health|version|admin/version|csrf-token)", "free"),
    ("GET", r"/flows/" + _ID, "free"),
    ("GET", r"/flows/name/[^/]+", "free"),
    ("POST", r"/flows/(filter|count|paginate)", "runs named"),
    ("POST", r"/ui/flows/count-deployments", "free"),
    ("GET", r"/work_pools/[^/]+", "free"),
    ("POST", r"/work_pools/(filter|count)", "runs named"),
    ("POST", r"/work_pools/[^/]+/queues/filter", "free"),
    ("GET", r"/collections/views/aggregate-worker-metadata", "free"),
    ("POST", r"/ui/schemas/validate", "free"),
    ("POST", r"/(flow_runs|task_runs|artifacts|artifacts/latest)/(filter|count|paginate|history|lateness)", "narrowed"),
    ("POST", r"/ui/(flow_runs/history|task_runs/dashboard/counts|task_runs/count)", "narrowed"),
    ("POST", r"/deployments/(filter|count|paginate)", "deployments"),
    ("GET", r"/deployments/" + _ID + r"(/schedules)?", "deployment"),
    ("GET", r"/flow_runs/" + _ID + r"(/graph|/graph-v2|/input/[^/]+)?", "run"),
    ("GET", r"/flow_run_states/?", "run states"),
    ("GET", r"/task_runs/" + _ID, "task run"),
    ("GET", r"/task_run_states/?", "task run states"),
    ("GET", r"/artifacts/" + _ID, "artifact"),
    ("GET", r"/artifacts/([^/]+)/latest", "latest artifact"),
    ("POST", r"/logs/filter", "logs"),
    ("POST", r"/events/filter", "events"),
    ("GET", r"/work_pools/[^/]+/queues/[^/]+", "free"),
    ("POST", r"/work_pools/[^/]+/workers/filter", "free"),
    ("GET", r"/admin/settings", "empty"),
    ("POST", r"/saved_searches/filter", "none"),
    ("GET", r"/automations/related-to/[^/]+", "none"),
    ("POST", r"/ui/flows/next-runs", "empty"),
    ("POST", r"/ui/flow_runs/count-task-runs", "counts"),
    ("POST", r"/deployments/" + _ID + r"/create_flow_run", "start"),
    ("POST", r"/flow_runs/" + _ID + r"/set_state", "cancel"),
)]


def rule_of(method: str, path: str) -> tuple[str, str | None] | None:
    """The rule a member's request falls under and the id (or key) its path names; None: denied."""
    method = "GET" if method == "HEAD" else method
    for m, pattern, rule in RULES:
        if m == method and (found := pattern.match(path)):
            return rule, (found.group(1) if pattern.groups and rule not in ("free", "narrowed", "deployments")
                          else None)
    return None


def narrowed(body: dict[str, Any], project: str) -> dict[str, Any]:
    """`body` (a Prefect filter request) with the project's tag required of every flow run it reaches: the
    body's own flow-run filter and its tags filter joined by "and", the tag added to their "all of"."""
    flow_runs = _object(body.get("flow_runs"), "flow_runs")
    tags = _object(flow_runs.get("tags"), "flow_runs.tags")
    wanted = tags.get("all_") or []
    if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
        raise _refused("flow_runs.tags.all_ must be a list of tags")
    tags = {**tags, "operator": "and_", "all_": [*wanted, f"{PROJECT_TAG}{project}"]}
    return {**body, "flow_runs": {**flow_runs, "operator": "and_", "tags": tags}}


def narrowed_if_runs(body: dict[str, Any], project: str) -> dict[str, Any]:
    """A filter of flows, deployments or work pools: as it is, or, when it asks by flow runs ("the flows that
    have a run named X"), narrowed to the project's runs, so that it says nothing of another project's. One
    that asks by task runs would join them apart from the flow runs: refused."""
    if body.get("task_runs") is not None:
        raise _refused("a filter of flows, deployments or work pools through mlyard's front door does not ask by "
                       "task runs")
    return narrowed(body, project) if body.get("flow_runs") is not None else body


def plain(path: str) -> bool:
    """A path with no '.' or '..' segment, no empty segment ('//') and no backslash: what the door checks is
    what Prefect routes."""
    return "\\" not in path and all(part not in ("", ".", "..") for part in path.split("/")[1:-1]) \
        and path.split("/")[-1] not in (".", "..")


def deployments_narrowed(body: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """`body` (a deployments filter) reaching only the deployments `allowed` (their ids)."""
    deployments = _object(body.get("deployments"), "deployments")
    ids = _object(deployments.get("id"), "deployments.id")
    given = ids.get("any_")
    if given is not None and not isinstance(given, list):
        raise _refused("deployments.id.any_ must be a list of ids")
    keep = [i for i in allowed if given is None or i in given]
    return {**body, "deployments": {**deployments, "operator": "and_", "id": {**ids, "any_": keep}}}


def without_parameters(listed: Any) -> Any:
    """A deployments filter's answer (a list, or a page of `results`) with each one's parameters blanked: the
    owner's Run form examples (mlyard/run_forms.py) name paths of the owner's, outside a member's project."""
    rows = listed.get("results") if isinstance(listed, dict) else listed
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and "parameters" in row:
            row["parameters"] = {}
    return listed


def named_runs(rule: str, body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The flow runs and task runs a logs filter or a task-run count names (both must be the project's):
    (flow run ids, task run ids). A logs filter that names neither would read every run's: refused."""
    if rule == "counts":
        ids = body.get("flow_run_ids")
        if not isinstance(ids, list) or not ids:
            raise _refused("flow_run_ids must list the flow runs to count")
        return [str(i) for i in ids], []
    logs = _object(body.get("logs"), "logs")
    if logs.get("operator", "and_") != "and_":
        raise _refused("a logs filter through mlyard's front door joins its parts with and_")
    found: tuple[list[str], list[str]] = ([], [])
    for field, into in (("flow_run_id", found[0]), ("task_run_id", found[1])):
        any_ = _object(logs.get(field), f"logs.{field}").get("any_")
        if any_ is not None:
            if not isinstance(any_, list):
                raise _refused(f"logs.{field}.any_ must be a list of ids")
            into.extend(str(i) for i in any_)
    if not any(found):
        raise _refused("a logs filter through mlyard's front door names its flow runs (logs.flow_run_id.any_) "
                      "or task runs (logs.task_run_id.any_)")
    return found


def event_runs(body: dict[str, Any]) -> list[str]:
    """The flow runs an events filter is pinned to (a run's page asks for the events of that run, in
    `any_resource.id` or `related.id`). A filter pinned to nothing would read every project's: refused."""
    flt = _object(body.get("filter"), "filter")
    for part in ("any_resource", "related"):
        ids = _object(flt.get(part), f"filter.{part}").get("id")
        if isinstance(ids, list) and ids and all(isinstance(i, str) and i.startswith(FLOW_RUN) for i in ids):
            return [i[len(FLOW_RUN):] for i in ids]
    raise _refused("an events filter through mlyard's front door names its flow runs "
                  "(filter.any_resource.id or filter.related.id: prefect.flow-run.<id>)")


FLOW_RUN = "prefect.flow-run."


def cancelling(body: dict[str, Any]) -> bool:
    """Whether a set_state body asks only to cancel (the one state change a member may make)."""
    state = body.get("state")
    return isinstance(state, dict) and state.get("type") == "CANCELLING"


def _refused(message: str) -> Exception:
    """A body the door cannot narrow safely: answered 422 with `message`, nothing forwarded."""
    from mlyard.core.errors import HttpError

    return HttpError(422, message)


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refused(f"{field} must be an object")
    return value

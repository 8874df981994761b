"""Kubeflow pipelines from Python (and the CLI's `mlyard pipelines` and `mlyard pipeline-runs`):
upload a compiled pipeline (IR YAML), look at it and its graph, run it as a Prefect flow run of the
`pipeline-run` deployment, follow each step, list and download what the steps made.

    import mlyard.pipelines as pipelines

    pipelines.upload("examples/pipelines/digits.yaml", name="digits-pipe")
    pipelines.graph("digits-pipe")                                  # nodes with their parent DAG, edges
    run = pipelines.run({"name": "try-1", "pipeline": "digits-pipe", "parameters": {"epochs": 2}})
    pipelines.show_run(run["pipeline_run_id"])                       # status, each step's state, outputs

A file is checked with the KFP SDK's own types before anything is recorded; run parameters are checked
against the pipeline's inputs, and (to run here) its components against what this machine can run,
before any run starts. Pipeline runs are Prefect flow runs: their status is derived from Prefect's state.

A pipeline belongs to the project it was uploaded in, and its runs to the project they were started in:
its members see them, an editor uploads and runs, the project's owner deletes. A team member's call
(MLYARD_API_KEY) is made by the platform, as them, through the mlyard API (`by_platform`); a drawing is
made where the caller is, from the graph the platform answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlyard.api import load as _spec
from mlyard.core.access import current
from mlyard.core.connection import connect
from mlyard.core.errors import PipelineNotFound, PipelineRunNotFound, RunFailed, SpecError
from mlyard.core.names import FLOW_PIPELINE_RUN, TASK_FAIL_PIPELINE, TASK_FINISH_PIPELINE, TASK_RUN_PIPELINE, deployment
from mlyard.core.specs.common import NAME_PATTERN
from mlyard.core.specs.pipeline import PipelineRunSpec
from mlyard.runs import Kind, visible_projects
from mlyard.teams import acting_editor, acting_or_none, audited
from mlyard.warm_api import by_platform, member_api, member_command

PIPELINE_RUN = Kind(FLOW_PIPELINE_RUN, "mlyard.core.specs.pipeline:PipelineRunSpec", TASK_RUN_PIPELINE, "FAIL PIPELINE RUN", "pipeline run", PipelineRunNotFound,
                    "pipeline-runs", closing=TASK_FINISH_PIPELINE)
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024  # a member's download, sent through the mlyard API in one answer


def _pipelines():
    from mlyard.registry.catalog import shared
    from mlyard.registry.pipelines import Pipelines

    return Pipelines(shared(connect().catalog_db_url))


# -- pipelines ---------------------------------------------------------------------------------

def in_reach(name: str, role: str = "viewer", action: str = "reading a pipeline") -> Any:
    """The pipeline `name` when the caller's role in its project allows `action` (one of a project they have
    no role in does not exist for them)."""
    record = _pipelines().get(name)
    current().need(record.project, role, action, lambda: PipelineNotFound(name))
    return record


def upload(file: str | Path, *, name: str | None = None, description: str = "") -> dict[str, Any]:
    """Check a compiled pipeline and record it in the caller's project: CREATE IN PROGRESS while its graph
    is read, then ACTIVE."""
    import re

    from mlyard.tasks import kfp

    path = Path(file)
    if not path.is_file():
        raise SpecError("file", str(file), "a compiled pipeline file (IR YAML) that exists")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SpecError("file", str(file), f"a file of at most {MAX_FILE_BYTES // 1024 // 1024} MB")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise SpecError("file", str(file), "a text (YAML) file") from exc
    p = kfp.load(text, "file")  # checked here first: a member's mistake is told before anything is sent
    name = name or re.sub(r"[^a-z0-9-]+", "-", p.name.lower()).strip("-")[:50]
    if not re.match(NAME_PATTERN, name):
        raise SpecError("--name", name, "lowercase letters, digits and '-', 1-50")
    made = member_command("pipelines_upload", text=text, name=name, description=description)
    return made if made is not None else record(text=text, name=name, description=description)


@audited("pipeline.upload", lambda a: f"pipeline {a['name']}", lambda a: acting_or_none(current()))
def record(text: str, name: str, description: str = "") -> dict[str, Any]:
    """Record the compiled pipeline `text` as `name` in the caller's project (an editor's)."""
    import re

    from mlyard.tasks import kfp

    project = acting_editor("uploading a pipeline")
    if len(text.encode()) > MAX_FILE_BYTES:
        raise SpecError("file", name, f"a file of at most {MAX_FILE_BYTES // 1024 // 1024} MB")
    if not re.match(NAME_PATTERN, name):
        raise SpecError("--name", name, "lowercase letters, digits and '-', 1-50")
    p = kfp.load(text, "file")
    store = _pipelines()
    store.create(name, description or p.description, p.name, text, project=project)
    try:
        kfp.graph(p)  # what `show` and runs rely on
        kfp.describe(p)
    except Exception as exc:
        store.set_status(name, "CREATE FAILED", f"reading its graph failed: {exc}")
        raise
    store.set_status(name, "ACTIVE")
    return show(name)


@by_platform("pipelines_list")
def list_pipelines() -> list[dict[str, Any]]:
    """The pipelines of the caller's projects."""
    store = _pipelines()
    out = []
    for r in store.all(visible_projects()):
        row = store.as_dict(r)
        row["schedules"] = ", ".join(store.schedules_using(r.name))
        out.append(row)
    return out


@by_platform("pipelines_show")
def show(name: str) -> dict[str, Any]:
    """A pipeline: its record, inputs with types and defaults, components and executors, local blockers."""
    from mlyard.tasks import kfp

    store = _pipelines()
    found = in_reach(name)
    view = store.as_dict(found)
    p = kfp.load(found.yaml_text, f"pipeline {name}")
    view.update(kfp.describe(p))
    view["name"] = found.name
    view["local_blockers"] = kfp.local_blockers(p)
    view["runs_here"] = not view["local_blockers"]
    view["schedules"] = store.schedules_using(name)
    return view


def graph(name: str, *, image: str | Path | None = None) -> dict[str, Any]:
    """The pipeline's DAG: nodes with their parent DAG, and dependency edges; drawn to `image` (.png, .svg)."""
    from mlyard.tasks import kfp

    if image:
        _check_image(image)
    out = graph_view(name)
    title = out.pop("title")
    if image:
        out["image"] = str(kfp.graph_image(kfp.Graph.of(out), Path(image), title))
    return out


@by_platform("pipelines_graph")
def graph_view(name: str) -> dict[str, Any]:
    """The pipeline's DAG as `graph` answers it (undrawn), with the title of its drawing."""
    from mlyard.tasks import kfp

    p = kfp.load(in_reach(name).yaml_text, f"pipeline {name}")
    g = kfp.graph(p)
    return {**g.as_dict(), "text": kfp.graph_text(g), "title": f"pipeline {name} ({p.name})"}


def _check_image(image: str | Path) -> None:
    if Path(image).suffix.lower() not in (".png", ".svg"):
        raise SpecError("--out", str(image), "a .png or .svg file name")


@by_platform("pipelines_delete", "commands")
@audited("pipeline.delete", lambda a: f"pipeline {a['name']}", lambda a: acting_or_none(current()))
def delete(name: str) -> dict[str, Any]:
    """Delete a pipeline (its project owner's; refused while it is being created or while schedules use it)."""
    in_reach(name, "owner", "deleting a pipeline")
    _pipelines().delete(name)
    return {"deleted": name}


# -- runs --------------------------------------------------------------------------------------

def _check(spec: PipelineRunSpec) -> None:
    from mlyard.tasks.pipelines import check_run

    settings = connect()
    check_run(_pipelines(), spec, local=not settings.kfp_host)


def run(spec: PipelineRunSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
        wait: bool = False, timeout_seconds: float = 3600) -> dict[str, Any]:
    """Start a pipeline run (a flow run of pipeline-run/pipeline-run-local, like Run in the Prefect UI); with `wait`,
    follow it to its end. Everything is checked before the run is created."""
    spec = _spec(PipelineRunSpec, spec, sets).resolved(Path.cwd())
    member = member_api() is not None
    if not member:  # a member's is checked by the platform, which makes it as them (mlyard/member_runs.py)
        _check(spec)  # connects first: Prefect is imported pointed at the running platform
    from mlyard.submit import final_state, submit

    made = submit(deployment(FLOW_PIPELINE_RUN), {"spec": spec.model_dump(mode="json")},
                  tags=[f"mlyard.experiment:{spec.experiment}"])
    if wait and member:
        _ended(made["id"], timeout_seconds)
    elif wait:
        try:
            final_state(made["id"], timeout_seconds, what=f"pipeline run {made['name']} ({made['id']})")
        except TimeoutError:
            pass  # still running: its view says so, as run_deployment's timeout left it
    view = show_run(made["id"])
    if wait and view["status"] not in ("COMPLETE",):
        if view["status"] == "STOPPED":
            return view
        raise RunFailed(view["status"], made["id"], view.get("cause") or "see `mlyard pipeline-runs show`")
    return view


def _ended(run_id: str, timeout_seconds: float) -> None:
    """Until a member's run has ended, or `timeout_seconds` passed, following it through the mlyard API."""
    import time

    from mlyard.runs import ACTIVE_STATUSES

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        status = show_run(run_id)["status"]
        if status not in ACTIVE_STATUSES and not status.endswith("IN PROGRESS"):
            return
        time.sleep(1.0)


@by_platform("pipeline_runs_list")
def list_runs(limit: int = 100) -> list[dict[str, Any]]:
    from mlyard.runs import list_runs as _list

    connect()
    return [_row(i.as_dict()) for i in _list(PIPELINE_RUN, limit)]


def _row(info: dict[str, Any]) -> dict[str, Any]:
    spec = info.get("spec") or {}
    cause = info.get("cause") or ""
    for prefix in ("RunFailed: ", f"{info['status']}: "):
        cause = cause.removeprefix(prefix)
    return {"id": info["id"], "name": info["name"], "project": info.get("project"), "status": info["status"],
            "pipeline": spec.get("pipeline"),
            "experiment": spec.get("experiment") or "pipelines", "created_at": info["created_at"], "cause": cause,
            "scheduled_time": spec.get("scheduled_time") or ""}


def _failing(run_id: str) -> bool:
    """Whether the run's failure step (listing a failed run's outputs) has started."""
    from prefect.client.orchestration import get_client

    from mlyard.runs import started_in

    with get_client(sync_client=True) as client:
        return bool(started_in(client, TASK_FAIL_PIPELINE, [client.read_flow_run(run_id)]))


@by_platform("pipeline_runs_show")
def show_run(run_id: str) -> dict[str, Any]:
    """A pipeline run: status (the console's, from Prefect's state), each step's state, its outputs."""
    from mlyard.core.links import links
    from mlyard.runs import get_run
    from mlyard.tasks.pipelines import folder_view

    settings = connect()
    info = get_run(PIPELINE_RUN, run_id).as_dict()
    run_id = info["id"]  # the whole id, when a prefix of it was given
    view = _row(info)
    if view["status"] == "COMPLETE IN PROGRESS" and _failing(run_id):
        view["status"] = "FAIL PIPELINE RUN IN PROGRESS"
    view["spec"] = info["spec"]
    view.update(folder_view(settings, info.get("project") or "default", run_id))  # here, or kept in storage
    ended = view.pop("result")
    view["output_values"] = ended.get("outputs", {})
    if ended.get("reason"):
        view["reason"] = ended["reason"]
    view["links"] = links(settings, run_id)
    return view


def run_graph(run_id: str, *, image: str | Path | None = None) -> dict[str, Any]:
    """The run's DAG with each step's state (SUCCEEDED, FAILED, RUNNING, NOT STARTED: skipped by a condition
    or not reached); drawn to `image` (.png, .svg)."""
    from mlyard.tasks import kfp

    if image:
        _check_image(image)
    out = run_graph_view(run_id)
    title = out.pop("title")
    if image:
        plain = {n["name"]: n["state"] for n in out["nodes"] if n.get("state")}
        out["image"] = str(kfp.graph_image(kfp.Graph.of(out), Path(image), title, plain))
    return out


@by_platform("pipeline_runs_graph")
def run_graph_view(run_id: str) -> dict[str, Any]:
    """The run's DAG as `run_graph` answers it (undrawn), with the title of its drawing."""
    from mlyard.tasks import kfp
    from mlyard.tasks.pipeline_storage import pipeline_text
    from mlyard.tasks.storage import Storage

    view = show_run(run_id)
    if (text := pipeline_text(Storage(connect()), view["run_dir"])) is None:
        raise SpecError("pipeline run", run_id, "a run whose folder is kept (its outputs were removed after the "
                                                "retention period, or it never started)")
    p = kfp.load(text, "pipeline run")
    g = kfp.graph(p)
    states = {name: n.get("state", "?") + (f" x{n['runs']}" if n.get("runs", 1) > 1 else "")
              for name, n in view["nodes"].items()}
    out = g.as_dict()
    for node in out["nodes"]:
        node["state"] = view["nodes"].get(node["name"], {}).get("state", "NOT STARTED") \
            if node["kind"] in ("task", "importer") else None
    out["text"] = kfp.graph_text(g, states)
    out["status"] = view["status"]
    out["title"] = f"run {view['name']} ({view['status']})"
    return out


def download(run_id: str, dest: str | Path, *, task: str | None = None) -> dict[str, Any]:
    """Copy a run's outputs and artifacts (of one step, with `task`) to `dest`, laid out as task/name (a
    member's are sent by the platform through the mlyard API, at most MAX_DOWNLOAD_BYTES at once)."""
    import base64

    from mlyard.tasks.storage import Storage

    dest = Path(dest)
    copied = []
    member = member_api() is not None
    view = output_files(run_id, task) if member else show_run(run_id)
    storage = None if member else Storage(connect())
    for o in view["files"] if member else _outputs_of(view, task):
        target = dest / o["task"] / o["name"]  # the platform's step and file names: no '/' or '..' in them
        target.parent.mkdir(parents=True, exist_ok=True)
        if storage is None:
            target.write_bytes(base64.b64decode(o["data"]))
        else:  # a file here, or one kept in the project's storage (a cluster's run: tasks/pipeline_storage.py)
            storage.fetch(o["path"], target)
        copied.append(str(target))
    return {"pipeline_run_id": view["id"], "copied": copied}


def _outputs_of(view: dict[str, Any], task: str | None) -> list[dict[str, Any]]:
    files = [o for o in view["outputs"] if task is None or o["task"] == task or o["task"].split("[")[0] == task]
    if task is not None and not files:
        raise SpecError("--task", task, f"a step with outputs: {', '.join(sorted({o['task'] for o in view['outputs']}))}")
    return files


@by_platform("pipeline_runs_files")
def output_files(run_id: str, task: str | None = None) -> dict[str, Any]:
    """A run's outputs (of one step, with `task`) with their bytes, base64: what a member's download writes."""
    import base64

    from mlyard.tasks.storage import Storage

    view = show_run(run_id)
    files = _outputs_of(view, task)
    if (size := sum(o["bytes"] for o in files)) > MAX_DOWNLOAD_BYTES:
        raise SpecError("--task", task or "(all)", f"outputs of at most {MAX_DOWNLOAD_BYTES >> 20} MiB at once (these are "
                        f"{size >> 20} MiB): download one step's with --task")
    storage = Storage(connect())
    return {"id": view["id"], "files": [
        {"task": o["task"], "name": o["name"], "data": base64.b64encode(storage.read_bytes(o["path"])).decode()}
        for o in files]}


@by_platform("pipeline_runs_stop", "commands")
@audited("run.stop", lambda a: f"pipeline run {a['run_id']}", lambda a: acting_or_none(current()))
def stop(run_id: str) -> dict[str, Any]:
    """Stop a pipeline run (an editor's of its project)."""
    from mlyard.runs import stop_run

    connect()
    return show_run(stop_run(PIPELINE_RUN, run_id).id)


def copy(run_id: str, *, sets: dict[str, Any] | None = None, wait: bool = False) -> dict[str, Any]:
    """A new run with the same settings (`sets` merged in, e.g. {"name": "again"})."""
    spec = dict(show_run(run_id)["spec"])
    spec.pop("scheduled_time", None)
    return run(spec, sets=sets, wait=wait)


@by_platform("pipeline_runs_delete", "commands")
@audited("run.delete", lambda a: f"pipeline run {a['run_id']}", lambda a: acting_or_none(current()))
def delete_run(run_id: str) -> dict[str, Any]:
    """Delete a finished pipeline run: its Prefect flow run and its folder (its project owner's; refused while
    it runs)."""
    from mlyard.core.errors import StillRunning
    from mlyard.runs import ACTIVE_STATUSES, delete_flow_runs
    from mlyard.tasks.pipeline_storage import forget

    view = show_run(run_id)
    run_id = view["id"]
    current().need(view["project"], "owner", "deleting a pipeline run", lambda: PipelineRunNotFound(run_id))
    if view["status"] in ACTIVE_STATUSES or view["status"].endswith("IN PROGRESS"):
        raise StillRunning("pipeline run", run_id, view["status"], f"mlyard pipeline-runs stop {run_id}")
    delete_flow_runs([run_id])
    forget(connect(), view["run_dir"])
    return {"deleted": run_id}

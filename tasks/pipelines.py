"""The steps of a pipeline run (flows/pipeline_run.py): prepare it (the pipeline, its arguments, what
can run here), run it (kfp.local in a supervised process group, or a Kubeflow Pipelines server), and
list what it made. A run's folder, `<home>/pipeline-runs/<flow run id>`, holds the pipeline as run,
its arguments, each task's state (nodes.json) and the outputs and artifacts (outputs/)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import SpecError
from mlyard.core.names import TASK_FAIL_PIPELINE, TASK_FINISH_PIPELINE, TASK_RUN_PIPELINE
from mlyard.core.specs.pipeline import PipelineRunSpec
from mlyard.registry.pipelines import Pipelines
from mlyard.tasks import kfp
from mlyard.tasks.launch import Supervisor
from mlyard.tasks.orchestration import step_started

PROJECT_ROOT = Path(__file__).absolute().parents[2]  # the folder holding the mlyard package


def pipeline_of(pipelines: Pipelines, name: str) -> kfp.Pipeline:
    record = pipelines.get(name)
    if record.status != "ACTIVE":
        raise SpecError("pipeline", name, f"an ACTIVE pipeline ({name} is {record.status}"
                                          f"{': ' + record.reason if record.reason else ''})")
    return kfp.load(record.yaml_text, f"pipeline {name}")


def check_run(pipelines: Pipelines, spec: PipelineRunSpec, local: bool) -> kfp.Pipeline:
    """Everything that can be known before a run starts: the pipeline, the parameters, and, to run here,
    that every component can."""
    p = pipeline_of(pipelines, spec.pipeline)
    kfp.check_arguments(p, spec.parameters)
    if local:
        blockers = kfp.local_blockers(p)
        if blockers:
            raise SpecError("pipeline", spec.pipeline, "a pipeline whose components can run here: " + "; ".join(blockers))
    return p


@task(name="prepare-pipeline", cache_policy=NO_CACHE)
def prepare(pipelines: Pipelines, spec: PipelineRunSpec, run_dir: Path, local: bool) -> Path:
    p = check_run(pipelines, spec, local)
    run_dir.mkdir(parents=True, exist_ok=True)
    from datetime import datetime, timezone

    created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    (run_dir / "pipeline.yaml").write_text(kfp.for_local(p, spec.scheduled_time, created) if local else p.text)
    # every input with its value: the given one, else its default (kfp.local leaves defaults of a loaded
    # pipeline unset)
    arguments = {i.name: i.default for i in p.inputs if i.default is not None} | spec.parameters
    (run_dir / "arguments.json").write_text(json.dumps(arguments))
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    return run_dir


@task(name=TASK_RUN_PIPELINE, cache_policy=NO_CACHE)
def run_local(run_dir: Path, on_line: Callable[[str], None], should_stop: Callable[[], str | None],
              env: dict[str, str]) -> tuple[int, list[str]]:
    """kfp.local in its own process group and sandbox (a stop ends every step it started); the exit code
    and the last lines it printed."""
    step_started(TASK_RUN_PIPELINE)
    from mlyard.core.errors import TrainingFailed
    from mlyard.core.settings import Settings
    from mlyard.tasks.confinement import around_platform_code
    from mlyard.tasks.launch import script_environment

    # its components are code a user brought: in a sandbox that writes the run's folder (and its NAS) alone,
    # holding none of the platform's credentials
    argv, env, notices = around_platform_code(
        [sys.executable, "-m", "mlyard.tasks.kfp_runner", str(run_dir)], script_environment(env),
        [str(run_dir), *([env["MLYARD_NAS_PATH"]] if env.get("MLYARD_NAS_PATH") else [])], str(PROJECT_ROOT),
        Settings().sandbox)
    for notice in notices:
        on_line(notice)
    sup = Supervisor(argv, env, PROJECT_ROOT, on_line, should_stop=should_stop)
    try:
        sup.run()
        return 0, []
    except TrainingFailed as exc:  # the pipeline failed: its steps' states say where
        return (exc.exit_code if exc.exit_code is not None else 1), exc.last_lines


def node_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((run_dir / "nodes.json").read_text())
    except (OSError, ValueError):
        return {}


def result(run_dir: Path) -> dict[str, Any]:
    """The outcome kfp.local returned (tasks/kfp_runner.py): status, reason, the pipeline's output values."""
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def outputs(run_dir: Path) -> list[dict[str, Any]]:
    """Every file a task wrote: its task (loop iterations as task[i]), name, path and size."""
    from mlyard.tasks.pipeline_storage import step_outputs

    root = run_dir / "outputs"
    if not root.is_dir():
        return []
    return step_outputs([(str(f.relative_to(root)), f.stat().st_size, str(f)) for f in sorted(root.rglob("*"))
                         if f.is_file()])


def folder_view(settings: Any, project: str, run_id: str) -> dict[str, Any]:
    """run_dir, nodes, outputs and result of a run: from its folder here when there is one, else from the copy
    kept in its project's storage."""
    from mlyard.tasks.pipeline_storage import kept_at, kept_view
    from mlyard.tasks.storage import Storage

    run_dir = settings.pipeline_runs_dir / run_id
    where = None if run_dir.is_dir() else kept_at(settings, project, run_id)
    if where is not None:
        return kept_view(Storage(settings), where)
    return {"run_dir": str(run_dir), "nodes": node_states(run_dir), "outputs": outputs(run_dir),
            "result": result(run_dir)}


@task(name=TASK_FINISH_PIPELINE, cache_policy=NO_CACHE)
def finish(run_dir: Path) -> dict[str, Any]:
    step_started(TASK_FINISH_PIPELINE)
    return {"nodes": node_states(run_dir), "outputs": outputs(run_dir),
            "output_values": result(run_dir).get("outputs", {})}


@task(name=TASK_FAIL_PIPELINE, cache_policy=NO_CACHE)
def fail(run_dir: Path) -> dict[str, Any]:
    step_started(TASK_FAIL_PIPELINE)
    return {"nodes": node_states(run_dir), "outputs": outputs(run_dir), "reason": result(run_dir).get("reason")}


def sweep(runs_dir: Path, retention_days: float, now: float | None = None) -> list[str]:
    """Remove the folders of pipeline runs older than the retention (their outputs and artifacts)."""
    now = now or time.time()
    removed = []
    if not runs_dir.is_dir():
        return removed
    for d in runs_dir.iterdir():
        try:
            if d.is_dir() and now - d.stat().st_mtime > retention_days * 86400:
                shutil.rmtree(d)
                removed.append(d.name)
        except OSError:
            pass
    return removed

"""Pipeline run: run an uploaded Kubeflow pipeline as one Prefect flow run.

1. Prepare: the pipeline (ACTIVE), the run parameters against its inputs, and, to run here, that every
   component can (no container runtime here; packages installed, none downloaded); write its folder.
2. Run its steps: here with kfp.local's subprocess runner, in a process group a stop ends; or on the
   Kubeflow Pipelines server of MLYARD_KFP_HOST through kfp.Client, followed until it ends and
   terminated when this run is cancelled.
3. List what each step made (outputs and artifacts, kept `pipeline_artifact_retention_days`), and each
   step's state; a failed pipeline fails this run (FAIL PIPELINE RUN) after that.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from mlyard.core.errors import RunFailed, TrainingStopped
from mlyard.core.names import FLOW_PIPELINE_RUN
from mlyard.core.specs.pipeline import PipelineRunSpec
from mlyard.flows.platform import Platform
from mlyard.registry.pipelines import Pipelines
from mlyard.tasks.orchestration import cancel_watch, run_name, stopped_on_interrupt
from mlyard.tasks.pipeline_storage import Keeping, kept_at
from mlyard.tasks.pipelines import fail, finish, prepare, run_local


class PipelineRunResult(BaseModel):
    pipeline_run_id: str = Field(description="Prefect flow run id of the pipeline run.")
    pipeline: str
    run_dir: str = Field(description="Where its outputs and artifacts are (until the retention passes).")
    nodes: dict[str, dict] = Field(description="Each step's state, and how often it ran (loops).")
    outputs: list[dict] = Field(description="Every file a step wrote: task, name, path, bytes.")
    output_values: dict[str, Any] = Field(default_factory=dict, description="The pipeline's own outputs (what it "
                                          "returns), by name: parameters as values, artifacts as their URI.")


@flow(name=FLOW_PIPELINE_RUN, flow_run_name=run_name(FLOW_PIPELINE_RUN), on_crashed=[stopped_on_interrupt],
      description="Run an uploaded Kubeflow pipeline (kfp.local here, or a Kubeflow Pipelines server).")
def pipeline_run(spec: PipelineRunSpec) -> PipelineRunResult:
    p = Platform()
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    local = not p.settings.kfp_host
    run_dir = p.settings.pipeline_runs_dir / run_id

    # 1. Prepare: everything that can be checked before a step runs.
    pipelines = Pipelines(p.catalog)
    prepare(pipelines, spec, run_dir, local)
    keeping = Keeping(p.storage, run_dir, kept_at(p.settings, pipelines.get(spec.pipeline).project, run_id), logger)
    try:
        result = _steps(p, spec, run_id, run_dir, local, logger)
    finally:
        keeping.close()  # the folder, outputs and all, where its readers find it (a pod's home goes with the pod)
    if keeping.where is not None and isinstance(result, PipelineRunResult):  # what it made, where it is kept
        outputs = [{**o, "path": f"{keeping.where}/{Path(o['path']).relative_to(run_dir)}"} for o in result.outputs]
        result = result.model_copy(update={"run_dir": keeping.where, "outputs": outputs})
    return result


def _steps(p: Platform, spec: PipelineRunSpec, run_id: str, run_dir: Any, local: bool, logger: Any) -> PipelineRunResult:
    # 2. Run the steps.
    if local:
        env = {**os.environ}
        if spec.nas_uri:  # a mounted share: its local path
            env["MLYARD_NAS_PATH"] = str(p.storage.resolve(spec.nas_uri, "nas_uri").path)
        try:
            code, tail = run_local(run_dir, lambda line: logger.info(line) if line.strip() else None,
                                   cancel_watch(run_id), env)
        except TrainingStopped as stop:
            return Cancelled(message=f"STOPPED: {stop.reason}")  # type: ignore[return-value]
    else:
        from mlyard.tasks.kfp_remote import run_remote

        try:
            code, tail = run_remote(p.settings.kfp_host, run_dir, spec, cancel_watch(run_id), logger.info), []
        except TrainingStopped as stop:
            return Cancelled(message=f"STOPPED: {stop.reason}")  # type: ignore[return-value]

    # 3. What each step made; a failure after that.
    if code != 0:
        summary = fail(run_dir)
        failed = [n for n, s in summary["nodes"].items() if s.get("state") == "FAILED"]
        if summary.get("reason"):  # what kfp.local returned or raised (tasks/kfp_runner.py)
            why = summary["reason"]
        elif failed:
            why = f"step(s) {', '.join(failed)} failed"
        else:  # before any step: the last error line kfp.local printed
            errors = [t.strip() for t in tail if "Error" in t or "error" in t]
            why = "the pipeline failed before its steps ran" + (f": {errors[-1]}" if errors else "")
        raise RunFailed("FAIL PIPELINE RUN", None, f"{why}; see `mlyard pipeline-runs show {run_id}` and the run's log")
    summary = finish(run_dir)
    return PipelineRunResult(pipeline_run_id=run_id, pipeline=spec.pipeline, run_dir=str(run_dir), **summary)

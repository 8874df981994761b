"""Train: run a user's algorithm under the EasyMaker contract and record it in MLflow.

1. Check the spec against the world: the inputs and the entry point exist, the outputs resolve.
2. Stage in the algorithm source, datasets and input checkpoint; check the entry point exists.
3. Prepare the environment: the algorithm's requirements.txt in a cached virtual environment.
4. Open the MLflow run: tags, hyperparameters as params.
5. Run the entry point: output streamed to the Prefect log, metric lines to MLflow while it runs.
6. Stage out: the model (MLflow artifact and output URI), checkpoints, TensorBoard logs, the log.

A multi-node training on a Kubernetes pool does 2, 3, 5 and 6 on its nodes' pods (an Indexed Job this
flow run makes and follows: tasks/node_jobs.py, tasks/node.py); on the local pool its nodes are
processes here.
"""

from __future__ import annotations

import shutil
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from mlyard.core.errors import TrainingStopped
from mlyard.core.names import FLOW_TRAIN
from mlyard.core.settings import in_kubernetes_pod
from mlyard.core.specs import TrainingSpec
from mlyard.flows.platform import Platform
from mlyard.tasks.node_jobs import end_nodes, model_uri, run_nodes
from mlyard.tasks.orchestration import appkey_env, cancel_watch, run_name, stopped_on_interrupt
from mlyard.tasks.registry_secrets import check_pod_image
from mlyard.tasks.training import (
    LOG_NAME,
    announce_run,
    check_locations,
    close_run,
    open_run,
    prepare_environment,
    run_entry_point,
    save_outputs,
    stage_inputs,
)


class TrainingResult(BaseModel):
    training_id: str = Field(description="Prefect flow run id of the training.")
    run_id: str = Field(description="MLflow run id.")
    experiment: str
    model_uri: str | None = Field(description="MLflow artifact URI of the model (None if EM_MODEL_DIR was empty).")
    output_uri: str | None
    metrics: dict[str, float] = Field(description="Last value of each metric the script printed.")
    script_seconds: float = Field(description="How long the entry point itself ran.")


@flow(name=FLOW_TRAIN, flow_run_name=run_name(FLOW_TRAIN), persist_result=True, on_crashed=[stopped_on_interrupt, end_nodes],
      on_cancellation=[end_nodes],
      description="Run a training (EasyMaker contract) and record it in MLflow.")
def train(spec: TrainingSpec) -> TrainingResult:  # or a Cancelled state, shown as STOPPED
    p = Platform()
    logger = get_run_logger()
    training_id = str(flow_run.get_id() or f"local-{time.time_ns()}")

    # 1. Check the spec against the world before anything is made.
    check_locations(p.storage, spec)
    if spec.image and not in_kubernetes_pod():
        logger.info("image %s applies to Kubernetes pools; on this machine the training runs in its own Python "
                    "environment", spec.image)
    elif spec.image:
        check_pod_image(spec.image, p.settings)  # a run from the UI's Run button did not get the image
    if spec.nodes > 1 and in_kubernetes_pod():  # 2-6 on the nodes' own pods
        return _on_nodes(p, spec, training_id)

    scratch = p.scratch(spec.name)
    log_path = scratch / LOG_NAME
    try:
        # 2. Stage in.
        inputs = stage_inputs(p.storage, spec, scratch)
        dirs = inputs.workdirs(scratch)

        # 3. Environment.
        python = prepare_environment(inputs.source, p.settings.envs_dir)

        # 4. MLflow run, linked from the flow run and naming the datasets it reads.
        run_id = open_run(p.tracking, spec, training_id)
        announce_run(p.tracking, run_id, spec)
        try:
            # 5. Run.
            env = {**p.settings.engine_env(), **appkey_env()}
            script = run_entry_point(spec, dirs, python, p.settings.region, env, p.tracking, run_id, log_path,
                                     cancel_watch(training_id))
            # 6. Stage out.
            model_uri = save_outputs(p.storage, p.tracking, spec, dirs, run_id)
        except TrainingStopped as stop:
            close_run(p.tracking, run_id, "KILLED", log_path, f"STOPPED: {stop.reason}")
            logger.warning("training stopped: %s", stop.reason)
            return Cancelled(message=f"STOPPED: {stop.reason}")  # type: ignore[return-value]
        except BaseException as exc:
            close_run(p.tracking, run_id, "FAILED", log_path, f"FAIL TRAIN: {exc}")
            raise
        close_run(p.tracking, run_id, "FINISHED", log_path, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    logger.info("training %s COMPLETE in %.1f s (MLflow run %s)", spec.name, script.seconds, run_id)
    return TrainingResult(training_id=training_id, run_id=run_id, experiment=spec.experiment, model_uri=model_uri,
                          output_uri=spec.output_uri, metrics=script.metrics, script_seconds=script.seconds)


def _on_nodes(p: Platform, spec: TrainingSpec, training_id: str) -> TrainingResult:
    """A multi-node training on a Kubernetes pool: 4. open the MLflow run, 5. run the nodes' Indexed Job
    (each pod stages in, prepares, runs its node and node 0 stages out: tasks/node.py), then end the run."""
    logger = get_run_logger()
    run_id = open_run(p.tracking, spec, training_id)
    announce_run(p.tracking, run_id, spec)
    try:
        script = run_nodes(spec, training_id, run_id, p.tracking, p.settings.kube_namespace, cancel_watch(training_id))
    except TrainingStopped as stop:
        close_run(p.tracking, run_id, "KILLED", None, f"STOPPED: {stop.reason}")
        logger.warning("training stopped: %s", stop.reason)
        return Cancelled(message=f"STOPPED: {stop.reason}")  # type: ignore[return-value]
    except BaseException as exc:
        close_run(p.tracking, run_id, "FAILED", None, f"FAIL TRAIN: {exc}")
        raise
    close_run(p.tracking, run_id, "FINISHED", None, None)
    logger.info("training %s COMPLETE on %d nodes in %.1f s (MLflow run %s)", spec.name, spec.nodes, script.seconds,
                run_id)
    return TrainingResult(training_id=training_id, run_id=run_id, experiment=spec.experiment,
                          model_uri=model_uri(p.tracking, run_id), output_uri=spec.output_uri, metrics=script.metrics,
                          script_seconds=script.seconds)

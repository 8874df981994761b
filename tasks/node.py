"""One node of a multi-node training on Kubernetes: the command of each pod of the nodes' Indexed Job
(`python -m mlyard.tasks.node`; tasks/node_jobs.py makes the Job).

1. Read the training (MLYARD_NODE_SPEC), the Job (MLYARD_NODE_JOB) and this pod's index
   (JOB_COMPLETION_INDEX, set by the Job controller).
2. Stage the inputs into this pod's data storage and build the algorithm's environment.
3. Run the entry point as this node: torchrun with --node_rank and node 0's c10d rendezvous, or the
   script with NODE_RANK, RANK/WORLD_SIZE and TF_CONFIG. Its output is this pod's log.
4. Node 0 streams the metrics to the training's MLflow run and saves the model and outputs there; the
   other nodes' results are their ranks' to share.
Exit code: the entry point's (a stop is the Job's deletion).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mlyard.core.environment import node_job_env
from mlyard.core.errors import MlyardError, TrainingFailed
from mlyard.core.settings import Settings, apply_engine_env, require_shared_stores
from mlyard.core.specs import TrainingSpec
from mlyard.registry.tracking import Tracking
from mlyard.tasks.confinement import Confinement
from mlyard.tasks.environments import requirements_env
from mlyard.tasks.launch import Rendezvous, run_script
from mlyard.tasks.node_jobs import RENDEZVOUS_PORT, NodeJob, node_environment
from mlyard.tasks.storage import Storage
from mlyard.tasks.training import LOG_NAME, save_model, stage_inputs


def main() -> int:
    given = node_job_env()
    spec = TrainingSpec.model_validate_json(given["spec"])
    meta = json.loads(given["job"])
    job = NodeJob(meta["name"], "", int(meta["nodes"]))
    index = int(given["index"])
    training_id, run_id = given["training_id"], given["run_id"]
    settings = Settings()
    require_shared_stores(settings)
    apply_engine_env(settings)
    storage, tracking = Storage(settings), Tracking(settings.mlflow_uri, None)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"node-{index}.", dir=settings.runs_dir)
    try:
        inputs = stage_inputs(storage, spec, Path(scratch), stage=Storage.stage_in)  # no task runs outside a flow run
        python = requirements_env(inputs.source, settings.envs_dir)
        dirs = inputs.workdirs(Path(scratch))
        env = {**os.environ, **settings.engine_env(), **node_environment(spec, job, index)}
        lead = index == 0
        log_path = Path(scratch) / LOG_NAME
        run_script(spec, dirs, python, settings.region, env, log_path,
                   metric_sink=(lambda batch: tracking.log_metrics(run_id, batch)) if lead else (lambda batch: None),
                   echo=lambda line: print(line, flush=True),
                   rendezvous=Rendezvous(f"{job.host(0)}:{RENDEZVOUS_PORT}", training_id, host=lead),
                   confinement=Confinement.of(settings, network=True))  # the nodes meet over the network
        if lead:
            save_model(storage, tracking, spec, dirs, run_id)
            tracking.log_artifact(run_id, log_path, "logs")
        return 0
    except TrainingFailed as exc:
        print(exc.reason, file=sys.stderr, flush=True)
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    except MlyardError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

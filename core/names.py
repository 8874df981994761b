"""Names that cross a system boundary, in one place: Prefect flow and task names (run statuses are
derived from which task runs have started, so the flows and `mlyard.runs` must agree on them) and
the tags mlyard writes on MLflow runs and model versions, and how a model version's parameters are
named when they reach the model server.
"""

import re
from typing import Mapping

# -- the release: what every image, the catalog's stamp and `mlyard --version` say (pyproject.toml's version) ----
RELEASE = "0.1.0"

# -- Prefect flows (their deployments carry the same names) --------------------------------------------
FLOW_TRAIN = "train"
FLOW_TUNE = "tune"
FLOW_BATCH = "batch-inference"
FLOW_BATCH_WORKER = "batch-inference-worker"
FLOW_EVALUATE = "evaluate"
FLOW_DEPLOY_ENDPOINT = "deploy-endpoint"
FLOW_ADD_STAGE = "add-endpoint-stage"
FLOW_PROMOTE_STAGE = "promote-endpoint-stage"
FLOW_DELETE_ENDPOINT = "delete-endpoint"
FLOW_SYNC_ENDPOINT = "sync-endpoint-code"
FLOW_SET_TRAFFIC = "set-endpoint-traffic"  # a stage's weight or shadow share
FLOW_ROLLOUT = "promote-progressively"  # a stage promoted step by step behind gates
FLOW_CONTROL_PROMOTION = "control-promotion"  # pause, resume or abort the promotion in progress
FLOW_PIPELINE_RUN = "pipeline-run"
FLOW_RAG_SYNC = "rag-sync"
FLOW_NOTEBOOK = "notebook"  # every action on a notebook (create, stop, start, reboot, delete)
FLOW_SCHEDULER = "scheduler"  # production only: `mlyard up` runs the same loop as a process

# -- deployments: one per flow and place (this machine's process pool, the cluster's GPU pool, the cluster's CPU
# pool for the endpoint, pipeline and scheduler flows), named FLOW-PLACE: the Prefect UI titles each row of its
# Deployments page with the deployment's name, so that the list says what each one does.
PLACES = ("local", "gpu", "kubernetes")


def deployment(flow: str, place: str = "local") -> str:
    """The deployment of `flow` on `place`, as Prefect names it (FLOW/DEPLOYMENT): `train/train-local`."""
    return f"{flow}/{flow}-{place}"


def on_this_platform(deployment: str) -> str:
    """`deployment` where this process runs: in a Kubernetes pod, FLOW/FLOW-local is FLOW/FLOW-kubernetes, the
    flow's deployment on the cpu pool that `mlyard k8s apply` registers (the endpoint flows, notebooks,
    pipelines): a cluster has no local pool. Elsewhere itself."""
    from mlyard.core.settings import in_kubernetes_pod

    if in_kubernetes_pod() and deployment.endswith("-local"):
        return deployment.removesuffix("local") + "kubernetes"
    return deployment


def current_deployment(ref: str) -> str:
    """`ref` as deployments are named now: a name of before (`train/local`, as saved schedules, specs and
    scripts may still hold) is `train/train-local`; any other name is itself."""
    flow, _, name = ref.partition("/")
    return deployment(flow, name) if name in PLACES else ref


# -- flow run names: what each flow's runs are called (rendered from the run's parameters) ------------------
RUN_NAMES: dict[str, str] = {
    FLOW_TRAIN: "{spec.name}", FLOW_TUNE: "{spec.name}", FLOW_BATCH: "{spec.name}", FLOW_EVALUATE: "{spec.name}",
    FLOW_PIPELINE_RUN: "{spec.name}", FLOW_DEPLOY_ENDPOINT: "{spec.name}", FLOW_ADD_STAGE: "{spec.endpoint}-{spec.stage.name}",
    FLOW_PROMOTE_STAGE: "{spec.endpoint}-{spec.stage}", FLOW_DELETE_ENDPOINT: "{spec.endpoint}",
    FLOW_SYNC_ENDPOINT: "{spec.endpoint}", FLOW_RAG_SYNC: "{spec.rag}", FLOW_NOTEBOOK: "{spec.action}-{spec.notebook}",
    "stop-endpoint-stage": "{spec.endpoint}-{spec.stage}", "start-endpoint-stage": "{spec.endpoint}-{spec.stage}",
    "retry-endpoint-stage": "{spec.endpoint}-{spec.stage}", FLOW_SET_TRAFFIC: "{spec.endpoint}-{spec.stage}",
    FLOW_ROLLOUT: "{spec.endpoint}-{spec.stage}", FLOW_CONTROL_PROMOTION: "{spec.action}-{spec.endpoint}"}
TAG_NAMED = "mlyard.named"  # the run was given its final name when it was made: the flow keeps it
_PLACEHOLDER = re.compile(r"\{([a-z_.]+)\}")


def render_run_name(template: str, parameters: Mapping) -> str | None:
    """`template` with each {a.b} taken from `parameters` (dicts or objects); None when one is missing."""
    def value(path: str) -> str:
        cur: object = parameters
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else getattr(cur, part, None)
            if cur is None:
                raise KeyError(path)
        return str(getattr(cur, "value", cur))

    try:
        return _PLACEHOLDER.sub(lambda m: value(m[1]), template)
    except KeyError:
        return None


# -- Prefect tasks whose start or failure decides a run's status ------------------------------------------
# The first path segments the gateway keeps for itself (/mlyard/... management, /rag/... RAG queries): an
# endpoint of that name would be made and never reached.
GATEWAY_PREFIXES = ("mlyard", "rag")

TASK_RUN_ENTRY_POINT = "run-entry-point"  # a training's script runs: RUNNING; a failure after it is FAIL TRAIN
TASK_TRIAL = "trial"  # a tuning's trial runs
TASK_RUN_WORKERS = "run-workers"  # a batch inference's workers run
TASK_FINISH = "finish"  # a batch inference joins its outputs: COMPLETE IN PROGRESS
TASK_RECORD = "record"  # an evaluation writes its report: COMPLETE IN PROGRESS
TASK_RUN_PIPELINE = "run-pipeline"  # a pipeline run's steps run: RUNNING
TASK_FINISH_PIPELINE = "finish-pipeline"  # its outputs are listed: COMPLETE IN PROGRESS
TASK_FAIL_PIPELINE = "fail-pipeline"  # a failed one's outputs are listed: FAIL PIPELINE RUN IN PROGRESS
# An evaluation is RUNNING once its batch inference (a subflow, seen as a task run named after it) has started.
TASK_EVALUATION_BATCH = FLOW_BATCH
# A flow run label set, by the API call itself, when one of the steps above starts (`mlyard.started.<step>`):
# Prefect's server records task runs from their events a moment later, so a status read right after a run
# ended could miss its step; the label cannot be missed.
STARTED_LABEL = "mlyard.started."

# -- MLflow run tags -------------------------------------------------------------------------------------
TAG_KIND = "mlyard.kind"  # training, trial, tuning, batch_inference, evaluation, ...
TAG_TRAINING_ID = "mlyard.training_id"
TAG_TRAINING_NAME = "mlyard.training_name"
TAG_TUNING_ID = "mlyard.tuning_id"
TAG_BATCH_ID = "mlyard.batch_id"
TAG_BATCH_RUN_ID = "mlyard.batch_run_id"
TAG_EVALUATION_ID = "mlyard.evaluation_id"
TAG_EVALUATION_IDS = "mlyard.evaluation_ids"
TAG_PREFECT_URL = "mlyard.prefect_url"  # the Prefect flow run that made this MLflow run
TAG_STATUS_REASON = "mlyard.status_reason"
TAG_ENTRY_POINT = "mlyard.entry_point"
TAG_SOURCE_URI = "mlyard.source_uri"
TAG_MODEL = "mlyard.model"
TAG_MODEL_URI = "mlyard.model_uri"
TAG_ORIGIN_URI = "mlyard.origin_uri"
TAG_TASK = "mlyard.task"
TAG_TRIAL_NUMBER = "mlyard.trial_number"
TAG_TRIAL_STATE = "mlyard.trial_state"
TAG_BEST_RUN_ID = "mlyard.best_run_id"
TAG_BEST_TRIAL = "mlyard.best_trial"
TAG_STATUS = "mlyard.status"
TAG_REASON = "mlyard.reason"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own: which view its UI opens an experiment in
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: nests a trial under its tuning
TAG_NOTE = "mlflow.note.content"  # MLflow's own: the run's description

# -- MLflow model version tags --------------------------------------------------------------------------
TAG_FRAMEWORK = "mlyard.framework"
TAG_FRAMEWORK_VERSION = "mlyard.framework_version"
TAG_PARAMETERS = "mlyard.parameters"
TAG_LINEAGE = "mlyard.lineage"
TAG_PROJECT = "mlyard.project"  # a registered model's project (core/access.py)
TAG_SIGNATURE = "mlyard.signature"
TAG_RUNTIME = "mlyard.runtime"  # how serving and batch run a version (compiled at registration, or why not)


# -- a model version's parameters at the model server: arguments under the names as given, environment
# variables in SCREAMING_SNAKE_CASE (`maxLength`, `max-length` and `max_length` all become MAX_LENGTH) ----
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b|_)|[A-Z]?[a-z]+|[A-Z]+|\d+")


def param_env_name(name: str) -> str:
    """`maxLength` -> MAX_LENGTH, `batch-size` -> BATCH_SIZE, `HTTPTimeout` -> HTTP_TIMEOUT."""
    return "_".join(w.upper() for w in _WORD.findall(name))


def param_environ(parameters: Mapping[str, object]) -> dict[str, str]:
    """The parameters as environment variables."""
    return {param_env_name(k): str(v) for k, v in parameters.items() if param_env_name(k)}


def param_arguments(parameters: Mapping[str, object]) -> list[str]:
    """The parameters as `--name value` arguments, names as given."""
    out: list[str] = []
    for k, v in parameters.items():
        out += [f"--{k}", str(v)]
    return out

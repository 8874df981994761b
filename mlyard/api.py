"""The runs the CLI, the SDK (mlyard/sdk.py: `mlyard.train(...)`) and the Prefect UI start, on the running
platform: `run(action, spec, submit=...)` the flow's result here, or a Submitted run queued on a pool.

Each call 1. connects to the platform (`mlyard up`'s stack or MLYARD_PREFECT_API_URL; never a
hidden server), 2. loads the spec (a spec object, a mapping, or a YAML file) and merges `sets`,
3. makes relative paths absolute against the current directory, 4. checks the spec against the
world (entry point, datasets, inputs, model and alias exist), and only then 5. runs the flow in this
process, or queues it on a work pool (`submit=True`). A run started here is the same Prefect flow
run, MLflow run and mlyard record as one started from the CLI or the UI.

With a team member's API key (MLYARD_API_KEY, `mlyard login`) every call acts as that user in their
project (MLYARD_PROJECT) through the platform's mlyard API: work is always queued, never run here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from mlyard.core.connection import connect
from mlyard.core.errors import SpecError
from mlyard.core.names import FLOW_BATCH, FLOW_EVALUATE, FLOW_TRAIN, FLOW_TUNE, deployment
from mlyard.core.settings import Settings
from mlyard.core.specs import (
    BatchInferenceSpec,
    EvaluationSpec,
    TrainingSpec,
    TuningSpec,
    is_registry_ref,
    load_spec,
    load_spec_file,
    with_overrides,
)
from mlyard.submit import final_state, outcome, run_or_queue

Pool = Literal["local", "gpu"]


@dataclass(frozen=True)
class Action:
    noun: str
    spec: type
    flow: str  # module:function of the flow
    deployment: str  # deployment name, without the pool
    fail: str  # the status of a failed run


TRAINING = Action("training", TrainingSpec, "mlyard.flows.training:train", FLOW_TRAIN, "FAIL TRAIN")
TUNING = Action("tuning", TuningSpec, "mlyard.flows.tuning:tune", FLOW_TUNE, "FAIL HYPERPARAMETER TUNING")
BATCH = Action("batch inference", BatchInferenceSpec, "mlyard.flows.batch_inference:batch_infer", FLOW_BATCH,
               "FAIL BATCH INFERENCE")
EVALUATION = Action("evaluation", EvaluationSpec, "mlyard.flows.evaluation:evaluate", FLOW_EVALUATE, "FAIL MODEL EVALUATION")


@dataclass(frozen=True)
class Submitted:
    """A run queued on a work pool: follow it with `mlyard <kind>s show ID` or in the Prefect UI."""

    id: str
    flow_run: str
    deployment: str
    pool: str
    status: str = "CREATE REQUESTED"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def wait(self, timeout: float | None = None, poll_seconds: float = 0.5) -> Any:
        """Wait for the run to end; what a direct call returns (a TrainingResult, ...), or what it raises
        (RunFailed, TrainingStopped). The flows keep their result in Prefect's result storage, which a
        worker on this machine shares (on a Kubernetes pool, follow it with `show ID` instead)."""
        action = next(a for a in (TRAINING, TUNING, BATCH, EVALUATION) if self.deployment.startswith(f"{a.deployment}/"))
        if Settings().api_key is not None:  # a member reaches Prefect through the platform's API alone
            return _shown_when_done(action, self.id, timeout, poll_seconds)
        state = final_state(self.id, timeout, poll_seconds, f"{self.flow_run} ({self.id})",
                            f"follow the {action.noun} in the Prefect UI or with its `show` command")
        return outcome(state, action.fail)


def _shown_when_done(action: Action, run_id: str, timeout: float | None, poll_seconds: float) -> dict[str, Any]:
    """A member's queued run, followed through the mlyard API: what its `show` says once it ended (a dict,
    not the flow's result object); RunFailed with why when it failed, TrainingStopped when stopped."""
    import time

    from mlyard.core.errors import RunFailed, TrainingStopped
    from mlyard.warm_api import post, signed_in_api

    def ask(query: str, **arguments: Any) -> dict[str, Any]:
        return post(signed_in_api(Settings()), f"/v1/queries/{query}", arguments)

    query = {TRAINING: "trainings_show", TUNING: "tunings_show"}.get(action)
    if query is None:
        raise SpecError("wait", action.noun, "a training or a tuning (the runs a project member starts)")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        shown = ask(query, **{f"{action.noun}_id": run_id})
        status = str(shown["status"])
        if status.startswith("COMPLETE") and status != "COMPLETE IN PROGRESS":
            return shown
        if status == "STOPPED":
            raise TrainingStopped(shown.get("cause") or "stopped")
        if status == action.fail or status == "CREATE FAILED":
            raise RunFailed(status, run_id, shown.get("cause"))
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{action.noun} {run_id} is still {status} after {timeout:g} s")
        time.sleep(poll_seconds)


def load(model: type, spec: Any, sets: dict[str, Any] | None = None) -> Any:
    """A spec of `model` from a spec object, a mapping or a YAML file path, with `sets` merged in."""
    loaded: Any
    if isinstance(spec, model):
        loaded = spec
    elif isinstance(spec, (str, Path)):
        loaded = load_spec_file(model, spec)
    else:
        loaded = load_spec(model, spec)
    return with_overrides(loaded, sets or {}, source="--set")


def check(action: Action, spec, settings: Settings) -> str | None:
    """Refuse a spec whose inputs, entry point, model or alias do not exist, before any run is made.
    MLflow (slow to import) is touched only to look up a template, and a registered model only when
    no warm mlyard API runs (mlyard/queries.py). Returns the framework of a batch inference's or an
    evaluation's model when it is known (registered, or an MLflow model directory)."""
    from mlyard.tasks import checks
    from mlyard.tasks.storage import Storage

    storage = Storage(settings)
    if action is TRAINING:
        checks.training_inputs(storage, spec)
    elif action is TUNING:
        if spec.training is not None:
            checks.training_inputs(storage, spec.training)
        else:
            from mlyard.flows.platform import Platform
            from mlyard.flows.tuning import resolve_training

            checks.training_inputs(storage, resolve_training(Platform(settings), spec))
    else:
        checks.input_location(storage, spec.input_uri)
        checks.output_outside_input(spec.input_uri, spec.output_uri)
        checks.output_free(spec.output_uri)
        if is_registry_ref(spec.model) or spec.model.startswith("models:/"):
            from mlyard.warm_api import answer

            found = answer("model_reference", model_reference, model=spec.model)  # the warm mlyard API when it runs
            # compiled at registration: it runs on onnxruntime, scikit-learn is never loaded
            return "onnx" if str(found.get("runtime", "")).startswith("onnxruntime") else found["framework"]
        checks.model_reference(storage, None, spec.model)
        from mlyard.tasks.models import local_framework

        framework = local_framework(spec.model)
        if framework == "sklearn":
            from mlyard.tasks import compiled

            return "onnx" if compiled.is_cached(Path(spec.model)) else framework
        return framework
    return None


def run(action: Action, spec: Any, *, sets: dict[str, Any] | None = None, submit: bool = False,
        pool: Pool = "local", base: Path | None = None, echo: Callable[[str], None] = lambda line: None):
    """Check and run `spec` here (returns the flow's result) or queue it on `pool` (returns Submitted). Queued
    on a Kubernetes pool, its inputs given as local paths are uploaded first (mlyard/uploads.py; `echo`
    says what is sent)."""
    if pool not in ("local", "gpu"):
        raise SpecError("pool", pool, "local or gpu")
    member = Settings().api_key is not None  # a team member's key: the platform runs it, as them (mlyard/teams.py)
    settings = Settings() if member else connect()
    submit = submit or member
    spec = load(action.spec, spec, sets).resolved(base or Path.cwd())
    # a member's inputs are uploaded from here (a missing one said so) or are the project's, which the
    # platform reads; the catalog's images and this machine's GPU slots are the platform's to check too
    framework = None if member else check(action, spec, settings)
    if not member:
        check_image(spec, settings)
    if pool == "local" and not member:
        check_gpu_slots(spec, settings)
    if submit and pool == "gpu":
        check_cluster(spec)
    area = None
    if member:  # their role and their project's quota, before anything is uploaded; where its storage is
        from mlyard.warm_api import post, signed_in_api

        area = post(signed_in_api(settings), "/v1/queries/run_check", {"flow": action.deployment,
                                                                         "spec": spec.model_dump(mode="json")})["storage"]
    if (submit and pool == "gpu") or member:  # local inputs uploaded where the run reads them (or refused)
        from mlyard.uploads import for_cluster

        spec = for_cluster(spec, settings, echo, area)
    if not submit and framework == "sklearn":
        from mlyard.tasks.models import prepare_sklearn_loader

        prepare_sklearn_loader()  # before Prefect and MLflow are imported: see its docstring
    ref = deployment(action.deployment, pool)
    done = run_or_queue(ref, action.flow, spec, queue=submit, fail=action.fail,  # job variables reach
                        job_variables=spec.job_variables() if hasattr(spec, "job_variables") else None)  # Kubernetes pools only
    return Submitted(done["id"], done["name"], ref, pool) if submit else done


def check_image(spec: Any, settings: Settings) -> None:
    """Refuse an image that is neither a registered one nor an address (or an address in a private
    registry that is not registered with its account), before any run is made."""
    image = getattr(spec, "image", None) or getattr(getattr(spec, "training", None), "image", None)
    if image:
        from mlyard.tasks.registry_secrets import images

        field = "image" if getattr(spec, "image", None) else "training.image"
        images(settings).resolve(image, field)


def _resources(spec: Any) -> tuple[Any, str]:
    """A spec's resources and their field: a training's, or a tuning's training's (None for others)."""
    if hasattr(spec, "resources"):
        return spec.resources, "resources"
    if getattr(spec, "training", None) is not None:
        return spec.training.resources, "training.resources"
    return None, ""


def check_gpu_slots(spec: Any, settings: Settings) -> None:
    """Refuse more GPUs than this machine has slots for (settings gpu_slots or nvidia-smi)."""
    from mlyard.tasks import gpu_slots

    resources, field = _resources(spec)
    if resources is not None and resources.gpu_count:
        training = spec.training if getattr(spec, "training", None) is not None else spec
        gpu_slots.check(f"{field}.gpu_count", resources.gpu_count, settings, getattr(training, "nodes", 1))


def check_cluster(spec: Any) -> None:
    """Refuse GPUs that no node of the cluster (the kubeconfig's, when there is one) can hold."""
    from mlyard.tasks import cluster

    resources, field = _resources(spec)
    if resources is None or resources.gpu_count == 0:
        return
    try:
        dyn = cluster.dynamic_client()
        capacity = cluster.gpu_capacity(dyn)
    except Exception:  # noqa: BLE001 - no cluster here (StackError), or it does not answer: the check is
        return  # the kubeconfig holder's extra; the pool's worker sees the Job wait either way
    cluster.check_gpus(field, resources.gpu_count, resources.gpu_type, capacity)


def train(spec: TrainingSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, submit: bool = False,
          pool: Pool = "local"):
    """Run a training (a TrainingResult) or queue it (`submit=True`: a Submitted)."""
    return run(TRAINING, spec, sets=sets, submit=submit, pool=pool)


def tune(spec: TuningSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, submit: bool = False,
         pool: Pool = "local"):
    """Run a hyperparameter tuning (a TuningResult) or queue it (`submit=True`)."""
    return run(TUNING, spec, sets=sets, submit=submit, pool=pool)


def batch_infer(spec: BatchInferenceSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
                submit: bool = False, pool: Pool = "local"):
    """Run a batch inference (a BatchInferenceResult) or queue it (`submit=True`)."""
    return run(BATCH, spec, sets=sets, submit=submit, pool=pool)


def evaluate(spec: EvaluationSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, submit: bool = False,
             pool: Pool = "local"):
    """Run a model evaluation (an EvaluationResult) or queue it (`submit=True`)."""
    return run(EVALUATION, spec, sets=sets, submit=submit, pool=pool)


def model_reference(model: str) -> dict[str, Any]:
    """The `model` field of a batch inference or an evaluation as a pinned URI (an alias resolved to
    its version) and the registered version's framework; SpecError, naming the field, when it does
    not exist. The query of the same name (mlyard/queries.py) answers with it."""
    from mlyard.core.specs import is_registry_ref
    from mlyard.tasks import checks
    from mlyard.warm_api import platform

    p = platform()
    registered = is_registry_ref(model) or model.startswith("models:/")
    uri = checks.model_reference(p.storage, p.models if registered else None, model)
    version = p.models.resolve(uri.removeprefix("models:/")) if registered else None
    return {"uri": uri, "framework": version.framework if version else None,
            "parameters": version.parameters if version else {}, "runtime": version.runtime if version else "",
            "source": version.source if version else None}

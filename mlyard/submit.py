"""Running work, here or queued: the one place that decides which (`run_or_queue`), runs a flow in
this process (`run_here`), or makes a flow run of a deployment, the run that Run in the Prefect UI
makes (`submit`), and follows it to its end (`final_state`).

The commands that queue work (`mlyard rags create|sync`, `--submit`, endpoint changes, pipeline runs)
ask the stack's warm mlyard API (mlyard/service.py) to make the run: Prefect's client is imported and
connected there already, which saves a fresh command 2-3 s of importing Prefect. Without that API (a
production Prefect server, or the API stopped) the run is made here. Either way Prefect's own
`run_deployment` makes it, so it is the same flow run with the same parameters, tags and job variables.

    from mlyard.submit import submit
    submit("rag-sync/local", {"spec": {"rag": "handbook"}}, tags=["mlyard.rag:handbook"])
    # {"id": "6f1c...", "name": "handbook"}
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import RUN_FAILURES, MlyardError, RunFailed, TrainingStopped


def run_or_queue(deployment: str, flow: str, spec: Any, *, queue: bool, fail: str,
                 job_variables: dict[str, Any] | None = None, tags: list[str] | None = None) -> Any:
    """Run the flow `module:function` on `spec` here (its result, or RunFailed(`fail`) with why), or with
    `queue` make a flow run of `deployment` ("FLOW/POOL") for its work pool: {"id", "name"}."""
    from core.settings import Settings

    if queue or Settings().api_key is not None:  # a team member's work runs on the platform's pool, as them
        return submit(deployment, {"spec": spec.model_dump(mode="json")}, tags=tags, job_variables=job_variables)
    return run_here(flow, spec, fail)


def submit(deployment: str, parameters: dict[str, Any], *, tags: list[str] | None = None,
           job_variables: dict[str, Any] | None = None) -> dict[str, str]:
    """A new flow run of `deployment` ("FLOW/DEPLOYMENT"), queued for its work pool: {"id", "name"}.
    `parameters` must be JSON (a spec's `model_dump(mode="json")`)."""
    from core.settings import Settings
    from mlyard import warm_api

    body: dict[str, Any] = {"deployment": deployment, "parameters": parameters, "tags": tags or [],
            "job_variables": job_variables or {}}
    settings = Settings()
    if settings.api_key is not None:  # a team member: the platform makes the run, as them, or nobody does
        return warm_api.post(warm_api.signed_in_api(settings), "/v1/runs", body)
    url = warm_api.api_url()
    if url is not None:
        try:
            return warm_api.post(url, "/v1/runs", body)
        except warm_api.Unreachable:
            pass  # stopped since `up`: the same run, made here
    return create_run(**body)


def create_run(deployment: str, parameters: dict[str, Any], tags: list[str],
               job_variables: dict[str, Any], name: str | None = None, scheduled_time: Any = None) -> dict[str, str]:
    """Make the flow run in this process (the mlyard API runs this too), with the platform's one helper, in
    the caller's project: its tag set here (never taken from the caller), their role there an editor's,
    and recorded in the audit trail."""
    from core.access import PROJECT_TAG, USER_TAG, current, run_tags
    from mlyard.teams import acting_editor, acting_or_none, record
    from tasks.orchestration import submit as make_run

    actor = current()
    what = f"deployment {deployment}"
    try:
        project = acting_editor("starting work")
        if not actor.admin:  # the pod's job variables are the spec's own, never what a member's request says
            parameters, job_variables = member_parameters(deployment, parameters, project)
    except MlyardError as exc:
        record(actor, "run.start", what, "refused", acting_or_none(actor), f"{type(exc).__name__}: {exc}")
        raise
    tags = [t for t in tags if not t.startswith((PROJECT_TAG, USER_TAG))] + run_tags(project, actor.name)
    try:
        fr: Any = make_run(deployment, parameters, job_variables, tags, name=name, scheduled_time=scheduled_time)
    except MlyardError as exc:
        record(actor, "run.start", what, "refused" if exc.http_status < 500 else "failed", project, str(exc))
        raise
    record(actor, "run.start", f"{what} run {fr.id}", "ok", project)
    return {"id": str(fr.id), "name": fr.name}


def member_parameters(deployment: str, parameters: dict[str, Any], project: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A project member's run, checked before it is made: a training, a tuning, a batch inference or an
    evaluation (the kinds whose every input is checked here; the rest are an admin's for now), its spec
    valid, every location in it under the project's storage (mlyard/project_storage.py), a template or a
    registered model it names one of the project's: (its parameters, its job variables as its spec makes
    them)."""
    from core.access import current
    from core.connection import connect
    from core.errors import Forbidden
    from core.specs import BatchInferenceSpec, EvaluationSpec, TuningSpec, load_spec
    from mlyard.project_storage import confine
    from mlyard.teams import check_quota

    flow = deployment.split("/", 1)[0]
    model = member_spec(flow)
    if model is None:
        raise Forbidden(current().name, None, f"starting a {flow} run (not yet open to project members)", "admin", None)
    spec = project_experiments(load_spec(model, parameters.get("spec"), source="spec"), project)
    settings = connect()
    confine(spec, project, settings)
    check_quota(spec, project)
    if isinstance(spec, (BatchInferenceSpec, EvaluationSpec)):
        model_of_project(spec.model, project)
    endpoint_of_member(spec, project)
    pipeline_of_project(spec, project, settings)
    experiment_of_project(spec, project)
    image_of_project(spec, project)
    if isinstance(spec, TuningSpec) and spec.template is not None:
        from core.errors import TemplateNotFound
        from mlyard.teams import catalog
        from registry.templates import Templates

        template = Templates(catalog(settings.catalog_db_url)).get(spec.template)
        if template.project != project:  # another project's does not exist for this run
            raise TemplateNotFound(spec.template)
        confine(template.spec, project, settings)
    made = getattr(spec, "job_variables", None)
    return {**parameters, "spec": spec.model_dump(mode="json")}, (made() if callable(made) else {})


def member_flows() -> list[str]:
    """The flows whose runs a project member may start (their deployments are the ones the Prefect UI's
    front door shows them)."""
    return list(_member_specs())


def member_spec(flow: str) -> Any:
    """The spec model of the runs a project member may start (None: an admin's alone, for now)."""
    return _member_specs().get(flow)


def _member_specs() -> dict[str, Any]:
    from core import names
    from core.specs import BatchInferenceSpec, EvaluationSpec, TrainingSpec, TuningSpec
    from core.specs.endpoint import DeletionSpec, EndpointSpec, PromotionSpec, StageChangeSpec
    from core.specs.pipeline import PipelineRunSpec
    from core.specs.promotion import PromotionControlSpec, RolloutSpec, TrafficSpec

    return {names.FLOW_TRAIN: TrainingSpec, names.FLOW_TUNE: TuningSpec, names.FLOW_BATCH: BatchInferenceSpec,
            names.FLOW_EVALUATE: EvaluationSpec, names.FLOW_DEPLOY_ENDPOINT: EndpointSpec,
            names.FLOW_DELETE_ENDPOINT: DeletionSpec, names.FLOW_ADD_STAGE: StageChangeSpec,
            names.FLOW_PROMOTE_STAGE: PromotionSpec, "retry-endpoint-stage": PromotionSpec,
            names.FLOW_SET_TRAFFIC: TrafficSpec, names.FLOW_ROLLOUT: RolloutSpec,
            names.FLOW_CONTROL_PROMOTION: PromotionControlSpec, names.FLOW_PIPELINE_RUN: PipelineRunSpec}


def run_check(flow: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a member's command asks before it uploads anything: may they start a `flow` run of `spec` in the
    project they act in (their role, its quota, a registered model it names)? {"project", "storage"} (where
    the project's runs read and write); the refusal otherwise."""
    from core.connection import connect
    from core.specs import BatchInferenceSpec, EvaluationSpec, load_spec
    from core.uris import project_prefix
    from mlyard.teams import acting_editor, check_quota

    project = acting_editor("starting work")
    model = member_spec(flow)
    if model is not None:
        checked: Any = load_spec(model, spec, source="spec")  # type: ignore[arg-type]
        check_quota(checked, project)
        if isinstance(checked, (BatchInferenceSpec, EvaluationSpec)):
            model_of_project(checked.model, project)
        endpoint_of_member(checked, project)
    return {"project": project, "storage": f"{project_prefix(connect(), project)}/"}


def endpoint_of_member(spec: Any, project: str) -> None:
    """A member's endpoint deploy, or new stage, serves their project's models alone; a change of an endpoint
    (a stage, its traffic, a promotion) is of an endpoint of their project, by an editor, and a delete by its
    owner (the endpoint of another project does not exist for them)."""
    from core.specs.endpoint import DeletionSpec, EndpointSpec, PromotionSpec, StageChangeSpec
    from core.specs.promotion import PromotionControlSpec, RolloutSpec, TrafficSpec
    from mlyard.teams import endpoint_in_reach

    if isinstance(spec, (EndpointSpec, StageChangeSpec)):
        if isinstance(spec, StageChangeSpec):
            from core.connection import connect
            from mlyard.teams import catalog
            from mlyard.warm_api import platform
            from registry.endpoints import Endpoints
            from tasks.endpoints import check_stage

            endpoint_in_reach(spec.endpoint, "editor", "adding a stage")
            check_stage.fn(Endpoints(catalog(connect().catalog_db_url)), platform().models, spec.stage, "stage",
                           endpoint=spec.endpoint)  # as a command on the platform's own machine checks it
        for resource in spec.stage.resources:
            model_of_project(resource.model, project)
    elif isinstance(spec, (PromotionSpec, TrafficSpec, RolloutSpec, PromotionControlSpec)):  # traffic, promotions
        endpoint_in_reach(spec.endpoint, "editor", "changing an endpoint's stages or traffic")
    elif isinstance(spec, DeletionSpec):
        from core.connection import connect
        from mlyard.teams import catalog
        from registry.endpoints import Endpoints

        endpoint_in_reach(spec.endpoint, "owner", "deleting an endpoint or a stage")
        Endpoints(catalog(connect().catalog_db_url)).check_delete(spec.endpoint, spec.stage)  # the seeds' rules


def pipeline_of_project(spec: Any, project: str, settings: Any) -> None:
    """A member's pipeline run runs an uploaded pipeline of their project (another project's does not exist
    for it), checked as a run on the platform's own machine is: its parameters, what its steps need."""
    from core.specs.pipeline import PipelineRunSpec

    if isinstance(spec, PipelineRunSpec):
        from core.errors import PipelineNotFound
        from mlyard.teams import catalog
        from registry.pipelines import Pipelines
        from tasks.pipelines import check_run

        store = Pipelines(catalog(settings.catalog_db_url))
        if store.get(spec.pipeline).project != project:
            raise PipelineNotFound(spec.pipeline)
        check_run(store, spec, local=not settings.kfp_host)


def image_of_project(spec: Any, project: str) -> None:
    """A member's run, template or notebook names an image of their project, or a public address: another
    project's image does not exist for it, and an address in a registry with accounts must be one of the
    project's images (whose pods pull with the project's own login, never another's)."""
    image = getattr(spec, "image", None) or getattr(getattr(spec, "training", None), "image", None)
    if image:
        from core.connection import connect
        from tasks.registry_secrets import images

        images(connect()).resolve(image, "image" if getattr(spec, "image", None) else "training.image", project)


def model_of_project(model: str, project: str) -> None:
    """A member's batch inference or evaluation reads a registered model of their project (`name@alias`,
    `name/version`, `models:/...`) or a folder of its storage (checked with the other locations); never an
    MLflow run's files by id (`runs:/...`), which no project owns."""
    import re

    from core.errors import ModelNotFound, SpecError
    from core.specs import is_mlflow_uri, is_registry_ref
    from mlyard.warm_api import platform

    if model.startswith("runs:/"):
        raise SpecError("model", model, "a registered model of your project (name@alias, name/version) or a folder "
                        "of its storage: a run's files by id are not a project's")
    if not (is_registry_ref(model) or is_mlflow_uri(model)):
        return
    name = re.split(r"[@/]", model.removeprefix("models:/"), maxsplit=1)[0]
    if platform().models.project_of(name) != project:  # another project's model does not exist for this run
        raise ModelNotFound(name)


def project_experiments(spec: Any, project: str) -> Any:
    """`spec` with each experiment left at its kind's default ("default", "evaluations", ...) made the
    project's own ("team-a/default"): an experiment belongs to one project, and the defaults are
    `default`'s. An experiment named in the spec is kept (experiment_of_project checks it)."""
    from core.access import DEFAULT_PROJECT
    from core.specs import TuningSpec

    if project == DEFAULT_PROJECT:
        return spec
    updates: dict[str, Any] = {}
    field = type(spec).model_fields.get("experiment")
    if field is not None and field.default and spec.experiment == field.default:
        updates["experiment"] = f"{project}/{field.default}"
    if isinstance(spec, TuningSpec):
        if spec.training is not None:
            updates["training"] = project_experiments(spec.training, project)
        if spec.experiment is None and (spec.training is None or updates["training"].experiment.startswith(f"{project}/")):
            updates["experiment"] = f"{project}/default"  # a template's or the training's default: the project's
    return spec.model_copy(update=updates) if updates else spec


def experiment_of_project(spec: Any, project: str) -> None:
    """A member's run logs to an experiment of their project, or to a new one (it becomes theirs): another
    project's experiment is refused before the run is made."""
    from mlyard.warm_api import platform

    names = [getattr(spec, "experiment", None), getattr(getattr(spec, "training", None), "experiment", None)]
    for name in filter(None, names):
        owner = platform().tracking.experiment_project(name)
        if owner is not None:
            platform().tracking.check_project(name, owner, project)


def final_state(run_id: str, timeout: float | None, poll_seconds: float = 0.5, what: str = "", then: str = "") -> Any:
    """The Prefect state a queued run ended in, waited for; TimeoutError past `timeout` seconds, naming
    `what` and saying `then` (where to follow it)."""
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.is_final():
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what or run_id} is still {state.type.value if state else 'new'} after "
                                   f"{timeout:g} s" + (f"; {then}" if then else ""))
            time.sleep(poll_seconds)


CONSOLE_TRACEBACKS = {"on": True}  # the CLI turns them off (its --debug back on): its error line says why


def _console_without_tracebacks() -> None:
    """Prefect's console log prints a failed task's and flow's traceback of mlyard's and Prefect's own
    frames (two, about 90 lines) before the command's one-line error: keep the lines, drop the
    tracebacks, on the console only (the run's log in the Prefect UI keeps them)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    class NoTraceback(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None) -> None:
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info = record.exc_text = record.stack_info = None  # this handler's view only
            try:
                return self.inner.format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, NoTraceback):
                handler.setFormatter(NoTraceback(handler.formatter))


def run_here(flow: str, spec: Any, fail: str) -> Any:
    """Run the flow `module:function` on `spec` in this process and return its result. Bad input the
    flow itself found raises the same one-line error as a check before the run would; a run that
    failed raises RunFailed(`fail`, with why); a cancelled one TrainingStopped."""
    from prefect import tags

    from core.access import current, run_tags
    from mlyard.teams import acting_editor, check_quota
    from tasks.orchestration import prompt_flow_ends

    module, name = flow.split(":")
    project = acting_editor("starting work")
    check_quota(spec, project)
    function = getattr(importlib.import_module(module), name)
    if not CONSOLE_TRACEBACKS["on"]:
        _console_without_tracebacks()
    prompt_flow_ends()  # the run ends when its work does, not up to 1 s later
    with tags(*run_tags(project, current().name)):  # its project (mlyard/runs.py lists by it) and who started it
        return outcome(function(spec, return_state=True), fail)


def outcome(state: Any, fail: str) -> Any:
    """A run's final state as a call's outcome: its result, or the error it ended with."""
    if state.is_completed():
        return state.result()
    if state.is_cancelled():
        raise TrainingStopped(state.message or "stopped")
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, MlyardError) and not isinstance(exc, RUN_FAILURES):
        raise exc
    raise RunFailed(fail, None, exc if isinstance(exc, BaseException) else state.message) from (
        exc if isinstance(exc, BaseException) else None)

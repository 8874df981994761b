"""What a team member may run, checked before the platform makes the run as them (mlyard/submit.py
`create_run`, the Prefect door's Run button, a member's schedule):

- `member_parameters`: the run's spec valid, every location in it under the project's storage
  (mlyard/project_storage.py), the templates, models, pipelines, endpoints, images and experiments it names
  the project's own, its quota able to hold it; its parameters and job variables as its spec makes them;
- `run_check`: what a member's command asks before it uploads anything (their role, the quota, the
  models), with where the project's runs read and write;
- `member_flows`: the flows whose runs a member may start (their deployments are the ones the door shows).
"""

from __future__ import annotations

from typing import Any


def member_parameters(deployment: str, parameters: dict[str, Any], project: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A project member's run, checked before it is made (the kinds of `_member_specs`, whose every input is
    checked here; the rest are an admin's): its spec valid, every location in it under the project's storage
    (mlyard/project_storage.py), a template, model, pipeline or endpoint it names one of the project's: (its
    parameters, its job variables as its spec makes them)."""
    from mlyard.core.access import current
    from mlyard.core.connection import connect
    from mlyard.core.errors import Forbidden
    from mlyard.core.specs import BatchInferenceSpec, EvaluationSpec, TuningSpec, load_spec
    from mlyard.project_storage import confine
    from mlyard.teams import check_quota

    flow = deployment.split("/", 1)[0]
    model = member_spec(flow)
    if model is None:
        raise Forbidden(current().name, None, f"starting a {flow} run (not yet open to project members)", "admin", None)
    spec = project_experiments(load_spec(model, parameters.get("spec"), source="spec"), project)
    settings = connect()
    confine(spec, project, settings)
    spec = code_of_member(spec, project, settings)  # its folder read once it is known to be the project's
    check_quota(spec, project)
    if isinstance(spec, (BatchInferenceSpec, EvaluationSpec)):
        model_of_project(spec.model, project)
    endpoint_of_member(spec, project)
    pipeline_of_project(spec, project, settings)
    experiment_of_project(spec, project)
    image_of_project(spec, project)
    if isinstance(spec, TuningSpec) and spec.template is not None:
        from mlyard.core.errors import TemplateNotFound
        from mlyard.registry.templates import Templates
        from mlyard.teams import catalog

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
    from mlyard.core import names
    from mlyard.core.specs import BatchInferenceSpec, EvaluationSpec, TrainingSpec, TuningSpec
    from mlyard.core.specs.endpoint import DeletionSpec, EndpointSpec, PromotionSpec, StageChangeSpec, SyncSpec
    from mlyard.core.specs.pipeline import PipelineRunSpec
    from mlyard.core.specs.promotion import PromotionControlSpec, RolloutSpec, TrafficSpec

    return {names.FLOW_TRAIN: TrainingSpec, names.FLOW_TUNE: TuningSpec, names.FLOW_BATCH: BatchInferenceSpec,
            names.FLOW_EVALUATE: EvaluationSpec, names.FLOW_DEPLOY_ENDPOINT: EndpointSpec,
            names.FLOW_DELETE_ENDPOINT: DeletionSpec, names.FLOW_ADD_STAGE: StageChangeSpec,
            names.FLOW_PROMOTE_STAGE: PromotionSpec, "retry-endpoint-stage": PromotionSpec,
            names.FLOW_SET_TRAFFIC: TrafficSpec, names.FLOW_ROLLOUT: RolloutSpec,
            names.FLOW_CONTROL_PROMOTION: PromotionControlSpec, names.FLOW_PIPELINE_RUN: PipelineRunSpec,
            names.FLOW_SYNC_ENDPOINT: SyncSpec}


def run_check(flow: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a member's command asks before it uploads anything: may they start a `flow` run of `spec` in the
    project they act in (their role, its quota, a registered model it names)? {"project", "storage"} (where
    the project's runs read and write); the refusal otherwise."""
    from mlyard.core.connection import connect, gateway_url
    from mlyard.core.specs import BatchInferenceSpec, EvaluationSpec, load_spec
    from mlyard.core.uris import project_prefix
    from mlyard.teams import acting_editor, check_quota

    project = acting_editor("starting work")
    model = member_spec(flow)
    if model is not None:
        checked: Any = load_spec(model, spec, source="spec")  # type: ignore[arg-type]
        check_quota(checked, project)
        if isinstance(checked, (BatchInferenceSpec, EvaluationSpec)):
            model_of_project(checked.model, project)
        endpoint_of_member(checked, project)
    settings = connect()
    return {"project": project, "storage": f"{project_prefix(settings, project)}/", "gateway": gateway_url(settings)}


def endpoint_of_member(spec: Any, project: str) -> None:
    """A member's endpoint deploy, or new stage, serves their project's models alone; a change of an endpoint
    (a stage, its traffic, a promotion) is of an endpoint of their project, by an editor, and a delete by its
    owner (the endpoint of another project does not exist for them)."""
    from mlyard.core.specs.endpoint import DeletionSpec, EndpointSpec, PromotionSpec, StageChangeSpec, SyncSpec
    from mlyard.core.specs.promotion import PromotionControlSpec, RolloutSpec, TrafficSpec
    from mlyard.teams import endpoint_in_reach

    if isinstance(spec, (EndpointSpec, StageChangeSpec)):
        if isinstance(spec, StageChangeSpec):
            from mlyard.core.connection import connect
            from mlyard.registry.endpoints import Endpoints
            from mlyard.tasks.endpoints import check_stage
            from mlyard.teams import catalog
            from mlyard.warm_api import platform

            endpoint_in_reach(spec.endpoint, "editor", "adding a stage")
            check_stage.fn(Endpoints(catalog(connect().catalog_db_url)), platform().models, spec.stage, "stage",
                           endpoint=spec.endpoint)  # as a command on the platform's own machine checks it
        for resource in spec.stage.resources:
            model_of_project(resource.model, project)
    elif isinstance(spec, (PromotionSpec, TrafficSpec, RolloutSpec, PromotionControlSpec)):  # traffic, promotions
        endpoint_in_reach(spec.endpoint, "editor", "changing an endpoint's stages or traffic")
    elif isinstance(spec, SyncSpec):
        push_of_member(spec, project)
    elif isinstance(spec, DeletionSpec):
        from mlyard.core.connection import connect
        from mlyard.registry.endpoints import Endpoints
        from mlyard.teams import catalog

        endpoint_in_reach(spec.endpoint, "owner", "deleting an endpoint or a stage")
        Endpoints(catalog(connect().catalog_db_url)).check_delete(spec.endpoint, spec.stage)  # the seeds' rules


def push_of_member(spec: Any, project: str) -> None:
    """A member's push goes to an endpoint of their project (an editor's) or a new one, as a version of their
    project's model or a new one: another project's endpoint name is taken ("already exists"), another
    project's model does not exist for it."""
    from mlyard.core.connection import connect
    from mlyard.core.errors import AlreadyExists, EndpointNotFound, ModelNotFound
    from mlyard.registry.endpoints import Endpoints
    from mlyard.teams import catalog, endpoint_in_reach
    from mlyard.warm_api import platform

    try:
        endpoint_in_reach(spec.endpoint, "editor", "pushing code to an endpoint")
    except EndpointNotFound:
        if spec.endpoint in {e["name"] for e in Endpoints(catalog(connect().catalog_db_url)).all()}:
            raise AlreadyExists("endpoint", spec.endpoint) from None
    name = spec.model or spec.endpoint
    try:
        owner = platform().models.project_of(name)
    except ModelNotFound:
        owner = project  # a model the push makes: theirs
    if owner != project:
        raise ModelNotFound(name)


def pipeline_of_project(spec: Any, project: str, settings: Any) -> None:
    """A member's pipeline run runs an uploaded pipeline of their project (another project's does not exist
    for it), checked as a run on the platform's own machine is: its parameters, what its steps need."""
    from mlyard.core.specs.pipeline import PipelineRunSpec

    if isinstance(spec, PipelineRunSpec):
        from mlyard.core.errors import PipelineNotFound
        from mlyard.registry.pipelines import Pipelines
        from mlyard.tasks.pipelines import check_run
        from mlyard.teams import catalog

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
        from mlyard.core.connection import connect
        from mlyard.tasks.registry_secrets import images

        images(connect()).resolve(image, "image" if getattr(spec, "image", None) else "training.image", project)


def code_of_member(spec: Any, project: str, settings: Any) -> Any:
    """A member's push of a folder to an endpoint (already in their project's storage), checked as on the
    platform's own machine, with its inference.config.json kept in their project's storage (their command
    writes their own copy)."""
    from mlyard.core.specs.endpoint import SyncSpec

    if not isinstance(spec, SyncSpec):
        return spec
    from mlyard.core.uris import project_prefix
    from mlyard.registry.endpoints import Endpoints
    from mlyard.serving import modelfolder
    from mlyard.tasks.endpoints import check_code, check_target
    from mlyard.teams import catalog

    config = f"{project_prefix(settings, project)}/endpoints/{spec.endpoint}/inference.config.json"
    spec = spec.model_copy(update={"config": config})
    check_target.fn(Endpoints(catalog(settings.catalog_db_url)), spec, check_code.fn(spec, modelfolder.load),
                    settings.home_dir)
    return spec


def push_state(run_id: str) -> dict[str, Any]:
    """A member's push (`endpoints deploy --sync`) as their command follows it: its run's state and message,
    and once it completed the model version it made. Not found unless it is a push of the caller's projects."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from mlyard.core.access import project_of_tags
    from mlyard.core.errors import NotFound
    from mlyard.core.names import FLOW_SYNC_ENDPOINT
    from mlyard.core.specs.endpoint import SyncSpec
    from mlyard.runs import not_found_or_away, visible_projects
    from mlyard.teams import endpoint_in_reach

    with get_client(sync_client=True) as client:
        try:
            fr = client.read_flow_run(UUID(run_id))
        except Exception as exc:  # not found or not an id; else Prefect is away
            raise not_found_or_away(exc, NotFound(run_id), str(client.api_url)) from exc
        projects = visible_projects()
        if fr.flow_id is None or client.read_flow(fr.flow_id).name != FLOW_SYNC_ENDPOINT or (
                projects is not None and project_of_tags(fr.tags or ()) not in projects):
            raise NotFound(run_id)
    state = fr.state
    view: dict[str, Any] = {"state": state.type.value if state else "PENDING", "message": state.message if state else None}
    if state is not None and state.is_completed():
        spec = SyncSpec(**fr.parameters["spec"])
        model = spec.model or spec.endpoint
        served = [r["model"].rsplit("/", 1)[1] for st in endpoint_in_reach(spec.endpoint, "viewer", "following a push")["stages"]
                  for r in st["resources"] if r["model"].rsplit("/", 1)[0] == model]
        view["version"] = max(served, key=int, default=None)
    return view


def model_of_project(model: str, project: str) -> None:
    """A member's batch inference or evaluation reads a registered model of their project (`name@alias`,
    `name/version`, `models:/...`) or a folder of its storage (checked with the other locations); never an
    MLflow run's files by id (`runs:/...`), which no project owns."""
    import re

    from mlyard.core.errors import ModelNotFound, SpecError
    from mlyard.core.specs import is_mlflow_uri, is_registry_ref
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
    from mlyard.core.access import DEFAULT_PROJECT
    from mlyard.core.specs import TuningSpec

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

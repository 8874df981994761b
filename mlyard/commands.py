"""The catalog's writes that the CLI makes (images, registry accounts, training templates), each a plain
function of JSON arguments with a JSON answer, so that they run where the platform's catalog is:

- here, on this machine's catalog (the embedded stack's, or MLYARD_CATALOG_URL's);
- by the platform's mlyard API (POST /v1/commands/{name}, mlyard/service.py) when MLYARD_API_URL names one:
  a workstation reaching a cluster's platform writes to the catalog the cluster uses, and a registry
  account's password becomes the cluster's pull Secret, not a file on the workstation.

A production Prefect server named without either refuses the write, rather than keep it in a catalog
on this machine that no pod ever reads. The reads go the same way (mlyard/queries.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mlyard import teams
from mlyard.core.access import current
from mlyard.core.errors import StackError
from mlyard.core.settings import Settings
from mlyard.queries import account_in_reach, image_in_reach
from mlyard.queries import images_catalog as _images


def images_create(name: str, address: str, kind: str = "training", account: str | None = None,
                  description: str = "") -> dict[str, Any]:
    from mlyard.core.specs import load_spec
    from mlyard.core.specs.image import ImageSpec

    project = teams.acting_editor("registering an image")
    spec = load_spec(ImageSpec, {"name": name, "address": address, "kind": kind, "account": account,
                                 "description": description}, source="image")
    return _images().create_image(spec, project).as_dict()


def images_update(name: str, new_name: str | None = None, description: str | None = None) -> dict[str, Any]:
    image_in_reach(name, "editor", "changing an image")
    return _images().update_image(name, new_name=new_name, description=description).as_dict()


def images_delete(name: str) -> dict[str, Any]:
    from mlyard.images import image_users

    image_in_reach(name, "owner", "deleting an image")
    _images().delete_image(name, image_users)
    return {"deleted": name}


def accounts_create(name: str, registry: str, username: str, password: str, description: str = "") -> dict[str, Any]:
    from mlyard.core.specs import load_spec
    from mlyard.core.specs.image import RegistryAccountSpec

    project = teams.acting_editor("registering a registry account")
    spec = load_spec(RegistryAccountSpec, {"name": name, "registry": registry, "username": username,
                                           "password": password, "description": description},
                     source="registry account")
    return _images().create_account(spec, project).as_dict()


def accounts_update(name: str, new_name: str | None = None, description: str | None = None,
                    username: str | None = None, password: str | None = None) -> dict[str, Any]:
    account_in_reach(name, "editor", "changing a registry account")
    return _images().update_account(name, new_name=new_name, description=description, username=username,
                                    password=password).as_dict()


def accounts_delete(name: str) -> dict[str, Any]:
    account_in_reach(name, "owner", "deleting a registry account")
    _images().delete_account(name)
    return {"deleted": name}


def templates_create(name: str, spec: dict[str, Any], description: str = "") -> dict[str, Any]:
    from mlyard.core.specs import TrainingSpec, load_spec

    project = teams.acting_editor("creating a template")
    checked = load_spec(TrainingSpec, spec)
    if not current().admin:  # a member's template names their project's storage and images alone (as their runs)
        from mlyard.core.connection import connect
        from mlyard.member_runs import image_of_project
        from mlyard.project_storage import confine

        confine(checked, project, connect())
        image_of_project(checked, project)
    return _templates().create(name, checked, description, project).as_dict()


def templates_copy(name: str, new_name: str, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    from mlyard.core.errors import TemplateNotFound
    from mlyard.queries import visible_template

    templates = _templates()
    found = visible_template(templates, name)
    current().need(found.project, "editor", "copying a template", lambda: TemplateNotFound(name))
    if not current().admin and sets:  # a member's changes name their project's storage and images alone
        from mlyard.core.connection import connect
        from mlyard.member_runs import image_of_project
        from mlyard.project_storage import confine

        changed = found.spec.with_overrides(sets)
        confine(changed, found.project, connect())
        image_of_project(changed, found.project)
    return templates.copy(name, new_name, sets or {}).as_dict()


def templates_delete(name: str) -> dict[str, Any]:
    from mlyard.core.errors import TemplateNotFound
    from mlyard.queries import visible_template

    templates = _templates()
    found = visible_template(templates, name)
    current().need(found.project, "owner", "deleting a template", lambda: TemplateNotFound(name))
    templates.delete(name)
    return {"deleted": name}


def _templates():
    """The catalog's training templates, without loading MLflow (a second and a half per command)."""
    from mlyard.core.connection import connect
    from mlyard.core.settings import require_shared_stores
    from mlyard.registry.catalog import shared
    from mlyard.registry.templates import Templates

    settings = connect()
    require_shared_stores(settings)
    return Templates(shared(settings.catalog_db_url))


def runs_stop(kind: str, run_id: str) -> dict[str, Any]:
    """Stop a run of `kind` (TRAINING, TUNING, BATCH, EVALUATION) like the UI's Cancel: its new status."""
    from mlyard import runs
    from mlyard.core.connection import connect
    from mlyard.core.errors import SpecError

    if kind not in ("TRAINING", "TUNING", "BATCH", "EVALUATION"):
        raise SpecError("kind", kind, "TRAINING, TUNING, BATCH or EVALUATION")
    connect()
    info = runs.stop_run(getattr(runs, kind), run_id)
    return {"id": info.id, "name": info.name, "status": info.status, "project": info.project}


def models_create(name: str, **given: Any) -> dict[str, Any]:
    """A model version (mlyard/models.py: from a training, a tuning or an artifact)."""
    from mlyard import models

    return models.create(name, **given)


def models_rename(name: str, new_name: str) -> dict[str, Any]:
    from mlyard import models

    return models.rename(name, new_name)


def models_describe(name: str, description: str, version: str | None = None) -> dict[str, Any]:
    from mlyard import models

    return models.describe(name, description, version)


def models_alias(name: str, alias: str, version: str | None = None, delete: bool = False) -> dict[str, Any]:
    from mlyard import models

    return models.alias(name, alias, version, delete)


def models_delete(name: str, version: str | None = None) -> dict[str, Any]:
    from mlyard import models

    return models.delete(name, version)


def endpoints_issue(name: str, days: float | None = 30, expires_at: str | None = None,
                    daily_tokens: int | None = None) -> dict[str, Any]:
    """A new token of the endpoint `name` (shown once)."""
    from mlyard import endpoints

    return endpoints.issue_token(name, days=days, expires_at=expires_at, daily_tokens=daily_tokens)


def endpoints_budget(name: str, token_id: int | str, daily_tokens: int | None) -> dict[str, Any]:
    from mlyard import endpoints

    return endpoints.set_budget(name, token_id, daily_tokens)


def endpoints_revoke(name: str, token_id: int) -> dict[str, Any]:
    from mlyard import endpoints

    endpoints.revoke_token(name, token_id)
    return {"endpoint": name, "revoked": token_id}


def schedules_create(spec: dict[str, Any], wait_seconds: float = 10.0) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.create(spec, wait_seconds=min(float(wait_seconds), 30.0))


def schedules_enable(name: str) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.enable(name)


def schedules_disable(name: str) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.disable(name)


def schedules_copy(name: str, new_name: str, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.copy(name, new_name, sets=sets)


def schedules_delete(name: str) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.delete(name)


def notebooks_create(spec: dict[str, Any]) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.create(spec)


def notebooks_stop(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.stop(name)


def notebooks_start(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.start(name)


def notebooks_reboot(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.reboot(name)


def notebooks_delete(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.delete(name)


def notebooks_rename(name: str, new_name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.rename(name, new_name)


def notebooks_set_type(name: str, instance_type: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.set_type(name, instance_type)


def pipelines_upload(text: str, name: str, description: str = "") -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.record(text=text, name=name, description=description)


def pipelines_delete(name: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.delete(name)


def pipeline_runs_stop(run_id: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.stop(run_id)


def pipeline_runs_delete(run_id: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.delete_run(run_id)


def rags_create(spec: dict[str, Any]) -> dict[str, Any]:
    from mlyard import rags

    return rags.record(spec=spec)


def rags_sync(name: str) -> dict[str, Any]:
    from mlyard import rags

    return rags.begin_sync(name)


def rags_update(name: str, sets: dict[str, Any]) -> dict[str, Any]:
    from mlyard import rags

    return rags.update(name, sets)


def rags_delete(name: str) -> dict[str, Any]:
    from mlyard import rags

    return rags.delete(name)


def _audited(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A catalog write, recorded once in the audit trail (who, project, what, which, result)."""
    from mlyard.teams import audited

    kind, _, verb = fn.__name__.partition("_")
    what = {"images": "image", "accounts": "registry account", "templates": "template", "runs": "run",
            "models": "model", "endpoints": "endpoint_token"}[kind]
    return audited(f"{what.replace(' ', '_')}.{verb}", lambda a: f"{what} {a.get('name') or a.get('run_id')}",
                   lambda a: teams.acting_or_none(current()))(fn)


COMMANDS: dict[str, Callable[..., Any]] = {f.__name__: _audited(f) for f in (
    images_create, images_update, images_delete, accounts_create, accounts_update, accounts_delete,
    templates_create, templates_copy, templates_delete, runs_stop, models_create, models_rename, models_describe,
    models_alias, models_delete, endpoints_issue, endpoints_revoke, endpoints_budget)}
COMMANDS.update(teams.COMMANDS)
SELF_AUDITED = (schedules_create, schedules_enable, schedules_disable, schedules_copy, schedules_delete, notebooks_create,
                notebooks_stop, notebooks_start, notebooks_reboot, notebooks_delete, notebooks_rename, notebooks_set_type,
                pipelines_upload, pipelines_delete, pipeline_runs_stop, pipeline_runs_delete, rags_create, rags_sync,
                rags_update, rags_delete)
# each records itself, by every path (mlyard/schedule.py, notebooks.py, pipelines.py, rags.py)
COMMANDS.update({f.__name__: f for f in SELF_AUDITED})
MEMBER_COMMANDS = frozenset({"images_create", "images_update", "images_delete", "accounts_create", "accounts_update",
                             "accounts_delete", "templates_create", "templates_copy", "templates_delete", "runs_stop", "models_create",
                             "models_rename", "models_describe", "models_alias", "models_delete", "endpoints_issue",
                             "endpoints_revoke", "endpoints_budget", *teams.COMMANDS, *(f.__name__ for f in SELF_AUDITED)})


def where() -> str | None:
    """The mlyard API that holds the platform's catalog (MLYARD_API_URL), or None: this machine's catalog.
    StackError when a production Prefect server is named without it or a catalog URL."""
    settings = Settings()
    if settings.api_url or settings.api_key is not None:
        from mlyard.warm_api import signed_in_api

        return signed_in_api(settings)
    if settings.prefect_api_url and not settings.catalog_url:
        raise StackError("this command writes to the platform's catalog, and MLYARD_PREFECT_API_URL names a "
                           "production platform: set MLYARD_API_URL to its mlyard API (and MLYARD_INTERNAL_TOKEN), or "
                           "MLYARD_CATALOG_URL to its catalog database, so the write is not kept on this machine alone")
    return None


def act(name: str, /, **arguments: Any) -> Any:
    """Run the command `name` where the platform's catalog is (see the module): its JSON answer."""
    url = where()
    if url is not None:
        from mlyard.warm_api import post

        return post(url, f"/v1/commands/{name}", arguments)
    return json.loads(json.dumps(COMMANDS[name](**arguments), default=str))


def relocated_spec(spec: Any, echo: Callable[[str], None]) -> dict[str, Any]:
    """A template's spec as the platform's pods read it: relative paths absolute here; sent to a remote
    platform, its local inputs uploaded (mlyard/uploads.py) and a local output refused."""
    spec = spec.resolved(Path.cwd())
    if where() is not None:
        from mlyard.uploads import for_cluster

        spec = for_cluster(spec, Settings(), echo)
    return spec.model_dump(mode="json")

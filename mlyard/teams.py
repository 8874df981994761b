"""Users, keys, projects and the audit trail as the CLI, Python and the mlyard API call them: who may call
what (core/access.py's actor) is decided here, once, and every change is recorded in the audit trail.

    admin      users (create, keys, revoke, delete), projects (create, quota, delete), every project's
               members and audit records
    owner      their project's members and audit records
    anyone     their own keys (list, add, revoke), the projects they are in, `whoami`

The stack's owner on their own machine is an admin (core/access.local_owner); a key's user is whoever
the mlyard API found it belongs to (mlyard/service.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from mlyard.core.access import Actor, current
from mlyard.core.errors import Forbidden, MlyardError, ProjectNotFound, UserNotFound


def teams():
    """The catalog's users, keys, projects and audit trail, without loading MLflow."""
    from mlyard.core.connection import connect
    from mlyard.core.settings import require_shared_stores
    from mlyard.registry.teams import Teams

    settings = connect()
    require_shared_stores(settings)
    return Teams(catalog(settings.catalog_db_url))


def catalog(url: str):
    """One Catalog per database and process: the mlyard API checks a key on every request."""
    from mlyard.registry.catalog import shared

    return shared(url)


def _admin(actor: Actor, action: str) -> None:
    if not actor.admin:
        raise Forbidden(actor.name, None, action, "admin", None)


def _self_or_admin(actor: Actor, user: str, action: str) -> None:
    if not actor.admin and actor.name != user:
        raise UserNotFound(user)  # another user's keys do not exist for a non-admin


def audited(action: str, resource: Callable[[dict[str, Any]], str], project: Callable[[dict[str, Any]], str | None]
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Record every call of the decorated command in the audit trail, once, with its result: `ok`, `refused`
    (the caller's role, a missing thing, bad input) or `failed`."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(**arguments: Any) -> Any:
            actor = current()
            try:
                where = project(arguments)
            except MlyardError:
                where = None
            try:
                answer = fn(**arguments)
            except MlyardError as exc:
                record(actor, action, resource(arguments), "refused" if exc.http_status < 500 else "failed", where,
                       f"{type(exc).__name__}: {exc}")
                raise
            except Exception as exc:
                record(actor, action, resource(arguments), "failed", where, f"{type(exc).__name__}: {exc}")
                raise
            record(actor, action, resource(arguments), "ok", where)
            return answer

        call.__name__, call.__doc__, call.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
        return call

    return wrap


def record(actor: Actor, action: str, resource: str, result: str, project: str | None = None, detail: str = "") -> None:
    teams().record(actor, action, resource, result, project, detail)


def acting_editor(action: str) -> str:
    """The project this call acts in, once it exists and the actor's role there lets them create and start."""
    actor = current()
    project = actor.acting_project()
    actor.need(project, "editor", action, lambda: ProjectNotFound(project))
    if actor.admin:
        teams().project(project)  # ProjectNotFound: an admin may name any project, but it must be there
    return project


def _project_arg(a: dict[str, Any]) -> str | None:
    return a.get("project") or a.get("name")


def check_quota(spec: Any, project: str) -> None:
    """Refuse a training or tuning asking more at once than its project's quota holds (it would wait for
    ever): GPUs (every node's) and CPUs of one run."""
    from mlyard.core.errors import SpecError

    training = getattr(spec, "training", None) or spec
    resources = getattr(training, "resources", None)
    if resources is None:
        return
    quota = teams().project(project)
    field = "training.resources" if training is not spec else "resources"
    gpus = resources.gpu_count * getattr(training, "nodes", 1)
    if quota["gpus"] is not None and gpus > quota["gpus"]:
        raise SpecError(f"{field}.gpu_count", resources.gpu_count, f"at most {quota['gpus']} GPU(s) in all: project "
                        f"{project}'s quota (an admin raises it: `mlyard projects set-quota {project} --gpus N`)")
    if quota["cpus"] and resources.cpu and resources.cpu > quota["cpus"]:
        raise SpecError(f"{field}.cpu", resources.cpu, f"at most {quota['cpus']:g}: project {project}'s CPU quota "
                        f"(an admin raises it: `mlyard projects set-quota {project} --cpus N`)")


def endpoint_in_reach(endpoint: str, role: str, action: str) -> dict[str, Any]:
    """The endpoint's view when the caller's role in its project allows `action` (EndpointNotFound for an
    endpoint of a project they have no role in, Forbidden for a smaller role)."""
    from mlyard.core.errors import EndpointNotFound
    from mlyard.registry.endpoints import Endpoints

    view = Endpoints(catalog(_settings().catalog_db_url)).get(endpoint)
    current().need(view["project"], role, action, lambda: EndpointNotFound(endpoint))
    return view


def _settings():
    from mlyard.core.connection import connect

    return connect()


def acting_or_none(actor: Actor) -> str | None:
    """The project `actor` acts in, for a record; None when there is none (several, or none at all)."""
    try:
        return actor.acting_project()
    except MlyardError:
        return None


# -- users and keys ---------------------------------------------------------------------------------------


@audited("user.create", lambda a: f"user {a.get('name')}", lambda a: None)
def users_create(name: str, admin: bool = False, expires_days: int | None = None) -> dict[str, Any]:
    """A new user and their first API key (shown this once)."""
    actor = current()
    _admin(actor, "creating a user")
    user, key = teams().create_user(name, admin=admin, by=actor.name, expires_days=expires_days)
    return {**user, "key": key}


@audited("key.create", lambda a: f"user {a.get('name')}", lambda a: None)
def users_add_key(name: str, expires_days: int | None = None, description: str = "") -> dict[str, Any]:
    """Another API key for a user (an admin's, or your own)."""
    _self_or_admin(current(), name, "adding a key")
    key_id, key = teams().add_key(name, expires_days=expires_days, description=description)
    return {"name": name, "key_id": key_id, "key": key}


@audited("key.revoke", lambda a: f"key {a.get('key_id')}", lambda a: None)
def users_revoke(key_id: str) -> dict[str, Any]:
    """End a key at once (an admin's, or your own key)."""
    actor, t = current(), teams()
    from mlyard.core.errors import SpecError

    try:
        owner = t.key_owner(key_id)
        _self_or_admin(actor, owner, "revoking a key")
    except UserNotFound:
        raise SpecError("key id", key_id, "one of your keys (`mlyard users keys NAME`)") from None
    return t.revoke(key_id)


@audited("user.delete", lambda a: f"user {a.get('name')}", lambda a: None)
def users_delete(name: str) -> dict[str, Any]:
    """Delete a user, their keys and their roles (what they made stays with its project)."""
    actor = current()
    _admin(actor, "deleting a user")
    if name == actor.name:
        from mlyard.core.errors import Conflict

        raise Conflict("you cannot delete yourself; another admin can")
    teams().delete_user(name)
    return {"deleted": name}


def users_list() -> list[dict[str, Any]]:
    """Every user (an admin), else yourself."""
    actor = current()
    rows = teams().users()
    return rows if actor.admin else [r for r in rows if r["name"] == actor.name]


def users_keys(name: str) -> list[dict[str, Any]]:
    """A user's keys: ids, state, when made, last used, expiry (never the keys)."""
    _self_or_admin(current(), name, "listing keys")
    return teams().keys(name)


def whoami() -> dict[str, Any]:
    """Who this call acts as: name, admin, roles, the project it acts in."""
    from mlyard.core.connection import read_state
    from mlyard.core.links import prefect_ui
    from mlyard.core.settings import Settings
    from mlyard.tasks.processes import alive

    actor, settings = current(), Settings()
    state = read_state(settings)
    return {"name": actor.name, "admin": actor.admin, "roles": actor.roles, "project": acting_or_none(actor),
            "key_id": actor.key_id, "source": actor.source,
            "urls": {"prefect_ui": prefect_ui(settings),
                     "mlflow_ui": state.mlflow_ui_url if state and alive(state.pids.get("mlflow-ui")) else None}}


# -- projects ---------------------------------------------------------------------------------------------


@audited("project.create", lambda a: f"project {a.get('name')}", _project_arg)
def projects_create(name: str, description: str = "", gpus: int | None = None, cpus: float | None = None,
                    max_runs: int | None = None, owner: str | None = None) -> dict[str, Any]:
    """A new project, with its quota (None: no limit) and, if named, its first owner."""
    _admin(current(), "creating a project")
    t = teams()
    if owner is not None:
        t.keys(owner)  # UserNotFound before anything is made
    made = t.create_project(name, description, gpus=gpus, cpus=cpus, max_runs=max_runs)
    if owner is not None:
        t.set_member(name, owner, "owner")
        made = t.project(name)
    return made


@audited("project.quota", lambda a: f"project {a.get('name')}", _project_arg)
def projects_set_quota(name: str, **quota: Any) -> dict[str, Any]:
    """Change a project's quota (`gpus`, `cpus`, `max_runs`) and its endpoints' request rate limits
    (`rate_limit`, `key_rate_limit`, a second); a field given as None: no limit."""
    from mlyard.core.errors import SpecError

    _admin(current(), "changing a project's quota")
    unknown = set(quota) - {"gpus", "cpus", "max_runs", "rate_limit", "key_rate_limit"}
    if unknown:
        raise SpecError("quota", sorted(unknown), "gpus, cpus, max_runs, rate_limit or key_rate_limit")
    return teams().set_quota(name, **quota)


def _project_owner(project: str, action: str) -> Actor:
    actor = current()
    actor.need(project, "owner", action, lambda: ProjectNotFound(project))
    return actor


@audited("member.grant", lambda a: f"user {a.get('user')} role {a.get('role')}", _project_arg)
def projects_add_member(project: str, user: str, role: str) -> dict[str, Any]:
    """Give a user a role in a project (its owner's or an admin's)."""
    _project_owner(project, "adding a member")
    return teams().set_member(project, user, role)


@audited("member.remove", lambda a: f"user {a.get('user')}", _project_arg)
def projects_remove_member(project: str, user: str) -> dict[str, Any]:
    _project_owner(project, "removing a member")
    teams().remove_member(project, user)
    return {"project": project, "removed": user}


@audited("project.delete", lambda a: f"project {a.get('name')}", _project_arg)
def projects_delete(name: str) -> dict[str, Any]:
    """Delete a project that holds nothing (an admin's)."""
    _admin(current(), "deleting a project")
    teams().delete_project(name, _runs_of(name))
    return {"deleted": name}


def _runs_of(project: str) -> list[str]:
    """The project's flow runs that have not ended (a project is not deleted under its running work)."""
    from mlyard.runs import active_in_project

    return [f"run {r}" for r in active_in_project(project)]


def projects_list() -> list[dict[str, Any]]:
    """The projects you are in (an admin: all), with your role."""
    actor = current()
    return [{**p, "role": actor.role(p["name"])} for p in teams().projects(actor.projects())]


def projects_show(name: str) -> dict[str, Any]:
    """A project: members, quota, your role, and its storage (where its members' runs read and write)."""
    from mlyard.core.connection import connect
    from mlyard.core.uris import project_prefix

    actor = current()
    if not actor.sees(name):
        raise ProjectNotFound(name)
    return {**teams().project(name), "role": actor.role(name), "storage": f"{project_prefix(connect(), name)}/"}


# -- the audit trail --------------------------------------------------------------------------------------


def audit(project: str | None = None, user: str | None = None, since: str | None = None, limit: int = 200
          ) -> list[dict[str, Any]]:
    """Audit records, newest first: an admin's of every project, a project owner's of theirs."""
    actor = current()
    if project is not None:
        actor.need(project, "owner", "reading the audit trail", lambda: ProjectNotFound(project))
        projects: list[str] | None = [project]
    elif actor.admin:
        projects = None
    else:
        projects = [p for p, role in actor.roles.items() if role == "owner"]
        if not projects:
            raise Forbidden(actor.name, None, "reading the audit trail", "owner", None)
    return teams().audit(projects, user, _since(since), limit)


def _since(since: str | None) -> datetime | None:
    """"24h", "7d", "30m" back from now, or an ISO time (the one reader of the stats' periods)."""
    from mlyard.schedules.moments import when

    moment = when(since, "since", None)
    return None if moment is None else datetime.fromtimestamp(moment, timezone.utc)


COMMANDS: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    users_create, users_add_key, users_revoke, users_delete, projects_create, projects_set_quota,
    projects_add_member, projects_remove_member, projects_delete)}
QUERIES: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    users_list, users_keys, whoami, projects_list, projects_show, audit)}


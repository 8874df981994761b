"""Who is asking and what their roles let them do (DESIGN §15): plain values, no engine.

    Actor       a user (or the platform's own processes), admin or not, their role in each project, the
                project they act in, and where they came from; `current()` is the one of this request or
                command (the stack's owner, an admin, unless the mlyard API says otherwise)
    ROLES       viewer < editor < owner: a viewer reads, an editor creates, changes, starts and stops, an
                owner also manages the members and deletes the project's things
    API keys    `mly_<id>_<secret>`: the id finds the key (an EasyMaker AppKey), the secret is its secret key;
                only the secret's SHA-256 is kept. The secret is 256 random bits, not a password a person
                chose, so a slow hash would buy nothing against a stolen table and would cost every request
                (GitHub's and Stripe's tokens are kept the same way).

A resource of a project the actor has no role in is answered as if it did not exist (the caller's
NotFound); a role too small for the action is Forbidden, naming the role needed.
"""

from __future__ import annotations

import contextvars
import getpass
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from mlyard.core.errors import Forbidden, SpecError, Unauthenticated

ROLES = ("viewer", "editor", "owner")
DEFAULT_PROJECT = "default"
KEY_PREFIX = "mly"
PROJECT_TAG = "mlyard.project:"  # the tag every flow run of a project carries (Prefect has no other owner)
USER_TAG = "mlyard.user:"  # and the user who started it
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # a DNS label: it names namespaces, queues, prefixes
_KEY = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")


def rank(role: str | None) -> int:
    return ROLES.index(role) + 1 if role in ROLES else 0


def check_name(kind: str, name: str) -> str:
    """A user's or project's name: lower-case letters, digits and dashes, at most 40, as a DNS label (it
    becomes a Kueue queue, a storage prefix and an MLflow workspace)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError(f"{kind} name", name, "1-40 lower-case letters, digits and '-', starting and ending with a "
                        "letter or digit (it names the project's queue and storage prefix)")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise SpecError("role", role, f"one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Actor:
    """Who acts: `name`, whether an admin, their role per project, the project chosen for this call (None:
    their only one, or `default` for an admin), where they came from, and the key they used."""

    name: str
    admin: bool = False
    roles: dict[str, str] = field(default_factory=dict)
    project: str | None = None
    source: str = "local"
    key_id: str | None = None

    def role(self, project: str) -> str | None:
        return "owner" if self.admin else self.roles.get(project)

    def sees(self, project: str | None) -> bool:
        """Whether a resource of `project` exists for this actor (None, a resource from before projects:
        `default`'s)."""
        return self.admin or (project or DEFAULT_PROJECT) in self.roles

    def projects(self) -> list[str] | None:
        """The projects whose things this actor sees (None: all, for an admin)."""
        return None if self.admin else sorted(self.roles)

    def need(self, project: str | None, role: str, action: str, hidden: Callable[[], Exception]) -> None:
        """Allow `action` on a thing of `project` when this actor's role there is at least `role`: raise
        `hidden()` (its kind's NotFound) for a project they have no role in, Forbidden for a smaller role."""
        project = project or DEFAULT_PROJECT
        if self.admin:
            return
        has = self.roles.get(project)
        if has is None:
            raise hidden()
        if rank(has) < rank(role):
            raise Forbidden(self.name, project, action, role, has)

    def acting_project(self) -> str:
        """The project this call acts in: the one chosen, else their only one (`default` for an admin)."""
        if self.project is not None:
            if not self.sees(self.project):
                from mlyard.core.errors import ProjectNotFound

                raise ProjectNotFound(self.project)
            return self.project
        if self.admin:
            return DEFAULT_PROJECT
        if len(self.roles) == 1:
            return next(iter(self.roles))
        if not self.roles:
            raise Forbidden(self.name, DEFAULT_PROJECT, "acting in a project", "viewer", None)
        raise SpecError("project", None, f"one of {', '.join(sorted(self.roles))} (--project or MLYARD_PROJECT): "
                        f"{self.name} is a member of several")

    def within(self, project: str | None) -> Actor:
        return replace(self, project=project)


def local_owner(project: str | None = None) -> Actor:
    """The stack's owner on its own machine: whoever can read the stack's private home is its admin."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (a container's): its number
        import os

        name = str(os.getuid())
    return Actor(name=name, admin=True, project=project, source="local")


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("mlyard_actor", default=None)


def current() -> Actor:
    """The actor of this request (the mlyard API sets it) or command (the stack's owner)."""
    actor = _current.get()
    if actor is None:
        from mlyard.core.settings import Settings

        actor = local_owner(Settings().project)
        _current.set(actor)
    return actor


def acting_as(actor: Actor) -> contextvars.Token:
    return _current.set(actor)


def done_acting(token: contextvars.Token) -> None:
    _current.reset(token)


# -- API keys ---------------------------------------------------------------------------------------------


def new_key() -> tuple[str, str, str]:
    """A new API key: (key id, the whole key to hand to the user once, the secret's hash to keep)."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}", secret_hash(secret)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str]:
    """(key id, secret) of an API key; Unauthenticated for anything else (never echoing it)."""
    match = _KEY.match(key.strip()) if isinstance(key, str) else None
    if match is None:
        raise Unauthenticated("not an mlyard API key (they read mly_<id>_<secret>); an admin makes one with "
                              "`mlyard users create NAME` or `mlyard users add-key NAME`")
    return match.group(1), match.group(2)


def secret_matches(secret: str, kept_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), kept_hash)


def project_tags(projects: Iterable[str]) -> list[str]:
    return [f"{PROJECT_TAG}{p}" for p in projects]


def project_of_tags(tags: Iterable[str]) -> str:
    """The project a flow run belongs to, from its tags (`default` for runs from before projects)."""
    return next((t[len(PROJECT_TAG):] for t in tags if t.startswith(PROJECT_TAG)), DEFAULT_PROJECT)


def run_tags(project: str, user: str) -> list[str]:
    """The tags the platform gives a run it makes: its project and who started it."""
    return [f"{PROJECT_TAG}{project}", f"{USER_TAG}{user}"]


def project_queue(queue: str, project: str) -> str:
    """The Kueue LocalQueue of `project`'s runs beside the gpu pool's `queue` (the default project's is it)."""
    return queue if project == DEFAULT_PROJECT else f"{queue}-{project}"


def user_of_tags(tags: Iterable[str]) -> str | None:
    return next((t[len(USER_TAG):] for t in tags if t.startswith(USER_TAG)), None)


def roles_of_groups(groups: Iterable[str]) -> tuple[bool, dict[str, str]]:
    """What an identity provider's group claims grant (behind the cluster's sign-in): `mlyard:admin`, and
    `mlyard:<project>:<role>` (or Keycloak's path form `/mlyard/<project>/<role>`), the greater role of a
    project named twice. Every other group grants nothing. (admin, {project: role})."""
    admin, roles = False, {}
    for group in groups:
        parts = group.strip().lstrip("/").replace("/", ":").split(":")
        if parts[0] != "mlyard":
            continue
        if parts[1:] == ["admin"]:
            admin = True
        elif len(parts) == 3 and parts[2] in ROLES and NAME.match(parts[1]):
            if rank(parts[2]) > rank(roles.get(parts[1])):
                roles[parts[1]] = parts[2]
    return admin, roles

"""Users, their API keys, projects, members' roles and the audit trail, in the catalog (DESIGN §15).

Mechanism only: who may call what is decided by the front door (mlyard/teams.py) with core/access.py.
A key's secret is never kept, only its hash; a revoked or expired key stops working at its next request
(every request reads its row: nothing caches a key).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from mlyard.core.access import DEFAULT_PROJECT, Actor, check_name, check_role, new_key, secret_matches, split_key
from mlyard.core.errors import AlreadyExists, Conflict, ProjectNotFound, SpecError, Unauthenticated, UserNotFound
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Base, utcnow
from mlyard.registry.team_tables import ApiKey, AuditRecord, Project, ProjectMember, User

LAST_USED_EVERY_SECONDS = 60  # a key's last use is written at most this often (not a write per request)
RESULTS = ("ok", "refused", "failed")


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _aware(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo else at.replace(tzinfo=timezone.utc)


class Teams:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- users and keys ------------------------------------------------------------------------------------

    def create_user(self, name: str, admin: bool = False, by: str = "", expires_days: int | None = None
                    ) -> tuple[dict[str, Any], str]:
        """A new user and their first key: (the user, the whole key, shown this once)."""
        check_name("user", name)
        try:
            with self.catalog.session() as s:
                s.add(User(name=name, admin=admin, created_by=by))
                s.flush()
                key_id, key = self._new_key(s, name, expires_days, "first key")
        except IntegrityError as exc:
            raise AlreadyExists("user", name) from exc
        return {"name": name, "admin": admin, "key_id": key_id}, key

    def add_key(self, name: str, expires_days: int | None = None, description: str = "") -> tuple[str, str]:
        """Another key for the user (a second machine, a CI job): (its id, the whole key, shown this once)."""
        with self.catalog.session() as s:
            if s.get(User, name) is None:
                raise UserNotFound(name)
            return self._new_key(s, name, expires_days, description)

    @staticmethod
    def _new_key(s: Any, user: str, expires_days: int | None, description: str) -> tuple[str, str]:
        if expires_days is not None and not (_number(expires_days, int) and 1 <= expires_days <= MAX_KEY_DAYS):
            raise SpecError("expires_days", expires_days,
                            f"a whole number of days from 1 to {MAX_KEY_DAYS:,} (or none: no expiry)")
        key_id, key, kept = new_key()
        expires = utcnow() + timedelta(days=expires_days) if expires_days else None
        s.add(ApiKey(key_id=key_id, user=user, secret_hash=kept, expires_at=expires, description=description))
        return key_id, key

    def users(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            members: dict[str, dict[str, str]] = {}
            for m in s.scalars(select(ProjectMember)):
                members.setdefault(m.user, {})[m.project] = m.role
            return [{"name": u.name, "admin": u.admin, "projects": members.get(u.name, {}),
                     "created_at": _iso(u.created_at), "created_by": u.created_by}
                    for u in s.scalars(select(User).order_by(User.name))]

    def keys(self, user: str) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            if s.get(User, user) is None:
                raise UserNotFound(user)
            now = utcnow()
            return [{"key_id": k.key_id, "description": k.description, "created_at": _iso(k.created_at),
                     "expires_at": _iso(k.expires_at), "last_used_at": _iso(k.last_used_at),
                     "revoked_at": _iso(k.revoked_at), "state": _key_state(k, now)}
                    for k in s.scalars(select(ApiKey).where(ApiKey.user == user).order_by(ApiKey.created_at))]

    def key_owner(self, key_id: str) -> str:
        with self.catalog.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise SpecError("key id", key_id, "one of the user's keys (`mlyard users keys NAME`)")
            return row.user

    def revoke(self, key_id: str) -> dict[str, Any]:
        """End a key at once: its next request is refused."""
        with self.catalog.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise SpecError("key id", key_id, "one of the user's keys (`mlyard users keys NAME`)")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return {"key_id": key_id, "user": row.user, "revoked_at": _iso(row.revoked_at)}

    def delete_user(self, name: str) -> None:
        with self.catalog.session() as s:
            row = s.get(User, name)
            if row is None:
                raise UserNotFound(name)
            s.execute(delete(ApiKey).where(ApiKey.user == name))
            s.execute(delete(ProjectMember).where(ProjectMember.user == name))
            s.delete(row)

    def authenticate(self, key: str, source: str = "", project: str | None = None) -> Actor:
        """The user an API key signs in, with their roles: Unauthenticated for an unknown, wrong, expired or
        revoked key (one message for all: it never says which key ids exist)."""
        key_id, secret = split_key(key)
        return self.actor_of_key(key_id, source, project, lambda kept: secret_matches(secret, kept))

    def actor_of_key(self, key_id: str, source: str = "", project: str | None = None,
                     proven: Callable[[str], bool] = lambda kept: True) -> Actor:
        """The user of key `key_id` while it is active (a signed-in session names its key: a revoked key ends
        it at once), once `proven` holds for its kept hash."""
        refused = Unauthenticated("this API key is unknown, expired or revoked; ask an admin for a new one "
                                  "(`mlyard users add-key NAME`)")
        with self.catalog.session() as s:
            row = s.get(ApiKey, key_id)
            now = utcnow()
            if row is None or not proven(row.secret_hash) or _key_state(row, now) != "active":
                raise refused
            user = s.get(User, row.user)
            if user is None:
                raise refused
            used = _aware(row.last_used_at)
            if used is None or (now - used).total_seconds() > LAST_USED_EVERY_SECONDS:
                row.last_used_at = now
            roles = {m.project: m.role for m in s.scalars(select(ProjectMember).where(ProjectMember.user == user.name))}
            return Actor(name=user.name, admin=user.admin, roles=roles, project=project, source=source,
                         key_id=key_id)

    def identity(self, name: str, groups: list[str], source: str = "", project: str | None = None) -> Actor:
        """A person the cluster's sign-in (OIDC, through oauth2-proxy) vouches for: the roles their user holds
        here, joined with what their groups grant (core/access.roles_of_groups; the greater role counts).
        A person with neither is signed in and sees nothing."""
        from mlyard.core.access import rank, roles_of_groups

        admin, granted = roles_of_groups(groups)
        with self.catalog.session() as s:
            user = s.get(User, name)
            roles = {m.project: m.role for m in s.scalars(select(ProjectMember).where(ProjectMember.user == name))}
        for p, role in granted.items():
            if rank(role) > rank(roles.get(p)):
                roles[p] = role
        return Actor(name=name, admin=admin or bool(user and user.admin), roles=roles, project=project,
                     source=source)

    # -- projects ------------------------------------------------------------------------------------------

    def create_project(self, name: str, description: str = "", gpus: int | None = None, cpus: float | None = None,
                       max_runs: int | None = None) -> dict[str, Any]:
        check_name("project", name)
        _check_quota(gpus, cpus, max_runs)
        try:
            with self.catalog.session() as s:
                s.add(Project(name=name, description=description, gpus=gpus, cpus=cpus, max_runs=max_runs))
        except IntegrityError as exc:
            raise AlreadyExists("project", name) from exc
        return self.project(name)

    def set_quota(self, name: str, **quota: Any) -> dict[str, Any]:
        """Change a project's quota: `gpus`, `cpus`, `max_runs`, and the gateway's `rate_limit` and
        `key_rate_limit` (requests a second) given (None: no limit)."""
        _check_quota(quota.get("gpus"), quota.get("cpus"), quota.get("max_runs"))
        for field in ("rate_limit", "key_rate_limit"):
            value = quota.get(field)
            if value is not None and not (_number(value, (int, float)) and 0 < value <= MAX_QUOTA):
                raise SpecError(field, value, f"requests a second, more than 0 and at most {MAX_QUOTA:,} (none: no limit)")
        with self.catalog.session() as s:
            row = s.get(Project, name)
            if row is None:
                raise ProjectNotFound(name)
            for field in ("gpus", "cpus", "max_runs", "rate_limit", "key_rate_limit"):
                if field in quota:
                    setattr(row, field, quota[field])
        return self.project(name)

    def projects(self, only: list[str] | None = None) -> list[dict[str, Any]]:
        """Every project (or those named in `only`), with its member count."""
        with self.catalog.session() as s:
            counts = dict(s.execute(select(ProjectMember.project, func.count()).group_by(ProjectMember.project)).all())
            q = select(Project).order_by(Project.name)
            if only is not None:
                q = q.where(Project.name.in_(only))
            return [{**_project(p), "members": counts.get(p.name, 0)} for p in s.scalars(q)]

    def project(self, name: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            row = s.get(Project, name)
            if row is None:
                raise ProjectNotFound(name)
            members = [{"user": m.user, "role": m.role, "added_at": _iso(m.added_at)} for m in s.scalars(
                select(ProjectMember).where(ProjectMember.project == name).order_by(ProjectMember.user))]
            return {**_project(row), "members": members}

    def set_member(self, project: str, user: str, role: str) -> dict[str, Any]:
        """Give `user` `role` in `project` (a new member, or a changed role)."""
        check_role(role)
        with self.catalog.session() as s:
            if s.get(Project, project) is None:
                raise ProjectNotFound(project)
            if s.get(User, user) is None:
                raise UserNotFound(user)
            row = s.get(ProjectMember, (project, user))
            if row is None:
                s.add(ProjectMember(project=project, user=user, role=role))
            else:
                row.role = role
        return {"project": project, "user": user, "role": role}

    def remove_member(self, project: str, user: str) -> None:
        with self.catalog.session() as s:
            row = s.get(ProjectMember, (project, user))
            if row is None:
                raise SpecError("member", user, f"a member of project {project!r} (`mlyard projects show {project}`)")
            s.delete(row)

    def holdings(self, project: str) -> list[str]:
        """What of the catalog belongs to `project` (as `kind name`): every table with a `project` column."""
        found = []
        with self.catalog.session() as s:
            for table in Base.metadata.sorted_tables:
                if "project" not in table.c or table.name in ("project_members", "audit_records"):
                    continue
                label = table.c.name if "name" in table.c else next(iter(table.primary_key.columns))
                found += [f"{table.name.rstrip('s').replace('_', ' ')} {n}" for n in
                          s.scalars(select(label).where(table.c.project == project).limit(20))]
        return found

    def delete_project(self, name: str, elsewhere: list[str] = ()) -> None:  # type: ignore[assignment]
        """Delete an empty project: refused while it holds anything (the catalog's, or `elsewhere`: its runs,
        experiments and models), naming what."""
        if name == DEFAULT_PROJECT:
            raise Conflict(f"project {DEFAULT_PROJECT!r} is the stack's own and cannot be deleted")
        held = self.holdings(name) + list(elsewhere)
        if held:
            raise Conflict(f"project {name!r} still holds {', '.join(held[:10])}" + (" ..." if len(held) > 10 else "")
                           + "; delete those first (or move them), then the project")
        with self.catalog.session() as s:
            row = s.get(Project, name)
            if row is None:
                raise ProjectNotFound(name)
            s.execute(delete(ProjectMember).where(ProjectMember.project == name))
            s.delete(row)

    def gateway_view(self) -> dict[str, Any]:
        """What the gateway checks an API key and counts a request with, read in one go: the active keys
        (id -> secret hash, user, expiry as epoch seconds), each user's admin flag and projects, and each
        project's rate limits (requests a second for all its endpoints' calls, and per caller)."""
        now = utcnow()
        with self.catalog.session() as s:
            roles: dict[str, set[str]] = {}
            for m in s.scalars(select(ProjectMember)):
                roles.setdefault(m.user, set()).add(m.project)
            users = {u.name: (u.admin, frozenset(roles.get(u.name, ()))) for u in s.scalars(select(User))}
            keys = {k.key_id: (k.secret_hash, k.user, _expiry(k)) for k in
                    s.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))) if _key_state(k, now) == "active"}
            limits = {p.name: (p.rate_limit, p.key_rate_limit) for p in s.scalars(select(Project))
                      if p.rate_limit or p.key_rate_limit}
        return {"keys": keys, "users": users, "limits": limits}

    # -- the audit trail -----------------------------------------------------------------------------------

    def record(self, actor: Actor, action: str, resource: str, result: str, project: str | None = None,
               detail: str = "") -> None:
        """Add one record (never changed or deleted afterwards)."""
        with self.catalog.session() as s:
            s.add(AuditRecord(user=actor.name, project=project, action=action, resource=resource[:1000],
                              result=result if result in RESULTS else "failed", detail=detail[:2000],
                              source=actor.source[:80]))

    def audit(self, projects: list[str] | None = None, user: str | None = None, since: datetime | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
        """Records newest first: of `projects` (None: all), of `user`, since a time."""
        q = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if projects is not None:
            q = q.where(AuditRecord.project.in_(projects))
        if user is not None:
            q = q.where(AuditRecord.user == user)
        if since is not None:
            q = q.where(AuditRecord.at >= since)
        with self.catalog.session() as s:
            return [{"id": r.id, "at": _iso(r.at), "user": r.user, "project": r.project, "action": r.action,
                     "resource": r.resource, "result": r.result, "detail": r.detail, "source": r.source}
                    for r in s.scalars(q)]


def _key_state(k: ApiKey, now: datetime) -> str:
    if k.revoked_at is not None:
        return "revoked"
    expires = _aware(k.expires_at)
    if expires is not None and expires <= now:
        return "expired"
    return "active"


def _expiry(k: ApiKey) -> float:
    expires = _aware(k.expires_at)
    return expires.timestamp() if expires is not None else float("inf")


def _project(p: Project) -> dict[str, Any]:
    return {"name": p.name, "description": p.description, "gpus": p.gpus, "cpus": p.cpus, "max_runs": p.max_runs,
            "rate_limit": p.rate_limit, "key_rate_limit": p.key_rate_limit, "created_at": _iso(p.created_at)}


MAX_QUOTA = 1_000_000  # GPUs, CPUs, runs at once or requests a second: past it, a typo (2^70, 1e400, inf)
MAX_KEY_DAYS = 36_500


def _check_quota(gpus: Any, cpus: Any, max_runs: Any) -> None:
    for field, value, kind in (("gpus", gpus, int), ("max_runs", max_runs, int), ("cpus", cpus, (int, float))):
        if value is not None and not (_number(value, kind) and 0 <= value <= MAX_QUOTA):
            raise SpecError(field, value, f"a number from 0 to {MAX_QUOTA:,} (none: no limit)")


def _number(value: Any, kind: Any) -> bool:
    """`value` is a finite number of `kind` (not a bool, not NaN or infinite)."""
    return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)

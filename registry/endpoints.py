"""Endpoints, stages and stage resources in the catalog, and their rules, in one place (DESIGN §7):

- endpoint names are unique, stage names unique within their endpoint;
- the default stage cannot be deleted; an endpoint with stages other than the default cannot be
  deleted; nothing is deleted while it is being created, deployed, updated or deleted;
- changing the default stage marks the new one default at once (the gateway moves traffic on its next
  read) and hands back the old one, whose resources the endpoint flow then deletes;
- a model version that any stage serves cannot be deleted (registry/models.py asks `endpoints_serving`);
- the serving history (which version served which stage, from when to when) is written as resources
  become active and end, and is never deleted;
- a token-protected endpoint's tokens have an expiry and can be revoked; only their SHA-256 digests
  are kept, so a token is shown once, when it is issued.

This module records; the endpoint flows (replicas, health, routing) act and report back through
`set_status`. Model references arrive resolved to (name, version) by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from mlyard.core.errors import AlreadyExists, NotFound, Protected, SpecError
from mlyard.core.runtimes import engine_health
from mlyard.core.specs.endpoint import (
    ENDPOINT_STATUSES,
    GATEWAY_STATUSES,
    MAX_STAGES,
    RESOURCE_STATUSES,
    STAGE_STATUSES,
    EndpointSpec,
    StageResourceSpec,
    StageSpec,
)
from mlyard.registry.catalog import Catalog
from mlyard.registry.endpoint_rows import (
    Version,
    check_allowed,
    check_deletable_endpoint,
    check_deletable_stage,
    check_not_busy,
    end_history,
    endpoint_view,
    get_endpoint,
    new_resource,
    new_stage,
    stage_of,
)
from mlyard.registry.tables import Endpoint, EndpointStage, EndpointToken, Promotion, ServingHistory, utcnow


@dataclass(frozen=True)
class HistoryRecord:
    endpoint: str
    stage: str
    model_name: str
    model_version: str
    started_at: datetime
    ended_at: datetime | None
    note: str
    share: int | None = None  # percent of the default traffic it answered (None: only its own URL, or all of it)
    shadow: int | None = None  # percent of the default traffic mirrored to it

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "stage": self.stage, "model": f"{self.model_name}/{self.model_version}",
                "started_at": self.started_at.isoformat(),
                "ended_at": self.ended_at.isoformat() if self.ended_at else None, "note": self.note,
                "share": self.share, "shadow": self.shadow}


class Endpoints:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- creating ---------------------------------------------------------------------------------

    def create(self, spec: EndpointSpec, versions: list[Version], project: str = "default") -> dict[str, Any]:
        """Record an endpoint of `project` and its default stage, CREATE REQUESTED; `versions` are the stage
        resources' model versions, in order."""
        with self.catalog.session() as s:
            if s.scalar(select(Endpoint).where(Endpoint.name == spec.name)) is not None:
                raise AlreadyExists("endpoint", spec.name)
            ep = Endpoint(name=spec.name, description=spec.description, public=spec.public, project=project,
                          max_request_bytes=spec.max_request_bytes, status="CREATE REQUESTED")
            ep.stages.append(new_stage(spec.stage, versions, default=True))
            s.add(ep)
            s.flush()
            return endpoint_view(ep)

    def add_stage(self, endpoint: str, spec: StageSpec, versions: list[Version]) -> dict[str, Any]:
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            if any(st.name == spec.name for st in ep.stages):
                raise AlreadyExists(f"stage of endpoint {endpoint!r}", spec.name)
            if len(ep.stages) >= MAX_STAGES:
                raise SpecError("stage", spec.name, f"at most {MAX_STAGES} stages per endpoint; delete one first")
            check_not_busy(ep.name, "endpoint", ep.status, "add a stage to it")
            ep.stages.append(new_stage(spec, versions, default=False))
            ep.status = "UPDATE IN PROGRESS"
            s.flush()
            return endpoint_view(ep)

    def add_resource(self, endpoint: str, stage: str, spec: StageResourceSpec, version: Version) -> dict[str, Any]:
        with self.catalog.session() as s:
            st = stage_of(get_endpoint(s, endpoint), stage)
            check_not_busy(f"{endpoint}/{stage}", "stage", st.status, "add a resource to it")
            st.resources.append(new_resource(spec, version))
            st.status = "UPDATE IN PROGRESS"
            s.flush()
            return endpoint_view(st.endpoint)

    def set_version(self, endpoint: str, stage: str, resource_id: int, version: Version,
                    max_replicas: int | None = None) -> None:
        """A resource now serves another version (its replicas were replaced one by one): the old
        version's history record ends, the new one's begins. `max_replicas` also sets the stage's cap."""
        with self.catalog.session() as s:
            st = stage_of(get_endpoint(s, endpoint), stage)
            res = next((r for r in st.resources if r.id == resource_id), None)
            if res is None:
                raise NotFound(f"{endpoint}/{stage} resource {resource_id}")
            new = (version[0], str(version[1]))
            if (res.model_name, res.model_version) != new:
                end_history(s, endpoint, stage, [res], f"replaced by {new[0]}/{new[1]}")
                res.model_name, res.model_version = new
                if res.status == "ACTIVE":
                    s.add(ServingHistory(endpoint=endpoint, stage=stage, model_name=new[0], model_version=new[1],
                                         note=f"resource {res.id}"))
            if max_replicas is not None:
                st.max_replicas = max_replicas

    # -- statuses ---------------------------------------------------------------------------------

    def set_status(self, endpoint: str, status: str, stage: str | None = None, resource_id: int | None = None,
                   reason: str = "", gateway_status: str | None = None) -> None:
        """Set one resource's status (each with its own list). A resource that becomes ACTIVE opens its
        history record and one that stops being ACTIVE closes it; the flows call this as their steps finish."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            if stage is None:
                check_allowed(status, ENDPOINT_STATUSES, "endpoint")
                ep.status, ep.reason = status, reason
                return
            st = stage_of(ep, stage)
            if gateway_status is not None:
                check_allowed(gateway_status, GATEWAY_STATUSES, "gateway")
                st.gateway_status = gateway_status
            if resource_id is None:
                check_allowed(status, STAGE_STATUSES, "stage")
                st.status, st.reason = status, reason
                return
            res = next((r for r in st.resources if r.id == resource_id), None)
            if res is None:
                raise NotFound(f"{endpoint}/{stage} resource {resource_id}")
            check_allowed(status, RESOURCE_STATUSES, "stage resource")
            if status == "ACTIVE" and res.status != "ACTIVE":
                s.add(ServingHistory(endpoint=ep.name, stage=st.name, model_name=res.model_name,
                                     model_version=res.model_version, note=f"resource {res.id}"))
            elif res.status == "ACTIVE" and status != "ACTIVE":  # it stops serving (stopped, failed)
                end_history(s, ep.name, st.name, [res], status.lower())
            res.status, res.reason = status, reason

    def set_service_urls(self, endpoint: str, stage: str, urls: dict[int, str | None]) -> None:
        """Route a cluster-run stage's resources to these URLs (their Services), or, with None, take
        them out of every gateway replica's routing."""
        with self.catalog.session() as s:
            st = stage_of(get_endpoint(s, endpoint), stage)
            for r in st.resources:
                if r.id in urls:
                    r.service_url = urls[r.id]

    # -- changing the default stage ---------------------------------------------------------------

    def promote(self, endpoint: str, stage: str) -> str | None:
        """Make `stage` the default; the old default stage's name (its resources are the flow's to delete)."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            new = stage_of(ep, stage)
            if new.status != "ACTIVE":
                raise Protected(f"stage {endpoint}/{stage} is {new.status}; only an ACTIVE stage can become the default")
            old = next((st for st in ep.stages if st.is_default), None)
            if old is new:
                return None
            if old is not None:
                old.is_default = False
            if new.weight or new.shadow:  # it answers the whole default traffic now: its share records end
                end_history(s, endpoint, stage, [r for r in new.resources if r.status == "ACTIVE"], "promoted to default")
                for r in new.resources:
                    if r.status == "ACTIVE":
                        s.add(ServingHistory(endpoint=endpoint, stage=stage, model_name=r.model_name,
                                             model_version=r.model_version, note=f"resource {r.id}, the default"))
            new.is_default, new.weight, new.shadow = True, 0, 0
            return old.name if old is not None else None

    # -- deleting ---------------------------------------------------------------------------------

    def delete_resource(self, endpoint: str, stage: str, resource_id: int) -> None:
        with self.catalog.session() as s:
            st = stage_of(get_endpoint(s, endpoint), stage)
            res = next((r for r in st.resources if r.id == resource_id), None)
            if res is None:
                raise NotFound(f"{endpoint}/{stage} resource {resource_id}")
            if len(st.resources) == 1:
                raise Protected(f"resource {resource_id} is the last of stage {endpoint}/{stage}; a stage serves at "
                                "least one model version (delete the stage instead)")
            check_not_busy(f"{endpoint}/{stage} resource {resource_id}", "stage resource", res.status, "delete it")
            end_history(s, endpoint, stage, [res])
            st.resources.remove(res)

    def check_delete(self, endpoint: str, stage: str | None = None) -> None:
        """Raise Protected when the rules forbid deleting this stage (or, without one, the endpoint). A
        deletion that stopped half-way (DELETE IN PROGRESS) may be run again."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            if stage is None:
                check_deletable_endpoint(ep, deleting=True)
            else:
                check_deletable_stage(ep, stage_of(ep, stage), deleting=True)

    def delete_stage(self, endpoint: str, stage: str, *, replaced: bool = False) -> None:
        """Delete a stage. The default stage cannot be deleted; `replaced` is the flow removing the old
        default after a promotion (it is no longer the default by then). A stage the flow has marked
        DELETE IN PROGRESS may be deleted."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            st = stage_of(ep, stage)
            if replaced:
                if st.is_default:
                    raise Protected(f"stage {endpoint}/{stage} is the endpoint's default stage")
            else:
                check_deletable_stage(ep, st, deleting=True)
            end_history(s, endpoint, stage, st.resources, "stage deleted" if not replaced else "replaced as default")
            for promo in s.scalars(select(Promotion).where(Promotion.endpoint == endpoint, Promotion.stage == stage,
                                                           Promotion.status.in_(("RUNNING", "PAUSED")))):
                promo.status, promo.reason = "ABORTED", "the stage was deleted"
            ep.stages.remove(st)

    def delete(self, endpoint: str) -> None:
        """Delete an endpoint with its default stage. One with other stages is refused; one the flow has
        marked DELETE IN PROGRESS may be deleted."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            check_deletable_endpoint(ep, deleting=True)
            for st in ep.stages:
                end_history(s, endpoint, st.name, st.resources, "endpoint deleted")
            s.delete(ep)

    # -- tokens -----------------------------------------------------------------------------------

    def issue_token(self, endpoint: str, expires_at: datetime, daily_tokens: int | None = None) -> dict[str, Any]:
        """A new token for `endpoint`, valid until `expires_at` (with a budget of `daily_tokens` a day, if
        given); the token itself is in the answer only."""
        if expires_at.tzinfo is None:
            raise SpecError("expires_at", expires_at.isoformat(), "a time with its zone (UTC if unsure)")
        if expires_at <= utcnow():
            raise SpecError("expires_at", expires_at.isoformat(), "a time in the future")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            row = EndpointToken(digest=digest(token), prefix=token[:10], expires_at=expires_at,
                                daily_tokens=daily_tokens)
            ep.tokens.append(row)
            s.flush()
            return {**_token_view(row), "token": token}

    def tokens(self, endpoint: str) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [_token_view(t) for t in get_endpoint(s, endpoint).tokens]

    def revoke_token(self, endpoint: str, token_id: int) -> None:
        with self.catalog.session() as s:
            row = next((t for t in get_endpoint(s, endpoint).tokens if t.id == token_id), None)
            if row is None:
                raise NotFound(f"token {token_id} of endpoint {endpoint}")
            row.revoked_at = row.revoked_at or utcnow()

    def set_budget(self, endpoint: str, who: int | str, daily_tokens: int | None) -> dict[str, Any]:
        """The budget of tokens a day (None: none) of a token (its id) or a RAG asking the endpoint (`rag:NAME`)."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            if isinstance(who, str) and who.startswith("rag:"):
                budgets = {k: v for k, v in (ep.caller_budgets or {}).items() if k != who}
                ep.caller_budgets = {**budgets, **({who: daily_tokens} if daily_tokens else {})}
                return {"caller": who, "daily_tokens": daily_tokens}
            row = next((t for t in ep.tokens if str(t.id) == str(who)), None)
            if row is None:
                raise NotFound(f"token {who} of endpoint {endpoint}")
            row.daily_tokens = daily_tokens
            return _token_view(row)

    def check_token(self, endpoint: str, authorization: str | None) -> str | None:
        """None when the request may pass; else why not (the gateway answers 401 with it). A public
        endpoint needs no token."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            if ep.public:
                return None
            token = token_from_header(authorization)
            if token is None:
                return ("this endpoint needs a token: send 'Authorization: Bearer <token>' (or 'BackendAI <token>'); "
                        f"issue one with `mlyard endpoints tokens issue {endpoint}`")
            wanted = digest(token)
            row = next((t for t in ep.tokens if hmac.compare_digest(t.digest, wanted)), None)
            if row is None:
                return "the token is not valid for this endpoint"
            if row.revoked_at is not None:
                return f"the token {row.prefix}... was revoked"
            if _aware(row.expires_at) <= utcnow():
                return f"the token {row.prefix}... expired at {_aware(row.expires_at).isoformat()}"
            return None

    def routing(self) -> dict[str, dict[str, Any]]:
        """What the gateway needs of every endpoint, read in one go: whether it is public, the models it has
        ever served, its default stage, its stages (with the routed Services of those that run on a cluster, resource id -> (model,
        URL)), and its tokens as digest -> (expiry as epoch seconds, revoked)."""
        with self.catalog.session() as s:
            served: dict[str, set[str]] = {}  # every model an endpoint has served: its old URLs stay answered
            for endpoint, model in s.execute(select(ServingHistory.endpoint, ServingHistory.model_name).distinct()):
                served.setdefault(endpoint, set()).add(model)
            return {ep.name: {"id": ep.id, "public": ep.public, "max_request_bytes": ep.max_request_bytes,
                              "project": ep.project,
                              "served_models": sorted(served.get(ep.name, ())),
                              "shadow_tolerance": (((ep.promotion_policy or {}).get("gates") or {}).get("shadow")
                                                   or {}).get("tolerance"),
                              "default": next((st.name for st in ep.stages if st.is_default), None),
                              "stages": {st.name: {"id": st.id, "status": st.status,
                                                   "rules": st.autoscaling_rules or [],
                                                   "max_replicas": st.max_replicas,
                                                   "weight": st.weight, "shadow": st.shadow,
                                                   "services": {r.id: (r.model_name, r.service_url,
                                                                       engine_health(r.runtime))
                                                                for r in st.resources if r.service_url}}
                                         for st in ep.stages},
                              "tokens": {t.digest: (_aware(t.expires_at).timestamp(), t.revoked_at is not None,
                                                    f"token:{t.id}") for t in ep.tokens},
                              "budgets": {**(ep.caller_budgets or {}),
                                          **{f"token:{t.id}": t.daily_tokens for t in ep.tokens if t.daily_tokens}}}
                    for ep in s.scalars(select(Endpoint).options(  # five queries however many endpoints
                        selectinload(Endpoint.stages).selectinload(EndpointStage.resources),
                        selectinload(Endpoint.tokens)))}

    # -- reading ----------------------------------------------------------------------------------

    def get(self, endpoint: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            return endpoint_view(get_endpoint(s, endpoint))

    def all(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [endpoint_view(ep) for ep in s.scalars(select(Endpoint).order_by(Endpoint.name))]

    def history(self, endpoint: str | None = None, stage: str | None = None) -> list[HistoryRecord]:
        with self.catalog.session() as s:
            q = select(ServingHistory).order_by(ServingHistory.started_at, ServingHistory.id)
            if endpoint is not None:
                q = q.where(ServingHistory.endpoint == endpoint)
            if stage is not None:
                q = q.where(ServingHistory.stage == stage)
            return [HistoryRecord(h.endpoint, h.stage, h.model_name, h.model_version, h.started_at, h.ended_at, h.note,
                                  h.share, h.shadow)
                    for h in s.scalars(q)]


TOKEN_PREFIX = "myd_"


def token_from_header(value: str | None) -> str | None:
    """The token of an Authorization header: `Bearer <t>` or Backend.AI's `BackendAI <t>`."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() not in ("bearer", "backendai") or not token.strip() or len(token) > 512:
        return None
    return token.strip()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def _token_view(t: EndpointToken) -> dict[str, Any]:
    expires = _aware(t.expires_at)
    state = "revoked" if t.revoked_at is not None else "expired" if expires <= utcnow() else "valid"
    return {"id": t.id, "prefix": t.prefix, "created_at": _aware(t.created_at).isoformat(),
            "expires_at": expires.isoformat(), "state": state, "daily_tokens": t.daily_tokens}

"""Traffic shares between an endpoint's stages, progressive promotions and the gateway's live counts, in
the catalog (DESIGN §8), with their rules in one place:

- only an ACTIVE stage other than the default takes a weight or a shadow share, and only if it serves a
  model the default stage serves (a request is split per model: the other models stay on the default);
- the weights of an endpoint's stages add up to at most 99: the default stage always answers some;
- every change of share ends the serving-history records of the stages it touches and opens new ones
  with the new shares, so the history says which version served what share, from when to when;
- one promotion in progress (RUNNING or PAUSED) per endpoint.

The flows act (flows/endpoint_traffic.py, flows/endpoint_rollout.py); the gateway reads `routing` and
writes live counts; the gates read them (tasks/promotion.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy import update as sql_update

from mlyard.core.errors import NotFound, Protected, SpecError
from mlyard.core.specs.promotion import ACTIVE_PROMOTION, PROMOTION_STATUSES, PolicySpec
from mlyard.registry.catalog import Catalog
from mlyard.registry.endpoint_rows import end_history, get_endpoint, stage_of
from mlyard.registry.tables import LiveCount, Promotion, ServingHistory, utcnow


class Traffic:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- shares -----------------------------------------------------------------------------------

    def set_share(self, endpoint: str, stage: str, weight: int | None = None, shadow: int | None = None,
                  note: str = "") -> dict[str, int]:
        """Give `stage` a weight and/or shadow share (None: unchanged); the endpoint's shares after it,
        stage -> weight, the default stage's included."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            st = stage_of(ep, stage)
            weight, shadow = self._check_share(ep, st, weight, shadow)
            if (weight, shadow) == (st.weight, st.shadow):
                return _shares(ep)
            default = next((x for x in ep.stages if x.is_default), None)
            others = sum(x.weight for x in ep.stages if x is not st)
            touched = [st] + ([default] if default is not None and weight != st.weight else [])
            why = note or f"weight {weight}" + (f", shadow {shadow}" if shadow else "")
            for x in touched:
                end_history(s, endpoint, x.name, [r for r in x.resources if r.status == "ACTIVE"], f"share changed: {why}")
            st.weight, st.shadow = weight, shadow
            total = others + weight
            for x in touched:
                share = (100 - total if total else None) if x.is_default else (x.weight or None)
                for r in x.resources:
                    if r.status == "ACTIVE":
                        s.add(ServingHistory(endpoint=endpoint, stage=x.name, model_name=r.model_name,
                                             model_version=r.model_version, note=why if x is st else f"resource {r.id}",
                                             share=share, shadow=(x.shadow or None)))
            return _shares(ep)

    def check_share(self, endpoint: str, stage: str, weight: int | None = None, shadow: int | None = None) -> None:
        """Raise unless `set_share` would take these shares now (its rules), changing nothing."""
        with self.catalog.session() as s:
            ep = get_endpoint(s, endpoint)
            self._check_share(ep, stage_of(ep, stage), weight, shadow)

    @staticmethod
    def _check_share(ep: Any, st: Any, weight: int | None, shadow: int | None) -> tuple[int, int]:
        """The rules of a share; the (weight, shadow) the stage would have."""
        if st.is_default:
            raise SpecError("stage", st.name, f"a stage other than the default ({st.name} is the default stage of "
                            f"{ep.name}: it answers whatever the others do not)")
        weight = st.weight if weight is None else weight
        shadow = st.shadow if shadow is None else shadow
        if (weight, shadow) == (st.weight, st.shadow):
            return weight, shadow
        if weight or shadow:
            if st.status != "ACTIVE":
                raise Protected(f"stage {ep.name}/{st.name} is {st.status}; only an ACTIVE stage takes traffic")
            if weight and shadow:
                raise SpecError("shadow", shadow, "0 while the stage has a weight (a stage either answers a share "
                                "or shadows it)")
            default = next((x for x in ep.stages if x.is_default), None)
            theirs = {r.model_name for r in default.resources} if default is not None else set()
            if default is None or not theirs & {r.model_name for r in st.resources}:
                raise SpecError("stage", st.name, f"a stage serving a model of the default stage "
                                f"({', '.join(sorted(theirs)) or 'none'}): requests are split per model")
        others = sum(x.weight for x in ep.stages if x is not st)
        if others + weight > 99:
            raise SpecError("weight", weight, f"at most {99 - others}: the stages' weights add up to at most 99 "
                            f"(the others take {others})")
        return weight, shadow

    # -- the policy -------------------------------------------------------------------------------

    def set_policy(self, endpoint: str, policy: PolicySpec | None) -> None:
        with self.catalog.session() as s:
            get_endpoint(s, endpoint).promotion_policy = policy.model_dump(mode="json") if policy else None

    def policy(self, endpoint: str) -> PolicySpec | None:
        with self.catalog.session() as s:
            data = get_endpoint(s, endpoint).promotion_policy
        return PolicySpec.model_validate(data) if data else None

    def is_default(self, endpoint: str, stage: str) -> bool:
        """Whether `stage` is the endpoint's default stage now (a promotion's candidate once promoted)."""
        with self.catalog.session() as s:
            return stage_of(get_endpoint(s, endpoint), stage).is_default

    # -- promotions -------------------------------------------------------------------------------

    def check_start(self, endpoint: str, stage: str, policy: PolicySpec) -> None:
        """Raise unless `stage` may start a promotion under `policy` now (the rules of `start`)."""
        with self.catalog.session() as s:
            self._check_start(s, endpoint, stage, policy)

    def _check_start(self, s: Any, endpoint: str, stage: str, policy: PolicySpec) -> None:
        ep = get_endpoint(s, endpoint)
        st = stage_of(ep, stage)
        if st.is_default:
            raise SpecError("stage", stage, f"a stage other than the default ({stage} already is)")
        if st.status != "ACTIVE":
            raise Protected(f"stage {endpoint}/{stage} is {st.status}; only an ACTIVE stage can be promoted")
        others = sum(x.weight for x in ep.stages if x is not st)
        highest = max((w for w in policy.steps if w < 100), default=0)
        if others + highest > 99:
            raise SpecError("steps", policy.steps, f"steps below 100 of at most {99 - others}: other stages of "
                            f"{endpoint} take {others} % (set their weight to 0 first)")
        busy = s.scalar(select(Promotion).where(Promotion.endpoint == endpoint, Promotion.status.in_(ACTIVE_PROMOTION)))
        if busy is not None:
            raise Protected(f"endpoint {endpoint} already has a promotion in progress ({busy.stage}, {busy.status}); "
                            f"resume or abort it first (`mlyard endpoints rollout resume|abort {endpoint}`)")

    def start(self, endpoint: str, stage: str, policy: PolicySpec, flow_run_id: str | None) -> dict[str, Any]:
        with self.catalog.session() as s:
            self._check_start(s, endpoint, stage, policy)
            row = Promotion(endpoint=endpoint, stage=stage, policy=policy.model_dump(mode="json"), status="RUNNING",
                            step=0, phase="evaluation", gates=[], flow_run_id=flow_run_id, heartbeat_at=utcnow())
            s.add(row)
            s.flush()
            return _promotion_view(row)

    def active(self, endpoint: str) -> dict[str, Any] | None:
        """The promotion in progress on `endpoint` (RUNNING or PAUSED), or None."""
        with self.catalog.session() as s:
            get_endpoint(s, endpoint)
            row = s.scalar(select(Promotion).where(Promotion.endpoint == endpoint,
                                                   Promotion.status.in_(ACTIVE_PROMOTION)))
            return _promotion_view(row) if row is not None else None

    def promotions(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            q = select(Promotion).order_by(Promotion.id)
            if endpoint is not None:
                q = q.where(Promotion.endpoint == endpoint)
            return [_promotion_view(p) for p in s.scalars(q)]

    def update(self, promotion_id: int, *, gate: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Change a promotion's status, phase, step, reason or flow run; `gate` appends a judgement. Its status
        changes only while it is in progress: an ended promotion (a person's abort) stays ended, even when a
        run that read it just before writes RUNNING or PAUSED (Protected)."""
        if "status" in fields and fields["status"] not in PROMOTION_STATUSES:
            raise SpecError("status", fields["status"], f"one of {', '.join(PROMOTION_STATUSES)}")
        with self.catalog.session() as s:
            if "status" in fields:  # one conditional UPDATE first: it holds the row (or the database) to commit
                moved = s.scalar(sql_update(Promotion).where(Promotion.id == promotion_id,
                                                             Promotion.status.in_(ACTIVE_PROMOTION))
                                 .values(updated_at=utcnow()).returning(Promotion.id))
                if moved is None and (ended := s.get(Promotion, promotion_id)) is not None:
                    raise Protected(f"promotion {promotion_id} of {ended.endpoint}/{ended.stage} already ended "
                                    f"({ended.status}); start a new one with `mlyard endpoints rollout start`")
            row = s.get(Promotion, promotion_id)
            if row is None:
                raise NotFound(f"promotion {promotion_id}")
            for key, value in fields.items():
                setattr(row, key, value)
            if gate is not None:
                row.gates = [*row.gates, gate]
            row.updated_at = row.heartbeat_at = utcnow()
            return _promotion_view(row)

    def heartbeat(self, promotion_id: int) -> str:
        """Note that the promotion's run is alive; its status now (a person may have paused or aborted it)."""
        with self.catalog.session() as s:
            row = s.get(Promotion, promotion_id)
            if row is None:
                raise NotFound(f"promotion {promotion_id}")
            row.heartbeat_at = utcnow()
            return row.status

    def claim_orphan(self, promo: dict[str, Any]) -> bool:
        """Take up a RUNNING promotion whose run is gone, as `promo` was read: one of several watchers (the
        scheduler, `mlyard up`) wins, the others find it claimed. The winner's claim counts a resume and
        freshens its heartbeat, so that it looks alive while its new run starts."""
        with self.catalog.session() as s:
            claimed = s.scalar(sql_update(Promotion).where(
                Promotion.id == promo["id"], Promotion.status == "RUNNING", Promotion.resumes == promo["resumes"])
                .values(resumes=Promotion.resumes + 1, heartbeat_at=utcnow()).returning(Promotion.id))
            return claimed is not None

    def mark_stage(self, endpoint: str, stage: str, reason: str) -> None:
        """Write why on the stage (a failed gate and its measured value)."""
        with self.catalog.session() as s:
            stage_of(get_endpoint(s, endpoint), stage).reason = reason

    # -- live counts ------------------------------------------------------------------------------

    def write_counts(self, gateway: str, counts: dict[tuple[str, str], dict[str, Any]]) -> None:
        """One gateway replica's running totals, per (endpoint, stage)."""
        now = time.time()
        with self.catalog.session() as s:
            rows = {(r.endpoint, r.stage): r for r in s.scalars(select(LiveCount).where(LiveCount.gateway == gateway))}
            for (endpoint, stage), c in counts.items():
                row = rows.get((endpoint, stage))
                if row is None:
                    s.add(LiveCount(gateway=gateway, endpoint=endpoint, stage=stage, counts=c, updated_at=now))
                else:
                    row.counts, row.updated_at = c, now

    def read_counts(self, endpoint: str, stage: str) -> dict[str, dict[str, Any]]:
        """Every gateway replica's running totals for a stage: gateway id -> counts."""
        with self.catalog.session() as s:
            return {r.gateway: r.counts for r in s.scalars(select(LiveCount).where(
                LiveCount.endpoint == endpoint, LiveCount.stage == stage))}


STALE_SECONDS = 15  # a promotion whose run has not looked in for this long has no run any more


def orphaned(promo: dict[str, Any]) -> bool:
    """Whether a promotion in progress has no run moving it (it ended, or the stack stopped under it)."""
    if promo["flow_run_id"] is None or promo["heartbeat_at"] is None:
        return True
    return (utcnow() - _aware(datetime.fromisoformat(promo["heartbeat_at"]))).total_seconds() > STALE_SECONDS


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def _shares(ep) -> dict[str, int]:
    total = sum(st.weight for st in ep.stages if not st.is_default)
    return {st.name: (100 - total if st.is_default else st.weight) for st in ep.stages}


def _promotion_view(p: Promotion) -> dict[str, Any]:
    policy = PolicySpec.model_validate(p.policy)
    return {"id": p.id, "endpoint": p.endpoint, "stage": p.stage, "status": p.status, "phase": p.phase,
            "step": p.step, "weight": policy.steps[p.step] if p.phase == "steps" and p.step < len(policy.steps) else 0,
            "steps": policy.steps, "policy": p.policy, "gates": p.gates, "reason": p.reason,
            "flow_run_id": p.flow_run_id, "heartbeat_at": _aware(p.heartbeat_at).isoformat() if p.heartbeat_at else None,
            "resumes": p.resumes or 0, "created_at": p.created_at.isoformat(), "updated_at": p.updated_at.isoformat()}

"""The catalog rows behind registry/endpoints.py: finding an endpoint and its stages, building stage
and resource rows from a spec, the seeds' rules on statuses and deletion, the serving history, and
the view `mlyard endpoints show` prints.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlyard.core.errors import EndpointNotFound, NotFound, Protected, SpecError
from mlyard.core.specs.endpoint import (
    BUSY,
    StageResourceSpec,
    StageSpec,
)
from mlyard.registry.tables import Endpoint, EndpointStage, ServingHistory, StageResource, utcnow

Version = tuple[str, str]  # (model name, version)


def get_endpoint(s: Session, name: str) -> Endpoint:
    ep = s.scalar(select(Endpoint).where(Endpoint.name == name))
    if ep is None:
        raise EndpointNotFound(name)
    return ep


def stage_of(ep: Endpoint, name: str) -> EndpointStage:
    st = next((st for st in ep.stages if st.name == name), None)
    if st is None:
        raise NotFound(f"{ep.name}/{name}")
    return st


def new_stage(spec: StageSpec, versions: list[Version], default: bool) -> EndpointStage:
    if len(versions) != len(spec.resources):
        raise SpecError("stage.resources", len(spec.resources), f"one resolved model version each ({len(versions)} given)")
    return EndpointStage(name=spec.name, is_default=default, description=spec.description,
                         instance_type=spec.instance_type, instance_count=spec.instance_count,
                         node_autoscaler=spec.node_autoscaler.model_dump(),
                         autoscaling_rules=[r.model_dump() for r in spec.autoscaling_rules],
                         max_replicas=spec.max_replicas, status="CREATE REQUESTED",
                         gateway_status="CREATE IN PROGRESS",
                         resources=[new_resource(r, v) for r, v in zip(spec.resources, versions)])


def new_resource(spec: StageResourceSpec, version: Version) -> StageResource:
    return StageResource(model_name=version[0], model_version=str(version[1]), description=spec.description,
                         cpu=spec.cpu, memory=spec.memory, gpu=spec.gpu, pods=spec.pods,
                         pod_autoscaler=spec.pod_autoscaler.model_dump(), status="CREATE REQUESTED",
                         runtime=spec.runtime.model_dump() if spec.runtime else None)


def check_allowed(status: str, allowed: tuple[str, ...], kind: str) -> None:
    if status not in allowed:
        raise SpecError(f"{kind} status", status, f"one of {', '.join(allowed)}")


def check_not_busy(name: str, kind: str, status: str, action: str) -> None:
    if status in BUSY:
        raise Protected(f"{kind} {name} is {status}; wait until it is done before you {action}")


def check_deletable_stage(ep: Endpoint, st: EndpointStage, deleting: bool = False) -> None:
    if st.is_default:
        raise Protected(f"stage {ep.name}/{st.name} is the endpoint's default stage and cannot be deleted; make "
                        "another stage the default first (`mlyard endpoints promote`)")
    if not (deleting and st.status == "DELETE IN PROGRESS"):
        check_not_busy(f"{ep.name}/{st.name}", "stage", st.status, "delete it")


def check_deletable_endpoint(ep: Endpoint, deleting: bool = False) -> None:
    others = [st.name for st in ep.stages if not st.is_default]
    if others:
        raise Protected(f"endpoint {ep.name!r} has stages other than the default ({', '.join(others)}); "
                        "delete them first")
    if ep.status in ("CREATE REQUESTED", "CREATE IN PROGRESS", "DELETE IN PROGRESS") and not (
            deleting and ep.status == "DELETE IN PROGRESS"):
        check_not_busy(ep.name, "endpoint", ep.status, "delete it")


def end_history(s: Session, endpoint: str, stage: str, resources: list[StageResource], note: str = "") -> None:
    now = utcnow()
    for res in resources:
        open_ = s.scalars(select(ServingHistory).where(
            ServingHistory.endpoint == endpoint, ServingHistory.stage == stage,
            ServingHistory.model_name == res.model_name, ServingHistory.model_version == res.model_version,
            ServingHistory.ended_at.is_(None)))
        for h in open_:
            h.ended_at = now
            if note:
                h.note = f"{h.note}; {note}" if h.note else note


def endpoint_view(ep: Endpoint) -> dict[str, Any]:
    default = next((st.name for st in ep.stages if st.is_default), None)
    return {"id": ep.id, "name": ep.name, "project": ep.project, "description": ep.description, "public": ep.public,
            "max_request_bytes": ep.max_request_bytes, "status": ep.status,
            "reason": ep.reason, "default_stage": default, "created_at": ep.created_at.isoformat(),
            "stages": [{"id": st.id, "name": st.name, "default": st.is_default, "description": st.description,
                        "status": st.status, "gateway_status": st.gateway_status, "reason": st.reason,
                        "instance_type": st.instance_type, "instance_count": st.instance_count,
                        "node_autoscaler": st.node_autoscaler, "autoscaling_rules": st.autoscaling_rules or [],
                        "max_replicas": st.max_replicas, "weight": st.weight, "shadow": st.shadow,
                        "resources": [{"id": r.id, "model": f"{r.model_name}/{r.model_version}", "status": r.status,
                                       "description": r.description, "cpu": r.cpu, "memory": r.memory, "gpu": r.gpu,
                                       "pods": r.pods, "pod_autoscaler": r.pod_autoscaler, "reason": r.reason,
                                       "service_url": r.service_url, "runtime": r.runtime}
                                      for r in st.resources]}
                       for st in ep.stages]}

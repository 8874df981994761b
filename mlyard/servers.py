"""VRidge's servers: a thin face over one-stage endpoints (`mlyard servers ...`). A server is an
endpoint with one stage serving one model; its status is PENDING until every replica answers, then
RUNNING; STOPPED; FAILED when its deploy failed.
"""

from __future__ import annotations

from typing import Any

from mlyard import endpoints
from mlyard.core.errors import MlyardError
from mlyard.core.specs.endpoint import PromotionSpec


def server_status(view: dict[str, Any]) -> str:
    """PENDING until every replica answers, then RUNNING; STOPPED; FAILED when its deploy failed."""
    stage = next((s for s in view["stages"] if s["default"]), None)
    if view["status"] == "STOPPED" or (stage and stage["status"] == "STOPPED"):
        return "STOPPED"
    if view["status"] == "CREATE FAILED" or (stage and stage["status"].endswith("FAILED")):
        return "FAILED"
    if view["status"] == "DELETE IN PROGRESS":
        return "DELETING"
    replicas = (stage or {}).get("replicas", [])
    if view["status"] == "ACTIVE" and replicas and all(r.get("status") == "HEALTHY" for r in replicas):
        return "RUNNING"
    return "PENDING"


def server_view(name: str) -> dict[str, Any]:
    view = endpoints.show(name)
    stage = next(s for s in view["stages"] if s["default"])
    res = stage["resources"][0] if stage["resources"] else {}
    return {"id": view["id"], "name": view["name"], "status": server_status(view), "model": res.get("model"),
            "replicas": len(stage.get("replicas", [])), "public": view["public"], "created_at": view["created_at"],
            "url": next(iter(view["urls"]["default"].values()), None), "reason": stage.get("reason") or view["reason"],
            "description": view["description"]}


def server_create(name: str, model: str, *, pods: int = 1, public: bool = False, description: str = "",
                  submit: bool = False) -> dict[str, Any]:
    """Create a server: an endpoint with one stage serving `model` (PENDING, then RUNNING)."""
    endpoints.create({"name": name, "description": description, "public": public,
            "stage": {"resources": [{"model": model, "pods": pods}]}}, submit=submit)
    return server_view(name)


def server_stop(name: str) -> dict[str, Any]:
    """Stop a server's replicas; its configuration stays (STOPPED)."""
    view = endpoints.endpoint_registry().get(name)
    endpoints.act("stop-endpoint-stage", "mlyard.flows.endpoint_stop:stop_stage", PromotionSpec(endpoint=name, stage=view["default_stage"]),
         False)
    return server_view(name)


def server_start(name: str) -> dict[str, Any]:
    """Start a stopped server again (PENDING until it answers, then RUNNING)."""
    view = endpoints.endpoint_registry().get(name)
    endpoints.act("start-endpoint-stage", "mlyard.flows.endpoint_start:start_stage",
         PromotionSpec(endpoint=name, stage=view["default_stage"]), False)
    return server_view(name)


def servers() -> list[dict[str, Any]]:
    out = []
    for ep in endpoints.list_endpoints():
        try:
            out.append(server_view(ep["name"]))
        except MlyardError:
            continue
    return out

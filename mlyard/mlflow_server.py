"""MLflow's tracking server as the cluster runs it (infra/k8s/base/mlflow.yaml: `mlflow server --app-name
mlyard-server`, the MLflow app plugin `mlyard-server` of pyproject's `mlflow.app` entry points): MLflow's
own app, unchanged, answering the platform's processes alone, with its requests counted and timed for
Prometheus at /metrics.

Every request but the probes' /health shows the tracking credential (`Authorization: Bearer` of
core/connection.tracking_token, derived from the internal one; MLflow's clients send MLFLOW_TRACKING_TOKEN
so, which core/settings.Settings.engine_env sets in every platform process): whatever else runs in the
namespace (a model's server, a notebook's kernel, a training's script) is answered 401 before anything is
read. /metrics answers the internal credential itself (`Authorization: Bearer $MLYARD_INTERNAL_TOKEN`).
The server does not start without it.

The counts are by route template (MLflow's own rule, `/api/2.0/mlflow/traces/<request_id>`; never a
caller's path, which would grow the metrics without bound) and status, as the mlyard API's. The server runs several worker
processes: prometheus_client's multiprocess mode adds them up (PROMETHEUS_MULTIPROC_DIR, a folder the
container empties at start), so one scrape of any worker sees them all."""

from __future__ import annotations

import hmac
import os
from typing import Any

from mlyard.core.environment import metrics_folder
from mlyard.measured import Measured, router_route

METRICS = "/metrics"
HEALTH = "/health"  # the kubelet's probes: no credential


class Metered:
    """ASGI middleware of the tracking server (see the module): /health for anyone, /metrics for the internal
    credential, every other request for the tracking credential, and measured (mlyard/measured.py) by
    MLflow's route template."""

    def __init__(self, app: Any, flask_app: Any, token: str | None):
        from mlyard.core.environment import tracking_token

        self.token = (token or "").encode()
        self.tracking = b"Bearer " + tracking_token(token).encode() if token else b""
        self.rules = flask_app.url_map.bind("mlflow")
        self.app = Measured(app, None, "mlyard_mlflow", "MLflow's tracking server", route=self.route)

    def route(self, scope: dict) -> str:
        if scope.get("route") is not None:  # one of MLflow's FastAPI routes
            return router_route(scope)
        try:  # one of its Flask app's rules
            rule, _ = self.rules.match(scope["path"], method=scope["method"], return_rule=True)
            return rule.rule
        except Exception:  # noqa: BLE001 - werkzeug's NotFound, MethodNotAllowed, a redirect
            return "other"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS:
            return await self._metrics(scope, send)
        if scope["type"] in ("http", "websocket") and scope["path"] != HEALTH:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not self.tracking or not hmac.compare_digest(given, self.tracking):
                return await _refuse(scope, send, b"the platform's tracking credential is needed\n")
        await self.app(scope, receive, send)

    async def _metrics(self, scope: dict, send: Any) -> None:
        from mlyard.serving.access import is_scrape

        if not self.token or not is_scrape(b"Bearer " + self.token, list(scope.get("headers") or [])):
            return await _refuse(scope, send, b"the platform's internal or scrape credential is needed\n")
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
        await send({"type": "http.response.body", "body": body})


async def _refuse(scope: dict, send: Any, why: bytes) -> None:
    """401, before anything of the request is read (a websocket: closed before it is accepted)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": why})


def app() -> Metered:
    """The app factory MLflow's server runs (`uvicorn --factory`)."""
    folder = metrics_folder()
    if not folder:
        raise SystemExit("mlyard-server: set PROMETHEUS_MULTIPROC_DIR to a folder of its own (emptied at start), "
                         "where the workers keep their counts")
    os.makedirs(folder, exist_ok=True)
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app as fastapi_app

    from mlyard.core.settings import Settings

    token = Settings().internal_token  # MLYARD_INTERNAL_TOKEN, from the settings Secret
    if token is None or not token.get_secret_value():
        raise SystemExit("mlyard-server: set MLYARD_INTERNAL_TOKEN (`mlyard_internal_token` in the mlyard-settings "
                         "Secret): the tracking server answers the platform's processes alone, by a credential "
                         "derived from it")
    return Metered(fastapi_app, flask_app, token.get_secret_value())

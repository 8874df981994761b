"""The MLflow UI as mlyard starts it (`mlyard ui mlflow`): MLflow's own server app behind MLflow's own
basic auth (the `basic-auth` app of `mlflow[auth]`), registered as the MLflow app plugin `mlyard`
(pyproject's `mlflow.app` entry point, started with `mlflow ui --app-name mlyard`), whose page sets the
browser's defaults for an ML platform before MLflow's code reads them.

Every request but `/health` and the static files signs in: as the stack's admin (`mlyard`, with the
password `mlyard up` made for this home, `auth_config`), or as a project member with their name and their
mlyard API key for a password (`authenticate`), who then holds MLflow's permissions on their projects'
experiments and models alone (registry/mlflow_permissions.py). Another account of the machine can neither
read the registry nor move an alias. The admin, its password and MLflow's permission store are MLflow's own
(`MLFLOW_AUTH_CONFIG_PATH`, an ini file in the home, mode 0600).

MLflow 3.17's UI keeps its choices in the browser's localStorage, as `<key>_v<version>` holding JSON:
- `mlflow.workflowType`: the GenAI view (MLflow's default) or the model-training one. mlyard's
  experiments hold trainings, so a browser that has not chosen opens in the model-training view; a
  person's own choice is kept. (mlyard's links also carry `?workflowType=machine_learning`.)
- `mlflow.assistant.fab.autoOpenedOnFirstLoad`: the assistant panel (a GenAI chat) opens itself once;
  it stays closed until a person opens it.
- With telemetry off (`MLFLOW_DISABLE_TELEMETRY`, mlyard's default): the UI's own telemetry switch is set
  off, and its notice "MLflow collects usage data" is marked read. The server drops whatever the UI
  would send (MLflow's `post_ui_telemetry_handler` when telemetry is disabled), and the browser talks to
  nothing but this server, so the notice would tell a person something untrue here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_DEFAULTS = {"mlflow.workflowType_v1": "machine_learning", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
_TELEMETRY_OFF = {"mlflow.telemetry.info.alert.dismissed_v1": True, "mlflow.settings.telemetry.enabled_v1": False}


def page_script(telemetry_off: bool) -> bytes:
    """The script put first in the page's <head>: defaults where the browser has none, and the telemetry
    settings when telemetry is off."""
    unset = {k: json.dumps(v) for k, v in _DEFAULTS.items()}
    forced = {k: json.dumps(v) for k, v in _TELEMETRY_OFF.items()} if telemetry_off else {}
    return ("<script>(function(){try{var s=window.localStorage,d=" + json.dumps(unset) + ",f=" + json.dumps(forced)
            + ";for(var k in d){if(s.getItem(k)===null){s.setItem(k,d[k]);}}for(var k in f){s.setItem(k,f[k]);}}"
            "catch(e){}})();</script>").encode()


class WithDefaults:
    """ASGI middleware: the page MLflow serves at / (text/html) with `page_script` after its <head>;
    every other response (an artifact that is a web page among them) passes untouched."""

    def __init__(self, app: Any, telemetry_off: bool):
        self.app, self.script = app, page_script(telemetry_off)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                html = headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers
                if not html:
                    await send(message)
                    return
                start.update(message)
                return
            if not start:  # not the page: as it came
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body).replace(b"<head>", b"<head>" + self.script, 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-length", b"etag")]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, sending)


def app() -> WithDefaults:
    """The app factory MLflow's server runs (`uvicorn --factory`): MLflow's basic-auth app (it reads
    `MLFLOW_AUTH_CONFIG_PATH` and bootstraps the admin) with the page defaults. Telemetry is read as
    MLflow's server itself reads it: off, it drops what the UI would report."""
    from mlflow.server.auth import create_app
    from mlflow.telemetry.utils import is_telemetry_disabled

    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # it holds the catalog's URL and MLflow's admin password, as every stack process its own
    return WithDefaults(create_app(), is_telemetry_disabled())


ADMIN = "mlyard"
SYNC_SECONDS = 5.0  # a member's MLflow permissions are brought in step with their roles at most this often
_synced: dict[str, tuple[float, tuple]] = {}  # when each person's permissions were last brought in step, to what


def authenticate() -> Any:
    """MLflow's authorization function here (`authorization_function` in the home's ini): a project member
    signs in with their name and their mlyard API key as the password (the key is checked in the catalog
    on every request, so a revoked key stops at once), and MLflow's permissions are kept in step with their
    roles (registry/mlflow_permissions.py); the admin signs in with MLflow's own password, as before."""
    from flask import g, request
    from mlflow.server.auth import authenticate_request_basic_auth

    if getattr(g, "mlyard_user", None) is not None:  # MLflow asks again for each check of the same request
        return g.mlyard_user
    from werkzeug.datastructures import Authorization

    from mlyard.core.errors import MlyardError
    from mlyard.teams import teams

    vouched = _signed_in_by_proxy(request)
    if vouched is not None:
        return vouched
    given = request.authorization
    if given is None or not (given.password or "").startswith("mly_"):
        return authenticate_request_basic_auth()

    try:
        actor = teams().authenticate(given.password or "", request.remote_addr or "unknown")
    except MlyardError:  # no key of ours: MLflow's own users and passwords decide
        return authenticate_request_basic_auth()
    if (refused := platform_only(request.method, request.path, actor.admin)) is not None:
        return refused
    _keep_in_step(actor)
    g.mlyard_user = Authorization("basic", {"username": actor.name, "password": given.password})
    return g.mlyard_user


# what the platform alone does in MLflow: an experiment's or a registered model's name, tags and artifact
# location are the project's (a member pre-created `pd/default` with its artifacts in their own storage, and
# the next project's models landed there), and the UI's artifact proxy is written by the platform's runs
_PLATFORM_ONLY = re.compile(r"^/(ajax-)?api/[23]\.0/mlflow/(experiments/(create|update|delete|restore|"
                            r"set-experiment-tag|delete-experiment-tag)|registered-models/(create|rename))$")
_ARTIFACT_PROXY = re.compile(r"^/(ajax-)?api/[23]\.0/mlflow-artifacts/")


def platform_only(method: str, path: str, admin: bool) -> Any:
    """A 403 for a member asking for what the platform alone does in MLflow (making, renaming or tagging an
    experiment or a registered model, writing through the artifact proxy); None otherwise. It names no
    experiment or model, so a refusal reveals nothing of another project's."""
    if admin or not (_PLATFORM_ONLY.match(path) or _ARTIFACT_PROXY.match(path) and method not in ("GET", "HEAD")):
        return None
    from flask import Response

    return Response(json.dumps({"error_code": "PERMISSION_DENIED", "message": "projects' experiments, models and "
                                "artifacts are made by the platform: start a training or `mlyard models create`"}),
                    status=403, mimetype="application/json")


def _signed_in_by_proxy(request: Any) -> Any:
    """Behind the cluster's sign-in (infra/k8s/components/sign-in: oauth2-proxy in this pod, the only way in,
    MLflow on 127.0.0.1), the person and groups its headers name, with MLflow's permissions in step with their
    roles; None without the setting (`door_trusted_proxy`), whose headers are then nobody's word."""
    from flask import g
    from werkzeug.datastructures import Authorization

    from mlyard.core.settings import Settings
    from mlyard.teams import teams

    who = request.headers.get("X-Forwarded-Preferred-Username") or request.headers.get("X-Forwarded-User")
    if not who or not Settings().door_trusted_proxy:
        return None
    groups = request.headers.get("X-Forwarded-Groups", "").split(",")
    actor = teams().identity(who.strip(), groups, request.remote_addr or "oidc")
    if (refused := platform_only(request.method, request.path, actor.admin)) is not None:
        return refused
    _keep_in_step(actor)
    g.mlyard_user = Authorization("basic", {"username": actor.name, "password": ""})
    return g.mlyard_user


def _keep_in_step(actor: Any) -> None:
    import time

    from mlflow.server.auth import store

    from mlyard.core.connection import connect
    from mlyard.registry.mlflow_permissions import keep_in_step, wanted

    roles = (actor.admin, tuple(sorted(actor.roles.items())))  # a changed role or group: in step at once
    at, had = _synced.get(actor.name, (-SYNC_SECONDS, ()))
    if time.monotonic() - at < SYNC_SECONDS and had == roles:
        return
    experiments, models = wanted(connect().mlflow_uri, {} if actor.admin else actor.roles)
    keep_in_step(store, actor.name, actor.admin, experiments, models)
    _synced[actor.name] = (time.monotonic(), roles)


def auth_env(home: Path) -> dict[str, str]:
    """The environment MLflow's server reads its auth from: the home's configuration (made once, mode
    0600, beside MLflow's permission store `mlflow-auth.db`) and Flask's CSRF key. The admin's password
    there outlives `mlyard down`: MLflow keeps the admin it bootstrapped and ignores a new bootstrap
    password once the admin exists."""
    config = _config(home)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(home / CONFIG), "MLFLOW_FLASK_SERVER_SECRET_KEY": config["secret_key"]}


def admin_password(home: Path) -> str:
    """The password of the MLflow UI's admin (`mlyard`) for this home."""
    return _config(home)["admin_password"]


CONFIG = "mlflow-auth.ini"


def _config(home: Path) -> dict[str, str]:
    import configparser
    import os

    path = home / CONFIG
    config = configparser.ConfigParser(interpolation=None)
    if path.is_file():
        config.read(path)
        if config["mlflow"].get("authorization_function") == AUTHENTICATE:
            return dict(config["mlflow"])
        # a home from before project members: they sign in with their keys, and see their projects' alone
        config["mlflow"].update(authorization_function=AUTHENTICATE, default_permission="NO_PERMISSIONS")
    else:
        config["mlflow"] = _new_config(home)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)
    os.replace(tmp, path)
    return dict(config["mlflow"])


AUTHENTICATE = "mlyard.mlflow_ui:authenticate"


def _new_config(home: Path) -> dict[str, str]:
    import secrets

    return {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": f"sqlite:///{home / 'mlflow-auth.db'}",
        "admin_username": ADMIN,
        "admin_password": secrets.token_urlsafe(18),
        "secret_key": secrets.token_urlsafe(32),
        "authorization_function": AUTHENTICATE,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m mlyard.mlflow_ui --home DIR`: the auth configuration MLflow's server reads, written in DIR
    (MLFLOW_AUTH_CONFIG_PATH=DIR/mlflow-auth.ini), and its Flask key printed: how the cluster's MLflow UI
    (infra/k8s/components/sign-in) starts, on its pod's own storage (its permission store is kept in step
    with the platform's roles at each sign-in, so it needs keeping nowhere else)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlyard.mlflow_ui", description="the MLflow UI's auth configuration")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    print(auth_env(args.home)["MLFLOW_FLASK_SERVER_SECRET_KEY"])


if __name__ == "__main__":
    main()

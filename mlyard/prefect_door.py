"""mlyard's front door to the Prefect UI and API, for project members (DESIGN §15).

Prefect's open-source server has one credential (its basic-auth string) and no users, roles or projects:
whoever holds that string is its owner. So only the platform holds it, and people reach Prefect through
this door. The door signs them in and forwards what their project allows, with the platform's credential:
- It signs people in (mlyard/door_sign_in.py) with a session cookie from the sign-in page, or with an API
  key as a bearer token (a script). On a cluster, oauth2-proxy may sign them in instead, with the company's
  identity provider (infra/k8s/components/sign-in): with `door_trusted_proxy`, the door listens on
  127.0.0.1 in the proxy's pod and takes the user and groups from the proxy's headers (groups may grant
  roles: core/access.roles_of_groups). Otherwise those headers are ignored, and never forwarded.
- It serves Prefect's own UI, unchanged, except that `/ui-settings` tells the UI that the API is here and
  that it needs no password of its own.
- It forwards an admin's requests as they are.
- It serves the dashboard of a person's projects, and a notebook's JupyterLab to its user and admins
  (mlyard/door_pages.py).
- It forwards a member's requests only as mlyard/prefect_rules.py allows them, narrowed to the project they
  signed in to. Their Run button makes the run through mlyard (mlyard/submit.py create_run): the spec is
  checked, the run is confined to the project's storage and quota, its tags are set by the platform, and
  it is recorded in the audit trail. Everything the rules do not know is denied.

It is not a fork of Prefect: Prefect's server and UI run as released, and the door is an HTTP proxy in
the mlyard API's process (a second listener, `door_port`), on 127.0.0.1 on one machine. Requests are
bounded before the body is read: a 1 MiB body, a credential checked first, same-origin writes only (a
page on another port of this machine cannot press Run for you), 64 connections at once.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from mlyard import door_sign_in as door
from mlyard import prefect_rules as rules
from mlyard.core.errors import HttpError, MlyardError
from mlyard.door_pages import PREFIX as NOTEBOOKS
from mlyard.door_pages import DoorPages

log = logging.getLogger("mlyard.door")

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"proxy-authorization",
        b"proxy-authenticate", b"host", b"content-length"}
_NOT_UPSTREAM = _HOP | {b"authorization", b"cookie", b"x-mlyard-project", b"origin", b"referer", b"x-forwarded-user",
                        b"x-forwarded-email", b"x-forwarded-groups", b"x-forwarded-preferred-username",
                        b"x-forwarded-access-token"}


class PrefectDoor:
    def __init__(self, prefect_api_url: str, prefect_auth: str | None, secret: bytes, trusted_proxy: bool = False):
        import httpx

        self.root = prefect_api_url.rstrip("/").removesuffix("/api")
        self.upstream = [(b"authorization", b"Basic " + base64.b64encode(prefect_auth.encode()))] if prefect_auth else []
        self.client = httpx.AsyncClient(base_url=self.root, timeout=httpx.Timeout(60.0, connect=5.0),
                                        limits=httpx.Limits(max_connections=64))
        self.secret, self.trusted_proxy = secret, trusted_proxy
        self._allowed: tuple[float, list[str]] = (0.0, [])
        self.pages = DoorPages(frozenset(_NOT_UPSTREAM), frozenset(_HOP))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            from mlyard.serving.asgi import lifespan

            return await lifespan(receive, send)
        if scope["type"] == "websocket" and scope["path"].startswith(NOTEBOOKS) and rules.plain(scope["path"]):
            return await self.pages.websocket(scope, receive, send, await self._actor(scope), lambda: self._actor(scope))
        if scope["type"] != "http":  # Prefect's websockets (events, logs) are not scoped by project: closed
            return await send({"type": "websocket.close", "code": 1008})
        try:
            await self._serve(scope, receive, send)
        except MlyardError as exc:  # a refusal (HttpError: a body the door cannot narrow, ...): nothing forwarded
            await door.answer_json(send, exc.http_status, door.detail(str(exc)))

    async def _serve(self, scope: dict, receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        if not rules.plain(path):  # `/x/../api/...` would reach Prefect's API as a page: no dot segments at all
            raise HttpError(400, f"{path!r} is not a plain path (no '.' or '..' segments, '//' or '\\')")
        if path in ("/sign-in", "/sign-out"):
            return await self._sign_in(scope, receive, send)
        if path == "/api/health" and method == "GET":
            return await self._forward(scope, send, None)
        actor = await self._actor(scope)
        if actor is None:
            if path.startswith("/api/") or method not in ("GET", "HEAD"):
                raise HttpError(401, "sign in at /sign-in (an mlyard API key) or send one as a bearer token")
            # the sign-in page, here (401: nobody is in), back to this page once signed in
            return await door.answer_html(send, 401, door.page(path + ("?" + scope["query_string"].decode("latin-1")
                                                                    if scope["query_string"] else "")))
        door.same_origin(scope)
        if self.pages.serves(path):  # the dashboard, a notebook's JupyterLab (mlyard/door_pages.py)
            return await self.pages.http(scope, receive, send, actor)
        if path == "/ui-settings":
            return await self._ui_settings(scope, send)
        if not path.startswith("/api/"):
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"{method} {path}: the UI's pages are only read")
            return await self._forward(scope, send, None)
        body = await door.body(scope, receive) if method not in ("GET", "HEAD") else None
        if actor.admin:
            return await self._forward(scope, send, body)
        await self._member(scope, send, actor, body)

    # -- who asks ----------------------------------------------------------------------------------------------

    async def _actor(self, scope: dict):
        """The actor of a request: a bearer API key, else the session cookie's key (read again every time)."""
        import anyio

        from mlyard.teams import teams

        headers = dict(scope["headers"])
        source = (scope.get("client") or ("", 0))[0] or "unknown"
        auth = headers.get(b"authorization", b"")
        project = headers.get(b"x-mlyard-project", b"").decode("latin-1").strip() or None
        who = headers.get(b"x-forwarded-preferred-username") or headers.get(b"x-forwarded-user")
        if self.trusted_proxy and who:  # oauth2-proxy, the only one that reaches this door, signed them in
            name = who.decode("latin-1").strip()
            groups = headers.get(b"x-forwarded-groups", b"").decode("latin-1").split(",")
            call = lambda: teams().identity(name, groups, "oidc", project)  # noqa: E731
        elif auth.startswith(b"Bearer mly_"):
            key = auth[len(b"Bearer "):].decode("latin-1")
            call = lambda: teams().authenticate(key, source, project)  # noqa: E731
        else:
            cookie = door.cookie_of(scope["headers"])
            session = door.read_session(self.secret, cookie) if cookie else None
            if session is None:
                return None
            call = lambda: teams().actor_of_key(session[0], source, session[1])  # noqa: E731
        from mlyard.core.errors import Unauthenticated

        try:
            return await anyio.to_thread.run_sync(call)
        except Unauthenticated:
            return None

    async def _sign_in(self, scope: dict, receive: Any, send: Any) -> None:
        import anyio

        from mlyard.core.errors import MlyardError
        from mlyard.teams import teams

        query = door.parse_form(scope["query_string"])
        if scope["method"] == "GET" and scope["path"] == "/sign-in":
            return await door.answer_html(send, 200, door.page(query.get("next", "")))
        if scope["method"] != "POST":
            raise HttpError(405, "sign in with POST /sign-in, out with POST /sign-out")
        door.same_origin(scope)
        secure = dict(scope["headers"]).get(b"x-forwarded-proto") == b"https"
        if scope["path"] == "/sign-out":
            return await door.redirect(send, "/sign-in", [door.set_cookie("", secure, max_age=0)])
        form = door.parse_form(await door.body(scope, receive, door.MAX_FORM_BYTES))
        key, project = form.get("key", "").strip(), form.get("project", "").strip() or None
        source = (scope.get("client") or ("", 0))[0] or "unknown"
        try:
            actor = await anyio.to_thread.run_sync(lambda: teams().authenticate(key, source, project))
            project = actor.acting_project()  # one project to work in: named, their only one, or `default`
        except (MlyardError, ValueError) as exc:
            return await door.answer_html(send, 401 if "key" in str(exc).lower() else 400,
                               door.page(form.get("next", ""), str(exc)))
        cookie = door.make_session(self.secret, actor.key_id or "", project)
        log.info("%s signed in to project %s from %s", actor.name, project, source)
        await door.redirect(send, door.safe_next(form.get("next")), [door.set_cookie(cookie, secure)])

    # -- a member's requests ---------------------------------------------------------------------------------

    async def _member(self, scope: dict, send: Any, actor: Any, body: bytes | None) -> None:
        method, path = scope["method"], scope["path"]
        found = rules.rule_of(method, path)
        if found is None:
            if method not in ("GET", "HEAD"):
                self._record(actor, "prefect.request", f"{method} {path}", "refused", "not open to project members")
            raise HttpError(403, f"{method} {path} is not open to project members through mlyard's front door "
                         "(an admin's, or not scoped by project in Prefect)")
        rule, ident = found
        project = actor.acting_project()
        given = _parsed(body)
        if rule == "free":
            return await self._forward(scope, send, body)
        if rule == "runs named":  # flows, deployments, pools that have runs like these: the project's runs alone
            return await self._forward(scope, send, _dumped(rules.narrowed_if_runs(given, project)))
        if rule in ("empty", "none"):
            return await door.answer_json(send, 200, b"{}" if rule == "empty" else b"[]")
        if rule == "narrowed":
            return await self._forward(scope, send, _dumped(rules.narrowed(given, project)))
        if rule == "deployments":  # with their Run forms' examples left out, as for one deployment below
            narrowed = rules.deployments_narrowed(rules.narrowed_if_runs(given, project), await self._runnable())
            answer = await self.client.post(path, json=narrowed, headers=_str(self.upstream))
            body = json.dumps(rules.without_parameters(answer.json())).encode() if answer.is_success else answer.content
            return await door.answer_json(send, answer.status_code, body)  # Prefect's own refusal as it is
        if rule == "deployment":
            if ident not in await self._runnable():
                raise HttpError(404, "Deployment not found")
            if path.endswith("/schedules"):
                return await self._forward(scope, send, None)
            # its Run form empty: the owner's examples (mlyard/run_forms.py) lie outside the project's storage
            if (deployment := await self._get(f"/api/deployments/{ident}")) is None:
                raise HttpError(404, "Deployment not found")
            return await door.answer_json(send, 200, json.dumps({**deployment, "parameters": {}}).encode())
        if rule == "events":
            await self._all_in(project, rules.event_runs(given), [])
            return await self._forward(scope, send, body)
        if rule in ("logs", "counts"):
            flow_runs, task_runs = rules.named_runs(rule, given)
            await self._all_in(project, flow_runs, task_runs)
            return await self._forward(scope, send, body)
        if rule == "start":
            return await self._start(send, actor, ident or "", given)
        # a thing named in the path or the query: the project's, or not found
        # one value each: Prefect reads the last of a repeated one, so a check of any other would be no check
        parsed = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if twice := sorted(k for k, v in parsed.items() if len(v) > 1):
            raise HttpError(400, f"{', '.join(twice)} given more than once: name one")
        query = {k: v[0] for k, v in parsed.items()}
        if rule in ("run", "cancel", "run states"):
            run = (ident if rule != "run states" else query.get("flow_run_id")) or ""
            await self._all_in(project, [run], [])
            if rule == "cancel":
                await self._cancel(actor, project, run, given)
            return await self._forward(scope, send, body)
        if rule in ("task run", "task run states"):
            await self._all_in(project, [], [(ident if rule == "task run" else query.get("task_run_id")) or ""])
            return await self._forward(scope, send, None)
        if rule in ("artifact", "latest artifact"):
            url = f"/api/artifacts/{ident}" + ("/latest" if rule == "latest artifact" else "")
            found_artifact = await self._get(url)
            if found_artifact is None or not found_artifact.get("flow_run_id"):
                raise HttpError(404, "Artifact not found")
            await self._all_in(project, [found_artifact["flow_run_id"]], [], "Artifact not found")
            return await door.answer_json(send, 200, json.dumps(found_artifact).encode())
        raise HttpError(403, f"{method} {path} is not open to project members")  # a rule without a way: denied

    async def _all_in(self, project: str, flow_runs: list[str], task_runs: list[str], missing: str = "") -> None:
        """Every flow run and task run named is the project's: else 404 as if it did not exist."""
        tag = {"all_": [f"{rules.PROJECT_TAG}{project}"], "operator": "and_"}
        for ids, route, what in ((flow_runs, "flow_runs", "Flow run"), (task_runs, "task_runs", "Task run")):
            ids = sorted(set(ids))
            if not ids:
                continue
            if not all(_uuid(i) for i in ids):
                raise HttpError(404, missing or f"{what} not found")
            answer = await self._post(f"/api/{route}/count", {
                route: {"id": {"any_": ids}}, "flow_runs": {"operator": "and_", "tags": tag}} if route == "task_runs"
                else {"flow_runs": {"operator": "and_", "id": {"any_": ids}, "tags": tag}})
            if answer != len(ids):
                raise HttpError(404, missing or f"{what} not found")

    async def _runnable(self) -> list[str]:
        """The ids of the deployments a member may run (re-read every 30 s: `mlyard up` may register more)."""
        from mlyard.member_runs import member_flows

        if time.monotonic() - self._allowed[0] > 30:
            found = await self._post("/api/deployments/filter", {"flows": {"name": {"any_": member_flows()}},
                                                                 "limit": 200})
            self._allowed = (time.monotonic(), [d["id"] for d in found or []])
        return self._allowed[1]

    async def _start(self, send: Any, actor: Any, deployment_id: str, given: dict[str, Any]) -> None:
        """The Run button: the run made by mlyard as the CLI makes it (checked, tagged, recorded), answered with
        the flow run as Prefect answers its own create."""
        import anyio

        from mlyard.core.access import acting_as, done_acting
        from mlyard.core.errors import MlyardError
        from mlyard.submit import create_run

        deployment = await self._get(f"/api/deployments/{deployment_id}")
        if deployment is None or deployment_id not in await self._runnable():
            raise HttpError(404, "Deployment not found")
        flow = await self._get(f"/api/flows/{deployment['flow_id']}") or {}
        state = given["state"] if isinstance(given.get("state"), dict) else {}
        details = state.get("state_details")
        when = details.get("scheduled_time") if isinstance(details, dict) else None
        parameters: dict[str, Any] = given["parameters"] if isinstance(given.get("parameters"), dict) else {}
        tags = [t for t in given.get("tags") or [] if isinstance(t, str)]
        name = given.get("name") if isinstance(given.get("name"), str) and given.get("name") else None

        def make() -> dict[str, str]:
            token = acting_as(actor)
            try:
                return create_run(f"{flow.get('name')}/{deployment['name']}", parameters, tags, {}, name=name,
                                  scheduled_time=when)
            finally:
                done_acting(token)

        try:
            made = await anyio.to_thread.run_sync(make)
        except MlyardError as exc:
            raise HttpError(exc.http_status if exc.http_status != 400 else 422, str(exc)) from None
        await door.answer_json(send, 201, json.dumps(await self._get(f"/api/flow_runs/{made['id']}")).encode())

    async def _cancel(self, actor: Any, project: str, run: str, given: dict[str, Any]) -> None:
        """A member cancels a run of their project as its editor; any other change of state is refused."""
        from mlyard.core.access import rank
        from mlyard.core.errors import Forbidden

        refused = None
        if not rules.cancelling(given):
            refused = "a project member changes a run's state only to cancel it (CANCELLING)"
        elif rank(actor.role(project)) < rank("editor"):
            refused = str(Forbidden(actor.name, project, "stopping a run", "editor", actor.role(project)))
        self._record(actor, "run.stop", f"flow run {run}", "refused" if refused else "ok", refused or "from the "
                     "Prefect UI", project)
        if refused:
            raise HttpError(403, refused)

    @staticmethod
    def _record(actor: Any, action: str, resource: str, result: str, detail: str, project: str | None = None) -> None:
        from mlyard.teams import acting_or_none, record

        try:
            record(actor, action, resource, result, project or acting_or_none(actor), detail)
        except Exception:  # noqa: BLE001 - the audit trail's database away: the answer still goes out
            log.exception("recording %s %s", action, resource)

    # -- Prefect, with the platform's credential ---------------------------------------------------------------

    async def _ui_settings(self, scope: dict, send: Any) -> None:
        settings = await self._get("/ui-settings") or {}
        host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
        proto = dict(scope["headers"]).get(b"x-forwarded-proto", b"http").decode("latin-1")
        settings.update(api_url=f"{proto}://{host}/api", auth=None, csrf_enabled=False)
        await door.answer_json(send, 200, json.dumps(settings).encode())

    async def _get(self, path: str) -> Any:
        answer = await self.client.get(path, headers=_str(self.upstream))
        return answer.json() if answer.status_code == 200 else None

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        answer = await self.client.post(path, json=body, headers=_str(self.upstream))
        if answer.status_code != 200:
            log.warning("Prefect answered %s to %s: %s", answer.status_code, path, answer.text[:300])
            return None
        return answer.json()

    async def _forward(self, scope: dict, send: Any, body: bytes | None) -> None:
        """The request to Prefect as the platform (its credential, none of the caller's), the answer streamed back."""
        skip = _NOT_UPSTREAM | ({b"content-type"} if body is not None else set())
        headers = [(k, v) for k, v in scope["headers"] if k not in skip] + self.upstream
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        url = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        await door.relay(send, await self.client.send(request, stream=True), _HOP | {b"set-cookie"})


def _parsed(body: bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        given = json.loads(body)
    except ValueError:
        raise HttpError(422, "the request body is not JSON") from None
    if not isinstance(given, dict):
        raise HttpError(422, "the request body is a JSON object")
    return given


def _dumped(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _str(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}

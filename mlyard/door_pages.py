"""What mlyard's front door (mlyard/prefect_door.py) serves besides Prefect, to whoever signed in there:

    /mlyard/dashboard   the dashboard (mlyard/dashboard.py) of their projects: a member's usage, quotas and
                        endpoints (an owner's also their projects' latest audit records); an admin's of all
    /notebooks/<id>/    a notebook's JupyterLab, for its user and admins alone

The notebooks' way in: `/notebooks/<id>/...` reaches the
JupyterLab of notebook <id> (which serves under that path: tasks/notebooks.py `base_path`), for its user and
admins alone (mlyard/notebooks.py `in_reach`), signed in as everywhere at the door: its session cookie, an API
key, or the cluster's sign-in in front of it.

The door adds the notebook's token, which only the platform and the notebook's user hold, and strips what the
caller sent of their own credentials, cookies and origin; Jupyter's websockets (kernels, terminals) pass the
same way, from the door's own pages only. A notebook of a project the caller has no role in answers 404, one
of another member of their project 403. So a member opens their JupyterLab by signing in once, as on a
managed console, and needs no token; on a cluster the notebook's pod admits the door alone (its
NetworkPolicy). Bounds: a request's body streams through up to MAX_UPLOAD_BYTES (a notebook saved whole), a
websocket message up to MAX_MESSAGE_BYTES, a person's websockets at once to SOCKETS_PER_PERSON.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from mlyard.core.errors import BodyTooLarge, HttpError

log = logging.getLogger("mlyard.door")

PREFIX = "/notebooks/"
DASHBOARD = "/mlyard/dashboard"  # not /dashboard: the Prefect UI's own page is there
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SOCKETS_PER_PERSON = 16  # a person's websockets at once (their tabs' kernels and terminals): the door's
                         # connections are everyone's, so one person's many tabs cannot take them all
RECHECK_SECONDS = 2.0  # an open websocket's caller is signed in again this often: a revoked key closes it
REMEMBER_SECONDS = 5.0  # a page loads dozens of files: who may open which notebook is read again after this


class DoorPages:
    def __init__(self, not_upstream: frozenset[bytes], hop: frozenset[bytes]):
        import httpx

        self.client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=5.0),
                                        limits=httpx.Limits(max_connections=64))
        self.not_upstream, self.hop = not_upstream, hop
        self._known: dict[tuple[str, str], tuple[float, str, str]] = {}
        self._sockets: dict[str, int] = {}  # each person's websockets open now (one event loop: no lock)

    async def target(self, path: str, actor: Any) -> tuple[str, str]:
        """(where the notebook's JupyterLab listens, its token) when `actor` may open it; else the refusal."""
        ident = path[len(PREFIX):].split("/", 1)[0]
        if not (ident.isascii() and ident.isdigit()):
            raise HttpError(404, "no such notebook")
        remembered = self._known.get((actor.name, ident))
        if remembered is not None and time.monotonic() - remembered[0] < REMEMBER_SECONDS:
            return remembered[1], remembered[2]
        import anyio

        found = await anyio.to_thread.run_sync(lambda: _look_up(int(ident), actor))
        if len(self._known) > 1024:
            self._known.clear()
        self._known[(actor.name, ident)] = (time.monotonic(), *found)
        return found

    @staticmethod
    def serves(path: str) -> bool:
        return path == DASHBOARD or path.startswith(PREFIX)

    async def http(self, scope: dict, receive: Any, send: Any, actor: Any) -> None:
        from mlyard import door_sign_in as door

        if scope["path"] == DASHBOARD:
            return await _dashboard(scope, send, actor)
        where, token = await self.target(scope["path"], actor)
        headers = [(k, v) for k, v in scope["headers"] if k not in self.not_upstream]
        headers.append((b"authorization", b"token " + token.encode()))
        url = where + scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_UPLOAD_BYTES):
            raise BodyTooLarge(MAX_UPLOAD_BYTES)
        if declared is not None:
            headers.append((b"content-length", declared))
        body = _bounded(receive) if scope["method"] not in ("GET", "HEAD") else None
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        await door.relay(send, await self.client.send(request, stream=True), self.hop)

    async def websocket(self, scope: dict, receive: Any, send: Any, actor: Any,
                        again: Callable[[], Awaitable[Any]] | None = None) -> None:
        """A websocket of the notebook's JupyterLab, relayed both ways until either side closes (at most
        SOCKETS_PER_PERSON of a person's at once: the next is closed with 1013, try again later). `again`
        signs the caller in again: every RECHECK_SECONDS while it is open, and a key revoked, a session
        ended or a notebook no longer theirs closes it (1008)."""
        if (await receive())["type"] != "websocket.connect":
            return
        headers = dict(scope["headers"])
        origin, host = headers.get(b"origin"), headers.get(b"host", b"")
        try:
            if actor is None:
                raise HttpError(401, "sign in first")
            if origin is None or origin.split(b"://", 1)[-1] != host:  # a page elsewhere cannot use your session
                raise HttpError(403, "a notebook's websocket opens from its own pages")
            where, token = await self.target(scope["path"], actor)
            if self._sockets.get(actor.name, 0) >= SOCKETS_PER_PERSON:
                raise HttpError(429, f"{actor.name} has {SOCKETS_PER_PERSON} notebook websockets open")
        except HttpError as exc:
            log.info("notebook websocket %s refused: %s", scope["path"], exc)
            return await send({"type": "websocket.close", "code": 1013 if exc.http_status == 429 else 1008})
        self._sockets[actor.name] = self._sockets.get(actor.name, 0) + 1
        try:
            await self._relay(scope, receive, send, where, token, headers, again)
        finally:
            self._sockets[actor.name] -= 1

    async def _relay(self, scope: dict, receive: Any, send: Any, where: str, token: str, headers: dict,
                     again: Callable[[], Awaitable[Any]] | None) -> None:
        import anyio
        import websockets

        url = "ws" + where[len("http"):] + scope["path"] + (
            "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        offered = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").decode("latin-1").split(",") if p.strip()]
        try:
            upstream = await websockets.connect(url, additional_headers={"Authorization": f"token {token}"},
                                                subprotocols=offered or None, max_size=MAX_MESSAGE_BYTES,
                                                open_timeout=10)
        except Exception as exc:  # noqa: BLE001 - Jupyter refused it or is gone: the browser retries
            log.info("notebook websocket %s: upstream %s", scope["path"], exc)
            return await send({"type": "websocket.close", "code": 1011})
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def browser_to_jupyter(done: Any) -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text") if message.get("text") is not None else message.get("bytes")
                if data is not None:
                    try:
                        await upstream.send(data)
                    except websockets.ConnectionClosed:  # Jupyter closed it while the browser still sent
                        break
            done.cancel()

        async def jupyter_to_browser(done: Any) -> None:
            try:
                async for data in upstream:
                    await send({"type": "websocket.send", **({"text": data} if isinstance(data, str) else {"bytes": data})})
            except websockets.ConnectionClosed:
                pass
            await send({"type": "websocket.close", "code": 1000})
            done.cancel()

        async def still_theirs(done: Any) -> None:
            while again is not None:
                await anyio.sleep(RECHECK_SECONDS)
                try:
                    actor = await again()
                    if actor is None:
                        raise HttpError(401, "signed out")
                    await self.target(scope["path"], actor)
                except Exception as exc:  # noqa: BLE001 - revoked, expired, signed out, no longer theirs
                    log.info("notebook websocket %s closed: %s", scope["path"], exc)
                    await send({"type": "websocket.close", "code": 1008})
                    done.cancel()
                    return

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(browser_to_jupyter, group.cancel_scope)
                group.start_soon(jupyter_to_browser, group.cancel_scope)
                group.start_soon(still_theirs, group.cancel_scope)
        finally:
            await upstream.close()


async def _dashboard(scope: dict, send: Any, actor: Any) -> None:
    """The dashboard's page as `actor` sees it (GET only; `?since=` as the CLI's --since)."""
    import html
    from urllib.parse import parse_qs

    import anyio

    from mlyard import dashboard as board
    from mlyard import door_sign_in as door
    from mlyard.core.access import acting_as, done_acting
    from mlyard.core.errors import MlyardError

    if scope["method"] not in ("GET", "HEAD"):
        raise HttpError(405, "the dashboard is only read")
    since = parse_qs(scope["query_string"].decode("latin-1")).get("since", ["24h"])[0]

    def collect() -> str:
        acting = acting_as(actor)
        try:
            return board.page(board.collect(since))
        finally:
            done_acting(acting)

    try:
        page = await anyio.to_thread.run_sync(collect)
    except MlyardError as exc:  # a bad period, or an engine away: said on the page
        return await door.answer_html(send, exc.http_status, f"<!doctype html><title>mlyard dashboard</title>"
                                                             f"<p>{html.escape(str(exc))}</p>".encode())
    await door.answer_html(send, 200, page.encode())


def _look_up(notebook_id: int, actor: Any) -> tuple[str, str]:
    """(where the notebook's JupyterLab listens, its token), as `actor`, who must be its user or an admin."""
    from mlyard import notebooks
    from mlyard.core.access import acting_as, done_acting
    from mlyard.core.connection import connect
    from mlyard.core.errors import Forbidden, NotebookNotFound

    acting = acting_as(actor)
    try:
        settings = connect()
        store = notebooks.notebook_store(settings)
        try:
            record = notebooks.in_reach(store, store.get_by_id(notebook_id).name, "opening a notebook")
        except NotebookNotFound:
            raise HttpError(404, "no such notebook") from None
        except Forbidden as exc:
            raise HttpError(403, str(exc)) from None
        where = notebooks.upstream(settings, record)
        if where is None:
            raise HttpError(503, f"notebook {record.name!r} is {record.status}: start it (`mlyard notebooks start "
                            f"{record.name}`)")
        return where, notebooks.token(settings, record)
    finally:
        done_acting(acting)


async def _bounded(receive: Any):
    """The request's body as it comes, refused past MAX_UPLOAD_BYTES."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > MAX_UPLOAD_BYTES:
            raise BodyTooLarge(MAX_UPLOAD_BYTES)
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return

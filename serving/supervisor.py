"""Run a Backend.AI model folder: its pre-start actions in order, then its `command` as a child
process (restarted with backoff when it exits), probed by the health-check state machine, with every
request proxied to it (streamed, so server-sent events pass through as they come).

    GET /mlyard/health    the supervisor's own view: status (DEGRADED, HEALTHY, UNHEALTHY), failures,
                          restarts, pid, reason (200 when HEALTHY, 503 otherwise)
    anything else         proxied to the child at 127.0.0.1:{port}; 503 while UNHEALTHY
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from mlyard.serving import asgi
from mlyard.serving.health import HEALTHY, UNHEALTHY, Health
from mlyard.serving.modelfolder import LogArgs, MkdirArgs, ModelFolder, RunCommandArgs, WriteFileArgs, WriteTempfileArgs
from mlyard.tasks.processes import stop_group

log = logging.getLogger("mlyard.serving.supervisor")
MAX_BACKOFF_SECONDS = 30.0
_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailers",
        b"transfer-encoding", b"upgrade", b"host", b"content-length"}
# a request's body is passed on as it came, so its length goes with it: without one, httpx sends the body
# chunked, which a service on a plain HTTP server (Python's http.server, for one) cannot read
_REQUEST_HOP = _HOP - {b"content-length"}


def run_actions(folder: ModelFolder) -> list[dict[str, Any]]:
    """The pre-start actions, in order; what each did (run_command: its out and err)."""
    done = []
    for action in folder.service.pre_start_actions:
        args = action.parsed()
        result: dict[str, Any] = {"action": action.action}
        if isinstance(args, WriteFileArgs):
            path = _path(folder, args.filename)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a" if args.append else "w") as fh:
                fh.write(args.body)
            os.chmod(path, _mode(args.mode))
            result["path"] = str(path)
        elif isinstance(args, WriteTempfileArgs):
            fd, name = tempfile.mkstemp(suffix=".py", prefix="mlyard-")
            with os.fdopen(fd, "w") as fh:
                fh.write(args.body)
            os.chmod(name, _mode(args.mode))
            result["path"] = name
        elif isinstance(args, RunCommandArgs):
            argv = [folder.local(a) for a in args.command]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, cwd=folder.folder, timeout=600)
                result.update(out=proc.stdout, err=proc.stderr if proc.returncode == 0 else
                              (proc.stderr or f"exited {proc.returncode}"))
            except (OSError, subprocess.TimeoutExpired) as exc:
                result.update(out="", err=str(exc))
        elif isinstance(args, MkdirArgs):
            path = _path(folder, args.path)
            path.mkdir(parents=True, exist_ok=True)
            result["path"] = str(path)
        elif isinstance(args, LogArgs):
            (log.debug if args.debug else log.info)("%s", args.message)
            result["message"] = args.message
        log.info("pre-start action %s", {k: v for k, v in result.items() if k != "action"} | {"action": action.action})
        done.append(result)
    return done


def _path(folder: ModelFolder, value: str) -> Path:
    local = Path(folder.local(value))
    return local if local.is_absolute() else folder.folder / local


def _mode(mode: str | int) -> int:
    return int(str(mode), 8) if not isinstance(mode, int) or mode > 0o777 else mode


class Supervisor:
    """The child process and its health; `app` (an ASGI callable) proxies to it."""

    def __init__(self, folder: ModelFolder, environ: dict[str, str] | None = None):
        self.folder = folder
        self.health = Health(folder.service.health_check, time.monotonic())
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.env = {**os.environ, **(folder.variant.environ if folder.variant else {}), **(environ or {})}
        self.target = f"http://127.0.0.1:{folder.service.port}"
        self._client: Any = None
        self._stopping = False
        self._watch: asyncio.Task | None = None

    def start(self) -> None:
        argv = self.folder.argv()
        log.info("starting %s", " ".join(argv))
        try:
            self.proc = subprocess.Popen(argv, cwd=self.folder.folder, env=self.env, start_new_session=True)
        except OSError as exc:
            self.proc = None
            self.health.exited(f"the command could not start: {exc}")
            return
        self.health.restarted(time.monotonic())

    def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc, 15.0)

    async def watch(self) -> None:
        """Restart the child when it exits (backoff 1, 2, 4, ... 30 s) and probe it when a probe is due."""
        import httpx

        backoff = 1.0
        async with httpx.AsyncClient() as probe:
            while not self._stopping:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    if self.proc is not None:
                        self.health.exited(f"the command exited with code {code}")
                        log.warning("the service exited (code %s); restarting in %.0f s", code, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    if self._stopping:
                        return
                    self.restarts += 1
                    self.start()
                    continue
                due = self.health.next_probe()
                now = time.monotonic()
                if due is None and self.health.status != HEALTHY:  # no health check: its port, until it answers
                    if await self._listening():
                        self.health.listening()
                        backoff = 1.0
                    else:
                        await asyncio.sleep(0.1)
                    continue
                if due is not None and now >= due:
                    check = self.folder.service.health_check
                    assert check is not None
                    try:
                        resp = await probe.get(self.target + check.path, timeout=check.max_wait_time)
                        status = self.health.probed(time.monotonic(), resp.status_code)
                    except httpx.HTTPError as exc:
                        status = self.health.probed(time.monotonic(), None, f"{check.path}: {type(exc).__name__} {exc}")
                    if status == HEALTHY:
                        backoff = 1.0
                    continue
                if self.health.status == HEALTHY and due is None:
                    backoff = 1.0
                wait = 0.2 if due is None else max(0.02, min(0.2, due - now))
                await asyncio.sleep(wait)

    async def _listening(self) -> bool:
        """Whether the service's port takes a connection now."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.folder.service.port), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    def view(self) -> dict[str, Any]:
        h = self.health
        return {"status": h.status, "failures": h.failures, "restarts": self.restarts, "reason": h.reason,
                "pid": self.proc.pid if self.proc is not None and self.proc.poll() is None else None,
                "model": self.folder.model.name, "target": self.target}

    # -- ASGI -----------------------------------------------------------------------------------

    async def app(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await asgi.lifespan(receive, send, on_startup=self._start_watching, on_shutdown=self.stop)
        if scope["type"] != "http":
            return
        if scope["path"] == "/mlyard/health":
            view = self.view()
            return await asgi.reply(send, 200 if view["status"] == HEALTHY else 503, orjson.dumps(view))
        if self.health.status == UNHEALTHY:
            return await asgi.reply(send, 503, orjson.dumps({"error": f"the model service is UNHEALTHY: {self.health.reason}"}))
        await self._proxy(scope, receive, send)

    def _start_watching(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self.watch())  # kept: the loop holds tasks weakly

    async def _proxy(self, scope: dict, receive, send) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.target, timeout=httpx.Timeout(None, connect=5.0))

        async def body():
            while True:
                message = await receive()
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in _REQUEST_HOP]
        try:
            req = self._client.build_request(scope["method"], path, headers=headers, content=body())
            resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            return await asgi.reply(send, 503, orjson.dumps({"error": f"the model service did not answer "
                                                                  f"({type(exc).__name__}: {exc}); status {self.health.status}"}))
        try:
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in _HOP]})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()


def serve_folder(folder: ModelFolder, host: str, port: int) -> None:
    """Run the pre-start actions, start the service and serve the proxy until stopped."""
    from mlyard.serving.server import run_app

    if port == folder.service.port:
        from mlyard.core.errors import SpecError

        raise SpecError("--port", port, f"another port than the service's own ({folder.service.port}), which the "
                        "proxy forwards to")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for note in folder.notes:
        log.info("%s", note)
    for result in run_actions(folder):
        if result.get("err"):
            log.warning("pre-start action %s: %s", result["action"], result["err"].strip()[:500])
    sup = Supervisor(folder)
    sup.start()
    try:
        run_app(sup.app, host, port, lifespan=True,
                on_ready=lambda url: print(f"serving {folder.model.name} from {folder.folder} on {url} "
                                           f"(proxied to {sup.target}; status: {url}/mlyard/health)", flush=True))
    finally:
        sup.stop()

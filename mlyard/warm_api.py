"""The stack's warm mlyard API (mlyard/service.py), as both sides use it: where it is and how to ask
it (`api_url`, `post`, `answer`), how an error crosses it as the same mlyard class (`error_body`,
`as_error`), and the Platform a process keeps warm for its answers (`platform`).

Only files are read to find it: importing this module imports no engine. The reads it answers are
mlyard/queries.py's; the runs it makes, mlyard/submit.py's.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from functools import lru_cache
from typing import Any, Callable, ParamSpec, TypeVar

from mlyard.core import errors
from mlyard.core.environment import flow_run_env
from mlyard.core.errors import MlyardError, PlatformUnreachable, Unreachable

QUERY_TIMEOUT_SECONDS = 120.0
P = ParamSpec("P")
R = TypeVar("R")


@lru_cache(maxsize=1)
def platform():
    """One Platform per process: in the API its MLflow and catalog clients stay warm between queries."""
    from mlyard.core.connection import connect
    from mlyard.flows.platform import Platform

    return Platform(connect())


def answer(query: str, local: Callable[..., Any], /, **kwargs: Any) -> Any:
    """The answer of `query` (mlyard/queries.py): from the platform's mlyard API when MLYARD_API_URL names
    one (a workstation reaching a cluster: never computed here instead), or from the stack's warm mlyard
    API when one runs, else `local(**kwargs)` computed here, as the same JSON."""
    from mlyard.core.settings import Settings

    settings = Settings()  # read once: 4-5 ms each
    if settings.api_url or settings.api_key is not None:
        remote = signed_in_api(settings)
        try:
            return _remote(remote, query, kwargs)
        except Unreachable as exc:  # nothing here to compute it with instead
            raise PlatformUnreachable(remote, str(exc), "mlyard API") from None
    url = api_url(settings)
    if url is not None:
        try:
            return _remote(url, query, kwargs)
        except Unreachable:
            pass  # stopped since `up` (or never started): the same answer, computed here
    return json.loads(json.dumps(local(**kwargs), default=str))


def api_url(settings: Any = None) -> str | None:
    """The mlyard API of this home's running stack (None with a production Prefect server, or when
    `mlyard up` started none). Only files are read: no engine is imported or asked."""
    from mlyard.core.connection import read_state
    from mlyard.core.settings import Settings

    settings = settings or Settings()
    if settings.prefect_api_url or flow_run_env()[0]:
        return None
    state = read_state(settings)
    if state is None or not state.service_url:
        return None
    pid = state.pids.get("mlyard-api")
    if pid is None or not os.path.exists(f"/proc/{pid}"):
        return None
    return state.service_url




def signed_in_api(settings: Any) -> str:
    """The mlyard API a caller reaches the platform through: MLYARD_API_URL, else (a team member's key on
    the stack's own machine) this home's running stack's. A key is only ever used there: a member's
    command never runs anything with the stack's own stores."""
    from mlyard.core.errors import StackError

    if settings.api_url:
        return settings.api_url.rstrip("/")
    url = api_url(settings) if settings.api_key is not None else None
    if url is None:
        raise StackError("MLYARD_API_KEY is set but no mlyard API is named: set MLYARD_API_URL to the platform's "
                         "(`mlyard login --url URL`; `mlyard status` prints it on the stack's machine)")
    return url


def member_api() -> str | None:
    """The mlyard API a team member's call (MLYARD_API_KEY) is made through, by the platform, as them; None:
    the caller is the stack's owner or the platform, whose call is made here."""
    from mlyard.core.settings import Settings

    settings = Settings()
    return signed_in_api(settings) if settings.api_key is not None else None


def member_command(name: str, /, **arguments: Any) -> Any:
    """A team member's change (MLYARD_API_KEY): the platform's answer to the command `name` (mlyard/commands.py),
    made there as them; None for anyone else, whose change is made here."""
    url = member_api()
    return None if url is None else post(url, f"/v1/commands/{name}", arguments)


def by_platform(name: str, kind: str = "queries") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: a team member's call (MLYARD_API_KEY) of the function is the platform's answer to the query
    (or, with kind "commands", the command) `name`, which runs the same function there, as them, with the
    same JSON arguments; anyone else's call runs it here."""
    import functools
    import inspect

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            url = member_api()
            if url is None:
                return fn(**bound.arguments)  # type: ignore[call-arg]  # by name, as the API calls it
            return post(url, f"/v1/{kind}/{name}", dict(bound.arguments))

        return call

    return wrap


def _remote(url: str, name: str, kwargs: dict[str, Any]) -> Any:
    return post(url, f"/v1/queries/{name}", kwargs)


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    """POST `body` as JSON to the mlyard API at `url`: its JSON answer, or its error raised as the same
    mlyard class; Unreachable when nothing answers there (the API stopped since `up`)."""
    from mlyard.core.settings import Settings

    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **signed_in_headers(Settings())})
    try:
        with urllib.request.urlopen(req, timeout=QUERY_TIMEOUT_SECONDS) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            problem = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise MlyardError(f"the mlyard API at {url} answered {exc.code}: {raw[:300]!r}") from None
        raise as_error(problem) from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise Unreachable(str(exc)) from exc


def signed_in_headers(settings: Any) -> dict[str, str]:
    """Who asks: the user's API key (MLYARD_API_KEY), else the platform's internal credential; and the
    project the call acts in (MLYARD_PROJECT, `--project`)."""
    from mlyard.core.connection import internal_headers

    headers = ({"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key is not None
               else internal_headers(settings))
    if settings.project:
        headers["X-Mlyard-Project"] = settings.project
    return headers


def error_body(exc: BaseException) -> dict[str, Any]:
    """How the API sends an error: its mlyard class and message (and the HTTP status it carries)."""
    if isinstance(exc, MlyardError):
        return {"error": {"type": type(exc).__name__, "message": str(exc), "status": exc.http_status}}
    return {"error": {"type": "MlyardError", "message": f"the mlyard API failed: {type(exc).__name__}: {exc}",
                      "status": 500}}


def as_error(problem: dict[str, Any]) -> MlyardError:
    """The error the API sent, as the same mlyard class with the same message."""
    cls = getattr(errors, str(problem.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, MlyardError)):
        cls = MlyardError
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(problem.get("message")))
    return exc

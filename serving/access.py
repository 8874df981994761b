"""Who may pass the gateway, and what a refused request gets back: the token check of an endpoint
(on the headers alone) and the error bodies (OpenAI's shape on the OpenAI and RAG routes).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson

from mlyard.core.connection import REPLICA_HEADER


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def openai_error(message: str, status: int) -> bytes:
    """OpenAI's error shape, so that the `openai` package raises its own exception on the RAG routes."""
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error",
                                   "param": None, "code": None}})


def route_error(route: Any, status: int, message: str) -> bytes:
    """The gateway's error body for a routed request (serving/routing.py's Route): OpenAI's shape on the
    OpenAI routes (a RAG's, an endpoint's /openai/...), so that OpenAI clients show the message;
    {"error": message} on the others."""
    if route.endpoint.startswith("rag:") or route.rest.startswith("/openai/"):
        return openai_error(message, status)
    return error_body(message)


RETRY_AFTER = [(b"retry-after", b"1")]  # with a 503: the caller may try again in a second


def unknown_endpoint(route: Any, loaded: bool) -> tuple[int, bytes, list]:
    """An endpoint not in the gateway's table: 404, or 503 with Retry-After while the gateway (just started,
    a keeper's restart) has not read its table yet: the endpoint may well exist."""
    if not loaded:
        return 503, route_error(route, 503, "the gateway is starting; retry shortly"), list(RETRY_AFTER)
    return 404, route_error(route, 404, f"no endpoint {route.endpoint!r}"), []


def may_manage(internal: bytes | None, path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers open the gateway's management route `path`: its probes for anyone, its
    metrics for the scrape credential too, the rest for the internal credential alone."""
    if path in ("/mlyard/health", "/mlyard/ready"):
        return True
    return is_scrape(internal, headers) if path == "/mlyard/metrics" else is_internal(internal, headers)


def is_scrape(internal: bytes | None, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the headers carry the internal credential or the scrape credential derived from it
    (core/environment.metrics_token): what a /metrics route answers."""
    if internal is None or is_internal(internal, headers):
        return internal is not None
    from mlyard.core.environment import metrics_token

    return is_internal(f"Bearer {metrics_token(internal.decode().removeprefix('Bearer '))}".encode(), headers)


def is_internal(internal: bytes | None, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the headers carry the platform's internal credential (`internal`: its whole Authorization
    header, `Bearer ...`)."""
    if internal is None:
        return False
    value = next((v for k, v in headers if k == b"authorization"), None)
    return value is not None and hmac.compare_digest(value, internal)


def token_problem(internal: bytes | None, ep: dict[str, Any], scope: dict,
                  members: dict[str, Any] | None = None) -> str | None:
    """Why a request may not pass to the endpoint `ep` (its tokens as the gateway read them from the
    catalog), or None. Only the headers are read: the body is never touched before this passes.
    `internal` is the platform's own Authorization header (a RAG's query service asking its LLM);
    `members`, the catalog's users' API keys (registry/teams.py gateway_view): a key of a user with a role
    in the endpoint's project (or an admin's) passes too."""
    if is_internal(internal, scope["headers"]):
        return None
    value = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    # Headers that passed, with their expiry, for this read of the catalog: a client sends the same
    # header again and again, and a revocation reaches the gateway with the next read (within 1 s).
    passed = ep.setdefault("passed", {})
    hit = passed.get(value)
    if hit is not None and hit[0] > time.time():
        return None
    if value is not None and value.startswith(b"Bearer mly_") and members is not None:
        return _key_problem(value, ep, members, passed)
    from mlyard.registry.endpoints import token_from_header

    token = token_from_header(value.decode("latin-1") if value is not None else None)
    if token is None:
        return ("this endpoint needs a token: send 'Authorization: Bearer <token>' (or 'BackendAI <token>'); "
                "issue one with `mlyard endpoints tokens issue ENDPOINT`")
    found = ep["tokens"].get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest())
    if found is None:
        return "the token is not valid for this endpoint"
    expires, revoked, label = found
    if revoked:
        return "the token was revoked"
    if expires <= time.time():
        return "the token has expired"
    if len(passed) < 4096:
        passed[value] = (expires, label)
    return None


def _key_problem(value: bytes, ep: dict[str, Any], members: dict[str, Any], passed: dict) -> str | None:
    from mlyard.core.access import DEFAULT_PROJECT, secret_matches, split_key
    from mlyard.core.errors import Unauthenticated

    try:
        key_id, secret = split_key(value[len(b"Bearer "):].decode("latin-1"))
    except Unauthenticated as exc:
        return str(exc)
    found = members["keys"].get(key_id)
    if found is None or not secret_matches(secret, found[0]) or found[2] <= time.time():
        return "this API key is unknown, expired or revoked"
    admin, projects = members["users"].get(found[1], (False, frozenset()))
    if not admin and ep.get("project", DEFAULT_PROJECT) not in projects:
        return "the API key is not valid for this endpoint"
    if len(passed) < 4096:
        passed[value] = (found[2], f"key:{key_id} ({found[1]})")
    return None


def caller_of(ep: dict[str, Any], headers: list[tuple[bytes, bytes]], internal: bytes | None) -> str:
    """Who a request that passed `token_problem` came from, for the statistics: `token:<id>`, `key:<id>
    (<user>)`, `platform` (its own credential), or `anyone` (a public endpoint's caller without a credential
    of it). A dict lookup: the header is what token_problem remembered passing."""
    value = next((v for k, v in headers if k == b"authorization"), None)
    if value is None:
        return "anyone"
    hit = ep.get("passed", {}).get(value)
    if hit is not None:
        return hit[1]
    if is_internal(internal, headers):  # the platform's own call; a RAG's query service names its RAG
        named = next((v for k, v in headers if k == CALLER_HEADER), b"")
        return named.decode("latin-1") if named.startswith(b"rag:") and len(named) <= 70 else "platform"
    if value.startswith(b"Bearer mly_"):
        return f"key:{value[11:23].decode('latin-1')}"
    return "anyone" if ep.get("public") else "token"


CALLER_HEADER = b"x-mlyard-caller"  # who the platform's own call is for (rag:NAME), honoured with its credential alone


def over_budget(stats: Any, ep: dict[str, Any], caller: str) -> str | None:
    """Why the caller may not ask `ep` again today: its budget of tokens a day (a token's, or a RAG's) spent."""
    budget = (ep.get("budgets") or {}).get(caller)
    if not budget:
        return None
    spent = stats.spent(caller)
    if spent < budget:
        return None
    return (f"{caller}'s budget of {budget} tokens a day on this endpoint is spent ({spent} used today); it renews "
            "at 00:00 UTC")


def over_limit(shared: Any, ep: dict[str, Any], limits: tuple[float | None, float | None],
               headers: list[tuple[bytes, bytes]]) -> float:
    """Seconds until a request to `ep` may pass its project's rate limits (0.0: now): all its endpoints' calls
    together, and each caller's (by the key or token it sends). The platform's own calls are not counted."""
    if is_internal(shared.internal, headers):
        return 0.0
    now, (rate, per_caller) = time.monotonic(), limits
    wait = shared.buckets.take(b"p\0" + ep["project"].encode(), rate, now) if rate else 0.0
    caller = next((v for k, v in headers if k == b"authorization"), None)
    if per_caller and caller is not None and not wait:
        wait = shared.buckets.take(b"k\0" + caller, per_caller, now)
    return wait


# What a replica answers without the replicas' credential: liveness and readiness, which the gateway's and
# Kubernetes' probes ask (a kubelet sends no header), and which say nothing about the model.
OPEN_PATHS = frozenset({"/", "/health", "/v2/health/live", "/v2/health/ready", "/mlyard/health"})


class ReplicaGuard:
    """ASGI middleware of a replica that the platform started: every request but the health checks must
    carry the replicas' credential (`x-mlyard-replica`), which only the gateway sends, so that nobody
    reaches a private endpoint's model around the gateway's tokens. The check reads the headers only."""

    def __init__(self, app: Any, token: str):
        self.app, self._token = app, token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not (scope["path"] in OPEN_PATHS and scope["method"] in ("GET", "HEAD")):
            value = next((v for k, v in scope["headers"] if k == REPLICA_HEADER), None)
            if value is None or not hmac.compare_digest(value, self._token):
                body = error_body("this replica answers the mlyard gateway only: call the endpoint through the "
                                  "gateway (mlyard endpoints show ENDPOINT gives its URLs)")
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

"""The gateway's RAG routes (/rag/v1/query, /rag/v1/chat/completions, /rag/v1/search, /rag/v1/embeddings:
the RAG's embedding model, as OpenAI's embeddings route): the RAG named by
the body's `model`, then routed and counted as the endpoint `rag:NAME` (serving/rag.py answers)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson

from mlyard.serving import asgi
from mlyard.serving.access import openai_error
from mlyard.serving.fastserver import Refusal
from mlyard.serving.gateway_state import Shared
from mlyard.serving.routing import Route

# /rag/v1/chat/completions too: the `openai` package, given base_url .../rag/v1, posts there
RAG_ROUTES = {"/rag/v1/query": "/v1/chat/completions", "/rag/v1/chat/completions": "/v1/chat/completions",
              "/rag/v1/search": "/v1/search", "/rag/v1/embeddings": "/v1/embeddings"}


async def rag(gw: Shared, serve: Callable[..., Awaitable[Any]], scope: dict, receive, send, path: str) -> None:
    """A RAG's route: the RAG named by the body's `model`, then as any endpoint's request (`serve(scope,
    receive, send, path, route, body)`, the gateway's). The seed's `x-nhn-apikey` header is taken as a
    bearer token."""
    if scope["method"] != "POST":
        return await asgi.reply(send, 405, openai_error(f"{path} takes POST", 405))
    scope = {**scope, "headers": with_bearer(list(scope["headers"]))}
    try:
        body = await asgi.read_body(receive, gw.max_body)
        model = orjson.loads(body).get("model")
    except asgi.BodyTooLarge as exc:
        return await asgi.reply(send, 413, openai_error(str(exc), 413))
    except (orjson.JSONDecodeError, AttributeError):
        return await asgi.reply(send, 400, openai_error("the body must be a JSON object (an OpenAI chat "
                                                          "completions request)", 400))
    if not isinstance(model, str) or not model:
        return await asgi.reply(send, 400, openai_error("model: the name of the RAG to ask (mlyard rags list)",
                                                          400))
    name = f"rag:{model}"
    if name not in gw.endpoints:
        return await asgi.reply(send, 404, openai_error(f"no RAG {model!r}; see `mlyard rags list`", 404))
    route = Route(name, None, "rag", RAG_ROUTES[path])
    return await serve(scope, receive, send, path, route, body)


def with_bearer(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The seed's `x-nhn-apikey` header taken as a bearer token, when no Authorization is sent."""
    key = next((v for k, v in headers if k == b"x-nhn-apikey"), None)
    if key is not None and not any(k == b"authorization" for k, _ in headers):
        return [*headers, (b"authorization", b"Bearer " + key)]
    return headers


def admit(gw: Shared, headers: list[tuple[bytes, bytes]]) -> Refusal | int:
    """A RAG route's request on its head alone (the gateway's `admit`): 401 when no RAG would take this caller,
    so that no body is read before a credential is checked (which RAG is asked is known from the body, and
    its own check follows there); else the body limit. A public RAG, or none at all, takes anyone here."""
    from mlyard.serving.access import token_problem

    rags = [ep for name, ep in gw.endpoints.items() if name.startswith("rag:")]
    if not rags or any(ep["public"] for ep in rags):
        return gw.max_body
    scope = {"headers": with_bearer(headers)}
    first = None
    for ep in rags:  # the first RAG that takes the caller ends the search
        problem = token_problem(gw.internal, ep, scope, gw.members)
        if problem is None:
            return gw.max_body
        first = first or problem
    return 401, openai_error(str(first), 401), [(b"www-authenticate", b"Bearer")]

"""The LLM a RAG's query service (serving/rag.py) asks: found once, called over HTTP with the RAG's
credential, its failures turned into 502 (down, or an error) and 504 (no answer within the RAG's
`llm.timeout_seconds`); a streamed answer is relayed chunk by chunk with its citations checked.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from mlyard.core.errors import Unavailable
from mlyard.serving import asgi, citations


class RagLlm:
    """The LLM of the RAG `name`. `spec()` gives the RAG's spec now; `llm_base()` the LLM's base URL now
    (…/v1) and the headers it asks for besides the RAG's key (its own LLM replica: that replica's own
    credential), or None while none is running."""

    def __init__(self, name: str, spec: Callable[[], Any], llm_base: Callable[[], tuple[str, dict[str, str]] | None],
                 llm_key: str | None):
        self.name, self.spec, self.llm_base, self.llm_key = name, spec, llm_base, llm_key
        self.own_llm = not (spec().llm.endpoint or spec().llm.base_url)
        self._http: Any = None
        self._served: str | None = None
        self._base: str | None = None  # the LLM's base URL, once found (see _url)
        self._headers: dict[str, str] = {}  # and what it asks for

    def _client(self) -> Any:
        import httpx

        if self._http is None:
            t = self.spec().llm.timeout_seconds
            headers = {"Authorization": f"Bearer {self.llm_key}"} if self.llm_key else {}
            if self.spec().llm.endpoint:  # an mlyard endpoint counts (and budgets) the RAG's tokens under its name
                headers["x-mlyard-caller"] = f"rag:{self.name}"
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(t, connect=min(5.0, t)), headers=headers)
        return self._http

    def _url(self) -> str:
        """The LLM's chat route: found once (for the RAG's own LLM, a replica that answers its health
        check), kept until a request to it fails, then looked up again: no probe on every query."""
        if self._base is None:
            found = self.llm_base()
            self._base, self._headers = found if found else (None, {})
        base = self._base
        if not base:
            raise Unavailable(502, f"the LLM of RAG {self.name} is not running (no healthy LLM replica yet); "
                                   "retry shortly or see `mlyard rags show`")
        return f"{base.rstrip('/')}/chat/completions"

    async def _model(self, url: str) -> str:
        """The model name to ask for: the spec's, or for the RAG's own LLM replica the name it serves
        (a model folder is served by its folder's name)."""
        if not self.own_llm:
            return self.spec().llm.model
        if self._served is None:
            import httpx

            try:
                resp = await self._client().get(url.rsplit("/chat/completions", 1)[0] + "/models", headers=self._headers)
                self._served = resp.json()["data"][0]["id"]
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                raise self._failed(exc, url) from exc
        return self._served

    def _failed(self, exc: Exception, url: str) -> Unavailable:
        import httpx

        self._base = None  # the next request looks for the LLM again (another replica, a restarted one)
        if isinstance(exc, httpx.TimeoutException):
            return Unavailable(504, f"the LLM at {url} did not answer within {self.spec().llm.timeout_seconds:g} s")
        return Unavailable(502, f"the LLM at {url} cannot be reached: {type(exc).__name__}: {exc}")

    async def complete(self, request: dict) -> dict:
        """The LLM's whole chat completion for `request` (its `model` set here)."""
        import httpx

        url = self._url()
        request = {**request, "model": await self._model(url)}
        try:
            resp = await self._client().post(url, json={**request, "stream": False}, headers=self._headers)
        except httpx.HTTPError as exc:
            raise self._failed(exc, url) from exc
        if resp.status_code != 200:
            raise Unavailable(502, f"the LLM at {url} answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    async def stream(self, send: asgi.Send, request: dict, sources: list[dict], passages: list[str]) -> None:
        """The LLM's streamed answer relayed as server-sent events: renamed to the RAG, `sources` in the
        first chunk, citations judged as they come, an error event if the LLM breaks off."""
        import httpx

        url = self._url()
        client = self._client()
        request = {**request, "model": await self._model(url)}
        try:
            cm = client.stream("POST", url, json={**request, "stream": True}, headers=self._headers)
            resp = await cm.__aenter__()
        except httpx.HTTPError as exc:
            raise self._failed(exc, url) from exc
        try:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                raise Unavailable(502, f"the LLM at {url} answered {resp.status_code}: {text[:300]}")
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            first, checked, last = True, citations.StreamingCheck(sources, passages), None
            try:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = orjson.loads(data)
                    chunk["model"] = self.name
                    if first:
                        chunk["sources"] = sources
                        first = False
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if isinstance(delta.get("content"), str):  # a citation is held until it is judged
                            delta["content"] = checked.feed(delta["content"])
                    last = chunk
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"data: " + orjson.dumps(chunk) + b"\n\n"})
                if last is not None:  # what was held back, and how many citations were removed
                    tail = {**last, "choices": [{"index": 0, "delta": {"content": checked.end()}, "finish_reason": None}],
                            "citations_removed": checked.removed}
                    tail.pop("sources", None)
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"data: " + orjson.dumps(tail) + b"\n\n"})
            except httpx.HTTPError as exc:  # the LLM broke off: an error event, then the end
                err = {"error": {"message": str(self._failed(exc, url)), "type": "api_error", "code": "llm_unavailable"}}
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + orjson.dumps(err) + b"\n\n"})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            await cm.__aexit__(None, None, None)

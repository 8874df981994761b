"""The query service of a RAG: `python -m mlyard.serving.rag --rag NAME --port P`, one process per instance,
started by the replica supervisor; the gateway sends it `POST /rag/v1/query` and `/rag/v1/search`.

    GET  /health                 200 once the embedding model and the vector store answer
    POST /v1/chat/completions    an OpenAI chat-completions body (`model` = the RAG's name); with
                                 "stream": true, server-sent events ending in `data: [DONE]`
    POST /v1/search              {"query": "...", "top_k": k}: the retrieval alone
    POST /v1/embeddings          OpenAI's embeddings request: the RAG's embedding model, already loaded
                                 (a sync of this RAG embeds through it instead of loading the model again)
    GET  /v1/models              the RAG, as OpenAI lists a model

A query: the last user message is the question; it is embedded, the top-k chunks come from pgvector,
the prompt template is filled with them (numbered, with their file and place) and the question, and
the LLM's chat completion is asked for with the conversation's earlier messages before it. Its answer
goes back as the LLM wrote it, plus `sources` (file, place, score) as an extra field that OpenAI
clients ignore: top-level in a whole answer, in the first chunk of a stream. An LLM that is down or
answers with an error gives 502 with the reason; one that does not answer within the RAG's
`llm.timeout_seconds`, 504. Never a hang.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

from mlyard.core.environment import named_secret
from mlyard.core.errors import VectorStoreError
from mlyard.serving import asgi, citations
from mlyard.serving.generative import SMOLLM2
from mlyard.serving.rag_extract import extract
from mlyard.serving.rag_llm import RagLlm, Unavailable
from mlyard.tasks.rag_service import healthy_member

log = logging.getLogger("mlyard.rag")
MAX_BODY = 1024 * 1024
MAX_EMBED_INPUTS = 256  # texts one embeddings request may carry (OpenAI's route takes 2,048; a CPU is slower)


def _error(message: str, status: int, code: str = "rag_error") -> tuple[int, bytes]:
    kind = "invalid_request_error" if status < 500 else "api_error"
    return status, orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def context_of(hits: list[Any]) -> str:
    return "\n\n".join(f"[{i}] ({h.doc}{', ' + h.where if h.where else ''})\n{h.text}" for i, h in enumerate(hits, 1))


def sources_of(hits: list[Any]) -> list[dict[str, Any]]:
    return [{"index": i, "file": h.doc, "where": h.where, "score": round(h.score, 4)} for i, h in enumerate(hits, 1)]


class RagService:
    def __init__(self, name: str, spec: Any, store: Any, embedder: Any, llm_base: Any, llm_key: str | None,
                 reread: Any = None, requests_log: Any = None):
        self.name, self._spec, self.store, self.embedder = name, spec, store, embedder
        self.requests_log = requests_log  # an InferenceLog: one record per request
        self._reread, self._read_at = reread, time.monotonic()  # reread(): the spec as the catalog has it now
        self.llm = RagLlm(name, lambda: self.spec, llm_base, llm_key)  # llm_base(): its base URL now (…/v1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-retrieve")  # one DB connection

    @property
    def spec(self) -> Any:
        """The RAG's spec, read again from the catalog at most every 2 s (`mlyard rags update`)."""
        if self._reread is not None and time.monotonic() - self._read_at > 2.0:
            self._read_at = time.monotonic()
            try:
                self._spec = self._reread()
            except Exception:  # noqa: BLE001 - the catalog busy or gone: keep answering with what we have
                log.warning("could not read the spec of %s again", self.name, exc_info=True)
        return self._spec

    # -- retrieval ---------------------------------------------------------------------------------

    def _retrieve(self, question: str, k: int) -> list[Any]:
        return self.store.search(self.embedder.encode([question])[0], k)

    async def retrieve(self, question: str, k: int) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._retrieve, question, k)

    # -- HTTP ----------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "lifespan":
            return await asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            return await asgi.reply(send, 200, b'{"status":"ok"}')
        if path == "/v1/models" and method == "GET":
            return await asgi.reply(send, 200, orjson.dumps({"object": "list", "data": [
                {"id": self.name, "object": "model", "created": 0, "owned_by": "mlyard-rag"}]}))
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/search", "/v1/embeddings"):
            return await asgi.reply(send, *_error(f"no route {method} {path}; POST /rag/v1/query or /rag/v1/search",
                                                  404, "not_found"))
        if self.requests_log is None:
            return await self._handle(path, receive, send)
        seen: dict[str, Any] = {"status": 500, "error": None, "first": None}
        t0 = time.perf_counter()

        async def watched(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and seen["first"] is None:
                seen["first"] = time.perf_counter() - t0
                if seen["status"] >= 400:
                    try:
                        seen["error"] = orjson.loads(message.get("body") or b"{}")["error"]["message"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        pass
            await send(message)

        try:
            await self._handle(path, receive, watched)
        finally:
            took = time.perf_counter() - t0
            status = seen["status"]
            line = f"{method} {path} {status} {took * 1000:.2f} ms"
            if path == "/v1/chat/completions" and status == 200 and seen["first"] is not None:
                line += f" (first byte {seen['first'] * 1000:.2f} ms)"
            level = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
            try:
                self.requests_log.record(level, self.name, f"{line}: {seen['error']}" if seen["error"] else line)
            except OSError:  # a full disk never fails a query
                log.warning("could not write the request log of %s", self.name, exc_info=True)

    async def _handle(self, path: str, receive: asgi.Receive, send: asgi.Send) -> None:
        try:
            body = orjson.loads(await asgi.read_body(receive, MAX_BODY))
        except asgi.BodyTooLarge as exc:
            return await asgi.reply(send, *_error(str(exc), 413))
        except orjson.JSONDecodeError:
            return await asgi.reply(send, *_error("the body is not JSON", 400))
        if not isinstance(body, dict):
            return await asgi.reply(send, *_error("the body must be a JSON object", 400))
        try:
            if path == "/v1/search":
                return await self._search(send, body)
            if path == "/v1/embeddings":
                return await self._embeddings(send, body)
            return await self._query(send, body)
        except Unavailable as exc:
            return await asgi.reply(send, *_error(str(exc), exc.status, "llm_unavailable"))
        except VectorStoreError as exc:  # the database went away: say so (it reconnects on the next request)
            return await asgi.reply(send, *_error(str(exc), 502, "vector_store_unavailable"))

    def _top_k(self, body: dict) -> int:
        k = body.get("top_k", self.spec.top_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise ValueError(f"top_k: {k!r} is not valid: a whole number from 1 to 50")
        return k

    async def _search(self, send: asgi.Send, body: dict) -> None:
        question = body.get("query")
        if not isinstance(question, str) or not question.strip():
            return await asgi.reply(send, *_error("query: a non-empty string (the question to search for)", 400))
        try:
            k = self._top_k(body)
        except ValueError as exc:
            return await asgi.reply(send, *_error(str(exc), 400))
        t0 = time.perf_counter()
        hits = await self.retrieve(question, k)
        return await asgi.reply(send, 200, orjson.dumps({
            "model": self.name, "took_ms": round((time.perf_counter() - t0) * 1000, 2),
            "data": [{**s, "text": h.text} for s, h in zip(sources_of(hits), hits)]}))

    async def _embeddings(self, send: asgi.Send, body: dict) -> None:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return await asgi.reply(send, *_error("input: a string or a list of strings to embed", 400))
        if len(texts) > MAX_EMBED_INPUTS:
            return await asgi.reply(send, *_error(f"input: {len(texts)} texts; at most {MAX_EMBED_INPUTS} a request",
                                                  400))
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return await asgi.reply(send, *_error(f"encoding_format: {encoding!r}; float or base64", 400))
        vectors = await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.encode, texts)
        if encoding == "base64":  # OpenAI's: little-endian float32 bytes (the openai package asks for it)
            vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
        return await asgi.reply(send, 200, orjson.dumps(
            {"object": "list", "model": self.spec.embedding.model,
             "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]},
            option=orjson.OPT_SERIALIZE_NUMPY))

    async def _query(self, send: asgi.Send, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return await asgi.reply(send, *_error("messages: a list of {role, content} messages, the question last",
                                                  400))
        users = [m for m in messages if m.get("role") == "user"]
        if not users or not users[-1]["content"].strip():
            return await asgi.reply(send, *_error("messages: no user message to answer", 400))
        try:
            k = self._top_k(body)
        except ValueError as exc:
            return await asgi.reply(send, *_error(str(exc), 400))
        question = users[-1]["content"]
        hits = await self.retrieve(question, k)
        prompt = self.spec.prompt.format(context=context_of(hits), question=question)
        earlier = messages[:messages.index(users[-1])]
        request = {"model": self.spec.llm.model, "messages": [*earlier, {"role": "user", "content": prompt}],
                   "max_tokens": body.get("max_tokens") or self.spec.llm.max_tokens,
                   **{k: body[k] for k in ("temperature", "top_p", "stop", "seed") if k in body}}
        if "temperature" not in request and self.spec.llm.temperature is not None:
            request["temperature"] = self.spec.llm.temperature
        sources = sources_of(hits)
        if self.extractive:
            return await self._extracted(send, question, hits, sources, bool(body.get("stream")))
        passages = [h.text for h in hits]  # a citation stands only where its claim drew on its passage
        if body.get("stream"):
            return await self.llm.stream(send, request, sources, passages)
        answer = await self.llm.complete(request)
        answer["model"] = self.name
        answer["sources"] = sources
        removed = 0
        for choice in answer.get("choices") or []:
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"], n = citations.check(message["content"], sources, passages)
                removed += n
        answer["citations_removed"] = removed  # cited numbers (or files) not among the sources, or not drawn on
        return await asgi.reply(send, 200, orjson.dumps(answer))


    @property
    def extractive(self) -> bool:
        """Whether answers are the passages' own sentences (LlmSpec.answer; auto: with the built-in SmolLM2)."""
        llm = self.spec.llm
        if llm.answer == "auto":
            return not (llm.endpoint or llm.base_url) and llm.model == SMOLLM2
        return llm.answer == "extract"

    async def _extracted(self, send: asgi.Send, question: str, hits: list[Any], sources: list[dict], stream: bool) -> None:
        """The extractive answer (serving/rag_extract.py), in OpenAI's chat-completion shape, whole or as
        server-sent events (the sources in the first chunk, as a generated answer's)."""
        text = await asyncio.get_running_loop().run_in_executor(
            self._pool, extract, question, [h.text for h in hits], self.embedder.encode)
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not stream:
            return await asgi.reply(send, 200, orjson.dumps({
                "id": ident, "object": "chat.completion", "created": now, "model": self.name, "sources": sources,
                "citations_removed": 0, "answer_kind": "extractive",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": self.name}
        for extra, delta, finish in (({"sources": sources, "answer_kind": "extractive"},
                                      {"role": "assistant", "content": text}, None), ({"citations_removed": 0}, {}, "stop")):
            event = {**chunk, **extra, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(event) + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def build(name: str) -> RagService:
    """The service of the RAG `name` on this platform: its spec from the catalog, its vector store, its
    embedding model (loaded now), and where its LLM is."""

    from mlyard.core.connection import gateway_url, internal_token, read_state, replica_headers, replica_key_headers
    from mlyard.core.settings import Settings, in_kubernetes_pod
    from mlyard.core.specs.rag import RagSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.rags import Rags
    from mlyard.serving.inference_log import InferenceLog
    from mlyard.tasks.embeddings import embedder
    from mlyard.tasks.rag_service import llm_endpoint, query_log
    from mlyard.tasks.vectorstore import VectorStore, conninfo

    settings = Settings()
    record = Rags(Catalog(settings.catalog_db_url)).get(name)
    spec = RagSpec.model_validate(record.spec)
    state = read_state(settings)
    store = VectorStore(conninfo(spec.vector_store, settings, state.vector_store_url if state else None), record.id)
    model = embedder(spec.embedding)
    model.encode(["warm up"])
    key = named_secret(spec.llm.api_key_env)
    if key is None and spec.llm.endpoint:
        key = internal_token(settings)  # an mlyard endpoint, private or public: the platform's own token passes
    home, cluster = settings.home_dir, in_kubernetes_pod()
    rags = Rags(Catalog(settings.catalog_db_url))

    def llm_base() -> tuple[str, dict[str, str]] | None:
        if spec.llm.base_url:
            return spec.llm.base_url, {}
        if spec.llm.endpoint:
            return f"{gateway_url(settings)}/{spec.llm.endpoint}/{spec.llm.model}/openai/v1", {}
        if cluster:  # its own LLM's Service (tasks/rag_cluster.py), which answers the replicas' credential
            url = (rags.get(name).service_urls or {}).get("llm")
            return (url + "/openai/v1", replica_headers(settings)) if url else None
        found = healthy_member(home, name, "llm")  # its own LLM, called directly with that replica's credential
        return (found[0] + "/openai/v1", replica_key_headers(settings, found[1])) if found else None

    path = query_log(home, name)
    if not cluster:
        path.parent.mkdir(parents=True, exist_ok=True)
    requests_log = InferenceLog("-" if cluster else str(path),  # on a cluster, the pod's log: a record per request
                                action="RAG.Query", endpoint_id=llm_endpoint(name), stage_id="query")
    return RagService(name, spec, store, model, llm_base, key, lambda: RagSpec.model_validate(rags.get(name).spec),
                      requests_log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.serving.rag", description="A RAG's query service.")
    parser.add_argument("--rag", required=True, help="The RAG's name.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mlyard.core.connection import connect_if_running

    connect_if_running()
    service = build(args.rag)
    log.info("RAG %s: query service ready (%s)", args.rag, uuid.uuid4().hex[:6])
    from mlyard.serving.server import run_app

    run_app(service, args.host, args.port)


if __name__ == "__main__":
    main()

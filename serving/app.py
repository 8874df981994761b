"""The model server's HTTP layer: a bare ASGI application (run by uvicorn with uvloop and httptools),
kept thin so that a request costs little beyond its model call.

    GET  /                                         liveness ({"status": "alive"}, as KServe)
    GET  /v2                                       server metadata
    GET  /v2/models                                the models served here ({"models": [...]})
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{m}[/versions/{v}]             model metadata (inputs and outputs from the signature)
    GET  /v2/models/{m}[/versions/{v}]/ready       503 {"ready": false} while the model loads or compiles
    POST /v2/models/{m}[/versions/{v}]/infer       OIP v2, JSON or binary tensors; outputs predict, predict_proba,
                                                   or a pyfunc's named outputs; `parameters` to a pyfunc's params
    GET  /v2/models/{m}/stats                      statistics over the window (JSON)
    GET  /v1/models | /v1/models/{m}               model list, model ready
    POST /v1/models/{m}:predict | /v1/models/{m}/predict   {"instances": [...]} -> {"predictions": [...]}
    POST /v1/models/{m}:explain | /v1/models/{m}/explain
    GET  /metrics                                  Prometheus text
    GET  /stats                                    statistics of every model (JSON)
    GET  /openai/v1/models, POST /openai/v1/chat/completions | /openai/v1/completions, GET /_chat (its chat page)
                                                   a generative model (serving/generative.py, serving/openai_routes.py), streamed or not

Errors are `{"error": "..."}`: 400 a bad request (FP16 sent as JSON included: it travels binary), 404 an unknown model or version, 405, 413 a body over
the limit, 500 the model raised, 501 no explainer, 503 not ready (a model still loading: listed, its ready
false, its infer 503), 504 the model timed out.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Awaitable

import numpy as np
import orjson

from mlyard.core.environment import served_endpoint
from mlyard.core.errors import HttpError, SpecError
from mlyard.serving import asgi, chat_page, protocol
from mlyard.serving.batching import Batcher, ModelTimeout
from mlyard.serving.class_counts import classes_of
from mlyard.serving.inference_log import InferenceLog, new_id
from mlyard.serving.protocol import BadRequest
from mlyard.serving.runtime import ServedModel, has_strings
from mlyard.serving.stats import Stats

SERVER_NAME = "mlyard"
SERVER_VERSION = "0.1.0"




class ModelServer:
    """The ASGI application over loaded models."""

    def __init__(self, models: list[ServedModel], *, chat: Any = None, max_batch_size: int = 64,
                 max_latency_ms: float = 0.0, timeout_seconds: float = 60.0, max_body_bytes: int = 32 * 1024 * 1024,
                 inference_log: InferenceLog | None = None, loading: dict[str, str] | None = None):
        self.models: dict[str, ServedModel] = {}
        self.loading = dict(loading or {})  # name -> version of the models still loading (add() serves them)
        self._batching = (max_batch_size, max_latency_ms)
        self.max_body, self.timeout_seconds = max_body_bytes, timeout_seconds
        self.stats = Stats()
        self.log = inference_log or InferenceLog(every_request=False)  # failures always; every request on request
        self.openai = None
        if chat is not None:  # a generative.ChatModel: its routes live with it
            from mlyard.serving.openai_routes import OpenAIRoutes

            self.openai = OpenAIRoutes(chat, max_body_bytes, self.stats, self.log)
        self.behind_gateway = served_endpoint()[0] is not None
        self._batchers: dict[tuple[str, bool], Batcher] = {}
        self.ready = not self.loading
        for m in models:
            self.add(m)

    def add(self, model: ServedModel) -> None:
        """Serve `model` (one that was loading, or a new one); the server is ready once nothing loads."""
        for proba in (False, True):
            self._batchers[(model.name, proba)] = Batcher(
                functools.partial(model.predict, proba=proba), max_batch_size=self._batching[0],
                max_latency_ms=self._batching[1], timeout_seconds=self.timeout_seconds)
        self.models[model.name] = model
        self.loading.pop(model.name, None)
        self.ready = not self.loading

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "lifespan":
            return await asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        if self.openai is not None and scope["path"].startswith("/openai/"):
            return await self.openai(scope, receive, send)
        if self.openai is not None and scope["path"] in chat_page.FILES and scope["method"] in ("GET", "HEAD"):
            page, kind = chat_page.body(scope["path"])  # the chat page beside the model (serving/chat_page.py)
            return await asgi.reply(send, 200, page, kind, chat_page.HEADERS, head=scope["method"] == "HEAD")
        head = scope["method"] == "HEAD"  # answered as GET, without the body
        try:
            status, body, headers = await self._route({**scope, "method": "GET"} if head else scope, receive)
        except HttpError as exc:
            status, body, headers = exc.status, protocol.error_body(str(exc)), []
        except BadRequest as exc:
            status, body, headers = 400, protocol.error_body(str(exc)), []
        await asgi.reply(send, status, body, headers=headers, head=head)

    async def _route(self, scope: dict, receive) -> tuple[int, bytes, list]:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            return await self._v2(method, parts[1:], scope, receive)
        if parts[0] == "v1" and len(parts) >= 2 and parts[1] == "models":
            return await self._v1(method, parts[2:], scope, receive)
        if path == "/" and method == "GET":  # liveness, as KServe's model server answers it
            return 200, b'{"status":"alive"}', []
        if path == "/metrics" and method == "GET":
            return 200, self.stats.prometheus(), [(b"content-type", b"text/plain; version=0.0.4")]
        if path == "/stats" and method == "GET":
            return 200, orjson.dumps({"models": [self.summary(m) for m in self.models] + self._chat_summary()}), []
        if parts[0] == "openai":
            raise HttpError(404, "no generative model is served here (serve one with --chat-model)")
        raise HttpError(404, f"no route {method} {path}; see /v2 and /v1/models")

    # -- v2 -----------------------------------------------------------------------------------------

    async def _v2(self, method: str, parts: list[str], scope: dict, receive) -> tuple[int, bytes, list]:
        if not parts:
            _only(method, "GET")
            return 200, orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION,
                                      "extensions": ["binary_tensor_data", "statistics"]}), []
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            _only(method, "GET")
            if parts[1] == "ready" and not self.ready:
                raise HttpError(503, "the server is not ready")
            return 200, orjson.dumps({parts[1]: True}), []
        if parts == ["models"]:  # the models served here (KServe's model list)
            _only(method, "GET")
            return 200, orjson.dumps({"models": [*self.models, *self.loading]}), []
        if parts[0] != "models" or len(parts) < 2:
            raise HttpError(404, f"no route {method} /v2/{'/'.join(parts)}")
        if parts[1] in self.loading:
            ready_route = parts[2:] in (["ready"], ["versions", self.loading[parts[1]], "ready"])
            return self._still_loading(parts[1], ready_route and method == "GET")
        model = self._model(parts[1])
        rest = parts[2:]
        if len(rest) >= 2 and rest[0] == "versions":
            if rest[1] != model.version:
                raise HttpError(404, f"model {model.name!r} has no version {rest[1]!r}; it serves version {model.version}")
            rest = rest[2:]
        if not rest:
            _only(method, "GET")
            return 200, orjson.dumps({"name": model.name, "versions": [model.version], "platform": model.platform,
                                      "inputs": [t.as_dict() for t in model.inputs],
                                      "outputs": [t.as_dict() for t in model.outputs]}), []
        if rest == ["ready"]:
            _only(method, "GET")
            return 200, orjson.dumps({"name": model.name, "ready": self.ready}), []
        if rest == ["stats"]:
            _only(method, "GET")
            return 200, orjson.dumps(self.summary(model.name)), []
        if rest == ["infer"]:
            _only(method, "POST")
            return await self._timed(model, scope, self._infer(model, scope, receive))
        raise HttpError(404, f"no route {method} /v2/{'/'.join(parts)}")

    async def _infer(self, model: ServedModel, scope: dict, receive) -> tuple[int, bytes, list, int]:
        body = await self._body(receive)
        length = asgi.header(scope, protocol.HEADER_LENGTH)
        try:
            header_length = int(length) if length is not None else None
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length", length, "an integer") from None
        req = protocol.v2_request(body, header_length)
        x = model.v2_rows(req.inputs)
        # request- and input-level parameters meant for the model (an input's own win)
        given = dict(req.parameters)
        for t in req.inputs:
            given.update(t.parameters or {})
        params = model.model_params(given)
        if model.named or params or isinstance(x, dict):  # named tensors, too: one call with all of them
            return await self._infer_outputs(model, req, x, params)
        names = [o["name"] for o in req.outputs] or [model.outputs[0].name]
        known = {t.name for t in model.outputs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest("outputs", unknown[0], f"one of the model's outputs: {', '.join(sorted(known))}")
        proba = "predict_proba" in names
        where = f"inputs[0] ({req.inputs[0].name!r})" if len(req.inputs) == 1 else "inputs"
        model.check_types(x, where)
        preds, probs = await self._predict(model, x, proba, where)
        if model.takes_rows:
            from mlyard.serving.custom import as_tensor

            preds = as_tensor(preds)
        binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", req.binary_output)) for o in req.outputs}
        outputs = [(n, probs if n == "predict_proba" else preds, binary.get(n, req.binary_output)) for n in names]
        body_out, head = protocol.v2_response(model.name, model.version, req.id, outputs)  # type: ignore[arg-type]
        headers = self._classes_header(model, preds, probs)
        if head is not None:
            headers.append((b"inference-header-content-length", str(head).encode()))
        return 200, body_out, headers, len(x)

    async def _infer_outputs(self, model: ServedModel, req: protocol.InferRequest, x: Any,
                             params: dict[str, Any]) -> tuple[int, bytes, list, int]:
        """v2 for a model with named outputs or given parameters: one model call (not batched: parameters
        are a request's own), the requested outputs by name, the parameters it ran with in the answer."""
        where = f"inputs[0] ({req.inputs[0].name!r})" if len(req.inputs) == 1 else "inputs"
        model.check_types(x, where)
        outs = await self._outputs(model, x, params, where)
        names = [o["name"] for o in req.outputs] or list(outs)
        unknown = [n for n in names if n not in outs]
        if unknown:
            raise BadRequest("outputs", unknown[0], f"one of the model's outputs: {', '.join(outs)}")
        binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", req.binary_output)) for o in req.outputs}
        body_out, head = protocol.v2_response(model.name, model.version, req.id,
                                              [(n, outs[n], binary.get(n, req.binary_output)) for n in names],
                                              parameters=params or None)
        headers = [(b"inference-header-content-length", str(head).encode())] if head is not None else []
        return 200, body_out, headers, model.rows_in(x)

    async def _outputs(self, model: ServedModel, x: Any, params: dict[str, Any], where: str) -> dict[str, np.ndarray]:
        if not self.ready:
            raise HttpError(503, "the server is not ready")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, model.predict_outputs, x, params),
                                          self.timeout_seconds)
        except asyncio.TimeoutError:
            raise HttpError(504, f"model {model.name!r}: no answer within {self.timeout_seconds:g} s") from None
        except Exception as exc:  # noqa: BLE001
            raise self._model_error(model, x, exc, where) from None

    # -- v1 -----------------------------------------------------------------------------------------

    async def _v1(self, method: str, parts: list[str], scope: dict, receive) -> tuple[int, bytes, list]:
        if not parts:
            _only(method, "GET")
            return 200, orjson.dumps({"models": [*self.models, *self.loading]}), []
        name, _, verb = parts[0].partition(":")
        if not verb and len(parts) == 2:
            verb = parts[1]
        elif len(parts) > 2 or (verb and len(parts) > 1):
            raise HttpError(404, f"no route {method} /v1/models/{'/'.join(parts)}")
        if name in self.loading:
            return self._still_loading(name, not verb and method == "GET")
        model = self._model(name)
        if not verb:
            _only(method, "GET")
            return 200, orjson.dumps({"name": model.name, "ready": self.ready}), []
        if verb == "predict":
            _only(method, "POST")
            return await self._timed(model, scope, self._predict_v1(model, receive))
        if verb == "explain":
            _only(method, "POST")
            if not getattr(model, "explainable", False):
                raise HttpError(501, f"model {model.name!r} has no explainer (linear models are explained: intercept "
                                     "and per-feature contributions)")
            return await self._timed(model, scope, self._explain(model, receive))
        raise HttpError(404, f"no route {method} /v1/models/{'/'.join(parts)}; use :predict or :explain")

    async def _predict_v1(self, model: ServedModel, receive) -> tuple[int, bytes, list, int]:
        body = await self._body(receive)
        instances, params = protocol.v1_instances(body)
        x = model.rows(instances)
        proba = bool(params.get("probabilities", False))
        if proba and not model.is_classifier:
            raise BadRequest("parameters.probabilities", True, f"false: model {model.name!r} gives no probabilities")
        mine = model.model_params(params)
        if model.named or mine:  # named outputs: one record per row; parameters go to the model
            model.check_types(x, "instances")
            outs = await self._outputs(model, x, mine, "instances")
            predictions: Any = [dict(zip(outs, row)) for row in zip(*(protocol.jsonable(v) for v in outs.values()))] \
                if model.named or len(outs) > 1 else outs[next(iter(outs))]
            return 200, protocol.v1_response(predictions), [], len(x)
        model.check_types(x, "instances")
        preds, probs = await self._predict(model, x, proba, "instances")
        return 200, protocol.v1_response(probs if proba else preds), self._classes_header(model, preds, probs), len(x)

    async def _explain(self, model: ServedModel, receive) -> tuple[int, bytes, list, int]:
        body = await self._body(receive)
        instances, _ = protocol.v1_instances(body)
        x = model.rows(instances)
        try:
            explanations = model.explain(x)
        except Exception as exc:  # the model raised: 500 with what it said
            raise HttpError(500, f"model {model.name!r} failed: {type(exc).__name__}: {exc}"[:2000]) from None
        return 200, orjson.dumps({"explanations": explanations}, option=orjson.OPT_SERIALIZE_NUMPY), [], len(x)

    # -- shared -------------------------------------------------------------------------------------

    async def _predict(self, model: ServedModel, x: Any, proba: bool,
                       where: str = "the input") -> tuple[np.ndarray, np.ndarray | None]:
        if not self.ready:
            raise HttpError(503, "the server is not ready")
        try:
            preds, probs = await self._batchers[(model.name, proba)].run(x)
        except ModelTimeout as exc:
            raise HttpError(504, f"model {model.name!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise self._model_error(model, x, exc, where) from None
        if model.is_classifier:
            self.stats.record_classes(model.name, np.asarray(preds), probs)
        return preds, probs

    @staticmethod
    def _model_error(model: ServedModel, x: Any, exc: BaseException, where: str) -> Exception:
        """What a model's exception answers: a request error as it was, 400 for strings the model cannot
        take (the request is wrong, not the model), else 500 with what the model said."""
        if isinstance(exc, (BadRequest, HttpError)):
            return exc
        if isinstance(exc, (ValueError, TypeError)) and has_strings(x):
            return BadRequest(where, "strings", f"the values model {model.name!r} takes: it refused them "
                              f"({type(exc).__name__}: {exc})"[:2000])
        return HttpError(500, f"model {model.name!r} failed: {type(exc).__name__}: {exc}"[:2000])

    def _classes_header(self, model: ServedModel, preds: Any, probs: np.ndarray | None) -> list:
        """Behind the gateway, a classifier's answer says what it predicted (x-mlyard-classes: per class the
        predictions, their confidence sum and how many had one), for the endpoint's statistics; the
        gateway takes the header off."""
        if not self.behind_gateway or not model.is_classifier:
            return []
        return [(b"x-mlyard-classes", classes_of(preds, probs))]

    async def _timed(self, model: ServedModel, scope: dict,
                     work: Awaitable[tuple[int, bytes, list, int]]) -> tuple[int, bytes, list]:
        started = time.perf_counter()
        try:
            status, body, headers, rows = await work
        except (HttpError, SpecError) as exc:
            status = exc.status if isinstance(exc, HttpError) else 400
            seconds = time.perf_counter() - started
            self.stats.record(model.name, seconds, 0, status)
            if status >= 500 or self.log.every_request:
                self.log.request(model.name, scope["method"], scope["path"], status, 0, seconds,
                                 asgi.header(scope, "x-request-id") or new_id(), str(exc))
            raise
        seconds = time.perf_counter() - started
        self.stats.record(model.name, seconds, rows, status)
        if self.log.every_request:  # one record per request, and its id back to the caller
            iid = asgi.header(scope, "x-request-id") or new_id()
            self.log.request(model.name, scope["method"], scope["path"], status, rows, seconds, iid)
            headers = [*headers, (b"x-inference-id", iid.encode())]
        return status, body, headers

    def summary(self, name: str) -> dict[str, Any]:
        """A model's statistics, with how its requests were batched since the server started."""
        out = self.stats.summary(name)
        calls = sum(self._batchers[(name, p)].batches for p in (False, True))
        rows = sum(self._batchers[(name, p)].batched_rows for p in (False, True))
        out["batching"] = {"model_calls": calls, "rows": rows,
                           "mean_rows_per_call": round(rows / calls, 2) if calls else None}
        return out

    def _chat_summary(self) -> list[dict[str, Any]]:
        if self.openai is None:
            return []
        out = self.stats.summary(self.openai.chat.name)
        out["rows_are"] = "generated tokens"
        return [out]

    def _still_loading(self, name: str, ready_route: bool) -> tuple[int, bytes, list]:
        """A model still loading or compiling: its ready route answers ready false, anything else 503."""
        if ready_route:
            return 503, orjson.dumps({"name": name, "ready": False}), []
        raise HttpError(503, f"model {name!r} (version {self.loading[name]}) is still loading; "
                             f"GET /v2/models/{name}/ready answers when it is ready")

    def _model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise HttpError(404, f"model {name!r} is not served here; served: {', '.join(self.models) or 'none'}")
        return model

    async def _body(self, receive) -> bytes:
        try:
            return await asgi.read_body(receive, self.max_body)
        except asgi.BodyTooLarge as exc:
            raise HttpError(413, str(exc)) from None


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} is not allowed here; use {allowed}")


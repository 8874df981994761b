"""A replica's answer relayed to the gateway's client (serving/gateway.py takes the replica), counted for
the endpoint's statistics and its promotion gates, kept whole when a shadow stage is to compare it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from mlyard.serving.gateway_state import Shared, Tracked
from mlyard.serving.proxy import UpstreamError
from mlyard.serving.routing import Replica, Route
from mlyard.serving.traffic import STAGE_HEADER, Split
from mlyard.serving.usage import HEADER as USAGE_HEADER
from mlyard.serving.usage import Scan

log = logging.getLogger("mlyard.gateway")


@dataclass
class Taken:
    """A request a replica took: the route and stage it went to, its statistics key, the replica, its answer."""

    route: Route
    stage: str
    key: tuple[str, str, str]
    replica: Replica
    tracked: Tracked
    resp: Any
    caller: str = "anyone"  # whose call it is, for the statistics (serving/access.py caller_of)


async def relay(shared: Shared, send, taken: Taken, split: Split | None, keep: bool, started: float) -> tuple[bytes | None, bool]:
    """The replica's answer streamed to the client (the stage named when traffic is shared), counted
    for the statistics and the gates, with a generative answer's tokens (serving/usage.py): (the whole
    answer, when `keep` and it was short; whether it failed)."""
    resp, route, stage = taken.resp, taken.route, taken.stage
    classes, usage, out_headers = None, None, []
    for k, v in resp.headers:
        if k == b"x-mlyard-classes":
            classes = v
        elif k == USAGE_HEADER:
            usage = v
        else:
            out_headers.append((k, v))
    scan = Scan(usage, started, route.rest.endswith("completions"))
    failed, whole = resp.status >= 500, None
    if split is not None:
        out_headers.append((STAGE_HEADER, stage.encode()))
    try:
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        whole = resp.complete()
        if whole is not None:  # one write for the body and its end
            whole = scan.whole(whole, time.perf_counter())
            await send({"type": "http.response.body", "body": whole})
        else:
            kept: list[bytes] | None = [] if keep else None  # the answer, for the shadow's comparison
            async for chunk in resp.body():
                chunk = scan.feed(chunk, time.perf_counter())
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if kept is not None:
                    kept.append(chunk)
                    if len(kept) > 256:  # a long stream (a chat's tokens): not compared
                        kept = None
            await send({"type": "http.response.body", "body": scan.rest()})
            whole = b"".join(kept) if kept is not None else None
    except UpstreamError as exc:
        failed = True
        log.warning("replica %s broke off its answer: %s", taken.replica.url, exc)
    except OSError:  # the client hung up (as OpenAI's client does once it reads [DONE]): no failure of the model's
        whole = None
    finally:
        resp.close()  # back to the pool when read to the end, else closed
        taken.tracked.active -= 1
        shared.router.release(taken.replica)
        ms = (time.perf_counter() - started) * 1000
        shared.stats.record(taken.key, ms, failed or resp.status >= 400, classes, caller=taken.caller,
                            usage=scan.result())
        if split is not None:
            shared.live.record((route.endpoint, stage), ms, failed)
    return whole, failed

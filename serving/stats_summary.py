"""A period's statistics from its merged minutes (serving/endpoint_stats.py): latency kept as a histogram with
buckets 4 % wide (from 10 µs to hours), so any period's percentiles come from merged minutes, within 4 %; a
generative model's tokens, first tokens and waits for a place in its batch. Pure."""

from __future__ import annotations

import math
from typing import Any

_BASE_MS, _GROWTH = 0.01, 1.04
_LOG_GROWTH = math.log(_GROWTH)


def latency_bucket(ms: float) -> int:
    return 0 if ms <= _BASE_MS else int(math.log(ms / _BASE_MS) / _LOG_GROWTH) + 1


def bucket_value(bucket: int) -> float:
    return _BASE_MS if bucket == 0 else _BASE_MS * _GROWTH ** (bucket - 0.5)


def add_usage(acc: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """Merge a minute's token figures into `acc` (a new dict when None): answers counted, tokens in and out,
    the first tokens' times (sum, count, histogram), the generating time after them (for tokens a second), and
    the waits for a place in the model's batch (sum, count, longest)."""
    if acc is None:
        acc = {"answers": 0, "in": 0, "out": 0, "ttft_sum": 0.0, "ttft_n": 0, "ttft_hist": {}, "decode_ms": 0.0,
               "decoded": 0, "queued_sum": 0.0, "queued_n": 0, "queued_max": 0.0}
    for name in ("answers", "in", "out", "ttft_sum", "ttft_n", "decode_ms", "decoded", "queued_sum", "queued_n"):
        acc[name] = acc.get(name, 0) + other.get(name, 0)  # a minute stored before the waits were kept has none
    acc["queued_max"] = max(acc.get("queued_max", 0.0), other.get("queued_max", 0.0))
    for b, n in (other.get("ttft_hist") or {}).items():
        acc["ttft_hist"][int(b)] = acc["ttft_hist"].get(int(b), 0) + n
    return acc


def percentiles(hist: dict[int, int]) -> dict[str, float | None]:
    total = sum(hist.values())
    if not total:
        return {"p50": None, "p95": None, "p99": None}
    out: dict[str, float | None] = {}
    ordered = sorted(hist.items())
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        rank, seen = q * total, 0
        for b, n in ordered:
            seen += n
            if seen >= rank:
                out[name] = round(bucket_value(b), 3)
                break
    return out


def summarize(acc: dict[str, Any]) -> dict[str, Any]:
    calls = acc["calls"]
    out: dict[str, Any] = {"calls": calls, "failures": acc["failures"],
                           "failure_rate": round(acc["failures"] / calls, 4) if calls else None,
                           "latency_ms": {"mean": round(acc["latency_sum"] / calls, 3) if calls else None,
                                          **percentiles(acc["hist"])},
                           "callers": [{"caller": who, "calls": c[0], "failures": c[1],  # the busiest first
                                        **({"tokens_in": c[2], "tokens_out": c[3]} if acc.get("tokens") else {})}
                                       for who, c in sorted(acc.get("callers", {}).items(), key=lambda i: (-i[1][0], i[0]))]}
    if (tokens := acc.get("tokens")) is not None:
        ttft = {"mean": round(tokens["ttft_sum"] / tokens["ttft_n"], 1) if tokens["ttft_n"] else None,
                **percentiles(tokens["ttft_hist"])}
        out["tokens"] = {"answers": tokens["answers"], "in": tokens["in"], "out": tokens["out"], "ttft_ms": ttft,
                         "tokens_per_second": round(tokens["decoded"] / (tokens["decode_ms"] / 1000), 2)
                         if tokens["decode_ms"] > 0 else None,
                         "queued_ms": {"answers": tokens.get("queued_n", 0), "max": round(tokens.get("queued_max", 0), 1),
                                       "mean": round(tokens["queued_sum"] / tokens["queued_n"], 1)
                                       if tokens.get("queued_n") else None}}
    classes = acc["classes"]
    if classes:
        scored = sum(v[2] for v in classes.values())
        out["predictions"] = {k: int(v[0]) for k, v in sorted(classes.items())}
        out["average_confidence"] = round(sum(v[1] for v in classes.values()) / scored, 4) if scored else None
        out["average_confidence_per_class"] = {k: round(v[1] / v[2], 4) if v[2] else None
                                               for k, v in sorted(classes.items())}
    return out

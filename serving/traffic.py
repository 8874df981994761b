"""Traffic shares at the gateway, pure (DESIGN §8): which stage answers a request to the endpoint's default
URL, whether it is mirrored to a shadow stage, whether two answers agree, and the running totals the
live and shadow gates judge.

- A request to `/{endpoint}/{model}/...` goes to a stage with a weight with that probability (per model:
  a stage takes only the models it serves), else to the default stage. A caller that sends
  `x-mlyard-affinity: <any id>` gets the same stage for the same id while the weights hold (the id is
  hashed to a bucket of 100), so its answers stay consistent.
- A shadow share mirrors that fraction of the default stage's requests to the shadow stage after the
  client has its answer; the two answers are compared (`agree`) and counted, never returned.
- `LiveCounts` keeps, per (endpoint, stage) that shares traffic, calls, failures (500 and above) and a
  latency histogram (serving/endpoint_stats.py's buckets, 4 % wide), and for a shadow the compared pairs; the gateway writes them to the catalog every
  second (registry/traffic.py), and a gate takes the difference of two readings (`since`, `judge_*`).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from mlyard.serving.stats_summary import bucket_value, latency_bucket

AFFINITY_HEADER = b"x-mlyard-affinity"
STAGE_HEADER = b"x-mlyard-stage"  # on an answer to a split endpoint: the stage that answered


@dataclass(frozen=True)
class Split:
    """One endpoint's shares: stages with a weight (in order, with the models they serve) and shadows."""

    weights: tuple[tuple[str, int, frozenset[str]], ...] = ()
    shadows: tuple[tuple[str, int, frozenset[str]], ...] = ()
    tolerance: float = 1e-6  # shadow answers' numbers agree within tolerance x max(1, |default's|)

    @classmethod
    def of(cls, stages: dict[str, dict[str, Any]], models: dict[str, set[str]],
           tolerance: float | None = None) -> "Split | None":
        """From the catalog's routing entry of an endpoint (`stages`) and each stage's models; None when
        no stage shares its traffic."""
        weights = tuple((name, st["weight"], frozenset(models.get(name, ()))) for name, st in sorted(stages.items())
                        if st.get("weight"))
        shadows = tuple((name, st["shadow"], frozenset(models.get(name, ()))) for name, st in sorted(stages.items())
                        if st.get("shadow"))
        return cls(weights, shadows, 1e-6 if tolerance is None else tolerance) if weights or shadows else None

    def stages(self) -> set[str]:
        return {name for name, _, _ in self.weights + self.shadows}

    def choose(self, model: str, affinity: bytes | None = None) -> str | None:
        """The stage with a weight that takes this request, or None for the default stage."""
        if not self.weights:
            return None
        bucket = zlib.crc32(affinity) % 100 if affinity else random.random() * 100
        upper = 0
        for name, weight, served in self.weights:
            upper += weight
            if bucket < upper:
                return name if model in served else None
        return None

    def shadow(self, model: str, affinity: bytes | None = None) -> str | None:
        """The shadow stage this request is mirrored to, or None."""
        for name, share, served in self.shadows:
            if model in served and (share >= 100 or random.random() * 100 < share):
                return name
        return None


def _numbers(value: Any, out: list) -> None:
    if isinstance(value, list):
        for v in value:
            _numbers(v, out)
    elif isinstance(value, dict):
        for k in sorted(value):
            _numbers(value[k], out)
    else:
        out.append(value)


def _answer(body: bytes) -> list | None:
    """The predictions of an answer, flattened: v1 `predictions`, v2 `outputs[].data` (by name), an Azure
    entry script's or OpenAI's JSON as it is. None when the body is not JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        if "predictions" in doc:
            doc = doc["predictions"]
        elif isinstance(doc.get("outputs"), list):
            doc = {str(o.get("name")): o.get("data") for o in doc["outputs"] if isinstance(o, dict)}
        elif "choices" in doc:  # a completion: the text only (ids and timings always differ)
            doc = [c.get("message", c.get("text")) for c in doc["choices"] if isinstance(c, dict)]
    out: list = []
    _numbers(doc, out)
    return out


def agree(primary: bytes, shadow: bytes, tolerance: float = 1e-6) -> bool:
    """Whether two answers agree: the same labels, and numbers within tolerance x max(1, |primary's|)."""
    a, b = _answer(primary), _answer(shadow)
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            if x != y:
                return False
        elif abs(x - y) > tolerance * max(1.0, abs(x)):
            return False
    return True


@dataclass
class _Totals:
    calls: int = 0
    failures: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    pairs: int = 0
    agreed: int = 0
    shadow_failures: int = 0
    shadow_hist: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures, "hist": {str(k): v for k, v in self.hist.items()},
                "pairs": self.pairs, "agreed": self.agreed, "shadow_failures": self.shadow_failures,
                "shadow_hist": {str(k): v for k, v in self.shadow_hist.items()}}


class LiveCounts:
    """Running totals per (endpoint, stage), kept only for stages that share traffic (and their default)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], _Totals] = {}
        self._dirty: set[tuple[str, str]] = set()

    def record(self, key: tuple[str, str], ms: float, failed: bool) -> None:
        t = self._totals.get(key)
        if t is None:
            t = self._totals[key] = _Totals()
        t.calls += 1
        t.failures += failed
        b = latency_bucket(ms)
        t.hist[b] = t.hist.get(b, 0) + 1
        self._dirty.add(key)

    def record_pair(self, key: tuple[str, str], agreed: bool | None, shadow_ms: float, failed: bool) -> None:
        """A mirrored request to the shadow stage `key`: whether it agreed (None: not compared)."""
        t = self._totals.get(key)
        if t is None:
            t = self._totals[key] = _Totals()
        if agreed is not None:
            t.pairs += 1
            t.agreed += agreed
        t.shadow_failures += failed
        b = latency_bucket(shadow_ms)
        t.shadow_hist[b] = t.shadow_hist.get(b, 0) + 1
        self._dirty.add(key)

    def changed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The totals that changed since the last call (what the gateway writes)."""
        out = {k: self._totals[k].as_dict() for k in self._dirty}
        self._dirty.clear()
        return out


# -- the gates' arithmetic, on totals read from every gateway replica ----------------------------------

def merged(readings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every gateway replica's totals (gateway id -> totals), summed."""
    out: dict[str, Any] = {"calls": 0, "failures": 0, "hist": {}, "pairs": 0, "agreed": 0, "shadow_failures": 0,
                           "shadow_hist": {}}
    for c in readings.values():
        for k in ("calls", "failures", "pairs", "agreed", "shadow_failures"):
            out[k] += c.get(k, 0)
        for h in ("hist", "shadow_hist"):
            for b, n in c.get(h, {}).items():
                out[h][b] = out[h].get(b, 0) + n
    return out


def since(now: dict[str, dict[str, Any]], then: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What happened between two readings (per gateway replica: one that restarted counts from zero)."""
    diff: dict[str, dict[str, Any]] = {}
    for gw, c in now.items():
        old = then.get(gw, {})
        if c.get("calls", 0) < old.get("calls", 0) or c.get("pairs", 0) < old.get("pairs", 0):
            old = {}  # its totals went back: a new process under the same id
        d = {k: c.get(k, 0) - old.get(k, 0) for k in ("calls", "failures", "pairs", "agreed", "shadow_failures")}
        for h in ("hist", "shadow_hist"):
            d[h] = {b: n - old.get(h, {}).get(b, 0) for b, n in c.get(h, {}).items() if n - old.get(h, {}).get(b, 0) > 0}
        diff[gw] = d
    return merged(diff)


def summary(counts: dict[str, Any]) -> dict[str, Any]:
    """Totals as people read them: requests, failures, error rate, p99, compared pairs and agreement."""
    calls, pairs = counts["calls"], counts["pairs"]
    return {"requests": calls, "failures": counts["failures"],
            "error_rate": round(counts["failures"] / calls, 4) if calls else None, "p99_ms": p99(counts["hist"]),
            "mirrored_pairs": pairs, "agreement": round(counts["agreed"] / pairs, 4) if pairs else None,
            "shadow_failures": counts["shadow_failures"], "shadow_p99_ms": p99(counts["shadow_hist"])}


def p99(hist: dict[str, int]) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    seen = 0
    for b in sorted(hist, key=int):
        seen += hist[b]
        if seen >= 0.99 * total:
            return round(bucket_value(int(b)), 3)
    return None


@dataclass(frozen=True)
class Judgement:
    """A gate's verdict on counts: passed, failed, or waiting for more requests (`passed` None)."""

    gate: str
    passed: bool | None
    measured: dict[str, Any]
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "measured": self.measured, "why": self.why}


def judge_live(counts: dict[str, Any], max_error_rate: float | None, max_p99_ms: float | None,
               min_requests: int) -> Judgement:
    """The live gate on the candidate's counts since its step began. A failure rate over the limit fails
    as soon as min_requests have been seen; fewer requests wait, never fail."""
    calls = counts["calls"]
    rate = counts["failures"] / calls if calls else None
    latency = p99(counts["hist"])
    measured = {"requests": calls, "error_rate": None if rate is None else round(rate, 4), "p99_ms": latency}
    if calls < min_requests:
        return Judgement("live", None, measured, f"{calls} of the {min_requests} requests needed so far")
    if max_error_rate is not None and rate is not None and rate > max_error_rate:
        return Judgement("live", False, measured, f"error rate {rate:.4f} over {calls} requests > max_error_rate "
                         f"{max_error_rate}")
    if max_p99_ms is not None and latency is not None and latency > max_p99_ms:
        return Judgement("live", False, measured, f"p99 {latency} ms over {calls} requests > max_p99_ms {max_p99_ms}")
    return Judgement("live", True, measured, f"error rate {rate:.4f}, p99 {latency} ms over {calls} requests")


def judge_shadow(counts: dict[str, Any], min_agreement: float, min_pairs: int) -> Judgement:
    pairs = counts["pairs"]
    rate = counts["agreed"] / pairs if pairs else None
    measured = {"pairs": pairs, "agreement": None if rate is None else round(rate, 4),
                "shadow_failures": counts["shadow_failures"], "shadow_p99_ms": p99(counts["shadow_hist"])}
    if pairs < min_pairs:
        return Judgement("shadow", None, measured, f"{pairs} of the {min_pairs} compared answers needed so far")
    if rate is not None and rate < min_agreement:
        return Judgement("shadow", False, measured, f"agreement {rate:.4f} over {pairs} answers < min_agreement "
                         f"{min_agreement}")
    return Judgement("shadow", True, measured, f"agreement {rate:.4f} over {pairs} answers")


def shared_out(route: Any, split: Split | None, headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any, str | None]:
    """For a default-URL request (a mlyard.serving.routing.Route) of an endpoint whose stages share its traffic: the
    stage the shares pick (the default's route kept as the fallback) or the shadow stage to copy it to."""
    if split is None or route.stage is not None:
        return route, None, None
    affinity = next((v for k, v in headers if k == AFFINITY_HEADER), None)
    chosen = split.choose(route.model, affinity)
    if chosen is not None:
        return type(route)(route.endpoint, chosen, route.model, route.rest), route, None
    return route, None, split.shadow(route.model, affinity) if split.shadows else None

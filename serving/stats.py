"""What a replica counts, per model: requests, failures, rows and latency over a time window (mean,
p50, p95, p99), and for classifiers the predictions per class and the average confidence, overall and
per class (the statistics a console shows). The same counts are Prometheus metrics for `/metrics`.
"""

from __future__ import annotations

import random
import time
from array import array
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

WINDOW_SECONDS = 300
SAMPLES_PER_SECOND = 256  # latencies kept per second (a uniform sample beyond that): memory stays bounded


class _Second:
    """One second of one model's requests. Latencies live in an array (no objects for the garbage
    collector to walk on a busy server)."""

    __slots__ = ("second", "requests", "failures", "rows", "latencies", "seen")

    def __init__(self, second: int):
        self.second, self.requests, self.failures, self.rows, self.seen = second, 0, 0, 0, 0
        self.latencies = array("d")

    def add(self, seconds: float, rows: int, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.failures += 1
            return
        self.rows += rows
        self.seen += 1
        if len(self.latencies) < SAMPLES_PER_SECOND:
            self.latencies.append(seconds)
        else:  # reservoir sampling: every latency of this second equally likely to be kept
            j = random.randrange(self.seen)
            if j < SAMPLES_PER_SECOND:
                self.latencies[j] = seconds
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    def __init__(self, window_seconds: int = WINDOW_SECONDS):
        self.window = window_seconds
        self.started = time.time()
        self._seconds: dict[str, list[_Second | None]] = {}  # model -> a ring of one-second buckets
        self._classes: dict[str, dict[str, list[float]]] = {}  # model -> class -> [count, confidence sum]
        self.registry = CollectorRegistry()
        self.requests = Counter("mlyard_inference_requests", "Inference requests.", ["model", "status"],
                                registry=self.registry)
        self.rows = Counter("mlyard_inference_rows", "Rows predicted.", ["model"], registry=self.registry)
        self.latency = Histogram("mlyard_inference_seconds", "Inference latency in seconds.", ["model"],
                                 buckets=_BUCKETS, registry=self.registry)

    def record(self, model: str, seconds: float, rows: int, status: int) -> None:
        failed = status >= 400
        now = int(time.monotonic())
        ring = self._seconds.get(model)
        if ring is None:
            ring = self._seconds[model] = [None] * self.window
        bucket = ring[now % self.window]
        if bucket is None or bucket.second != now:
            bucket = ring[now % self.window] = _Second(now)
        bucket.add(seconds, rows, failed)
        self.requests.labels(model, str(status)).inc()
        if not failed:
            self.rows.labels(model).inc(rows)
            self.latency.labels(model).observe(seconds)

    def record_classes(self, model: str, predictions: np.ndarray, probabilities: np.ndarray | None) -> None:
        per = self._classes.setdefault(model, {})
        conf = probabilities.max(axis=1) if probabilities is not None else None
        for i, label in enumerate(predictions.tolist()):
            entry = per.setdefault(str(label), [0, 0.0, 0])
            entry[0] += 1
            if conf is not None:
                entry[1] += float(conf[i])
                entry[2] += 1

    def summary(self, model: str) -> dict[str, Any]:
        now = int(time.monotonic())
        live = [b for b in self._seconds.get(model, []) if b is not None and now - b.second < self.window]
        samples = [np.frombuffer(b.latencies, dtype=np.float64) for b in live if len(b.latencies)]
        lat = np.concatenate(samples) * 1000.0 if samples else None
        out: dict[str, Any] = {
            "model": model, "window_seconds": self.window,
            "requests": sum(b.requests for b in live), "failures": sum(b.failures for b in live),
            "rows": sum(b.rows for b in live),
            "latency_ms": None if lat is None else {
                "mean": round(float(lat.mean()), 3), "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
        }
        per = self._classes.get(model)
        if per:
            total = sum(v[0] for v in per.values())
            scored = sum(v[2] for v in per.values())
            out["classes"] = {
                "predictions": {k: v[0] for k, v in sorted(per.items())},
                "average_confidence": round(sum(v[1] for v in per.values()) / scored, 4) if scored else None,
                "average_confidence_per_class": {k: round(v[1] / v[2], 4) if v[2] else None for k, v in sorted(per.items())},
                "total": total,
            }
        return out

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

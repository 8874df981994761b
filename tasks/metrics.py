"""Metrics from a script's output: parse `name=value` lines (or user regexes) into (name, value, step).

`MetricParser` is pure. `MetricStream` hands parsed metrics to a sink (MLflow) from a background
thread, in batches, so that a chatty script is never slowed by the tracking store and a metric is
visible well under a second after its line was printed.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

from mlyard.core.metrics import MetricLineError, json_metric_values, metric_values

STEP_NAMES = ("step", "epoch", "iteration", "global_step")
COUNTERS_ONLY = ("step", "global_step")  # a step and nothing more; epoch and iteration are also metrics


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    step: int
    timestamp_ms: int


log = logging.getLogger("mlyard.metrics")


class MetricParser:
    """Turns output lines into metrics.

    Each pattern's group 1 is the name and group 2 the value (Katib's convention). A line that also
    carries `step=`, `epoch=`, `iteration=` or `global_step=` gives its metrics that step (`epoch` and
    `iteration` are logged as metrics too, so their curve shows); otherwise a metric's step counts
    its own occurrences (0, 1, 2, ...).

    A pattern given as (name, pattern) reads that metric by core/metrics.py's rules (a tuning's
    `metrics[].regex`). With `json_format`, lines are Katib's JSON objects instead (`names`: the keys
    to read; None: every numeric key) and a line's `timestamp` is its metrics' time; the first line
    that cannot be read is kept in `error` (the collection has failed) and nothing after it counts; a
    `timestamp` that cannot be read is not such a line: its metrics count without it (`notes`, logged once).
    """

    def __init__(self, patterns: Sequence[str | tuple[str | None, re.Pattern[str]]], json_format: bool = False,
                 names: Collection[str] | None = None):
        self.patterns: list[tuple[str | None, re.Pattern[str]]] = [
            p if isinstance(p, tuple) else (None, re.compile(p)) for p in patterns]
        self.json_format, self.names = json_format, names
        self.error: str | None = None
        self.notes: list[str] = []  # said once each: a timestamp that could not be read
        self._counts: dict[str, int] = {}

    def _bad_timestamp(self, why: str) -> None:
        if not self.notes:
            log.warning("%s (said once)", why)
            self.notes.append(why)

    def parse(self, line: str, now_ms: int | None = None) -> list[Metric]:
        stamp = None
        if self.json_format:
            if self.error is not None:
                return []
            try:
                found, stamp = json_metric_values(line, self.names, self._bad_timestamp)
            except MetricLineError as exc:
                self.error = str(exc)
                return []
        else:
            found = metric_values(line, self.patterns)
        if not found:
            return []
        now_ms = stamp if stamp is not None else int(time.time() * 1000) if now_ms is None else now_ms
        explicit = next((int(found[n]) for n in STEP_NAMES if n in found), None)
        out = []
        for name, value in found.items():
            if name in COUNTERS_ONLY and explicit is not None:
                continue
            step = self._counts.get(name, 0) if explicit is None else explicit
            self._counts[name] = self._counts.get(name, 0) + 1
            out.append(Metric(name, value, step, now_ms))
        return out


def latest(metrics: Iterable[Metric]) -> dict[str, float]:
    """The last value of each metric."""
    out: dict[str, float] = {}
    for m in metrics:
        out[m.name] = m.value
    return out


class MetricStream:
    """Background batching from parser to sink. Use as a context manager; `put` is cheap."""

    def __init__(self, sink: Callable[[list[Metric]], None], flush_seconds: float = 0.2):
        self.sink, self.flush_seconds = sink, flush_seconds
        self._queue: queue.Queue[Metric | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlyard-metrics", daemon=True)
        self.errors: list[BaseException] = []
        self.seen: list[Metric] = []

    def __enter__(self) -> "MetricStream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def put(self, metrics: Iterable[Metric]) -> None:
        for m in metrics:
            self.seen.append(m)
            self._queue.put(m)

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[Metric] = []
            try:
                item = self._queue.get(timeout=self.flush_seconds)
                if item is None:
                    done = True
                else:
                    batch.append(item)
                # Take whatever else is already waiting, without blocking.
                while True:
                    item = self._queue.get_nowait()
                    if item is None:
                        done = True
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            if batch:
                try:
                    self.sink(batch)
                except Exception as exc:  # a tracking hiccup must not kill the training
                    self.errors.append(exc)

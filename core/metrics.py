"""Metric values out of a printed line, by the group rules the specs give their patterns: the one
parser behind a training's MLflow metrics (tasks/metrics.py) and a tuning's objective (tuning/).

A pattern may carry the name of the metric it reads (a tuning's `metrics[].regex`):
- a group named `value`: that is the value (of the group named `name`, if no name is given);
- one group: the value of the given name;
- two groups: group 1 is the name and group 2 the value (Katib's `name=value` convention); with a
  given name, only matches of that name count.
Or Katib's JSON format (`json_metric_values`): a line that is a JSON object of metrics and a timestamp.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Callable, Collection, Sequence

from mlyard.core.errors import MetricLineError


def metric_values(line: str, patterns: Sequence[tuple[str | None, re.Pattern[str]]]) -> dict[str, float]:
    """Every finite value the line holds, by metric name (a later match of a name wins)."""
    found: dict[str, float] = {}
    for given, pattern in patterns:
        for m in pattern.finditer(line):
            if "value" in pattern.groupindex:
                name, raw = given or (m.group("name") if "name" in pattern.groupindex else None), m.group("value")
            elif pattern.groups == 1:
                name, raw = given, m.group(1)
            elif pattern.groups >= 2:
                if given is not None and m.group(1) != given:
                    continue
                name, raw = m.group(1), m.group(2)
            else:
                continue
            if name is None:
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                found[name] = value
    return found




def json_metric_values(line: str, names: Collection[str] | None = None,
                       bad_timestamp: Callable[[str], None] | None = None) -> tuple[dict[str, float], int | None]:
    """Katib's JSON metrics format: a line that is a JSON object holds metrics by key (`{"accuracy":
    "0.91", "timestamp": 1700000000.5}`), values as numbers or numeric strings; its `timestamp`
    (epoch seconds, or an RFC 3339 string) is the metrics' time, in ms. With `names`, only those keys
    count; without, every numeric key but `timestamp`. A line that does not start with `{` is output,
    not metrics: ({}, None). Raises MetricLineError for a line that starts like an object and is not one,
    or a named metric whose value is not a number. A timestamp that cannot be read leaves the metrics
    without a time (as Katib records them), and `bad_timestamp` hears why."""
    text = line.strip()
    if not text.startswith("{"):
        return {}, None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetricLineError(f"not a JSON object ({exc.msg} at column {exc.colno}): {text[:120]}") from None
    if not isinstance(obj, dict):
        raise MetricLineError(f"not a JSON object: {text[:120]}")
    stamp = None
    if "timestamp" in obj:
        try:
            stamp = _timestamp_ms(obj["timestamp"])
        except MetricLineError as exc:
            if bad_timestamp is not None:
                bad_timestamp(f"{exc}: the line's metrics are recorded without it ({text[:120]})")
    found: dict[str, float] = {}
    for key, raw in obj.items():
        if key == "timestamp" or (names is not None and key not in names):
            continue
        value = _number(raw)
        if value is None:
            if names is not None:
                raise MetricLineError(f"metric {key!r} has the value {raw!r}, not a number")
            continue
        if math.isfinite(value):
            found[key] = value
    return found, stamp


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _timestamp_ms(raw: object) -> int:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return int(raw * 1000)
    if isinstance(raw, str):
        try:
            stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            return int(stamp.timestamp() * 1000)
    raise MetricLineError(f"timestamp {raw!r} is neither epoch seconds nor an RFC 3339 time")

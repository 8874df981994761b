"""Metric values out of a printed line, by the group rules the specs give their patterns: the one
parser behind a training's MLflow metrics (tasks/metrics.py) and a tuning's objective (tuning/).

A pattern may carry the name of the metric it reads (a tuning's `metrics[].regex`):
- a group named `value`: that is the value (of the group named `name`, if no name is given);
- one group: the value of the given name;
- two groups: group 1 is the name and group 2 the value (Katib's `name=value` convention); with a
  given name, only matches of that name count.
"""

from __future__ import annotations

import math
import re
from typing import Sequence


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

"""Moments as people give them on the command line: `30m`, `24h`, `7d` ago, an ISO-8601 time, or epoch
seconds (the `--since`/`--until` of stats, logs, the dashboard and the audit trail). Pure."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone

from mlyard.core.errors import SpecError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def when(value: str | float | None, field: str, default: float | None = None) -> float | None:
    """Epoch seconds from `1h`/`30m`/`7d` (that long ago), an ISO-8601 time, or epoch seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise SpecError(field, value, "a duration ago (30m, 1h, 7d), an ISO-8601 time or epoch seconds")
        return float(value)
    m = _AGO.match(value.strip())
    if m:  # longer ago than 1970 is from the start: every record there is
        return max(0.0, time.time() - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]])
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise SpecError(field, value, "a duration ago (30m, 1h, 7d) or an ISO-8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()

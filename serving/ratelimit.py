"""Requests a second, as token buckets by name (a project, a caller's key or token): plain arithmetic on
the times given, no clock of its own, no I/O. A bucket holds at most one second of requests (at least one),
so a burst passes up to the rate and then the rate holds; a refused request is told when one will pass."""

from __future__ import annotations


class Buckets:
    def __init__(self, max_names: int = 65536):
        self._held: dict[bytes, tuple[float, float]] = {}  # name -> (requests left, when last counted)
        self.max_names = max_names

    def take(self, name: bytes, rate: float, now: float) -> float:
        """Count a request of `name` under `rate` a second: 0.0 when it may pass, else the seconds until one may."""
        burst = max(1.0, rate)
        left, last = self._held.get(name, (burst, now))
        left = min(burst, left + (now - last) * rate)
        if len(self._held) >= self.max_names and name not in self._held:
            self._held.clear()  # names without end (a flood of made-up tokens): forget, rather than grow
        if left >= 1.0:
            self._held[name] = (left - 1.0, now)
            return 0.0
        self._held[name] = (left, now)
        return (1.0 - left) / rate

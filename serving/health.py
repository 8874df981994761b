"""The health-check state machine of a supervised model service, as Backend.AI draws it.

    started -> DEGRADED for initial_delay (no probes)
    then a probe every interval, each waiting at most max_wait_time:
        the expected status         -> HEALTHY, consecutive failures reset to 0
        another status, an error, a timeout -> failures + 1; more than max_retries -> UNHEALTHY,
                                               else the status stays what it was
Without a health_check block no route is probed: the service is HEALTHY once its port takes a connection
(`listening`; until then DEGRADED, so no request is routed to a service that cannot answer yet) and while
its process runs. A process that exits is UNHEALTHY until it is started again (DEGRADED, from the
beginning).

Pure: the caller passes the clock and the probe results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlyard.serving.modelfolder import HealthCheck

DEGRADED, HEALTHY, UNHEALTHY = "DEGRADED", "HEALTHY", "UNHEALTHY"


@dataclass
class Health:
    check: HealthCheck | None
    started: float
    status: str = field(init=False)
    failures: int = 0
    last_probe: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        self.status = DEGRADED

    def next_probe(self) -> float | None:
        """When the next probe is due (None: never, there is no health check)."""
        if self.check is None:
            return None
        if self.last_probe is None:
            return self.started + self.check.initial_delay
        return self.last_probe + self.check.interval

    def probed(self, now: float, status_code: int | None, error: str | None = None) -> str:
        """Record one probe (`status_code` None when it failed or timed out) and return the status."""
        assert self.check is not None
        self.last_probe = now
        if status_code == self.check.expected_status_code:
            self.status, self.failures, self.reason = HEALTHY, 0, None
            return self.status
        self.failures += 1
        self.reason = error or f"{self.check.path} answered {status_code}, not {self.check.expected_status_code}"
        if self.failures > self.check.max_retries:
            self.status = UNHEALTHY
        return self.status

    def listening(self) -> None:
        """Without a health check: its port took a connection."""
        self.status, self.reason = HEALTHY, None

    def exited(self, reason: str) -> None:
        self.status, self.reason = UNHEALTHY, reason

    def restarted(self, now: float) -> None:
        self.started, self.last_probe, self.failures = now, None, 0
        self.status = DEGRADED

    def seconds_to_unhealthy(self, running: bool = False) -> float | None:
        """How long a service that never answers takes to become UNHEALTHY: initial_delay +
        interval x (max_retries + 1) from the start, interval x (max_retries + 1) once running."""
        if self.check is None:
            return None
        tail = self.check.interval * (self.check.max_retries + 1)
        return tail if running else self.check.initial_delay + tail

"""What the watch does with a RUNNING promotion, by its run's state (tasks/promotion_watch.decide): a run
that failed or was cancelled ends it, a killed or crashed one is taken up again (a bounded number of
times), one that is starting or still beating is left alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mlyard.tasks.promotion_watch import RESUME_LIMIT, decide


def promo(status: str = "RUNNING", beat_seconds_ago: float = 1.0, resumes: int = 0, run: str | None = "r") -> dict:
    """A promotion as the catalog gives it (its heartbeat made when the test runs: see the test)."""
    return {"status": status, "beat_seconds_ago": beat_seconds_ago, "resumes": resumes, "flow_run_id": run}


@pytest.mark.parametrize("given, state, action", [
    (promo(), "RUNNING", "keep"),  # beating
    (promo(), "FAILED", "roll back"),
    (promo(), "CANCELLED", "roll back"),  # a person stopped its run
    (promo(), "CRASHED", "resume"),
    (promo(beat_seconds_ago=60), "RUNNING", "resume"),  # killed: Prefect has not noticed yet
    (promo(beat_seconds_ago=60), "PENDING", "keep"),  # a new run is on its way
    (promo(beat_seconds_ago=60), "SCHEDULED", "keep"),
    (promo(beat_seconds_ago=60, run=None), None, "resume"),  # no run at all (the stack stopped under it)
    (promo(beat_seconds_ago=60, resumes=RESUME_LIMIT), "CRASHED", "roll back"),  # it keeps dying: ended
    (promo(status="PAUSED", beat_seconds_ago=600), "CRASHED", "keep"),  # waits for a person
    (promo(status="ROLLED BACK", beat_seconds_ago=600), None, "keep"),
])
def test_what_the_watch_does(given, state, action):
    beat = datetime.now(timezone.utc) - timedelta(seconds=given.pop("beat_seconds_ago"))
    assert decide({**given, "heartbeat_at": beat.isoformat()}, state) == action

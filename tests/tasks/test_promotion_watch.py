"""What the watch does with a RUNNING promotion, by its run's state (tasks/promotion_watch.decide): a run
that failed or was cancelled ends it, a killed or crashed one is taken up again (a bounded number of
times), one that is starting or still beating is left alone."""

from __future__ import annotations

import time
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


def test_a_promotion_promoted_before_its_run_failed_ends_complete_and_none_blocks_the_others(tmp_path):
    """The last step promoted the candidate, then its run failed (the default's answer could not be read, a
    store went away): there is no share to take back, so the promotion ends COMPLETE with why, rather than
    failing the watch at every look. And a promotion the watch cannot read keeps none of the others waiting."""
    from pod_moves import endpoint

    from mlyard.core.specs.promotion import PolicySpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.traffic import Traffic
    from mlyard.tasks.promotion_watch import tend

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    url = str(catalog.engine.url)
    promoted, crashed, unread = (endpoint(url, "http://127.0.0.1:9", ("canary",), name=n) for n in ("a", "b", "c"))
    traffic, policy = Traffic(catalog), PolicySpec(steps=[50, 100], step_seconds=1)
    ids = {name: traffic.start(name, "canary", policy, f"run-{name}")["id"] for name in (promoted, crashed, unread)}
    Endpoints(catalog).promote(promoted, "canary")
    states = {"run-a": ("FAILED", "the gate raised"), "run-b": ("CRASHED", "")}

    def run_state(run: str):
        if run == "run-c":
            raise OSError("Prefect did not answer")
        return states[run]

    submitted: list[dict] = []
    done = tend(traffic, run_state, lambda parameters: submitted.append(parameters) or type("Run", (), {
        "id": "run-b2", "name": "b-canary"})(), lambda: None)
    by_id = {p["id"]: p for p in traffic.promotions()}
    assert by_id[ids[promoted]]["status"] == "COMPLETE", by_id[ids[promoted]]
    assert "became the default stage; then its run run-a ended FAILED: the gate raised" in by_id[ids[promoted]]["reason"]
    assert by_id[ids[crashed]]["flow_run_id"] == "run-b2" and submitted == [
        {"spec": {"endpoint": crashed, "stage": "canary", "resume": True}}]
    assert by_id[ids[unread]]["status"] == "RUNNING"  # looked at again next time
    assert [line.split(":")[0] for line in done] == ["completed the promotion of a/canary",
                                                     "resumed the promotion of b/canary at its step (b-canary)"]



def test_a_run_that_has_just_started_running_is_still_starting_for_the_watch(stack, monkeypatch):
    """A resumed promotion's new run whose pod took longer to start than the silence the watch allows (the claim
    dated the heartbeat when it queued the run): RUNNING for less than STALE_SECONDS, it is still loading its
    flow and has not beaten yet, so the watch leaves it (the fresh-clone run's node drain test took one up twice).
    Once it has run longer than that, it is RUNNING again for the watch. Read from the real Prefect server."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from mlyard.registry import traffic
    from mlyard.tasks.promotion_watch import prefect_states

    @flow(name="promotion-watch-probe")
    def probe() -> None:
        pass

    with get_client(sync_client=True) as client:
        run_id = str(client.create_flow_run(probe, name="starting").id)
        assert client.set_flow_run_state(run_id, Running(), force=True).status.value == "ACCEPT"
        read = prefect_states(client)
        assert read(run_id) == ("PENDING", "")
        monkeypatch.setattr(traffic, "STALE_SECONDS", 1)  # the same, a second after it started running
        time.sleep(1.5)
        assert prefect_states(client)(run_id)[0] == "RUNNING"
    silent = {"status": "RUNNING", "heartbeat_at": (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(),
              "resumes": 0, "flow_run_id": run_id}
    assert decide(silent, "PENDING") == "keep" and decide(silent, "RUNNING") == "resume"

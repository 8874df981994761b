"""`mlyard rags create/sync --wait`: the wait ends when the ingestion does, whatever happens between."""

from types import SimpleNamespace

from mlyard import rags


def test_the_run_moving_its_rag_to_in_progress_during_a_check_does_not_end_the_wait(monkeypatch):
    """Under load the ingestion run starts late: it moves CREATE REQUESTED to CREATE IN PROGRESS while
    the wait asks whether the run ended without saying so. That change is the run's, not an end: the
    wait went on returning `CREATE IN PROGRESS` as if it were final (a red CI, stop 39's local run)."""
    statuses = iter(["CREATE REQUESTED"] * 3 + ["CREATE IN PROGRESS"] * 3 + ["ACTIVE"])
    now = iter(range(0, 1000, 3))  # every read is 3 s after the last: each second one checks the run
    current = {"status": "CREATE REQUESTED"}

    class Store:
        def get(self, name):
            return SimpleNamespace(status=current["status"])

    def settle(settings, name, run_id=None):  # the run itself starts meanwhile
        current["status"] = "CREATE IN PROGRESS" if current["status"] == "CREATE REQUESTED" else current["status"]

    def tick():
        t = next(now)
        current["status"] = next(statuses, current["status"]) if current["status"] != "ACTIVE" else "ACTIVE"
        return t

    monkeypatch.setattr(rags, "_rags", lambda settings: Store())
    monkeypatch.setattr(rags.rag_checks, "settle", settle)
    monkeypatch.setattr(rags, "connect", lambda: "settings")
    monkeypatch.setattr(rags, "member_api", lambda: None)
    monkeypatch.setattr(rags, "time", SimpleNamespace(monotonic=tick, sleep=lambda s: None))  # this module's clock
    rags._wait("handbook", 3600, "run-1")
    assert current["status"] == "ACTIVE"

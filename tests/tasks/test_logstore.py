"""The logs' index (tasks/logstore.py) over real files and a real SQLite: records appended by several
writers are indexed once each, a torn last line waits for its end, a replaced file is read anew, and
queries go by id, start of an id, name, level, time and sequence."""

import os
import stat
import threading
import time

from mlyard.core import logrecords as lr
from mlyard.tasks.logstore import LogStore


def _append(path, *docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for d in docs:
            f.write(lr.line(d))


def test_records_are_indexed_once_and_found_by_every_filter(tmp_path):
    home = tmp_path
    training = home / "logs" / "records" / "training" / "2026-11-26.jsonl"
    inference = home / "endpoints" / "logs" / "digits.jsonl"
    _append(training, *(lr.document("training", "INFO", f"epoch={i}", trainingId="3f2a-aaaa", name="t1")
                        for i in range(5)))
    _append(training, lr.document("training", "WARNING", "slow", trainingId="3f2b-bbbb"))
    _append(inference, *(lr.document("inference", "ERROR" if i == 3 else "INFO", f"POST {i}", endpointId="7",
                                     endpointStageId="70", inferenceId=f"req{i:04d}", modelName="digits")
                         for i in range(10)))
    _append(inference, lr.document("inference", "INFO", "POST other", endpointId="70", inferenceId="other"))
    store = LogStore(home)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home / "logs" / "records").st_mode) == 0o700
    # two catching up at once index each record once
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(LogStore(home).catch_up())) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(counts) == 17 and store.count() == 17

    assert [d["body"] for d in store.query(ids={"training_id": "3f2a"})] == [f"epoch={i}" for i in range(5)]
    assert len(store.query(ids={"training_id": "3f2"})) == 6
    assert [d["body"] for d in store.query(ids={"training_id": "3f2"}, level="WARNING")] == ["slow"]
    assert len(store.query(category="inference", ids={"endpoint_id": "7"})) == 10, "7 is not the start of 70"
    assert [d["inferenceId"] for d in store.query(ids={"inference_id": "req0003"})] == ["req0003"]
    assert store.query(ids={"inference_id": "req0003"})[0]["logLevel"] == "ERROR"
    assert len(store.query(category="inference", limit=4)) == 4
    last = store.query(category="inference", ids={"endpoint_id": "7"}, limit=2)
    assert [d["inferenceId"] for d in last] == ["req0008", "req0009"], "the latest, oldest first"
    by_name = store.query(ids={"endpoint_id": "nope"}, names={"endpoint_id": "t1"})
    assert len(by_name) == 5, "the name stands in for the id"
    assert store.query(since=time.time() + 60) == []

    # a torn last line waits; its end arrives; follow mode reads from a sequence number on
    seq = store.last_seq()
    with open(training, "ab") as f:
        whole = lr.line(lr.document("training", "INFO", "done", trainingId="3f2a-aaaa"))
        f.write(whole[:20])
        f.flush()
        assert store.catch_up() == 0
        f.write(whole[20:])
    assert store.catch_up() == 1
    assert [d["body"] for d in store.query(after=seq)] == ["done"]

    # a file replaced (a new day's file under the same name, or one truncated) is read from its start
    os.remove(inference)
    _append(inference, lr.document("inference", "INFO", "fresh", endpointId="7", inferenceId="fresh"))
    assert store.catch_up() == 1
    assert store.query(ids={"inference_id": "fresh"})[0]["body"] == "fresh"


def test_a_million_records_are_not_needed_to_see_the_index_used(tmp_path):
    """Each id query is answered from its own index, not by reading the table (the 1M-record figure is
    in bench/logs.py)."""
    store = LogStore(tmp_path)
    for column in ("training_id", "inference_id", "endpoint_id"):
        plan = " ".join(str(r) for r in store.db.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM records WHERE +category = ? AND {column} = ? ORDER BY time DESC", ("a", "b")))
        assert f"records_{column}" in plan, plan


def test_records_past_their_retention_are_deleted_with_their_day_files(tmp_path):
    old_day, today = time.time() - 40 * 86400, time.time()
    folder = tmp_path / "logs" / "records" / "training"
    old = folder / time.strftime("%Y-%m-%d.jsonl", time.gmtime(old_day))
    new = folder / time.strftime("%Y-%m-%d.jsonl", time.gmtime(today))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(old_day))
    _append(old, *(lr.document("training", "INFO", f"old {i}", trainingId="t-old", time=stamp) for i in range(3)))
    _append(new, lr.document("training", "INFO", "new", trainingId="t-new"))
    store = LogStore(tmp_path)
    assert store.catch_up() == 4
    assert store.prune(30) == 3
    assert not old.exists() and new.exists()
    assert [d["body"] for d in store.query(category="training")] == ["new"]
    assert store.catch_up() == 0, "nothing is indexed again"
    assert store.prune(30) == 0

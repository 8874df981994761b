"""The scheduler's figures (issue 11), on a throwaway embedded stack (real Prefect server, catalog on SQLite):

1. catch-up: a schedule firing every second whose start lies SLOTS seconds back, created as a user
   creates it (mlyard.schedule.create), catch-up on, max concurrency 10: the time until the stack's
   scheduler has recorded every missed slot (each a row keyed by schedule and slot: one run each, ever)
   and created the first 10 runs. Target: 10,000 slots in <= 10 s.
2. crash safety: the stack's scheduler is replaced by one we kill -9 at a random moment (0-1 s after
   it says it started) KILLS times, restarting it each time, while it works through a catch-up of
   CRASH_SLOTS slots (max concurrency 10); the last one goes on for SETTLE seconds. Every slot must be
   recorded once, and every slot the scheduler says has its run must have exactly one Prefect flow
   run: we count lost slots, and duplicate runs per (schedule, slot) from Prefect's own records
   (tags). At max concurrency 10 only a few hundred of the runs are made in that time.
3. lateness: SCHEDULES schedules enabled, each firing every minute at second 0 (all in the same
   second: the hard case; --spread: at seconds 0-59) for MINUTES minutes; lateness = the flow run's creation time in Prefect
   minus its slot time (negative: created ahead, to start at its time). Target: p99 <= 1 s.

4. start - slot: SCHEDULES schedules on the real local pool, two slots a second, each a no-op training:
   Prefect's start_time of each run minus its slot (p50, p99, min). A run must never start early.

Runs of 1-3 target `train/train-gpu`, a deployment on the Kubernetes pool, where no worker runs here. A stand-in
worker (a thread of this script) sets each run COMPLETED once its scheduled time has come, so runs
end and the concurrency limit moves on: it is not what is measured. Run: `python bench/scheduler.py`
(about 10 minutes; never part of the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"spec": {"name": "bench-{{ slot_epoch }}", "source_uri": str(ROOT / "examples" / "sklearn_digits"),
                   "entry_point": "train.py"}}


def stand_in_worker(stop: threading.Event) -> threading.Thread:
    """Completes the Kubernetes pool's scheduled runs whose time has come (no cluster here), many per
    request (Prefect's bulk_set_state), so that it stays out of the scheduler's way."""

    def loop() -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not stop.is_set():
                now = datetime.now(timezone.utc).isoformat()
                body = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}},
                                      "expected_start_time": {"before_": now}},
                        "state": {"type": "COMPLETED"}, "force": True, "limit": 50}
                try:
                    client._client.post("/flow_runs/bulk_set_state", json=body)
                except Exception:  # noqa: BLE001 - a busy server: next round
                    pass
                stop.wait(0.5)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def tagged_runs(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    out, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                                         limit=200, offset=offset)
            out += page
            if len(page) < 200:
                return out
            offset += 200


def store():
    from mlyard.core.connection import connect
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules

    return Schedules(Catalog(connect().catalog_db_url))


def catchup(slots: int) -> None:
    import mlyard.schedule as schedules

    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=slots - 1)
    t0 = time.perf_counter()
    schedules.create({"name": "catchup", "deployment": "train/train-gpu", "cron": "* * * * * *", "max_concurrency": 10,
                      "start_time": start.isoformat(), "parameters": PARAMS}, wait_seconds=0)
    st = store()
    sid = st.get("catchup").id
    recorded = runs10 = None
    while time.perf_counter() - t0 < 120 and (recorded is None or runs10 is None):
        counts = st.counts(sid)
        n = sum(counts.values())
        if recorded is None and n >= slots:
            recorded = time.perf_counter() - t0
        if runs10 is None and counts.get("STARTED", 0) + counts.get("ENDED", 0) >= 10:
            runs10 = time.perf_counter() - t0
        time.sleep(0.02)
    rows = st.slots(sid)
    epochs = [r.slot_epoch for r in rows]
    print(f"catch-up: {len(epochs)} slots recorded ({len(set(epochs))} distinct, expected >= {slots}) in "
          f"{recorded:.2f} s from `create`; first 10 runs created after {runs10:.2f} s")
    schedules.disable("catchup")


def crash(slots: int, kills: int, settings, settle_seconds: float) -> None:
    import mlyard.schedule as schedules
    from mlyard.core.connection import read_state

    state = read_state(settings)
    assert state is not None
    os.killpg(state.pids["scheduler"], signal.SIGKILL)  # the stack's scheduler; ours replaces it
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=slots - 1)
    end = start + timedelta(seconds=slots - 1)
    schedules.create({"name": "crash", "deployment": "train/train-gpu", "cron": "* * * * * *", "max_concurrency": 10,
                      "start_time": start.isoformat(), "end_time": end.isoformat(), "parameters": PARAMS},
                     wait_seconds=0)
    log = Path(settings.home_dir) / "logs" / "bench-scheduler.log"
    env = {**os.environ}
    killed_at_work = 0
    for i in range(kills + 1):
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "mlyard.tasks.scheduling"], cwd=ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "scheduler started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        if i == kills:  # the last one finishes the work
            break
        time.sleep(random.uniform(0, 1.0))
        before = sum(1 for _ in open(log))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at_work += before > 0
    st, sid = store(), store().get("crash").id
    t0 = time.monotonic()
    while time.monotonic() - t0 < settle_seconds:  # the last scheduler goes on; all slots run, or time is up
        counts = st.counts(sid)
        if counts.get("WAITING", 0) == 0 and sum(counts.values()) >= slots:
            break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    runs = tagged_runs("mlyard.schedule:crash")
    per_slot = Counter(t for r in runs for t in r.tags if t.startswith("mlyard.slot:"))
    rows = st.slots(sid)
    label = {r.slot_epoch: f"mlyard.slot:{datetime.fromtimestamp(r.slot_epoch, timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
             for r in rows}
    expected = {f"mlyard.slot:{(start + timedelta(seconds=k)).strftime('%Y%m%dT%H%M%SZ')}" for k in range(slots)}
    ran = {label[r.slot_epoch] for r in rows if r.state in ("STARTED", "ENDED")}  # the scheduler says: it has its run
    waiting = {label[r.slot_epoch] for r in rows if r.state == "WAITING"}
    lost = len(ran - set(per_slot)) + len(expected - set(label.values()))  # said ran but no run; or never recorded
    dupes = sum(n - 1 for n in per_slot.values() if n > 1)
    extra = len(set(per_slot) - expected)
    print(f"crash safety: {kills} kill -9 of the scheduler during a catch-up of {slots} slots; slot rows "
          f"{len(rows)} ({len(set(label))} distinct); {len(runs)} flow runs after {time.monotonic() - t0:.0f} s more; "
          f"lost {lost}, duplicate {dupes}, outside the window {extra}; still waiting their turn {len(waiting)} "
          f"(of which already have a run: {len(waiting & set(per_slot))}); slot rows {st.counts(sid)}")
    schedules.disable("crash")  # the last part: no scheduler is started again


def lateness(n: int, minutes: int, spread: bool, settings) -> None:
    import mlyard.schedule as schedules

    for k in range(n):  # all at second 0 (a burst of n each minute), or spread over the minute's seconds
        schedules.create({"name": f"late-{k}", "deployment": "train/train-gpu", "cron": f"{k % 60 if spread else 0} * * * * *",
                          "parameters": PARAMS}, wait_seconds=0)
    enabled_at = time.time()  # all 100 enabled; from one lead window on, the scheduler is in its steady state
    steady_from = enabled_at + settings.schedule_lead_seconds
    first = (int(time.time()) // 60 + 1) * 60
    time.sleep(max(0.0, first + 60 * minutes + 15 - time.time()))
    late, steady = [], []
    by_minute: dict[datetime, list[float]] = {}
    for k in range(n):
        for r in tagged_runs(f"mlyard.schedule:late-{k}"):
            slot = next(t for t in r.tags if t.startswith("mlyard.slot:")).split(":", 1)[1]
            at = datetime.strptime(slot, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            late.append((r.created - at).total_seconds())
            by_minute.setdefault(at.replace(second=0), []).append(late[-1])
            if at.timestamp() >= steady_from:
                steady.append(late[-1])
    for minute, values in sorted(by_minute.items()):
        print(f"  slots of {minute:%H:%M}: {len(values)} runs, created from {min(values):+.1f} s to {max(values):+.1f} s")
    late.sort()
    q = statistics.quantiles(late, n=100)
    print(f"lateness: {n} schedules every minute at {'seconds 0-59' if spread else 'second 0'}, {len(late)} runs: run created vs slot: "
          f"median {statistics.median(late):+.2f} s, p99 {q[98]:+.2f} s, max {late[-1]:+.2f} s "
          f"(negative: created ahead, scheduled to start at the slot)")
    if len(steady) >= 2:
        steady.sort()
        print(f"  of which {len(steady)} slots a lead window ({settings.schedule_lead_seconds:.0f} s) or more after the last "
              f"schedule was enabled: p99 {statistics.quantiles(steady, n=100)[98]:+.2f} s, max {steady[-1]:+.2f} s; the "
              f"{len(late) - len(steady)} before it were due while the 100 schedules were still being created")
    for k in range(n):
        schedules.disable(f"late-{k}")


NOOP = "print('started', flush=True)\n"


def start_vs_slot(n: int) -> None:
    """start - slot: n schedules on the real local pool (the stack's worker), two slots a second, each
    run a no-op training; Prefect's start_time of each run minus its slot. A run must never start early."""
    import tempfile

    from prefect.client.orchestration import get_client

    import mlyard.schedule as schedules

    algo = Path(tempfile.mkdtemp(prefix="mlyard-bench-noop-"))
    (algo / "main.py").write_text(NOOP)
    first = int(time.time()) + 30 + n // 2  # after every schedule is created (about 0.3 s each)
    slots = {f"start-{k}": first + k // 2 for k in range(n)}
    for name, slot in slots.items():
        begin = datetime.fromtimestamp(slot - 3600, timezone.utc).isoformat()  # its first slot: begin + 1 h
        schedules.create({"name": name, "deployment": "train/train-local", "interval": {"every": 1, "unit": "hours"},
                          "start_time": begin, "parameters": {"spec": {"name": name, "source_uri": str(algo),
                                                                       "entry_point": "main.py"}}}, wait_seconds=0)
    deadline = time.time() + n + 300
    starts: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        while len(starts) < n and time.time() < deadline:
            time.sleep(2)
            for name in slots:
                if name in starts:
                    continue
                for r in tagged_runs(f"mlyard.schedule:{name}"):
                    run = client.read_flow_run(r.id)
                    if run.start_time is not None:
                        starts[name] = run.start_time.timestamp()
    gaps = sorted(starts[name] - slots[name] for name in starts)
    q = statistics.quantiles(gaps, n=100)
    print(f"start - slot: {len(gaps)} of {n} schedules on the local pool (two slots a second), flow run start_time "
          f"minus slot: p50 {statistics.median(gaps):+.2f} s, p99 {q[98]:+.2f} s, min {gaps[0]:+.3f} s, "
          f"max {gaps[-1]:+.2f} s (negative would be early)")
    for name in slots:
        schedules.disable(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", type=int, default=10_000)
    ap.add_argument("--crash-slots", type=int, default=10_000)
    ap.add_argument("--settle-seconds", type=float, default=300,
                    help="crash: how long the last scheduler goes on working through the slots before counting")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--schedules", type=int, default=100)
    ap.add_argument("--minutes", type=int, default=3)
    ap.add_argument("--only", choices=["catchup", "crash", "lateness", "start"], default=None)
    ap.add_argument("--spread", action="store_true", help="lateness: schedules fire at different seconds")
    args = ap.parse_args()
    settings = _stack.start()
    stop = threading.Event()
    stand_in_worker(stop)
    print(json.dumps({"lead_seconds": settings.schedule_lead_seconds, "cores": os.cpu_count()}))
    if args.only in (None, "catchup"):
        catchup(args.slots)
    if args.only in (None, "lateness"):
        lateness(args.schedules, args.minutes, args.spread, settings)
    if args.only in (None, "crash"):
        crash(args.crash_slots, args.kills, settings, args.settle_seconds)
    if args.only in (None, "start"):
        start_vs_slot(args.schedules)
    stop.set()


if __name__ == "__main__":
    main()

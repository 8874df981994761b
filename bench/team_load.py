"""A team's load on one install (issue 72 §5): 20 members of 4 projects each queue no-op trainings at once
through the route the CLI takes (POST /v1/runs with their key), then look at their lists every 2 s until
every run has ended.

    .venv/bin/python bench/team_load.py [RUNS_EACH] [--database sqlite|postgres]

RUNS_EACH: each member's runs (10: 200 runs; 50: 1,000). The stack is a throwaway embedded one with the
default settings (its own home and ports; `--database postgres` keeps Prefect, MLflow and the catalog in
the embedded PostgreSQL). Measured, in one run:
- `mlyard up` of the fresh home (seconds);
- submission: each POST /v1/runs as its member sees it, p50/p95/max, and any error;
- the drain: time from the first submission to the last run's end, the runs' end states (COMPLETED,
  CRASHED, ...), the most that held places at once, the most connections open to Prefect's port;
- while it drains, each member's two looks every 2 s: their trainings list (POST /v1/queries/trainings_list)
  and the door's runs listing (POST /api/flow_runs/filter, 10 newest, as the Prefect UI's list asks):
  p50/p95 and how many were not 200;
- the CPU seconds each part spent during the drain (what limits it).
Never part of the tests.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
PROJECTS, MEMBERS = 4, 20
NOOP = "print('loss=0.0', flush=True)\n"


def _call(url: str, body: dict, key: str, timeout: float = 120.0) -> tuple[int, float, object]:
    """POST `body` as JSON with `key`: (status, seconds, answer)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, time.perf_counter() - started, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - started, exc.read()[:300]
    except OSError as exc:
        return 0, time.perf_counter() - started, str(exc)


def _team(settings) -> dict[str, tuple[str, str]]:
    """Projects, their members (editors) and a no-op training in each project's storage: user -> (key, project)."""
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.teams import Teams

    catalog = Catalog(settings.catalog_db_url)
    teams = Teams(catalog)
    members = {}
    for p in range(PROJECTS):
        project = f"team{p}"
        teams.create_project(project)
        algo = settings.home_dir / "projects" / project / "algos" / "noop"
        algo.mkdir(parents=True, exist_ok=True)
        (algo / "main.py").write_text(NOOP)
        for m in range(MEMBERS // PROJECTS):
            user = f"member{p}x{m}"
            members[user] = (teams.create_user(user)[1], project)
            teams.set_member(project, user, "editor")
    catalog.dispose()
    return members


def _quantiles(samples: list[float]) -> str:
    if not samples:
        return "none"
    ordered = sorted(samples)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each part's process group (children that ended and were waited for included)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        total = 0
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                total += sum(int(f) for f in fields[11:15])
        out[name] = total / tick
    return out


def _connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port` (the clients' ends are counted: one each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    runs_each = int(args[0]) if args else 10
    if "--database" in sys.argv:
        os.environ["MLYARD_DATABASE"] = sys.argv[sys.argv.index("--database") + 1]
    import _stack

    started = time.monotonic()
    settings = _stack.start()
    up_seconds = time.monotonic() - started
    from prefect.client.orchestration import get_client

    from mlyard.core.connection import read_state
    from mlyard.tasks import local_line

    state = read_state(settings)
    members = _team(settings)
    api, door = state.service_url, settings.door_url
    total = runs_each * len(members)
    print(f"`mlyard up` of a fresh home: {up_seconds:.1f} s (database {settings.database or 'sqlite'}); "
          f"{local_line.places(settings)} places; {len(members)} members queue {runs_each} each: {total} runs", flush=True)

    submitted: list[str] = []
    submit_times: list[float] = []
    submit_errors: list[str] = []
    looks: dict[str, list[float]] = {"list": [], "door": []}
    not_ok: dict[str, dict[int, int]] = {"list": {}, "door": {}}
    done = threading.Event()
    lock = threading.Lock()

    def member(user: str, key: str, project: str) -> None:
        spec = {"name": f"noop-{user}", "experiment": f"load-{project}",
                "source_uri": str(settings.home_dir / "projects" / project / "algos" / "noop"), "entry_point": "main.py"}
        for i in range(runs_each):
            status, seconds, answer = _call(f"{api}/v1/runs", {"deployment": "train/train-local", "tags": [],
                                                               "parameters": {"spec": {**spec, "name": f"noop-{user}-{i}"}},
                                                               "job_variables": {}, "idempotency_key": f"{user}-{i}"}, key)
            with lock:
                submit_times.append(seconds)
                if status == 200:
                    submitted.append(answer["id"])  # type: ignore[index]
                else:
                    submit_errors.append(f"{status}: {answer!r}"[:200])

    def looker(key: str) -> None:
        while not done.wait(2.0):
            for what, url, body in (("list", f"{api}/v1/queries/trainings_list", {"limit": 20}),
                                    ("door", f"{door}/api/flow_runs/filter", {"limit": 10, "sort": "EXPECTED_START_TIME_DESC"})):
                status, seconds, _ = _call(url, body, key, timeout=60)
                with lock:
                    looks[what].append(seconds)
                    if status != 200:
                        not_ok[what][status] = not_ok[what].get(status, 0) + 1

    first = time.monotonic()
    threads = [threading.Thread(target=member, args=(u, k, p)) for u, (k, p) in members.items()]
    lookers = [threading.Thread(target=looker, args=(k,), daemon=True) for k, _ in members.values()]
    for t in threads + lookers:
        t.start()
    cpu_before = _cpu_seconds(state.pids)
    most_holding = most_connections = 0
    port, said_at = settings.prefect_port, time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            time.sleep(2.0)
            most_connections = max(most_connections, _connections_to(port))
            most_holding = max(most_holding, client.count_flow_runs(flow_run_filter=_in_states("PENDING", "RUNNING")))
            ended = client.count_flow_runs(flow_run_filter=_in_states("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
            if not any(t.is_alive() for t in threads) and ended >= len(submitted):
                break
            if time.monotonic() - said_at > 60:
                said_at = time.monotonic()
                with lock:
                    print(f"  {said_at - first:.0f} s: {len(submitted)} submitted, {ended} ended; looks so far: list "
                          f"{_quantiles(looks['list'])}, door {_quantiles(looks['door'])}", flush=True)
            if time.monotonic() - first > 3600:
                print("gave up after an hour", flush=True)
                break
        counts: dict[str, int] = {}
        for offset in range(0, len(submitted), 200):
            for fr in client.read_flow_runs(limit=200, flow_run_filter=_ids(submitted[offset:offset + 200])):
                kind = fr.state.type.value if fr.state else "NONE"
                counts[kind] = counts.get(kind, 0) + 1
    drained = time.monotonic() - first
    done.set()
    cpu = {n: round(s - cpu_before.get(n, 0.0), 1) for n, s in _cpu_seconds(state.pids).items()}
    runner = state.pids.get("warm-runner")
    print(f"submission ({len(submit_times)}): {_quantiles(submit_times)}; errors {len(submit_errors)} {submit_errors[:3]}")
    print(f"drained in {drained:.0f} s ({len(submitted) / drained:.2f} runs/s): {counts}")
    print(f"most runs holding places at once (counted every 2 s): {most_holding}; "
          f"most connections to Prefect's port: {most_connections}")
    for what, name in (("list", "members' trainings list"), ("door", "the door's runs listing")):
        print(f"{name} ({len(looks[what])} calls): {_quantiles(looks[what])}; not 200, by status (0: no answer): "
              f"{not_ok[what] or 'none'}")
    print(f"CPU seconds during the drain, by part: {cpu} (warm runner pid {runner}: the runs are its children)")


def _in_states(*types: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types))))


def _ids(ids: list[str]):
    from uuid import UUID

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids]))


if __name__ == "__main__":
    main()

"""A team's load on one install: the local pool's line (tasks/local_line.py), a hung Prefect and an ending
worker met by the keeper (mlyard/keeper.py) with the runs going on, and a retried submission making one run.
Figures for 200 and 1,000 runs: bench/team_load.py."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest

from tests.test_stack import cli

SLEEPER = "import time\ntime.sleep({seconds})\nprint('loss=0.5', flush=True)\n"


@pytest.fixture()
def sleeper(algorithm):
    """A training spec (as JSON) whose script sleeps `seconds`."""

    def make(name: str, seconds: float) -> dict:
        source = algorithm(SLEEPER.format(seconds=seconds), name=f"sleep-{name}")
        return {"name": name, "experiment": "team-load", "source_uri": str(source), "entry_point": "main.py"}

    return make


def _flow_runs(ids: list[str]) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids])))


def _wait_final(ids: list[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        runs = _flow_runs(ids)
        if all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.name, r.state.name if r.state else None) for r in runs]
        time.sleep(1.0)


def _submit(specs: list[dict]) -> list[str]:
    from mlyard.submit import submit

    return [submit("train/train-local", {"spec": spec})["id"] for spec in specs]


def test_a_full_pool_runs_its_places_and_the_rest_wait_in_line_with_the_reason(stack, settings, sleeper):
    """places + 2 trainings at once: no more than the machine's places run at once; those left waiting are in
    Prefect's waiting state with the reason, and `trainings show` says where each stands; all complete."""
    from mlyard.tasks import local_line

    places = local_line.places(settings)
    ids = _submit([sleeper(f"line-{i}", 6) for i in range(places + 2)])
    from mlyard import dashboard

    most, reasons, told, lines = 0, set(), [], []
    deadline = time.monotonic() + 240
    while True:
        runs = _flow_runs(ids)
        holding = [r for r in runs if r.state and r.state.type.value in ("PENDING", "RUNNING")]
        most = max(most, len(holding))
        for r in runs:
            if r.state and r.state.name == local_line.WAITING:
                reasons.add(r.state.message)
                if not told:  # (it may have started meanwhile: then it tells nothing, and the next is asked)
                    shown = json.loads(cli("trainings", "show", str(r.id), "--json").stdout)
                    told += [shown["waiting"]] if shown["waiting"] else []
                    lines.append(dashboard._line(settings, None))
        if all(r.state and r.state.is_final() for r in runs):
            break
        assert time.monotonic() < deadline, "the line did not drain within 240 s"
        time.sleep(0.3)
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name) for r in runs]
    assert most <= places, f"{most} ran at once on a pool of {places} places"
    assert reasons == {local_line.reason(places)}, reasons
    assert any(line["places"] == places and line["waiting"] >= 1 for line in lines), lines  # the dashboard's
    assert told and re.fullmatch(rf"\d+(st|nd|rd|th) of \d+ waiting; \d+ of the machine's {places} places "
                                 r"\(settings local_runs\) are taken", told[0]), told


def test_a_worker_that_ends_leaves_its_runs_going_and_the_keeper_starts_another(stack, settings, sleeper):
    """The worker ends as an error's exit ends it (SIGTERM: it kills the processes it started on its way out),
    with two trainings running: the keeper starts a new worker and both runs complete; none CRASHED."""
    from mlyard.core.connection import read_state
    from mlyard.tasks.processes import alive

    ids = _submit([sleeper(f"worker-{i}", 8) for i in range(2)])
    deadline = time.monotonic() + 120
    while not all(r.state and r.state.is_running() for r in _flow_runs(ids)):
        assert time.monotonic() < deadline, "the trainings did not start"
        time.sleep(0.3)
    before = read_state(settings).pids["worker"]
    os.kill(before, signal.SIGTERM)
    runs = _wait_final(ids, timeout=120)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state.message for r in runs]
    now = read_state(settings).pids["worker"]
    assert now != before and alive(now), "the keeper did not start a new worker"
    again = _wait_final(_submit([sleeper("after-worker", 0)]), timeout=120)
    assert again[0].state.is_completed(), "the new worker takes new runs"


def test_a_hung_prefect_server_is_restarted_by_the_keeper_and_its_runs_go_on(stack, settings, sleeper):
    """SIGSTOP of the Prefect server with two trainings running: alive, answering nothing. The keeper's
    health checks fail three times in a row; it ends the server and starts it again, says so in its log,
    and the runs report their ends to the new server: COMPLETED."""
    from mlyard.core.connection import healthy, read_state

    ids = _submit([sleeper(f"hung-{i}", 10) for i in range(2)])
    deadline = time.monotonic() + 120
    while not all(r.state and r.state.is_running() for r in _flow_runs(ids)):
        assert time.monotonic() < deadline, "the trainings did not start"
        time.sleep(0.3)
    state = read_state(settings)
    hung = state.pids["prefect-server"]
    os.kill(hung, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while read_state(settings).pids["prefect-server"] == hung or not healthy(state.api_url):
            assert time.monotonic() < deadline, "the keeper did not restart the stopped Prefect server in 120 s"
            time.sleep(1.0)
    finally:
        try:
            os.kill(hung, signal.SIGCONT)  # (gone if the keeper ended it)
        except ProcessLookupError:
            pass
    runs = _wait_final(ids, timeout=180)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state.message for r in runs]
    said = Path(state.logs["keeper"]).read_text()
    assert f"prefect-server (pid {hung}) did not answer its health check (3 of 3)" in said, said[-2000:]
    assert f"ended prefect-server (pid {hung}): alive but not answering" in said, said[-2000:]


def test_a_retried_submission_makes_one_run(stack, settings, sleeper, tmp_path):
    """The same Idempotency-Key twice on POST /v1/runs gets the first run back; and the Python API, whose
    first request times out after the platform made the run, retries with its key and makes no second."""
    from mlyard.core.connection import read_state

    state = read_state(settings)
    body = json.dumps({"deployment": "train/train-local", "parameters": {"spec": sleeper("idem-http", 0)},
                       "tags": ["mlyard.parent:forged"], "job_variables": {}}).encode()

    def post() -> dict:
        request = urllib.request.Request(f"{state.service_url}/v1/runs", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {state.internal_token}",
            "Idempotency-Key": "retry-of-one-call"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    first, second = post(), post()
    assert first["id"] == second["id"], "a retry with the same key made a second run"
    [made_first] = _flow_runs([first["id"]])
    assert "mlyard.parent:forged" not in made_first.tags, "a caller made its run a child that skips the line"

    # a fresh process, as a user's script: its first request gives up after 0.01 s, its retry does not
    script = tmp_path / "retry.py"
    script.write_text(
        "import json, sys, urllib.request\n"
        "from mlyard.submit import submit\n"
        "real, calls = urllib.request.urlopen, []\n"
        "def urlopen(request, timeout=None, **kw):\n"
        "    calls.append(request.full_url)\n"
        "    if len(calls) == 1:\n"  # the platform gets the request, the caller gives up before the answer
        "        return real(request, timeout=0.01, **kw)\n"
        "    return real(request, timeout=timeout, **kw)\n"
        "urllib.request.urlopen = urlopen\n"
        f"spec = {json.dumps(sleeper('idem-sdk', 0))}\n"
        "made = submit('train/train-local', {'spec': spec})\n"
        "print(json.dumps({'made': made, 'calls': len(calls)}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLYARD_"))}
    env["MLYARD_HOME"] = str(settings.home_dir)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    said = json.loads(out.stdout.strip().splitlines()[-1])
    assert said["calls"] == 2, f"the first request did not time out, or more were needed: {said}"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        made = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["idem-sdk"])))
    assert [str(r.id) for r in made] == [said["made"]["id"]], f"{len(made)} runs made by one call"

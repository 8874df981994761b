"""The crash automation (mlyard/prefect_setup.py ensure_crash_detection) crashes runs that stopped reporting,
never a healthy run whose reports could not arrive (issue 69 §2): a Prefect server of its own, hung (SIGSTOP)
for 60 s while a real flow process runs and reports its heartbeat every 30 s as mlyard's runs do. When the
server wakes, its automation must not read the quiet minute as the run's death; the run goes on reporting and
completes, past the automation's window."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import free_port

FLOW = """
import time
from prefect import flow

@flow(name="steady")
def steady():
    time.sleep(125)

steady()
"""


def test_a_prefect_server_hung_for_60_s_crashes_no_healthy_run(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mlyard.core.settings import HEARTBEAT_SECONDS, TELEMETRY_OFF_ENV, UNRESPONSIVE_AFTER_SECONDS, Settings
    from mlyard.prefect_setup import empty_prefect_db, ensure_crash_detection, start_server, wait_healthy
    from mlyard.tasks.processes import stop_group

    assert 125 > UNRESPONSIVE_AFTER_SECONDS + 10, "the run outlives the automation's window"
    settings = Settings(home=tmp_path / "own", prefect_port=free_port())
    settings.prefect_home.mkdir(parents=True)
    shutil.copyfile(empty_prefect_db(), settings.prefect_home / "prefect.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLYARD_"))} | TELEMETRY_OFF_ENV
    log = tmp_path / "prefect.log"
    server = start_server(settings, env, log)
    api = f"http://127.0.0.1:{settings.prefect_port}/api"
    flow = None
    try:
        wait_healthy(api, server, log, 120)
        with temporary_settings({PREFECT_API_URL: api}):
            ensure_crash_detection()
        flow = subprocess.Popen([sys.executable, "-c", FLOW], env={
            **env, "PREFECT_API_URL": api, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            "PREFECT_HOME": str(tmp_path / "flow-home")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with SyncPrefectClient(api) as client:
            deadline = time.monotonic() + 60
            while not (runs := [r for r in client.read_flow_runs() if r.state and r.state.is_running()]):
                assert time.monotonic() < deadline and flow.poll() is None, "the flow did not start"
                time.sleep(0.5)
            time.sleep(3)  # its first heartbeat sent
            os.kill(server, signal.SIGSTOP)  # hung: connections wait, nothing is answered or evaluated
            time.sleep(60)
            os.kill(server, signal.SIGCONT)
            assert flow.wait(timeout=150) == 0, flow.stderr.read().decode()[-3000:] if flow.stderr else ""
            states = [s.type.value for s in client.read_flow_run_states(runs[0].id)]
        assert "CRASHED" not in states and states[-1] == "COMPLETED", states
    finally:
        if flow is not None and flow.poll() is None:
            flow.kill()
        os.kill(server, signal.SIGCONT)
        stop_group(server, 10)

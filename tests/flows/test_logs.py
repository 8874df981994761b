"""Structured log records outside the local files: in a Kubernetes pod they go to stdout as JSON lines
(for the cluster's log stack), and `mlyard logs --follow` prints records as they are written. Both
against the running stack's Prefect server and mlyard API, from fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_user_paths import BIN, user_dir

ROOT = Path(__file__).resolve().parents[2]


def test_in_a_pod_a_flow_runs_records_go_to_stdout_as_json_lines(stack):
    """No cluster here: the pod is this process with the variable the kubelet sets in every pod. The flow
    is a batch inference worker's (its records carry the batch's id from its spec)."""
    code = textwrap.dedent("""
        from prefect import flow, get_run_logger
        from mlyard.core.names import FLOW_BATCH_WORKER
        from mlyard.core.settings import Settings
        from mlyard.tasks.logrecords import install

        @flow(name=FLOW_BATCH_WORKER)
        def worker(spec: dict) -> None:
            install(Settings())
            get_run_logger().warning("shard %d of %d failed twice", 3, 8)

        worker({"batch_id": "pod-batch-1", "name": "pod-batch"})
    """)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(ROOT),
           "KUBERNETES_SERVICE_HOST": "10.0.0.1", "PREFECT_API_URL": stack.api_url,
           "PREFECT_API_AUTH_STRING": stack.prefect_auth_string or "", "MLYARD_HOME": os.environ["MLYARD_HOME"],
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    warned = [d for d in docs if d["logLevel"] == "WARNING"]
    assert len(warned) == 1, proc.stdout
    d = warned[0]
    assert d["category"] == "mlyard.batch" and d["body"] == "shard 3 of 8 failed twice" and d["logType"] == "mlyard"
    assert d["batchInferenceId"] == "pod-batch-1" and d["flowRunId"] and d["time"].endswith("Z")
    records = Path(os.environ["MLYARD_HOME"]) / "logs" / "records" / "batch"
    assert not any("pod-batch-1" in f.read_text() for f in records.glob("*.jsonl")), "a pod writes no local file"


def test_follow_prints_records_as_they_are_written(stack):
    folder = Path(os.environ["MLYARD_HOME"]) / "logs" / "records" / "notebook"
    folder.mkdir(parents=True, exist_ok=True)
    from mlyard.core import logrecords as lr

    path = folder / "2026-11-26.jsonl"

    def write(body: str) -> None:
        with open(path, "ab") as f:
            f.write(lr.line(lr.document("notebook", "INFO", body, name="follow-me", flowRunId="f0110w-run")))

    write("before")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    follower = subprocess.Popen([str(BIN / "mlyard"), "logs", "--run", "f0110w", "--follow", "--json"],
                                cwd=user_dir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(follower.stdout.readline())["body"] == "before"
        t0 = time.monotonic()
        write("after")
        assert json.loads(follower.stdout.readline())["body"] == "after"
        assert time.monotonic() - t0 < 5, "a new record shows within a few seconds"
    finally:
        follower.terminate()
        follower.wait(10)

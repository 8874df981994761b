"""Where work runs: one seam (DESIGN §2).

A job is a typed pydantic model holding its shards (`mlyard.core.specs.BatchJob` today; tuning trials,
serving replicas, KFP steps and RAG shards next). A `Transport` runs a list of jobs, one per worker,
and reports through one `Follow`:

- `InProcess(work)`: calls `work(job, follow)` here, one job after another;
- `LocalProcesses(module, env, scratch)`: one `python -m MODULE JOB.json` process per job, each in its
  own process group; the job's events come back as `@mlyard {json}` lines on its stdout
  (`emit_to_stdout` is the worker's side);
- `FlowRuns(deployment, job_variables)`: one flow run of a worker deployment per job, with the job as
  its `spec` parameter. On a Kubernetes work pool each one is a pod (the job variables ask for its
  GPUs, image and resources); a flow run streams no events, so `Follow.poll` is called between
  checks and reads what the workers have committed.

Every transport ends all of its workers when the work is stopped (`TrainingStopped`), when a limit is
passed or a worker fails or dies (`follow.failure`, `JobFailed` unless the caller names its own), and
when its caller is interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from pydantic import BaseModel

from mlyard.core.environment import python_path
from mlyard.core.errors import JobFailed, TrainingFailed, TrainingStopped

EVENT_PREFIX = "@mlyard "
ROOT = Path(__file__).absolute().parents[2]  # the folder holding the mlyard package (a checkout's, site-packages)


def _never() -> str | None:
    return None


@dataclass
class Follow:
    """What a transport reports to and asks of the work's owner."""

    on_event: Callable[[dict], None] = lambda event: None  # progress, failure and shard events of the workers
    should_stop: Callable[[], str | None] = _never  # a reason once a user stopped the work
    failed: Callable[[], str | None] = _never  # a reason once a limit is passed (failure budget, run time)
    log: Callable[[str], None] = lambda line: None  # a worker's own output
    poll: Callable[[], None] = lambda: None  # read what workers committed (transports without events)
    failure: Callable[[str], Exception] = JobFailed  # the error a failed job raises


class Transport(Protocol):
    def run(self, jobs: Sequence[BaseModel], follow: Follow) -> None:
        """Run every job to its end; raise TrainingStopped or `follow.failure(reason)` otherwise."""


class InProcess:
    """Runs each job here: `work(job, follow)`."""

    def __init__(self, work: Callable[[Any, Follow], None]):
        self.work = work

    def run(self, jobs: Sequence[BaseModel], follow: Follow) -> None:
        for job in jobs:
            self.work(job, follow)


class LocalProcesses:
    """One local process per job: `python -m MODULE JOB.json` with `env` (settings, credentials among
    them, go through the environment, never into the job file)."""

    def __init__(self, module: str, env: dict[str, str], scratch: Path, poll_seconds: float = 0.2,
                 grace_seconds: float = 3.0):
        self.module, self.env, self.scratch = module, env, scratch
        self.poll_seconds, self.grace_seconds = poll_seconds, grace_seconds

    def run(self, jobs: Sequence[BaseModel], follow: Follow) -> None:
        from mlyard.tasks.launch import Supervisor

        stop: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()

        def stop_reason() -> str | None:
            with lock:
                if not stop and not errors:
                    reason = follow.should_stop()
                    if reason:
                        stop.append(reason)
                    else:
                        error = follow.failed()
                        if error:
                            errors.append(error)
                return stop[0] if stop else (errors[0] if errors else None)

        def on_line(line: str) -> None:
            if line.startswith(EVENT_PREFIX):
                event = json.loads(line[len(EVENT_PREFIX):])
                if event.get("event") == "abort":
                    errors.append(event["error"])
                else:
                    follow.on_event(event)
            elif line.strip():
                follow.log(line)

        def run(i: int, job: BaseModel) -> None:
            job_file = self.scratch / f"worker-{i}.json"
            job_file.write_text(job.model_dump_json())
            env = {**os.environ, **self.env,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), python_path()])}
            argv = [sys.executable, "-m", self.module, str(job_file)]
            try:
                Supervisor(argv, env, ROOT, on_line, should_stop=stop_reason, poll_seconds=self.poll_seconds,
                           grace_seconds=self.grace_seconds).run()
            except TrainingStopped:
                pass
            except TrainingFailed as exc:
                if not errors:
                    errors.append(f"worker {i} ended ({exc.reason}): " + " | ".join(exc.last_lines[-3:]))

        threads = [threading.Thread(target=run, args=(i, job), name=f"mlyard-worker-{i}", daemon=True)
                   for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if stop:
            raise TrainingStopped(stop[0])
        if errors:
            raise follow.failure(errors[0])


class FlowRuns:
    """One flow run of `deployment` per job (its `spec` parameter); on a Kubernetes pool, one pod each."""

    def __init__(self, deployment: str, kubernetes_job_variables: dict[str, Any] | None = None,
                 poll_seconds: float = 2.0):
        self.deployment, self.job_variables = deployment, kubernetes_job_variables or {}
        self.poll_seconds = poll_seconds

    def run(self, jobs: Sequence[BaseModel], follow: Follow) -> None:
        from prefect.client.orchestration import get_client

        from mlyard.tasks.orchestration import cancel_flow_run, submit

        runs = []
        try:
            for job in jobs:
                runs.append(submit(self.deployment, {"spec": job.model_dump(mode="json")}, self.job_variables))
            while True:
                follow.poll()
                with get_client(sync_client=True) as client:
                    states = [client.read_flow_run(r.id).state for r in runs]
                bad = [s for s in states if s is not None and s.is_final() and not s.is_completed()]
                if bad:
                    raise follow.failure(f"a worker flow run ended {bad[0].type.value}: {bad[0].message}")
                if all(s is not None and s.is_completed() for s in states):
                    follow.poll()
                    return
                reason = follow.should_stop()
                if reason:
                    raise TrainingStopped(reason)
                error = follow.failed()
                if error:
                    raise follow.failure(error)
                time.sleep(self.poll_seconds)
        except BaseException:
            for r in runs:
                try:
                    cancel_flow_run(str(r.id), "the work it belongs to ended")
                except Exception:  # already final
                    pass
            raise


def emit_to_stdout(event: dict) -> None:
    """A worker process's side of LocalProcesses: one event line on stdout. If the owner is killed,
    the next event raises BrokenPipeError and the worker ends instead of racing a rerun."""
    sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()

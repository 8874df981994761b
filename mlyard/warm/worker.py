"""The local pool's worker: Prefect's process worker, woken by Prefect's events instead of a fast poll.

    python -m mlyard.warm.worker --pool local --name mlyard-local

A Prefect worker finds work by polling its pool (every `PREFECT_WORKER_QUERY_SECONDS`, 10 s by
default). The local pool should feel immediate, and polling four times a second cost the embedded
Prefect server about a tenth of a core while nothing ran (6.3 s of CPU a minute, 1.0 s without the
worker: issue 25). This worker is Prefect's `ProcessWorker` as `prefect worker start --type process`
runs it, with one addition: it follows the server's event stream, and a flow run entering SCHEDULED in
its pool (Run in the UI, `mlyard train`, a tuning's trial, a schedule's slot) wakes it at once; the
event arrives about 0.1 s after the run is created. The poll stays, every POLL_SECONDS, as the safety
net (a lost stream, a run scheduled for later that enters the prefetch window). When the stream is
lost the worker reconnects and polls at once, so a run created meanwhile waits at most one poll.
A run it takes ahead of its scheduled time (a schedule's slot) starts at that time, never before.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

POLL_SECONDS = 5.0  # the safety-net poll (the event wakes the worker first)
RETRY_SECONDS = 0.25  # a wake that finds nothing yet (the run's commit can trail its event) polls again
RETRIES = 8  # for at most 2 s
RECONNECT_SECONDS = 2.0


def in_pool(event: Any, pool: str) -> bool:
    """Whether a `prefect.flow-run.Scheduled` event is about a run of this work pool."""
    return any(r.id.startswith("prefect.work-pool.") and r.get("prefect.resource.name") == pool
               for r in event.related)


def seconds_early(flow_run: Any, now: float | None = None) -> float:
    """How long before its scheduled time the worker took this run (0: not early).

    The worker takes runs up to PREFECT_WORKER_PREFETCH_SECONDS ahead, to start their process in time;
    Prefect's server then holds the run's move to RUNNING until its scheduled time, but rounds the wait
    to whole seconds, so a run could start up to half a second before its slot. The worker waits the
    exact rest first: a scheduled run never starts before its time."""
    state = flow_run.state
    at = state.state_details.scheduled_time if state is not None and state.state_details else None
    at = at or flow_run.expected_start_time
    if at is None:
        return 0.0
    return max(0.0, at.timestamp() - (time.time() if now is None else now))


async def run(pool: str, name: str) -> None:
    import anyio
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.logging import get_logger
    from prefect.workers.process import ProcessWorker

    log = get_logger("worker.mlyard")
    with warnings.catch_warnings():  # it registers as type "process" in this process: that is the point
        warnings.simplefilter("ignore", UserWarning)

        class Worker(ProcessWorker):
            """The process worker; the poll loop and a wake never query the pool at once."""

            _query_lock = anyio.Lock()

            async def get_and_submit_flow_runs(self) -> list[Any]:
                async with self._query_lock:
                    return await super().get_and_submit_flow_runs()

            async def run(self, flow_run: Any, configuration: Any, task_status: Any = None) -> Any:
                await anyio.sleep(seconds_early(flow_run))
                return await super().run(flow_run, configuration, task_status)

    worker = Worker(name=name, work_pool_name=pool)
    woken = anyio.Event()

    async def listen() -> None:
        nonlocal woken
        only_scheduled = EventFilter(event=EventNameFilter(name=["prefect.flow-run.Scheduled"]))
        while True:
            try:
                async with get_events_subscriber(filter=only_scheduled) as events:
                    woken.set()  # (re)connected: whatever was created while the stream was down
                    async for event in events:
                        if in_pool(event, pool):
                            woken.set()
            except Exception as exc:  # the server restarting: the poll covers the gap
                log.warning("the event stream was lost (%s); reconnecting in %.0f s", exc, RECONNECT_SECONDS)
            await anyio.sleep(RECONNECT_SECONDS)

    async def wake() -> None:
        nonlocal woken
        while True:
            await woken.wait()
            woken = anyio.Event()  # events during this poll wake it once more, not once each
            for _ in range(RETRIES):
                if await worker.get_and_submit_flow_runs() or woken.is_set():
                    break
                await anyio.sleep(RETRY_SECONDS)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listen)
        tasks.start_soon(wake)
        await worker.start(printer=print)
        tasks.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.warm.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="the process work pool to serve")
    parser.add_argument("--name", required=True, help="the worker's name in Prefect")
    args = parser.parse_args(argv)
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()
    # Prefect reads its settings at import: the poll interval is set before Prefect is imported.
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(POLL_SECONDS))
    import anyio
    from prefect.utilities.processutils import setup_signal_handlers_worker

    setup_signal_handlers_worker(os.getpid(), "the local pool's worker", print)
    try:
        anyio.run(run, args.pool, args.name)
    except KeyboardInterrupt:  # SIGTERM or SIGINT, as Prefect's CLI ends its worker
        print(f"Worker {args.name!r} stopped!", flush=True)


if __name__ == "__main__":
    main()

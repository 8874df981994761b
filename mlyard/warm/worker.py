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

It starts at most the machine's places of runs at once, in the local pool's fair line, and tells the
runs it leaves waiting why (mlyard/tasks/local_line.py); a run that ends wakes it for the next. Runs it
did not start (its predecessor's, if the keeper restarted it) hold their places as well. Every 5 s, while
its loop turns and its last look at the pool ended within 5 minutes, it touches `--alive`, which the
keeper (mlyard/keeper.py) reads: a worker that stopped is restarted, and the runs it started go on
(mlyard/warm/client.py).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path
from typing import Any

from mlyard.tasks import local_line

POLL_SECONDS = 5.0  # the safety-net poll (the event wakes the worker first)
RETRY_SECONDS = 0.25  # a wake that finds nothing yet (the run's commit can trail its event) polls again
RETRIES = 8  # for at most 2 s
RECONNECT_SECONDS = 2.0
QUOTAS_SECONDS = 10.0  # the projects' quotas are read again this often
TOLD_PER_TURN, TELL_SECONDS = 25, 1.0  # waiting runs told their reason, at most 25 a second (each is a write)
HEARTBEAT_SECONDS = 5.0  # the `--alive` file is touched this often while the worker is well
LOOK_LIMIT_SECONDS = 300.0  # a look at the pool that has not ended after this long is a hang
FULL_READ_SECONDS = 60.0  # every waiting run is read again this often (a safety net); in between, the new ones
HAND_OVER_SECONDS = 5.0  # a stopped worker waits this long for its runs' clients to let go (they ask Prefect: 3 s)
PICKED_SECONDS = 30.0  # a run chosen is left out of the line this long (its submission under way)
OVERLAP_SECONDS = 2.0  # a run is committed a little after its expected start is set: read a little back


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


async def run(pool: str, name: str, places: int, alive: Path | None = None) -> None:
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
                    try:
                        return await super().get_and_submit_flow_runs()
                    finally:
                        line.looked_at = time.monotonic()

            async def _get_scheduled_flow_runs(self) -> list[Any]:
                return await line.next_runs(self)

            async def run(self, flow_run: Any, configuration: Any, task_status: Any = None) -> Any:
                line.mine.add(flow_run.id)
                try:
                    await anyio.sleep(seconds_early(flow_run))
                    return await super().run(flow_run, configuration, task_status)
                finally:
                    line.mine.discard(flow_run.id)
                    wake_now()  # a place is free

    worker = Worker(name=name, work_pool_name=pool)
    line = Line(pool, places, log)
    woken = anyio.Event()

    def wake_now() -> None:
        woken.set()

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
                if await worker.get_and_submit_flow_runs() or woken.is_set() or line.full:
                    break  # (no free place: a run that ends wakes it)
                await anyio.sleep(RETRY_SECONDS)

    async def heartbeat() -> None:
        """Touch `alive` while the loop turns and a look at the pool ended within LOOK_LIMIT_SECONDS (a
        look can take a while on a busy server; one that never ends is a hang)."""
        while True:
            if alive is not None and time.monotonic() - line.looked_at < LOOK_LIMIT_SECONDS:
                try:
                    alive.touch()
                except OSError as exc:  # its home going away: the keeper then ends with it
                    log.warning("could not touch %s: %s", alive, exc)
            await anyio.sleep(HEARTBEAT_SECONDS)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listen)
        tasks.start_soon(wake)
        tasks.start_soon(heartbeat)
        tasks.start_soon(line.teller, worker)
        await worker.start(printer=print)
        tasks.cancel_scope.cancel()


class Line:
    """The worker's side of the local pool's line (mlyard/tasks/local_line.py): which due runs take the
    free places, and the reason told to the ones it leaves waiting."""

    def __init__(self, pool: str, places: int, log: Any) -> None:
        from datetime import datetime, timezone

        self.pool, self.places, self.log = pool, places, log
        self.mine: set[Any] = set()  # runs this worker runs now
        self.lined: set[str] = set()  # runs this worker started that hold places
        self.full = False  # no place was free at the last look
        self.looked_at = time.monotonic()  # when the last look at the pool ended
        self.to_tell: list[Any] = []  # runs the last look left waiting
        self.told: set[str] = set()  # waiting runs told their reason
        self.flows: dict[Any, str] = {}  # flow id -> name
        self.waiting: dict[str, Any] = {}  # the waiting runs as last read
        self.started: dict[str, float] = {}  # the runs this worker chose in the last PICKED_SECONDS, and when
        self.full_read_at = -FULL_READ_SECONDS
        self.read_until = datetime.now(timezone.utc)
        self._quotas: tuple[float, dict[str, int | None]] = (0.0, {})

    async def quotas(self) -> dict[str, int | None]:
        import anyio

        read_at, quotas = self._quotas
        if time.monotonic() - read_at > QUOTAS_SECONDS:
            try:
                quotas = await anyio.to_thread.run_sync(local_line.quotas)
            except Exception as exc:  # noqa: BLE001 - the catalog away for a moment: the last ones read
                self.log.warning("could not read the projects' quotas (%s)", exc)
            self._quotas = (time.monotonic(), quotas)
        return quotas

    async def next_runs(self, worker: Any) -> list[Any]:
        """Prefect's worker asks which runs to submit: the due runs that take the free places, in the
        line's order (its own query would give every due run, oldest first)."""
        from prefect.client.schemas.responses import WorkerFlowRunResponse

        client, pool = worker.client, self.pool
        holding = [await self.run_of(client, fr) for fr in await client.read_flow_runs(
            **local_line.filters(pool, local_line.HOLDING), limit=local_line.PAGE)]
        mine = {str(i) for i in (*self.mine, *worker._submitting_flow_run_ids)}
        taken = {r.id for r in holding} | mine
        free = self.places - len({r.id for r in holding if r.lined} | (mine & self.lined))
        self.full = free <= 0
        free_children = local_line.CHILDREN_PER_PLACE * self.places - len({r.id for r in holding if not r.lined}
                                                                          | (mine - self.lined))
        for run in holding:  # started meanwhile: out of the line as last read
            self.waiting.pop(run.id, None)
        now = time.monotonic()
        self.started = {i: at for i, at in self.started.items() if now - at < PICKED_SECONDS}
        waiting = {i: fr for i, fr in (await self.read_waiting(client)).items() if i not in self.started}
        due_by = time.time() + worker._prefetch_seconds
        runs = [await self.run_of(client, fr) for i, fr in waiting.items() if i not in taken]
        due = [r for r in runs if r.at <= due_by]
        ranked = local_line.order([r for r in due if r.lined], [r for r in holding if r.lined], await self.quotas())
        children = sorted((r for r in due if not r.lined), key=lambda r: (r.at, r.id))
        chosen = (await self.still_waiting(client, children, free_children, waiting)
                  + await self.still_waiting(client, [run for run, held in ranked if held is None], free, waiting))
        self.lined = (self.lined & mine) | {r.id for r in chosen if r.lined}
        picked = {r.id for r in chosen}
        for run_id in picked:  # out of the line; a read that overlaps its start would bring it back a while
            self.waiting.pop(run_id, None)
            self.started[run_id] = now
        self.to_tell = [waiting[r.id] for r, _ in ranked if r.id not in picked]  # told by `teller`, not in the look
        pool_id = worker.work_pool.id
        return [WorkerFlowRunResponse(work_pool_id=pool_id, work_queue_id=waiting[r.id].work_queue_id,
                                      flow_run=waiting[r.id]) for r in chosen]

    async def still_waiting(self, client: Any, runs: list[Any], places: int, waiting: dict[str, Any]) -> list[Any]:
        """The first `places` of `runs` that Prefect says wait still (read again: the line as read may be a
        little old, and Prefect would start a run that ended again if asked), `waiting` updated with them."""
        chosen: list[Any] = []
        for run in runs:
            if len(chosen) >= places:
                break
            try:
                fr = await client.read_flow_run(run.id)
            except Exception:  # noqa: BLE001 - gone (deleted), or the server away: not now
                self.waiting.pop(run.id, None)
                continue
            if fr.state is not None and fr.state.type.value == "SCHEDULED":
                waiting[run.id] = fr
                chosen.append(run)
            else:
                self.waiting.pop(run.id, None)
        return chosen

    async def read_waiting(self, client: Any) -> dict[str, Any]:
        """The pool's waiting runs, by id: all of them every FULL_READ_SECONDS (a page of 200 costs Prefect's
        server 0.1 s idle, several under load), and in between those made since the last read (a run made to
        start later is read then, and waits for its time). A run that left the line meanwhile (cancelled) is
        dropped when it is chosen (Prefect refuses to start it) or at the next full read."""
        from datetime import datetime, timedelta, timezone

        from prefect.client.schemas.filters import FlowRunFilterExpectedStartTime

        now = datetime.now(timezone.utc)
        full = time.monotonic() - self.full_read_at > FULL_READ_SECONDS
        filters = local_line.filters(self.pool, ("SCHEDULED",))
        if not full:
            filters["flow_run_filter"].expected_start_time = FlowRunFilterExpectedStartTime(
                after_=self.read_until - timedelta(seconds=OVERLAP_SECONDS))  # type: ignore[arg-type]
        found: dict[str, Any] = {}
        while len(found) < local_line.MAX_SEEN:
            page = await client.read_flow_runs(**filters, limit=local_line.PAGE, offset=len(found))
            found.update((str(fr.id), fr) for fr in page)
            if len(page) < local_line.PAGE:
                break
        self.waiting = found if full else {**self.waiting, **found}
        if full:
            self.full_read_at = time.monotonic()
        self.read_until = now
        return self.waiting

    async def run_of(self, client: Any, flow_run: Any) -> Any:
        if flow_run.flow_id not in self.flows:
            self.flows[flow_run.flow_id] = (await client.read_flow(flow_run.flow_id)).name
        return local_line.Run.of(flow_run, self.flows[flow_run.flow_id])

    async def teller(self, worker: Any) -> None:
        """Tell the runs the last look left waiting why, a few at a time beside the looks (each is a write)."""
        import anyio

        while True:
            await anyio.sleep(TELL_SECONDS)
            left, self.to_tell = self.to_tell, []
            try:
                if left and worker._client is not None:
                    await self.tell(worker._client, left)
            except Exception as exc:  # noqa: BLE001 - told at a later turn; the worker goes on
                self.log.warning("could not tell waiting runs why they wait: %s", exc)

    async def tell(self, client: Any, left: list[Any]) -> None:
        """Put the runs left waiting in Prefect's waiting state with the reason (once each, a few at a time)."""
        from prefect.states import Scheduled

        told = 0
        for fr in left:
            if told >= TOLD_PER_TURN:
                break
            if str(fr.id) in self.told or (fr.state is not None and fr.state.name == local_line.WAITING):
                continue
            try:
                fr = await client.read_flow_run(fr.id)  # as it is now: only a run still waiting is told
                if (fr.state is None or fr.state.type.value != "SCHEDULED" or fr.state.name == local_line.WAITING
                        or str(fr.id) in self.started):  # (chosen by a look meanwhile)
                    continue
                at = fr.state.state_details.scheduled_time or fr.next_scheduled_start_time
                await client.set_flow_run_state(fr.id, Scheduled(
                    name=local_line.WAITING, scheduled_time=at, message=local_line.reason(self.places)))
            except Exception as exc:  # noqa: BLE001 - told at a later look
                self.log.debug("could not tell run %s why it waits: %s", fr.id, exc)
                break
            self.told.add(str(fr.id))
            told += 1
        if len(self.told) > 4 * local_line.MAX_SEEN:
            self.told.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.warm.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="the process work pool to serve")
    parser.add_argument("--name", required=True, help="the worker's name in Prefect")
    parser.add_argument("--places", type=int, default=0, help="runs at once (0: the machine's default)")
    parser.add_argument("--alive", type=Path, help="a heartbeat file, touched every 5 s while the worker is well")
    args = parser.parse_args(argv)
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()
    # Prefect reads its settings at import: the poll interval is set before Prefect is imported.
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(POLL_SECONDS))
    import signal

    import anyio

    def stop(signum: int, _frame: Any) -> None:
        """SIGTERM or SIGINT: the worker hands its runs over and ends at once (an orderly exit would end them
        first). Each run's client is told (SIGTERM) and, the run not being cancelled, lets it go on alone and
        exits; under `mlyard down` it ends the run instead (mlyard/warm/client.py)."""
        print(f"Worker {args.name!r} stopped ({signal.Signals(signum).name}); its runs go on", flush=True)
        clients = _children()
        for pid in clients:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + HAND_OVER_SECONDS
        while clients and time.monotonic() < deadline:
            clients = [pid for pid in clients if not _ended(pid)]
            time.sleep(0.05)
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    anyio.run(run, args.pool, args.name, args.places or local_line.default_places(), args.alive)


def _children() -> list[int]:
    """The processes this one started that still run (the runs' clients)."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[1] == me:
                        found.append(int(entry))
            except (OSError, IndexError):
                pass
    return found


def _ended(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


if __name__ == "__main__":
    main()

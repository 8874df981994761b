"""The stack's keeper: `python -m mlyard.keeper`, started by `mlyard up`, restarts any part of the stack
that dies (the Prefect server, the worker, the warm runner, the mlyard API, the scheduler, the gateway,
the replica supervisor, PostgreSQL, and the MLflow UI once it was opened) within seconds, through the
same `up` that started it (mlyard/stack.py `restart_dead`), and says so in `logs/keeper.log`.

A part that dies again soon after its restart is restarted after a wait that doubles each time (1 s
to 60 s), so a part that cannot start (its port taken, its data broken) does not spin. The keeper ends
when the stack is stopped (`mlyard down` stops it first and removes the stack's record) or when another
keeper took its place. If it dies itself, the mlyard API starts it again within seconds (mlyard/stack.py
`keep_keeper`), and it then restarts what died with it; so does `mlyard up`.

Alive is not enough: every HEALTH_EVERY seconds it asks the Prefect server, the mlyard API, the gateway
and the MLflow UI for their /health, HEALTH_TIMEOUT seconds each, and reads the local worker's heartbeat
(mlyard/warm/worker.py). A part that fails STRIKES checks in a row (a server stopped or stalled, a worker
silent) is ended and restarted as a dead one is, and the log says why. A part is judged only once it has
lived START_GRACE seconds, and the worker only while Prefect answers.
"""

from __future__ import annotations

import logging
import os
import time

from mlyard.core.connection import StackState, read_state
from mlyard.core.settings import Settings
from mlyard.stack_state import one_at_a_time
from mlyard.tasks.processes import not_dumpable, reaped

log = logging.getLogger("mlyard.keeper")

LOOK_SECONDS = 1.0
QUIET_SECONDS = 60.0  # a part that lived this long after its restart starts the backoff over
MAX_WAIT_SECONDS = 60.0
HEALTH_EVERY = 5.0
HEALTH_TIMEOUT = 10.0
STRIKES = 3  # failed checks in a row that end a part: 30 to 45 s of not answering
START_GRACE = 30.0  # a part is not judged in its first seconds (Prefect migrates, the API warms up)
WORKER_SILENT = 60.0  # the worker's heartbeat beats every 5 s while it is well; this long without one is a hang


def main() -> None:
    not_dumpable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mlyard import stack

    settings = Settings()
    wait, restarted_at, due = 0.0, -QUIET_SECONDS, None  # due: when the dead parts found are restarted
    health = Health(settings)
    log.info("keeping the stack of %s (pid %d)", settings.home_dir, os.getpid())
    while True:
        time.sleep(LOOK_SECONDS)
        for _ in reaped():  # the parts it restarted are its children: no zombie of a dead one stays
            pass
        state = read_state(settings)
        if state is None or state.pids.get("keeper") != os.getpid():
            log.info("the stack was stopped, or another keeper keeps it: ending")
            return
        now = time.monotonic()
        if due is None:
            if health.due(now) and (hung := health.hung(state, now)):
                with one_at_a_time(settings.home_dir):  # not beside an `up` or a `down`
                    fresh = read_state(settings)
                    for name in hung:  # unless the part was started again meanwhile, or the stack stopped
                        if fresh is not None and fresh.pids.get(name) == state.pids.get(name):
                            stack.end_hung(fresh, name, log.warning)
            if not stack.dead_parts(settings, state):
                continue
            soon = now - restarted_at < QUIET_SECONDS  # died again soon after a restart: wait longer each time
            wait = min(max(2 * wait, 1.0), MAX_WAIT_SECONDS) if soon else 0.0
            due = now + wait
            if wait:
                log.warning("a part died again %.0f s after its restart: restarting in %.0f s", now - restarted_at, wait)
        if now < due:
            continue
        due, restarted_at = None, now
        try:
            if stack.restart_dead(settings, echo=log.info) is None:
                return
        except Exception:  # noqa: BLE001 - found dead again at the next look, after the backoff
            log.exception("restarting the stack's dead parts failed")


class Health:
    """The keeper's liveness checks (see the module): failed checks in a row, by part and pid."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.checked_at = -HEALTH_EVERY
        self.first_seen: dict[int, float] = {}  # pid -> when the keeper first saw it
        self.strikes: dict[str, int] = {}
        self.prefect_answers_since: float | None = None

    def due(self, now: float) -> bool:
        if now - self.checked_at < HEALTH_EVERY:
            return False
        self.checked_at = now
        return True

    def hung(self, state: StackState, now: float) -> list[str]:
        """The parts that failed STRIKES checks in a row, this one included."""
        from mlyard import stack
        from mlyard.stack_parts import worker_alive

        self.first_seen = {pid: self.first_seen.get(pid, now) for pid in state.pids.values()}
        judged = {name for name, pid in state.pids.items() if now - self.first_seen[pid] >= START_GRACE}
        failed = set(stack.unanswering(state, HEALTH_TIMEOUT)) & judged
        if "prefect-server" in failed or "prefect-server" not in state.pids:
            self.prefect_answers_since = None
        elif self.prefect_answers_since is None:
            self.prefect_answers_since = now
        if "worker" in judged and self.prefect_answers_since is not None and now - self.prefect_answers_since > WORKER_SILENT:
            try:
                silent = time.time() - worker_alive(self.settings).stat().st_mtime
            except OSError:
                silent = float("inf")
            if silent > WORKER_SILENT:
                failed.add("worker")
                log.warning("the worker's heartbeat is %.0f s old", silent)
        for name in failed:
            self.strikes[name] = self.strikes.get(name, 0) + 1
            log.warning("%s (pid %s) did not answer its health check (%d of %d)", name, state.pids.get(name),
                        self.strikes[name], STRIKES)
        self.strikes = {name: n for name, n in self.strikes.items() if name in failed}
        hung = [name for name, n in self.strikes.items() if n >= STRIKES]
        for name in hung:
            del self.strikes[name]
        return hung


if __name__ == "__main__":
    main()

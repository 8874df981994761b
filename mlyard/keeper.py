"""The stack's keeper: `python -m mlyard.keeper`, started by `mlyard up`, restarts any part of the stack
that dies (the Prefect server, the worker, the warm runner, the mlyard API, the scheduler, the gateway,
the replica supervisor, PostgreSQL, and the MLflow UI once it was opened) within seconds, through the
same `up` that started it (mlyard/stack.py `restart_dead`), and says so in `logs/keeper.log`.

A part that dies again soon after its restart is restarted after a wait that doubles each time (1 s
to 60 s), so a part that cannot start (its port taken, its data broken) does not spin. The keeper ends
when the stack is stopped (`mlyard down` stops it first and removes the stack's record) or when another
keeper took its place. If it dies itself, the mlyard API starts it again within seconds (mlyard/stack.py
`keep_keeper`), and it then restarts what died with it; so does `mlyard up`.
"""

from __future__ import annotations

import logging
import os
import time

from mlyard.core.connection import read_state
from mlyard.core.settings import Settings
from mlyard.tasks.processes import not_dumpable, reaped

log = logging.getLogger("mlyard.keeper")

LOOK_SECONDS = 1.0
QUIET_SECONDS = 60.0  # a part that lived this long after its restart starts the backoff over
MAX_WAIT_SECONDS = 60.0


def main() -> None:
    not_dumpable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mlyard import stack

    settings = Settings()
    wait, restarted_at, due = 0.0, -QUIET_SECONDS, None  # due: when the dead parts found are restarted
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


if __name__ == "__main__":
    main()

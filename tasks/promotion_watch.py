"""Promotions whose run ended without a verdict are taken up or ended, never left RUNNING with traffic
split and no gate judging (issue 52). The scheduler's loop looks every few seconds, and `mlyard up`
once (tasks/scheduling.py, mlyard/stack.py); whichever claims a promotion first acts on it.

A RUNNING promotion is judged by its flow run's state in Prefect (`decide`):
- FAILED (the flow raised) or CANCELLED (a person stopped the run): rolled back, the run's message kept;
- CRASHED, gone, or RUNNING with a heartbeat silent for STALE_SECONDS (killed, the stack stopped under
  it): a new run goes on at its phase and step, at most RESUME_LIMIT times, then it is rolled back;
- a run not started yet (SCHEDULED, PENDING), or one that still beats: left alone.
Rolled back means what a failed gate does: the candidate's weight and shadow 0 at once, the reason on the
stage and in the promotion.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Literal
from uuid import UUID

from mlyard.core.errors import NotFound, Protected
from mlyard.core.names import FLOW_ROLLOUT, deployment
from mlyard.registry.traffic import Traffic, orphaned

log = logging.getLogger("mlyard.promotions")

RESUME_LIMIT = 3
WATCH_SECONDS = 5.0  # how often the scheduler looks

Action = Literal["keep", "resume", "roll back"]
STOPPED = ("FAILED", "CANCELLED", "CANCELLING")  # the run raised, or a person stopped it: not taken up again


def decide(promo: dict[str, Any], run_state: str | None) -> Action:
    """What to do with a promotion, given its run's state type in Prefect (None: no run, or gone)."""
    if promo["status"] != "RUNNING":
        return "keep"  # PAUSED waits for a person; an ended one is over
    if run_state in STOPPED:
        return "roll back"
    if run_state in ("SCHEDULED", "PENDING") or not (orphaned(promo) or run_state in ("CRASHED", "COMPLETED")):
        return "keep"
    return "resume" if promo["resumes"] < RESUME_LIMIT else "roll back"


def tend(traffic: Traffic, run_state: Callable[[str], tuple[str, str] | None], submit: Callable[[dict], Any],
         reload: Callable[[], None], echo: Callable[[str], None] = log.info) -> list[str]:
    """One look at every RUNNING promotion; what was done, one line each. `run_state(flow_run_id)` gives
    (state type, message) or None; `submit(parameters)` queues a promote-progressively run; `reload` has
    the gateway read the shares again. A promotion that cannot be acted on (its rows changed under it, a
    store that failed) is logged and looked at again next time; it keeps none of the others waiting."""
    done = []
    for promo in traffic.promotions():
        if promo["status"] != "RUNNING":
            continue
        try:
            line = _tend_one(traffic, promo, run_state, submit, reload)
        except Exception:  # noqa: BLE001 - the loop goes on for the others; the next look tries it again
            log.exception("the promotion of %s/%s could not be acted on", promo["endpoint"], promo["stage"])
            continue
        if line:
            done.append(line)
    for line in done:
        echo(line)
    return done


def _tend_one(traffic: Traffic, promo: dict[str, Any], run_state: Callable[[str], tuple[str, str] | None],
              submit: Callable[[dict], Any], reload: Callable[[], None]) -> str | None:
    state = run_state(promo["flow_run_id"]) if promo["flow_run_id"] else None
    action = decide(promo, state[0] if state else None)
    if action == "keep" or not traffic.claim_orphan(promo):
        return None
    where = f"{promo['endpoint']}/{promo['stage']}"
    if action == "resume":
        try:
            fr = submit({"spec": {"endpoint": promo["endpoint"], "stage": promo["stage"], "resume": True}})
        except Exception as exc:  # noqa: BLE001 - no run could be made: end it rather than leave it split
            why = f"no new run could be started for it ({type(exc).__name__}: {exc})"
        else:
            traffic.update(promo["id"], flow_run_id=str(fr.id))
            return f"resumed the promotion of {where} at its step ({fr.name}): its run {_said(promo, state)}"
    else:
        why = f"its run {_said(promo, state)}"
        if promo["resumes"] >= RESUME_LIMIT and not (state and state[0] in STOPPED):
            why = f"taken up {RESUME_LIMIT} times already, and again {why}"
    try:
        ended = roll_back(traffic, promo, why)
    except (NotFound, Protected):  # its stage or endpoint deleted, or a person ended it meanwhile
        return None
    reload()
    return f"{'rolled back' if ended == 'ROLLED BACK' else 'completed'} the promotion of {where}: {why}"


def roll_back(traffic: Traffic, promo: dict[str, Any], why: str) -> str:
    """The candidate's weight and shadow 0, the reason on the stage and in the promotion, ROLLED BACK. A
    candidate that is the default already (its run failed after the last step promoted it) has no share to
    take back: the promotion is COMPLETE, with why."""
    if traffic.is_default(promo["endpoint"], promo["stage"]):
        traffic.update(promo["id"], status="COMPLETE", phase="done",
                       reason=f"{promo['stage']} became the default stage; then {why}"[:2000])
        return "COMPLETE"
    traffic.set_share(promo["endpoint"], promo["stage"], 0, 0, f"promotion {promo['id']} rolled back: {why}")
    traffic.mark_stage(promo["endpoint"], promo["stage"], f"rolled back: {why}")
    traffic.update(promo["id"], status="ROLLED BACK", reason=why)
    return "ROLLED BACK"


def _said(promo: dict[str, Any], state: tuple[str, str] | None) -> str:
    run = promo["flow_run_id"] or "(none)"
    if state is None:
        return f"{run} is gone" if promo["flow_run_id"] else "ended"
    kind, message = state
    if kind in ("RUNNING", "PENDING"):
        return f"{run} stopped reporting (killed, or its machine stopped)"
    return f"{run} ended {kind}" + (f": {message}" if message else "")


def prefect_states(client: Any) -> Callable[[str], tuple[str, str] | None]:
    """`run_state` for `tend`, read with a Prefect client. A run RUNNING for less than STALE_SECONDS is still
    starting (PENDING here): its flow is loading, and its first heartbeat comes after that. The claim that
    resumed it dated the heartbeat, and a pod that took longer than that to start (scheduling, a node under
    load) would otherwise look silent the moment it runs, and be taken up again."""
    from datetime import datetime, timezone

    from prefect.exceptions import ObjectNotFound

    from mlyard.registry.traffic import STALE_SECONDS

    def read(flow_run_id: str) -> tuple[str, str] | None:
        try:
            fr = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return None
        if fr.state is None:
            return None
        kind, since = fr.state.type.value, fr.state.timestamp
        if kind == "RUNNING" and since is not None and \
                (datetime.now(timezone.utc) - since).total_seconds() < STALE_SECONDS:
            kind = "PENDING"
        return kind, (fr.state.message or "")[:300]

    return read


def watch(settings: Any, client: Any, echo: Callable[[str], None] = log.info) -> list[str]:
    """`tend` with the platform's own parts: the catalog, Prefect, the local or cluster rollout deployment
    and the gateway."""
    from mlyard.core.connection import gateway_url
    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.registry.catalog import Catalog
    from mlyard.tasks.endpoints import gateway
    from mlyard.tasks.orchestration import submit

    pool = "kubernetes" if in_kubernetes_pod() else "local"

    def reload() -> None:
        try:
            gateway(gateway_url(settings), "/mlyard/reload", "POST")
        except Exception as exc:  # noqa: BLE001 - the gateway reads the shares again within a second anyway
            log.warning("the gateway did not take the reload: %s", exc)

    return tend(Traffic(Catalog(settings.catalog_db_url)), prefect_states(client),
                lambda parameters: submit(deployment(FLOW_ROLLOUT, pool), parameters), reload, echo)

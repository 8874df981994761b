"""Running work, here or queued: the one place that decides which (`run_or_queue`), runs a flow in
this process (`run_here`), or makes a flow run of a deployment, the run that Run in the Prefect UI
makes (`submit`), and follows it to its end (`final_state`).

The commands that queue work (`mlyard rags create|sync`, `--submit`, endpoint changes, pipeline runs)
ask the stack's warm mlyard API (mlyard/service.py) to make the run: Prefect's client is imported and
connected there already, which saves a fresh command 2-3 s of importing Prefect. Without that API (a
production Prefect server, or the API stopped) the run is made here. Either way Prefect's own
`run_deployment` makes it, so it is the same flow run with the same parameters, tags and job variables.

    from mlyard.submit import submit
    submit("rag-sync/rag-sync-local", {"spec": {"rag": "handbook"}}, tags=["mlyard.rag:handbook"])
    # {"id": "6f1c...", "name": "handbook"}
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from mlyard.core.errors import RUN_FAILURES, MlyardError, RunFailed, TrainingStopped


def run_or_queue(deployment: str, flow: str, spec: Any, *, queue: bool, fail: str,
                 job_variables: dict[str, Any] | None = None, tags: list[str] | None = None) -> Any:
    """Run the flow `module:function` on `spec` here (its result, or RunFailed(`fail`) with why), or with
    `queue` make a flow run of `deployment` ("FLOW/POOL") for its work pool: {"id", "name"}."""
    from mlyard.core.settings import Settings

    if queue or Settings().api_key is not None:  # a team member's work runs on the platform's pool, as them
        return submit(deployment, {"spec": spec.model_dump(mode="json")}, tags=tags, job_variables=job_variables)
    return run_here(flow, spec, fail)


SUBMIT_TRIES = 3  # a submission that timed out or found the API busy is sent again, with the same key
KEY = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def submit(deployment: str, parameters: dict[str, Any], *, tags: list[str] | None = None,
           job_variables: dict[str, Any] | None = None, idempotency_key: str | None = None) -> dict[str, str]:
    """A new flow run of `deployment` ("FLOW/DEPLOYMENT"), queued for its work pool: {"id", "name"}.
    `parameters` must be JSON (a spec's `model_dump(mode="json")`). The call has one idempotency key (made
    here unless given), sent again with each retry of a request that timed out or found the API busy:
    however often it is sent, it makes one run."""
    import time
    import uuid

    from mlyard import warm_api
    from mlyard.core.settings import Settings

    body: dict[str, Any] = {"deployment": deployment, "parameters": parameters, "tags": tags or [],
                            "job_variables": job_variables or {}, "idempotency_key": idempotency_key or uuid.uuid4().hex}
    settings = Settings()
    member = settings.api_key is not None  # a team member: the platform makes the run, as them, or nobody does
    url: str | None = warm_api.signed_in_api(settings) if member else warm_api.api_url()
    attempt = 0
    while url is not None:
        attempt += 1
        try:
            return warm_api.post(url, "/v1/runs", body)
        except warm_api.Unreachable:
            if not member:
                break  # stopped since `up`: the same run, made here (the same key: made once)
            if attempt >= SUBMIT_TRIES:
                raise
        except TimeoutError:
            if attempt >= SUBMIT_TRIES:
                raise
        except MlyardError as exc:
            if exc.http_status not in (502, 503, 504) or attempt >= SUBMIT_TRIES:
                raise
        time.sleep(attempt)
    return create_run(**body)


def create_run(deployment: str, parameters: dict[str, Any], tags: list[str],
               job_variables: dict[str, Any], name: str | None = None, scheduled_time: Any = None,
               idempotency_key: str | None = None) -> dict[str, str]:
    """Make the flow run in this process (the mlyard API runs this too), with the platform's one helper, in
    the caller's project: its tag set here (never taken from the caller), their role there an editor's,
    and recorded in the audit trail. A request with an `idempotency_key` the same caller already made a
    run of this deployment with gets that run back, not a new one (Prefect's idempotency key, kept per user)."""
    from mlyard.core.access import PROJECT_TAG, USER_TAG, current, run_tags
    from mlyard.core.errors import SpecError
    from mlyard.tasks.local_line import PARENT_TAG
    from mlyard.tasks.orchestration import submit as make_run
    from mlyard.teams import acting_editor, acting_or_none, record

    actor = current()
    what = f"deployment {deployment}"
    try:
        if idempotency_key is not None and not (isinstance(idempotency_key, str) and KEY.match(idempotency_key)):
            raise SpecError("idempotency_key", str(idempotency_key)[:120], "1 to 100 letters, digits and ._:- "
                            "(the CLI and the Python API make one per call)")
        project = acting_editor("starting work")
        if not actor.admin:  # the pod's job variables are the spec's own, never what a member's request says
            from mlyard.member_runs import member_parameters

            parameters, job_variables = member_parameters(deployment, parameters, project)
    except MlyardError as exc:
        record(actor, "run.start", what, "refused", acting_or_none(actor), f"{type(exc).__name__}: {exc}")
        raise
    # whose it is, and whose child (tasks/local_line.py: a child skips the line), are the platform's to say
    tags = [t for t in tags if not t.startswith((PROJECT_TAG, USER_TAG, PARENT_TAG))] + run_tags(project, actor.name)
    key = f"mlyard:{actor.name}:{idempotency_key}" if idempotency_key else None  # one user's key is not another's
    try:
        fr: Any = make_run(deployment, parameters, job_variables, tags, name=name, scheduled_time=scheduled_time,
                           idempotency_key=key)
    except MlyardError as exc:
        record(actor, "run.start", what, "refused" if exc.http_status < 500 else "failed", project, str(exc))
        raise
    record(actor, "run.start", f"{what} run {fr.id}", "ok", project)
    return {"id": str(fr.id), "name": fr.name}


def final_state(run_id: str, timeout: float | None, poll_seconds: float = 0.5, what: str = "", then: str = "") -> Any:
    """The Prefect state a queued run ended in, waited for; TimeoutError past `timeout` seconds, naming
    `what` and saying `then` (where to follow it)."""
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.is_final():
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what or run_id} is still {state.type.value if state else 'new'} after "
                                   f"{timeout:g} s" + (f"; {then}" if then else ""))
            time.sleep(poll_seconds)


CONSOLE_TRACEBACKS = {"on": True}  # the CLI turns them off (its --debug back on): its error line says why


def _console_without_tracebacks() -> None:
    """Prefect's console log prints a failed task's and flow's traceback of mlyard's and Prefect's own
    frames (two, about 90 lines) before the command's one-line error: keep the lines, drop the
    tracebacks, on the console only (the run's log in the Prefect UI keeps them)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    class NoTraceback(logging.Formatter):
        def __init__(self, inner: logging.Formatter | None) -> None:
            super().__init__()
            self.inner = inner or logging.Formatter()

        def format(self, record: logging.LogRecord) -> str:
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info = record.exc_text = record.stack_info = None  # this handler's view only
            try:
                return self.inner.format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, NoTraceback):
                handler.setFormatter(NoTraceback(handler.formatter))


def run_here(flow: str, spec: Any, fail: str) -> Any:
    """Run the flow `module:function` on `spec` in this process and return its result. Bad input the
    flow itself found raises the same one-line error as a check before the run would; a run that
    failed raises RunFailed(`fail`, with why); a cancelled one TrainingStopped."""
    from prefect import tags

    from mlyard.core.access import current, run_tags
    from mlyard.tasks.orchestration import prompt_flow_ends
    from mlyard.teams import acting_editor, check_quota

    module, name = flow.split(":")
    project = acting_editor("starting work")
    check_quota(spec, project)
    function = getattr(importlib.import_module(module), name)
    if not CONSOLE_TRACEBACKS["on"]:
        _console_without_tracebacks()
    prompt_flow_ends()  # the run ends when its work does, not up to 1 s later
    with tags(*run_tags(project, current().name)):  # its project (mlyard/runs.py lists by it) and who started it
        return outcome(function(spec, return_state=True), fail)


def outcome(state: Any, fail: str) -> Any:
    """A run's final state as a call's outcome: its result, or the error it ended with."""
    if state.is_completed():
        return state.result()
    if state.is_cancelled():
        raise TrainingStopped(state.message or "stopped")
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, MlyardError) and not isinstance(exc, RUN_FAILURES):
        raise exc
    raise RunFailed(fail, None, exc if isinstance(exc, BaseException) else state.message) from (
        exc if isinstance(exc, BaseException) else None)

"""The Prefect API as the platform uses it: queue a flow run of a deployment, follow it, cancel it like the UI's
Cancel button, watch for a cancel, link an MLflow run back to its flow run, read runs by id, retry a busy server's
503 at once. Plain functions over the Prefect client; the flows and the transports (tasks/transport.py) call them."""

from __future__ import annotations

import functools
import random
import time
from typing import Any, Callable, Iterator
from uuid import UUID

from mlyard.core.errors import StackError
from mlyard.core.names import RUN_NAMES, STARTED_LABEL, TAG_NAMED, TAG_NOTE, TAG_PREFECT_URL, render_run_name


def prompt_flow_ends() -> None:
    """Make a flow run end when its work and its records are done. Prefect's sync flow engine joins its
    heartbeat thread as a run ends, and that thread sleeps in whole seconds between looks at its stop
    event (prefect 3.8, flow_engine._send_heartbeats): every flow run's process ended about 1 s after the
    run (a 1,000-row batch: Completed, then 1.0 s before the command returned). Prefect's async engine
    already leaves the thread unjoined (`join_on_exit=False`); the sync engine does the same here (the
    thread is a daemon and, the stop event set, returns at its next wake without another heartbeat).
    What that second used to hide is waited for instead: the run's events (its task runs' states, which
    the server records from them) are sent before the flow call returns, so that what a caller reads
    next (`trainings show`: FAIL TRAIN once the entry point ran) is there. Idempotent."""
    import contextlib

    from prefect import flow_engine

    original = flow_engine._send_heartbeats
    if getattr(original, "_mlyard_unjoined", False):
        return

    @contextlib.contextmanager
    def unjoined(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield
        events_sent(EVENTS_WAIT_SECONDS)

    unjoined._mlyard_unjoined = True  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = unjoined  # type: ignore[assignment]


EVENTS_WAIT_SECONDS = 5.0


def events_sent(timeout: float) -> bool:
    """Wait (at most `timeout` seconds: a server that is gone never holds a run up) until this process's
    Prefect events have been sent; whether they were."""
    import threading

    from prefect.events.worker import EventsWorker

    try:
        worker = EventsWorker.instance()
    except Exception:  # noqa: BLE001 - no events client here (no API): nothing to wait for
        return True
    waiter = threading.Thread(target=worker.wait_until_empty, name="mlyard-events-sent", daemon=True)
    waiter.start()
    waiter.join(timeout)
    return not waiter.is_alive()


_MARKED: set[tuple[str, str]] = set()


def step_started(step: str) -> None:
    """Called first in each task whose start decides a lifecycle run's status (mlyard.core.names): the flow run
    is labelled with the step at once. Prefect's server records task runs from their events, a moment
    after they happen and longer under load, so a status read right after a run failed could miss that
    its entry point had run (CREATE FAILED instead of FAIL TRAIN). (A task's `on_running` hook would
    do the same, with two lines of Prefect's in every run's log.)"""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task_run.flow_run_id is not None:
        mark_started(ctx.task_run.flow_run_id, step)


def mark_started(flow_run_id: Any, step: str) -> None:
    """Label the flow run `flow_run_id` with `step` started (once per process: a tuning's trials). Best
    effort: a label that could not be written leaves the status to the task runs, as before labels."""
    import logging

    from prefect.client.orchestration import get_client

    key = (str(flow_run_id), step)
    if key in _MARKED:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(str(flow_run_id)), {STARTED_LABEL + step: True})
    except Exception as exc:  # noqa: BLE001 - the run goes on; only the label is missing
        logging.getLogger("mlyard").warning("could not label flow run %s with %s started: %s", flow_run_id, step, exc)
        return
    _MARKED.add(key)


def prefect_link(description: str = "") -> dict[str, str]:
    """The MLflow tags that link an MLflow run back to the Prefect flow run that makes it: its URL, and
    the run's description (MLflow's note, which its UI shows as Markdown, links clickable) ending in a
    link to it. Outside a flow run, the description alone."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    run_id, ui = flow_run.get_id(), PREFECT_UI_URL.value()
    if not (run_id and ui):
        return {TAG_NOTE: description}
    url = f"{ui.rstrip('/')}/runs/flow-run/{run_id}"
    link = f"Prefect flow run: [{flow_run.name or run_id}]({url})"
    return {TAG_PREFECT_URL: url, TAG_NOTE: f"{description}\n\n{link}" if description else link}


def link_mlflow_run(tracking: Any, run_id: str, what: str, key: str | None = "mlflow-run") -> None:
    """On the running flow run, its MLflow run's page one click away: a line of its log (the run page's
    first tab, where Prefect's UI makes a URL a link) and a link artifact (its Artifacts tab). Nothing
    outside a flow run."""
    from prefect import get_run_logger
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    from mlyard.core.links import mlflow_run_url
    from mlyard.core.settings import Settings

    if not flow_run.get_id():
        return
    url = mlflow_run_url(Settings(), tracking.client.get_run(run_id).info.experiment_id, run_id)
    get_run_logger().info("MLflow run of this %s: %s", what, url)
    create_link_artifact(link=url, link_text=f"MLflow run of this {what} ({run_id[:8]})", key=key,
                         description=f"The {what}'s MLflow run: parameters, metrics, artifacts (`mlyard ui mlflow` "
                                     "opens the MLflow UI).")


def cancel_watch(flow_run_id: str, every_seconds: float = 1.0, parent_id: str | None = None):
    """A should_stop callback: the reason once the flow run (or `parent_id`, the flow run it is a
    subflow of) is being cancelled (UI, CLI, API).

    Asks the API at most every `every_seconds`; a run outside Prefect (id `local-...`) never stops.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    last = [0.0]
    ids = [i for i in (flow_run_id, parent_id) if i and not i.startswith("local-")]

    def should_stop() -> str | None:
        now = time.monotonic()
        if not ids or now - last[0] < every_seconds:
            return None
        last[0] = now
        try:
            with get_client(sync_client=True) as client:
                states = [client.read_flow_run(UUID(i)).state for i in ids]
        except Exception:  # the API being briefly unreachable must not stop the work
            return None
        for state in states:
            if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                return state.message or "cancelled from Prefect"
        return None

    return should_stop


INTERRUPTED = "STOPPED: interrupted (Ctrl-C)"


def stopped_on_interrupt(flow, flow_run, state) -> None:
    """An on_crashed hook: a run its user interrupted (Ctrl-C on `mlyard train`) was stopped, not failed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    if "interrupt signal" in (state.message or ""):
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelled(message=INTERRUPTED), force=True)


def cancel_flow_run(flow_run_id: str, reason: str) -> None:
    """Cancel like the UI's Cancel button: a queued run ends at once, a running one goes CANCELLING and
    its worker (or the running flow itself) ends it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Cancelling

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(UUID(flow_run_id))
        queued = fr.state is not None and fr.state.type.value in ("SCHEDULED", "PENDING", "PAUSED")
        client.set_flow_run_state(UUID(flow_run_id), Cancelled(message=reason) if queued else Cancelling(message=reason),
                                  force=True)


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def with_queue_label(job_variables: dict, project: str = "default") -> dict:
    """The gpu pool's job variables with the Kueue queue label, when settings name a queue (kueue_queue):
    Kueue then admits the Job against the pool's GPU quota, or its project's (its own LocalQueue,
    tasks/cluster.py `project_queues`). The platform sets it, over any label the caller gave."""
    from mlyard.core.access import project_queue
    from mlyard.core.settings import Settings

    queue = Settings().kueue_queue
    if not queue:
        return job_variables
    return {**job_variables, "labels": {**(job_variables.get("labels") or {}),
                                        KUEUE_QUEUE_LABEL: project_queue(queue, project)}}



def run_name(flow: str) -> Callable[[], str]:
    """A flow's `flow_run_name`: the name its run was made with, when mlyard gave it one then (TAG_NAMED:
    a run queued from the CLI or Python, a schedule's slot) or a person typed it in the Prefect UI's Run
    form, so the name given at creation is the name it keeps; else (a name Prefect made up: the Run
    form's own suggestion, the server's for `prefect deployment run`) rendered from the run's
    parameters (mlyard.core.names.RUN_NAMES) when it starts."""
    template = RUN_NAMES[flow]

    def name() -> str:
        from prefect.runtime import flow_run

        current = str(flow_run.name or "")
        if current and (TAG_NAMED in (flow_run.tags or []) or not made_up_by_prefect(current)):
            return current
        return render_run_name(template, flow_run.parameters) or current

    return name


# The names Prefect makes up for a run nobody named. Its UI's Run form suggests a star's ("alpha3-
# centauri-nebula", prefect-ui-library's mocker `runName`: a Greek letter, maybe a number, a
# constellation in the genitive, maybe a suffix); its server names a run made without one with two
# coolname words ("crimson-hedgehog", prefect.utilities.names.generate_slug(2)).
_GREEK = ("alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|omicron|pi|rho|sigma|"
          "tau|upsilon|phi|chi|psi|omega")
_STAR_NAME = f"(?:{_GREEK})\\d*-[a-z]+(?:-[a-z]+)*"


def made_up_by_prefect(name: str) -> bool:
    """Whether `name` looks like one Prefect made up (a typed "lr-sweep-3" does not; a typed
    "alpha-test" or "brave-fox" would be taken for one and replaced by the spec's name)."""
    import re

    if re.fullmatch(_STAR_NAME, name):
        return True
    words = name.split("-")
    return len(words) == 2 and all(w in _coolname_words() for w in words)


@functools.cache
def _coolname_words() -> frozenset[str]:
    import re
    from importlib import resources

    try:
        texts = [f.read_text() for f in resources.files("coolname.data").iterdir() if f.name.endswith(".txt")]
    except (ModuleNotFoundError, OSError):  # no coolname (a Prefect without it): no server-made names
        texts = []
    return frozenset(w for text in texts for line in text.splitlines() if not line.startswith("#")
                     for w in re.findall(r"[a-z]+", line))


def submit(deployment: str, parameters: dict, job_variables: dict | None = None, tags: list[str] | None = None,
           name: str | None = None, scheduled_time: Any = None, idempotency_key: str | None = None):
    """Queue a flow run of `deployment` ("FLOW/DEPLOYMENT", never as a subflow) and return it: the one way
    mlyard makes a deployment run (the CLI, the Python API, the mlyard API, trials and batch workers, and
    the Prefect UI's Run button through mlyard's front door, which may give the run's `name` and time).
    The job variables (GPUs, image, resources) are only handed to a Kubernetes pool; a process pool has
    no use for them. A deployment that does not exist is a StackError saying how to register it; one named
    as before (`train/local`) is the one named so now (`train/train-local`). In a cluster's pod (the mlyard
    API's, a flow run's) a local deployment is the flow's `-kubernetes` one: a cluster has no local pool."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from mlyard.core.names import current_deployment, on_this_platform
    from mlyard.tasks.local_line import parent_tags

    deployment = on_this_platform(current_deployment(deployment))
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise StackError(f"no deployment {deployment!r} on this Prefect server: `mlyard up` registers the "
                             "local ones (and the gpu and cpu pools' with MLYARD_CLUSTER_POOLS=1, for a Kubernetes "
                             "worker you run); in production, `mlyard k8s apply --prefect-api-url URL`") from None
        pool = client.read_work_pool(found.work_pool_name) if found.work_pool_name else None
    tags = [*(tags or []), *(t for t in owner_tags() if t not in (tags or [])), *parent_tags()]  # a child: its parent's project and place
    from mlyard.core.access import project_of_tags

    kept = pool_job_variables(pool, job_variables, project_of_tags(tags))
    template = RUN_NAMES.get(deployment.split("/", 1)[0])
    if not name and template and (name := render_run_name(template, parameters)):
        tags = [*(tags or []), TAG_NAMED]  # its final name now: printed by the command, kept when the run starts
    return run_deployment(found.id, parameters=parameters, timeout=0, job_variables=kept, tags=tags or None,
                          as_subflow=False, flow_run_name=name, scheduled_time=scheduled_time,
                          idempotency_key=idempotency_key)


def owner_tags() -> list[str]:
    """The project and user tags of the flow run this process runs (none outside one)."""
    from prefect.context import FlowRunContext

    from mlyard.core.access import PROJECT_TAG, USER_TAG

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return []
    return [t for t in ctx.flow_run.tags or () if t.startswith((PROJECT_TAG, USER_TAG))]


def run_project() -> str:
    """The project of the flow run this process runs (`default` outside one, or for runs from before)."""
    from mlyard.core.access import project_of_tags

    return project_of_tags(owner_tags())


def appkey_env() -> dict[str, str]:
    """What a user's script is told of whose it is, as EasyMaker tells it: EM_APPKEY, the project the run
    belongs to (and EM_USER, who started it)."""
    from mlyard.core.access import project_of_tags, user_of_tags

    tags = owner_tags()
    return {"EM_APPKEY": project_of_tags(tags), **({"EM_USER": u} if (u := user_of_tags(tags)) else {})}


def training_job_variables(client: Any, deployment_id: str, parameters: dict, pools: dict[str, Any],
                           project: str = "default") -> dict | None:
    """A run of `train/...` made without mlyard's submit (the scheduler's): its spec's resources and image
    as its pool's job variables, so that it asks for its GPUs and runs its image (in `project`'s queue) as a
    submitted one does. `pools` caches each deployment's work pool."""
    if "spec" not in parameters:
        return None
    if deployment_id not in pools:
        found = client.read_deployment(UUID(deployment_id))
        pools[deployment_id] = client.read_work_pool(found.work_pool_name) if found.work_pool_name else None
    if pools[deployment_id] is None or pools[deployment_id].type != "kubernetes":
        return None
    from mlyard.core.specs import TrainingSpec

    return pool_job_variables(pools[deployment_id], TrainingSpec.model_validate(parameters["spec"]).job_variables(),
                              project)


def pool_job_variables(pool: Any, job_variables: dict | None, project: str = "default") -> dict:
    """What of a run's job variables its work pool takes: nothing on a process pool; on a Kubernetes pool those
    its template has (GPUs asked of a pool without them refused: the cpu pool is a cluster's `pool: local`), `image`
    resolved (a registered image's address and its account's pull Secret) and, on the gpu pool, the Kueue queue
    label of the run's project. The one rule for runs made by mlyard (submit, the scheduler)."""
    kept = dict(job_variables or {}) if pool is not None and pool.type == "kubernetes" else {}
    if props := (getattr(pool, "base_job_template", None) or {}).get("variables", {}).get("properties", {}):
        if kept.get("gpu_count") and "gpu_count" not in props:
            from mlyard.core.errors import SpecError

            raise SpecError("resources.gpu_count", kept["gpu_count"], f"0 on the {pool.name} pool, which has no GPUs: "
                            "queue it on the gpu pool (`--pool gpu`, `pool: gpu`)")
        kept = {k: v for k, v in kept.items() if k in props}
    if kept.get("image"):
        from mlyard.tasks.registry_secrets import pod_image

        kept = pod_image(kept)
    if pool is not None and pool.name == "gpu":
        kept = with_queue_label(kept, project)
    return kept


def flow_runs_by_id(client: Any, ids: list[str]) -> dict[str, Any]:
    """Prefect's flow runs of these ids (those that exist), read 200 at a time (the API's page)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = {}
    for i in range(0, len(ids), 200):
        chunk = [UUID(x) for x in ids[i:i + 200]]
        for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                        limit=len(chunk)):
            runs[str(fr.id)] = fr
    return runs


def quick_retries(retry_seconds: float = 15.0) -> Any:
    """An httpx transport for the scheduler's Prefect client that retries a 503 at once.

    Prefect on SQLite answers 503 when a write meets the database locked by another writer (rolled
    back: it can be sent again), and its client sleeps 2 s before a retry: under a burst of schedules,
    72% of a pass (py-spy). Here a 503 is retried after 0.02 s, doubling up to 0.5 s, for
    `retry_seconds` in all, then left to Prefect's client. Run creation carries an idempotency key, so
    sending it again never makes a second run (mlyard/prefect_server.py now makes most writers wait)."""
    import httpx

    class QuickRetries(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            deadline, pause = time.monotonic() + retry_seconds, 0.02
            while True:
                response = super().handle_request(request)
                if response.status_code != 503 or time.monotonic() + pause > deadline:
                    return response
                response.close()
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.5)

    return QuickRetries(retries=3)  # Prefect's own transport retries connection errors 3 times too

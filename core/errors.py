"""mlyard's exceptions. Every message names what was wrong, the offending value, and what to do.

    MlyardError
    ├── SpecError (ValueError)               a spec, file or request is invalid
    │   └── BadRequest                       a request a server's protocol cannot accept (where in it)
    ├── NotFound (LookupError)               one per kind (TrainingNotFound, ModelNotFound, ...: each *NotFound below)
    ├── Unauthenticated (PermissionError)    no credential, or one that is unknown, expired or revoked (401)
    ├── Forbidden (PermissionError)          the caller's role in the project does not allow the action (403)
    ├── Conflict (RuntimeError)              the action breaks a platform rule: AlreadyExists, ModelInUse, InUse,
    │                                        ExperimentBusy, TrainingNotComplete, StillRunning, Protected (a rule
    │                                        protects the resource: the default stage, ...)
    ├── StorageError (OSError)
    │   ├── StorageUnreachable
    │   └── StorageNotFound
    ├── TrainingFailed (RuntimeError)        the user's script failed or ran too long
    ├── TrainingStopped (RuntimeError)       a user stopped the training (or other work)
    ├── BadRecord (ValueError)               one input record cannot be read (written as an error row, not raised)
    ├── JobFailed (RuntimeError)             a job a transport ran failed (a worker died or gave up, a limit passed)
    │   └── BatchFailed                      a batch inference failed (too many failed batches, a worker died)
    │       └── ModelCallFailed              a model in its sandbox raised, or its process ended (one batch fails)
    ├── TuningFailed (RuntimeError)          failed trials reached max_failed_trials
    ├── RunFailed (RuntimeError)             a run ended in its kind's failure status (FAIL TRAIN, ...)
    ├── StackError (RuntimeError)            the embedded stack could not start or be reached
    │   ├── NotConnected                     no platform runs for this home (start it with `mlyard up`)
    │   ├── SchemaMismatch                   the catalog's schema is not one this release runs on (migrate first)
    │   └── SandboxUnavailable               this machine cannot start a sandbox for user code
    ├── DocumentError (ValueError)           a file that RAG ingestion cannot read
    ├── EmbeddingError (RuntimeError)        the embedding model or service failed
    ├── VectorStoreError (ConnectionError)   the vector store cannot be reached or used
    ├── RoutingFailed                        the gateway did not take a stage's replicas into routing
    ├── ReplicaFailed                        a replica did not become healthy
    ├── MetricLineError (ValueError)         a line of Katib's JSON metrics format that cannot be read
    ├── CronError (ValueError)               a cron expression robfig/cron would refuse
    ├── Unreachable                          nothing answers at the warm mlyard API's address
    └── HttpError                            a server's answer other than 200, with its status
        ├── BadChat                          an OpenAI request the chat routes refuse (param, code)
        ├── BadInput                         a body that does not fit an Azure run()'s declared inputs
        ├── Unavailable                      a RAG's LLM down, slow or failing (502, 504)
        ├── BodyTooLarge                     a request body over its limit (413)
        ├── ModelTimeout                     a model that did not answer in time (504)
        ├── NoRoute                          no endpoint, stage or model answers the path (404)
        ├── NoReplica                        no healthy replica can take the request now (503)
        └── UpstreamError                    a replica unreachable or broken off (502; `sent`, `timeout`)

Every class carries the HTTP status a server answers with (`http_status`); an HttpError is given its
own (`status` reads it). Nothing outside this module defines an exception (tests/test_layout.py).
"""

from __future__ import annotations

from typing import Sequence


class MlyardError(Exception):
    """Base of every mlyard error."""

    http_status = 500


class SpecError(MlyardError, ValueError):
    http_status = 400

    def __init__(self, field: str, value: object, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}: {value!r} is not valid: {expected}")


class BadRequest(SpecError):
    """A request a server's protocol cannot accept (400), naming where in it: `inputs[0].data`, ..."""


class NotFound(MlyardError, LookupError):
    http_status = 404
    kind = "resource"
    hint = ""

    def __init__(self, name: object):
        self.name = name
        hint = f" {self.hint}" if self.hint else ""
        super().__init__(f"{self.kind} {name!r} not found.{hint}")


class TrainingNotFound(NotFound):
    kind, hint = "training", "List trainings with `mlyard trainings list`."
class TemplateNotFound(NotFound):
    kind, hint = "training template", "List templates with `mlyard templates list`."
class ExperimentNotFound(NotFound):
    kind, hint = "experiment", "List experiments with `mlyard experiments list`."
class ModelNotFound(NotFound):
    kind, hint = "model", "List models with `mlyard models list`."
class TuningNotFound(NotFound):
    kind, hint = "tuning", "List tunings with `mlyard tunings list`."
class BatchNotFound(NotFound):
    kind, hint = "batch inference", "List batch inferences with `mlyard batches list`."
class EvaluationNotFound(NotFound):
    kind, hint = "evaluation", "List evaluations with `mlyard evaluations list`."
class EndpointNotFound(NotFound):
    kind, hint = "endpoint", "See `mlyard endpoints list`."
class ScheduleNotFound(NotFound):
    kind, hint = "schedule", "See `mlyard schedules list`."
class PipelineNotFound(NotFound):
    kind, hint = "pipeline", "See `mlyard pipelines list`."
class PipelineRunNotFound(NotFound):
    kind, hint = "pipeline run", "See `mlyard pipeline-runs list`."
class RagNotFound(NotFound):
    kind, hint = "RAG", "See `mlyard rags list`."
class NotebookNotFound(NotFound):
    kind, hint = "notebook", "See `mlyard notebooks list`."
class ImageNotFound(NotFound):
    kind, hint = "image", "See `mlyard images list`, or give a registry address (docker.io/library/python:3.11)."
class RegistryAccountNotFound(NotFound):
    kind, hint = "registry account", "See `mlyard registry-accounts list`."
class ProjectNotFound(NotFound):
    kind, hint = "project", "List yours with `mlyard projects list`."
class UserNotFound(NotFound):
    kind, hint = "user", "List them with `mlyard users list` (an admin's command)."


class Unauthenticated(MlyardError, PermissionError):
    http_status = 401  # no credential, or one unknown, expired or revoked (never saying which key ids exist)


class Forbidden(MlyardError, PermissionError):
    """The caller's role in `project` (None: as an admin, or any project's owner) does not allow `action`."""

    http_status = 403

    def __init__(self, user: str, project: str | None, action: str, needed: str, has: str | None):
        self.user, self.project, self.action, self.needed, self.has = user, project, action, needed, has
        where = f"{f'is {has}' if has else 'has no role'} in project {project!r}" if project else f"is no {needed}"
        grant = f" (its owner or an admin: `mlyard projects add-member {project} {user} --role {needed}`)"
        super().__init__(f"{user} {where}; {action} needs {needed}{grant if project else ''}")


class Conflict(MlyardError, RuntimeError):
    """The action would break one of the platform's rules."""

    http_status = 409


class AlreadyExists(Conflict):
    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        super().__init__(f"{kind} {name!r} already exists; choose another name or delete it first.")


class ModelInUse(Conflict):
    def __init__(self, name: str, version: str | None, endpoints: Sequence[str]):
        self.name, self.version, self.endpoints = name, version, list(endpoints)
        what = f"model {name!r}" + (f" version {version}" if version else "")
        super().__init__(f"{what} is served by endpoint(s) {', '.join(self.endpoints)}; delete those endpoints "
                         "(or move their stages to another model) first.")


class InUse(Conflict):
    """A resource others use cannot be deleted; the message names them."""

    def __init__(self, kind: str, name: str, users: Sequence[str], what_to_do: str):
        self.kind, self.name, self.users = kind, name, list(users)
        super().__init__(f"{kind} {name!r} is used by {', '.join(self.users)}; {what_to_do}")


class ExperimentBusy(Conflict):
    def __init__(self, name: str, running: Sequence[str]):
        self.name, self.running = name, list(running)
        super().__init__(f"experiment {name!r} has running work ({', '.join(self.running)}); stop it or wait, then delete")


class TrainingNotComplete(Conflict):
    def __init__(self, training: str, status: str, kind: str = "training"):
        self.training, self.status, self.kind = training, status, kind
        super().__init__(f"{kind} {training!r} is {status}, not COMPLETE; a model comes only from a COMPLETE {kind}.")


class StillRunning(Conflict):
    def __init__(self, kind: str, name: str, status: str, stop_command: str):
        self.kind, self.name, self.status = kind, name, status
        super().__init__(f"{kind} {name!r} is {status}; stop it first (`{stop_command}`), then delete it.")


class Protected(Conflict):
    """A platform rule protects the resource from this action; the message says which and what to do."""


class StorageError(MlyardError, OSError): ...


class StorageUnreachable(StorageError):
    http_status = 502

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"cannot reach {uri}: {reason}. Check the URI, the endpoint and the credentials.")


class StorageNotFound(StorageError):
    http_status = 404

    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(f"{uri} does not exist (nothing is stored there). Check the path.")


class TrainingFailed(MlyardError, RuntimeError):
    def __init__(self, reason: str, exit_code: int | None = None, last_lines: Sequence[str] = ()):
        self.reason, self.exit_code, self.last_lines = reason, exit_code, list(last_lines)
        tail = ("\n" + "\n".join(self.last_lines)) if self.last_lines else ""
        super().__init__(f"{reason}{tail}")


class TrainingStopped(MlyardError, RuntimeError):
    def __init__(self, reason: str = "stopped on request"):
        self.reason = reason
        super().__init__(reason)


class BadRecord(MlyardError, ValueError):
    """An input record that cannot be read or fed to a model; batch inference writes it as an error row."""

    http_status = 400

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class JobFailed(MlyardError, RuntimeError):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class BatchFailed(JobFailed): ...


class ModelCallFailed(BatchFailed):
    """A model in its sandbox (tasks/model_host.py) raised, or its process ended: its batch fails alone."""


class TuningFailed(MlyardError, RuntimeError):
    """Failed trials reached max_failed_trials (or no trial succeeded)."""


class RunFailed(MlyardError, RuntimeError):
    """A run (training, tuning, batch inference, evaluation) ended in its failure status; `cause` is
    the exception that ended it, when there is one."""

    def __init__(self, status: str, run_id: str | None, cause: BaseException | str | None):
        self.status, self.run_id, self.cause = status, run_id, cause
        super().__init__(f"{status}: {cause}")


class StackError(MlyardError, RuntimeError):
    http_status = 503


class LocalStoresInPod(StackError):
    """A process in a Kubernetes pod without the shared stores' URLs: it would write to SQLite inside the
    pod, and the record would vanish with it."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        names = ", ".join(f"MLYARD_{m.upper()}" for m in missing)
        super().__init__(f"this process runs in a Kubernetes pod but {names} {'is' if len(missing) == 1 else 'are'} "
                         "not set: set them (the mlyard-config ConfigMap and the mlyard-settings Secret of infra/k8s) "
                         "rather than fall back to SQLite inside the pod")


class NotConnected(StackError):
    def __init__(self, home: str):
        self.home = home
        super().__init__(f"no mlyard platform is running for {home}: start it with `mlyard up` (its home is the "
                         ".mlyard here or in a parent directory, or MLYARD_HOME), or point MLYARD_PREFECT_API_URL at a "
                         "Prefect server")


class SchemaMismatch(StackError):
    """A database at a schema this release does not run on (older, or newer than it tolerates): both named."""


class SandboxUnavailable(StackError):
    """This machine cannot start a sandbox for user code (no bubblewrap, or no user namespaces for it)."""


class PlatformUnreachable(StackError):
    """The platform's Prefect server did not answer (stopped, restarting): not the same as a run it does
    not have."""

    def __init__(self, api_url: str, cause: str, server: str = "Prefect server"):
        self.api_url, self.cause = api_url, cause
        super().__init__(f"the platform's {server} at {api_url} does not answer ({cause}); on one machine the "
                         "stack's keeper starts it again within seconds: retry, `mlyard status` shows what runs, and "
                         "`mlyard up` starts what is down")


# -- raised by the steps of RAG ingestion and of endpoint changes ----------------------------------

class DocumentError(MlyardError, ValueError):
    """A file that cannot be ingested: the message names it and says why."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


class EmbeddingError(MlyardError, RuntimeError):
    http_status = 502  # the embedding model could not be loaded or run, or an embeddings service failed


class RoutingFailed(MlyardError):
    """The gateway did not take a stage's replicas into routing (STAGE DEPLOY FAIL)."""


class ReplicaFailed(MlyardError):
    """A replica did not become healthy; the message says why (its exit, its log's last lines)."""


class VectorStoreError(MlyardError, ConnectionError):
    http_status = 502  # the vector store cannot be reached or used; the message says which, why (never a password)


# A flow that raises one of these failed as a run (RunFailed, with why); any other MlyardError it raises
# is bad input it found itself, reported as the same one-line error a check before the run gives.
RUN_FAILURES: tuple[type[MlyardError], ...] = (TrainingFailed, JobFailed, TuningFailed, RunFailed, StackError,
                                               ReplicaFailed, RoutingFailed)


class MetricLineError(MlyardError, ValueError):
    http_status = 400  # a line of Katib's JSON metrics format that cannot be read: the collection fails with it


class CronError(MlyardError, ValueError):
    """An expression robfig/cron would refuse: `field` names the part, `value` the bad text."""

    http_status = 400

    def __init__(self, expression: str, reason: str, field: str = "", value: str = "") -> None:
        self.expression, self.reason, self.field, self.value = expression, reason, field, value
        where = f"{field} field {value!r}: " if field else ""
        super().__init__(f"cron expression {expression!r}: {where}{reason}")


class Unreachable(MlyardError):
    http_status = 503  # nothing answers at the warm mlyard API's address: the caller computes (or queues) it


class HttpError(MlyardError):
    """A server's answer other than 200: its status (`HttpError(503, why)`; a subclass's own by default)."""

    def __init__(self, *args: object):
        status, message = args if len(args) == 2 else (type(self).http_status, args[0])
        super().__init__(message)
        self.http_status = int(status)  # type: ignore[call-overload]

    @property
    def status(self) -> int:
        return self.http_status


class BadChat(HttpError):
    """An OpenAI chat or completions request refused: the parameter it names, OpenAI's error code, a 503's wait."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(status, message)
        self.param, self.code, self.retry_after, self.started = param, code, retry_after, False  # started: mid-stream


class BadInput(HttpError):
    http_status = 400  # a body that does not fit an Azure entry script's run() declared inputs


class Unavailable(HttpError):
    """A RAG's LLM is down, slow or failing: the status (502/504) and the reason."""


class BodyTooLarge(HttpError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class ModelTimeout(HttpError):
    http_status = 504  # the model did not answer within the timeout


class NoRoute(HttpError):
    http_status = 404  # no endpoint, stage or model answers this path


class NoReplica(HttpError):
    http_status = 503  # the route exists, but no healthy replica can take the request now (with Retry-After)


class UpstreamError(HttpError):
    """A replica unreachable or broken off. `sent` False: no answer began (refused, or closed before the
    first byte, as a killed replica does), so another may take the request; True: it may be at work on it."""

    def __init__(self, message: str, sent: bool, timeout: bool = False):
        super().__init__(504 if timeout else 502, message)
        self.sent, self.timeout = sent, timeout

"""Launch a training's entry point under the EasyMaker contract (DESIGN §5) and supervise it.

Plain parts: `build_invocation` (argv and `EM_*` env), `requirements_env` (a cached virtual
environment per requirements.txt hash), `Supervisor` (runs the process in its own process group,
streams its lines, enforces the max run time, and kills the whole group when asked to stop).
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mlyard.core.errors import TrainingFailed, TrainingStopped
from mlyard.core.specs import TrainingSpec
from mlyard.tasks.confinement import Confinement, confined
from mlyard.tasks.metrics import Metric, MetricParser, MetricStream, latest
from mlyard.tasks.processes import stop_group

TAIL_LINES = 20


@dataclass
class Workdirs:
    """Local directories a training runs with (all absolute)."""

    source: Path
    model: Path
    checkpoint: Path
    checkpoint_input: Path | None
    tensorboard: Path
    datasets: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def under(cls, scratch: Path, source: Path, datasets: dict[str, Path], checkpoint_input: Path | None) -> "Workdirs":
        dirs = cls(source=source, model=scratch / "model", checkpoint=scratch / "checkpoints",
                   checkpoint_input=checkpoint_input, tensorboard=scratch / "tensorboard", datasets=datasets)
        for d in (dirs.model, dirs.checkpoint, dirs.tensorboard):
            d.mkdir(parents=True, exist_ok=True)
        return dirs


def hp_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node training meet (torchrun's c10d store), and which one hosts it."""

    endpoint: str  # host:port
    run_id: str
    host: bool


# What the platform holds and a user's script never gets (it gets the EasyMaker contract's EM_* and what its
# spec names): Prefect's admin string and database, the gateway's internal and the replicas' tokens, the
# platform's storage keys and databases (the catalog, RAG vectors, MLflow's backend), the kubeconfig.
PLATFORM_CREDENTIALS = frozenset({
    "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_PASSWORD", "PREFECT_API_DATABASE_PASSWORD",
    "MLYARD_INTERNAL_TOKEN", "MLYARD_REPLICA_TOKEN", "MLYARD_S3_ACCESS_KEY_ID", "MLYARD_S3_SECRET_ACCESS_KEY",
    "MLYARD_CATALOG_URL", "MLYARD_VECTOR_STORE_URL", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "KUBECONFIG"})


def script_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the platform's credentials (PLATFORM_CREDENTIALS), for a user's entry point."""
    return {k: v for k, v in env.items() if k.upper() not in PLATFORM_CREDENTIALS}


def build_invocation(spec: TrainingSpec, dirs: Workdirs, python: str, region: str,
                     base_env: Mapping[str, str], rendezvous: Rendezvous | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the entry point, as EasyMaker scripts expect them."""
    args: list[str] = []
    for key, value in spec.hyperparameters.items():
        args += [f"--{key}", hp_value(value)]
    entry = str(dirs.source / spec.entry_point)
    if spec.torchrun:
        launcher = [python, "-m", "torch.distributed.run", f"--nnodes={spec.nodes}",
                    f"--nproc_per_node={spec.processes_per_node}"]
        if spec.nodes == 1:
            launcher.append("--standalone")
        elif rendezvous is not None:  # node processes on this machine (`node_invocations`)
            launcher += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rendezvous.endpoint}",
                         f"--rdzv_id={rendezvous.run_id}", f"--node_rank={base_env['NODE_RANK']}",
                         f"--rdzv_conf=is_host={'true' if rendezvous.host else 'false'}"]
        else:  # rendezvous from the pool's environment (set per pod on Kubernetes)
            launcher += ["--rdzv_backend=c10d",
                         f"--rdzv_endpoint={base_env.get('MASTER_ADDR', 'localhost')}:{base_env.get('MASTER_PORT', '29500')}",
                         f"--node_rank={base_env.get('NODE_RANK', '0')}"]
        argv = launcher + [entry] + args
    else:
        argv = [python, "-u", entry] + args

    env = script_environment(base_env)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "EM_SOURCE_DIR": str(dirs.source),
        "EM_ENTRY_POINT": spec.entry_point,
        "EM_MODEL_DIR": str(dirs.model),
        "EM_CHECKPOINT_DIR": str(dirs.checkpoint),
        "EM_CHECKPOINT_INPUT_DIR": str(dirs.checkpoint_input or ""),
        "EM_TENSORBOARD_LOG_DIR": str(dirs.tensorboard),
        "EM_REGION": region,
        "EM_HPS": json.dumps({k: hp_value(v) for k, v in spec.hyperparameters.items()}),
        "EM_DATASETS": json.dumps({k: str(v) for k, v in dirs.datasets.items()}),
    })
    for key, value in spec.hyperparameters.items():
        env[f"EM_HP_{_env_key(key)}"] = hp_value(value)
    for name, path in dirs.datasets.items():
        env[f"EM_DATASET_{_env_key(name)}"] = str(path)
    return argv, env


def node_invocations(spec: TrainingSpec, dirs: Workdirs, python: str, region: str,
                     base_env: Mapping[str, str]) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, env) of each node. More than one node on this machine: `nodes` node processes that meet
    on 127.0.0.1 as the pods of a cluster meet at node 0, so distributed code can be tried before the
    cluster. Each gets NODE_RANK, NNODES, MASTER_ADDR/MASTER_PORT and TensorFlow's TF_CONFIG (the
    workers' addresses and its own index); with torchrun they meet at its c10d rendezvous (node 0
    hosts its store) and torchrun gives each process RANK, LOCAL_RANK and WORLD_SIZE; without it, RANK
    and WORLD_SIZE count the nodes."""
    if spec.nodes == 1:
        return [build_invocation(spec, dirs, python, region, base_env)]
    import secrets

    rdzv, master, *workers = _free_ports(2 + spec.nodes)
    run_id = secrets.token_hex(8)
    out = []
    for rank in range(spec.nodes):
        env = {**base_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master), "NODE_RANK": str(rank),
               "NNODES": str(spec.nodes), "TF_CONFIG": json.dumps({
                   "cluster": {"worker": [f"127.0.0.1:{port}" for port in workers]},
                   "task": {"type": "worker", "index": rank}})}
        if not spec.torchrun:
            env.update({"RANK": str(rank), "WORLD_SIZE": str(spec.nodes)})
        out.append(build_invocation(spec, dirs, python, region, env,
                                    Rendezvous(f"127.0.0.1:{rdzv}", run_id, host=rank == 0)))
    return out


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (held together while they are picked)."""
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _env_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


# -- supervising the process ------------------------------------------------------------------------

@dataclass
class Outcome:
    exit_code: int
    seconds: float
    tail: list[str]


class Supervisor:
    """Runs argv in a new process group; every output line goes to `on_line`.

    `more` are further commands (argv, env) started in the same group: the other nodes of a
    multi-node training on this machine, whose lines come prefixed with `[node N]`. The run fails when
    any of them fails (the rest are ended), naming it and with its last lines.

    Ends the group (SIGTERM, then SIGKILL after `grace_seconds`) when `should_stop()` returns a
    reason, when `max_run_time_seconds` passes, or when the calling code is interrupted.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path,
                 on_line: Callable[[str], None], should_stop: Callable[[], str | None] = lambda: None,
                 max_run_time_seconds: float | None = None, poll_seconds: float = 0.1,
                 grace_seconds: float = 5.0, more: Sequence[tuple[list[str], Mapping[str, str]]] = ()):
        self.argv, self.env, self.cwd = argv, dict(env), cwd
        self.on_line, self.should_stop = on_line, should_stop
        self.max_run_time_seconds, self.poll_seconds, self.grace_seconds = max_run_time_seconds, poll_seconds, grace_seconds
        self.more = list(more)
        self.tails: list[collections.deque[str]] = [collections.deque(maxlen=TAIL_LINES) for _ in range(1 + len(self.more))]
        self.tail = self.tails[0]
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []

    def run(self) -> Outcome:
        """Run to the end. Raises TrainingStopped or TrainingFailed (max run time, exit code != 0)."""
        start = time.monotonic()
        readers: list[threading.Thread] = []
        failed: int | None = None
        try:
            for n, (argv, env) in enumerate([(self.argv, self.env), *self.more]):
                # its own process group (and session, when alone); the other nodes join the first's group,
                # which a process can do only within its session
                group: dict[str, object] = ({"start_new_session": True} if not self.more else
                                            {"process_group": self.procs[0].pid if n else 0})
                proc = subprocess.Popen(argv, env=dict(env), cwd=self.cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, bufsize=1, text=True,
                                        errors="replace", **group)  # type: ignore[call-overload]
                self.procs.append(proc)
                self.proc = self.procs[0]
                reader = threading.Thread(target=self._read, args=(n, proc), name=f"mlyard-output-{n}", daemon=True)
                reader.start()
                readers.append(reader)
            while failed is None and any(p.poll() is None for p in self.procs):
                elapsed = time.monotonic() - start
                if self.max_run_time_seconds and elapsed > self.max_run_time_seconds:
                    self.kill()
                    self._join(readers, 5)
                    raise TrainingFailed(
                        f"max run time of {self.max_run_time_seconds:g} s passed; the training was ended",
                        None, list(self.tail))
                reason = self.should_stop()
                if reason:
                    self.kill()
                    self._join(readers, 5)
                    raise TrainingStopped(reason)
                failed = next((n for n, p in enumerate(self.procs) if p.poll() not in (None, 0)), None)
                if failed is None:
                    try:
                        self.procs[0].wait(timeout=self.poll_seconds) if self.procs[0].poll() is None \
                            else time.sleep(self.poll_seconds)
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            # Interrupted (SIGTERM from a worker cancelling us, Ctrl-C), one node failed, or done: no
            # child survives us.
            self.kill()
        self._join(readers, 10)
        seconds = time.monotonic() - start
        # the node seen failing first, then any that ended on its own before those the kill above ended
        order = sorted(range(len(self.procs)), key=lambda n: (n != failed, (self.procs[n].returncode or 0) < 0, n))
        for n in order:
            code = self.procs[n].returncode
            if code not in (0, None):
                what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                who = f"node {n} of {len(self.procs)}: " if len(self.procs) > 1 else ""
                raise TrainingFailed(f"the entry point failed ({who}{what})", code, list(self.tails[n]))
        return Outcome(0, seconds, list(self.tail))

    @staticmethod
    def _join(readers: list[threading.Thread], timeout: float) -> None:
        for reader in readers:
            reader.join(timeout=timeout)

    def _read(self, n: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        prefix = f"[node {n}] " if n else ""
        for line in proc.stdout:
            line = prefix + line.rstrip("\n")
            self.tails[n].append(line)
            self.on_line(line)

    def kill(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace period."""
        if self.procs:
            stop_group(self.procs[0], self.grace_seconds)
            for proc in self.procs:  # reap them
                try:
                    proc.wait(timeout=self.grace_seconds)
                except subprocess.TimeoutExpired:
                    pass


# -- one run of the entry point, with its log and metrics -------------------------------------------

@dataclass
class ScriptRun:
    seconds: float
    metrics: dict[str, float]
    seen: list[Metric]


def run_script(spec: TrainingSpec, dirs: Workdirs, python: str, region: str, base_env: Mapping[str, str],
               log_path: Path, metric_sink: Callable[[list[Metric]], None],
               should_stop: Callable[[], str | None] = lambda: None,
               on_line: Callable[[str], None] | None = None,
               echo: Callable[[str], None] | None = None, rendezvous: Rendezvous | None = None,
               named_patterns: Sequence[tuple[str, re.Pattern[str]]] = (),
               confinement: Confinement | None = None) -> ScriptRun:
    """Run the entry point to the end: every line to `log_path`, `echo` and `on_line` (a tuning reads
    its objective there), parsed metrics to `metric_sink` in batches from a background thread. With
    `rendezvous`, this is one node of a multi-node training whose other nodes run elsewhere (a pod of
    tasks/node_jobs.py; `base_env` holds its NODE_RANK); without, every node runs here. `named_patterns`
    read more metrics by name (a tuning's `metrics[].regex`). A metric line of Katib's JSON format that
    cannot be read fails the script (TrainingFailed), as it fails Katib's collection. With `confinement`,
    the script runs in its sandbox (tasks/confinement.py)."""
    if rendezvous is not None:
        invocations = [build_invocation(spec, dirs, python, region, base_env, rendezvous)]
    else:
        invocations = node_invocations(spec, dirs, python, region, base_env)
    notices: list[str] = []
    if confinement is not None:
        invocations, notices = confined(invocations, dirs, python, confinement)
    (argv, env), *more = invocations
    parser = MetricParser([*spec.metric_patterns, *named_patterns], json_format=spec.metrics_format == "json")

    def stop_reason() -> str | None:
        return f"metrics collection failed: {parser.error}" if parser.error else should_stop()

    lock = threading.Lock()
    with open(log_path, "a", buffering=1) as log_file, MetricStream(metric_sink) as stream:

        def handle(line: str) -> None:
            with lock:
                log_file.write(line + "\n")
                stream.put(parser.parse(line))
                if on_line is not None:
                    on_line(line)
                if echo is not None:
                    echo(line)

        for notice in notices:
            handle(notice)
        try:
            outcome = Supervisor(argv, env, dirs.source, handle, should_stop=stop_reason,
                                 max_run_time_seconds=spec.max_run_time_seconds, more=more).run()
        except TrainingStopped as stopped:
            if parser.error:
                raise TrainingFailed(stopped.reason) from None
            raise
        if parser.error:
            raise TrainingFailed(f"metrics collection failed: {parser.error}")
    return ScriptRun(outcome.seconds, latest(stream.seen), list(stream.seen))

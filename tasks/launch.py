"""Launch a training's entry point under the EasyMaker contract (DESIGN §5) and supervise it.

Plain parts: `build_invocation` (argv and `EM_*` env), `requirements_env` (a cached virtual
environment per requirements.txt hash), `Supervisor` (runs the process in its own process group,
streams its lines, enforces the max run time, and kills the whole group when asked to stop).
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import shutil
import site
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from core.errors import TrainingFailed, TrainingStopped
from core.specs import TrainingSpec
from tasks.metrics import Metric, MetricParser, MetricStream, latest
from tasks.processes import stop_group

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


def build_invocation(spec: TrainingSpec, dirs: Workdirs, python: str, region: str,
                     base_env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
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
        else:  # rendezvous from the pool's environment (set per pod on Kubernetes)
            launcher += ["--rdzv_backend=c10d",
                         f"--rdzv_endpoint={base_env.get('MASTER_ADDR', 'localhost')}:{base_env.get('MASTER_PORT', '29500')}",
                         f"--node_rank={base_env.get('NODE_RANK', '0')}"]
        argv = launcher + [entry] + args
    else:
        argv = [python, "-u", entry] + args

    env = dict(base_env)
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


def _env_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


# -- requirements -----------------------------------------------------------------------------------

def requirements_env(source: Path, envs_dir: Path, log: Callable[[str], None] = print) -> str:
    """The Python to run `source`'s entry point with.

    Without a requirements.txt that is the platform's own interpreter. With one, it is a virtual
    environment that sees the platform's packages (through a .pth file, behind its own) but
    installs into its own directory, cached by the hash of requirements.txt: a second training
    reuses it.
    """
    req = source / "requirements.txt"
    if not req.is_file() or not req.read_text().strip():
        return sys.executable
    digest = hashlib.sha256(req.read_bytes() + sys.version.encode()).hexdigest()[:16]
    target = envs_dir / digest
    python = target / "bin" / "python"
    ready = target / ".ready"
    envs_dir.mkdir(parents=True, exist_ok=True)
    with open(envs_dir / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel trials share one build
        if ready.exists():
            log(f"requirements.txt: reusing environment {target}")
            return str(python)
        shutil.rmtree(target, ignore_errors=True)  # a half-built environment from a crash
        log(f"requirements.txt: building environment {target}")
        try:
            _run_checked([sys.executable, "-m", "venv", "--without-pip", str(target)])
            # The platform's own packages stay visible, behind the environment's own (a .pth is read last).
            own = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
            (own / "mlyard-platform.pth").write_text("\n".join(site.getsitepackages()) + "\n")
            out = _run_checked([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--disable-pip-version-check", "--no-input", "-r", str(req)], cwd=source)
        except TrainingFailed:
            shutil.rmtree(target, ignore_errors=True)
            raise
        for line in out.splitlines()[-3:]:
            log(line)
        ready.write_text(req.read_text())
    return str(python)


def _run_checked(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()[-TAIL_LINES:]
        raise TrainingFailed(f"installing requirements.txt failed (exit code {proc.returncode})",
                             proc.returncode, lines)
    return proc.stdout


# -- supervising the process ------------------------------------------------------------------------

@dataclass
class Outcome:
    exit_code: int
    seconds: float
    tail: list[str]


class Supervisor:
    """Runs argv in a new process group; every output line goes to `on_line`.

    Ends the group (SIGTERM, then SIGKILL after `grace_seconds`) when `should_stop()` returns a
    reason, when `max_run_time_seconds` passes, or when the calling code is interrupted.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path,
                 on_line: Callable[[str], None], should_stop: Callable[[], str | None] = lambda: None,
                 max_run_time_seconds: float | None = None, poll_seconds: float = 0.1,
                 grace_seconds: float = 5.0):
        self.argv, self.env, self.cwd = argv, dict(env), cwd
        self.on_line, self.should_stop = on_line, should_stop
        self.max_run_time_seconds, self.poll_seconds, self.grace_seconds = max_run_time_seconds, poll_seconds, grace_seconds
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.proc: subprocess.Popen | None = None

    def run(self) -> Outcome:
        """Run to the end. Raises TrainingStopped or TrainingFailed (max run time, exit code != 0)."""
        start = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, bufsize=1, text=True, errors="replace",
        )
        reader = threading.Thread(target=self._read, name="mlyard-output", daemon=True)
        reader.start()
        try:
            while self.proc.poll() is None:
                elapsed = time.monotonic() - start
                if self.max_run_time_seconds and elapsed > self.max_run_time_seconds:
                    self.kill()
                    reader.join(timeout=5)
                    raise TrainingFailed(
                        f"max run time of {self.max_run_time_seconds:g} s passed; the training was ended",
                        None, list(self.tail))
                reason = self.should_stop()
                if reason:
                    self.kill()
                    reader.join(timeout=5)
                    raise TrainingStopped(reason)
                try:
                    self.proc.wait(timeout=self.poll_seconds)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Interrupted (SIGTERM from a worker cancelling us, Ctrl-C) or done: no child survives us.
            self.kill()
        reader.join(timeout=10)
        seconds = time.monotonic() - start
        code = self.proc.returncode
        if code != 0:
            what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise TrainingFailed(f"the entry point failed ({what})", code, list(self.tail))
        return Outcome(code, seconds, list(self.tail))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            self.on_line(line)

    def kill(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace period."""
        if self.proc is not None:
            stop_group(self.proc, self.grace_seconds)


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
               echo: Callable[[str], None] | None = None) -> ScriptRun:
    """Run the entry point to the end: every line to `log_path`, `echo` and `on_line` (a tuning reads
    its objective there), parsed metrics to `metric_sink` in batches from a background thread."""
    argv, env = build_invocation(spec, dirs, python, region, base_env)
    parser = MetricParser(spec.metric_patterns)
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

        outcome = Supervisor(argv, env, dirs.source, handle, should_stop=should_stop,
                             max_run_time_seconds=spec.max_run_time_seconds).run()
    return ScriptRun(outcome.seconds, latest(stream.seen), list(stream.seen))

"""What the platform learns of a user's model by loading it, learnt in a sandbox: a model's files are code (a
pickle runs what it names as it loads), so registration's two looks into a new version (the signature read
off a scikit-learn estimator, and its compiled form, tasks/compiled.py) run in a process of their own that
sees the model's files, the platform's code and a fresh folder, and nothing else (tasks/sandbox.py).

Its answer is taken as data: the signature and the runtime it reports are the version's own tags; of what it
compiled, only the entry under the key the platform computes from the model's files itself is moved into the
cache (a model cannot plant a compiled entry for another model's files), links and other oddities removed.

    python -m mlyard.tasks.examine MODEL_DIR   (in the sandbox: prints one JSON line, {"signature", "runtime"})
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TIMEOUT = 600.0  # seconds: a compile takes a few; a model that loads for longer is not prepared
ANSWER = "mlyard-examined "


class Examiner:
    """The registry's `infer_signature` and `prepare` (registry/models.py), both answered by one sandboxed
    look into the model (`mode`: Settings.sandbox; `compile`: Settings.compile_at_registration)."""

    def __init__(self, mode: str, compile: bool):
        self.mode, self.compile = mode, compile
        self._last: tuple[str, dict[str, Any]] | None = None

    def signature(self, model_dir: Path) -> dict[str, Any] | None:
        return self._look(model_dir, keep=True).get("signature")

    def prepare(self, model_dir: Path) -> str | None:
        return self._look(model_dir, keep=False).get("runtime")

    def _look(self, model_dir: Path, keep: bool) -> dict[str, Any]:
        where = os.path.realpath(model_dir)
        if self._last is not None and self._last[0] == where:
            found = self._last[1]
        else:
            found = examine(Path(where), self.mode, self.compile)
        self._last = (where, found) if keep else None
        return found


def examine(model_dir: Path, mode: str, compile: bool) -> dict[str, Any]:
    """{"signature", "runtime"} of the model in `model_dir`, learnt in a sandbox where one can start (in this
    process where Settings.sandbox is off or none can start and it is not required)."""
    from mlyard.core.errors import SandboxUnavailable
    from mlyard.tasks import sandbox
    from mlyard.tasks.launch import script_environment

    try:
        walled, _ = sandbox.chosen(mode, "the model's examination")
    except SandboxUnavailable as exc:
        return {"runtime": f"not prepared: {exc}"}
    if not walled:
        return _here(model_dir, compile)
    expected = _compiled_key(model_dir) if compile else None
    with tempfile.TemporaryDirectory(prefix="mlyard-examine-") as tmp:
        out = Path(tmp)
        walls = sandbox.around_platform([str(out)], network=False, chdir=str(out), read=[str(model_dir)])
        env = {**sandbox.child_env(script_environment(os.environ), walls), "MLYARD_CACHE_DIR": str(out / "cache"),
               "MLYARD_COMPILE_AT_REGISTRATION": "true" if compile else "false"}
        argv = sandbox.wrap([sys.executable, "-m", "mlyard.tasks.examine", str(model_dir)], walls)
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return {"runtime": f"not prepared: loading the model took over {TIMEOUT:.0f} s"}
        said = [line for line in done.stdout.splitlines() if line.startswith(ANSWER)]
        if done.returncode != 0 or not said:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            return {"runtime": f"not prepared: {last[:300]}"}
        try:
            found = json.loads(said[-1].removeprefix(ANSWER))
        except ValueError:
            return {"runtime": "not prepared: its examination answered no JSON"}
        if expected is not None:
            _take_compiled(out / "cache" / "compiled", expected)
    signature, runtime = found.get("signature"), found.get("runtime")
    return {"signature": signature if isinstance(signature, dict) else None,
            "runtime": runtime[:500] if isinstance(runtime, str) else None}


def _here(model_dir: Path, compile: bool) -> dict[str, Any]:
    from mlyard.tasks.models import estimator_signature, prepare_for_serving

    runtime = None
    if compile:
        try:
            runtime = prepare_for_serving(model_dir)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be prepared is still registered
            runtime = f"not prepared: {type(exc).__name__}: {exc}"[:500]
    return {"signature": estimator_signature(model_dir), "runtime": runtime}


def _compiled_key(model_dir: Path) -> str | None:
    """The cache key of the scikit-learn model in `model_dir` (its files hashed here, nothing loaded)."""
    from mlyard.tasks import compiled

    source = compiled.sklearn_source(model_dir)
    return compiled.key(source) if source is not None else None


def _take_compiled(made: Path, key: str) -> None:
    """The compiled (or refused) entry `key` the examination left under `made`, into the cache, as data."""
    from mlyard.tasks import compiled
    from mlyard.tasks.sandbox import as_data

    root = compiled.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    entry, refused = made / key, made / f"{key}.refused"
    if entry.is_dir() and not entry.is_symlink() and (entry / "compiled.json").is_file():
        as_data(entry)
        if not (root / key).exists():
            tmp = root / f".{key}.{os.getpid()}.tmp"
            shutil.copytree(entry, tmp, symlinks=True)
            try:
                os.replace(tmp, root / key)
            except OSError:  # another registration of the same files got there first
                shutil.rmtree(tmp, ignore_errors=True)
    elif refused.is_file() and not refused.is_symlink():
        (root / f"{key}.refused").write_text(refused.read_text(errors="replace")[:2000])


def main() -> None:
    from mlyard.core.settings import Settings

    found = _here(Path(sys.argv[1]), Settings().compile_at_registration)
    print(ANSWER + json.dumps(found, default=str), flush=True)


if __name__ == "__main__":
    main()

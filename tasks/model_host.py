"""A user's model, loaded and called in a sandbox of its own, for the platform's processes that score with it
(batch inference's workers, evaluations): a model is code (a pickle runs what it names as it loads, a
pyfunc's `predict` is the user's), and those processes hold the run's storage and the platform's view.

`load(path, mode)` gives a `Hosted` model, with tasks/models.py's Model's face (`predict(x, with_proba)`,
`has_proba`, `classes`, `runtime`), whose model lives in `python -m mlyard.tasks.model_host PATH` started in a
sandbox (tasks/sandbox.py) that reads the model's files and the platform's code, writes a folder of its own
(its /tmp, its cache, into which the model's compiled entry is copied) and has no network. They speak
length-prefixed JSON over its stdin and stdout: rows in (an array, or a DataFrame split into columns),
predictions and probabilities out. What comes back is parsed as JSON alone and bounded in size. Where
Settings.sandbox is off, or no sandbox can start here and it is not required, the model loads in this
process, as before (tasks/models.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

from mlyard.core.errors import ModelCallFailed, SandboxUnavailable, SpecError

MAX_FRAME = 512 * 1024 * 1024  # bytes of one answer: more is not a model's answer
HEADER = struct.Struct(">Q")


def load(path: Path, mode: str, compile: bool = True) -> Any:
    """The model in `path`, hosted in a sandbox (Settings.sandbox `mode`), else loaded here."""
    from mlyard.tasks import sandbox
    from mlyard.tasks.models import Model

    try:
        walled, notice = sandbox.chosen(mode, "the model")
    except SandboxUnavailable as exc:
        raise SpecError("model", str(path), str(exc)) from None
    if notice:  # no sandbox here (a pod, where the pod is one): said once per load, in the run's log
        logging.getLogger("mlyard.model").warning(notice)
    return Hosted(Path(path), compile) if walled else Model(str(path), compile)


def close(model: Any) -> None:
    """End a hosted model's process (a model loaded here has none): when the work that used it ends."""
    if isinstance(model, Hosted):
        model.close()


def unstick(model: Any) -> None:
    """After a call that timed out: a hosted model gets a fresh process (one loaded here cannot be stopped;
    its call goes on in its own thread)."""
    if isinstance(model, Hosted):
        model.restart()


class Hosted:
    """A model loaded in its sandbox; `close()` ends it (so does this process's death: it dies with us)."""

    def __init__(self, path: Path, compile: bool = True):

        self.uri = str(path)
        self._path, self._compile = Path(path), compile
        self._own = Path(tempfile.mkdtemp(prefix="mlyard-model-"))
        (self._own / "cache" / "compiled").mkdir(parents=True)
        _copy_compiled(Path(path), self._own / "cache" / "compiled")
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        from mlyard.tasks import sandbox
        from mlyard.tasks.launch import script_environment

        walls = sandbox.around_platform([str(self._own)], network=False, chdir=str(self._own),
                                        read=[str(self._path)])
        env = {**sandbox.child_env(script_environment(os.environ), walls),
               "MLYARD_CACHE_DIR": str(self._own / "cache")}
        argv = sandbox.wrap([sys.executable, "-m", "mlyard.tasks.model_host", str(self._path), "1" if self._compile else "0"],
                            walls)
        self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self._proc,), daemon=True, name="mlyard-model-stderr").start()
        try:
            hello = self._read()
        except ModelCallFailed as exc:
            self.close()
            raise SpecError("model", str(self._path), f"an MLflow model that loads ({exc})"[:600]) from None
        if "error" in hello:
            self.close()
            raise SpecError("model", str(self._path), f"an MLflow model that loads ({hello['error']})"[:600])
        self.runtime = str(hello.get("runtime") or "python_function")
        classes = hello.get("classes")
        self.classes: list[str] | None = [str(c) for c in classes] if isinstance(classes, list) else None
        self.has_proba = bool(hello.get("has_proba")) and self.classes is not None

    def restart(self) -> None:
        """A fresh process for a model stuck in a call (a timeout): the stuck call ends with the old one."""
        self._proc.kill()  # the stuck call's read ends, and it lets go of the lock
        with self._lock:
            self._proc.wait()
            self._start()

    def predict(self, x: Any, with_proba: bool) -> tuple[list, Any]:
        import numpy as np

        with self._lock:
            self._write({"x": _rows(x), "proba": with_proba})
            answer = self._read()
        if "error" in answer:
            raise ModelCallFailed(str(answer["error"])[:2000])
        predictions, proba = answer.get("predictions"), answer.get("proba")
        if not isinstance(predictions, list):
            raise ModelCallFailed("the model's process answered no predictions")
        return predictions, (np.asarray(proba, dtype=float) if proba is not None else None)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        shutil.rmtree(self._own, ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass

    def _write(self, message: dict) -> None:
        data = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(HEADER.pack(len(data)) + data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ModelCallFailed(self._ended()) from None

    def _read(self) -> dict:
        assert self._proc.stdout is not None
        head = self._proc.stdout.read(HEADER.size)
        if len(head) < HEADER.size:
            raise ModelCallFailed(self._ended())
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            self._proc.kill()
            raise ModelCallFailed(f"the model's process answered {size} bytes (at most {MAX_FRAME})")
        data = self._proc.stdout.read(size)
        try:
            found = orjson.loads(data)
        except orjson.JSONDecodeError:
            found = None
        if not isinstance(found, dict):
            self._proc.kill()
            raise ModelCallFailed("the model's process answered something other than a JSON object")
        return found

    def _ended(self) -> str:
        code = self._proc.wait(timeout=10)
        last = [line for line in self._stderr if line.strip()][-3:]
        return f"the model's process ended (exit code {code})" + (": " + " | ".join(last) if last else "")

    def _drain(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip()[:500])
            del self._stderr[:-20]


def _rows(x: Any) -> dict:
    """Rows as JSON: an array (its values and dtype) or a DataFrame (its columns and values)."""
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        return {"columns": [str(c) for c in x.columns], "data": x.to_numpy().tolist()}
    import numpy as np

    array = np.asarray(x)
    return {"array": array.tolist(), "dtype": array.dtype.str if array.dtype.kind in "biuf" else None}


def _unrows(given: dict) -> Any:
    import numpy as np

    if "columns" in given:
        import pandas as pd

        return pd.DataFrame(given["data"], columns=given["columns"])
    return np.asarray(given["array"], dtype=given.get("dtype"))


def _copy_compiled(path: Path, into: Path) -> None:
    """The model's compiled (or refused) entry, when the cache has one, copied where its process looks."""
    from mlyard.tasks import compiled

    found = compiled.entry(path)
    if found is not None and found.is_dir():
        shutil.copytree(found, into / found.name, symlinks=True)
    elif found is not None:
        shutil.copy(found, into)


def main() -> None:
    """The sandbox's side: load the model, say what it is, then answer each call until stdin ends."""
    import numpy as np

    # the answers go out on a descriptor of their own; what the model prints, from Python or from C (to
    # descriptor 1), goes to the log, never into the answers
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        data = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str)
        out.write(HEADER.pack(len(data)) + data)
        out.flush()

    from mlyard.tasks.models import Model

    try:
        model = Model(sys.argv[1], compile=sys.argv[2] == "1")
    except Exception as exc:  # noqa: BLE001 - the model's own files or code: said to the platform
        send({"error": f"{type(exc).__name__}: {exc}"[:2000]})
        return
    send({"runtime": model.runtime, "classes": model.classes, "has_proba": model.has_proba})
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        (size,) = HEADER.unpack(head)
        call = orjson.loads(stdin.read(size))
        try:
            predictions, proba = model.predict(_unrows(call["x"]), bool(call["proba"]))
            send({"predictions": predictions, "proba": np.asarray(proba).tolist() if proba is not None else None})
        except Exception as exc:  # noqa: BLE001 - the model raised: this batch fails, the next is tried
            send({"error": f"{type(exc).__name__}: {exc}"[:2000]})


if __name__ == "__main__":
    main()

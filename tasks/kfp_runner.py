"""`python -m mlyard.tasks.kfp_runner RUN_DIR`: run a pipeline with `kfp.local`'s subprocess runner, in its
own process (the pipeline-run flow supervises it and ends its whole process group to stop it).

RUN_DIR holds `pipeline.yaml` (prepared by mlyard.tasks.kfp.for_local) and `arguments.json`; outputs and
artifacts go to RUN_DIR/outputs, as kfp.local lays them out (one folder per task, loop iterations
in `for-loop-N-iteration-I`). Each task's state is kept in RUN_DIR/nodes.json as it changes, from
kfp.local's own log records: {task: {"state": ..., "runs": n, "failed": n}}. When kfp.local returns,
RUN_DIR/result.json holds the outcome from what it returned: {"status": SUCCEEDED | FAILED, "reason":
..., "outputs": the pipeline's output values}, and every task's state is settled by it (no task is
left RUNNING, a step that failed and then succeeded on a retry is SUCCEEDED). Exit code 0 when the
pipeline succeeded, 1 when it failed.

Why not only the log lines: kfp.local runs a pipeline whose one task is named like the pipeline as a
single component and never logs the pipeline's end, and a loop's iterations share their task's name.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

_TASK = re.compile(r"^(Executing task|Task) '([^']+)'(?: finished with status (\w+))?")
_PIPELINE = re.compile(r"^Pipeline '([^']+)' finished with status (\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::\s.*)?$")


class Tail:
    """sys.stdout, remembering its last lines: kfp.local prints each step's output there, and a step
    that failed is known by its exception's last line."""

    def __init__(self, out: Any, keep: int = 200):
        self.out, self.lines, self.partial = out, collections.deque(maxlen=keep), ""

    def write(self, text: str) -> int:
        *done, self.partial = (self.partial + text).split("\n")
        self.lines.extend(line.strip() for line in done)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)

    def last_exception(self) -> str | None:
        return next((line for line in reversed(self.lines) if _EXCEPTION.match(line)), None)


class Nodes(logging.Filter):
    """Task states from kfp.local's log records, written to nodes.json on every change. A filter on
    the root logger (kfp.local replaces the root logger's handlers while it runs; it logs there)."""

    def __init__(self, path: Path, tail: Tail | None = None):
        super().__init__()
        self.path, self.pipeline_status, self.lock, self.tail = path, None, threading.Lock(), tail
        self.nodes: dict[str, dict] = {}
        self.succeeded: dict[str, int] = {}  # runs of each task that ended SUCCESS
        self.last: dict[str, str] = {}  # each task's last finished status

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            with self.lock:  # loop iterations run in threads
                self._see(record)
        except Exception:  # noqa: BLE001 - bookkeeping must never fail the pipeline
            pass
        return True

    def _see(self, record: logging.LogRecord) -> None:
        text = _ANSI.sub("", record.getMessage()).strip()
        m = _TASK.match(text)
        if m:
            name = m.group(2)
            node = self.nodes.setdefault(name, {"state": "RUNNING", "runs": 0, "failed": 0})
            if m.group(1) == "Executing task":
                node["state"] = "RUNNING"
                node["runs"] += 1
            elif m.group(3):
                ok = m.group(3) == "SUCCESS"
                node["failed"] += 0 if ok else 1
                self.succeeded[name] = self.succeeded.get(name, 0) + (1 if ok else 0)
                self.last[name] = m.group(3)
                node["state"] = "SUCCEEDED" if ok else "FAILED"
                error = None if ok or self.tail is None else self.tail.last_exception()
                if error:
                    node["error"] = error[:500]
                elif ok:
                    node.pop("error", None)  # a retry that passed
            self._write()
            return
        m = _PIPELINE.match(text)
        if m:
            self.pipeline_status = m.group(2)

    def outcome(self) -> bool:
        """Whether the pipeline succeeded: its end as kfp.local logged it, or, run as a single component
        (no such line), whether every task that ran ended SUCCESS."""
        if self.pipeline_status is not None:
            return self.pipeline_status == "SUCCESS"
        return bool(self.last) and all(status == "SUCCESS" for status in self.last.values()) \
            and len(self.last) == len(self.nodes)

    def settle(self, succeeded: bool) -> None:
        """Every task's final state once the pipeline ended. A succeeded pipeline: a task that ran is
        SUCCEEDED (a retry that passed, a loop iteration whose end was never logged), unless none of its
        runs did (a failure the pipeline ignores). A failed one: a task with a failed run is FAILED, one
        still marked RUNNING never finished."""
        with self.lock:
            for name, node in self.nodes.items():
                if succeeded:
                    node["state"] = "FAILED" if node["failed"] and not self.succeeded.get(name) else "SUCCEEDED"
                elif node["failed"]:
                    node["state"] = "FAILED"
                elif node["state"] == "RUNNING":
                    node["state"] = "NOT FINISHED"
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.nodes))
        os.replace(tmp, self.path)


def plain(value: Any) -> Any:
    """A pipeline output as JSON: parameters as they are, artifacts as their URI, name and metadata."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "uri"):
        return {"artifact": type(value).__name__, "name": getattr(value, "name", None), "uri": value.uri,
                "metadata": plain(getattr(value, "metadata", {}) or {})}
    return str(value)


def main(run_dir: str) -> int:
    from kfp import local
    from kfp.components import load_component_from_text

    from mlyard.core.environment import search_path

    root = Path(run_dir)
    tail = Tail(sys.stdout)
    sys.stdout = tail  # type: ignore[assignment]
    nodes = Nodes(root / "nodes.json", tail)
    logging.getLogger().addFilter(nodes)
    # kfp.local's components call `python3`: this interpreter, where kfp and the packages are
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{search_path()}"
    # the workspace in the run's own folder, kept and removed with its outputs (kfp's default is a new
    # /tmp/kfp-workspace-* per run, never removed)
    (root / "workspace").mkdir(exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "outputs"),
               workspace_root=str(root / "workspace"), raise_on_error=False)
    pipeline = load_component_from_text((root / "pipeline.yaml").read_text())
    arguments = json.loads((root / "arguments.json").read_text())
    reason, outputs = None, {}
    try:
        task = pipeline(**arguments)
        outputs = {name: plain(value) for name, value in (task.outputs or {}).items()}
    except Exception as exc:  # noqa: BLE001 - kfp.local refusing a step (a missing input, ...): the reason
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mlyard: the pipeline stopped: {reason}", flush=True)
    succeeded = reason is None and nodes.outcome()
    nodes.settle(succeeded)
    if not succeeded and reason is None:
        failed = [n for n, s in nodes.nodes.items() if s["state"] == "FAILED"]
        errors = [f"{n}: {nodes.nodes[n]['error']}" for n in failed if nodes.nodes[n].get("error")]
        reason = (f"step(s) {', '.join(failed)} failed" + (f" ({'; '.join(errors)})" if errors else "")) if failed \
            else "kfp.local reported a failure"
    result = {"status": "SUCCEEDED" if succeeded else "FAILED", "reason": reason, "outputs": outputs if succeeded else {}}
    tmp = root / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, root / "result.json")
    print(f"mlyard: pipeline finished: {result['status']}" + (f" ({reason})" if reason else ""), flush=True)
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

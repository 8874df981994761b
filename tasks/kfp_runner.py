"""`python -m tasks.kfp_runner RUN_DIR`: run a pipeline with `kfp.local`'s subprocess runner, in its
own process (the pipeline-run flow supervises it and ends its whole process group to stop it).

RUN_DIR holds `pipeline.yaml` (prepared by tasks.kfp.for_local) and `arguments.json`; outputs and
artifacts go to RUN_DIR/outputs, as kfp.local lays them out (one folder per task, loop iterations
in `for-loop-N-iteration-I`). Each task's state, read from kfp.local's own log records, is kept in
RUN_DIR/nodes.json as it changes: {task: {"state": ..., "runs": n, "failed": n}}. Exit code 0 when the
pipeline succeeded, 1 when it failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

_TASK = re.compile(r"^(Executing task|Task) '([^']+)'(?: finished with status (\w+))?")
_PIPELINE = re.compile(r"^Pipeline '([^']+)' finished with status (\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Nodes(logging.Filter):
    """Task states from kfp.local's log records, written to nodes.json on every change. A filter on
    the root logger (kfp.local replaces the root logger's handlers while it runs; it logs there)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.pipeline_status, self.lock = path, None, threading.Lock()
        self.nodes: dict[str, dict] = {}

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
                node["state"] = "FAILED" if node["failed"] else "SUCCEEDED"
            self._write()
            return
        m = _PIPELINE.match(text)
        if m:
            self.pipeline_status = m.group(2)

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.nodes))
        os.replace(tmp, self.path)


def main(run_dir: str) -> int:
    from kfp import local
    from kfp.components import load_component_from_text

    root = Path(run_dir)
    nodes = Nodes(root / "nodes.json")
    logging.getLogger().addFilter(nodes)
    # kfp.local's components call `python3`: this interpreter, where kfp and the packages are
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "outputs"),
               raise_on_error=False)
    pipeline = load_component_from_text((root / "pipeline.yaml").read_text())
    arguments = json.loads((root / "arguments.json").read_text())
    pipeline(**arguments)
    print(f"mlyard: pipeline finished with status {nodes.pipeline_status}", flush=True)
    return 0 if nodes.pipeline_status == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""A fake of the Kubeflow Pipelines REST API (v2beta1), for kfp.Client to talk to over real HTTP on
127.0.0.1: no Kubeflow Pipelines server can run here (it needs a Kubernetes cluster and Argo).

It serves what a client submitting and following a run calls: healthz, experiments (list by filter,
create), runs (create, get, terminate). A submitted run is checked as the server would check it (a
pipeline spec with a name and a root DAG, parameters the root takes), then moves PENDING -> RUNNING ->
its end (SUCCEEDED, or FAILED when a parameter `fail` is true) over the following reads, with one
task detail per root task. Terminate moves it to CANCELING, then CANCELED.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

BASE = "/apis/v2beta1"


class KfpRestFake:
    def __init__(self, reads_to_finish: int = 3) -> None:
        self.reads_to_finish = reads_to_finish
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self) -> None:
                url = urlparse(self.path)
                with fake.lock:
                    fake.calls.append(("GET", url.path))
                    code, body = fake.get(url.path, parse_qs(url.query))
                self._send(code, body)

            def do_POST(self) -> None:
                url = urlparse(self.path)
                body = self._body()
                with fake.lock:
                    fake.calls.append(("POST", url.path))
                    code, out = fake.post(url.path, body)
                self._send(code, out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------------------------------

    @staticmethod
    def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
        return code, {"code": {400: 3, 404: 5}.get(code, 2), "message": message}

    def get(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if path == f"{BASE}/healthz":
            return 200, {"multi_user": False}
        if path == f"{BASE}/experiments":
            wanted = None
            if query.get("filter"):
                preds = json.loads(query["filter"][0]).get("predicates", [])
                wanted = next((p.get("stringValue") or p.get("string_value") for p in preds
                               if p.get("key") == "display_name"), None)
            found = [e for e in self.experiments.values() if wanted is None or e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        m = re.fullmatch(rf"{BASE}/runs/([^/:]+)", path)
        if m:
            run = self.runs.get(m.group(1))
            if run is None:
                return self._error(404, f"run {m.group(1)} not found")
            self._advance(run)
            return 200, run
        return self._error(404, f"no route {path}")

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == f"{BASE}/experiments":
            if not body.get("display_name"):
                return self._error(400, "experiment display_name is empty")
            exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                   "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if path == f"{BASE}/runs":
            return self._create_run(body)
        m = re.fullmatch(rf"{BASE}/runs/([^/:]+):terminate", path)
        if m:
            run = self.runs.get(m.group(1))
            if run is None:
                return self._error(404, f"run {m.group(1)} not found")
            if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
                run["state"] = "CANCELING"
            return 200, {}
        return self._error(404, f"no route {path}")

    def _create_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        spec = body.get("pipeline_spec")
        if not isinstance(spec, dict) or not spec.get("pipelineInfo", {}).get("name") or "dag" not in spec.get("root", {}):
            return self._error(400, "pipeline_spec: a pipeline spec with pipelineInfo.name and root.dag is required")
        if body.get("experiment_id") not in self.experiments:
            return self._error(404, f"experiment {body.get('experiment_id')} not found")
        inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        params = (body.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(params) - set(inputs))
        if unknown:
            return self._error(400, f"runtime_config.parameters: {unknown} are not inputs of the pipeline")
        run_id = str(uuid.uuid4())
        run = {"run_id": run_id, "experiment_id": body["experiment_id"], "display_name": body.get("display_name"),
               "pipeline_spec": spec, "runtime_config": {"parameters": params}, "state": "PENDING",
               "storage_state": "AVAILABLE", "run_details": {"task_details": []}}
        self.runs[run_id] = run
        self.reads[run_id] = 0
        return 200, run

    def _advance(self, run: dict[str, Any]) -> None:
        """Each read moves the run on: RUNNING, then its end after `reads_to_finish` reads."""
        self.reads[run["run_id"]] += 1
        n = self.reads[run["run_id"]]
        tasks = list(run["pipeline_spec"]["root"]["dag"].get("tasks", {}))
        if run["state"] == "CANCELING":
            run["state"] = "CANCELED"
            status = "CANCELED"
        elif run["state"] in ("SUCCEEDED", "FAILED", "CANCELED"):
            return
        elif n < self.reads_to_finish:
            run["state"] = status = "RUNNING"
        else:
            failing = bool(run["runtime_config"]["parameters"].get("fail"))
            run["state"] = "FAILED" if failing else "SUCCEEDED"
            status = run["state"]
        details = [{"run_id": run["run_id"], "task_id": "root-driver-1", "display_name": "root-driver",
                    "state": "SUCCEEDED"}]
        for i, name in enumerate(tasks):
            state = status
            if status == "FAILED":
                state = "FAILED" if i == len(tasks) - 1 else "SUCCEEDED"
            details.append({"run_id": run["run_id"], "task_id": f"task-{i}", "display_name": name, "state": state})
        run["run_details"] = {"task_details": details}

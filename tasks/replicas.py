"""Local replicas of endpoint stages: the files through which the endpoint flows, the replica
supervisor and the gateway meet (the local runtime of the "where work runs" seam).

    <home>/endpoints/replicas/wanted/<key>.json   what should run (written by the flows)
    <home>/endpoints/replicas/state/<key>.json    what runs (written by the supervisor: pid, port,
                                                 restarts, last exit)
    <home>/endpoints/replicas/logs/<key>.log     each replica's output

A replica's key is `<endpoint>.<stage>.<resource id>.<index>`. The supervisor (serving/replicas.py,
started by `mlyard up`) starts what is wanted, restarts what exits (with backoff) and stops what is no
longer wanted. The gateway routes to the replicas whose wanted file says `routed`. Every file is
written whole under a temporary name and renamed, so no reader sees half of one.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlyard.core.errors import ReplicaFailed

CODE_KIND = "serving_kind"  # the parameter of a version pushed by `endpoints deploy --sync`: its kind
HEALTH_PATHS = {"entry-script": "/", "model-folder": "/mlyard/health"}


def health_path(kind: str | None) -> str:
    """Where a replica of a version of this kind says it is ready (the OIP route for models)."""
    return HEALTH_PATHS.get(kind or "", "/v2/health/ready")


@dataclass
class Wanted:
    key: str
    endpoint: str
    stage: str
    resource_id: int
    index: int
    model: str  # the serving name, the first part of the replica's routes
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    routed: bool = False
    health_path: str | None = "/v2/health/ready"  # None: not probed (an engine of no health check, on a cluster)
    created_at: float = field(default_factory=time.time)
    url: str | None = None  # a replica that runs elsewhere (a Kubernetes Service): routed, never started here
    port: int | None = None  # the port it takes (a notebook keeps its URL across stop and start); None: a free one
    # code a user brought runs in it (a notebook's kernels): started in a sandbox that writes these folders
    # alone (the first holds its temporary files), with the host's network, none of the platform's credentials
    walls: list[str] | None = None
    # a model a user brought runs in it: started in a sandbox as above, the first folder it writes one of its
    # own (`run/<key>` under the replicas' root, fresh at every start) and these read-only (its model's files)
    reads: list[str] | None = None
    compiled: str | None = None  # the model's compiled entry (tasks/compiled.py), copied into its own cache

    @property
    def walled(self) -> bool:
        """Whether it runs a user's code (in a sandbox, with a replica credential of its own)."""
        return self.walls is not None or self.reads is not None


@dataclass
class State:
    key: str
    port: int
    pid: int | None = None
    status: str = "RUNNING"  # RUNNING (its process runs) or EXITED (to be started again after a backoff)
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    log: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A port free on 127.0.0.1 now (a replica's, the first time it starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def root(home: Path) -> Path:
    return Path(home) / "endpoints" / "replicas"


def key_of(endpoint: str, stage: str, resource_id: int, index: int) -> str:
    return f"{endpoint}.{stage}.{resource_id}.{index}"


def on_cluster(endpoints: dict[str, dict[str, Any]]) -> list[Wanted]:
    """The routed Services of stages that run on a cluster, from the catalog's routing table
    (`Endpoints.routing`): every gateway replica reads the same rows, so none needs files under a home."""
    return [Wanted(key=key_of(name, stage, rid, 0), endpoint=name, stage=stage, resource_id=rid, index=0,
                   model=model, argv=[], routed=True, url=url, health_path=health)
            for name, ep in endpoints.items() for stage, st in ep["stages"].items()
            for rid, (model, url, health) in st.get("services", {}).items()]


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_dir(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # removed while being read
    return found


def want(home: Path, replica: Wanted) -> None:
    _write(root(home) / "wanted" / f"{replica.key}.json", asdict(replica))


def unwant(home: Path, key: str) -> None:
    (root(home) / "wanted" / f"{key}.json").unlink(missing_ok=True)


def wanted(home: Path) -> list[Wanted]:
    return [Wanted(**d) for d in _read_dir(root(home) / "wanted")]


def write_state(home: Path, state: State) -> None:
    _write(root(home) / "state" / f"{state.key}.json", asdict(state))


def drop_state(home: Path, key: str) -> None:
    (root(home) / "state" / f"{key}.json").unlink(missing_ok=True)


def states(home: Path) -> dict[str, State]:
    return {d["key"]: State(**d) for d in _read_dir(root(home) / "state")}


def own_folder(home: Path, key: str) -> Path:
    """The folder a model's replica writes (its temporary files, its cache): its own, under the home."""
    return root(home) / "run" / key


def log_path(home: Path, key: str) -> Path:
    return root(home) / "logs" / f"{key}.log"


def route(home: Path, keys: list[str], routed: bool = True) -> None:
    """Mark replicas as routed (the gateway sends them requests) or not."""
    for w in wanted(home):
        if w.key in keys and w.routed != routed:
            w.routed = routed
            want(home, w)


def of_stage(home: Path, endpoint: str, stage: str, resource_id: int | None = None) -> list[Wanted]:
    return [w for w in wanted(home) if w.endpoint == endpoint and w.stage == stage
            and (resource_id is None or w.resource_id == resource_id)]


def tail(path: Path | str, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def probe(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_healthy(home: Path, keys: list[str], timeout: float = 180.0, on_wait=None) -> dict[str, State]:
    """Wait until every replica answers its health path with 200. A replica that exits before it
    does, or the timeout, raises ReplicaFailed with its log's last lines."""
    deadline = time.monotonic() + timeout
    started = time.time() - 5.0
    paths = {w.key: w.health_path for w in wanted(home) if w.key in keys}
    ready: dict[str, State] = {}
    while True:
        found = states(home)
        for key in keys:
            if key in ready:
                continue
            st = found.get(key)
            if st is None:
                continue
            if st.status == "EXITED" and st.started_at >= started:
                raise ReplicaFailed(f"replica {key} exited with code {st.last_exit} while starting:\n{tail(st.log)}")
            if st.status == "RUNNING" and probe(st.url + paths.get(key, "/v2/health/ready"), 1.0) == 200:
                ready[key] = st
        if len(ready) == len(keys):
            return ready
        if time.monotonic() > deadline:
            late = [k for k in keys if k not in ready]
            logs = "\n".join(f"--- {k}\n{tail(found[k].log)}" for k in late if k in found)
            raise ReplicaFailed(f"replicas {', '.join(late)} were not healthy within {timeout:.0f} s"
                                + (f":\n{logs}" if logs else " (is `mlyard up` running? it supervises them)"))
        if on_wait is not None:
            on_wait(ready)
        time.sleep(0.2)


def wait_stopped(home: Path, keys: list[str], timeout: float = 30.0) -> None:
    """Wait until the supervisor has stopped these (unwanted) replicas."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = states(home)
        if not any(k in live for k in keys):
            return
        time.sleep(0.1)
    raise ReplicaFailed(f"replicas {', '.join(keys)} did not stop within {timeout:.0f} s")

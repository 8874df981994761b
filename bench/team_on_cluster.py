"""What the cluster install carries for a team (issue 69 §4), on Kubernetes' own control plane: the figures a
platform engineer sizes by, with the install's own objects and default settings.

What runs: Kubernetes' control plane (tests/controlplane.py), one node played here with a pod network
(tests/kubelet_node.py, tests/pod_network.py: each pod its address, readiness probe and preStop; kube-proxy
played from the EndpointSlices); the install's `mlyard-api` Deployment (2 replicas, each with the door on
its second port) and `gateway` Deployment (2 replicas), each pod as its user with the install's limits'
settings, reading the cluster's catalog (PostgreSQL) and MLflow (tests/cluster_stores.py). Prefect is a
throwaway embedded stack's server on this machine (the install's prefect-server pod runs the same server;
as a pod here it would need the image's UI build and a database of its own: not done).

The team: 4 projects, 20 members (5 each, editors), 1,000 runs queued in Prefect (250 a project,
scheduled a day ahead: listed as queued runs are, never started), 100 endpoints (25 a project, each routed
to a model server on this machine that answers at once, so that the gateway is what is measured).

Measured, in one run:
1. the runs page (POST /api/flow_runs/filter, the 10 newest, as the UI's list asks) and a Run (GET
   /api/flow_runs/{id}) through the door as a member: p50/p95 of 60 each, idle, then while the 20 members
   each refresh their runs page every 2 s and open a Run every 10 s (the Prefect UI's own polling; the door
   closes Prefect's websockets to members, so their pages hold none);
2. requests a second at the gateway: wrk (1 thread, 32 connections, 15 s) on both gateway pods at once,
   each to an endpoint of its own, summed (kube-proxy's stand-in is a Python relay and would be the limit);
3. memory (RSS) of each part after the load, and the CPU seconds each spent during 1.

Run with `.venv/bin/python bench/team_on_cluster.py` as root (the node's pods run as their users in mount
namespaces), after `make test` has built the control plane (never part of the tests).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402 - before Prefect is imported

_load = _stack.load_test_helper


NS = "mlyard-team"
PROJECTS, MEMBERS, RUNS, ENDPOINTS = 4, 20, 1000, 100


ANSWERED = [0]  # requests the model server answered: every one wrk counts must have reached it


def _answering_server() -> int:
    """A model server that answers every request at once (asyncio, keep-alive): the gateway is measured."""
    import asyncio
    import socket

    listening = socket.create_server(("127.0.0.1", 0), backlog=1024)
    body = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]}'
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.seen = transport, b""

        def data_received(self, data):
            self.seen += data
            while (end := self.seen.find(b"\r\n\r\n")) >= 0:
                head = self.seen[:end].lower()
                m = re.search(rb"content-length:\s*(\d+)", head)
                size = int(m[1]) if m else 0
                if len(self.seen) < end + 4 + size:
                    return
                self.seen = self.seen[end + 4 + size:]
                ANSWERED[0] += 1
                self.transport.write(reply)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(loop.create_server(Answer, sock=listening))
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    return listening.getsockname()[1]


def _team(catalog_url: str, upstream: str) -> tuple[dict[str, str], list[str]]:
    """Projects, members (name -> key) and endpoints (names) in the cluster's catalog."""
    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.teams import Teams

    catalog = Catalog(catalog_url)
    teams, endpoints = Teams(catalog), Endpoints(catalog)
    keys, names = {}, []
    for p in range(PROJECTS):
        teams.create_project(f"team{p}")
        for m in range(MEMBERS // PROJECTS):
            user = f"member{p}x{m}"
            keys[user] = teams.create_user(user)[1]
            teams.set_member(f"team{p}", user, "editor")
        for e in range(ENDPOINTS // PROJECTS):
            name = f"ep{p}x{e}"
            view = endpoints.create(EndpointSpec(name=name, public=True, stage=StageSpec(
                instance_type="m2.c4m8", resources=[StageResourceSpec(model="m/1")])), [("m", "1")], f"team{p}")
            rid = view["stages"][0]["resources"][0]["id"]
            endpoints.set_status(name, "ACTIVE", "default", rid)
            endpoints.set_status(name, "ACTIVE", "default")
            endpoints.set_status(name, "ACTIVE")
            endpoints.set_service_urls(name, "default", {rid: upstream})
            names.append(name)
    catalog.dispose()
    return keys, names


def _queued_runs() -> dict[str, list[str]]:
    """RUNS flow runs of train/train-local, scheduled a day ahead, each of a project: project -> run ids."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    later = datetime.now(timezone.utc) + timedelta(days=1)
    spec = {"name": "queued", "source_uri": str(ROOT / "examples" / "sklearn_digits"), "entry_point": "train.py"}
    made: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train/train-local")
        for i in range(RUNS):
            project = f"team{i % PROJECTS}"
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"spec": spec}, state=Scheduled(scheduled_time=later),
                tags=[f"mlyard.project:{project}"])
            made.setdefault(project, []).append(str(run.id))
    return made


def _timed(send) -> float:
    started = time.perf_counter()
    send()
    return time.perf_counter() - started


def _door_calls(door: str, key: str, run_id: str):
    """The runs page's list and a Run, as a member's browser asks them through the door."""
    import httpx

    client = httpx.Client(base_url=door, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def runs_page() -> None:
        r = client.post("/api/flow_runs/filter", json={"limit": 10, "sort": "EXPECTED_START_TIME_DESC"})
        assert r.status_code == 200 and len(r.json()) == 10, (r.status_code, r.text[:300])

    def a_run() -> None:
        r = client.get(f"/api/flow_runs/{run_id}")
        assert r.status_code == 200, (r.status_code, r.text[:300])

    return runs_page, a_run


def _quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


def _process_groups(node, stack_settings, stores) -> dict[str, list[int]]:
    """The pids of each part: each pod's process group, and the servers outside the cluster."""
    def group(pid: int) -> list[int]:
        pgid = os.getpgid(pid)
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]

    parts: dict[str, list[int]] = {}
    for pod, proc in node.processes.items():
        if proc.poll() is None:
            parts[f"pod {pod}"] = group(proc.pid)
    from mlyard.core.connection import read_state

    state = read_state(stack_settings)
    parts["prefect server (this machine)"] = group(state.pids["prefect-server"])
    postmaster = [int(p) for p in os.listdir("/proc") if p.isdigit() and str(stores.pgdata) in _cmdline(int(p))]
    parts["catalog PostgreSQL"] = postmaster + [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) in postmaster]
    parts["MLflow"] = group(stores.processes[0].pid)
    return parts


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pss_mb(pids: list[int]) -> float:
    """The processes' proportional set size: shared pages (a forked worker's, a library's) counted once in all."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        total += int(m[1]) if m else 0
    return total / 1024


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def _wrk(url: str, seconds: int = 15, connections: int = 32) -> dict:
    script = Path("/tmp/mlyard-bench-team.lua")
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.body = [==[{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0]}]}]==]\n')
    text = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),  # type: ignore[index]
            "requests": int(re.search(r"(\d+) requests in", text)[1]),  # type: ignore[index]
            "errors": (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
            "p99_ms": float(p99[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]] if p99 else float("nan")}


def main() -> None:  # noqa: PLR0915 - one measured story, told in order
    if os.geteuid() != 0:
        raise SystemExit("run as root: the node's pods run as their users in mount namespaces")
    stack_settings = _stack.start()
    from mlyard.core.connection import read_state

    state = read_state(stack_settings)
    controlplane = _load("controlplane")
    _load("kubelet_sandbox")
    _load("kubelet")
    kubelet_node = _load("kubelet_node")
    pod_network = _load("pod_network")
    cluster_stores = _load("cluster_stores")
    if missing := controlplane.binaries_missing():
        raise SystemExit(f"the control plane is not built ({', '.join(missing)}): run `make test` or "
                         "tests/controlplane/build.sh first")
    from moto.server import ThreadedMotoServer

    s3_port = controlplane.free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    stores = cluster_stores.start(f"http://127.0.0.1:{s3_port}", controlplane.free_port)
    home = Path(stack_settings.home_dir) / "controlplane"
    plane = controlplane.start(home)
    node = None
    proxies = []
    try:
        api = kubelet_node.ClusterApi(plane.url, plane.ssl_context())
        stores.namespace(api, NS, {"PREFECT_API_URL": state.api_url, "MLYARD_PREFECT_API_URL": state.api_url},
                         {"mlyard-prefect": {"auth-string": state.prefect_auth_string or "none"}})
        node = kubelet_node.NodeKubelet(plane, "team-node", str(ROOT), capacity={"cpu": "16", "memory": "64Gi"},
                                        network=pod_network.PodNetwork())
        from mlyard.core.specs.cluster import ClusterValues
        from mlyard.tasks.cluster import render

        kinds = ("Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding")
        for obj in render(ClusterValues(overlay="dev", namespace=NS)):
            if obj["metadata"]["name"] in ("mlyard-api", "gateway") and obj["kind"] in kinds:
                api.create(obj["kind"], obj["apiVersion"], NS, {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        door_proxy = pod_network.ServiceProxy(api, NS, "mlyard-api", "door")
        proxies.append(door_proxy)
        upstream = f"http://127.0.0.1:{_answering_server()}"
        print("making the team: 4 projects, 20 members, 100 endpoints, 1,000 queued runs ...", flush=True)
        keys, endpoint_names = _team(stores.catalog_url, upstream)
        runs = _queued_runs()
        deadline = time.monotonic() + 300
        while len(door_proxy.endpoints) < 2 or len(node.network.ready) < 4 or not all(node.network.ready.values()):
            assert time.monotonic() < deadline, "the pods did not get ready"
            time.sleep(1)
        door = f"http://{door_proxy.address[0]}:{door_proxy.address[1]}"
        members = sorted(keys)
        probe_page, probe_run = _door_calls(door, keys[members[0]], runs["team0"][0])
        time.sleep(10)  # what making the runs set going in Prefect (their events) settles
        for _ in range(20):  # warm: each replica's first answers
            probe_page(), probe_run()

        idle_page = [_timed(probe_page) for _ in range(60)]
        idle_run = [_timed(probe_run) for _ in range(60)]

        parts = _process_groups(node, stack_settings, stores)

        def polling(pause: float, seconds: float) -> dict:
            """The 20 members each asking for their runs page every `pause` s (a Run every fifth time), while the
            probe measures both; the members' calls counted, the CPU each part spent."""
            cpu_before = {part: _cpu_seconds(pids) for part, pids in parts.items()}
            stop = threading.Event()
            errors: list[str] = []
            served = [0]

            def member(i: int, name: str) -> None:
                page, run = _door_calls(door, keys[name], runs[f"team{int(name[6])}"][i % 250])
                tick = 0
                while not stop.wait(pause):
                    try:
                        page()
                        if tick % 5 == 0:
                            run()
                        served[0] += 1
                    except Exception as exc:  # noqa: BLE001 - counted, reported
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    tick += 1

            threads = [threading.Thread(target=member, args=(i, m), daemon=True) for i, m in enumerate(members)]
            began = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(4)
            pages, opened = [], []
            while time.monotonic() - began < seconds:
                pages.append(_timed(probe_page))
                opened.append(_timed(probe_run))
                time.sleep(0.25)
            stop.set()
            for t in threads:
                t.join(60)
            spent = time.monotonic() - began
            return {"pages": pages, "runs": opened, "errors": errors, "spent": spent, "rate": served[0] / spent,
                    "cpu": {part: _cpu_seconds(pids) - cpu_before[part] for part, pids in parts.items()}}

        calm = polling(2.0, 30)
        flat_out = polling(0.0, 20)  # no pause: what the door, the API and Prefect carry at most

        gateways = [(ip, port) for (ns, name), ip in node.network.ips.items() if name.startswith("gateway-")
                    for port in (8080,) if ns == NS and node.processes.get(name) and node.processes[name].poll() is None]
        import httpx

        for ip, port in gateways:  # each answers a call as the model server answered it
            r = httpx.post(f"http://{ip}:{port}/{endpoint_names[0]}/m/v2/models/m/infer", json={}, timeout=10)
            assert r.status_code == 200 and r.json()["model_name"] == "m", (r.status_code, r.text[:300])
        answered = ANSWERED[0]
        results: list[dict] = []
        wrk_threads = [threading.Thread(target=lambda ip=ip, port=port, ep=endpoint_names[i]: results.append(
            _wrk(f"http://{ip}:{port}/{ep}/m/v2/models/m/infer")), daemon=True) for i, (ip, port) in enumerate(gateways)]
        gateway_parts = [part for part in parts if part.startswith("pod gateway-")]
        gateway_cpu = sum(_cpu_seconds(parts[part]) for part in gateway_parts)
        for t in wrk_threads:
            t.start()
        for t in wrk_threads:
            t.join(60)
        gateway_cpu = sum(_cpu_seconds(parts[part]) for part in gateway_parts) - gateway_cpu
        relayed = ANSWERED[0] - answered
        rss = {part: _pss_mb(pids) for part, pids in _process_groups(node, stack_settings, stores).items()}

        print(f"\nA team on the cluster install (issue 69 §4): {PROJECTS} projects, {MEMBERS} members, {RUNS} queued runs, "
              f"{ENDPOINTS} endpoints; 2 cores, {os.cpu_count()} CPUs seen")
        print(f"  runs page (flow_runs/filter, 10) through the door, idle:          {_quantiles(idle_page)}")
        print(f"  a Run (flow_runs/ID) through the door, idle:                      {_quantiles(idle_run)}")
        for label, phase in (("20 members, each every 2 s (a Run every 10 s)", calm),
                             ("20 members, each with no pause", flat_out)):
            print(f"  {label}: {phase['rate']:.1f} pages a second served, {len(phase['errors'])} failed "
                  f"{phase['errors'][:2]}")
            print(f"    runs page meanwhile:                                            {_quantiles(phase['pages'])}")
            print(f"    a Run meanwhile:                                                {_quantiles(phase['runs'])}")
        each = ", ".join(f"{r['rps']:.0f}" for r in results)
        total = sum(r["requests"] for r in results)
        print(f"  gateway, wrk 32 connections on each of {len(results)} pods for 15 s: "
              f"{sum(r['rps'] for r in results):.0f} requests/s in all ({each}; {total} requests), "
              f"p99 {max(r['p99_ms'] for r in results):.1f} ms, {sum(r['errors'] for r in results)} errors; "
              f"{relayed} reached the model server; the gateways' CPU {gateway_cpu / max(total, 1) * 1e6:.0f} µs a request")
        print("  CPU seconds each part spent (members every 2 s; with no pause), and its memory (PSS) after:")
        for part in sorted(rss):
            print(f"    {part:<48} {calm['cpu'].get(part, float('nan')):6.1f} s  {flat_out['cpu'].get(part, float('nan')):6.1f} s"
                  f"   {rss[part]:7.0f} MB")
    finally:
        for proxy in proxies:
            proxy.close()
        if node is not None:
            node.close()
        plane.close()
        stores.close()
        s3.stop()


if __name__ == "__main__":
    main()

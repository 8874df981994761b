"""Pod networking on Kubernetes' own control plane (tests/controlplane.py), for the tests that move pods
under load (a rolling restart, a drain): what a node's kubelet and kube-proxy do for a Service's traffic,
played here where neither can run.

- `PodNetwork`, given to a `NodeKubelet` (tests/kubelet_node.py): each pod gets an address of its own,
  added to this machine's `lo` while the pod lives (10.250.x.y/32, as a CNI plugin adds a pod's; never a
  127/8 one, which the API server refuses in an EndpointSlice), reported as its `podIP`; a container that
  listens on 0.0.0.0 listens on that address (a pod's own network namespace, where all of its interfaces
  are its address). Its readiness probe (`httpGet`) is run by the kubelet every
  `periodSeconds`, and the pod's Ready condition is what the probe says, as long as the pod lives, while
  it terminates too. On deletion, its container's preStop (`sleep`, or an exec of `sleep N`) runs before
  SIGTERM, within the grace period.
- `ServiceProxy`: kube-proxy for one Service port. It listens on a port here and forwards each new
  connection, round robin, to an endpoint the EndpointSlice controller lists as ready (when none is, to
  the serving ones that terminate: kube-proxy's terminating-endpoint fallback). A change of the slices
  takes effect SYNC_SECONDS after it is seen, as kube-proxy's rules follow them (its
  `--iptables-min-sync-period` is 1 s, and more on a busy node): a pod that stops listening the moment it
  is deleted is still sent new connections for that long. With no endpoint, a connection is refused (the
  REJECT rule kube-proxy writes for such a Service). A connection keeps its endpoint for its life
  (conntrack), so a draining pod answers the kept-alive connections it holds.

What is real: the Deployment and ReplicaSet controllers, the EndpointSlice controller, the disruption
controller and the eviction API, the scheduler. What is played: the probe's and the forwarding's timing
(a real kube-proxy follows the slices by a watch; this one reads them every 0.1 s)."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from typing import Any, Callable

SYNC_SECONDS = 1.0
_ANY = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")  # 0.0.0.0 in an argument (a `sh -c` script's too)
_ADDRESSES = (f"10.250.{os.getpid() % 250}.{i % 250 + 2}" for i in itertools.count())  # one process's own


class PodNetwork:
    def __init__(self) -> None:
        self.ips: dict[tuple[str, str], str] = {}
        self.ready: dict[tuple[str, str], bool] = {}

    def attach(self, ns: str, name: str, spec: dict) -> dict:
        """The pod's address, and its spec as its containers see it: 0.0.0.0 in their command lines is it."""
        ip = self.ips.setdefault((ns, name), next(_ADDRESSES))
        subprocess.run(["ip", "addr", "replace", f"{ip}/32", "dev", "lo"], check=True, capture_output=True)
        self.ready.setdefault((ns, name), not _probe(spec))
        containers = [{**c, **{k: [_ANY.sub(ip, a) for a in c[k]] for k in ("command", "args") if c.get(k)}}
                      for c in spec["containers"]]
        return {**spec, "containers": containers}

    def release(self, ns: str, name: str) -> None:
        """The pod's address taken away once its processes ended (its sandbox torn down)."""
        ip = self.ips.get((ns, name))
        if ip:
            subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)

    def status(self, ns: str, name: str, status: dict) -> dict:
        """What a kubelet reports of the pod beside its phase: its address, its readiness as probed."""
        ip = self.ips.get((ns, name), "127.0.0.1")
        ready = "True" if status.get("phase") == "Running" and self.ready.get((ns, name), True) else "False"
        return {**status, "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": t, "status": ready if t in ("ContainersReady", "Ready") else "True",
                                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                               for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}

    def probe(self, ns: str, name: str, spec: dict, alive: Callable[[], bool], report: Callable[[], None]) -> None:
        """The readiness probe of the pod's first container, for as long as `alive()`; `report()` on each change."""
        probe = _probe(spec)
        if not probe:
            return
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):  # a named port of the container
            port = next(p["containerPort"] for p in spec["containers"][0].get("ports") or [] if p.get("name") == port)
        url = f"http://{self.ips[(ns, name)]}:{port}{get.get('path', '/')}"
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = successes = 0
        while alive():
            try:
                with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as resp:
                    ok = 200 <= resp.status < 400
            except OSError:  # refused, timed out, or an HTTPError (4xx/5xx)
                ok = False
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            was = self.ready[(ns, name)]
            if ok and not was and successes >= int(probe.get("successThreshold", 1)):
                self.ready[(ns, name)] = True
                report()
            elif not ok and was and failures >= int(probe.get("failureThreshold", 3)):
                self.ready[(ns, name)] = False
                report()
            time.sleep(float(probe.get("periodSeconds", 10)))


def _probe(spec: dict) -> dict | None:
    probe = spec["containers"][0].get("readinessProbe")
    return probe if probe and "httpGet" in probe else None


def pre_stop_seconds(spec: dict) -> float:
    """How long the first container's preStop hook holds its SIGTERM back (a `sleep` action, or `sleep N`)."""
    hook = ((spec["containers"][0].get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = (hook.get("exec") or {}).get("command") or []
    words = command[-1].split() if command[:2] == ["sh", "-c"] else command
    return float(words[1]) if len(words) == 2 and words[0] == "sleep" else 0.0


class ServiceProxy:
    """kube-proxy for `service`'s port `port_name` in `namespace` (see the module); `address`: where to call it."""

    def __init__(self, api: Any, namespace: str, service: str, port_name: str = "http",
                 address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        """`address`: where it listens (a free port here by default; a Service's cluster IP and port)."""
        self.api, self.namespace, self.service, self.port_name = api, namespace, service, port_name
        self.endpoints: list[tuple[str, int]] = []
        self.connections: dict[tuple[str, int], int] = {}  # endpoint -> connections forwarded to it
        self.bytes_in = 0  # what clients sent through it
        self._turn = itertools.count()
        self._stop = threading.Event()
        with socket.create_server(address) as taken:  # its port, listened on while it has an endpoint
            self.address = taken.getsockname()
        self._listener: socket.socket | None = None  # none: refused, as kube-proxy's REJECT rule refuses
        self._lock = threading.Lock()
        threading.Thread(target=self._follow, daemon=True, name=f"kube-proxy-{service}").start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._listener.close()

    def _apply(self, endpoints: list[tuple[str, int]]) -> None:
        """The endpoints kube-proxy's rules now send to; with none, connections are refused (a Service with
        no endpoint gets a REJECT rule: the client's connect fails at once)."""
        with self._lock:
            self.endpoints = endpoints
            if endpoints and self._listener is None and not self._stop.is_set():
                self._listener = socket.create_server(self.address, backlog=256)
                threading.Thread(target=self._accept, args=(self._listener,), daemon=True,
                                 name=f"kube-proxy-{self.service}-accept").start()
            elif not endpoints and self._listener is not None:
                self._listener.close()
                self._listener = None

    def _count(self, n: int) -> None:
        self.bytes_in += n

    def _follow(self) -> None:
        path = (f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
                f"?labelSelector=kubernetes.io%2Fservice-name%3D{self.service}")
        seen: tuple[float, list[tuple[str, int]]] | None = None  # a change not applied yet: when seen, what
        while not self._stop.wait(0.1):
            if seen is not None and time.monotonic() - seen[0] >= SYNC_SECONDS:
                self._apply(seen[1])
                seen = None
            try:
                code, doc = self.api.request("GET", path)
            except OSError:
                continue
            if code != 200:
                continue
            ready, terminating = [], []
            for sl in doc.get("items") or []:
                port = next((p["port"] for p in sl.get("ports") or [] if p.get("name", "") == self.port_name), None)
                for ep in sl.get("endpoints") or [] if port else []:
                    conditions = ep.get("conditions") or {}
                    for address in ep["addresses"]:
                        if conditions.get("ready"):
                            ready.append((address, port))
                        elif conditions.get("serving") and conditions.get("terminating"):
                            terminating.append((address, port))
            now = sorted(ready) or sorted(terminating)
            if now != (seen[1] if seen is not None else self.endpoints):
                seen = (time.monotonic(), now)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: no endpoint left, or the proxy ends
            endpoints = self.endpoints
            if not endpoints:  # the last one went as this connection came
                client.close()
                continue
            target = endpoints[next(self._turn) % len(endpoints)]
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections[target] = self.connections.get(target, 0) + 1
            threading.Thread(target=_pump, args=(client, upstream, self._count), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, lambda n: None), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket, seen: Callable[[int], None]) -> None:
    """Bytes from `src` to `dst` until either side ends (`seen(n)` of each chunk), then both shut down."""
    try:
        while data := src.recv(65536):
            seen(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

"""An endpoint's stages on Kubernetes' own control plane (tests/controlplane.py), where no container runtime
and no kube-proxy run, played around the real controllers:

- `StageNode`: a node (tests/kubelet_node.py) of the stages' instance type whose kubelet plays each pod
  bound to it: the pod gets an address of its own (tests/pod_network.py), its serving container's
  environment is resolved as kubelet resolves it (a missing required Secret key starts nothing), and its
  port there forwards to one model server that runs here as a stage's pod runs it (the endpoint tests'
  `pod` fixture: `mlyard serve` with the replicas' credential); the pod is reported Running and Ready as
  its readiness probe finds it through that port.
- `ClusterIPs`: kube-proxy for every Service of a namespace at its cluster IP (added to `lo` while the
  Service lives), forwarding new connections to the ready endpoints the EndpointSlice controller lists
  (pod_network.ServiceProxy), counting what clients send through each Service.

What is real: the Deployment, ReplicaSet, EndpointSlice, HPA and garbage collector controllers, the
scheduler (the stage's node selector, its resources), admission, the Services' cluster IPs."""

from __future__ import annotations

import socket
import subprocess
import threading

from controlplane import ControlPlane
from kubelet_node import NodeKubelet
from pod_network import PodNetwork, ServiceProxy, _pump


class StageNode:
    def __init__(self, plane: ControlPlane, name: str, instance_type: str, backend: tuple[str, int]):
        self.backend, self.network = backend, PodNetwork()
        self.node = NodeKubelet(plane, name, "/", capacity={"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"},
                                labels={"node.kubernetes.io/instance-type": instance_type}, runs=lambda pod: False)
        self.node.node_api.pod_status = self.network.status
        self.played: dict[str, tuple[str, str, socket.socket]] = {}  # pod uid -> namespace, name, its listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"stage-node-{name}")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for uid in list(self.played):
            self._end(uid)
        self.node.close()

    def _loop(self) -> None:
        api = self.node.node_api
        while not self._stop.wait(0.2):
            try:
                bound = api.items("Pod", None, f"spec.nodeName={self.node.name}")
            except (OSError, RuntimeError):
                continue
            live = set()
            for pod in bound:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    continue  # the node's kubelet ends it (NodeKubelet._delete); its port goes below
                live.add(meta["uid"])
                if meta["uid"] not in self.played and pod["status"].get("phase") in (None, "Pending"):
                    self._start(pod)
            for uid in set(self.played) - live:
                self._end(uid)

    def _start(self, pod: dict) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        container = pod["spec"]["containers"][0]
        try:
            self.node.resolve_env(ns, container)  # kubelet's CreateContainerConfigError: nothing starts
        except RuntimeError:
            return
        spec = self.network.attach(ns, name, pod["spec"])
        port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == "http")
        listener = socket.create_server((self.network.ips[(ns, name)], port), backlog=64)
        self.played[uid] = (ns, name, listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        self.node.node_api.set_status("Pod", ns, name, {"phase": "Running"})
        alive = lambda: uid in self.played and not self._stop.is_set()  # noqa: E731
        threading.Thread(target=self.network.probe, daemon=True, args=(
            ns, name, spec, alive, lambda: alive() and self.node.node_api.set_status("Pod", ns, name, {"phase": "Running"}))).start()

    def _end(self, uid: str) -> None:
        ns, name, listener = self.played.pop(uid)
        listener.close()
        self.network.release(ns, name)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the pod ended
            try:
                upstream = socket.create_connection(self.backend, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=_pump, args=(client, upstream, lambda n: None), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, lambda n: None), daemon=True).start()


class ClusterIPs:
    def __init__(self, api, namespace: str):
        self.api, self.namespace = api, namespace
        self.proxies: dict[str, tuple[str, ServiceProxy]] = {}  # Service -> its cluster IP, its proxy
        self._sent: dict[str, int] = {}  # what clients sent through a Service since deleted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"cluster-ips-{namespace}")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for name in list(self.proxies):
            self._drop(name)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                services = {s["metadata"]["name"]: s for s in self.api.items("Service", self.namespace)}
            except (OSError, RuntimeError):
                continue
            for name, svc in services.items():
                ip = svc["spec"].get("clusterIP")
                if name not in self.proxies and ip not in (None, "None"):
                    subprocess.run(["ip", "addr", "replace", f"{ip}/32", "dev", "lo"], check=True, capture_output=True)
                    port = svc["spec"]["ports"][0]
                    self.proxies[name] = (ip, ServiceProxy(self.api, self.namespace, name, port.get("name", ""),
                                                           address=(ip, port["port"])))
            for name in set(self.proxies) - set(services):  # a deleted Service stops answering
                self._drop(name)

    def sent(self, service: str) -> int:
        """What clients have sent through `service` (bytes)."""
        entry = self.proxies.get(service)
        return entry[1].bytes_in if entry else self._sent.get(service, 0)

    def _drop(self, name: str) -> None:
        ip, proxy = self.proxies.pop(name)
        self._sent[name] = proxy.bytes_in
        proxy.close()
        subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)

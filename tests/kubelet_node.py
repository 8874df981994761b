"""A node's kubelet against Kubernetes' own control plane (tests/controlplane.py), where no real kubelet can
run: it registers a Node with the capacity and labels a test names, renews the node's Lease and reports it
Ready, and runs each pod the scheduler binds to it as tests/kubelet.py's Kubelet runs one (its container's
command as a process here, as its user, with its volumes laid out as kubelet lays them: `as_users`), with
what a kubelet gets from the API: Secrets and ConfigMaps of the pods bound to it (the Node authorizer's
rule), a token the API issues for each pod's service account, bound to the pod (TokenRequest). It
authenticates as `system:node:<name>` in `system:nodes`, so NodeRestriction and the Node authorizer hold
it to what a kubelet may do. Pod logs are served as a kubelet serves them (`/containerLogs/...` over
HTTPS), where the API server's `pods/log` reaches them. Everything but the container's process is the
control plane's: the Job, ReplicaSet and endpoint controllers, the scheduler, admission, deletion."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from controlplane import ControlPlane, free_port
from kubelet import Kubelet, _now

PATHS = {"Pod": ("api/v1", "pods"), "Secret": ("api/v1", "secrets"), "ConfigMap": ("api/v1", "configmaps"),
         "Job": ("apis/batch/v1", "jobs"), "Node": ("api/v1", "nodes"), "Lease": ("apis/coordination.k8s.io/v1", "leases"),
         "Namespace": ("api/v1", "namespaces"), "Service": ("api/v1", "services"),
         "ServiceAccount": ("api/v1", "serviceaccounts"), "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims"),
         "Deployment": ("apis/apps/v1", "deployments"), "StatefulSet": ("apis/apps/v1", "statefulsets"),
         "Role": ("apis/rbac.authorization.k8s.io/v1", "roles"),
         "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings"),
         "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies"),
         "PodDisruptionBudget": ("apis/policy/v1", "poddisruptionbudgets"),
         "HorizontalPodAutoscaler": ("apis/autoscaling/v2", "horizontalpodautoscalers"),
         "Event": ("api/v1", "events")}
# what the control plane makes in every namespace by itself (not the install's)
OWN = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


class RealApi:
    """A real API server's REST API as one identity: what a Kubelet (tests/kubelet.py) and the tests ask of it."""

    def __init__(self, url: str, context: ssl.SSLContext, token: str | None = None):
        """`context`: the CA, and a client certificate for who asks; or `token`, a bearer token (a service
        account's) and the CA alone."""
        self.url, self.context, self.token = url, context, token
        self.objects = _Objects(self)
        self.pod_logs: dict[tuple[str, str], str] = {}
        self.pod_log_times: dict[tuple[str, str], list[float]] = {}  # when each line of a pod's log was written
        self.pod_status: Any = None  # a node's pod network (tests/pod_network.py) reports addresses and readiness

    def path(self, kind: str, ns: str | None, name: str | None = None, sub: str | None = None) -> str:
        group, plural = PATHS[kind]
        where = f"/namespaces/{ns}" if ns else ""
        return f"/{group}{where}/{plural}" + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get_object(self, kind: str, ns: str | None, name: str) -> dict | None:
        code, doc = self.request("GET", self.path(kind, ns, name))
        if code == 404 or (code == 403 and "no relationship found" in (doc or {}).get("message", "")):
            return None  # gone; to a node, a pod deleted is one the Node authorizer no longer relates to it
        if code != 200:
            raise RuntimeError(f"GET {kind} {ns}/{name}: {code} {doc.get('message') if doc else ''}")
        return doc

    def items(self, kind: str, namespace: str | None = None, fields: str = "") -> list[dict]:
        code, doc = self.request("GET", self.path(kind, namespace) + (f"?fieldSelector={quote(fields)}" if fields else ""))
        if code != 200:
            raise RuntimeError(f"listing {kind}: {code} {doc.get('message') if doc else ''}")
        return doc.get("items") or []

    def set_status(self, kind: str, namespace: str, name: str, status: dict, manager: str = "kubelet") -> dict:
        if kind == "Pod" and self.pod_status is not None:
            status = self.pod_status(namespace, name, status)
        elif kind == "Pod":  # what a kubelet reports beside the phase: the pod's address, its readiness
            ready = "True" if status.get("phase") == "Running" else "False"
            status = {**status, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                      "conditions": [{"type": t, "status": ready if t != "PodScheduled" else "True",
                                      "lastTransitionTime": _now()} for t in
                                     ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}
        code, doc = self.request("PATCH", self.path(kind, namespace, name, "status"), {"status": status},
                                 "application/merge-patch+json")
        if code != 200 and code != 404:  # a pod deleted meanwhile is gone: nothing to report
            raise RuntimeError(f"status of {kind} {namespace}/{name}: {code} {doc.get('message') if doc else ''}")
        return doc


class ClusterApi(RealApi):
    """A real API server as the cluster tests ask it what an install made (an admin's view)."""

    def get(self, kind: str, namespace: str, name: str) -> dict:
        found = self.get_object(kind, namespace, name)
        assert found is not None, f"{kind} {namespace}/{name} not found"
        return found

    def create(self, kind: str, api_version: str, ns: str | None, body: dict, manager: str = "kubectl") -> dict:
        code, doc = self.request("POST", self.path(kind, ns) + f"?fieldManager={manager}",
                                 {"apiVersion": api_version, "kind": kind, **body})
        assert code == 201, f"creating {kind} {body['metadata'].get('name')}: {code} {doc.get('message')}"
        return doc

    def delete(self, key: tuple[str, str | None, str]) -> None:
        code, doc = self.request("DELETE", self.path(*key))
        assert code in (200, 202), f"deleting {key}: {code} {doc.get('message')}"

    def made(self, namespace: str) -> list[tuple[str, str]]:
        """(kind, name) of every object in `namespace` of the kinds an install makes, but the control plane's own."""
        return sorted((kind, o["metadata"]["name"]) for kind in PATHS if kind not in ("Node", "Lease", "Namespace", "Pod", "Event")
                      for o in self.items(kind, namespace) if (kind, o["metadata"]["name"]) not in OWN)

    def versions(self, namespace: str) -> dict[tuple[str, str], str]:
        """Each such object's revision of what was asked of it: its spec's `generation` where it has one (the
        controllers write a Deployment's status, never its generation), else its resourceVersion."""
        return {(kind, o["metadata"]["name"]): str(o["metadata"].get("generation") or o["metadata"]["resourceVersion"])
                for kind in PATHS
                if kind not in ("Node", "Lease", "Namespace", "Pod", "Event") for o in self.items(kind, namespace)
                if (kind, o["metadata"]["name"]) not in OWN}

    def owner_of(self, kind: str, namespace: str, name: str, *path: str) -> list[str]:
        """The field managers that own `path` of the object (its managedFields, as the server keeps them)."""
        owners = []
        for entry in self.get(kind, namespace, name)["metadata"].get("managedFields") or []:
            node = entry.get("fieldsV1") or {}
            for part in path:
                node = node.get(f"f:{part}") if isinstance(node, dict) else None
            if node is not None:
                owners.append(entry["manager"])
        return owners

    def drop_namespace(self, name: str, timeout: float = 60) -> None:
        """The namespace deleted and gone (the namespace controller deletes what it holds first)."""
        self.request("DELETE", self.path("Namespace", None, name))
        deadline = time.monotonic() + timeout
        while self.get_object("Namespace", None, name) is not None:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, f"namespace {name} still there after {timeout:.0f} s"
            time.sleep(0.3)


class _Objects:
    """`api.objects.get((kind, namespace, name))` and `(kind, namespace, name) in api.objects`, as the API reads."""

    def __init__(self, api: RealApi):
        self.api = api

    def get(self, key: tuple[str, str, str]) -> dict | None:
        return self.api.get_object(*key)

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return self.get(key) is not None


class NodeKubelet(Kubelet):
    """One Node of the control plane played on this machine (see the module)."""

    def __init__(self, plane: ControlPlane, name: str, cwd: str, capacity: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, taints: list[dict] | None = None,
                 overrides: dict[str, str] | None = None, binds: tuple[str, ...] = (), runs: Any = None,
                 network: Any = None, starts: Any = None, images: dict[str, str] | None = None):
        """`runs(pod)`: whether this node runs a pod bound to it (default: every one); the others stay
        ContainerCreating, as on a node still pulling their images, but those `starts(pod)` says it started: they
        are reported Running and ready, as a node reports a container whose image it had and whose process runs
        (nothing runs here: what such a test checks is the controllers' and clients' side of a rollout). `network` (tests/pod_network.py's
        PodNetwork): each pod an address of its own, readiness probes and preStop hooks; without it every
        pod is 127.0.0.1 and ready while it runs. `images`: tests/kubelet.py's (another release's images)."""
        self.plane, self.name, self.runs, self.network = plane, name, runs or (lambda pod: True), network
        self.starts = starts or (lambda pod: False)
        self.node_api = RealApi(plane.url, plane.ssl_context(f"system:node:{name}", ("system:nodes",)))
        if network is not None:
            self.node_api.pod_status = network.status
        self.capacity = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi", **(capacity or {})}
        self.port, self._server = self._serve_logs()
        self._register(labels or {}, taints or [])
        self.pods: dict[str, dict] = {}  # uid -> the pod as it was bound
        self.deleting: set[str] = set()
        # the API where a pod's in-cluster client looks for it (no kube-proxy here: the server itself)
        service = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": plane.url.rsplit(":", 1)[1]}
        super().__init__(self.node_api, cwd, {**service, **(overrides or {})}, as_users=True,  # type: ignore[arg-type]
                         binds=binds, images=images)

    # -- the Node -----------------------------------------------------------------------------------------

    def _register(self, labels: dict[str, str], taints: list[dict]) -> None:
        api = self.node_api
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", **labels}},
            "spec": {"taints": taints}}
        code, doc = api.request("POST", api.path("Node", None), node)
        if code not in (201, 409):
            raise RuntimeError(f"registering node {self.name}: {code} {doc.get('message') if doc else ''}")
        self._heartbeat()

    def _heartbeat(self) -> None:
        api, now = self.node_api, _now()
        status = {"capacity": self.capacity, "allocatable": self.capacity,
                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                  "nodeInfo": {"kubeletVersion": "v1.36.2", "operatingSystem": "linux", "architecture": "amd64",
                               "containerRuntimeVersion": "mlyard-test://1", "kernelVersion": "", "osImage": "",
                               "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
                  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is ready",
                                  "lastHeartbeatTime": now, "lastTransitionTime": now}]}
        api.set_status("Node", None, self.name, status)  # type: ignore[arg-type]
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                          "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())}}
        code, _ = api.request("PUT", api.path("Lease", "kube-node-lease", self.name), lease)
        if code == 404:
            api.request("POST", api.path("Lease", "kube-node-lease"), lease)

    # -- pods -----------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        from mlyard.tasks.processes import stop_group

        beat = 0.0
        while not self._stop.wait(0.2):
            try:
                if time.monotonic() - beat > 10:
                    self._heartbeat()
                    beat = time.monotonic()
                bound = self.node_api.items("Pod", None, f"spec.nodeName={self.name}")
            except (OSError, RuntimeError):
                continue  # the API restarting: the next look
            for pod in bound:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    if meta["uid"] not in self.deleting:
                        self.deleting.add(meta["uid"])
                        threading.Thread(target=self._delete, args=(pod,), daemon=True).start()
                elif meta["uid"] not in self.pods and pod["status"].get("phase") in (None, "Pending"):
                    self.pods[meta["uid"]] = pod
                    if self.runs(pod):
                        threading.Thread(target=self._run, args=(pod,), daemon=True).start()
                    elif self.starts(pod):
                        try:
                            self.node_api.set_status("Pod", meta["namespace"], meta["name"], {"phase": "Running"})
                        except (OSError, RuntimeError):
                            del self.pods[meta["uid"]]  # the next look reports it
            live = {p["metadata"]["name"] for p in bound}
            for pod_name, proc in list(self.processes.items()):
                if pod_name not in live and proc.poll() is None and pod_name not in self.ending:
                    self.ending.add(pod_name)
                    threading.Thread(target=stop_group, args=(proc, 5), daemon=True).start()

    def _run(self, pod: dict) -> None:
        """The pod's container, restarted as its restartPolicy says (Always: a Deployment's; OnFailure)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        spec = _with_downward_values(pod)
        policy = spec.get("restartPolicy", "Always")
        ended = threading.Event()
        if self.network is not None:
            spec = self.network.attach(ns, name, spec)
            threading.Thread(target=self.network.probe, daemon=True, args=(
                ns, name, spec, lambda: not ended.is_set() and not self._stop.is_set(),
                lambda: ended.is_set() or self.node_api.set_status("Pod", ns, name, {"phase": "Running"}))).start()
        try:
            while not self._stop.is_set():
                code = self.run_bound(ns, name, spec)
                if code is None or pod["metadata"]["uid"] in self.deleting or policy == "Never" or \
                        (policy == "OnFailure" and code == 0):
                    return
                if self.node_api.get_object("Pod", ns, name) is None:
                    return
                time.sleep(1.0)  # kubelet's back-off, shortened
        finally:
            ended.set()
            if self.network is not None:
                self.network.release(ns, name)

    def _delete(self, pod: dict) -> None:
        """A pod being deleted: its processes ended within its grace period, then its deletion confirmed."""
        from mlyard.tasks.processes import stop_group

        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        proc = self.processes.get(name)
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 30)
        if proc is not None and proc.poll() is None and self.network is not None:
            from pod_network import pre_stop_seconds

            held = min(pre_stop_seconds(pod["spec"]), grace)
            time.sleep(held)  # the preStop hook, before SIGTERM, within the grace period
            grace -= held
        if proc is not None and proc.poll() is None:
            stop_group(proc, grace)
        api = self.node_api
        api.request("DELETE", api.path("Pod", ns, name), {"kind": "DeleteOptions", "apiVersion": "v1",
                                                          "gracePeriodSeconds": 0,
                                                          "preconditions": {"uid": pod["metadata"]["uid"]}})

    def lookup(self, ns: str, pod_name: str) -> Any:
        """The pod's Secrets and ConfigMaps, its service account's token (issued for it, bound to it), its
        downward API values."""
        pod = next((p for p in self.pods.values() if p["metadata"]["name"] == pod_name
                    and p["metadata"]["namespace"] == ns), None)
        api = self.node_api

        def get(kind: str, name: str) -> dict | None:
            if kind == "ServiceAccountToken" and pod is not None:
                code, doc = api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", {
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                        "expirationSeconds": 3607, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                                      "name": pod_name, "uid": pod["metadata"]["uid"]}}})
                if code != 201:
                    raise RuntimeError(f"a token for {ns}/{name}: {code} {doc.get('message') if doc else ''}")
                return {"token": doc["status"]["token"]}
            if kind == "DownwardAPI" and pod is not None:
                return {"value": _field(pod, name)}
            return api.get_object(kind, ns, name) if kind in PATHS else None

        return get

    # -- the kubelet's own server: the logs the API server's pods/log asks for -------------------------------

    def _serve_logs(self) -> tuple[int, ThreadingHTTPServer]:
        crt_file, key_file = self.plane.server_cert(f"kubelet-{self.name}", hosts=("127.0.0.1",))
        kubelet = self

        class Logs(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) < 3 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                text = _log(kubelet.api, (parts[1], parts[2]), parse_qs(urlsplit(self.path).query)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Logs)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(crt_file), str(key_file))
        context.load_verify_locations(str(self.plane.ca))
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's client certificate, and nobody else's
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True, name=f"kubelet-{self.name}-logs").start()
        return server.server_address[1], server

    def close(self) -> None:
        """The node leaves the cluster: its processes stopped, its Node deleted (as an admin drains and deletes
        one), so the scheduler binds no later test's pod to a node no one runs."""
        super().close()
        self._server.shutdown()
        RealApi(self.plane.url, self.plane.ssl_context()).request("DELETE", f"/api/v1/nodes/{self.name}")


def _log(api: Any, key: tuple[str, str], query: dict[str, list[str]]) -> str:
    """A container's log as kubelet serves it: each line after its RFC 3339 time with `timestamps=true`, only
    those of the last `sinceSeconds` when asked, then only the last `tailLines`."""
    lines = api.pod_logs.get(key, "").splitlines(keepends=True)
    times = api.pod_log_times.get(key, [])[:len(lines)]
    since = float(query["sinceSeconds"][0]) if "sinceSeconds" in query else None
    out = []
    for at, line in zip(times, lines):
        if since is not None and at < time.time() - since:
            continue
        if query.get("timestamps") == ["true"]:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e9):09d}".rstrip("0") + "Z"
            line = f"{stamp.replace('.Z', 'Z')} {line}"
        out.append(line)
    if not times and lines:
        out = lines
    if "tailLines" in query:
        out = out[-int(query["tailLines"][0]):] if int(query["tailLines"][0]) else []
    return "".join(out)


def _field(pod: dict, path: str) -> str:
    """A downward API field of the pod: metadata.name, metadata.namespace, metadata.annotations['k'], ..."""
    meta = pod["metadata"]
    for prefix, source in (("metadata.annotations", meta.get("annotations") or {}),
                           ("metadata.labels", meta.get("labels") or {})):
        if path.startswith(prefix + "["):
            return str(source.get(path[len(prefix) + 2:-2], ""))
    return str({"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                "spec.nodeName": pod["spec"].get("nodeName", ""), "spec.serviceAccountName":
                pod["spec"].get("serviceAccountName", "default"), "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1"}.get(path, ""))


def _with_downward_values(pod: dict) -> dict:
    """The pod's spec with each environment variable of the downward API given its value, as kubelet does."""
    import copy

    spec = copy.deepcopy(pod["spec"])
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for e in container.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("fieldRef")
            if ref:
                e.pop("valueFrom")
                e["value"] = _field(pod, ref["fieldPath"])
    return spec

"""A Kubernetes API server emulator for the tests (no cluster or apiserver binary runs here).

It serves, over real HTTP on 127.0.0.1, the kinds mlyard creates (table KINDS) the way the API server
does for a client: discovery (`/api`, `/apis`, resource lists, so the `kubernetes` client's
DynamicClient and kopf find them), create with `generateName`, uid, resourceVersion and
creationTimestamp; get; list with label and field selectors; watch streams; replace; JSON merge,
strategic-merge (treated as a JSON merge) and JSON patches; **server-side apply** (`application/
apply-patch+yaml`, `fieldManager`, `force`) with field ownership in `managedFields`, conflicts (409)
and no new resourceVersion when nothing changed; the `status`, `scale` and `log` subresources; delete
with `ownerReferences` cascading. Errors are `Status` objects with the API server's reasons.

Defaulted as the API server does: a Service's `spec.clusterIP`, from a network the test chooses.
Mutating admission (`admission`: callables a test adds, as a webhook such as Kueue's would be).
Pod Security admission (tests/pod_security.py), as the API server's built-in plugin: a Pod that breaks its
namespace's `pod-security.kubernetes.io/enforce` level is refused with 403; a Job, Deployment, StatefulSet
(...) whose pod template breaks it is stored, and a FailedCreate Event is recorded against it as its
controller would, with no pods. A namespace without the label (or not created) is held to
`pod_security_default`, as an AdmissionConfiguration's `defaults` do: `restricted`, mlyard's level.
Not emulated: other admission, other defaulting, validation (the tests validate with kubernetes-validate),
controllers. Tests play the controllers and the kubelet themselves (`set_status`, `logs`).

Field ownership is tracked per leaf path; lists are atomic, except those the API server merges by key
(containers, env, ports, volumes, volumeMounts by `name`...), which are compared as whole values here:
enough to tell who owns `spec.replicas` and whether an apply changed anything.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import string
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml
from pod_security import forbidden, level_of, template_of, violations

# (group, version, plural, kind, namespaced, subresources)
KINDS: list[tuple[str, str, str, str, bool, tuple[str, ...]]] = [
    ("", "v1", "namespaces", "Namespace", False, ("status",)),
    ("", "v1", "pods", "Pod", True, ("status", "log")),
    ("", "v1", "services", "Service", True, ("status",)),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, ()),
    ("", "v1", "secrets", "Secret", True, ()),
    ("", "v1", "configmaps", "ConfigMap", True, ()),
    ("", "v1", "events", "Event", True, ()),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("status",)),
    ("", "v1", "nodes", "Node", False, ("status",)),
    ("apps", "v1", "deployments", "Deployment", True, ("status", "scale")),
    ("apps", "v1", "statefulsets", "StatefulSet", True, ("status", "scale")),
    ("batch", "v1", "jobs", "Job", True, ("status",)),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("status",)),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True, ()),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, ()),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, ()),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, ()),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, ()),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("status",)),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ()),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", True, ("status",)),
    ("kueue.x-k8s.io", "v1beta2", "resourceflavors", "ResourceFlavor", False, ()),
    ("kueue.x-k8s.io", "v1beta2", "clusterqueues", "ClusterQueue", False, ("status",)),
    ("kueue.x-k8s.io", "v1beta2", "localqueues", "LocalQueue", True, ("status",)),
    ("kueue.x-k8s.io", "v1beta2", "workloads", "Workload", True, ("status",)),
]
BY_PLURAL = {(g, v, p): (k, ns, subs) for g, v, p, k, ns, subs in KINDS}
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaves(obj: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Leaf paths of a configuration (dicts recurse, everything else is a value)."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple, Any] = {}
        for k, v in obj.items():
            out.update(leaves(v, prefix + (k,)))
        return out
    return {prefix: obj}


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return _MISSING
        obj = obj[k]
    return obj


def _set(obj: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj.setdefault(k, {})
    obj[path[-1]] = copy.deepcopy(value)


def _delete(obj: dict, path: tuple) -> None:
    parents = []
    for k in path[:-1]:
        if not isinstance(obj, dict) or k not in obj:
            return
        parents.append((obj, k))
        obj = obj[k]
    if isinstance(obj, dict):
        obj.pop(path[-1], None)
    for parent, k in reversed(parents):  # drop maps left empty
        if parent[k] == {}:
            del parent[k]


def _fields_v1(paths: set[tuple]) -> dict:
    out: dict = {}
    for path in sorted(paths):
        node = out
        for k in path:
            node = node.setdefault(f"f:{k}", {})
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


_MISSING = object()


class KubeApi:
    """The emulator. `url` is its address; `objects` maps (kind, namespace, name) to the stored object."""

    def __init__(self, service_ips: str = "10.96.0.0/16", pod_security_default: str = "restricted") -> None:
        self.pod_security_default = pod_security_default
        # a Service's cluster IP comes from this network, as the apiserver's --service-cluster-ip-range gives
        # them; a test that plays kube-proxy passes a loopback one (127.x.0.0/16) to reach them here
        self._service_ips = ipaddress.ip_network(service_ips).hosts()
        next(self._service_ips)  # .1 is the `kubernetes` Service's
        self.objects: dict[tuple[str, str, str], dict] = {}
        # mutating admission, as a webhook does (Kueue's suspends the Jobs of a LocalQueue): each is called with
        # (kind, object) before a created object is stored
        self.admission: list = []
        self.owners: dict[tuple[str, str, str], dict[str, set[tuple]]] = {}  # field manager -> its leaf paths
        self.pod_logs: dict[tuple[str, str], str] = {}  # (namespace, pod) -> text
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.events: list[tuple[int, str, str, dict]] = []  # (resourceVersion, kind, type, object)
        self._rv = 0
        self._cond = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _dispatch(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                api.requests.append((method, url.path))
                try:
                    if method == "GET" and query.get("watch") in ("true", "1"):
                        return self._watch(url.path, query)
                    if method == "GET" and url.path.endswith("/log") and query.get("follow") in ("true", "1"):
                        return self._follow(url.path)
                    code, doc = api.serve(method, url.path, query, raw, self.headers.get("Content-Type", ""))
                except ApiError as exc:
                    code, doc = exc.code, status(exc.code, exc.reason, exc.message)
                if isinstance(doc, str):  # pod logs
                    body = doc.encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._send(code, doc)

            def _watch(self, path: str, query: dict) -> None:
                kind, ns, _ = api.route(path)
                selector = query.get("labelSelector", "")
                since = int(query.get("resourceVersion") or 0)
                timeout = float(query.get("timeoutSeconds") or 300)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(doc: dict) -> None:
                    data = json.dumps(doc).encode() + b"\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                import time

                deadline = time.monotonic() + timeout
                try:
                    with api._cond:
                        if since == 0:  # the current state first, as ADDED
                            pending = [(api._rv, "ADDED", o) for (k, n, _), o in sorted(api.objects.items())
                                       if k == kind and (ns is None or n == ns)]
                            since = api._rv
                        else:
                            pending = []
                    while True:
                        for _, etype, obj in pending:
                            if api.matches(obj, selector, query.get("fieldSelector", "")):
                                chunk({"type": etype, "object": obj})
                        with api._cond:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            api._cond.wait_for(lambda seen=since: api._rv > seen, timeout=min(left, 1.0))
                            pending = [(rv, t, o) for rv, k, t, o in api.events
                                       if rv > since and k == kind
                                       and (ns is None or o["metadata"].get("namespace") == ns)]
                            since = api._rv
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _follow(self, path: str) -> None:
                """A pod's log as it grows, until the pod has ended (or is deleted) and all of it is sent."""
                import time

                _, ns, name, _ = api._route(path)
                key = ("Pod", ns or "", name or "")
                if key not in api.objects:
                    raise ApiError(404, "NotFound", f'pods "{name}" not found')
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                try:
                    while True:
                        pod = api.objects.get(key)
                        ended = pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
                        text = api.pod_logs.get((ns or "", name or ""), "")
                        if len(text) > sent:
                            data = text[sent:].encode()
                            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                            self.wfile.flush()
                            sent = len(text)
                        if ended:
                            break
                        time.sleep(0.05)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_PATCH(self) -> None:
                self._dispatch("PATCH")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="kube-api").start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path, namespace: str | None = None):
        """Write a kubeconfig that points at this emulator (a token it does not check); return its path."""
        context = {"cluster": "emulator", "user": "tester", **({"namespace": namespace} if namespace else {})}
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "contexts": [{"name": "emulator", "context": context}],
            "users": [{"name": "tester", "user": {"token": "not-checked"}}]}))
        return path

    # -- routing ----------------------------------------------------------------------------------

    def route(self, path: str) -> tuple[str, str | None, str | None]:
        kind, ns, name, _sub = self._route(path)
        return kind, ns, name

    def _route(self, path: str) -> tuple[str, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        if not rest or (group, version, rest[0]) not in BY_PLURAL:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        kind, namespaced, subs = BY_PLURAL[(group, version, rest[0])]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in subs:
            raise ApiError(404, "NotFound", f"no subresource {sub} of {kind}")
        if namespaced and ns is None and name is not None:
            raise ApiError(404, "NotFound", f"{kind} is namespaced")
        return kind, ns if namespaced else None, name, sub

    def discovery(self, path: str) -> dict | None:
        parts = [p for p in path.split("/") if p]
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-mlyard-emulator"}
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for g, v, *_ in KINDS:
                if g and v not in groups.setdefault(g, []):
                    groups[g].append(v)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
        if parts[:1] == ["api"] and len(parts) == 2 or parts[:1] == ["apis"] and len(parts) == 3:
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            resources = []
            for g, v, plural, kind, namespaced, subs in KINDS:
                if (g, v) != (group, version):
                    continue
                resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                                  "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update",
                                                          "watch"]})
                for sub in subs:
                    sub_kind = {"scale": "Scale", "log": "Pod"}.get(sub, kind)
                    resources.append({"name": f"{plural}/{sub}", "singularName": "", "namespaced": namespaced,
                                      "kind": sub_kind, "verbs": ["get", "patch", "update"]})
            if not resources:
                return None
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
                    "resources": resources}
        return None

    # -- requests ---------------------------------------------------------------------------------

    def serve(self, method: str, path: str, query: dict, raw: bytes, content_type: str) -> tuple[int, Any]:
        if method == "GET":
            doc = self.discovery(path)
            if doc is not None:
                return 200, doc
        kind, ns, name, sub = self._route(path)
        group_version = next(f"{g}/{v}".lstrip("/") for g, v, _, k, _, _ in KINDS if k == kind)
        with self._cond:
            if sub == "log":
                return self._log(ns, name, query)
            if method == "GET" and name is None:
                items = [o for (k, n, _), o in sorted(self.objects.items()) if k == kind and (ns is None or n == ns)
                         and self.matches(o, query.get("labelSelector", ""), query.get("fieldSelector", ""))]
                return 200, {"kind": f"{kind}List", "apiVersion": group_version,
                             "metadata": {"resourceVersion": str(self._rv)}, "items": items}
            if method == "POST" and name is None:
                body = self._body(raw, content_type)
                return 201, self.create(kind, group_version, ns, body, query.get("fieldManager") or "kubectl-create")
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
            key = (kind, ns or "", name)
            if method == "PATCH" and "apply-patch" in content_type:
                return self._apply(key, group_version, self._body(raw, content_type), query)
            if key not in self.objects:
                raise ApiError(404, "NotFound", f'{kind.lower()}s "{name}" not found')
            obj = self.objects[key]
            if method == "GET":
                return 200, self._scale(obj) if sub == "scale" else obj
            if method == "DELETE":
                self.delete(key)
                return 200, status(200, "Success", f"{kind} {name} deleted")
            manager = query.get("fieldManager") or "kubectl-edit"
            if method == "PUT":
                body = self._body(raw, content_type)
                rv = body.get("metadata", {}).get("resourceVersion")
                if rv and rv != obj["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", f"the object has been modified; resourceVersion {rv} is stale")
                return 200, self._update(key, body, manager, sub)
            if method == "PATCH":
                body = self._body(raw, content_type)
                if "json-patch" in content_type:
                    import jsonpatch

                    base = self._scale(obj) if sub == "scale" else obj
                    new = jsonpatch.apply_patch(base, body)
                else:  # merge and strategic merge
                    new = merge_patch(self._scale(obj) if sub == "scale" else obj, body)
                return 200, self._update(key, new, manager, sub)
        raise ApiError(405, "MethodNotAllowed", method)

    @staticmethod
    def _body(raw: bytes, content_type: str) -> Any:
        if not raw:
            return {}
        return yaml.safe_load(raw) if "yaml" in content_type else json.loads(raw)

    def matches(self, obj: dict, labels: str, fields: str) -> bool:
        have = obj["metadata"].get("labels") or {}
        for term in (t.strip() for t in labels.split(",") if t.strip()):
            if "!=" in term:
                k, v = term.split("!=", 1)
                if have.get(k) == v:
                    return False
            elif "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                if have.get(k) != v:
                    return False
            elif term.startswith("!"):
                if term[1:] in have:
                    return False
            elif term not in have:
                return False
        for term in (t.strip() for t in fields.split(",") if t.strip()):
            k, v = term.split("=", 1)
            if _get(obj, tuple(k.split("."))) != v:
                return False
        return True

    # -- storage ----------------------------------------------------------------------------------

    def _bump(self, kind: str, etype: str, obj: dict) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.events.append((self._rv, kind, etype, copy.deepcopy(obj)))
        self._cond.notify_all()

    def create(self, kind: str, api_version: str, ns: str | None, body: dict, manager: str) -> dict:
        with self._cond:  # reentrant: requests hold it already
            return self._create(kind, api_version, ns, body, manager)

    def _create(self, kind: str, api_version: str, ns: str | None, body: dict, manager: str) -> dict:
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if ns is not None:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request's")
            meta["namespace"] = ns
        key = (kind, ns or "", meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{meta["name"]}" already exists')
        obj = copy.deepcopy(body)
        obj.update({"apiVersion": api_version, "kind": kind})
        for admit in self.admission:
            admit(kind, obj)
        refused = self._pod_security(kind, obj)
        obj["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": _now(), "generation": 1})
        self.owners[key] = {manager: set(leaves(self._config(obj)))}
        if kind == "Service" and not obj.get("spec", {}).get("clusterIP"):  # the server's default: not owned
            obj.setdefault("spec", {})["clusterIP"] = str(next(self._service_ips))
        self._managed(key, obj, {manager: "Update"})
        self.objects[key] = obj
        self._bump(kind, "ADDED", obj)
        if refused:
            self._failed_create(obj, refused)
        return obj

    def _pod_security(self, kind: str, obj: dict) -> str | None:
        """Refuse a Pod (403) that breaks its namespace's level; for a workload, the message its controller will
        meet creating pods (None when its template is allowed)."""
        spec = template_of(kind, obj)
        if spec is None:
            return None
        ns = obj["metadata"].get("namespace", "")
        level = level_of(self.objects.get(("Namespace", "", ns)), self.pod_security_default)
        found = violations(spec, level)
        if not found:
            return None
        if kind == "Pod":
            raise ApiError(403, "Forbidden", forbidden("pods", obj["metadata"]["name"], level, found))
        return forbidden("pods", obj["metadata"]["name"] + "-", level, found)

    def _failed_create(self, obj: dict, message: str) -> None:
        """The event a workload's controller records when the API refuses its pods (kubectl describe shows it)."""
        meta = obj["metadata"]
        self._create("Event", "v1", meta.get("namespace"), {
            "metadata": {"generateName": f"{meta['name']}."}, "type": "Warning", "reason": "FailedCreate",
            "message": f"Error creating: {message}", "involvedObject": {
                "kind": obj["kind"], "apiVersion": obj["apiVersion"], "name": meta["name"],
                "namespace": meta.get("namespace"), "uid": meta.get("uid")},
            "source": {"component": f"{obj['kind'].lower()}-controller"}, "firstTimestamp": _now(), "count": 1},
            "kube-controller-manager")

    def pod_security_refusals(self) -> list[str]:
        """Every pod refused by Pod Security since the start, as the controllers' events say it."""
        return [e["message"] for e in self.items("Event") if e.get("reason") == "FailedCreate"
                and "violates PodSecurity" in e.get("message", "")]

    @staticmethod
    def _config(obj: dict) -> dict:
        """What a manager can own: everything but status and the server's metadata."""
        out = {k: v for k, v in obj.items() if k not in ("status", "apiVersion", "kind")}
        out["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_FIELDS}
        return out

    def _managed(self, key, obj: dict, operations: dict[str, str]) -> None:
        previous = {m["manager"]: m.get("operation", "Update") for m in obj["metadata"].get("managedFields", [])}
        previous.update(operations)
        obj["metadata"]["managedFields"] = [
            {"manager": m, "operation": previous.get(m, "Update"), "apiVersion": obj["apiVersion"], "time": _now(),
             "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}
            for m, paths in sorted(self.owners[key].items()) if paths]

    def _apply(self, key, api_version: str, config: dict, query: dict) -> tuple[int, dict]:
        manager = query.get("fieldManager")
        if not manager:
            raise ApiError(400, "BadRequest", "PATCH with apply-patch requires fieldManager")
        force = str(query.get("force", "")).lower() in ("true", "1")
        kind, ns, name = key
        if config.get("kind") != kind or config.get("metadata", {}).get("name") != name:
            raise ApiError(400, "BadRequest", "the applied object's kind and name must match the request")
        wanted = leaves(self._config(config))
        if key not in self.objects:
            obj = self.create(kind, api_version, ns or None, copy.deepcopy(config), manager)
            self.owners[key] = {manager: set(wanted)}
            self._managed(key, obj, {manager: "Apply"})
            return 201, obj
        obj = self.objects[key]
        owners = self.owners.setdefault(key, {})
        conflicts = [(m, p) for m, paths in owners.items() if m != manager for p in paths
                     if p in wanted and _get(obj, p) != wanted[p]]
        if conflicts and not force:
            text = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
            raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): {text}")
        new = copy.deepcopy(obj)
        mine = owners.get(manager, set())
        others = set().union(*(paths for m, paths in owners.items() if m != manager)) if owners else set()
        for p in mine - set(wanted) - others:  # fields this manager stopped applying, owned by no one else
            _delete(new, p)
        for p, v in wanted.items():
            _set(new, p, v)
        for m in list(owners):
            if m != manager:
                owners[m] -= set(wanted) if force else {p for p in owners[m] if p in wanted}
        owners[manager] = set(wanted)
        return self._store(key, obj, new, {manager: "Apply"})

    def _store(self, key, old: dict, new: dict, operations: dict[str, str]) -> tuple[int, dict]:
        kind = key[0]
        changed = self._config(new) != self._config(old) or new.get("status") != old.get("status")
        if not changed:
            self._managed(key, old, operations)
            return 200, old
        refused = None
        if self._config(new).get("spec") != self._config(old).get("spec"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            refused = self._pod_security(kind, new)
        for f in ("uid", "creationTimestamp"):
            new["metadata"][f] = old["metadata"][f]
        self._managed(key, new, operations)
        self.objects[key] = new
        self._bump(kind, "MODIFIED", new)
        if refused:
            self._failed_create(new, refused)
        return 200, new

    def _update(self, key, body: dict, manager: str, sub: str | None) -> dict:
        old = self.objects[key]
        if sub == "scale":
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = body.get("spec", {}).get("replicas")
            changed_paths = {("spec", "replicas")}
        elif sub == "status":
            new = copy.deepcopy(old)
            new["status"] = body.get("status", {})
            changed_paths = set()
        else:
            new = copy.deepcopy(body)
            new["status"] = old.get("status", {}) if "status" not in body else body["status"]
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            new.setdefault("metadata", {}).update({k: old["metadata"][k] for k in ("name",) if k in old["metadata"]})
            if "namespace" in old["metadata"]:
                new["metadata"]["namespace"] = old["metadata"]["namespace"]
            before, after = leaves(self._config(old)), leaves(self._config(new))
            changed_paths = {p for p, v in after.items() if before.get(p, _MISSING) != v}
        owners = self.owners.setdefault(key, {})
        for m in owners:
            if m != manager:
                owners[m] -= changed_paths
        owners.setdefault(manager, set()).update(changed_paths)
        new["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
        _, stored = self._store(key, old, new, {manager: "Update"})
        return self._scale(stored) if sub == "scale" else stored

    @staticmethod
    def _scale(obj: dict) -> dict:
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "resourceVersion", "uid")},
                "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
                "status": {"replicas": obj.get("status", {}).get("replicas", 0)}}

    def delete(self, key) -> None:
        with self._cond:
            self._delete_one(key)

    def _delete_one(self, key) -> None:
        obj = self.objects.pop(key)
        self.owners.pop(key, None)
        self._bump(key[0], "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self.objects.items()):  # garbage collection of dependents
            refs = other["metadata"].get("ownerReferences") or []
            if other_key in self.objects and any(r.get("uid") == uid for r in refs):
                self._delete_one(other_key)

    def _log(self, ns: str | None, name: str | None, query: dict) -> tuple[int, str]:
        if ("Pod", ns or "", name or "") not in self.objects:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        text = self.pod_logs.get((ns or "", name or ""), "")
        tail = query.get("tailLines")
        if tail:
            text = "\n".join(text.splitlines()[-int(tail):]) + ("\n" if text else "")
        return 200, text

    # -- for the tests: playing controllers and the kubelet ----------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict:
        return self.objects[(kind, namespace, name)]

    def items(self, kind: str, namespace: str | None = None) -> list[dict]:
        return [o for (k, n, _), o in sorted(self.objects.items()) if k == kind and (namespace is None or n == namespace)]

    def set_status(self, kind: str, namespace: str, name: str, status_: dict, manager: str = "kube-controller") -> dict:
        with self._cond:
            return self._update((kind, namespace, name), {"status": status_}, manager, "status")

    def owner_of(self, kind: str, namespace: str, name: str, *path: str) -> list[str]:
        """The field managers that own `path` of the object."""
        return sorted(m for m, paths in self.owners.get((kind, namespace, name), {}).items() if tuple(path) in paths)


class Controller:
    """A controller a test plays (Kueue, kube-proxy...): `step()` every `period` seconds on its own thread
    until `close()`. A subclass sets its state, then calls this `__init__` last."""

    period = 0.05

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.step()

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def has_token(spec: dict, container: dict) -> bool:
    """Whether kubelet gives `container` the pod's service account token: the pod's automount (on unless
    `automountServiceAccountToken: false`), or a projected volume of the token that it mounts."""
    if spec.get("automountServiceAccountToken", True):
        return True
    tokens = {v["name"] for v in spec.get("volumes") or []
              if any("serviceAccountToken" in src for src in (v.get("projected") or {}).get("sources") or [])}
    return any(m["name"] in tokens for m in container.get("volumeMounts") or [])


class Kubelet:
    """Plays the Job controller and the kubelet against a KubeApi, on this machine: for each new Job a
    Pod (Pending, then Running), whose first container's command runs as a process here with the
    container's environment resolved as a kubelet does (values, `secretKeyRef`, `configMapKeyRef`,
    `envFrom` from the API's objects; `overrides` stand for what the node adds, such as a volume's
    path); its output becomes the pod's log, its exit the pod's phase and the Job's `succeeded` or
    `failed` count and condition."""

    def __init__(self, api: KubeApi, cwd: str, overrides: dict[str, str] | None = None,
                 as_users: bool = False, binds: tuple[str, ...] = (), token: str | None = None) -> None:
        """`as_users`: each container runs as its securityContext's user with its volumes laid out as kubelet
        lays them and its root file system read-only where set (tests/kubelet_sandbox.py); `binds`:
        host folders its pods reach at their paths (what a cluster offers them as services); `token`: a
        kubeconfig standing in for the service account's token, given (as KUBECONFIG, its folder bound) to
        the containers a kubelet would mount the token in (`has_token`)."""
        import sys
        import tempfile

        self.api, self.cwd, self.overrides = api, cwd, dict(overrides or {})
        self.as_users, self.binds, self.token = as_users, binds, token
        self.pods_dir = Path(tempfile.mkdtemp(prefix="mlyard-kubelet-")) if as_users else None
        image_path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # the "image" is this environment
        self.base_env = {"PATH": image_path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
                         "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        self.seen: set[str] = set()
        self.ending: set[str] = set()
        self.processes: dict[str, Any] = {}  # pod name -> Popen
        self.sidecar_logs: dict[tuple[str, str, str], str] = {}  # (namespace, pod, container) -> text
        self.sidecars: list[Any] = []  # every sidecar's Popen, ended at close() too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self._thread.start()

    def close(self) -> None:
        from mlyard.tasks.processes import stop_group

        self._stop.set()
        self._thread.join(10)
        for proc in [*self.processes.values(), *self.sidecars]:
            stop_group(proc, 5)
        if self.pods_dir is not None:
            import shutil

            shutil.rmtree(self.pods_dir, ignore_errors=True)

    def _loop(self) -> None:
        from mlyard.tasks.processes import stop_group

        while not self._stop.wait(0.1):
            for job in self.api.items("Job"):
                uid = job["metadata"]["uid"]
                if uid not in self.seen and not job["spec"].get("suspend"):  # a suspended Job has no pods yet
                    self.seen.add(uid)
                    threading.Thread(target=self._run_job, args=(job,), daemon=True).start()
            live = {p["metadata"]["name"] for p in self.api.items("Pod")}
            for pod_name, proc in list(self.processes.items()):
                if pod_name not in live and proc.poll() is None and pod_name not in self.ending:
                    self.ending.add(pod_name)  # deleted (with its Job): the kubelet ends it
                    threading.Thread(target=stop_group, args=(proc, 5), daemon=True).start()

    def resolve_env(self, namespace: str, container: dict) -> dict[str, str]:
        from kubelet_sandbox import resolve_env

        found = resolve_env(container, namespace, lambda kind, name: self.api.objects.get((kind, namespace, name)),
                            self.base_env)
        return {**found, **self.overrides}

    def lookup(self, ns: str, pod_name: str) -> Any:
        """What the pod's volumes read (kubelet_sandbox.PodSandbox): its namespace's Secrets and ConfigMaps."""
        return lambda kind, name: self.api.objects.get((kind, ns, name))

    def account(self, spec: dict, container: dict) -> tuple[dict[str, str], tuple[str, ...]]:
        """The environment and binds that stand for the service account's token, for a container that has it."""
        if self.token is None or not has_token(spec, container):
            return {}, ()
        return {"KUBECONFIG": self.token}, (os.path.dirname(self.token),)

    def _run_job(self, job: dict) -> None:
        """The Job controller: one pod, or for `completionMode: Indexed` one per index (each with
        JOB_COMPLETION_INDEX, the index annotation and hostname `<job>-<index>`), run in parallel; the Job
        is Complete when every index succeeded and Failed at its first failed pod, whose other pods it then
        deletes, as the controller does; a non-indexed Job's failed pod is first replaced up to `backoffLimit`
        times (the migration Job's retries while its databases start)."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        count = int(job["spec"].get("completions") or 1) if indexed else 1
        self.api.set_status("Job", ns, name, {"active": count, "startTime": _now()}, "kube-controller-manager")
        codes: dict[int, int] = {}
        lock = threading.Lock()

        retries = 0 if indexed else int(job["spec"].get("backoffLimit", 6))

        def one(index: int | None) -> None:
            code = self._run_pod(job, index)
            for _ in range(retries):  # a failed pod of a non-indexed Job is replaced, up to backoffLimit times
                if code != 0 and code is not None and ("Job", ns, name) in self.api.objects:
                    time.sleep(0.5)  # the controller's backoff (10 s, doubling, on a cluster)
                    code = self._run_pod(job, index)
            if code is None:
                return
            with lock:
                codes[index or 0] = code
                failed = sum(1 for c in codes.values() if c != 0)
                succeeded = len(codes) - failed
                done = failed > 0 or succeeded == count
                status = {"succeeded": succeeded, "failed": failed, "active": 0 if done else count - len(codes)}
                before = (self.api.objects.get(("Job", ns, name)) or {}).get("status", {})
                if "conditions" in before:  # decided by an earlier pod: the Job's end stays as it was
                    status.update(conditions=before["conditions"], completionTime=before.get("completionTime"))
                elif done:
                    status.update(conditions=[{"type": "Complete" if not failed else "Failed", "status": "True",
                                               "lastTransitionTime": _now()}], completionTime=_now())
                    if failed:
                        self._end_pods(ns, name)
                if ("Job", ns, name) in self.api.objects:
                    self.api.set_status("Job", ns, name, status, "kube-controller-manager")

        threads = [threading.Thread(target=one, args=(i if indexed else None,), daemon=True) for i in range(count)]
        for t in threads:
            t.start()

    def _end_pods(self, ns: str, job_name: str) -> None:
        from mlyard.tasks.processes import stop_group

        for pod in self.api.items("Pod", ns):
            if pod["metadata"].get("labels", {}).get("job-name") == job_name:
                proc = self.processes.get(pod["metadata"]["name"])
                if proc is not None and proc.poll() is None:
                    stop_group(proc, 5)

    def _waiting(self, ns: str, pod_name: str, container: dict, reason: str, message: str) -> None:
        """The pod stays Pending, its container waiting for `reason`, as on a node (no exit code)."""
        self.api.set_status("Pod", ns, pod_name, {"phase": "Pending", "containerStatuses": [{
            "name": container["name"], "ready": False, "restartCount": 0, "image": container.get("image", ""),
            "imageID": "", "state": {"waiting": {"reason": reason, "message": message}}}]}, "kubelet")

    def _sidecars(self, ns: str, pod_name: str, spec: dict, sandbox: Any) -> list[tuple[Any, threading.Thread]]:
        """The pod's sidecars (init containers with `restartPolicy: Always`), started before its containers,
        each in a PID namespace of its own (it sees none of the pod's other processes), its output kept as
        `sidecar_logs[(namespace, pod, container)]`. Other init containers are not played here."""
        import subprocess

        started = []
        for container in spec.get("initContainers") or []:
            if container.get("restartPolicy") != "Always":
                raise NotImplementedError("the emulated kubelet plays sidecar init containers only")
            env = self.resolve_env(ns, container)
            env["HOSTNAME"] = spec.get("hostname") or pod_name
            token_env, token_binds = self.account(spec, container)
            env.update(token_env)
            command = (container.get("command") or []) + (container.get("args") or [])
            if sandbox is not None:
                if not any(e.get("name") == "HOME" for e in container.get("env") or []):
                    env["HOME"] = "/"
                command = sandbox.command(container, command, env, self.cwd, (*self.binds, *token_binds),
                                          own_processes=True)
                env = {}
            proc = subprocess.Popen(command, env=env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
            self.sidecars.append(proc)
            key = (ns, pod_name, container["name"])

            def collect(proc=proc, key=key) -> None:
                for line in proc.stdout:
                    self.sidecar_logs[key] = self.sidecar_logs.get(key, "") + line

            reader = threading.Thread(target=collect, daemon=True)
            reader.start()
            started.append((proc, reader))
        return started

    @staticmethod
    def _end_sidecars(sidecars: list[tuple[Any, threading.Thread]]) -> None:
        """After the pod's containers have ended: its sidecars are sent SIGTERM (then SIGKILL), as kubelet does."""
        from mlyard.tasks.processes import stop_group

        for proc, reader in sidecars:
            stop_group(proc, 5)
            reader.join(5)

    def _run_pod(self, job: dict, index: int | None) -> int | None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = copy.deepcopy(job["spec"]["template"])
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": name,
                  "controller-uid": job["metadata"]["uid"]}
        annotations = {"batch.kubernetes.io/job-completion-index": str(index)} if index is not None else {}
        owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                  "controller": True}]
        spec = template["spec"]
        if index is not None:
            spec["hostname"] = f"{name}-{index}"
        try:
            pod = self.api.create("Pod", "v1", ns, {"metadata": {
                "generateName": f"{name}-{index}-" if index is not None else f"{name}-", "labels": labels,
                "annotations": annotations, "ownerReferences": owner}, "spec": spec}, "kube-controller-manager")
        except ApiError:  # refused (Pod Security): the controller's event is recorded, no pod ever exists
            return None
        return self.run_bound(ns, pod["metadata"]["name"], spec, index)

    def run_bound(self, ns: str, pod_name: str, spec: dict, index: int | None = None) -> int | None:
        """What a kubelet does with a pod bound to its node: its first container run to its end (None: it
        never started), its status reported as it goes."""
        import subprocess

        self.api.set_status("Pod", ns, pod_name, {"phase": "Pending"}, "kubelet")
        container = spec["containers"][0]
        try:
            env = self.resolve_env(ns, container)
        except RuntimeError as exc:
            return self._waiting(ns, pod_name, container, "CreateContainerConfigError", str(exc))
        env["HOSTNAME"] = spec.get("hostname") or pod_name  # what a kubelet sets
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        env.update(self.overrides)
        token_env, token_binds = self.account(spec, container)
        env.update(token_env)
        command = (container.get("command") or []) + (container.get("args") or [])
        sandbox = None
        if self.as_users:
            from kubelet_sandbox import PodSandbox

            assert self.pods_dir is not None
            try:
                sandbox = PodSandbox(self.pods_dir / pod_name, spec, self.lookup(ns, pod_name))
            except RuntimeError as exc:  # a volume's Secret or ConfigMap is missing: kubelet waits for it
                return self._waiting(ns, pod_name, container, "ContainerCreating", str(exc))
            if not any(e.get("name") == "HOME" for e in container.get("env") or []):
                env["HOME"] = "/"  # a user the image's /etc/passwd does not name, as the runtime sets it
            command = sandbox.command(container, command, env, self.cwd, (*self.binds, *token_binds))
            env = {}
        sidecars = self._sidecars(ns, pod_name, spec, sandbox)
        self.api.set_status("Pod", ns, pod_name, {"phase": "Running", "startTime": _now()}, "kubelet")
        try:
            proc = subprocess.Popen(command, env=env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        except OSError as exc:  # the container could not start: the pod fails with the reason
            self.api.pod_logs[(ns, pod_name)] = f"{exc}\n"
            code = 128
        else:
            self.processes[pod_name] = proc
            lines = []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                self.api.pod_logs[(ns, pod_name)] = "".join(lines)
            code = proc.wait()
        self._end_sidecars(sidecars)
        if sandbox is not None:
            sandbox.close()
        if ("Pod", ns, pod_name) in self.api.objects:
            phase = "Succeeded" if code == 0 else "Failed"
            self.api.set_status("Pod", ns, pod_name, {"phase": phase, "containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0, "image": container.get("image", ""),
                "imageID": "", "state": {"terminated": {"exitCode": code if code >= 0 else 128 - code,
                                                        "reason": "Completed" if code == 0 else "Error",
                                                        "finishedAt": _now()}}}]},
                "kubelet")
        return code

"""A small in-process Kubernetes API server for tests (there is no cluster here): namespaced
Deployments (whose pods are ready as soon as they are created), Services and HorizontalPodAutoscalers
kept in memory, with create (POST), read and list
(GET, label selectors), replace (PUT) and delete, answering as the API server does (404 and 409 as
Status objects). Every call is recorded in `calls` as (method, kind, name)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ROUTES = {  # path prefix -> (kind, apiVersion)
    "apis/apps/v1": {"deployments": ("Deployment", "apps/v1")},
    "api/v1": {"services": ("Service", "v1")},
    "apis/autoscaling/v2": {"horizontalpodautoscalers": ("HorizontalPodAutoscaler", "autoscaling/v2")},
}
PATH = re.compile(r"^/(apis/apps/v1|api/v1|apis/autoscaling/v2)/namespaces/([^/]+)/([a-z]+)(?:/([^/]+))?$")


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> object
        self.calls: list[tuple[str, str, str]] = []
        self._version = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                m = PATH.match(url.path)
                if not m or m.group(3) not in ROUTES[m.group(1)]:
                    return self._send(404, _status(404, "NotFound", f"no route {url.path}"))
                kind, api_version = ROUTES[m.group(1)][m.group(3)]
                ns, name = m.group(2), m.group(4)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake._lock:
                    status, doc = fake._serve(method, kind, api_version, ns, name, body,
                                              parse_qs(url.query).get("labelSelector", [""])[0])
                self._send(status, doc)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _serve(self, method, kind, api_version, ns, name, body, selector):
        key = (kind, ns, name)
        if method == "GET" and name is None:
            want = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
            items = [o for (k, n, _), o in sorted(self.objects.items()) if k == kind and n == ns
                     and all(o["metadata"].get("labels", {}).get(a) == b for a, b in want.items())]
            return 200, {"kind": f"{kind}List", "apiVersion": api_version, "metadata": {}, "items": items}
        if method == "POST":
            name = body["metadata"]["name"]
            key = (kind, ns, name)
            self.calls.append(("create", kind, name))
            if key in self.objects:
                return 409, _status(409, "AlreadyExists", f"{kind} {name} already exists")
            return 201, self._store(key, body, api_version, kind)
        if key not in self.objects:
            return 404, _status(404, "NotFound", f"{kind} {name} not found")
        if method == "GET":
            return 200, self.objects[key]
        if method == "PUT":
            self.calls.append(("replace", kind, name))
            return 200, self._store(key, body, api_version, kind)
        if method == "DELETE":
            self.calls.append(("delete", kind, name))
            del self.objects[key]
            return 200, _status(200, "Success", f"{kind} {name} deleted")
        return 405, _status(405, "MethodNotAllowed", method)

    def _store(self, key, body, api_version, kind) -> dict:
        self._version += 1
        obj = {**body, "apiVersion": api_version, "kind": kind}
        obj["metadata"] = {**body["metadata"], "namespace": key[1], "resourceVersion": str(self._version)}
        if kind == "Deployment":  # a cluster whose pods become ready at once
            n = body.get("spec", {}).get("replicas", 1)
            obj["status"] = {"replicas": n, "readyReplicas": n, "availableReplicas": n}
        self.objects[key] = obj
        return obj

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}

"""The controllers an endpoint on the API emulator (tests/kube_api.py) needs, played by the test: the
Deployment controller (a Deployment's pods are ready at once) and kube-proxy (each Service's cluster
IP and port forward, over real TCP, to a model server that runs here). The emulator must hand out
loopback cluster IPs (`KubeApi(service_ips="127.x.0.0/16")`) for the forwarders to bind them."""

from __future__ import annotations

import socket
import threading

from kube_api import Controller, KubeApi


class ServingControllers(Controller):
    def __init__(self, api: KubeApi, backend: tuple[str, int]):
        self.api, self.backend = api, backend
        self.bytes_in: dict[str, int] = {}  # Service name -> bytes its clients sent through it
        self._listeners: dict[str, socket.socket] = {}
        super().__init__()

    def close(self) -> None:
        super().close()
        for s in self._listeners.values():
            s.close()

    def step(self) -> None:
        for d in self.api.items("Deployment"):
            n = d["spec"].get("replicas", 1)
            if d.get("status", {}).get("readyReplicas") != n:
                self.api.set_status("Deployment", d["metadata"]["namespace"], d["metadata"]["name"],
                                    {"replicas": n, "readyReplicas": n, "availableReplicas": n})
        services = {s["metadata"]["name"]: s for s in self.api.items("Service")}
        for name, svc in services.items():
            if name not in self._listeners and svc["spec"].get("clusterIP") not in (None, "None"):
                self._listen(name, svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"])
        for name in set(self._listeners) - set(services):  # a deleted Service stops answering
            self._listeners.pop(name).close()

    def _listen(self, name: str, ip: str, port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(64)
        self._listeners[name] = s
        self.bytes_in[name] = 0
        threading.Thread(target=self._accept, args=(name, s), daemon=True).start()

    def _accept(self, name: str, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.backend, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, name), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: str | None) -> None:
        _pump(src, dst, lambda n: self.bytes_in.__setitem__(counted, self.bytes_in[counted] + n) if counted else None)


def _pump(src: socket.socket, dst: socket.socket, seen) -> None:
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

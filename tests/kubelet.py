"""The kubelet the cluster tests play where none can run (no container runtime here): it runs a pod's
containers as processes of this machine, as the pod's user with its volumes laid out as kubelet lays them
(tests/kubelet_sandbox.py), and reports what a kubelet reports of them. tests/kubelet_node.py's NodeKubelet
is one of Kubernetes' own control plane's nodes (tests/controlplane.py) built on it: everything else the
cluster tests meet (the API server, admission, the controllers, the scheduler) is Kubernetes' own."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def has_token(spec: dict, container: dict) -> bool:
    """Whether kubelet gives `container` the pod's service account token: the pod's automount (on unless
    `automountServiceAccountToken: false`), or a projected volume of the token that it mounts."""
    if spec.get("automountServiceAccountToken", True):
        return True
    tokens = {v["name"] for v in spec.get("volumes") or []
              if any("serviceAccountToken" in src for src in (v.get("projected") or {}).get("sources") or [])}
    return any(m["name"] in tokens for m in container.get("volumeMounts") or [])


class Kubelet:
    """What a node's kubelet does with a pod bound to it, on this machine (`run_bound`): its first
    container's command run as a process here with the container's environment resolved as a kubelet does
    (kubelet_sandbox.resolve_env; `overrides` stand for what the node adds), its sidecars beside it, its
    output the pod's log, its exit the pod's phase. A subclass finds the pods (`_loop`): tests/kubelet_node.py's
    NodeKubelet, those the control plane's scheduler binds to its Node."""

    def __init__(self, api: Any, cwd: str, overrides: dict[str, str] | None = None,
                 as_users: bool = False, binds: tuple[str, ...] = (), token: str | None = None,
                 images: dict[str, str] | None = None) -> None:
        """`images`: an image name -> the folder that is its file system here (a checkout of another release, with
        its own environment in `.venv`: tests/infra/test_upgrade.py); any other image is `cwd` and this
        environment. `as_users`: each container runs as its securityContext's user with its volumes laid out as kubelet
        lays them and its root file system read-only where set (tests/kubelet_sandbox.py); `binds`:
        host folders its pods reach at their paths (what a cluster offers them as services); `token`: a
        kubeconfig standing in for the service account's token, given (as KUBECONFIG, its folder bound) to
        the containers a kubelet would mount the token in (`has_token`)."""
        import sys
        import tempfile

        self.api, self.cwd, self.overrides = api, cwd, dict(overrides or {})
        self.as_users, self.binds, self.token, self.images = as_users, binds, token, dict(images or {})
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
        raise NotImplementedError  # the subclass's: which pods are this node's

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

    def image(self, container: dict, env: dict[str, str]) -> str:
        """The folder that is `container`'s image here (see `images`), its environment's `python` first on the
        PATH of `env`."""
        tree = self.images.get(container.get("image", ""))
        if tree is None:
            return self.cwd
        env["PATH"] = f"{tree}/.venv/bin:{env.get('PATH', '')}"
        return tree

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
                raise NotImplementedError("the played kubelet runs sidecar init containers only")
            env = self.resolve_env(ns, container)
            env["HOSTNAME"] = spec.get("hostname") or pod_name
            token_env, token_binds = self.account(spec, container)
            env.update(token_env)
            command = (container.get("command") or []) + (container.get("args") or [])
            cwd = self.image(container, env)
            if sandbox is not None:
                if not any(e.get("name") == "HOME" for e in container.get("env") or []):
                    env["HOME"] = "/"
                command = sandbox.command(container, command, env, cwd, (*self.binds, *token_binds),
                                          own_processes=True)
                env = {}
            proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
        cwd = self.image(container, env)
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
            command = sandbox.command(container, command, env, cwd, (*self.binds, *token_binds))
            env = {}
        sidecars = self._sidecars(ns, pod_name, spec, sandbox)
        self.api.set_status("Pod", ns, pod_name, {"phase": "Running", "startTime": _now()}, "kubelet")
        try:
            proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        except OSError as exc:  # the container could not start: the pod fails with the reason
            self.api.pod_logs[(ns, pod_name)] = f"{exc}\n"
            code = 128
        else:
            self.processes[pod_name] = proc
            lines: list[str] = []
            times = self.api.pod_log_times.setdefault((ns, pod_name), []) if hasattr(self.api, "pod_log_times") else []
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                times.append(time.time())  # kept with the line, as the container runtime stamps it
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

"""Running a built image's command as a container runtime with a pod's securityContext would, on a machine
where no container runtime can run (`podman run` needs cgroups this machine does not give it):

- the image's file system is buildah's working container of it (`buildah from` + `buildah mount`), in a
  mount namespace of its own (`unshare -m`), made **read-only** (a read-only bind remount: what
  `readOnlyRootFilesystem: true` gives) with only the writable paths the manifests mount (an emptyDir as a
  tmpfs, group-owned by the pod's fsGroup as kubelet makes it) and any host folders bound in read-only;
- `/proc`, `/dev` and `/sys` are the host's (no PID or network namespace: its servers listen on this
  machine's 127.0.0.1);
- the command runs chrooted as the image's user (`USER 10001:10001`) with the image's environment
  (`ENV`), the process's own variables over it, and nothing of this process's environment.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path


class Container:
    def __init__(self, image: str, writable: dict[str, int | None] | None = None,
                 binds: dict[str, str] | None = None, shared: dict[str, str] | None = None):
        """`writable`: path -> fsGroup (None: root's, mode 1777) of the tmpfs mounted there; `binds`: host path ->
        path in the container, read-only; `shared`: host path -> path, read-write (a volume two of the pod's
        containers mount: each command here is a container of its own)."""
        self.image = image
        self.writable = {"/tmp": None, **(writable or {})}
        self.binds = dict(binds or {})
        self.shared = dict(shared or {})
        info = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", image], check=True,
                                         capture_output=True, text=True).stdout)
        self.config = info["OCIv1"]["config"]
        self.ctr = subprocess.run(["buildah", "from", "--pull-never", image], check=True, capture_output=True,
                                  text=True).stdout.strip()
        self.root = subprocess.run(["buildah", "mount", self.ctr], check=True, capture_output=True,
                                   text=True).stdout.strip()

    @property
    def user(self) -> str:
        return self.config.get("User") or "0:0"

    def command(self, argv: list[str] | None = None, env: dict[str, str] | None = None,
                user: str | None = None) -> list[str]:
        """The host command that runs `argv` (default: the image's entry point and command) in the container,
        as the image's user or `user` (a container's `runAsUser`)."""
        argv = argv if argv is not None else [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]
        image_env = dict(e.split("=", 1) for e in self.config.get("Env") or [])
        variables = [f"{k}={v}" for k, v in {**image_env, **(env or {})}.items()]
        r = shlex.quote(self.root)
        lines = ["set -e", f"mount --bind {r} {r}"]
        for path, group in self.writable.items():
            options = f"mode=2775,uid=0,gid={group}" if group is not None else "mode=1777"
            lines += [f"mkdir -p {r}{path}", f"mount -t tmpfs -o {options} tmpfs {r}{path}"]
        for host, path in self.binds.items():
            lines += [f"mkdir -p {r}{path}", f"mount --bind {shlex.quote(host)} {r}{path}",
                      f"mount -o remount,bind,ro {r}{path}"]
        for host, path in self.shared.items():
            lines += [f"mkdir -p {r}{path}", f"mount --bind {shlex.quote(host)} {r}{path}"]
        lines += [f"mount --rbind /{d} {r}/{d}" for d in ("proc", "dev", "sys")]
        lines += [f"mount -o remount,bind,ro {r}",
                  f"cd {r}",
                  f"exec chroot --userspec={user or self.user} {r} /usr/bin/env -i "
                  + " ".join(shlex.quote(v) for v in variables) + " " + " ".join(shlex.quote(a) for a in argv)]
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines)]

    def run(self, argv: list[str] | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv, env), capture_output=True, text=True, timeout=timeout)

    def start(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              user: str | None = None) -> subprocess.Popen:
        if log is None:
            return subprocess.Popen(self.command(argv, env, user), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        with open(log, "w") as out:  # the child holds its own copy
            return subprocess.Popen(self.command(argv, env, user), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def close(self) -> None:
        subprocess.run(["buildah", "umount", self.ctr], capture_output=True)
        subprocess.run(["buildah", "rm", self.ctr], capture_output=True)

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

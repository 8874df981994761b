"""How the played kubelet (tests/kubelet.py's `Kubelet(as_users=True)`, which tests/kubelet_node.py runs on
the control plane's nodes) runs a container as kubelet and the container runtime would, as far as this host
allows (the tests run as root):

- **its environment** as kubelet makes it from the namespace's Secrets and ConfigMaps (`resolve_env`);

- **its user**: the container's or the pod's `runAsUser` / `runAsGroup` (the images' user, 10001, when
  the pod names none), with the pod's `fsGroup` and `supplementalGroups` as supplementary groups;
- **its volumes, laid out as kubelet lays them** in a folder of the pod's own: a Secret's or ConfigMap's
  keys (or `items`) as files with the volume's `defaultMode`, owned by root and, with `fsGroup`, by that
  group with group read (`files_as_kubelet_lays_them`); emptyDir world-writable (and the fsGroup's, set-gid);
  ephemeral and persistentVolumeClaim volumes root's, 0755, unless `fsGroup` makes them the group's (a
  run that writes there without it fails as it would on a node); each mounted at its `mountPath`, read-only
  where the mount says so;
- **its root file system**: the host's, through an overlay of the pod's own (writes land in a tmpfs and
  never reach the host), remounted read-only when `readOnlyRootFilesystem` is set; /proc, /sys and /dev are
  the host's. What the cluster offers as network services (here: folders of the test, such as a database's)
  is bound in at its path (`binds`).

The "image" is this host's environment: the test's checkout and its virtual environment, bound read-only at
its path over whatever volume covers it (a clone under /tmp, below a pod's /tmp emptyDir). Where the
folders on the way to its interpreter are closed to others (pyenv's under a 0700 /root), the pod's overlay
opens them for traversal (`o+x`, in the overlay only), as an image's interpreter is its user's to run.

It is a mount namespace (`unshare -m`), an overlay of `/`, bind mounts and `chroot --userspec`: no cgroups,
no network namespace (a pod reaches 127.0.0.1 as this host does), no seccomp; the same
`mount`/`chroot` steps tests/images/container.py uses for the built images.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable

IMAGE_USER = 10001  # every mlyard image's USER


def files_as_kubelet_lays_them(pod: dict, volume: dict) -> tuple[int, int, int]:
    """(mode, uid, gid) of a Secret or ConfigMap volume's files as kubelet writes them: the volume's
    `defaultMode` (0644 when unset), owned by root; with the pod's `fsGroup`, group-owned by it and made
    group-readable (kubelet's SetVolumeOwnership, read-only mask 0440)."""
    source = volume.get("secret") or volume.get("configMap") or {}
    mode, gid = source.get("defaultMode", 0o644), 0
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None:
        mode, gid = mode | 0o440, fs_group
    return mode, 0, gid


def resolve_env(container: dict, namespace: str, lookup: Callable[[str, str], dict | None],
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment as kubelet makes it from `lookup(kind, name)` (the namespace's Secrets and
    ConfigMaps): `envFrom` first, then `env` in order, a `$(NAME)` of a variable set before it expanded and
    `$$` a `$`, the downward API's namespace; a missing source that is not optional fails the container
    (CreateContainerConfigError)."""
    env = dict(base or {})
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        obj = lookup(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise RuntimeError(f"{kind} {ref['name']} not found (CreateContainerConfigError)")
        data = obj.get("data") or {}
        env.update({k: base64.b64decode(v).decode() if kind == "Secret" else v for k, v in data.items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m[0] == "$$" else
                                    env.get(m[1], m[0]), str(e["value"]))
            continue
        ref = e.get("valueFrom", {})
        if "fieldRef" in ref:  # the downward API: what the pod's own metadata says
            field = ref["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.namespace": namespace, "spec.serviceAccountName": "default"}.get(field, "")
            continue
        key_ref = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
        if key_ref:
            kind = "Secret" if "secretKeyRef" in ref else "ConfigMap"
            value = (lookup(kind, key_ref["name"]) or {}).get("data", {}).get(key_ref["key"])
            if value is None:
                if key_ref.get("optional"):
                    continue
                raise RuntimeError(f"{kind} {key_ref['name']}/{key_ref['key']} not found")
            env[e["name"]] = base64.b64decode(value).decode() if kind == "Secret" else value
    return env


def identity(pod: dict, container: dict) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) the container runs with."""
    pod_sc, sc = pod.get("securityContext") or {}, container.get("securityContext") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", IMAGE_USER))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", IMAGE_USER if uid == IMAGE_USER else 0))
    groups = [g for g in [pod_sc.get("fsGroup"), *(pod_sc.get("supplementalGroups") or [])] if g is not None]
    return uid, gid, groups


class PodSandbox:
    """One pod's folder (its volumes, its overlay's mount point) and the command that runs a container in it."""

    def __init__(self, folder: Path, pod: dict, lookup: Callable[[str, str], dict | None]):
        """`lookup(kind, name)`: a Secret or ConfigMap of the pod's namespace (None when there is none)."""
        self.folder, self.pod, self.lookup = folder, pod, lookup
        folder.mkdir(parents=True)
        folder.chmod(0o711)
        self.volumes = {v["name"]: self._volume(v) for v in pod.get("volumes") or []}

    def _volume(self, volume: dict) -> Path:
        path = self.folder / "volumes" / volume["name"]
        path.mkdir(parents=True)
        fs_group = (self.pod.get("securityContext") or {}).get("fsGroup")
        if "secret" in volume or "configMap" in volume:
            kind, source = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
            obj = self.lookup(kind, source.get("secretName") or source.get("name"))
            if obj is None and not source.get("optional"):
                raise RuntimeError(f"{kind} {source.get('secretName') or source.get('name')} not found "
                                   "(the pod stays ContainerCreating)")
            data = {k: base64.b64decode(v) if kind == "Secret" else v.encode()
                    for k, v in ((obj or {}).get("data") or {}).items()}
            mode, uid, gid = files_as_kubelet_lays_them(self.pod, volume)
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:  # as kubelet: an optional source's missing key is left out, else no pod
                    if source.get("optional"):
                        continue
                    raise RuntimeError(f"{kind} {source.get('secretName') or source.get('name')} has no key "
                                       f"{item['key']} (the pod stays ContainerCreating)")
                file = path / item["path"]
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(data[item["key"]])
                os.chown(file, uid, gid)
                file.chmod(item.get("mode", mode) | (0o440 if fs_group is not None else 0))
            path.chmod(0o755)
        elif "emptyDir" in volume:
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            path.chmod(0o2777 if fs_group is not None else 0o777)
        elif "projected" in volume:  # a service account's token, the cluster's CA, the namespace: the API's
            for source in volume["projected"]["sources"]:  # where it gives them (a real one's), else stand-ins
                items = self._projected(source)
                for name, text in items:
                    (path / name).write_text(text)
                    (path / name).chmod(volume["projected"].get("defaultMode", 0o644))
            path.chmod(0o755)
        else:  # ephemeral, persistentVolumeClaim: a fresh file system's root, until fsGroup makes it the group's
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            path.chmod(0o2775 if fs_group is not None else 0o755)
        return path

    def _projected(self, source: dict) -> list[tuple[str, str]]:
        """A projected volume's files of one source: `lookup("ServiceAccountToken", account)` (a token the API
        issued for this pod), a ConfigMap's keys, `lookup("DownwardAPI", fieldPath)`; "emulated ..." where
        the lookup has none (the emulator's)."""
        account = str(self.pod.get("serviceAccountName", "default"))
        if "serviceAccountToken" in source:
            token = self.lookup("ServiceAccountToken", account)
            return [(source["serviceAccountToken"]["path"] if token else "token",
                     token["token"] if token else f"emulated-token-of-{account}")]
        if "configMap" in source:
            data = (self.lookup("ConfigMap", source["configMap"]["name"]) or {}).get("data") or {}
            return [(i["path"], data.get(i["key"], "emulated " + i["path"])) for i in source["configMap"].get("items") or []]
        return [(i["path"], (self.lookup("DownwardAPI", i.get("fieldRef", {}).get("fieldPath", "")) or {}).get(
            "value", "emulated " + i["path"])) for i in (source.get("downwardAPI") or {}).get("items") or []]

    def command(self, container: dict, argv: list[str], env: dict[str, str], cwd: str,
                binds: tuple[str, ...] = (), own_processes: bool = False) -> list[str]:
        """`argv` as `container` of this pod runs it (see the module). `own_processes`: in a PID namespace of
        its own, with a /proc that shows only its processes (a container's, beside the pod's others; the
        command is its PID 1, as in a container without an init)."""
        uid, gid, groups = identity(self.pod, container)
        root, scratch = self.folder / container["name"] / "root", self.folder / container["name"] / "scratch"
        root.mkdir(parents=True)
        scratch.mkdir()
        q = shlex.quote
        lines = ["set -e", f"mount -t tmpfs -o mode=0755 tmpfs {q(str(scratch))}",
                 f"mkdir {q(str(scratch))}/upper {q(str(scratch))}/work",
                 f"mount -t overlay overlay -o lowerdir=/,upperdir={q(str(scratch))}/upper,workdir={q(str(scratch))}/work "
                 f"{q(str(root))}"]
        lines += [f"mount --rbind /{d} {q(str(root))}/{d}" for d in ("sys", "dev")]
        lines.append(f"mount -t proc proc {q(str(root))}/proc" if own_processes else f"mount --rbind /proc {q(str(root))}/proc")
        for folder in _closed_on_the_way(os.path.realpath(sys.executable), cwd):
            lines.append(f"chmod o+x {q(str(root) + folder)}")
        for mount in container.get("volumeMounts") or []:  # a symlink on the way (/var/run) resolved in the root
            target = q(str(root) + os.path.realpath(mount["mountPath"]))
            lines += [f"mkdir -p {target}", f"mount --bind {q(str(self.volumes[mount['name']]))} {target}"]
            if mount.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {target}")
        for path in binds:  # the cluster's services that are folders here (a database's), over the volumes
            inside = q(str(root) + os.path.realpath(path))
            lines += [f"mkdir -p {inside}", f"mount --bind {q(path)} {inside}"]
        if os.path.realpath(cwd) != "/":  # the "image": the checkout and its environment, over a volume at its
            image = q(str(root) + os.path.realpath(cwd))  # path (a clone under /tmp)
            lines += [f"mkdir -p {image}", f"mount --bind {q(cwd)} {image}", f"mount -o remount,bind,ro {image}"]
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            lines.append(f"mount -o remount,ro {q(str(root))}")
        userspec = f"--userspec={uid}:{gid}" + (f" --groups={','.join(map(str, groups))}" if groups else "")
        variables = " ".join(q(f"{k}={v}") for k, v in env.items())
        lines.append(f"exec chroot {userspec} {q(str(root))} /usr/bin/env -i -C {q(cwd)} {variables} "
                     + " ".join(q(a) for a in argv))
        pid = ["-p", "-f", "--kill-child"] if own_processes else []
        return ["unshare", "-m", *pid, "--propagation", "private", "sh", "-c", "\n".join(lines)]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _closed_on_the_way(*paths: str) -> list[str]:
    """The folders above `paths` that others may not traverse."""
    closed = []
    for path in paths:
        for folder in Path(path).parents:
            if folder != Path("/") and not os.stat(folder).st_mode & 0o001 and str(folder) not in closed:
                closed.append(str(folder))
    return closed

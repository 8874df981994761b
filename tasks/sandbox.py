"""Code a user brought, run in a sandbox that holds nothing of the platform (bubblewrap, Debian's `bwrap`).

A sandbox has its own user, mount, PID, IPC, UTS and network namespaces and no capability: it sees the
system's programs and libraries read-only, the Python it runs with (read-only), the folders its run
names (read-only where it only reads, read-write where it writes its outputs), and a private `/tmp`
(a folder of the run's, bound there, so large temporary files go to disk). It sees no other process
(its own `/proc`), no socket or file of the platform (the stack's home but for the run's own folders,
the platform's source, other projects' storage) and, unless its spec asks for one, no network but its
own loopback. It dies with its parent: bubblewrap ends the whole sandbox (its PID namespace) when the
process that started it dies, `kill -9` included. Signals sent to its process group (a run being
stopped) reach the code inside as before.

Where user namespaces are not to be had (most containers' seccomp profiles refuse them; a pod is the
sandbox there), `refusal()` says why in one line: the caller logs it, or fails before the code starts
when Settings.sandbox is `required`. Landlock (tasks/confine.py) stays inside as a second wall.

In a flow-run pod on a cluster, the pod's `code-host` container is the sandbox (tasks/code_host.py): `wrap`
hands the command to it, and the folders its walls name are shared with the pod's group.

The standard library, mlyard.core.environment and mlyard.core.errors alone: a model server's replica and a notebook's
keeper can import it.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mlyard.core.environment import code_host
from mlyard.core.errors import SandboxUnavailable

# what of /etc programs need (users' names, name resolution, certificates, the dynamic linker, time):
# never the whole folder (the host's shadow file, its TLS keys: a root-run stack's sandbox is still uid 0 to
# the files it sees, so what is bound must hold nothing that mode bits alone keep)
ETC = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf", "localtime", "timezone",
       "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "ld.so.cache", "ld.so.conf",
       "ld.so.conf.d", "alternatives", "mime.types", "os-release", "debian_version", "matplotlibrc", "fonts",
       "pip.conf", "xdg")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYS = ("/sys/devices/system/cpu", "/sys/fs/cgroup")  # CPU counts and limits (torch, OpenBLAS, joblib read them)
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri")
INSIDE_TMP = "/tmp"


@dataclass(frozen=True)
class Walls:
    """What one sandbox lets its code see, each folder at its own path: `read` read-only, `write`
    read-write (a folder inside a `read` one may be written: the narrower bind wins), `tmp` a folder bound
    read-write at its path and at /tmp (a fresh tmpfs at /tmp without it), `network` the host's network
    (else only its own loopback), `chdir` where the code starts."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    tmp: str | None = None
    network: bool = False
    chdir: str | None = None
    hostname: str | None = None  # its own (a local multi-node training's nodes: torch tells nodes apart by it)
    hosts: str | None = None  # a file bound at /etc/hosts instead of the machine's
    devices: tuple[str, ...] = field(default_factory=lambda: tuple(
        d for pattern in GPU_DEVICES for d in sorted(glob.glob(pattern))))


def bwrap() -> str | None:
    """bubblewrap's path, if installed."""
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.path.exists(p)), None)


def refusal() -> str | None:
    """None when a sandbox can start here (bubblewrap, or a pod's code-host container); else one line
    saying why not and what to do."""
    return None if code_host() is not None else _bwrap_refusal()


@functools.lru_cache(maxsize=1)
def _bwrap_refusal() -> str | None:
    program = bwrap()
    if program is None:
        return ("bubblewrap (bwrap) is not installed: install Debian's bubblewrap package "
                "(apt-get install bubblewrap) to run user code in a sandbox")
    try:
        probe = subprocess.run([program, *_namespaces(network=False), "--ro-bind", "/", "/", "true"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start: {exc}"
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["exit code %d" % probe.returncode])[-1]
        return f"this machine gives bubblewrap no user namespaces ({said}): user code cannot run in a sandbox here"
    return None


def chosen(mode: str, what: str) -> tuple[bool, str | None]:
    """Whether code starts in a sandbox under Settings.sandbox's `mode` (auto, required, off), and the line
    its log gets where it cannot; SandboxUnavailable, naming `what` was not started, where one is required
    and none can start here. The one place that reads the mode."""
    if mode == "off":
        return False, None
    reason = refusal()
    if reason is None:
        return True, None
    if mode == "required":
        raise SandboxUnavailable(f"MLYARD_SANDBOX is 'required' and {reason}: {what} was not started")
    return False, (f"mlyard: no sandbox: {reason}; {what} runs with the platform's view of this machine "
                   "(MLYARD_SANDBOX=required refuses such runs)")


def _namespaces(network: bool) -> list[str]:
    return ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *([] if network else ["--unshare-net"]), "--die-with-parent", "--cap-drop", "ALL"]


def interpreter_folders(*pythons: str) -> list[str]:
    """What running each Python needs to read: its environment (a venv's folder) and the installation
    under it (sys.base_prefix), found from the interpreter's own files, not by running it."""
    found = [sys.prefix, sys.base_prefix]
    for python in pythons:
        env = Path(python).parent.parent
        found.append(str(env))
        cfg = env / "pyvenv.cfg"
        if cfg.is_file():  # a venv: its `home` is the installation's bin folder
            for line in cfg.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    found.append(str(Path(value.strip()).parent))
        found.append(str(Path(os.path.realpath(python)).parent.parent))
    return _outermost(found)


def _outermost(paths: Iterable[str]) -> list[str]:
    """`paths` (real, existing) without those inside another of them."""
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)})
    out: list[str] = []
    for path in real:
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out):
            out.append(path)
    return out


def wrap(argv: list[str], walls: Walls) -> list[str]:
    """`argv` started in a sandbox with `walls` (SandboxUnavailable when none can start here). In a pod
    with a code-host container, `argv` started there (tasks/code_host.py), `walls`' folders shared with it."""
    exchange = code_host()
    if exchange is not None:
        _share(walls)
        host = str(Path(__file__).resolve().parent / "code_host.py")
        return [sys.executable, "-I", host, "run", str(exchange), os.path.realpath(walls.chdir or "/"), "--", *argv]
    reason = refusal()
    if reason is not None:
        raise SandboxUnavailable(reason)
    args = [bwrap() or "bwrap", *_namespaces(walls.network)]
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for name in ETC:
        given = walls.hosts if name == "hosts" and walls.hosts else f"/etc/{name}"
        args += ["--ro-bind-try", given, f"/etc/{name}"]
    if walls.hostname:
        args += ["--hostname", walls.hostname]
    for path in SYS:
        args += ["--ro-bind-try", path, path]
    for device in walls.devices:
        args += ["--dev-bind-try", device, device]
    args += ["--bind", walls.tmp, INSIDE_TMP] if walls.tmp else ["--tmpfs", INSIDE_TMP]
    write = [*walls.write, *([walls.tmp] if walls.tmp else [])]
    # system folders first, then the run's, outer before inner, so that a narrower bind (a writable output
    # folder inside the read-only scratch) is laid over the wider one
    binds = sorted([(os.path.realpath(p), "--ro-bind") for p in walls.read if os.path.exists(p)]
                   + [(os.path.realpath(p), "--bind") for p in write if os.path.exists(p)],
                   key=lambda b: (b[0].count("/"), b[0]))
    for path, how in binds:
        if how == "--ro-bind" and (path == "/usr" or path.startswith("/usr/")):
            continue  # there already
        args += [how, path, path]
    if walls.chdir:
        args += ["--chdir", os.path.realpath(walls.chdir)]
    return [*args, "--", *argv]


def _share(walls: Walls) -> None:
    """`walls`' folders opened to the pod's group (the code host's user is in it, the flow's files are its
    own): the way to each, read (and list) where its code reads, write where it writes."""
    mine = os.geteuid()
    writes = [*walls.write, *([walls.tmp] if walls.tmp else [])]
    for path in [p for p in [*walls.read, *writes] if os.path.exists(p)]:
        for folder in reversed(Path(os.path.realpath(path)).parents):
            st = os.stat(folder)
            if st.st_uid == mine and not st.st_mode & stat.S_IXGRP:
                os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)
    for path in walls.read:
        real = os.path.realpath(path)
        if os.path.isdir(real) and os.stat(real).st_uid == mine:
            os.chmod(real, stat.S_IMODE(os.stat(real).st_mode) | stat.S_IRGRP | stat.S_IXGRP)
    for path in writes:
        for top, dirs, files in os.walk(os.path.realpath(path)):
            for name in [".", *dirs, *files]:
                st = os.lstat(os.path.join(top, name))
                if st.st_uid == mine and not stat.S_ISLNK(st.st_mode):
                    extra = stat.S_IRWXG | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else stat.S_IRGRP | stat.S_IWGRP
                    os.chmod(os.path.join(top, name), stat.S_IMODE(st.st_mode) | extra)


def child_env(env: dict[str, str], walls: Walls) -> dict[str, str]:
    """`env` as the sandbox's code sees it: its temporary folder (also at /tmp) is its HOME as well, the
    user's own not being there."""
    tmp = os.path.realpath(walls.tmp) if walls.tmp else INSIDE_TMP
    return {**env, "TMPDIR": tmp, "HOME": tmp}


# -- what a sandbox leaves, taken as data ------------------------------------------------------------

def as_data(folder: Path) -> list[str]:
    """Make what user code left in `folder` safe to read from outside, once that code has ended: a link
    that leads outside `folder` (or nowhere) is removed, and so is anything that is neither a file, a folder
    nor such a link (a FIFO would hold its reader, a socket or a device is no output). Returns what was
    removed, relative to `folder`, for the run's log: nothing outside `folder` is then ever copied."""
    root = os.path.realpath(folder)
    removed: list[str] = []
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if (target == root or target.startswith(root + "/")) and os.path.exists(target):
                    continue
                why = f"a link to {os.readlink(path)}, outside the folder"
            elif stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            else:
                why = "neither a file nor a folder"
            os.unlink(path)
            removed.append(f"{os.path.relpath(path, root)} ({why})")
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return removed


def around_platform(write: list[str], network: bool, chdir: str, read: Iterable[str] = ()) -> Walls:
    """The walls of platform code running a user's (a pipeline's runner, a notebook's JupyterLab, a model
    server): the platform's packages and Pythons read-only and `read` too, `write` read-write, the first of
    them holding its /tmp."""
    tmp = Path(write[0]) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return Walls(read=(*platform_code(), *interpreter_folders(sys.executable), *read), write=tuple(write),
                 tmp=str(tmp), network=network, chdir=chdir)


def platform_code() -> list[str]:
    """The platform's package, wherever it is installed: a sandbox that runs platform code around a user's
    (a pipeline's components, a served model) sees it read-only, never the checkout around it (where a home
    may lie). In site-packages that is the `mlyard` folder; in a checkout, `mlyard/` and the part folders
    its links name (`mlyard/tasks` is `tasks/`)."""
    package = Path(__file__).absolute().parent.parent
    return [str(package), *sorted(str(p.resolve()) for p in package.iterdir() if p.is_symlink() and p.is_dir())]

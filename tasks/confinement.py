"""The walls around a training's entry point: its sandbox (tasks/sandbox.py: namespaces, only its run's
folders, no capability, dying with its flow) and, inside it, Landlock (tasks/confine.py) as a second wall
where the kernel has it. Settings.sandbox and Settings.script_confinement say how strict each is."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlyard.core.environment import code_host
from mlyard.core.errors import TrainingFailed
from mlyard.tasks import sandbox
from mlyard.tasks.processes import not_dumpable

Workdirs = Any  # tasks/launch.py's Workdirs (which imports this module): a run's folders

Invocation = tuple[list[str], dict[str, str]]

POD_SECRETS = ("/var/run/secrets", "/run/secrets")  # the settings Secret, the service account's token

UNCONFINED = ("mlyard: this kernel has no Landlock (Linux 5.13 or newer): the script runs unconfined, and can read "
              "what the flow can (MLYARD_SCRIPT_CONFINEMENT=required refuses such runs)")


@dataclass(frozen=True)
class Confinement:
    """What a user's entry point is kept from: everything but its run's folders (`sandbox`:
    Settings.sandbox) and, with Landlock, the stack's `home` (and, in a pod, the mounted Secrets) but for
    what the run itself uses (`mode`: Settings.script_confinement). `network`: the spec asks for one."""

    home: Path
    mode: str = "auto"
    sandbox: str = "off"
    network: bool = False

    @classmethod
    def of(cls, settings: Any, network: bool = False) -> "Confinement":
        """As the settings say (mlyard.core.settings.Settings)."""
        return cls(settings.home_dir, settings.script_confinement, settings.sandbox, network)


def confined(invocations: list[Invocation], dirs: Workdirs, python: str,
             confinement: Confinement) -> tuple[list[Invocation], list[str]]:
    """Each (argv, env) started inside its walls, and the lines the run's log gets about them (a wall
    this machine cannot raise). TrainingFailed, before anything starts, where a wall is `required` and
    cannot be raised."""
    notices: list[str] = []
    tmp = dirs.model.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    sandboxed, notice = walled_or_fail(confinement.sandbox, "the script")
    notices += [notice] if notice else []
    # inside bubblewrap /tmp is the run's own: Landlock opens it, though a home under /tmp then lies open to
    # Landlock (the sandbox shows nothing of it but the run's folders); a pod's code host shares the pod's
    own_tmp = sandboxed and code_host() is None
    walled = _landlocked(invocations, dirs, python, confinement, notices, also=["/tmp"] if own_tmp else [])
    if not sandboxed:
        return walled, notices
    several = len(invocations) > 1
    if several and not confinement.network:
        notices.append("mlyard: the nodes of this training meet on this machine's loopback, so their sandboxes "
                       "share its network")
    walls = sandbox.Walls(read=tuple(_readable(dirs, python)), tmp=str(tmp), chdir=str(dirs.source),
                          write=tuple(str(d) for d in (dirs.model, dirs.checkpoint, dirs.tensorboard)),
                          network=confinement.network or several)
    if not several:
        return [(sandbox.wrap(argv, walls), sandbox.child_env(env, walls)) for argv, env in walled], notices
    # each node a host of its own, as pods are (torch's rendezvous tells nodes apart by their fully qualified
    # name and PID, and every sandbox's PIDs start at 1), each at an address of the loopback (127.0.1.N)
    hosts = tmp.parent / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(
        f"127.0.1.{n + 1} node-{n}.mlyard node-{n}\n" for n in range(len(walled))))
    return [(sandbox.wrap(argv, replace(walls, hostname=f"node-{n}", hosts=str(hosts))), sandbox.child_env(env, walls))
            for n, (argv, env) in enumerate(walled)], notices


def _readable(dirs: Workdirs, python: str) -> list[str]:
    """What a script reads: its source, datasets (and the file a single-file dataset's link names) and input
    checkpoint, the Pythons it runs with, and the Landlock launcher."""
    from mlyard.tasks import confine, sandbox

    found = [str(dirs.source), *(str(d) for d in dirs.datasets.values()), os.path.realpath(confine.__file__)]
    if dirs.checkpoint_input is not None:
        found.append(str(dirs.checkpoint_input))
    scratch = Path(os.path.realpath(dirs.model.parent))
    for folder in dirs.datasets.values():  # tasks/training.py's as_folder: a local file, by a link of ours in
        real = Path(os.path.realpath(folder))  # the run's scratch (links in a folder the user named: not followed)
        if real.is_dir() and scratch in real.parents:
            found += [os.path.realpath(e.path) for e in os.scandir(real) if e.is_symlink()]
    return found + sandbox.interpreter_folders(python, sys.executable)


def _landlocked(invocations: list[Invocation], dirs: Workdirs, python: str, confinement: Confinement,
                notices: list[str], also: list[str]) -> list[Invocation]:
    """Each (argv, env) started through the Landlock launcher, its temporary files in the run's scratch
    folder; the flow's own process made non-dumpable, so that the script (the same user, in a pod without
    the capabilities to override it) cannot read its environment or memory through /proc."""
    from mlyard.tasks import confine

    if confinement.mode == "off":
        return invocations
    if confinement.mode == "auto" and confine.abi_version() < 1:
        notices.append(UNCONFINED)
        return invocations
    hide = [str(confinement.home), *(p for p in POD_SECRETS if os.path.isdir(p))]
    scratch = dirs.model.parent
    env_root = Path(python).parent.parent
    hidden = [os.path.realpath(h) for h in hide]
    # what the run uses inside a hidden folder (elsewhere it is reachable anyway: a rule on the interpreter's
    # /usr, or on / for a /bin/python, would open what is hidden)
    used = {os.path.realpath(p) for p in (scratch, dirs.source, dirs.checkpoint_input, env_root,
                                          *dirs.datasets.values()) if p is not None and os.path.exists(p)}
    keep = sorted(p for p in used if any(p.startswith(h.rstrip("/") + "/") for h in hidden)) + also
    not_dumpable()
    required = confinement.mode == "required"
    return [(confine.launcher(argv, hide, keep, required), {**env, "TMPDIR": str(scratch / "tmp")})
            for argv, env in invocations]


def around_platform_code(argv: list[str], env: dict[str, str], write: list[str], cwd: str,
                         mode: str) -> tuple[list[str], dict[str, str], list[str]]:
    """`argv`, the platform's own code running code a user brought (a pipeline's components), in a sandbox
    (`mode`: Settings.sandbox) that sees the platform's packages and Pythons read-only, `write` read-write
    (its first folder holding its temporary files) and nothing else, no network; the lines its log gets.
    TrainingFailed where the sandbox is required and none can start."""
    walled, notice = walled_or_fail(mode, "the pipeline")
    if not walled:
        return argv, env, [notice] if notice else []
    walls = sandbox.around_platform(write, network=False, chdir=cwd)
    return sandbox.wrap(argv, walls), sandbox.child_env(env, walls), []


def walled_or_fail(mode: str, what: str) -> tuple[bool, str | None]:
    """tasks/sandbox.py `chosen`, where a required sandbox that cannot start fails the run (TrainingFailed)."""
    from mlyard.core.errors import SandboxUnavailable

    try:
        return sandbox.chosen(mode, what)
    except SandboxUnavailable as exc:
        raise TrainingFailed(str(exc)) from None

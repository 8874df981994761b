"""Ending a process group: the one helper for it (a training's script and what it started, serving
replicas, a model folder's server, a check's server, the embedded stack's processes).

Everything mlyard starts that may start processes of its own leads a process group of its own
(`start_new_session=True`), so that ending it ends them too: `stop_group` sends SIGTERM (or the
signal given) to the group, waits up to a grace period for the leader and the rest of the group to
exit, then SIGKILLs whatever is left. Pure standard library: replicas import it too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator


def not_dumpable() -> None:
    """This process (and what it forks, not what it executes) keeps its memory and environment to itself: its
    /proc/PID/environ and mem are then readable by a process with CAP_SYS_PTRACE alone, not by every process
    of its user. Every process of the stack calls it first thing: they hold the platform's credentials."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie (dead, not yet reaped)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reaped() -> Iterator[tuple[int, int]]:
    """The children of this process that have ended, collected now (pid, wait status), without waiting
    for the others: a process that starts children it does not wait for must not leave them zombies."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def stop_group(target: int | subprocess.Popen, grace_seconds: float, sig: int = signal.SIGTERM) -> bool:
    """End the process group led by `target` (a pid or a Popen, reaped then): `sig`, then SIGKILL after
    `grace_seconds`. False if the group was already gone."""
    return bool(stop_groups([(target, sig)], grace_seconds))


def stop_groups(targets: list[tuple[int | subprocess.Popen, int]], grace_seconds: float) -> list[int]:
    """End several process groups at once: each gets its signal now, and they share one grace period
    (stopping them one after another would add up the graces). Returns the pids whose groups were still
    there."""
    signalled: list[tuple[int, int, subprocess.Popen | None]] = []
    for target, sig in targets:
        proc = target if isinstance(target, subprocess.Popen) else None
        pid = proc.pid if proc is not None else int(target)  # type: ignore[arg-type]
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pgid = pid  # the leader is gone; its group may still have members
        if _signal(pgid, sig):
            signalled.append((pid, pgid, proc))
        elif proc is not None:
            proc.poll()
    left = list(signalled)
    deadline = time.monotonic() + grace_seconds
    while left and time.monotonic() < deadline:
        left = [(pid, pgid, proc) for pid, pgid, proc in left
                if (proc.poll() is None if proc is not None else alive(pid)) or _members(pgid)]
        if left:
            time.sleep(0.05)
    for _, pgid, _ in left:
        _signal(pgid, signal.SIGKILL)
    for _, _, proc in signalled:
        if proc is not None:
            proc.wait()
    return [pid for pid, _, _ in signalled]


def _signal(pgid: int, sig: int) -> bool:
    """`sig` to the group. A sandbox's bubblewrap in it is spared all but SIGKILL: it dies of any signal
    and takes its sandbox with it at once, so the code inside would get no grace; that code, in the same
    group, gets the signal itself, and its sandbox ends when it exits."""
    walls = [] if sig in (signal.SIGKILL, 0) else _sandboxes(pgid)
    if not walls:
        try:
            os.killpg(pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    sent = False
    for pid in _group(pgid):
        if pid not in walls:
            try:
                os.kill(pid, sig)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
    return sent or bool(walls)


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of the group."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def _sandboxes(pgid: int) -> list[int]:
    """The group's bubblewrap processes (tasks/sandbox.py)."""
    out = []
    for pid in _group(pgid):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "bwrap":
                    out.append(pid)
        except OSError:
            continue
    return out


def _members(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group."""
    return _signal(pgid, 0) and bool(_group(pgid))


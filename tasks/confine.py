"""A user's entry point, out of reach of the platform's files and processes (Landlock, the Linux security
module an unprivileged process can confine itself with: kernel 5.13 or newer, enabled on most
distributions' kernels).

The script runs as the same user as the flow that starts it (a pod's 10001, or the stack owner here), so
its environment alone (tasks/launch.py's `script_environment`) does not keep the platform's credentials
from it: in a pod, the settings Secret and the service account's token are files under
/var/run/secrets; on one machine, the stack's home holds the Prefect database, the catalog and the keys.
The launcher (this file, run as `python -I -S tasks/confine.py HIDE... -- ARGV`, so that it starts in
milliseconds and imports nothing of the platform) restricts itself and then executes the script, which
inherits the restriction:

- every file outside the hidden folders keeps every access (read, write, execute, make, remove);
- a hidden folder is out of reach, but for the folders kept inside it (`--keep`: the run's scratch
  folder, its virtual environment);
- the folders on the way to a hidden one can be passed through, not listed or written;
- with Landlock ABI 6, the script cannot signal processes outside its own (the flow, the stack) or
  connect to their abstract Unix sockets; from ABI 1, it cannot ptrace them or read their memory through
  /proc. Landlock leaves /proc/PID/environ readable: the flow makes its own process non-dumpable
  (tasks/launch.py), which closes that to a script of the same user without capabilities (a pod's).

Landlock is an allow-list: each folder beside the way to a hidden one gets a rule of its own, found when
the script starts (what appears there later is out of reach). Exit 125 with one line when the kernel
cannot confine and confinement is `required`; otherwise the script runs unconfined."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
FILE_RIGHTS = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # execute, write, read, truncate (ABI 3), ioctl_dev (ABI 5)
SCOPES = 1 | 2  # abstract Unix sockets, signals (ABI 6)
UNCONFINED_EXIT = 125


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none, disabled at boot, or not Linux, whose syscall numbers these are)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(version, 0)


def _handled(abi: int) -> int:
    bits = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)  # refer (ABI 2), truncate (3), ioctl_dev (5)
    return (1 << bits) - 1


def rules(hide: list[str], keep: list[str]) -> list[str]:
    """The paths that get a rule (all access beneath): what lies beside the way to each hidden folder,
    and the kept folders."""
    hidden = {os.path.realpath(h) for h in hide}
    way = set()
    for h in hidden:
        parent = os.path.dirname(h)
        while True:
            way.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    way -= hidden
    allowed = []
    for folder in sorted(way):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(folder, entry.name)
            # a symbolic link needs no rule: Landlock checks the path it resolves to
            if path in way or path in hidden or entry.is_symlink():
                continue
            allowed.append(path)
    allowed += [os.path.realpath(k) for k in keep]
    return allowed


def confine(hide: list[str], keep: list[str]) -> int:
    """Restrict this process (and what it executes) as the module says; the ABI used (0: not confined)."""
    abi = abi_version()
    if abi < 1:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    handled = _handled(abi)
    attr = _RulesetAttr(handled, 0, SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 8
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in rules(hide, keep):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:  # gone since, or not ours to open: no rule, so out of reach
                continue
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                beneath = _PathBeneath(handled if is_dir else handled & FILE_RIGHTS, fd)
                if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(beneath), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return abi


def launcher(argv: list[str], hide: list[str], keep: list[str], required: bool) -> list[str]:
    """`argv` started through this launcher."""
    args = [a for h in hide for a in ("--hide", h)] + [a for k in keep for a in ("--keep", k)]
    return [sys.executable, "-I", "-S", os.path.realpath(__file__), *args, *(["--required"] if required else []),
            "--", *argv]


def main(args: list[str]) -> int:
    split = args.index("--")
    options, argv = args[:split], args[split + 1:]
    hide = [options[i + 1] for i, a in enumerate(options) if a == "--hide"]
    keep = [options[i + 1] for i, a in enumerate(options) if a == "--keep"]
    try:
        abi = confine(hide, keep)
    except OSError as exc:
        print(f"error: the script could not be confined: {exc}", file=sys.stderr, flush=True)
        return UNCONFINED_EXIT
    if not abi and "--required" in options:
        print("error: this kernel has no Landlock, and MLYARD_SCRIPT_CONFINEMENT is 'required': the script would "
              "reach the platform's credentials (set it to 'auto' to run scripts unconfined here)", file=sys.stderr,
              flush=True)
        return UNCONFINED_EXIT
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"error: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127 if exc.errno == errno.ENOENT else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Another account of this machine for the tests that try the platform as it runs for an ordinary user:
`as_account(account, argv)` runs a command as root (as it is) or as `mlyard-member` (made on first use),
in a mount namespace where this machine's Python, under root's home, is passable.

`python tests/accounts.py COMMAND...` runs COMMAND as that user with a home and a temporary folder of its
own, from the checkout (readable by every account): `make test` runs tests/test_inside.py so, the whole
stack started by the ordinary user, after the run as root."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

USER = "mlyard-member"


def user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       capture_output=True, check=True)
        return pwd.getpwnam(USER)


def as_account(account: str, argv: list[str]) -> list[str]:
    """`argv` as `account`: root as it is; the ordinary user in a mount namespace where root's home is
    passable (this machine's Python lives under it), with that user's ids and no group of root's."""
    if account == "root":
        return argv
    member = user()
    return as_ids(member.pw_uid, member.pw_gid, argv)


def as_ids(uid: int, gid: int, argv: list[str]) -> list[str]:
    """`argv` as user `uid` and group `gid` (no other group), where root's home is passable (as_account)."""
    prefix = Path(sys.base_prefix)
    passable = ""
    if str(prefix).startswith("/root/"):  # held aside, root's home covered by an empty one, put back
        hold = "/run/mlyard-python"
        passable = (f"mkdir -p {hold} && mount --bind {prefix} {hold} && mount -t tmpfs -o mode=755 tmpfs /root && "
                    f"mkdir -p {prefix} && mount --bind {hold} {prefix} && ")
    inner = shlex.join(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv])
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", passable + "exec " + inner]


def main(argv: list[str]) -> int:
    """Run `argv` as the ordinary user, its HOME and TMPDIR a folder of its own (removed after)."""
    if os.geteuid() != 0:
        print("tests/accounts.py: running as another account needs root; skipped", file=sys.stderr)
        return 0
    member = user()
    own = Path(tempfile.mkdtemp(prefix="mlyard-member."))
    os.chown(own, member.pw_uid, member.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLYARD_", "PREFECT_", "MLFLOW_"))}
    env.update({"HOME": str(own), "TMPDIR": str(own), "USER": USER, "LOGNAME": USER,
                "PYTHONDONTWRITEBYTECODE": "1"})  # the checkout is root's: nothing is written into it
    try:
        return subprocess.run(as_account(USER, argv), env=env).returncode
    finally:
        shutil.rmtree(own, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

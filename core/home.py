"""Where the platform's home is: standard library only, for every command's first step (mlyard/warm/cli.py)
and for Settings alike."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".mlyard"
STACK_FILE = "stack.json"  # what `mlyard up` writes in the home while the stack runs
DATABASE_FILE = "database"  # the home's choice of embedded database (core/settings.py: `database`), kept


def find_home(named: Path | str = DEFAULT_HOME) -> Path:
    """The home named (MLYARD_HOME); the default `.mlyard` is looked for in the current directory and then
    its parents (as git finds `.git`), so a command run in a subdirectory of the project finds its platform."""
    if Path(named) == Path(DEFAULT_HOME):
        here = Path.cwd()
        for folder in (here, *here.parents):
            if (folder / DEFAULT_HOME).is_dir():
                return (folder / DEFAULT_HOME).resolve()
    return Path(named).expanduser().resolve()


def plain_http_ca_file(prefect_home: Path) -> Path:
    """A one-certificate CA file for a Prefect API spoken over plain HTTP (the embedded server on
    127.0.0.1). Prefect builds a verifying TLS context for every client it makes, whatever the URL,
    loading the whole CA bundle each time: 20-100 ms a client, several clients a flow run (issue 25
    measured 0.48 s of CPU a run). Over plain HTTP no certificate is ever checked, so the bundle it
    loads may hold one (any valid one: the first of certifi's) and costs 0.3 ms."""
    path = prefect_home / "plain-http-ca.pem"
    if path.is_file():
        return path
    import re
    import tempfile

    import certifi

    pem = Path(certifi.where()).read_text()
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", pem, re.S)
    if first is None:
        raise RuntimeError(f"no certificate in {certifi.where()}")
    prefect_home.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=prefect_home, delete=False) as tmp:
        tmp.write(first.group(0))
    os.replace(tmp.name, path)
    return path


PG_PASSWORD_FILE = "pg-password"  # the embedded PostgreSQL's superuser password: the home's, private
_PG_PASSWORDS: dict[Path, str] = {}


def pg_password(home: Path) -> str:
    """The embedded PostgreSQL's password (its socket asks for it: a process that can reach the socket
    but not the home gets nothing), made the first time and kept in the home, readable by its user alone;
    read once a process (every database URL a settings object builds carries it)."""
    import secrets

    path = Path(home) / PG_PASSWORD_FILE
    if (known := _PG_PASSWORDS.get(path)) is not None:
        return known
    try:
        return _PG_PASSWORDS.setdefault(path, path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _PG_PASSWORDS.setdefault(path, path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(made + "\n")
    return _PG_PASSWORDS.setdefault(path, made)

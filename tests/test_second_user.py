"""Another account of the same machine against a running stack, as an attacker met it: a real second Unix
user (made here) runs curl and Debian's python3 (tests/intruder.py, the standard library only) against
every listener that `mlyard up` and `mlyard ui mlflow` opened, listed from the stack's own record and
from the sockets its processes hold. Each answers 401/403 or cannot be reached, the home lists nothing,
and nothing the account sends starts work."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import free_port
from tests.test_user_paths import BIN, mlyard, user_dir

INTRUDER = "mlyard-intruder"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a second Unix account needs root")


@pytest.fixture(scope="module")
def intruder():
    """A second account: no password, no home, no group of ours; removed again if this test made it."""
    try:
        yield pwd.getpwnam(INTRUDER)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
                   capture_output=True, check=True)
    try:
        yield pwd.getpwnam(INTRUDER)
    finally:
        subprocess.run(["userdel", INTRUDER], capture_output=True)


def as_intruder(intruder, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """A command as that account, with an environment of its own (none of the owner's or the harness's)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run(["setpriv", f"--reuid={intruder.pw_uid}", f"--regid={intruder.pw_gid}", "--clear-groups",
                           "--", *argv], input=stdin, env=env, cwd="/", capture_output=True, text=True, timeout=120)


def _listening_ports(pids: list[int]) -> dict[int, str]:
    """TCP ports on which the stack's processes (and what they started) listen, with the command of each."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    ports = {}
    for proc in procs:
        try:
            ports |= {c.laddr.port: " ".join(proc.cmdline())[:120] for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return ports


def _flow_runs(stack) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


def test_another_account_gets_in_nowhere(stack, settings, intruder):
    from mlyard import warm
    from mlyard.core.connection import read_state
    from mlyard.warm import SOCKET
    from tests.browser.browsing import deployment_id

    # as its owner opens it, from a fresh shell (on a port of its own: the browser tests' worker opens 5000)
    started = subprocess.run([str(BIN / "mlyard"), "ui", "mlflow"], cwd=user_dir(), capture_output=True, text=True,
                             env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                                  "MLYARD_MLFLOW_UI_PORT": str(free_port())}, timeout=300)
    assert started.returncode == 0, started.stderr
    assert "sign-in: user mlyard, password " in started.stdout
    state = read_state(settings)
    assert state is not None and state.mlflow_ui_url and state.prefect_auth_string
    Path(settings.home_dir).parent.chmod(0o755)  # a project folder as others usually see it: the home keeps them out
    # an owner's notebook folder, as a notebook made it
    (settings.home_dir / "notebooks" / "1").mkdir(parents=True, exist_ok=True)

    known = {urlsplit(url).port for url in (state.api_url, state.service_url, state.gateway_url, state.mlflow_ui_url)}
    others = {port: cmd for port, cmd in _listening_ports(list(state.pids.values())).items() if port not in known}
    targets = {
        "prefect_api": state.api_url, "deployment_id": deployment_id(stack, "train/train-local"),
        "training_spec": {"name": "intruder", "experiment": "intruder", "source_uri": str(EXAMPLES / "sklearn_digits"),
                          "entry_point": "train.py"},
        "mlyard_api": state.service_url, "gateway": state.gateway_url, "mlflow": state.mlflow_ui_url,
        "model": "digits", "home": str(settings.home_dir),
        "postgres_socket": f"{parse_qs(urlsplit(state.vector_store_url or '').query).get('host', [''])[0]}/.s.PGSQL.5432",
        "warm_socket": str(warm.warm_dir(settings.home_dir) / SOCKET),
        # whatever else listens: endpoint replicas, notebooks, and the worker's attempt control channel (Prefect's
        # runner: a per-run token, and a connection without it is closed)
        "other_ports": {port: "control" if "mlyard.warm.worker" in cmd else "http" for port, cmd in others.items()},
    }
    runs_before = _flow_runs(stack)
    shared = Path(tempfile.mkdtemp(prefix="mlyard-intruder-"))  # where that account can read the script
    try:
        shared.chmod(0o755)
        shutil.copy(Path(__file__).with_name("intruder.py"), shared / "intruder.py")
        tried = as_intruder(intruder, "/usr/bin/python3", "-I", str(shared / "intruder.py"), stdin=json.dumps(targets))
    finally:
        shutil.rmtree(shared)
    assert tried.returncode == 0, tried.stderr
    results = json.loads(tried.stdout)

    held = {"401", "403", "denied", "refused", "closed", "closed 1002", "closed 1008"}
    broke = {what: got for what, got in results.items() if got not in held}
    assert not broke, f"another account got in: {broke} (other listeners: {others})"
    assert results["home: list it"] == "denied" and results["home: list its notebooks"] == "denied"
    # curl, as the attacker first did: the Run of train/train-local
    curl = as_intruder(intruder, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H",
                       "content-type: application/json", "-d", json.dumps({"parameters": {"spec": targets["training_spec"]}}),
                       f"{state.api_url}/deployments/{targets['deployment_id']}/create_flow_run")
    assert curl.stdout == "401", curl
    assert _flow_runs(stack) == runs_before, "the other account's requests started work"
    # and the owner still gets in to both UIs' APIs with what the commands print
    signed = mlyard("ui", "prefect")
    assert signed.returncode == 0 and state.prefect_auth_string in signed.stdout, signed


def test_the_home_is_private_to_its_owner(stack, settings):
    """Every folder and file directly under the home is the owner's alone (0700 / 0600), the embedded
    PostgreSQL's data aside (its own account's, 0700 as PostgreSQL demands)."""
    import stat

    home = settings.home_dir
    assert stat.S_IMODE(home.stat().st_mode) in (0o700, 0o711)
    loose = {entry.name: oct(stat.S_IMODE(entry.stat().st_mode)) for entry in home.iterdir()
             if not entry.is_symlink() and entry.name != "postgres" and entry.stat().st_mode & 0o077}
    assert not loose, f"readable by others: {loose}"
    assert shutil.which("setpriv")

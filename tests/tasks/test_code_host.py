"""The code host (tasks/code_host.py) as a flow-run pod runs it: the flow's side as uid 10001, the code host
as uid 10002, both in group 10001 (the pod's fsGroup), sharing a folder of the pod's /tmp volume. Each side
is a process of its own user here, as each is a container of its own there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from accounts import as_ids

from mlyard.tasks.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
CODE_HOST = str(ROOT / "tasks" / "code_host.py")
FLOW, HOST, GROUP = 10001, 10002, 10001


@pytest.fixture
def pod():
    """(the pod's /tmp volume, the exchange folder in it): a code host serving it as its own user."""
    if os.geteuid() != 0:
        pytest.skip("running the pod's two users needs root")
    volume = Path(tempfile.mkdtemp(prefix="mlyard-pod-tmp."))
    os.chown(volume, 0, GROUP)
    volume.chmod(0o2777)  # an emptyDir of a pod with fsGroup, as kubelet makes it
    exchange = volume / "mlyard-code"
    host = subprocess.Popen(as_ids(HOST, GROUP, [sys.executable, "-I", CODE_HOST, "serve", str(exchange)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        yield volume, exchange, host
    finally:
        stop_group(host, 5)
        shutil.rmtree(volume, ignore_errors=True)


def _flow(exchange: Path, argv: list[str], cwd: str = "/") -> list[str]:
    """`argv` as the flow's container hands it over: the stand-in process, as the flow's user."""
    return as_ids(FLOW, GROUP, [sys.executable, "-I", CODE_HOST, "run", str(exchange), cwd, "--", *argv])


def test_a_command_runs_as_the_hosts_user_with_its_input_output_and_exit_code(pod):
    _, exchange, _ = pod
    data = os.urandom(3 << 20)  # binary, past a pipe's buffer both ways
    script = ("import os, sys\ndata = sys.stdin.buffer.read()\nsys.stdout.buffer.write(data[::-1])\n"
              "print(f'uid={os.getuid()} cwd={os.getcwd()}', file=sys.stderr)\nsys.exit(7)\n")
    done = subprocess.run(_flow(exchange, [sys.executable, "-c", script], cwd="/usr"), input=data,
                          capture_output=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert done.stdout == data[::-1]
    assert done.stderr.decode().strip() == f"uid={HOST} cwd=/usr"
    assert list((exchange / "taken").iterdir()) == [], "the request's folder is gone with it"


def test_a_stop_reaches_the_command_and_a_killed_stand_in_takes_it_along(pod):
    _, exchange, _ = pod
    graceful = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\nprint('up', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen(_flow(exchange, [sys.executable, "-c", graceful]), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    proc.terminate()  # a stop: SIGTERM to the stand-in, forwarded to the command's group
    assert proc.wait(20) == 42
    proc.stdout.close()

    marker = f"mlyard-orphan-{uuid.uuid4().hex}"
    lingering = f"import time\nprint('up', flush=True)\ntime.sleep(300)  # {marker}\n"
    proc = subprocess.Popen(_flow(exchange, [sys.executable, "-c", lingering]), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    proc.kill()  # kill -9 of the flow's side: nothing can forward anything
    proc.wait(10)
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the command outlived the process that stood for it"
        time.sleep(0.1)


def test_wrap_shares_the_walls_folders_and_nothing_else_of_the_flows(pod):
    """tasks/sandbox.py's `wrap` in a pod with a code host: the folders the walls name (under a private
    mkdtemp folder of the flow's) are opened to the group, the flow's other files stay its own, and what
    the code leaves the flow can read and remove."""
    volume, exchange, _ = pod
    script = f"""
import os, shutil, subprocess, sys, tempfile
from pathlib import Path
from mlyard.tasks import sandbox
scratch = Path(tempfile.mkdtemp(dir={str(volume)!r}))
(scratch / "source").mkdir()
(scratch / "source" / "main.py").write_text("print('hello')")
(scratch / "out").mkdir()
(scratch / "secret.txt").write_text("the flow's")
(scratch / "secret.txt").chmod(0o600)
walls = sandbox.Walls(read=(str(scratch / "source"),), write=(str(scratch / "out"),), chdir=str(scratch / "source"))
probe = (
    "import os\\n"
    "def reach(p):\\n"
    "    try:\\n"
    "        open(p).read()\\n"
    "        return 'read'\\n"
    "    except OSError as exc:\\n"
    "        return type(exc).__name__\\n"
    "os.makedirs('../out/deep/er')\\n"
    "open('../out/deep/er/model.txt', 'w').write('m')\\n"
    "print(reach('main.py'), reach('../secret.txt'), os.getuid())\\n")
done = subprocess.run(sandbox.wrap([sys.executable, "-c", probe], walls), capture_output=True, text=True, timeout=60)
print(done.stdout.strip(), done.returncode, done.stderr[-500:])
print((scratch / "out" / "deep" / "er" / "model.txt").read_text())
shutil.rmtree(scratch)
print("removed" if not scratch.exists() else "left")
"""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "MLYARD_CODE_HOST": str(exchange),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(as_ids(FLOW, GROUP, [sys.executable, "-c", script]), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"read PermissionError {HOST} 0 ", "m", "removed"], done.stdout + done.stderr


def test_a_code_host_that_ends_first_ends_its_stand_in_with_the_reason(pod):
    """The code host's container restarted (or killed) under a running command: the flow's side does not wait
    for ever, it ends saying so."""
    _, exchange, host = pod
    marker = f"mlyard-hosted-{uuid.uuid4().hex}"
    command = [sys.executable, "-c", f"import time\nprint('up', flush=True)\ntime.sleep(300)  # {marker}"]
    proc = subprocess.Popen(_flow(exchange, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        stop_group(host, 0, signal.SIGKILL)  # the host's process (its command, in a container, would go with it)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 137 and "ended before the command did" in err, err
    finally:
        subprocess.run(["pkill", "-9", "-f", marker])


def test_a_command_that_floods_its_exit_code_ends_its_run_not_the_flows_memory(pod):
    _, exchange, _ = pod
    flood = (f"import glob\nf = open(glob.glob({str(exchange / 'taken' / '*' / 'code')!r})[0], 'wb', buffering=0)\n"
             "while True:\n    f.write(b'1' * 65536)\n")
    done = subprocess.run(_flow(exchange, [sys.executable, "-c", flood]), capture_output=True, text=True, timeout=60)
    assert done.returncode == 137, done.stderr
    assert "ended before the command did" in done.stderr

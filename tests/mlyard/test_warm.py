"""Warm starts (mlyard/warm): a flow run forked from the warm runner keeps what a cold start gives.

Each test runs a real flow run on the stack's `local` pool through the real Prefect worker, with a
probe flow deployed from a temporary directory; the probe writes what its process sees to a file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

PROBE = textwrap.dedent('''
    import json, logging, os, subprocess, sys, time
    from prefect import flow

    def _unix_paths(inodes):
        found = []
        with open("/proc/net/unix") as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[6] in inodes and len(parts) > 7:  # flag 00010000: a listening socket
                    found.append(("listening " if parts[3] == "00010000" else "") + parts[7])
        return found

    @flow(log_prints=True)
    def probe(report: str, sleep_seconds: float = 0.0, group_child: bool = False):
        from prefect.settings import get_current_settings
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        sockets = {v[len("socket:["):-1] for v in fds.values() if v.startswith("socket:[")}
        out = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
               "cwd": os.getcwd(), "probe_env": os.environ.get("MLYARD_PROBE"),
               "logging_level": get_current_settings().logging.level,
               "prefect_logger_level": logging.getLogger("prefect").level,
               "files": sorted(v for v in fds.values() if v.startswith("/")),
               "unix_sockets": _unix_paths(sockets)}
        if group_child:  # a process the run started in its own group, as torchrun's workers are
            out["group_child"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid
        with open(report + ".tmp", "w") as fh:
            json.dump(out, fh)
        os.replace(report + ".tmp", report)
        os.write(1, b"probe raw stdout marker\\n")
        os.write(2, b"probe raw stderr marker\\n")
        print("probe print marker")
        time.sleep(sleep_seconds)
        return out["pid"]
''')


@pytest.fixture(scope="module")
def probe(stack, tmp_path_factory):
    """A deployment of the probe flow on the local pool, loaded from its folder (the job's working_dir)."""
    from prefect.client.orchestration import get_client

    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(PROBE)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("probe")
        client.create_deployment(flow_id, "warm-probe", entrypoint="probe.py:probe", work_pool_name="local",
                                 pull_steps=[], job_variables={"working_dir": str(folder),
                                                               "env": {"MLYARD_PROBE": "from-the-job",
                                                                       "PREFECT_LOGGING_LEVEL": "DEBUG"}})
    return folder


def _start(probe: Path, tmp_path: Path, **parameters):
    from prefect.deployments import run_deployment

    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    fr = run_deployment("probe/warm-probe", parameters={"report": str(report), **parameters}, timeout=0)
    return fr, report


def _wait(fr, report: Path | None = None, final: bool = True, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(fr.id)
            if report is not None and report.exists():
                return json.loads(report.read_text())
            if final and run.state and run.state.is_final():
                return run
            time.sleep(0.2)
    raise AssertionError(f"flow run {fr.id} did not get there within {timeout} s: {run.state}")


def _runner(settings) -> int | None:
    from mlyard import warm

    return warm.runner_pid(settings.home_dir)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_warm_run_sees_its_own_environment_settings_and_streams(probe, settings, stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    runner = _runner(settings)
    assert runner is not None, "mlyard up started no warm runner"
    fr, report = _start(probe, tmp_path)
    run = _wait(fr)
    assert run.state.is_completed(), run.state.message
    seen = json.loads(report.read_text())
    assert seen["ppid"] == runner, "the run did not start warm"
    assert seen["cwd"] == str(probe)  # the job's working_dir (the entrypoint was found there)
    assert seen["probe_env"] == "from-the-job"  # the job's env
    assert seen["logging_level"] == "DEBUG", "Prefect's settings are the runner's, frozen at its import"
    assert seen["prefect_logger_level"] == logging.DEBUG, "the logging set-up is the runner's, made from its settings"
    assert seen["pgid"] == seen["pid"] == seen["sid"], "the run is not its own process group"
    # of the runner's, the run holds only its own channel to the client: not the listening socket, not the lock
    warm_files = [f for f in seen["files"] + seen["unix_sockets"] if "/warm/" in f]
    assert warm_files == [str(settings.home_dir / "warm" / "runner.sock")], warm_files

    # stdout/stderr reach the worker (its log) and print() the run's logs
    worker_log = Path(stack.logs["worker"]).read_text(errors="replace")
    assert "probe raw stdout marker" in worker_log and "probe raw stderr marker" in worker_log
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
            if any("probe print marker" in log.message for log in logs):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("print() of a warm run never reached its Prefect logs")
        assert client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))


def test_cancelling_a_warm_run_ends_its_process_group(probe, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    fr, report = _start(probe, tmp_path, sleep_seconds=300, group_child=True)
    seen = _wait(fr, report, final=False)
    with get_client(sync_client=True) as client:  # what the UI's Cancel and `prefect flow-run cancel` do
        client.set_flow_run_state(fr.id, Cancelling())
    run = _wait(fr, timeout=60)
    assert run.state.is_cancelled(), run.state
    deadline = time.monotonic() + 10
    while (_alive(seen["pid"]) or _alive(seen["group_child"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(seen["pid"]), "the run's process outlived its cancel"
    assert not _alive(seen["group_child"]), "a process the run started outlived its cancel"


def test_a_killed_warm_run_crashes_with_a_reason_and_a_killed_runner_loses_nothing(probe, settings, tmp_path):
    # kill -9 of the run's own process: the run fails with a reason at once (well within 60 s)
    fr, report = _start(probe, tmp_path, sleep_seconds=300)
    seen = _wait(fr, report, final=False)
    os.kill(seen["pid"], signal.SIGKILL)
    started = time.monotonic()
    run = _wait(fr, timeout=60)
    assert run.state.is_crashed() and run.state.message, run.state
    assert time.monotonic() - started < 60
    # the signal is named (the runner tells the pool's command, which dies of it), not a made-up exit 1
    assert "SIGKILL" in run.state.message and "status code: 1." not in run.state.message, run.state.message

    # kill -9 of the warm runner mid-run: the run goes on to COMPLETED; the next starts cold, and a new
    # runner serves the one after it
    runner = _runner(settings)
    fr, report = _start(probe, tmp_path, sleep_seconds=3)
    seen = _wait(fr, report, final=False)
    assert seen["ppid"] == runner
    os.kill(runner, signal.SIGKILL)
    run = _wait(fr)
    assert run.state.is_completed(), run.state
    fr, report = _start(probe, tmp_path)
    assert _wait(fr).state.is_completed()
    assert json.loads(report.read_text())["ppid"] != runner
    deadline = time.monotonic() + 60
    while (_runner(settings) in (None, runner)) and time.monotonic() < deadline:
        time.sleep(0.2)
    new_runner = _runner(settings)
    assert new_runner not in (None, runner), "no new warm runner started after the old one was killed"
    fr, report = _start(probe, tmp_path)
    assert _wait(fr).state.is_completed()
    assert json.loads(report.read_text())["ppid"] == new_runner


def test_changed_code_is_never_run_stale(probe, settings, tmp_path):
    import mlyard.flows.batch_worker
    from mlyard import warm
    from mlyard.warm.client import hand_over

    runner = _runner(settings)
    assert runner is not None
    source = Path(mlyard.flows.batch_worker.__file__)  # a change to any module the runner imported
    st = source.stat()
    # The change lasts only until this stack's runner has seen it: every warm runner and mlyard API of the
    # other xdist workers' stacks imported the same file from this checkout, and a change they saw would make
    # each of them start again (a runner, its first run cold, an API: about 11 CPU-seconds a stack).
    log = settings.home_dir / "logs" / "warm-runner.log"
    before = log.stat().st_size
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        handed = hand_over(warm.warm_dir(settings.home_dir) / warm.SOCKET, command=["mlyard", "--help"])
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    if handed is not None:
        handed[0].close()  # the command's child ends with its client
    assert handed is None, "the runner took a command after the project's code changed"
    deadline = time.monotonic() + 30  # the runner says why, in its log
    while "the project's code changed" not in (said := log.read_bytes()[before:].decode(errors="replace")):
        assert time.monotonic() < deadline, f"the runner did not say why it refused: {said!r}"
        time.sleep(0.1)
    fr, report = _start(probe, tmp_path)
    assert _wait(fr).state.is_completed()
    assert json.loads(report.read_text())["ppid"] != runner, "a stale runner ran the flow"
    deadline = time.monotonic() + 60
    while _runner(settings) in (None, runner) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(runner), "the stale runner did not exit"
    new_runner = _runner(settings)
    assert new_runner is not None
    fr, report = _start(probe, tmp_path)
    assert _wait(fr).state.is_completed()
    assert json.loads(report.read_text())["ppid"] == new_runner


def test_the_worker_waits_out_its_prefetch_to_the_exact_scheduled_time():
    """Prefect's server holds a run's start to its scheduled time rounded to whole seconds (so up to
    0.5 s early); the worker waits the exact rest before it starts the process."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from mlyard.warm.worker import seconds_early

    at = datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc)
    run = SimpleNamespace(state=SimpleNamespace(state_details=SimpleNamespace(scheduled_time=at)),
                          expected_start_time=None)
    assert seconds_early(run, now=at.timestamp() - 9.4) == pytest.approx(9.4)
    assert seconds_early(run, now=at.timestamp() + 3) == 0.0
    queued_now = SimpleNamespace(state=None, expected_start_time=None)
    assert seconds_early(queued_now) == 0.0



ENDS = textwrap.dedent('''
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from mlyard.submit import run_here
    delays = []
    for _ in range(2):
        body_end = run_here("ends_probe:probe", {}, "the probe failed")
        delays.append(time.perf_counter() - body_end)
    print(json.dumps(delays))
''')


def test_a_flow_run_in_a_command_returns_when_its_work_ends(stack, settings, tmp_path):
    """Prefect's sync engine joined its heartbeat thread, which sleeps in whole seconds, as a run ended:
    every flow run that a command ran in its own process (`mlyard batch`, `mlyard train`; heartbeats on,
    as mlyard runs them) returned about 1 s after its work (mlyard.tasks.orchestration.prompt_flow_ends). Run
    as a user's process: a fresh Python in the project directory, PATH and HOME only."""
    import subprocess
    import sys

    (tmp_path / "ends_probe.py").write_text(textwrap.dedent('''
        import time
        import mlyard.flows  # points Prefect at the running platform, as every mlyard flow module does
        from prefect import flow

        @flow(name="ends-probe")
        def probe(spec):
            return time.perf_counter()
    '''))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    done = subprocess.run([sys.executable, "-c", ENDS, str(tmp_path)], cwd=settings.home_dir.parent, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    delays = json.loads(done.stdout.strip().splitlines()[-1])
    assert min(delays) < 0.5, f"the run returned {min(delays):.2f} s after its work ended"


def test_a_module_runs_in_a_child_of_the_runner_with_its_arguments_directory_and_signals(stack, settings, tmp_path):
    """`python -m mlyard.warm.client HOME -m MODULE ARGS` (the emulated cluster's training nodes start so):
    MODULE runs as `python -m` runs it, in a child of the runner, in the caller's directory, with its
    arguments; a signal to the client reaches it, and the way it ended comes back. Without a runner it
    runs in the client's own process."""
    import socket
    import subprocess
    import sys
    import urllib.request

    (tmp_path / "hello.txt").write_text("hello")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = _runner(settings)
    proc = subprocess.Popen([sys.executable, "-m", "mlyard.warm.client", str(settings.home_dir), "-m", "http.server",
                             str(port), "--bind", "127.0.0.1"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=2) as answer:
                    assert answer.read() == b"hello"  # the caller's directory, the port it was given
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the module did not start"
                time.sleep(0.2)
        served = [pid for pid in _children_of(runner) if b"http.server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(served) == 1 and _children_of(proc.pid) == set(), "it runs in a child of the runner"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM and not _alive(served[0])
    finally:
        proc.kill()
    (tmp_path / "ok.json").write_text('{"a": 1}')
    cold = subprocess.run([sys.executable, "-m", "mlyard.warm.client", str(tmp_path / "no-home"), "-m", "json.tool",
                           "ok.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert cold.returncode == 0 and json.loads(cold.stdout) == {"a": 1}, cold.stderr


def _user_env(**extra: str) -> dict[str, str]:
    """A user's shell: PATH, HOME and LANG (none of the harness's variables), and `extra`."""
    import sys

    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8", **extra}


def _cwd(pid: int) -> Path | None:
    """A process's working directory; None once it has ended."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def _children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def test_the_stack_forks_its_api_scheduler_and_worker_from_the_runner(stack, settings):
    """`mlyard up` has the runner fork the mlyard API, the scheduler and the local worker (their imports
    already made): each leads a session of its own, is named by its own command line in ps, has its own
    log and environment, and works (the API answers; the worker is online in Prefect)."""
    import sys
    import urllib.request

    from mlyard.core.connection import read_state

    state = read_state(settings)
    ran = (settings.home_dir / "logs" / "warm-runner.log").read_text()
    for name, module in (("mlyard-api", "mlyard.service"), ("scheduler", "mlyard.tasks.scheduling"),
                         ("worker", "mlyard.warm.worker")):
        pid = state.pids[name]
        assert _alive(pid) and os.getsid(pid) == pid, name
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
        assert command.startswith(f"{sys.executable} -m {module}"), (name, command)
        assert any(f"started -m {module}" in line and line.endswith(f" as pid {pid}") for line in ran.splitlines()), \
            f"{name} was not forked by the runner"
        assert Path(f"/proc/{pid}/fd/1").resolve() == Path(state.logs[name]).resolve(), name
    with urllib.request.urlopen(state.service_url + "/health", timeout=10) as answer:
        assert json.loads(answer.read())["status"] == "ok"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert any(w.name == "mlyard-local" and w.status.value == "ONLINE" for w in client.read_workers_for_work_pool("local"))


def test_a_command_gives_warm_what_it_gives_cold(stack):
    """The same commands through the warm runner and with MLYARD_WARM_CLI=0: the same output, exit
    status and one-line errors."""
    import subprocess
    import sys

    mlyard = str(Path(sys.executable).parent / "mlyard")
    cwd = Path(os.environ["MLYARD_HOME"]).parent
    for words in (["images", "list", "--json"], ["trainings", "show", "no-such-training"],
                  ["train", "-f", "no-such-file.yaml"], ["trainings", "--help"]):
        warm, cold = (subprocess.run([mlyard, *words], cwd=cwd, env=_user_env(MLYARD_WARM_CLI=flag), text=True,
                                     stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
                      for flag in ("1", "0"))
        assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), words


def test_a_command_runs_in_a_child_of_the_warm_runner_and_ctrl_c_reaches_it(stack, settings):
    """`mlyard train` from a user's script: the command runs in a child of the home's warm runner with the
    script's environment and directory, its output streams back, and Ctrl-C stops the training (STOPPED).
    (Typed at a terminal, a command runs in its own process: mlyard/warm/cli.py.)"""
    import subprocess
    import sys

    cwd = Path(os.environ["MLYARD_HOME"]).parent / "warm-cli"
    (cwd / "algo").mkdir(parents=True)
    (cwd / "algo" / "main.py").write_text("import time\nprint('loss=1', flush=True)\ntime.sleep(120)\n")
    (cwd / "train.yaml").write_text("name: warm-cli\nexperiment: warm-cli\nsource_uri: algo\nentry_point: main.py\n")

    def as_a_terminal_starts_it() -> None:  # see test_user_paths.test_ctrl_c_on_mlyard_train_ends_stopped
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    runner = _runner(settings)
    assert runner is not None, "mlyard up starts the home's warm runner"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlyard"), "train", "-f", "train.yaml"], cwd=cwd,
                            env=_user_env(MLYARD_PROBE="warm-cli"), preexec_fn=as_a_terminal_starts_it, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "loss=1" in line:
                break
        commands = [pid for pid in _children_of(runner) if _cwd(pid) == cwd.resolve()]
        assert len(commands) == 1, "the command runs in a child of the warm runner, in the shell's directory"
        below, found = {commands[0]}, set()
        while below:
            found |= below
            below = set().union(*(_children_of(pid) for pid in below)) - found
        assert any(b"MLYARD_PROBE=warm-cli" in Path(f"/proc/{pid}/environ").read_bytes() for pid in found), \
            "the training the command started has the shell's environment"
        assert _children_of(proc.pid) == set(), "the command's client starts nothing itself"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, "as a cold command ends on Ctrl-C (128 + SIGINT)"
    finally:
        proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
    listed = json.loads(subprocess.run([str(Path(sys.executable).parent / "mlyard"), "trainings", "list", "--json"],
                                       cwd=cwd, env=_user_env(), capture_output=True, text=True, check=True).stdout)
    mine = [t for t in listed if t["name"] == "warm-cli"]
    assert mine and mine[0]["status"] == "STOPPED" and "Ctrl-C" in mine[0]["cause"], mine


def test_a_command_typed_at_a_terminal_runs_in_its_own_process(stack, settings):
    """At a terminal the command keeps its own process (job control, hidden password input): on a
    pseudo-terminal, `mlyard` runs the command itself and the runner starts no child for it."""
    import pty
    import subprocess
    import sys

    runner = _runner(settings)
    assert runner is not None
    # a folder of the user's project that only this command works in (other tests run theirs from the
    # project's top): a runner child working there would be this command's
    cwd = Path(os.environ["MLYARD_HOME"]).parent / f"at-a-terminal-{os.getpid()}"
    cwd.mkdir()
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlyard"), "trainings", "list", "--json"],
                                cwd=cwd, env=_user_env(), stdin=follower, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen: set[int] = set()
        while proc.poll() is None:
            seen |= {pid for pid in _children_of(runner) if _cwd(pid) == cwd.resolve()}
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 0 and isinstance(json.loads(out), list), err
    assert not seen, "no runner child for a command typed at a terminal"


def test_the_logging_set_up_is_made_again_only_for_what_it_is_made_from(monkeypatch):
    """A warm child keeps the runner's logging set-up unless something it is made from differs: a
    setting read only when a run logs does not count, an override of an entry of Prefect's logging file
    does."""
    from mlyard.warm import preload

    for key in [k for k in os.environ if k.startswith("PREFECT_LOGGING_")]:
        monkeypatch.delenv(key)
    base = preload.logging_inputs()
    monkeypatch.setenv("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "7")  # read by the log shipper, when a run logs
    assert preload.logging_inputs() == base
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DEBUG")  # an entry of the logging file
    assert preload.logging_inputs() != base

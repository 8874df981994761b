"""The warm runner: imports Prefect, MLflow, SQLAlchemy and every flow once, then forks one child per
flow run handed to it by mlyard/warm/client.py, per `mlyard` command handed to it by
mlyard/warm/cli.py (the command tree is built once here too), and per `python -m MODULE ARGS` handed
to it (`client.py HOME -m MODULE`; `detach` for the stack's own processes that `mlyard up` starts: the
mlyard API, the scheduler, the local worker), which would otherwise import the same libraries again.

    python -m mlyard.warm.server HOME

One runner per home (it holds `<home>/warm/runner.lock`); `mlyard up` starts it, and a client that
finds none starts one. It stays single-threaded and opens no client, connection or database before a
fork, so a child starts as clean as a cold process: the child takes the run's environment, working
directory, umask and standard streams, has Prefect and mlyard read their settings again, then runs
`prefect.engine` as `python -m prefect.engine` would. A change to the project's code since the runner
started makes it refuse the next run ("stale": that run starts cold) and exit, so the run after it
gets a fresh runner.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import json
import logging
import os
import random
import runpy
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import warnings
import weakref
from pathlib import Path

from mlyard.core.environment import flag, flow_run_env, kubeconfig_path
from mlyard.tasks.processes import reaped
from mlyard.warm import (
    DETACH,
    GRACE_SECONDS,
    LOCKFILE,
    PIDFILE,
    SOCKET,
    code_fingerprint,
    loaded_project_files,
    run_goes_on,
    warm_dir,
)
from mlyard.warm.preload import LOGGING_SET_UP, logging_inputs, preload

log = logging.getLogger("mlyard.warm")
REQUEST_TIMEOUT_SECONDS = 5.0
LOCK_WAIT_SECONDS = 3.0
_FINISHED = threading.Event()  # in a child: its exit status is on its way to the client
MAX_REQUEST_BYTES = 4 << 20  # an environment, a working directory and a umask
_HOME: list[Path] = []  # the runner's home, for its children


def serve(home: Path) -> int:
    _HOME[:] = [home]
    folder = warm_dir(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    lock = open(folder / LOCKFILE, "w")  # noqa: SIM115 - held for the runner's whole life
    deadline = time.monotonic() + LOCK_WAIT_SECONDS  # a stale runner may still be on its way out
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                log.info("a warm runner already serves %s", home)
                return 0
            time.sleep(0.1)
    started = time.monotonic()
    import setproctitle

    setproctitle.getproctitle()  # it finds the command line's memory now, before a child replaces the environment
    preload()
    files = loaded_project_files()
    fingerprint = code_fingerprint(files)  # (an edit made during the imports shows only at the next edit)
    if threading.active_count() > 1:  # a fork would copy a thread-less image of whatever they hold
        log.error("importing the flows started threads (%s): not forking; runs start cold",
                  [t.name for t in threading.enumerate()])
        return 1
    path = folder / SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    old_mask = os.umask(0o177)  # the socket is the user's alone
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    (folder / PIDFILE).write_text(str(os.getpid()))
    signal.signal(signal.SIGCHLD, _reap)  # a child killed by a signal: its client hears which
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("warm runner %d ready on %s in %.1f s", os.getpid(), path, time.monotonic() - started)
    gc.freeze()  # what the imports made stays shared with the children instead of being copied on write
    try:
        while True:
            conn, _ = listener.accept()
            child = _serve_one(conn, listener, lock, files, fingerprint)
            if child == "stale":
                log.info("the project's code changed since this runner started: exiting")
                return 0
    finally:  # still under the lock: no other runner has made these
        path.unlink(missing_ok=True)
        (folder / PIDFILE).unlink(missing_ok=True)


def _serve_one(conn: socket.socket, listener: socket.socket, lock, files: list[str], fingerprint: str) -> str | None:
    fds: list[int] = []
    try:
        conn.settimeout(REQUEST_TIMEOUT_SECONDS)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            return None
        head, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
        if len(head) != 4 or len(fds) != 3:
            return None
        (size,) = struct.unpack("!I", head)
        if size > MAX_REQUEST_BYTES:
            return None
        body = b""
        while len(body) < size:
            chunk = conn.recv(min(65536, size - len(body)))
            if not chunk:
                return None
            body += chunk
        request = json.loads(body)
        if code_fingerprint(files) != fingerprint:
            conn.sendall(b"stale\n")
            return "stale"
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGCHLD held back until the child's connection is held: a child that ends at once is then reaped
        # with its connection known
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:
                _child(conn, fds, request, listener, lock)  # never returns
            if not request.get("detached"):  # kept: if the child dies of a signal, this says which (_reap)
                _HELD[pid] = conn
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        if "module" in request:
            log.info("started %s as pid %d", " ".join(["-m", str(request["module"]), *map(str, request.get("args", []))]),
                     pid)
        return None
    except (OSError, ValueError) as exc:
        log.warning("a flow run could not be handed over: %s", exc)
        return None
    finally:
        for fd in fds:
            os.close(fd)
        if conn not in _HELD.values():
            conn.close()


# The runner's end of each waiting client's connection, by its child's pid.
_HELD: dict[int, socket.socket] = {}


def _reap(*_: object) -> None:
    """Collect the children that ended. A child reports its own exit status to its client; one killed by
    a signal cannot, so the runner tells the client which signal (`signal N`), and the client ends the
    same way: whoever started it (Prefect's worker, a shell) sees the kill, not a made-up exit 1."""
    for pid, status in reaped():
        conn = _HELD.pop(pid, None)
        if conn is None:
            continue
        try:
            if os.WIFSIGNALED(status):
                conn.setblocking(False)
                conn.send(f"signal {os.WTERMSIG(status)}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()


def _child(conn: socket.socket, fds: list[int], request: dict, listener: socket.socket, lock) -> None:
    code = 1
    try:
        code = _run(conn, fds, request, listener, lock)
    except BaseException:  # noqa: BLE001 - whatever happens, the client hears how this ended
        traceback.print_exc()
    finally:
        _FINISHED.set()
        for stream in (sys.stdout, sys.stderr):
            try:  # a full non-blocking pipe or a reader gone: what is lost is output, never the status
                stream.flush()
            except BaseException:  # noqa: BLE001, S110
                pass
        try:
            if not request.get("detached"):
                conn.sendall(f"exit {code}\n".encode())
        except BaseException:  # noqa: BLE001, S110 - the client went away: nobody to tell
            pass
        os._exit(code)


def _run(conn: socket.socket, fds: list[int], request: dict, listener: socket.socket, lock) -> int:
    os.setsid()  # its own process group: a cancel ends the run and everything it started, nothing else
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # blocked by the runner around the fork
    for held in _HELD.values():  # the other runs' connections, copied by the fork: not this one's
        held.close()
    _HELD.clear()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    listener.close()
    lock.close()  # the next runner may start while this run goes on
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    conn.settimeout(None)
    conn.sendall(f"pid {os.getpid()}\n".encode())
    if request.get("detached"):  # a process of the stack: no client waits for it, its pid is its handle
        conn.close()
    else:
        threading.Thread(target=_watch_client, args=(conn, dict(request["env"])), name="mlyard-warm-client",
                         daemon=True).start()
    os.umask(int(request["umask"]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _fresh_process_state()
    code: object = 0
    try:
        if "module" in request:  # a process of the stack, `python -m MODULE ARGS` (mlyard/stack.py)
            sys.argv = [str(request["module"]), *(str(word) for word in request.get("args", []))]
            _name_process("-m", *sys.argv)
            warnings.filterwarnings("ignore", message=r"'.*' found in sys\.modules", category=RuntimeWarning)
            runpy.run_module(str(request["module"]), run_name="__main__", alter_sys=True)
        elif "command" in request:  # an `mlyard` command line (mlyard/warm/cli.py)
            sys.argv = [str(word) for word in request["command"]]
            _name_process(*sys.argv)
            from mlyard.cli import app  # imported and built by preload (a change to it makes the runner stale)

            app(prog_name=os.path.basename(sys.argv[0]))  # click would name this process's __main__
        else:
            sys.argv = [""]  # as `python -m prefect.engine`: the run's id comes from PREFECT__FLOW_RUN_ID
            _name_process("-m", "prefect.engine", f"(flow run {flow_run_env()[0] or '?'})")
            # runpy warns that the module was imported before it runs as __main__: by design, here
            warnings.filterwarnings("ignore", message=r"'prefect\.engine' found in sys\.modules",
                                    category=RuntimeWarning)
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, then exit 1
        traceback.print_exc()
        code = 1
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if not isinstance(code, int) and code is not None:
        print(code, file=sys.stderr)
    _interpreter_exit()
    return status


def _name_process(*words: str) -> None:
    """What ps shows for a child: its command as it would run cold (a flow run's child names its run),
    not another warm runner (the child's /proc environment is still the runner's)."""
    import setproctitle

    setproctitle.setproctitle(" ".join([sys.executable, *words]))


def _fresh_process_state() -> None:
    """What a cold process would have read at start: settings, logging, seeds."""
    from prefect.logging.configuration import setup_logging

    from mlyard.core.connection import connect_if_running

    if flag("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(write_through=True)  # type: ignore[union-attr]
    # What `import flows` does in a cold process: the platform's environment; and Prefect, which read its
    # settings when the runner imported it, makes them again from this environment (unless it is the very
    # one they were made from)
    connect_if_running()
    if "kubernetes.config" in sys.modules:  # it reads KUBECONFIG once, at import (kfp, preloaded, imports it)
        location = kubeconfig_path() or "~/.kube/config"
        for name in ("kubernetes.config.kube_config", "kubernetes.config"):
            sys.modules[name].KUBE_CONFIG_DEFAULT_LOCATION = location  # type: ignore[attr-defined]
    inputs = logging_inputs()
    if os.isatty(2) or inputs is None or inputs != LOGGING_SET_UP.get("inputs"):
        setup_logging(incremental=False)  # 0.15 s of CPU: only when it would not come out as the runner's
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    for info in list(weakref.finalize._registry.values()):  # type: ignore[attr-defined]
        info.atexit = False  # the runner's own finalizers are not this run's to call


def _interpreter_exit() -> None:
    """What the interpreter does on exit: wait for threads (Prefect drains its log and event services
    there), run atexit handlers, flush."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    atexit._run_exitfuncs()


def _watch_client(conn: socket.socket, env: dict[str, str]) -> None:
    """The client went away: end this run's group as a cancel would, if the run is being cancelled, the
    stack stopped or Prefect says the run is over. Otherwise its worker's process went and took the client
    with it (a worker's exit kills what it started): the run goes on and reports its own end to Prefect,
    its output, which nobody reads any more, to /dev/null (mlyard/warm/client.py). A client that said
    DETACH has asked that already."""
    said = b""
    try:
        while chunk := conn.recv(64):
            said = (said + chunk)[-64:]
            if said.endswith(DETACH):
                break
    except OSError:
        pass
    if _FINISHED.is_set():  # the client read the exit status and left
        return
    if said.endswith(DETACH) or ("PREFECT__FLOW_RUN_ID" in env and run_goes_on(_HOME[0], env)):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        return
    from mlyard.tasks.processes import stop_group

    stop_group(os.getpid(), GRACE_SECONDS)  # this process's own group: the run and what it started


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mlyard.warm.server HOME", file=sys.stderr)
        return 2
    # the runner's own log, on its own logger: the root logger stays as a cold process has it, so that a
    # child's logging (a command's stderr, a flow run's) is set up as it would be cold
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # and so is every process it forks: the mlyard API, the scheduler, the worker, flow runs
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return serve(Path(argv[1]).resolve())


if __name__ == "__main__":
    sys.exit(main(sys.argv))

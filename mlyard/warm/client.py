"""The local pool's flow-run command: hand this run to the warm runner, or run it cold.

    python -m mlyard.warm.client HOME

The process worker starts it with the run's environment, working directory and streams, and tracks
its pid. It sends those to the runner of HOME, which forks a child already holding Prefect, MLflow
and the flows; then it waits for the child's exit status and exits with it. SIGINT (Ctrl-C) and SIGHUP
go to the child's whole process group, and so does SIGTERM when it means the run's end: a cancel (the
run is CANCELLING in Prefect), `mlyard down`, or a run Prefect says is over. Any other SIGTERM is its
worker going away (a worker that fails ends its processes as it exits; a stopped one leaves them; a
Prefect that does not answer cannot have cancelled the run):
the client then tells the child to go on without it and exits, and the run reports its own end to
Prefect; the keeper starts a new worker. Should this client die otherwise (SIGKILL: the worker's exit
kills what it started), the child notices its socket close and asks the same question: it ends its own
group only for a cancel, a `down` or a run that is over (mlyard/warm/server.py).

No runner, a busy socket or stale code: the run starts cold here (`python -m prefect.engine`, as the
worker would start it), and a new runner is started in the background for the runs after it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from mlyard.warm import DETACH, PROJECT_ROOT, SOCKET, run_goes_on, warm_dir

CONNECT_TIMEOUT_SECONDS = 2.0


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[2] == "-m":  # `... HOME -m MODULE ARGS`: that module, as `python -m` runs it
        module = [argv[3], *argv[4:]]
        handed = hand_over(warm_dir(Path(argv[1])) / SOCKET, module=module)
        if handed is None:
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", *module])
        return relay(*handed)
    if len(argv) != 2:
        print("usage: python -m mlyard.warm.client HOME [-m MODULE ARGS...]", file=sys.stderr)
        return 2
    home = Path(argv[1])
    handed = hand_over(warm_dir(home) / SOCKET)
    if handed is None:
        start_runner(home)
        return _cold()
    return relay(*handed, home=home)


def hand_over(path: Path, command: list[str] | None = None,
              module: list[str] | None = None) -> tuple[socket.socket, int] | None:
    """Send this run (or, with `command`, this `mlyard` command line; with `module`, `python -m` of
    module[0] with the rest as its arguments) to the runner; the connected socket and the child's pid
    once a child holds it, else None."""
    fields: dict[str, object] = {"env": dict(os.environ), "cwd": os.getcwd(), "umask": _umask()}
    if command is not None:
        fields["command"] = command
    if module is not None:
        fields["module"], fields["args"] = module[0], module[1:]
    request = json.dumps(fields).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_SECONDS)
        sock.connect(str(path))
        socket.send_fds(sock, [struct.pack("!I", len(request))], [0, 1, 2])
        sock.sendall(request)
        reply = _read_line(sock)
    except OSError:
        sock.close()
        return None
    if not reply.startswith(b"pid "):  # "stale" (the runner is going away) or nothing
        sock.close()
        return None
    sock.settimeout(None)
    return sock, int(reply.split()[1])


def detach(path: Path, module: str, args: list[str], log: Path, env: dict[str, str], cwd: Path,
           umask: int | None = None) -> int | None:
    """Have the runner start `python -m MODULE ARGS` as a process of its own session with this
    environment, working directory and umask (this process's when None), its output appended to `log`:
    a process of the stack (`mlyard up`). Its pid, or None when no runner took it (the caller starts it
    itself)."""
    request = json.dumps({"env": env, "cwd": str(cwd), "umask": _umask() if umask is None else umask, "module": module, "args": args,
                          "detached": True}).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with open(os.devnull, "rb") as stdin, open(log, "ab") as out:
            sock.settimeout(CONNECT_TIMEOUT_SECONDS)
            sock.connect(str(path))
            socket.send_fds(sock, [struct.pack("!I", len(request))], [stdin.fileno(), out.fileno(), out.fileno()])
            sock.sendall(request)
            sock.settimeout(60.0)  # the runner forks at once; a reply given up on could leave a second copy
            reply = _read_line(sock)
    except OSError:
        return None
    finally:
        sock.close()
    return int(reply.split()[1]) if reply.startswith(b"pid ") else None


def relay(sock: socket.socket, pid: int, home: Path | None = None) -> int:
    """Forward signals to the child's group until it reports its exit status; exit with it. A SIGTERM
    while the run goes on (see the module) lets the child go on without this client."""
    forwarded: list[int] = []

    def forward(signum: int, _frame) -> None:
        if signum == signal.SIGTERM and home is not None and not forwarded and run_goes_on(home, os.environ):
            try:
                sock.sendall(DETACH)
                print(f"mlyard: the worker went away; the run goes on in process {pid} and reports its own end "
                      "to Prefect", file=sys.stderr, flush=True)
            except OSError:
                pass
            os._exit(0)
        forwarded.append(signum)
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    line = _read_line(sock)
    if line.startswith(b"exit "):
        return int(line.split()[1])
    killed_by = int(line.split()[1]) if line.startswith(b"signal ") else (forwarded[-1] if forwarded else None)
    if killed_by is not None:  # end the same way, as a cold process would: the caller sees which signal
        name = signal.Signals(killed_by).name
        if not forwarded:
            print(f"mlyard: the process {pid} was killed by {name}" + (
                " (out of memory, or stopped from outside)" if killed_by == signal.SIGKILL else ""), file=sys.stderr)
        if killed_by not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught, nor reset
            signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    print(f"mlyard: the warm process {pid} ended without an exit status (its runner went away)", file=sys.stderr)
    return 1


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    return data.strip()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def start_runner(home: Path) -> None:
    """Start a runner in the background for the next runs (it exits at once if one is already up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}  # this run's own
    log = home / "logs" / "warm-runner.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            subprocess.Popen([sys.executable, "-m", "mlyard.warm.server", str(home)], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    except OSError as exc:
        print(f"mlyard: no warm runner could be started ({exc}); flow runs start cold", file=sys.stderr)


def _cold() -> int:
    """Become the engine, exactly as the worker would have started it."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine"])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))

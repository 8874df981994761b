"""User code in a pod's own container: the code host (a native sidecar of every flow-run pod, in
infra/*-job-template.json) runs what the flow asks, where the flow's credentials are not.

A pod on a cluster cannot start bubblewrap (its seccomp profile refuses user namespaces), so the separation
there is Kubernetes' own, as Argo Workflows' emissary does it: the flow's container mounts the settings
Secret and the service account's token; the `code-host` container beside it mounts neither, runs as a user
of its own (10002, in the pod's group), and has its own process namespace. The two share the pod's
scratch volumes at the same paths, and a folder there (MLYARD_CODE_HOST) through which the flow hands over
a command:

- `run` (in the flow's container, what tasks/sandbox.py's `wrap` returns there): a process that stands for
  the command. It makes a request folder with the command's argv, environment and folder and five FIFOs,
  relays its own stdin to the command and the command's stdout and stderr to its own, forwards the signals
  it gets (a stop's SIGTERM, SIGINT), and exits with the command's exit code (128 + N where signal N ended
  it, as bubblewrap does; 137, saying so, where the code host itself ended first);
- `serve` (the code host's entry point): takes each request (a rename, so two hosts never take the same),
  starts its command in a process group of its own with a group-writable umask (the flow reads, moves and
  removes what it leaves), sends it the signals the `life` FIFO names, and kills its whole group when that
  FIFO closes: when the `run` process dies (`kill -9` included), so does the command.

The environment a request carries is the one its caller built for user code (tasks/launch.py's
`script_environment`): nothing of the platform's. Standard library only (`python -I` runs this file).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REQUESTS, TAKEN = "requests", "taken"
# opened in this order on both sides (each open waits for its peer): `life` the stand-in's (its signals, and
# its end by its closing), `code` the host's (the exit code, and the host's end by its closing without one)
FIFOS = ("life", "stdin", "stdout", "stderr", "code")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
TAKE_TIMEOUT = 60.0  # a request no host takes: the code-host container is not there
POLL = 0.02


def prepare(exchange: Path) -> None:
    """The exchange's folders, group-shared (the pod's fsGroup): made by whichever side comes first."""
    for folder in (exchange, exchange / REQUESTS, exchange / TAKEN):
        folder.mkdir(parents=True, exist_ok=True)
        if folder.stat().st_uid == os.geteuid():
            folder.chmod(0o2770)


# -- the flow's side ---------------------------------------------------------------------------------

def run(exchange: Path, cwd: str | None, argv: list[str]) -> int:
    """Have the code host run `argv` and stand for it (see the module); returns its exit code."""
    prepare(exchange)
    ident = secrets.token_hex(8)
    pending = exchange / f".{ident}"
    pending.mkdir(mode=0o2770)
    pending.chmod(0o2770)
    for name in FIFOS:
        os.mkfifo(pending / name, 0o660)
        os.chmod(pending / name, 0o660)
    request = {"argv": argv, "env": dict(os.environ), "cwd": cwd or os.getcwd()}
    (pending / "request.json").write_text(json.dumps(request))
    (pending / "request.json").chmod(0o640)
    os.rename(pending, exchange / REQUESTS / ident)
    folder = exchange / TAKEN / ident
    deadline = time.monotonic() + TAKE_TIMEOUT
    while not folder.exists():
        if time.monotonic() > deadline:
            try:
                (exchange / REQUESTS / ident).rename(pending)  # withdrawn, unless a host took it just now
            except OSError:
                continue
            _remove(pending)
            print(f"mlyard: the code host ({exchange}) took no command in {TAKE_TIMEOUT:.0f} s: is the pod's "
                  "code-host container running?", file=sys.stderr)
            return 127
        time.sleep(POLL)
    life = os.open(folder / "life", os.O_WRONLY)
    to_stdin = os.open(folder / "stdin", os.O_WRONLY)
    outs = [os.open(folder / name, os.O_RDONLY) for name in ("stdout", "stderr")]
    from_host = os.open(folder / "code", os.O_RDONLY)
    lock = threading.Lock()

    def forward(signum: int, _frame: object) -> None:
        with lock:
            try:
                os.write(life, f"{signum}\n".encode())
            except OSError:
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    relays = [threading.Thread(target=_pump, args=(0, to_stdin, True), daemon=True),
              *[threading.Thread(target=_pump, args=(fd, target, False), daemon=True) for fd, target in zip(outs, (1, 2))]]
    # the relays block the forwarded signals (a thread inherits its maker's mask): the kernel then hands a stop
    # to this thread, whose read below it interrupts; one taken by a relay would wait for that read to return,
    # which waits for the command, which waits for the stop
    kept = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    for relay in relays:
        relay.start()
    signal.pthread_sigmask(signal.SIG_SETMASK, kept)
    said = b""
    while len(said) <= 16 and (chunk := os.read(from_host, 64)):  # until the host closes it: with the exit
        said += chunk  # code, or by ending (more than a number: not the host's, whose user the command shares)
    for relay in relays[1:]:  # what it wrote before it ended (a process it left holding them: not waited for)
        relay.join(2.0)
    os.close(life)
    _remove(folder)
    if not said.strip().isdigit() or len(said) > 16:
        print(f"mlyard: the code host ({exchange}) ended before the command did", file=sys.stderr, flush=True)
        return 137
    return int(said)


def _pump(source: int, target: int, close_target: bool) -> None:
    try:
        while chunk := os.read(source, 65536):
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view):]
    except OSError:
        pass
    finally:
        if close_target:
            try:
                os.close(target)
            except OSError:
                pass


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# -- the code host's side -------------------------------------------------------------------------------

def serve(exchange: Path) -> None:
    """Take and run requests until this process is ended (the pod's end)."""
    prepare(exchange)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"mlyard code host: running the pod's user code from {exchange} as uid {os.getuid()}", flush=True)
    while True:
        for entry in sorted((exchange / REQUESTS).iterdir()):
            folder = exchange / TAKEN / entry.name
            try:
                entry.rename(folder)
            except OSError:  # another host took it, or it was withdrawn
                continue
            threading.Thread(target=_host, args=(folder,), daemon=True).start()
        time.sleep(POLL)


def _host(folder: Path) -> None:
    code, to_flow = 1, None
    try:
        request = json.loads((folder / "request.json").read_text())
        life = os.open(folder / "life", os.O_RDONLY)
        fds = [os.open(folder / "stdin", os.O_RDONLY), os.open(folder / "stdout", os.O_WRONLY),
               os.open(folder / "stderr", os.O_WRONLY)]
        to_flow = os.open(folder / "code", os.O_WRONLY)
        try:
            proc = subprocess.Popen(request["argv"], env=request["env"], cwd=request["cwd"], stdin=fds[0],
                                    stdout=fds[1], stderr=fds[2], start_new_session=True, umask=0o002)
        except OSError as exc:
            os.write(fds[2], f"mlyard code host: {request['argv'][0]} could not start: {exc}\n".encode())
            code = 127
            return
        finally:
            for fd in fds:
                os.close(fd)
        gone = threading.Event()
        threading.Thread(target=_signals, args=(life, proc.pid, gone), daemon=True).start()
        code = proc.wait()
        _kill_group(proc.pid, signal.SIGKILL)  # what it left behind ends with it, as a sandbox's PID namespace
        if gone.is_set():  # it was killed for its stand-in's end (set before): nobody waits for its code
            _remove(folder)
    except (OSError, ValueError, KeyError) as exc:
        print(f"mlyard code host: request {folder.name}: {exc}", file=sys.stderr, flush=True)
    finally:
        if to_flow is not None:
            try:
                os.write(to_flow, str(code if code >= 0 else 128 - code).encode())
                os.close(to_flow)
            except OSError:  # the stand-in is gone
                pass


def _signals(life: int, pid: int, gone: threading.Event) -> None:
    """The signals the `run` side forwards, until it is gone: then the command's whole group is killed."""
    buffered = b""
    while chunk := os.read(life, 64):
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            if line.strip().isdigit() and int(line) in {int(s) for s in FORWARDED}:
                _kill_group(pid, int(line))
    os.close(life)
    gone.set()
    _kill_group(pid, signal.SIGKILL)


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    usage = "usage: code_host.py serve EXCHANGE | code_host.py run EXCHANGE CWD -- ARGV..."
    if len(argv) == 2 and argv[0] == "serve":
        serve(Path(argv[1]))
        return 0
    if len(argv) >= 5 and argv[0] == "run" and argv[3] == "--":
        return run(Path(argv[1]), argv[2] or None, argv[4:])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

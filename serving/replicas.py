"""The local replica supervisor that `mlyard up` starts (`python -m mlyard.serving.replicas`).

Every 0.2 s it compares what the endpoint flows want (tasks/replicas.py) with what runs:
- a wanted replica that is not running is started, each in its own session, on the port it had (a
  free port the first time), its output appended to its log;
- one that exits is started again after a backoff (1, 2, 4, ... 30 s; back to 1 s once it has run
  for a minute);
- one no longer wanted is stopped (SIGTERM to its process group, SIGKILL after 10 s) and forgotten.
Replicas outlive the gateway and the supervisor itself: a supervisor that starts finds the replicas
its predecessor left running (by pid and command line) and adopts them; those that run a user's code
(a model's server, a notebook) are in sandboxes that die with the supervisor, and it starts them again.
Stopping the supervisor (SIGTERM, as `mlyard down` does) stops its replicas. Each replica gets the
replicas' credential (MLYARD_REPLICA_TOKEN, derived from the stack's internal one; for a model's server,
one of its own derived from that and its key) and answers only the gateway.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlyard.core.environment import REPLICA_TOKEN_FD
from mlyard.tasks import replicas as files
from mlyard.tasks.processes import alive as _alive
from mlyard.tasks.processes import not_dumpable, stop_group
from mlyard.tasks.replicas import free_port

log = logging.getLogger("mlyard.replicas")
MAX_BACKOFF = 30.0
STEADY_SECONDS = 60.0
STOP_GRACE = 10.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Supervisor:
    def __init__(self, home: Path):
        from mlyard.core.connection import internal_token, replica_token
        from mlyard.core.settings import Settings

        self.home = Path(home)
        internal = internal_token(Settings(home=self.home))
        self.env = {"MLYARD_REPLICA_TOKEN": replica_token(internal)} if internal else {}
        self.procs: dict[str, subprocess.Popen | int] = {}  # key -> our child, or the pid of an adopted one
        self.backoff: dict[str, float] = {}
        self.due: dict[str, float] = {}  # key -> when an exited replica is started again

    def adopt(self) -> None:
        for key, st in files.states(self.home).items():
            if _alive(st.pid) and f"--port {st.port}" in _cmdline(st.pid or 0):
                self.procs[key] = st.pid  # type: ignore[assignment]
                log.info("adopted replica %s (pid %s, port %s)", key, st.pid, st.port)

    def step(self) -> None:
        want = {w.key: w for w in files.wanted(self.home) if not w.url}  # the others run elsewhere
        have = files.states(self.home)
        now = time.monotonic()
        for key in list(self.procs):
            if key not in want:
                self._stop(key)
                self._forget(key)
        for key in set(have) - set(want) - set(self.procs):
            self._forget(key)
        for key, w in want.items():
            st = have.get(key) or files.State(key=key, port=w.port or free_port(), log=str(files.log_path(self.home, key)))
            running = self._running(key)
            if running:
                if time.time() - st.started_at > STEADY_SECONDS:
                    self.backoff[key] = 1.0
                continue
            if key in self.procs:  # it exited
                code = self._reap(key)
                st.status, st.last_exit, st.pid = "EXITED", code, None
                delay = self.backoff.get(key, 1.0)
                self.due[key] = now + delay
                self.backoff[key] = min(delay * 2, MAX_BACKOFF)
                log.warning("replica %s exited with code %s; starting it again in %.0f s", key, code, delay)
                files.write_state(self.home, st)
                continue
            if now < self.due.get(key, 0.0):
                continue
            self._start(w, st)

    def _running(self, key: str) -> bool:
        proc = self.procs.get(key)
        if proc is None:
            return False
        if isinstance(proc, int):
            return _alive(proc)
        return proc.poll() is None

    def _reap(self, key: str) -> int | None:
        proc = self.procs.pop(key)
        return proc.returncode if isinstance(proc, subprocess.Popen) else None

    def _start(self, w: files.Wanted, st: files.State) -> None:
        path = Path(st.log)
        path.parent.mkdir(parents=True, exist_ok=True)
        argv, env = self._walled(w, [*w.argv, "--port", str(st.port)])
        if argv is None:
            log.error("replica %s not started: %s", w.key, env["why"])
            st.status, st.last_exit = "EXITED", None
            self.due[w.key] = time.monotonic() + MAX_BACKOFF
            files.write_state(self.home, st)
            return
        with open(path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            fds = _handed(env, w)
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True, pass_fds=fds)
            except OSError as exc:
                out.write(f"could not start: {exc}\n".encode())
                st.status, st.last_exit = "EXITED", None
                self.due[w.key] = time.monotonic() + MAX_BACKOFF
                files.write_state(self.home, st)
                return
            finally:
                for fd in fds:
                    os.close(fd)
        self.procs[w.key] = proc
        if st.started_at:
            st.restarts += 1
        st.pid, st.status, st.started_at = proc.pid, "RUNNING", time.time()
        files.write_state(self.home, st)
        log.info("started replica %s (pid %s, port %s)", w.key, proc.pid, st.port)

    def _walled(self, w: files.Wanted, argv: list[str]) -> tuple[list[str] | None, dict[str, str]]:
        """(argv, environment) of a replica; one that runs a user's code (`walls`, `reads`) in its sandbox, with
        none of the platform's credentials: a model's server holds only its own replica credential. (None,
        {"why"}) where that sandbox is required and cannot start."""
        if not w.walled:
            return argv, {**os.environ, **w.env, **self.env}
        from mlyard.core.connection import replica_key_token
        from mlyard.core.errors import SandboxUnavailable
        from mlyard.core.settings import Settings
        from mlyard.tasks import sandbox
        from mlyard.tasks.launch import script_environment

        env = {**script_environment(os.environ), **w.env}
        write, read = list(w.walls or []), list(w.reads or [])
        if w.reads is not None:  # a model's server: a fresh folder of its own, its cache in it, its credential
            own = self._fresh(w)
            write = [str(own), *write]
            env["MLYARD_CACHE_DIR"] = str(own / "cache")
            if self.env:
                env["MLYARD_REPLICA_TOKEN"] = replica_key_token(self.env["MLYARD_REPLICA_TOKEN"], w.key)
        try:
            walled, notice = sandbox.chosen(Settings(home=self.home).sandbox, f"replica {w.key}")
        except SandboxUnavailable as exc:
            return None, {"why": str(exc)}
        if not walled:
            if notice:
                log.warning(notice)
            return argv, env
        walls = sandbox.around_platform(write, network=True, chdir=write[0], read=read)
        return sandbox.wrap(argv, walls), sandbox.child_env(env, walls)

    def _fresh(self, w: files.Wanted) -> Path:
        """A model replica's own folder, emptied, with a copy of its model's compiled entry (what it changes
        there is its own)."""
        own = files.own_folder(self.home, w.key)
        shutil.rmtree(own, ignore_errors=True)
        (own / "cache").mkdir(parents=True, mode=0o700)
        (own / "cache" / "compiled").mkdir()
        if w.compiled and os.path.isdir(w.compiled):
            shutil.copytree(w.compiled, own / "cache" / "compiled" / os.path.basename(w.compiled), symlinks=True)
        elif w.compiled and os.path.isfile(w.compiled):  # refused before: not tried again
            shutil.copy(w.compiled, own / "cache" / "compiled")
        return own

    def _stop(self, key: str) -> None:
        proc = self.procs.pop(key)
        pid = proc if isinstance(proc, int) else proc.pid
        if not stop_group(proc, STOP_GRACE):
            return
        log.info("stopped replica %s (pid %s)", key, pid)

    def _forget(self, key: str) -> None:
        """A replica no longer wanted (or stopped with the supervisor): its state and its own folder."""
        files.drop_state(self.home, key)
        shutil.rmtree(files.own_folder(self.home, key), ignore_errors=True)

    def stop_all(self) -> None:
        for key in list(self.procs):
            self._stop(key)
            self._forget(key)


def _handed(env: dict[str, str], w: files.Wanted) -> tuple[int, ...]:
    """A model replica's credential moved from its environment into a pipe it reads once at its start
    (core/environment.take_replica_token), so that no process beside its server in its sandbox (bubblewrap's
    own, whose environment is readable there, or an entry script's) finds it: the pipe's end to hand it."""
    token = env.pop("MLYARD_REPLICA_TOKEN", None) if w.reads is not None else None
    if token is None:
        return ()
    read, write = os.pipe()
    os.write(write, token.encode())
    os.close(write)
    env[REPLICA_TOKEN_FD] = str(read)
    return (read,)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    not_dumpable()  # it holds the replicas' credential (its replicas, executed, are their own)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    sup = Supervisor(args.home)
    sup.adopt()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    log.info("supervising the replicas under %s", files.root(args.home))
    while not stopping:
        try:
            sup.step()
        except Exception:  # a bad file must not end supervision of the others
            log.exception("supervision step failed")
        time.sleep(0.2)
    sup.stop_all()


if __name__ == "__main__":
    main()

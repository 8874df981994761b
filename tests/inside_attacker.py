"""A training's entry point as a member who means harm writes it: from inside its run, it tries to reach
every file, socket, process, port and credential of the platform and of other projects, then leaves links
to them (and a FIFO) in its outputs for the platform to copy. The standard library only.

Its targets come as the hyperparameter `targets` (JSON): `home` (the stack's), `other` (another project's
storage folder), `port` (a platform port on 127.0.0.1), `site` (the platform's site-packages), `source`
(a platform source file), `needles` (names of the platform's credentials, looked for in every process's
environment). It prints one line, `FOUND {"attempts": {name: "held (...)" | "REACHED: ..."}, "own": {...}}`
(`own`: what its run must still be able to do), and with `linger`, sleeps after saying `started` in its
model folder (its child sleeping too, `marker` in its command line).

A member's model (tests/inside_model.py) makes the same attempts from inside its replica with `attempts`,
its targets given in the request: its own folder (`mine`, the replica's), the files of the home that are
its own (`own_files`: its endpoint's inference log and its model's files), a neighbour replica's port (`replica`), which its own
credential must not open, and the platform's compiled-model cache (`cache`)."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

found: dict[str, str] = {}
own: dict[str, str] = {}
targets: dict = {}


def attempt(name, fn):
    try:
        got = fn()
        found[name] = "REACHED: " + str(got)[:120]
    except Exception as exc:
        found[name] = f"held ({type(exc).__name__})"


def mine(name, fn):
    try:
        fn()
        own[name] = "ok"
    except Exception as exc:
        own[name] = f"{type(exc).__name__}: {exc}"


def read(path):
    with open(path, "rb") as fh:
        return fh.read(64)


def home_files():
    # its own run's folder (a replica's own), and its own files (the endpoint's inference log)
    scratch = targets.get("mine") or os.path.dirname(os.path.realpath(os.environ["EM_SOURCE_DIR"]))
    seen = [os.path.join(top, name) for top, _, files in os.walk(targets["home"]) for name in files
            if not os.path.join(top, name).startswith(scratch + "/")
            and not any(os.path.join(top, name).startswith(own) for own in targets.get("own_files", ()))]
    if not seen:
        raise PermissionError("nothing but its own run's folders")
    return seen


def unix(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(3)
    sock.connect(path)
    sock.sendall(b"mlyard projects add-member pa mallory --role owner\n")
    return sock.recv(100)


def tcp(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    return sock.recv(100)


def environs():
    seen = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                environ = read_all(f"/proc/{pid}/environ")
            except OSError:
                continue
            seen += [f"{pid}:{n}" for n in targets["needles"] if f"\0{n}=".encode() in b"\0" + environ]
    if not seen:
        raise PermissionError("no process shows one")
    return seen


def read_all(path):
    with open(path, "rb") as fh:
        return fh.read()


def session(pid):
    return read_all(f"/proc/{pid}/stat").decode().rsplit(")", 1)[1].split()[3]


def outside_processes():
    """Processes outside its own session that it can see in /proc, or signal (0) by a PID up to 2^16 that
    its /proc does not list: the flow, the stack, other runs."""
    listed = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    mine_, me = session("self"), command("self")
    seen = []
    for pid in listed:
        try:
            # a replica's own: its server's processes (its workers), and bubblewrap's init
            if session(pid) != mine_ and not (targets.get("mine") and (
                    command(pid) == me or command(pid).split(" ")[0].endswith("bwrap"))):
                seen.append(pid)
        except OSError:
            continue
    for pid in range(2, 65536):
        if pid in listed:
            continue
        try:
            os.kill(pid, 0)
            if tgid(pid) in listed:
                continue  # a thread (kill takes its id too) of a process judged above
            seen.append(pid)
        except ProcessLookupError:
            continue
        except PermissionError:
            seen.append(pid)  # there, though out of its reach
    if not seen:
        raise ProcessLookupError("no process outside its own")
    return [f"{pid}:{command(pid)[:60]}" for pid in sorted(seen)[:10]]


def tgid(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line for line in fh if line.startswith("Tgid:")).split()[1])
    except OSError:
        return None


def command(pid):
    try:
        return read_all(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def capabilities():
    with open("/proc/self/status") as fh:
        effective = next(line for line in fh if line.startswith("CapEff")).split()[1]
    if int(effective, 16) == 0:
        raise PermissionError("no capability")
    return effective


def as_replica(port, path, token):
    """A route of another replica, with this process's own replica credential: 200 is reached."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"x-mlyard-replica": token})
    with urllib.request.urlopen(req, timeout=3) as resp:
        return resp.status


def without_credential(port, path):
    """A platform route without a credential: anything but a refusal is reached."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PermissionError(f"refused: {exc.code}") from None
        return exc.code


def interfaces():
    names = [name for _, name in socket.if_nameindex() if name != "lo"]
    if not names:
        raise PermissionError("only its own loopback")
    return names


def attempts(given: dict, replica: bool = False) -> dict[str, str]:
    """Every attempt, on `given` targets; from a model's replica (`replica`), whose sandbox shares the
    host's network to be reached by the gateway, a platform port is tried for an answer without a
    credential, and its neighbour replica with its own."""
    targets.update(given)
    home, other = targets["home"], targets["other"]
    attempt("read the stack's record (internal token, Prefect auth)", lambda: read(os.path.join(home, "stack.json")))
    attempt("any file of the stack's home beside its own run's", home_files)
    attempt("the warm runner's socket", lambda: unix(os.path.join(home, "warm", "runner.sock")))
    attempt("the embedded PostgreSQL's socket", lambda: unix(os.path.join(home, "postgres", ".s.PGSQL.5432")))
    attempt("another process's environment (/proc/PID/environ)", environs)
    attempt("see or signal a process outside its own (the flow, the stack)", outside_processes)
    attempt("a capability (CAP_SYS_PTRACE, DAC override)", capabilities)
    attempt("write the platform's venv", lambda: open(os.path.join(targets["site"], "evil.pth"), "w"))
    attempt("write the platform's source", lambda: open(targets["source"], "r+"))
    attempt("the compiled-model cache", lambda: os.listdir(targets.get("cache") or os.path.join(home, "compiled")))
    attempt("another project's storage", lambda: os.listdir(other))
    if replica:
        attempt("the Prefect API without a credential", lambda: without_credential(targets["port"], "/api/admin/settings"))
        attempt("the mlyard API without a credential", lambda: without_credential(targets["service"], "/metrics"))
        if targets.get("environment"):  # an entry script's: its deployment's own, built by the flow
            attempt("write the environment it runs in (the next replica's)",
                    lambda: open(os.path.join(sys.prefix, "evil.pth"), "w"))
        if targets.get("replica"):  # served (a batch's model holds no replica credential)
            attempt("the gateway's routing table with its own credential", lambda: as_replica(
                targets["gateway"], "/mlyard/routes", os.environ["MLYARD_REPLICA_TOKEN"]))
            attempt("a neighbour replica with its own credential", lambda: as_replica(
                targets["replica"], "/v2/models", os.environ["MLYARD_REPLICA_TOKEN"]))
    else:
        attempt("a platform port on 127.0.0.1", lambda: tcp(int(targets["port"])))
        attempt("write its own environment (the next run's)", lambda: open(os.path.join(sys.prefix, "evil.pth"), "w"))
        attempt("a network beyond its own loopback", interfaces)
    return found


def main():
    attempts(json.loads(os.environ["EM_HP_TARGETS"]))
    home, other = targets["home"], targets["other"]
    mine("read its source", lambda: read(os.path.join(os.environ["EM_SOURCE_DIR"], os.environ["EM_ENTRY_POINT"])))
    mine("write its model", lambda: open(os.path.join(os.environ["EM_MODEL_DIR"], "model.txt"), "w").write("weights"))
    mine("a temporary file", lambda: tempfile.mkstemp())
    mine("write /tmp", lambda: open("/tmp/scratch.txt", "w").write("x"))
    mine("a loopback of its own", lambda: socket.create_server(("127.0.0.1", 0)).close())

    for name, target in (("stolen-record", os.path.join(home, "stack.json")), ("stolen-project", other)):
        os.symlink(target, os.path.join(os.environ["EM_MODEL_DIR"], name))
        os.symlink(target, os.path.join(os.environ["EM_CHECKPOINT_DIR"], name))
    os.mkfifo(os.path.join(os.environ["EM_MODEL_DIR"], "hold-the-reader"))
    print("FOUND " + json.dumps({"attempts": found, "own": own}), flush=True)

    if targets.get("linger"):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", targets["marker"]])
        open(os.path.join(os.environ["EM_MODEL_DIR"], "started"), "w").close()
        time.sleep(120)


if __name__ == "__main__":
    main()

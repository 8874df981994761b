"""Backend.AI model folders: the files read with their semantics (checked before anything starts),
the health-check state machine on a given clock, the pre-start actions, and `mlyard serve
--model-folder` supervising and proxying a real HTTP server process, an OpenAI-speaking one's stream included
(the proxy passes a request's Content-Length on: a plain HTTP server cannot read a chunked body)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import openai
import pytest
import yaml
from serving_http import MLYARD, call, free_port, start, stop

from mlyard.core.errors import SpecError
from mlyard.serving import modelfolder
from mlyard.serving.health import DEGRADED, HEALTHY, UNHEALTHY, Health
from mlyard.serving.modelfolder import HealthCheck
from mlyard.serving.supervisor import run_actions


def _folder(tmp_path, service: dict, toml: str | None = None, name: str = "model-definition.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump({"models": [{"name": "m", "model_path": "/models", "service": service}]}))
    if toml is not None:
        (tmp_path / "service-definition.toml").write_text(toml)
    return tmp_path


def test_a_definition_is_read_with_its_semantics(tmp_path):
    f = modelfolder.load(_folder(tmp_path, {"command": "python -m http.server --directory /models/www 8000",
                                            "port": 8000}))
    # a string runs through the shell `shell:` names (Backend.AI's default /bin/bash), model_path pointing here
    assert f.argv() == ["/bin/bash", "-c", f"python -m http.server --directory {tmp_path}/www 8000"]
    assert f.service.health_check is None  # no block: nothing is probed, no defaults
    (tmp_path / "yml").mkdir()
    f = modelfolder.load(_folder(tmp_path / "yml", {"command": ["python", "x.py"], "port": 8000,
                                                    "health_check": {"path": "/health"}}, name="model-definition.yml"))
    assert f.service.health_check == HealthCheck(path="/health", interval=10.0, max_retries=10, max_wait_time=15.0,
                                                 expected_status_code=200, initial_delay=60.0)
    f = modelfolder.load(_folder(tmp_path, {"command": "x", "port": 1}, toml=(
        '[vllm.environment]\nimage = "example.com/server:1"\narchitecture = "x86_64"\n'
        '[vllm.resource_slots]\ncpu = 1\nmem = "8gb"\n"cuda.shares" = "0.5"\n[vllm.environ]\nMODEL_NAME = "demo"\n'
        '[custom.environ]\nMODEL_NAME = "other"\n')), variant="custom")
    assert f.variant is not None and f.variant.environ == {"MODEL_NAME": "other"}
    f = modelfolder.load(tmp_path)
    assert f.variant.image == "example.com/server:1" and f.variant.resource_slots["cuda.shares"] == "0.5"


def test_keys_of_backend_ais_schema_are_kept_and_reported_not_refused(tmp_path):
    """An older file's `info` block and `start_command` (command's deprecated name) are read as Backend.AI
    reads them; `command` wins when both are there, as current Backend.AI runs it; `shell` is the shell a
    string runs in."""
    (tmp_path / "model-definition.yaml").write_text(yaml.safe_dump({"models": [{
        "name": "m", "model_path": "/models", "info": {"author": "a", "version": 2},
        "metadata": {"title": "t", "framework": ["x"], "own_key": 1},
        "service": {"start_command": ["python", "old.py"], "port": 8000, "shell": "/bin/sh"}}]}))
    f = modelfolder.load(tmp_path)
    assert f.argv() == ["python", "old.py"]
    assert any("info is kept and not used" in n for n in f.notes)
    assert any("start_command runs as the command" in n for n in f.notes)
    (tmp_path / "model-definition.yaml").write_text(yaml.safe_dump({"models": [{
        "name": "m", "model_path": "/models",
        "service": {"start_command": ["python", "old.py"], "command": "cd /models && ./run", "port": 8000,
                    "shell": "/bin/sh"}}]}))
    f = modelfolder.load(tmp_path)
    assert f.argv() == ["/bin/sh", "-c", f"cd {tmp_path} && ./run"]
    assert any("command takes precedence" in n for n in f.notes)
    assert f.on_port(9001).argv() == ["/bin/sh", "-c", f"cd {tmp_path} && ./run"]


@pytest.mark.parametrize("service, words", [
    ({"port": 8000}, "models[0].service.command"),
    ({"command": "x", "port": 99999}, "models[0].service.port: 99999"),
    ({"command": "x", "port": 8000, "helth_check": {}}, "models[0].service.helth_check"),
    ({"command": "x", "port": 8000, "health_check": {"interval": 5}}, "health_check.path"),
    ({"command": "x", "port": 8000, "health_check": {"path": "health"}}, "starting with /"),
    ({"command": "x", "port": 8000, "pre_start_actions": [{"action": "copy", "args": {}}]},
     "pre_start_actions[0].action: 'copy'"),
    ({"command": "x", "port": 8000, "pre_start_actions": [{"action": "mkdir", "args": {}}]},
     "pre_start_actions[0].args.path"),
    ({"command": "", "port": 8000}, "command: ''"),
])
def test_a_bad_definition_names_the_key_and_the_value(tmp_path, service, words):
    with pytest.raises(SpecError) as bad:
        modelfolder.load(_folder(tmp_path, service))
    assert words in str(bad.value) and "\n" not in str(bad.value)


def test_bad_service_definitions_and_folders(tmp_path):
    with pytest.raises(SpecError, match="model-definition.yaml or model-definition.yml"):
        modelfolder.load(tmp_path)
    _folder(tmp_path, {"command": "x", "port": 1}, toml="[vllm.environment]\nimage = 'x'\n")
    with pytest.raises(SpecError, match=r"\[vllm.environment\].architecture"):
        modelfolder.load(tmp_path)
    (tmp_path / "service-definition.toml").write_text("[vllm.environ]\nA = 1\n")
    with pytest.raises(SpecError, match="runtime variant: 'nim'"):
        modelfolder.load(tmp_path, variant="nim")
    (tmp_path / "service-definition.toml").write_text("[vllm\n")
    with pytest.raises(SpecError, match="valid TOML"):
        modelfolder.load(tmp_path)


def test_the_health_state_machine():
    check = HealthCheck(path="/health", interval=10, max_retries=2, max_wait_time=15, initial_delay=60)
    h = Health(check, started=0.0)
    assert h.status == DEGRADED and h.next_probe() == 60.0
    assert h.probed(60, None, "timeout") == DEGRADED and h.failures == 1  # fails keep the status
    assert h.probed(70, 200) == HEALTHY and h.failures == 0 and h.next_probe() == 80.0
    assert h.probed(80, 500) == HEALTHY and h.probed(90, 503) == HEALTHY  # 2 failures: not more than max_retries
    assert h.probed(100, None) == UNHEALTHY and h.failures == 3
    assert h.probed(110, 200) == HEALTHY
    assert h.seconds_to_unhealthy() == 60 + 10 * 3 and h.seconds_to_unhealthy(running=True) == 30
    assert Health(HealthCheck(path="/h"), 0).seconds_to_unhealthy() == 170  # the defaults: 60 + 10 x 11
    none = Health(None, 0)  # no health check: its port, until it takes a connection
    assert none.status == DEGRADED and none.next_probe() is None
    none.listening()
    assert none.status == HEALTHY
    none.exited("gone")
    assert none.status == UNHEALTHY
    none.restarted(5)
    assert none.status == DEGRADED


def test_pre_start_actions_run_in_order(tmp_path):
    f = modelfolder.load(_folder(tmp_path, {"command": "x", "port": 1, "pre_start_actions": [
        {"action": "mkdir", "args": {"path": "/models/conf"}},
        {"action": "write_file", "args": {"filename": "/models/conf/a.txt", "body": "one\n", "mode": "600"}},
        {"action": "write_file", "args": {"filename": "conf/a.txt", "body": "two\n", "append": True, "mode": "640"}},
        {"action": "write_tempfile", "args": {"body": "print('hi')\n"}},
        {"action": "run_command", "args": {"command": ["cat", "/models/conf/a.txt"]}},
        {"action": "run_command", "args": {"command": [sys.executable, "-c", "import sys; sys.exit('no')"]}},
        {"action": "log", "args": {"message": "done"}},
    ]}))
    done = run_actions(f)
    assert (tmp_path / "conf" / "a.txt").read_text() == "one\ntwo\n"
    assert oct((tmp_path / "conf" / "a.txt").stat().st_mode & 0o777) == "0o640"
    assert done[3]["path"].endswith(".py") and open(done[3]["path"]).read() == "print('hi')\n"
    os.unlink(done[3]["path"])
    assert done[4] == {"action": "run_command", "out": "one\ntwo\n", "err": ""}
    assert done[5]["err"].strip() == "no" and done[6]["message"] == "done"


CHILD = """
import http.server, json, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health" and os.path.exists("sick"):
            self.send_response(500); self.end_headers(); return
        body = json.dumps({"path": self.path, "model": os.environ.get("MODEL_NAME")}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_mlyard_serve_supervises_probes_restarts_and_proxies(tmp_path):
    child_port = free_port()
    (tmp_path / "app.py").write_text(CHILD)
    _folder(tmp_path, {"command": [sys.executable, "/models/app.py", str(child_port)], "port": child_port,
                       "health_check": {"path": "/health", "interval": 0.3, "max_retries": 1, "max_wait_time": 1,
                                        "initial_delay": 0.5}},
            toml='[custom.environ]\nMODEL_NAME = "from-toml"\n')
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--model-folder", str(tmp_path), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        status = _until(url, lambda v: v["status"] == HEALTHY)
        assert call(url + "/anything?x=1") == (200, {"path": "/anything?x=1", "model": "from-toml"})
        os.kill(status["pid"], signal.SIGKILL)  # the service dies: restarted, healthy again
        again = _until(url, lambda v: v["restarts"] >= 1 and v["status"] == HEALTHY)
        assert again["pid"] != status["pid"]
        (tmp_path / "sick").write_text("")  # /health answers 500 from now on: UNHEALTHY, requests refused
        sick = _until(url, lambda v: v["status"] == UNHEALTHY)
        assert "answered 500" in sick["reason"]
        code, body = call(url + "/anything")
        assert code == 503 and "UNHEALTHY" in body["error"]
        (tmp_path / "sick").unlink()
        _until(url, lambda v: v["status"] == HEALTHY)
    finally:
        stop(proc)


def _until(url: str, ok, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        _, view = call(url + "/mlyard/health")
        if isinstance(view, dict) and ok(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"the supervisor stayed {json.dumps(view)}")


def test_a_string_command_runs_in_its_shell_pipes_cd_and_variables_included(tmp_path):
    """As Backend.AI runs it: `echo ... && cd ... && python3 -m http.server` served (it restarted for
    ever as UNHEALTHY when the string was split without a shell)."""
    child_port = free_port()
    (tmp_path / "app.py").write_text(CHILD)
    _folder(tmp_path, {"command": f"echo booting | tr a-z A-Z > /models/boot.txt && cd /models && "
                                        f"exec {sys.executable} app.py $APP_PORT",
                       "port": child_port,
                       "health_check": {"path": "/health", "interval": 0.3, "max_retries": 1, "max_wait_time": 1,
                                        "initial_delay": 0.5}},
            toml=f'[custom.environ]\nAPP_PORT = "{child_port}"\nMODEL_NAME = "shell"\n')
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--model-folder", str(tmp_path), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        _until(url, lambda v: v["status"] == HEALTHY)
        assert call(url + "/x") == (200, {"path": "/x", "model": "shell"})
        assert (tmp_path / "boot.txt").read_text() == "BOOTING\n"
    finally:
        stop(proc)


def test_replicas_of_one_folder_run_side_by_side_on_ports_of_their_own(tmp_path):
    """--service-port 0 moves the definition's port (arguments that name it, and PORT), as a container's
    port is mapped: two replicas of one folder on one machine both serve."""
    (tmp_path / "app.py").write_text(CHILD)
    _folder(tmp_path, {"command": [sys.executable, "/models/app.py", "8000"], "port": 8000,
                       "health_check": {"path": "/health", "interval": 0.3, "max_retries": 1, "max_wait_time": 1,
                                        "initial_delay": 0.5}})
    moved = modelfolder.load(tmp_path).on_port(9123)
    assert moved.argv()[-1] == "9123" and moved.service.port == 9123 and moved.variant.environ["PORT"] == "9123"
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(start([MLYARD, "serve", "--model-folder", str(tmp_path), "--service-port", "0",
                                "--port", str(port)])[0])
            urls.append(f"http://127.0.0.1:{port}")
        targets = {_until(url, lambda v: v["status"] == HEALTHY)["target"] for url in urls}
        assert len(targets) == 2 and not any(t.endswith(":8000") for t in targets)
        assert all(call(url + "/x")[0] == 200 for url in urls)
    finally:
        for proc in procs:
            stop(proc)


# The model folder's own service: a server of the user's that speaks OpenAI's chat route (as vLLM or llama.cpp
# would), its stream in HTTP chunks, one piece at a time. mlyard's own generative server is test_generative.py's.
FOLDER_SERVER = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECES = ["A", " small", " answer", " here", " and", " more"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(200, b'{"ready": true}') if self.path == "/v2/health/ready" else self._reply(404, b"{}")

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path != "/openai/v1/chat/completions":
            return self._reply(404, b"{}")
        pieces = PIECES[:req.get("max_tokens") or len(PIECES)]
        head = {"id": "chatcmpl-folder", "created": int(time.time()), "model": req["model"]}
        if not req.get("stream"):
            return self._reply(200, json.dumps({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1 + len(pieces)}}).encode())
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(data):
            body = f"data: {data}\\n\\n".encode()
            self.wfile.write(f"{len(body):x}\\r\\n".encode() + body + b"\\r\\n")
            self.wfile.flush()

        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            event(json.dumps({**head, "object": "chat.completion.chunk",
                              "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
            time.sleep(0.05)
        event(json.dumps({**head, "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
        event("[DONE]")
        self.wfile.write(b"0\\r\\n\\r\\n")


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_model_folder_that_speaks_openai_is_proxied_with_its_stream(tmp_path):
    inner = free_port()
    (tmp_path / "server.py").write_text(FOLDER_SERVER)
    (tmp_path / "model-definition.yaml").write_text(yaml.safe_dump({"models": [{
        "name": "chat", "model_path": "/models",
        "service": {"command": [sys.executable, str(tmp_path / "server.py"), str(inner)],
                    "port": inner, "health_check": {"path": "/v2/health/ready", "initial_delay": 0.5,
                                                    "interval": 0.5, "max_wait_time": 2}}}]}))
    outer = free_port()
    proc, _ = start([MLYARD, "serve", "--model-folder", str(tmp_path), "--port", str(outer)])
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{outer}/openai/v1", api_key="unused", max_retries=0,
                               timeout=60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # DEGRADED until the child's health check passes
            if call(f"http://127.0.0.1:{outer}/mlyard/health")[1].get("status") == "HEALTHY":
                break
            time.sleep(0.5)
        chunks = list(client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4, temperature=0, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert len([c for c in chunks if c.choices[0].delta.content]) == 4  # piece by piece, as the service sent them
        whole = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    finally:
        stop(proc)

"""Runtime variants (issue 55 §1): a model folder served by an inference engine with Backend.AI's default
definition, no model-definition.yaml. vLLM, TGI and the others cannot run here (no GPU, no CPU builds on
PyPI or Debian), so the engine's wiring is tested with a STAND-IN (tests/serving/engines/openai_standin.py,
an OpenAI-compatible script put on PATH under the engine's command name); the `cmd` variant runs a real
engine: mlyard's own OpenAI server on the tiny chat model, as an image's command would. Every `mlyard
serve` runs in a fresh process with a user's PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from conftest import free_port

from mlyard.core.errors import SpecError
from mlyard.serving.variants import engine_problem, folder_of

STANDIN = Path(__file__).parent / "engines" / "openai_standin.py"
BIN = Path(sys.executable).parent


def _folder(tmp_path: Path, service_definition: str | None = None) -> Path:
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if service_definition is not None:
        (folder / "service-definition.toml").write_text(service_definition)
    return folder


def test_each_variant_brings_backend_ais_definition_and_the_stage_adds_to_it(tmp_path):
    folder = _folder(tmp_path, service_definition='[vllm.environment]\nimage = "my/vllm:1"\narchitecture = '
                     '"x86_64"\n[vllm.resource_slots]\ncuda.shares = 1\n[vllm.environ]\nA = "folder"\nB = "folder"\n')
    vllm = folder_of(folder, "vllm", args=["--max-model-len", "4096"], environ={"B": "stage"})
    assert vllm.argv() == ["vllm", "serve", str(folder), "--host", "127.0.0.1", "--port", "8000", "--max-model-len",
                           "4096"]  # /models is the folder here; this machine alone
    assert (vllm.service.port, vllm.service.health_check.path, vllm.service.health_check.initial_delay) == (
        8000, "/health", 300.0)
    assert vllm.variant.image == "my/vllm:1" and vllm.variant.environ == {"A": "folder", "B": "stage"}
    expected = {"nim": (8000, "/v1/health/ready"), "huggingface-tgi": (3000, "/info"), "sglang": (9001, "/health"),
                "modular-max": (8000, "/health")}
    for name, (port, health) in expected.items():
        got = folder_of(folder, name, args=["serve"] if name == "nim" else ())
        assert (got.service.port, got.service.health_check.path) == (port, health), name
    assert folder_of(folder, "modular-max").service.health_check.initial_delay == 1800.0
    cmd = folder_of(folder, "cmd", args=["my-server", "--port", "8000"])
    assert cmd.argv() == ["my-server", "--port", "8000"] and cmd.service.health_check is None
    with pytest.raises(SpecError, match="runtime.args"):  # the image's own command: only a cluster has one
        folder_of(folder, "cmd")
    with pytest.raises(SpecError, match=r"exactly one \.gguf"):
        folder_of(folder, "llama-cpp")
    (folder / "tiny.gguf").write_bytes(b"GGUF")
    assert folder_of(folder, "llama-cpp").argv()[:3] == ["llama-server", "-m", str(folder / "tiny.gguf")]
    with pytest.raises(SpecError, match="model-definition"):  # custom: the folder's own definition, as before
        folder_of(folder, "custom")
    assert engine_problem(folder_of(folder, "huggingface-tgi")) == "text-generation-launcher"


def _serve(tmp_path: Path, *args: str, path_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"PATH": f"{path_dir}:{BIN}:/usr/bin:/bin" if path_dir else f"{BIN}:/usr/bin:/bin",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    folder = ["--service-port", "0"] if "--model-folder" in args else []
    proc = subprocess.Popen([str(BIN / "mlyard"), "serve", *args, "--port", str(port), *folder],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        for health in ("/health", "/v2/health/ready"):  # the supervisor's, the model server's
            try:
                with urllib.request.urlopen(url + health, timeout=2) as resp:
                    if resp.status == 200:
                        return proc, url
            except OSError:
                pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"not healthy: {proc.stdout.read()}")


def test_a_vllm_folder_runs_the_engine_on_path_with_its_defaults_and_the_stages_flags(tmp_path):
    """vllm: no model-definition in the folder; the engine (a stand-in named vllm on PATH) is started with
    the folder as its model, 127.0.0.1 and the port mlyard gave it, the stage's flag and environment, and
    answers OpenAI's clients through mlyard's supervisor."""
    folder = _folder(tmp_path)
    engines = tmp_path / "engines"
    engines.mkdir()
    shutil.copy(STANDIN, engines / "vllm")
    proc, url = _serve(tmp_path, "--model-folder", str(folder), "--runtime", "vllm", "--engine-arg=--max-model-len",
                       "--engine-arg=512", "--env", "STANDIN_SAYS=hello", path_dir=engines)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        said = client.chat.completions.create(model="standin", messages=[{"role": "user", "content": "hi there"}])
        argv = said.choices[0].message.content
        assert argv.startswith(f"argv=vllm serve {folder} --host 127.0.0.1 --port ") and "--max-model-len 512" in argv
        assert argv.endswith("env=hello") and said.usage.prompt_tokens == 2
        streamed = list(client.chat.completions.create(model="standin", messages=[{"role": "user", "content": "hi"}],
                                                       stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == argv
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_engine_not_on_path_is_named_in_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "mlyard"), "serve", "--model-folder", str(_folder(tmp_path)), "--runtime",
                           "huggingface-tgi"], env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "text-generation-launcher" in lines[0], proc.stderr
    bad = subprocess.run([str(BIN / "mlyard"), "serve", "--model-folder", str(tmp_path / "llm"), "--runtime", "vlm"],
                         env={"PATH": f"{BIN}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--runtime" in bad.stderr and "vllm" in bad.stderr, bad.stderr


def test_the_cmd_variant_runs_a_real_engine_as_an_images_command_would(tmp_path, tiny_chat_model):
    """cmd for real: the command is mlyard's own OpenAI server on the folder (a tiny chat model): its port is
    moved as a container's would be mapped, /models is the folder, and its greedy answer is the one the same
    server gives when asked directly."""
    folder = tiny_chat_model(tmp_path / "tinychat")
    proc, url = _serve(tmp_path, "--model-folder", str(folder), "--runtime", "cmd", *[f"--engine-arg={a}" for a in (
        "mlyard", "serve", "--chat-model", "/models", "--name", "tiny", "--port", "8000")])
    try:
        client = openai.OpenAI(base_url=url + "/openai/v1", api_key="unused")
        ask = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
        answer = client.chat.completions.create(**ask)
        assert answer.usage.completion_tokens == 6 and answer.choices[0].message.content
        direct, direct_url = _serve(tmp_path, "--chat-model", str(folder), "--name", "tiny")
        try:
            again = openai.OpenAI(base_url=direct_url + "/openai/v1", api_key="unused").chat.completions.create(**ask)
        finally:
            direct.terminate()
            direct.wait(30)
        assert again.choices[0].message.content == answer.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(30)

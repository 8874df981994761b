"""Usage accounting of a generative endpoint on the real stack (issue 55 §3): OpenAI's `usage` exact for every
answer, streamed ones included, counted with the model's tokenizer; the gateway's statistics per token (tokens
in and out, time to first token, tokens a second); the inference log per request; a token's budget of tokens
a day answered 429 once spent. The users' paths (`mlyard endpoints tokens|stats|logs`) run in fresh
processes; the chat calls are the openai client's and plain HTTP against the real gateway."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_user_paths import _ok, _one_line_error, mlyard

STANDIN = Path(__file__).resolve().parents[1] / "serving" / "engines" / "openai_standin.py"
ASK = [{"role": "user", "content": "Say something about the sea."}]


def _json(*args: str):
    return json.loads(_ok(mlyard(*args, "--json")))


def _raw_stream(url: str, token: str, include_usage: bool) -> bytes:
    """A streamed answer as the client receives it, bytes and all."""
    body = {"model": "usagechat", "messages": ASK, "max_tokens": 6, "temperature": 0, "stream": True,
            **({"stream_options": {"include_usage": True}} if include_usage else {})}
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def test_a_chat_endpoint_counts_tokens_per_token_and_holds_a_daily_budget(stack, platform, settings, tmp_path,
                                                                          tiny_chat_model):
    import openai
    from transformers import AutoTokenizer

    import mlyard.endpoints as api

    folder = tiny_chat_model(tmp_path / "usagechat")
    platform.models.create_from_directory("usagechat", folder, "file://usagechat", parameters={"task": "chat"},
                                          framework="transformers")
    view = api.create({"name": "usage", "stage": {"resources": [{"model": "usagechat/1"}]}})
    try:
        url = view["urls"]["default"]["usagechat"]
        issued = _json("endpoints", "tokens", "issue", "usage", "--daily-tokens", "1000")
        token, token_id = issued["token"], issued["id"]
        assert issued["daily_tokens"] == 1000
        assert url.endswith("/usage/usagechat/openai/v1"), url  # a chat model's URL: the base of OpenAI's routes
        client = openai.OpenAI(base_url=url, api_key=token)

        # 1. usage, exact: the prompt as the model's tokenizer makes it; 6 tokens out (greedy, max_tokens)
        expected_prompt = len(AutoTokenizer.from_pretrained(folder).apply_chat_template(
            ASK, add_generation_prompt=True, return_dict=True)["input_ids"])
        whole = client.chat.completions.create(model="usagechat", messages=ASK, max_tokens=6, temperature=0)
        assert whole.choices[0].finish_reason == "length"
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (
            expected_prompt, 6, expected_prompt + 6), whole.usage
        chunks = list(client.chat.completions.create(model="usagechat", messages=ASK, max_tokens=6, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        # the model server's usage line for the gateway never reaches the client; a stream that did not ask
        # for usage carries none
        plain = _raw_stream(url, token, include_usage=False)
        assert b"x-mlyard-usage" not in plain and b'"usage"' not in plain and plain.endswith(b"data: [DONE]\n\n"), plain
        assert b'"usage"' in _raw_stream(url, token, include_usage=True)
        answers, tokens_in, tokens_out = 4, 4 * expected_prompt, 4 * 6

        # 2. the statistics: tokens in and out, first token, tokens a second, per token
        stats = _json("endpoints", "stats", "usage")["stats"]
        row = next(r for r in stats if r["model"] == "usagechat")
        assert (row["tokens"]["answers"], row["tokens"]["in"], row["tokens"]["out"]) == (answers, tokens_in, tokens_out)
        assert 0 < row["tokens"]["ttft_ms"]["mean"] < row["latency_ms"]["p99"] and row["tokens"]["tokens_per_second"] > 0
        waits = row["tokens"]["queued_ms"]  # each answer's wait for a place in the batch (none had to wait here)
        assert waits["answers"] == answers and 0 <= waits["mean"] <= waits["max"] < 1000, waits
        assert row["queue"]["generating"] == 0 and row["queue"]["waiting"] == 0, row  # as the last answer left it
        by_token = next(c for c in row["callers"] if c["caller"] == f"token:{token_id}")
        assert (by_token["calls"], by_token["tokens_in"], by_token["tokens_out"]) == (answers, tokens_in, tokens_out)
        table = _ok(mlyard("endpoints", "stats", "usage"))
        assert "tokens" in table and str(tokens_out) in table, table
        listed = next(t for t in _json("endpoints", "tokens", "list", "usage") if t["id"] == token_id)
        assert (listed["daily_tokens"], listed["used_today"]) == (1000, tokens_in + tokens_out)

        # 3. the inference log: a record per request with its tokens
        records = [r for r in _json("endpoints", "logs", "usage", "--tail", "50") if r.get("promptTokens") is not None]
        assert len(records) == answers and all(r["completionTokens"] == 6 and r["ttftMs"] > 0 for r in records), records

        # 4. the budget: set below what was used, the next call is refused with when it renews; lifted, it passes
        _ok(mlyard("endpoints", "tokens", "budget", "usage", str(token_id), "--daily-tokens", str(tokens_in + tokens_out)))
        try:
            client.chat.completions.create(model="usagechat", messages=ASK, max_tokens=6, temperature=0)
            raise AssertionError("a spent budget let a call through")
        except openai.RateLimitError as exc:
            assert "budget" in str(exc) and "00:00 UTC" in str(exc), exc
            assert 0 < int(exc.response.headers["retry-after"]) <= 86400
        other = _json("endpoints", "tokens", "issue", "usage")["token"]  # another token's calls still pass
        assert openai.OpenAI(base_url=url, api_key=other).chat.completions.create(
            model="usagechat", messages=ASK, max_tokens=2).usage.completion_tokens <= 2
        _ok(mlyard("endpoints", "tokens", "budget", "usage", str(token_id), "--daily-tokens", "0"))
        assert client.chat.completions.create(model="usagechat", messages=ASK, max_tokens=2).usage.completion_tokens <= 2
        _one_line_error(mlyard("endpoints", "tokens", "budget", "usage", str(token_id), "--daily-tokens", "-5"),
                        "daily_tokens")
        _one_line_error(mlyard("endpoints", "tokens", "budget", "usage", "someone", "--daily-tokens", "5"), "token")
        # a budget for a RAG that does not exist is refused, naming it; lifting one never is
        _one_line_error(mlyard("endpoints", "tokens", "budget", "usage", "rag:no-such-rag", "--daily-tokens", "5"),
                        "no-such-rag")
        _ok(mlyard("endpoints", "tokens", "budget", "usage", "rag:no-such-rag", "--daily-tokens", "0"))
    finally:
        api.delete("usage")


def test_a_runtime_variant_stage_serves_behind_the_gateway_with_tokens_and_statistics(stack, platform, tmp_path):
    """A stage resource with runtime cmd (the image's command; here a stand-in OpenAI server, said so in
    tests/serving/engines/openai_standin.py): no model-definition in the version's folder; the gateway
    routes to it with the endpoint's token, and counts the engine's own OpenAI usage per token."""
    import shutil

    import openai

    import mlyard.endpoints as api

    folder = tmp_path / "engine-folder"
    folder.mkdir()
    shutil.copy(STANDIN, folder / "standin.py")
    platform.models.create_from_directory("enginefolder", folder, "file://enginefolder")
    spec = tmp_path / "tgi.yaml"  # an engine that is not on this machine: refused before anything starts
    spec.write_text("name: tgi\nstage: {resources: [{model: enginefolder/1, runtime: huggingface-tgi}]}\n")
    _one_line_error(mlyard("endpoints", "create", "-f", str(spec)), "text-generation-launcher", "runtime")
    view = api.create({"name": "engine", "stage": {"resources": [{"model": "enginefolder/1", "runtime": {
        "variant": "cmd", "args": ["python3", "/models/standin.py", "--port", "8000"],
        "environ": {"STANDIN_SAYS": "staged"}}}]}})
    try:
        assert view["status"] == "ACTIVE" and view["stages"][0]["resources"][0]["runtime"]["variant"] == "cmd"
        url = view["urls"]["default"]["enginefolder"]
        assert url.endswith("/engine/enginefolder"), url  # the engine's own routes under it
        token = _json("endpoints", "tokens", "issue", "engine")["token"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=token)
        said = client.chat.completions.create(model="standin", messages=[{"role": "user", "content": "one two"}])
        text = said.choices[0].message.content  # its argv: /models was the folder, port 8000 the one mlyard gave
        assert text.startswith("argv=standin.py --port ") and text.endswith("env=staged") and " 8000 " not in text
        with_usage = list(client.chat.completions.create(model="standin", messages=[{"role": "user", "content": "x"}],
                                                         stream=True, stream_options={"include_usage": True}))
        assert with_usage[-1].usage.prompt_tokens == 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").chat.completions.create(
                model="standin", messages=[{"role": "user", "content": "x"}])
        row = _json("endpoints", "stats", "engine")["stats"][0]
        assert row["calls"] == 2 and row["failures"] == 0, row  # the wrong token was refused before routing
        assert row["tokens"]["answers"] == 2 and row["tokens"]["in"] == 3, json.dumps(row)  # the engine's usage, both answers
        assert row["tokens"]["out"] == said.usage.completion_tokens + with_usage[-1].usage.completion_tokens
    finally:
        api.delete("engine")

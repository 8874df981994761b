"""Generative models on OpenAI's routes: `mlyard serve --chat-model DIR` in its own process, called with
the real `openai` package (chat, completions, streaming) and with raw HTTP as curl sends it. The model is
a tiny random one made offline (tiny_llm.py); the real SmolLM2 is measured in bench/. A model folder whose
own service speaks OpenAI, proxied with its stream, is tested in test_modelfolder.py."""

from __future__ import annotations

import http.client
import json
from importlib.util import find_spec
from pathlib import Path

import openai
import pytest
from serving_http import MLYARD, call, free_port, start, stop

from mlyard.serving.stops import first_stop, partial_stop

# transformers runs in the servers only: found, not imported (every worker collects this file)
pytestmark = pytest.mark.skipif(find_spec("transformers") is None, reason="the llm extra is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_chat_model) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("llm") / "tiny-chat")


@pytest.fixture(scope="module")
def server(tiny):
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--chat-model", str(tiny), "--port", str(port)])
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_openai_package_chats_completes_and_streams(server):
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["tiny-chat"]
    chat = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=6, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert 1 <= chat.usage.completion_tokens <= 6 and chat.usage.prompt_tokens > 3
    again = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=6, temperature=0)
    assert again.choices[0].message.content == chat.choices[0].message.content  # greedy: the same answer

    chunks = list(client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content  # streamed or not, the same text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    done = client.completions.create(model="tiny-chat", prompt="one two three", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    pieces = list(client.completions.create(model="tiny-chat", prompt="one two three", max_tokens=5, temperature=0,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text


def test_the_stream_is_server_sent_events_ending_in_done(server):
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/openai/v1/chat/completions", json.dumps(
        {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    events = [e for e in resp.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")


def test_bad_requests_are_openai_errors_naming_the_field(server):
    client = _client(server)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny-chat", messages=[])
    for asked in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 2}):  # once answered null, silently
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}], **asked)
        assert bad.value.body["param"] == "logprobs" and "not supported" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-chat", prompt="x", logprobs=3)
    assert bad.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError, match="context"):  # the tiny model's context is 256 tokens
        client.completions.create(model="tiny-chat", prompt="x", max_tokens=300)
    status, body = call(f"{server}/openai/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = call(f"{server}/openai/v1/completions", method="GET")
    assert status == 405
    status, body = call(f"{server}/v2/health/ready")
    assert status == 200  # the server's own routes answer beside OpenAI's
    status, stats = call(f"{server}/stats")
    chat = next(m for m in stats["models"] if m["model"] == "tiny-chat")
    assert chat["requests"] >= 1 and chat["failures"] >= 1


@pytest.fixture(scope="module")
def one_at_a_time(tiny):
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--chat-model", str(tiny), "--port", str(port), "--max-sequences", "0"])
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_answers_batched_continuously_are_the_answers_given_alone(server, one_at_a_time):
    """Greedy answers to six chats asked at once (joining the running batch at its token steps) are word for
    word what the same model answers each alone, one at a time, with the same usage and finish reasons;
    streamed or not, with a stop string or max_tokens."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(url: str, message: dict, tokens: int, stops, stream: bool) -> tuple[str, str, int]:
        client = _client(url)
        if not stream:
            done = client.chat.completions.create(model="tiny-chat", messages=[message], max_tokens=tokens,
                                                  temperature=0, stop=stops)
            return done.choices[0].message.content, done.choices[0].finish_reason, done.usage.completion_tokens
        chunks = list(client.chat.completions.create(model="tiny-chat", messages=[message], max_tokens=tokens,
                                                     temperature=0, stop=stops, stream=True,
                                                     stream_options={"include_usage": True}))
        return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                [c.choices[0].finish_reason for c in chunks if c.choices][-1], chunks[-1].usage.completion_tokens)

    def said(word: str) -> dict:
        return {"role": "user", "content": f"{word} one two three"}

    # stop strings the model's answers hold: from the middle of what it says to those chats unstopped
    cut = {word: (text := ask(one_at_a_time, said(word), 30, None, False)[0])[len(text) // 2:len(text) // 2 + 2]
           for word in ("server", "protocol")}
    asks = [(said(word), tokens, stops) for word, tokens, stops in (
        ("hello", 40, None), ("model", 3, None), ("server", 30, [cut["server"]]), ("tokens", 60, None),
        ("events", 1, None), ("protocol", 30, ["zz", cut["protocol"]]))]
    alone = [ask(one_at_a_time, m, t, s, False) for m, t, s in asks]
    assert {a[1] for a in alone} == {"stop", "length"} and any(a[0] for a in alone)
    for stream in (False, True):
        with ThreadPoolExecutor(len(asks)) as pool:
            together = list(pool.map(lambda a, stream=stream: ask(server, *a, stream), asks))
        assert [t[:2] for t in together] == [a[:2] for a in alone], (stream, together, alone)
        assert [t[2] for t in together if t[1] == "length"] == [a[2] for a in alone if a[1] == "length"]


def test_stop_sequences_are_cut_and_held_back_while_streaming():
    assert first_stop("abc STOP def", ["STOP"]) == 4
    assert first_stop("abc", ["STOP"]) is None
    assert partial_stop("abc ST", ["STOP"]) == 2  # might be the start of STOP: not sent yet
    assert partial_stop("abc", ["STOP"]) == 0

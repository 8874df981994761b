"""Generative models on OpenAI's routes: `mlyard serve --chat-model DIR` in its own process, called with
the real `openai` package (chat, completions, streaming) and with raw HTTP as curl sends it. The model is
a tiny random one made offline (tiny_llm.py); the real SmolLM2 is measured in bench/. A model folder whose
own service speaks OpenAI, proxied with its stream, is tested in test_modelfolder.py."""

from __future__ import annotations

import http.client
import json
import urllib.request
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
    refused = [({"response_format": {"type": "json_object"}}, "response_format", "cannot constrain"),
               ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"), ({"n": 9}, "n", "from 1 to 8"),
               ({"logit_bias": {"999999": 1}}, "logit_bias", "not a token id"),
               ({"temperature": 3}, "temperature", "from 0 to 2"), ({"min_p": -1}, "min_p", "from 0 to 1"),
               ({"max_completion_tokens": 0}, "max_completion_tokens", "from 1"),
               ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported")]
    for asked, param, words in refused:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}],
                                           extra_body=asked)
        assert bad.value.body["param"] == param and words in bad.value.body["message"], (asked, bad.value.body)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-chat", prompt="x", logprobs=6)
    assert bad.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-chat", prompt="x", echo=True)
    assert bad.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError, match="context"):  # the tiny model's context is 256 tokens
        client.completions.create(model="tiny-chat", prompt="x", max_tokens=300)
    status, body = call(f"{server}/openai/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = call(f"{server}/openai/v1/completions", method="GET")
    assert status == 405
    with urllib.request.urlopen(f"{server}/_chat", timeout=30) as page:  # the chat page, beside the model
        assert page.status == 200 and b"LLM chat test" in page.read()
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


def test_sampled_answers_in_the_batch_are_the_seeded_answers_given_alone(server, one_at_a_time):
    """Six chats asked at once, greedy and sampled side by side (each its own temperature, top_p, top_k, min_p,
    penalties and seed), answer word for word what each answers alone on the server that generates one at a
    time (transformers' generate(), not the batch)."""
    from concurrent.futures import ThreadPoolExecutor

    asks = [{"temperature": 0}, {"temperature": 0.7, "seed": 1}, {"temperature": 1.3, "seed": 2, "top_p": 0.9},
            {"temperature": 1.0, "seed": 3, "top_k": 8, "min_p": 0.05}, {"temperature": 0},
            {"temperature": 0.9, "seed": 4, "presence_penalty": 1.0, "frequency_penalty": 0.5}]

    def ask(url: str, i: int) -> tuple[str, int]:
        extra = {k: v for k, v in asks[i].items() if k in ("top_k", "min_p")}
        given = {k: v for k, v in asks[i].items() if k not in extra}
        done = _client(url).chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": f"hello {i} one two"}], max_tokens=20,
            extra_body=extra or None, **given)
        return done.choices[0].message.content, done.usage.completion_tokens

    alone = [ask(one_at_a_time, i) for i in range(len(asks))]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda i: ask(server, i), range(len(asks))))
    assert together == alone
    assert len({text for text, _ in alone}) == len(asks)  # each its own answer


def test_openai_parameters_are_answered_as_openai_answers_them(server):
    """logprobs and top_logprobs, n, seed, max_completion_tokens, stream_options.include_usage, the penalties,
    top_k and min_p, on both routes, as the `openai` package reads them."""
    client = _client(server)
    hello = [{"role": "user", "content": "hello"}]
    done = client.chat.completions.create(model="tiny-chat", messages=hello, max_completion_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=3)
    entries = done.choices[0].logprobs.content
    assert done.usage.completion_tokens == 5 == len(entries) and done.choices[0].finish_reason == "length"
    assert "".join(e.token for e in entries) == done.choices[0].message.content
    for e in entries:  # greedy: the chosen token is the most likely one
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert bytes(e.bytes).decode() == e.token
    plain = client.chat.completions.create(model="tiny-chat", messages=hello, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == done.choices[0].message.content

    def sampled(**extra):
        return client.chat.completions.create(model="tiny-chat", messages=hello, max_tokens=12, temperature=1.2,
                                              **extra)
    first, again, other = sampled(seed=5, n=3), sampled(seed=5, n=3), sampled(seed=6)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1  # n answers, each its own
    assert [c.message.content for c in again.choices] == texts  # a seed gives the same answers again
    assert other.choices[0].message.content != texts[0]
    assert 3 <= first.usage.completion_tokens <= 36  # the three answers' tokens together
    shaped = sampled(seed=5, extra_body={"top_k": 5, "min_p": 0.1}, presence_penalty=1.5, frequency_penalty=1.0,
                     top_p=0.8)
    assert shaped.choices[0].message.content and shaped.usage.completion_tokens >= 1

    chunks = list(client.chat.completions.create(model="tiny-chat", messages=hello, max_tokens=4, n=2, seed=9,
                                                 temperature=1.0, stream=True, logprobs=True,
                                                 stream_options={"include_usage": True}))
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        assert sum(len(c.logprobs.content) for c in mine if c.logprobs) == 4
    assert chunks[-1].usage.completion_tokens == 8 and not chunks[-1].choices

    legacy = client.completions.create(model="tiny-chat", prompt="one two", max_tokens=4, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4 and "".join(lp.tokens) == \
        legacy.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_stop_sequences_are_cut_and_held_back_while_streaming():
    assert first_stop("abc STOP def", ["STOP"]) == 4
    assert first_stop("abc", ["STOP"]) is None
    assert partial_stop("abc ST", ["STOP"]) == 2  # might be the start of STOP: not sent yet
    assert partial_stop("abc", ["STOP"]) == 0

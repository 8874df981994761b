"""The continuous batch in process, on the tiny model (tiny_llm.py): greedy answers through the batch equal
`generate()`'s one at a time, a stop string ends a sequence and frees its place, a batch whose loop died is
replaced by a new one at the next request (its requests answered with the error, none waiting for ever), and
a request that gets no place within the batch's patience is answered 503 with Retry-After, its wait counted."""

from __future__ import annotations

import asyncio
from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(find_spec("transformers") is None, reason="the llm extra is not installed")


@pytest.fixture(scope="module")
def chat(tmp_path_factory, tiny_chat_model):
    from mlyard.serving.generative import ChatModel

    model = ChatModel(str(tiny_chat_model(tmp_path_factory.mktemp("llm") / "tiny-chat")), max_sequences=2,
                      patience=0.5)
    yield model
    model.close()


def _answer(batcher, ids: list[int], max_tokens: int, stop: list[str], **sampling) -> tuple[str, str | None, int]:
    from mlyard.serving.sampling import Sampling

    async def run() -> tuple[str, str | None, int]:
        text, finish, tokens = "", None, 0
        async for piece in batcher.generate(ids, Sampling(**{"temperature": 0, **sampling}), max_tokens, stop):
            text, finish, tokens = text + piece.text, piece.finish or finish, piece.tokens or tokens
        return text, finish, tokens

    return asyncio.run(run())


def test_the_batch_answers_as_generate_and_a_dead_loop_is_replaced(chat):
    from mlyard.serving.sampling import Sampling

    inputs = chat.prompt_ids([{"role": "user", "content": "hello one two"}], None)
    ids = inputs["input_ids"][0].tolist()
    alone = "".join(piece.text for piece in chat.generate(inputs, Sampling(temperature=0), 20, []))
    batcher = chat.batcher()
    assert _answer(batcher, ids, 20, []) == (alone, "length", 20)
    stop = alone[len(alone) // 2:len(alone) // 2 + 2]
    text, finish, _ = _answer(batcher, ids, 20, [stop])
    assert (text, finish) == (alone[:alone.index(stop)], "stop") and batcher.running == 0  # its place given back
    seeded = "".join(piece.text for piece in chat.generate(inputs, Sampling(temperature=1.1, seed=3), 20, []))
    assert _answer(batcher, ids, 20, [], temperature=1.1, seed=3) == (seeded, "length", 20) and seeded != alone

    batcher.manager.background_thread_status.record_fatal_error(RuntimeError("boom"))  # as a crashed step does
    again = chat.batcher()
    assert again is not batcher and _answer(again, ids, 20, []) == (alone, "length", 20)


def test_a_request_without_a_place_in_time_is_answered_503_and_waits_are_counted(chat):
    from mlyard.core.errors import BadChat
    from mlyard.serving.sampling import Sampling

    batcher = chat.batcher()
    ids = chat.prompt_ids([{"role": "user", "content": "one two"}], None)["input_ids"][0].tolist()

    async def run() -> None:
        held = [batcher.generate(ids, Sampling(temperature=0), 200, []) for _ in range(2)]
        for answer in held:  # both places taken: each answer has begun and is not read further
            await answer.__anext__()
        assert batcher.queue()["running"] == 2
        late = batcher.generate(ids, Sampling(temperature=0), 5, [])
        with pytest.raises(BadChat) as refused:
            await late.__anext__()
        assert refused.value.status == 503 and refused.value.retry_after >= 1 and "0.5 s" in str(refused.value)
        assert batcher.queue()["waiting"] == 0  # it left the queue when it was answered

        waited: list[float] = []
        waiting = asyncio.ensure_future(_drain(batcher.generate(ids, Sampling(temperature=0), 5, [],
                                                                admitted=waited.append)))
        await asyncio.sleep(0.2)
        assert batcher.queue()["waiting"] == 1
        await held[0].aclose()  # a client gone: its place passes to the request waiting
        assert (await waiting)[1] == "length" and 0.15 < waited[0] < 0.5
        await held[1].aclose()
        assert batcher.queue()["running"] == 0 and batcher.queue()["wait_max_ms"] >= 150

    asyncio.run(run())


async def _drain(answer) -> tuple[str, str | None]:
    text, finish = "", None
    async for piece in answer:
        text, finish = text + piece.text, piece.finish or finish
    return text, finish

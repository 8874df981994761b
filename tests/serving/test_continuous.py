"""The continuous batch in process, on the tiny model (tiny_llm.py): greedy answers through the batch equal
`generate()`'s one at a time, a stop string ends a sequence and frees its place, and a batch whose loop
died is replaced by a new one at the next request (its requests answered with the error, none waiting for
ever)."""

from __future__ import annotations

import asyncio
from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(find_spec("transformers") is None, reason="the llm extra is not installed")


@pytest.fixture(scope="module")
def chat(tmp_path_factory, tiny_chat_model):
    from mlyard.serving.generative import ChatModel

    return ChatModel(str(tiny_chat_model(tmp_path_factory.mktemp("llm") / "tiny-chat")), max_sequences=2)


def _answer(batcher, ids: list[int], max_tokens: int, stop: list[str]) -> tuple[str, str | None, int]:
    async def run() -> tuple[str, str | None, int]:
        text, finish, tokens = "", None, 0
        async for piece, done, count in batcher.generate(ids, max_tokens, stop):
            text, finish, tokens = text + piece, done or finish, count or tokens
        return text, finish, tokens

    return asyncio.run(run())


def test_the_batch_answers_as_generate_and_a_dead_loop_is_replaced(chat):
    inputs = chat.prompt_ids([{"role": "user", "content": "hello one two"}], None)
    ids = inputs["input_ids"][0].tolist()
    alone = "".join(piece for piece, _, _ in chat.generate(inputs, 20, 0.0, 1.0, [], None))
    batcher = chat.batcher()
    assert _answer(batcher, ids, 20, []) == (alone, "length", 20)
    stop = alone[len(alone) // 2:len(alone) // 2 + 2]
    text, finish, _ = _answer(batcher, ids, 20, [stop])
    assert (text, finish) == (alone[:alone.index(stop)], "stop") and batcher.active == 0  # its place given back

    batcher.manager.background_thread_status.record_fatal_error(RuntimeError("boom"))  # as a crashed step does
    again = chat.batcher()
    assert again is not batcher and _answer(again, ids, 20, []) == (alone, "length", 20)
